//! vfat (FAT12, FAT16, FAT32; the EFI system partition): free space from
//! the file allocation table. Every FAT copy must agree entry for entry
//! (two independent sources), and the volume must be clean (the boot
//! sector's dirty flag and, for FAT16/32, the clean-shutdown and no-error
//! bits of FAT entry 1); a volume with a single FAT is copied whole. Only
//! free clusters of the data area are ever skipped: the reserved sectors
//! (boot sector, FSInfo, backup boot sector), the FATs and the FAT12/16
//! root directory lie before it and are always copied.
//!
//! Not here: mounting (the guest module).

use super::{FsError, FsFree, Region};
use crate::bytes::{le16, le32};
use crate::extent::Extent;

const NAME: &str = "vfat";
/// FAT bytes compared and scanned per read.
const CHUNK: u64 = 4 << 20;
const FAT12_MAX: u64 = 4085;
const FAT16_MAX: u64 = 65525;
/// Boot sector state byte: set while mounted (Linux, Windows).
const STATE_DIRTY: u8 = 0x01;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fat12,
    Fat16,
    Fat32,
}

struct Bpb {
    bps: u64,
    cluster: u64,
    reserved: u64,
    fats: u64,
    fat_size: u64,
    data_start: u64,
    clusters: u64,
    total: u64,
    media: u8,
    kind: Kind,
    state: u8,
    label: String,
}

fn parse_bpb(b: &[u8]) -> Option<Bpb> {
    if b.len() < 512 || b[510..512] != [0x55, 0xAA] || !matches!(b[0], 0xEB | 0xE9) {
        return None;
    }
    let bps = le16(b, 11) as u64;
    let spc = b[13] as u64;
    let reserved = le16(b, 14) as u64;
    let fats = b[16] as u64;
    let root_entries = le16(b, 17) as u64;
    let total = match le16(b, 19) {
        0 => le32(b, 32) as u64,
        n => n as u64,
    };
    let fat_size = match le16(b, 22) {
        0 => le32(b, 36) as u64,
        n => n as u64,
    };
    if !bps.is_power_of_two()
        || !(512..=4096).contains(&bps)
        || !spc.is_power_of_two()
        || reserved == 0
        || fats == 0
        || fat_size == 0
    {
        return None;
    }
    let root_sectors = (root_entries * 32).div_ceil(bps);
    let data_start = reserved + fats * fat_size + root_sectors;
    let clusters = total.checked_sub(data_start)? / spc;
    let kind = if clusters < FAT12_MAX {
        Kind::Fat12
    } else if clusters < FAT16_MAX {
        Kind::Fat16
    } else {
        Kind::Fat32
    };
    let (state_at, label_at) = if kind == Kind::Fat32 {
        (0x41, 0x47)
    } else {
        (0x25, 0x2B)
    };
    let label = String::from_utf8_lossy(&b[label_at..label_at + 11])
        .trim_end()
        .to_string();
    Some(Bpb {
        bps,
        cluster: spc * bps,
        reserved,
        fats,
        fat_size,
        data_start,
        clusters,
        total,
        media: b[21],
        kind,
        state: b[state_at],
        label: if label == "NO NAME" {
            String::new()
        } else {
            label
        },
    })
}

/// True if the region starts with a FAT boot sector.
pub fn detect(r: &Region) -> bool {
    r.read(0, 512).is_ok_and(|b| {
        parse_bpb(&b).is_some() && (&b[0x36..0x39] == b"FAT" || &b[0x52..0x57] == b"FAT32")
    })
}

/// Entry `i` of a FAT held in `fat` (starting at entry 0).
fn entry(kind: Kind, fat: &[u8], i: u64) -> u32 {
    match kind {
        Kind::Fat12 => {
            let at = (i * 3 / 2) as usize;
            let v = le16(fat, at) as u32;
            if i % 2 == 0 { v & 0xFFF } else { v >> 4 }
        }
        Kind::Fat16 => le16(fat, (i * 2) as usize) as u32,
        Kind::Fat32 => le32(fat, (i * 4) as usize) & 0x0FFF_FFFF,
    }
}

