//! Unit tests of LVM assembly over in-memory disks built byte by byte.

use super::label::{INITIAL_CRC, crc};
use super::*;
use crate::fs::testdisk::MemDisk;

const MIB: u64 = 1 << 20;

/// Writes a PV at `at` in `disk`: label in sector 1, one metadata area at
/// 4 KiB of `mda_size` bytes holding `text` (at offset 512 of the area).
pub(crate) fn write_pv(disk: &mut [u8], at: usize, uuid: &str, len: u64, text: &str) {
    let uuid: String = uuid.chars().filter(|&c| c != '-').collect();
    let mda = 4096u64;
    let mda_size = MIB - 4096;
    let mut s = vec![0u8; 512];
    s[0..8].copy_from_slice(b"LABELONE");
    s[8..16].copy_from_slice(&1u64.to_le_bytes());
    s[20..24].copy_from_slice(&32u32.to_le_bytes());
    s[24..32].copy_from_slice(b"LVM2 001");
    s[32..64].copy_from_slice(uuid.as_bytes());
    s[64..72].copy_from_slice(&len.to_le_bytes());
    s[72..80].copy_from_slice(&MIB.to_le_bytes());
    s[104..112].copy_from_slice(&mda.to_le_bytes());
    s[112..120].copy_from_slice(&mda_size.to_le_bytes());
    let c = crc(&s[20..]);
    s[16..20].copy_from_slice(&c.to_le_bytes());
    disk[at + 512..at + 1024].copy_from_slice(&s);
    let mut body = text.as_bytes().to_vec();
    body.push(0);
    let mut h = vec![0u8; 512];
    h[4..20].copy_from_slice(b" LVM2 x[5A%r0N*>");
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[24..32].copy_from_slice(&mda.to_le_bytes());
    h[32..40].copy_from_slice(&mda_size.to_le_bytes());
    h[40..48].copy_from_slice(&512u64.to_le_bytes());
    h[48..56].copy_from_slice(&(body.len() as u64).to_le_bytes());
    h[56..60].copy_from_slice(&crc(&body).to_le_bytes());
    let c = crc(&h[4..]);
    h[0..4].copy_from_slice(&c.to_le_bytes());
    let m = at + mda as usize;
    disk[m..m + 512].copy_from_slice(&h);
    disk[m + 512..m + 512 + body.len()].copy_from_slice(&body);
}

const PV0: &str = "7jsnC3-27Om-QW3n-fKhY-72RY-mpoi-ohrf2Q";

fn text(pe_count: u64, seqno: u64) -> String {
    format!(
        r#"tvg {{
	id = "dXGsbb-hq11-GOfD-fjFa-Iquc-230T-x5mguJ"
	seqno = {seqno}
	extent_size = 8192
	physical_volumes {{
		pv0 {{ id = "{PV0}" dev_size = 131072 pe_start = 2048 pe_count = {pe_count} }}
	}}
	logical_volumes {{
		root {{ id = "r" status = ["READ", "WRITE", "VISIBLE"] segment_count = 2
			segment1 {{ start_extent = 0 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 0] }}
			segment2 {{ start_extent = 2 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 5] }}
		}}
		my-swap {{ id = "s" status = ["READ", "WRITE", "VISIBLE"] segment_count = 1
			segment1 {{ start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv0", 2] }}
		}}
	}}
}}
contents = "Text Format Volume Group"
version = 1
"#
    )
}

fn disk_with_pv() -> (Vec<u8>, DiskRange) {
    let mut d = vec![0u8; (66 * MIB) as usize];
    write_pv(&mut d, MIB as usize, PV0, 64 * MIB, &text(15, 4));
    (
        d,
        DiskRange {
            index: 1,
            start: MIB,
            len: 64 * MIB,
        },
    )
}

#[test]
fn assembles_a_single_pv_vg() {
    let (d, part) = disk_with_pv();
    let disk = MemDisk(d);
    let s = scan(&disk, &[part]);
    assert!(s.is_pv(1));
    let vg = s.vg_of(1).unwrap().vg.as_ref().unwrap();
    assert_eq!(vg.meta.name, "tvg");
    let root = &vg.lvs[0];
    assert_eq!(root.full_name(), "tvg/root");
    assert_eq!(root.size, 16 * MIB);
    let base = 2 * MIB; // partition start + pe_start
    assert_eq!(
        root.map,
        vec![
            Piece {
                lv_start: 0,
                len: 8 * MIB,
                disk_start: base,
                pv: 0
            },
            Piece {
                lv_start: 8 * MIB,
                len: 8 * MIB,
                disk_start: base + 20 * MIB,
                pv: 0
            },
        ]
    );
    assert_eq!(vg.lvs[1].mapper_name(), "tvg-my--swap");
    // Unused: extents 3..5 and 7..15, then the partition's last 3 MiB.
    let pv = &vg.pvs[0];
    assert_eq!(
        pv.unused,
        vec![
            Extent::new(base + 12 * MIB, 8 * MIB),
            Extent::new(base + 28 * MIB, 35 * MIB)
        ]
    );
    // Mapping both ways.
    assert_eq!(
        lv_to_disk(&root.map, 8 * MIB - 10, 20),
        Some(vec![
            Extent::new(base + 8 * MIB - 10, 10),
            Extent::new(base + 20 * MIB, 10)
        ])
    );
    assert_eq!(lv_to_disk(&root.map, 16 * MIB - 1, 2), None);
    assert_eq!(
        disk_to_lv(
            &root.map,
            &[Extent::new(0, base + MIB), Extent::new(base + 20 * MIB, 1)]
        ),
        vec![Extent::new(0, MIB), Extent::new(8 * MIB, 1)]
    );
    // Reading through the view.
    let v = LvView::new(&disk, root);
    assert_eq!(v.virtual_size(), 16 * MIB);
    let mut b = [0u8; 4];
    assert!(v.read_at(&mut b, 16 * MIB - 2).is_err());
}

