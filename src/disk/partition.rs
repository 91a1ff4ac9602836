//! Partition tables: MBR parsing and the choice between MBR and GPT here,
//! GPT in `gpt`, what both produce and the layout check in `table`. A disk with neither is
//! one "partition" covering the whole disk (a bare filesystem). The layout
//! is checked as a whole: a
//! partition past the end of the disk, two partitions that overlap, a
//! logical partition outside its extended partition, or a partition over
//! the table's own structures (MBR, GPT headers and entry arrays, extended
//! boot records) make the layout untrustworthy: `layout_error` says why,
//! and filesystem-aware compaction copies such a disk whole.

pub use super::table::{LayoutError, Partition, PartitionTable, SECTOR, TableKind, crc32};
use super::table::{MAX_LOGICAL, Reserved, check_layout, read};
use crate::bytes::le32;
use crate::image::BlockSource;

const MBR_SIGNATURE: [u8; 2] = [0x55, 0xAA];
const MBR_TABLE: usize = 446;
const MBR_TYPE_GPT_PROTECTIVE: u8 = 0xEE;
const MBR_EXTENDED: [u8; 3] = [0x05, 0x0F, 0x85];

/// Reads the partition table of `src`. Every partition returned lies
/// inside the disk (one that runs past its end is cut at the end, and the
/// layout error says so).
pub fn read_partitions(src: &dyn BlockSource) -> PartitionTable {
    let size = src.virtual_size();
    let mut t = read_table(src);
    t.partitions.retain(|p| p.start < size);
    for p in &mut t.partitions {
        p.size = p.size.min(size - p.start);
    }
    t
}

fn read_table(src: &dyn BlockSource) -> PartitionTable {
    let size = src.virtual_size();
    let whole = || PartitionTable {
        kind: TableKind::None,
        partitions: vec![Partition {
            index: 0,
            start: 0,
            size,
            type_id: "disk".into(),
            part_uuid: String::new(),
        }],
        warnings: Vec::new(),
        layout_error: None,
    };
    let Some(mbr) = read(src, 0, SECTOR as usize) else {
        return whole();
    };
    if mbr[510..512] != MBR_SIGNATURE {
        return whole();
    }
    let entries: Vec<(u8, u64, u64)> = (0..4)
        .map(|i| {
            let e = &mbr[MBR_TABLE + i * 16..MBR_TABLE + (i + 1) * 16];
            (e[4], le32(e, 8) as u64, le32(e, 12) as u64)
        })
        .collect();
    if entries.iter().any(|e| e.0 == MBR_TYPE_GPT_PROTECTIVE) {
        if let Some(t) = super::gpt::read_gpt(src) {
            return t;
        }
        return PartitionTable {
            kind: TableKind::Gpt,
            partitions: Vec::new(),
            warnings: vec![
                "protective MBR, but neither GPT header is valid: the disk is copied whole".into(),
            ],
            layout_error: None,
        };
    }
    // A bare filesystem's boot sector can carry 0x55AA (FAT): require every
    // used entry to look like a partition entry (status 0x00/0x80, a start).
    let used: Vec<_> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.0 != 0 && e.2 != 0)
        .collect();
    let plausible = !used.is_empty()
        && used.iter().all(|(_, e)| e.1 >= 1)
        && used
            .iter()
            .all(|(i, _)| mbr[MBR_TABLE + i * 16] & 0x7F == 0);
    if !plausible {
        return whole();
    }
    let mut t = PartitionTable {
        kind: TableKind::Mbr,
        partitions: Vec::new(),
        warnings: Vec::new(),
        layout_error: None,
    };
    let mut reserved = vec![Reserved {
        start: 0,
        len: SECTOR,
        what: "the MBR",
    }];
    let mut containers: Vec<(u64, u64, u32)> = Vec::new();
    for (i, e) in used {
        if MBR_EXTENDED.contains(&e.0) {
            let (start, len) = (e.1 * SECTOR, e.2 * SECTOR);
            containers.push((start, len, i as u32 + 1));
            let first_logical = t.partitions.len();
            let ebrs = read_logical(src, start, &mut t);
            reserved.extend(ebrs.iter().map(|&b| Reserved {
                start: b,
                len: SECTOR,
                what: "an extended boot record",
            }));
            if t.layout_error.is_none()
                && let Some(p) = t.partitions[first_logical..]
                    .iter()
                    .find(|p| p.start < start || p.start + p.size > start + len)
            {
                t.layout_error = Some(LayoutError::OutsideExtended(p.index, i as u32 + 1));
            }
        } else {
            t.partitions.push(Partition {
                index: i as u32 + 1,
                start: e.1 * SECTOR,
                size: e.2 * SECTOR,
                type_id: format!("mbr:{:#04x}", e.0),
                part_uuid: String::new(),
            });
        }
    }
    t.partitions.sort_by_key(|p| p.start);
    let sig = le32(&mbr, 440);
    for p in &mut t.partitions {
        p.part_uuid = format!("{sig:08x}-{:02x}", p.index);
    }
    if t.layout_error.is_none() {
        // Extended partitions are checked like data partitions against the
        // primaries and the disk, but may contain the logical ones.
        let mut outer: Vec<Partition> = t
            .partitions
            .iter()
            .filter(|p| p.index <= 4)
            .cloned()
            .collect();
        outer.extend(containers.iter().map(|&(start, size, index)| Partition {
            index,
            start,
            size,
            type_id: String::new(),
            part_uuid: String::new(),
        }));
        t.layout_error = check_layout(&outer, size, 0, size, &reserved[..1])
            .or_else(|| check_layout(&t.partitions, size, 0, size, &reserved));
    }
    t
}