/// Reads the free-space map of the FAT filesystem in `r`.
pub fn free_space(r: &Region) -> Result<FsFree, FsError> {
    let b = r.read(0, 512)?;
    let bpb = parse_bpb(&b).ok_or_else(|| FsError::corrupt("implausible FAT boot sector"))?;
    if bpb.total.checked_mul(bpb.bps).is_none_or(|s| s > r.len) {
        return Err(FsError::corrupt(format!(
            "{} sectors of {} bytes do not fit in the {}-byte partition",
            bpb.total, bpb.bps, r.len
        )));
    }
    // Bytes of FAT that hold the entries of clusters 0..clusters+2.
    let n = bpb.clusters + 2;
    let fat_bytes = match bpb.kind {
        Kind::Fat12 => (n * 3).div_ceil(2),
        Kind::Fat16 => n * 2,
        Kind::Fat32 => n * 4,
    };
    if fat_bytes > bpb.fat_size * bpb.bps {
        return Err(FsError::corrupt(format!(
            "a FAT of {} sectors cannot hold {} clusters",
            bpb.fat_size, bpb.clusters
        )));
    }
    if bpb.state & STATE_DIRTY != 0 {
        return Err(FsError::unclean(
            NAME,
            "was not cleanly unmounted (dirty flag): copied whole; run `fsck.vfat -a` on it",
        ));
    }
    if bpb.fats < 2 {
        return Err(FsError::unclean(
            NAME,
            "has a single FAT, so no second copy confirms its free clusters: copied whole",
        ));
    }
    let fat_at = |k: u64| (bpb.reserved + k * bpb.fat_size) * bpb.bps;
    let mut out = FsFree::new(NAME, &bpb.label, bpb.total * bpb.bps);
    // Whole entries per chunk (FAT12: an even number of entries = 3-byte pairs).
    let per_chunk = CHUNK / 12 * 8;
    let entry_bytes = |e: u64| match bpb.kind {
        Kind::Fat12 => e * 3 / 2,
        Kind::Fat16 => e * 2,
        Kind::Fat32 => e * 4,
    };
    let mut run: Option<u64> = None;
    let mut free = 0u64;
    let mut first = 0u64;
    while first < n {
        let count = per_chunk.min(n - first);
        let off = entry_bytes(first);
        let len = (entry_bytes(first + count) + 1).min(fat_bytes) - off;
        let main = r.read(fat_at(0) + off, len as usize)?;
        for k in 1..bpb.fats {
            if r.read(fat_at(k) + off, len as usize)? != main {
                return Err(FsError::corrupt(format!(
                    "FAT copy {} differs from the first around cluster {first}",
                    k + 1
                )));
            }
        }
        for i in first..first + count {
            let e = entry(bpb.kind, &main, i - first);
            if i == 0 {
                if e & 0xFF != bpb.media as u32 {
                    return Err(FsError::corrupt(
                        "FAT entry 0 does not match the media byte",
                    ));
                }
                continue;
            }
            if i == 1 {
                let (clean, no_err) = match bpb.kind {
                    Kind::Fat12 => (1, 1),
                    Kind::Fat16 => (e & 0x8000, e & 0x4000),
                    Kind::Fat32 => (e & 0x0800_0000, e & 0x0400_0000),
                };
                if clean == 0 || no_err == 0 {
                    return Err(FsError::unclean(
                        NAME,
                        "FAT marks the volume dirty or with I/O errors: copied whole; run `fsck.vfat -a` on it",
                    ));
                }
                continue;
            }
            let is_free = e == 0;
            match (is_free, run) {
                (true, None) => run = Some(i),
                (false, Some(s)) => {
                    push_run(&bpb, &mut out, s, i);
                    run = None;
                }
                _ => {}
            }
            free += is_free as u64;
        }
        first += count;
    }
    if let Some(s) = run {
        push_run(&bpb, &mut out, s, n);
    }
    out.free_bytes = free * bpb.cluster;
    Ok(out)
}

fn push_run(bpb: &Bpb, out: &mut FsFree, first: u64, end: u64) {
    let start = bpb.data_start * bpb.bps + (first - 2) * bpb.cluster;
    out.free
        .push(Extent::new(start, (end - first) * bpb.cluster));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::testdisk::MemDisk;

    fn mkfs(args: &[&str], mib: u64) -> Vec<u8> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fat.img");
        std::fs::write(&p, vec![0u8; (mib << 20) as usize]).unwrap();
        let st = std::process::Command::new("mkfs.vfat")
            .args(args)
            .arg(&p)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("mkfs.vfat is needed by the vfat unit tests");
        assert!(st.success());
        std::fs::read(&p).unwrap()
    }

    fn free_of(img: &[u8]) -> Result<FsFree, FsError> {
        let disk = MemDisk(img.to_vec());
        let r = Region {
            src: &disk,
            start: 0,
            len: img.len() as u64,
        };
        assert!(detect(&r));
        free_space(&r)
    }

    #[test]
    fn fresh_fat12_16_32() {
        for (args, mib) in [
            (&["-F", "12"][..], 4),
            (&["-F", "16"], 32),
            (&["-F", "32"], 64),
        ] {
            let img = mkfs(args, mib);
            let f = free_of(&img).unwrap();
            assert!(
                f.free_bytes > (mib << 20) * 8 / 10,
                "{args:?}: {}",
                f.free_bytes
            );
            assert_eq!(crate::extent::total(&f.free), f.free_bytes);
            // The data area only.
            assert!(f.free[0].start >= 512 * 2);
        }
    }

    #[test]
    fn refusals() {
        let img = mkfs(&["-F", "32"], 64);
        let reserved = le16(&img, 14) as usize;
        let fat2 = (reserved + le32(&img, 36) as usize) * 512;
        // The FAT copies disagree.
        let mut bad = img.clone();
        bad[fat2 + 4 * 100] = 7;
        assert!(!free_of(&bad).unwrap_err().unclean);
        // Dirty boot sector.
        let mut bad = img.clone();
        bad[0x41] |= 1;
        assert!(free_of(&bad).unwrap_err().unclean);
        // FAT32 entry 1 clean-shutdown bit cleared, in both copies.
        let mut bad = img.clone();
        for at in [reserved * 512, fat2] {
            bad[at + 7] &= !0x08;
        }
        assert!(free_of(&bad).unwrap_err().unclean);
        // A single FAT.
        let one = mkfs(&["-F", "16", "-f", "1"], 32);
        assert!(free_of(&one).unwrap_err().msg.contains("single FAT"));
        // An implausible size.
        let mut bad = img.clone();
        bad[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(free_of(&bad).is_err());
    }

    #[test]
    fn random_corruption_never_panics() {
        let good = mkfs(&["-F", "16"], 16);
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..300 {
            let mut img = good.clone();
            for _ in 0..3 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % 70_000) as usize;
                img[i] ^= (x >> 40) as u8 | 1;
            }
            let disk = MemDisk(img.clone());
            let r = Region {
                src: &disk,
                start: 0,
                len: img.len() as u64,
            };
            let _ = detect(&r) && free_space(&r).is_ok();
        }
    }
}