#[test]
fn tail_after_the_extents_is_unused_but_metadata_is_kept() {
    let mut d = vec![0u8; (66 * MIB) as usize];
    write_pv(&mut d, MIB as usize, PV0, 64 * MIB, &text(10, 4));
    let disk = MemDisk(d);
    let s = scan(
        &disk,
        &[DiskRange {
            index: 1,
            start: MIB,
            len: 64 * MIB,
        }],
    );
    let vg = s.vgs[0].vg.as_ref().unwrap();
    let unused = &vg.pvs[0].unused;
    assert_eq!(unused.last().unwrap().end(), 65 * MIB);
    assert!(unused.iter().all(|e| e.start >= 2 * MIB));
}

#[test]
fn damaged_metadata_refuses() {
    let (mut d, part) = disk_with_pv();
    d[(MIB + 4096 + 600) as usize] ^= 1; // text byte: checksum mismatch
    let s = scan(&MemDisk(d), &[part]);
    assert!(s.is_pv(1));
    assert!(s.pvs[0].1.is_err());
    assert!(s.vg_of(1).is_none());
}

#[test]
fn copies_must_agree() {
    // Two PVs of one VG whose copies differ in seqno.
    let pv1 = "AAAAAA-27Om-QW3n-fKhY-72RY-mpoi-ohrf2Q";
    let two = |seq: u64| {
        text(15, seq).replace(
            "\t}\n\tlogical_volumes",
            &format!("\t\tpv1 {{ id = \"{pv1}\" pe_start = 2048 pe_count = 15 }}\n\t}}\n\tlogical_volumes"),
        )
    };
    let mut d = vec![0u8; (130 * MIB) as usize];
    write_pv(&mut d, MIB as usize, PV0, 64 * MIB, &two(4));
    write_pv(&mut d, 65 * MIB as usize, pv1, 64 * MIB, &two(4));
    let parts = [
        DiskRange {
            index: 1,
            start: MIB,
            len: 64 * MIB,
        },
        DiskRange {
            index: 2,
            start: 65 * MIB,
            len: 64 * MIB,
        },
    ];
    let s = scan(&MemDisk(d.clone()), &parts);
    let vg = s.vgs[0].vg.as_ref().unwrap();
    assert_eq!(vg.pvs.len(), 2);
    assert_eq!(s.vgs[0].parts, vec![1, 2]);
    // PV1's unused extents: all of them.
    assert_eq!(vg.pvs[1].unused, vec![Extent::new(66 * MIB, 63 * MIB)]);
    write_pv(&mut d, 65 * MIB as usize, pv1, 64 * MIB, &two(5));
    let s = scan(&MemDisk(d.clone()), &parts);
    let e = s.vgs[0].vg.as_ref().unwrap_err();
    assert!(matches!(e, LvmError::Inconsistent { .. }), "{e}");
    // One PV alone: the other is not on this disk.
    let s = scan(&MemDisk(d), &parts[..1]);
    let e = s.vgs[0].vg.as_ref().unwrap_err();
    assert!(
        e.to_string().contains("pv1") && e.to_string().contains("not on this disk"),
        "{e}"
    );
}

#[test]
fn interrupted_update_refuses() {
    let (mut d, part) = disk_with_pv();
    let h = (MIB + 4096) as usize;
    d[h + 64..h + 72].copy_from_slice(&8192u64.to_le_bytes()); // slot 1 offset
    d[h + 72..h + 80].copy_from_slice(&100u64.to_le_bytes());
    let c = crc(&d[h + 4..h + 512]);
    d[h..h + 4].copy_from_slice(&c.to_le_bytes());
    let s = scan(&MemDisk(d), &[part]);
    let e = s.vgs[0].vg.as_ref().unwrap_err();
    assert!(matches!(e, LvmError::Interrupted { .. }), "{e}");
}

#[test]
fn random_corruption_never_panics() {
    let (good, part) = disk_with_pv();
    let mut disk = MemDisk(good);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..400 {
        let mut undo = Vec::new();
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Label sector, mda header and text.
            let i = MIB as usize + 512 + (x % 5000) as usize;
            undo.push((i, disk.0[i]));
            disk.0[i] ^= (x >> 32) as u8 | 1;
        }
        let _ = scan(&disk, &[part]);
        for (i, b) in undo.into_iter().rev() {
            disk.0[i] = b;
        }
    }
    let _ = INITIAL_CRC;
}

#[test]
fn mutated_text_never_panics() {
    let good = text(15, 4).into_bytes();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..3000 {
        let mut t = good.clone();
        for _ in 0..1 + x % 4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if t.is_empty() {
                break;
            }
            let i = (x % t.len() as u64) as usize;
            match x >> 60 {
                0..=5 => {
                    let set = b"{}[]=,#0123456789-";
                    t[i] = set[(x >> 40) as usize % set.len()];
                }
                6..=9 => t[i] ^= (x >> 32) as u8,
                10..=12 => {
                    t.remove(i);
                }
                _ => t.truncate(i),
            }
        }
        if let Ok(s) = text::parse(&t) {
            let _ = meta::vg_from_text(&s);
        }
    }
}