/// Follows the EBR chain of an extended partition starting at byte `ext`;
/// returns the EBRs' byte offsets. A broken chain is a layout error.
fn read_logical(src: &dyn BlockSource, ext: u64, t: &mut PartitionTable) -> Vec<u64> {
    let size = src.virtual_size();
    let mut ebr = ext;
    let mut ebrs = Vec::new();
    let fail = |t: &mut PartitionTable, msg: LayoutError| {
        t.warnings.push(msg.to_string());
        t.layout_error.get_or_insert(msg);
    };
    for n in 0..MAX_LOGICAL {
        let Some(b) = read(src, ebr, SECTOR as usize) else {
            fail(t, LayoutError::EbrUnreadable(ebr));
            return ebrs;
        };
        if b[510..512] != MBR_SIGNATURE {
            fail(t, LayoutError::EbrNoSignature(ebr));
            return ebrs;
        }
        ebrs.push(ebr);
        let e0 = &b[MBR_TABLE..MBR_TABLE + 16];
        let e1 = &b[MBR_TABLE + 16..MBR_TABLE + 32];
        let (start, len) = (
            ebr + le32(e0, 8) as u64 * SECTOR,
            le32(e0, 12) as u64 * SECTOR,
        );
        if e0[4] != 0 && len > 0 {
            if start.checked_add(len).is_some_and(|e| e <= size) {
                t.partitions.push(Partition {
                    index: 5 + n as u32,
                    start,
                    size: len,
                    type_id: format!("mbr:{:#04x}", e0[4]),
                    part_uuid: String::new(),
                });
            } else {
                fail(t, LayoutError::LogicalPastEnd(5 + n as u32));
            }
        }
        let next = le32(e1, 8) as u64 * SECTOR;
        if e1[4] == 0 || next == 0 {
            return ebrs;
        }
        let Some(n_ebr) = ext.checked_add(next).filter(|&x| x > ebr) else {
            fail(t, LayoutError::EbrLoop);
            return ebrs;
        };
        ebr = n_ebr;
    }
    fail(t, LayoutError::TooManyLogical);
    ebrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::le64;
    use crate::fs::testdisk::MemDisk;
    use std::process::{Command, Stdio};

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// A 64 MiB disk partitioned by sfdisk from `script`.
    fn sfdisk(script: &str) -> Option<Vec<u8>> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk");
        std::fs::File::create(&p)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let child = Command::new("sfdisk")
            .args(["-q", "--no-reread", "--no-tell-kernel"])
            .arg(&p)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else {
            assert!(std::env::var("CI").is_err(), "sfdisk is needed in CI");
            return None;
        };
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "sfdisk failed on {script}");
        Some(std::fs::read(&p).unwrap())
    }

    fn table(img: &[u8]) -> PartitionTable {
        read_partitions(&MemDisk(img.to_vec()))
    }

    fn set32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn set64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Rewrites GPT entry `i` (0-based) to LBAs `first..=last` in both
    /// copies, recomputing every checksum: a lie GPT tools would accept.
    fn gpt_set(img: &mut [u8], i: usize, first: u64, last: u64) {
        let last_lba = (img.len() as u64 / SECTOR - 1) as usize;
        for hdr in [1usize, last_lba] {
            let h = hdr * 512;
            let entries = le64(img, h + 72) as usize * 512;
            let (count, esize) = (le32(img, h + 80) as usize, le32(img, h + 84) as usize);
            let e = entries + i * esize;
            set64(img, e + 32, first);
            set64(img, e + 40, last);
            let c = crc32(&img[entries..entries + count * esize]);
            set32(img, h + 88, c);
            set32(img, h + 16, 0);
            let hsize = le32(img, h + 12) as usize;
            let c = crc32(&img[h..h + hsize]);
            set32(img, h + 16, c);
        }
    }

    #[test]
    fn sane_tables_have_no_layout_error() {
        let Some(g) = sfdisk("label: gpt\nstart=2048, size=20480\nstart=22528, size=20480\n")
        else {
            return;
        };
        let t = table(&g);
        assert_eq!((t.kind, t.partitions.len()), (TableKind::Gpt, 2));
        assert_eq!(t.layout_error, None);
        let Some(m) = sfdisk(
            "label: dos\nstart=2048, size=20480, type=83\nstart=22528, size=40960, type=5\nstart=24576, size=8192, type=83\nstart=34816, size=8192, type=83\n",
        ) else {
            return;
        };
        let t = table(&m);
        assert_eq!((t.kind, t.partitions.len()), (TableKind::Mbr, 3), "{t:?}");
        assert_eq!(t.layout_error, None, "{t:?}");
    }

    #[test]
    fn gpt_lies_are_layout_errors() {
        let Some(g) = sfdisk("label: gpt\nstart=2048, size=20480\nstart=22528, size=20480\n")
        else {
            return;
        };
        let last = g.len() as u64 / SECTOR - 1;
        type Is = fn(&LayoutError) -> bool;
        let overlap: Is = |e| matches!(e, LayoutError::Overlap(..));
        let outside: Is = |e| matches!(e, LayoutError::OutsideTableArea { .. });
        let past: Is = |e| matches!(e, LayoutError::PastDiskEnd { .. });
        for (what, first, end, want) in [
            ("overlap", 10_000, 30_000, overlap),
            ("entry array", 2, 30_000, outside),
            ("past the end", 22_528, last + 100, past),
            ("backup", 22_528, last, outside),
        ] {
            let mut b = g.clone();
            gpt_set(&mut b, 1, first, end);
            let t = table(&b);
            assert_eq!(t.kind, TableKind::Gpt, "{what}");
            let e = t.layout_error.unwrap_or_else(|| panic!("{what}: accepted"));
            assert!(want(&e), "{what}: {e}");
        }
        // A header whose usable area covers its own entry array.
        let mut b = g.clone();
        gpt_set(&mut b, 0, 2, 20_000);
        for hdr in [1usize, last as usize] {
            let h = hdr * 512;
            set64(&mut b, h + 40, 2);
            set32(&mut b, h + 16, 0);
            let c = crc32(&b[h..h + 92]);
            set32(&mut b, h + 16, c);
        }
        let e = table(&b).layout_error.expect("partition over the entries");
        assert_eq!(e, LayoutError::OverTable(1, "a GPT entry array"), "{e}");
    }

    #[test]
    fn mbr_lies_are_layout_errors() {
        let Some(m) = sfdisk(
            "label: dos\nstart=2048, size=20480, type=83\nstart=22528, size=40960, type=5\nstart=24576, size=8192, type=83\n",
        ) else {
            return;
        };
        let entry = |i: usize| 446 + i * 16;
        // Primary 1 grows over the extended partition.
        let mut b = m.clone();
        set32(&mut b, entry(0) + 12, 30_000);
        assert!(matches!(
            table(&b).layout_error,
            Some(LayoutError::Overlap(..))
        ));
        // Primary 1 past the end of the disk.
        let mut b = m.clone();
        set32(&mut b, entry(0) + 12, 200_000);
        let t = table(&b);
        assert!(matches!(
            t.layout_error,
            Some(LayoutError::PastDiskEnd { .. })
        ));
        // What is returned is cut at the end of the disk.
        assert!(
            t.partitions
                .iter()
                .all(|p| p.start + p.size <= b.len() as u64)
        );
        // Primary 1 over the MBR.
        let mut b = m.clone();
        set32(&mut b, entry(0) + 8, 0);
        assert!(table(&b).layout_error.is_some() || table(&b).kind == TableKind::None);
        // The logical partition sticks out of its extended partition.
        let mut b = m.clone();
        let ebr = 22528 * 512;
        set32(&mut b, ebr + 446 + 12, 60_000);
        let e = table(&b).layout_error.unwrap();
        assert!(
            matches!(
                e,
                LayoutError::OutsideExtended(..) | LayoutError::LogicalPastEnd(_)
            ),
            "{e}"
        );
        // The logical partition over its own EBR.
        let mut b = m.clone();
        set32(&mut b, ebr + 446 + 8, 0);
        let e = table(&b).layout_error.unwrap();
        assert!(
            matches!(e, LayoutError::OverTable(_, "an extended boot record")),
            "{e}"
        );
    }

    #[test]
    fn random_corruption_never_panics() {
        let Some(g) = sfdisk("label: gpt\nstart=2048, size=20480\nstart=22528, size=20480\n")
        else {
            return;
        };
        let Some(m) =
            sfdisk("label: dos\nstart=2048, size=20480, type=5\nstart=4096, size=8192, type=83\n")
        else {
            return;
        };
        let mut x = 0x51u64;
        for img in [g, m] {
            let mut d = MemDisk(img);
            for _ in 0..2000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = if x % 3 == 0 {
                    2048 * 512 + (x >> 8) as usize % 1024
                } else {
                    (x >> 8) as usize % 17408
                };
                let flip = (x >> 40) as u8 | 1;
                d.0[i] ^= flip;
                let _ = read_partitions(&d);
                d.0[i] ^= flip;
            }
        }
    }
}
