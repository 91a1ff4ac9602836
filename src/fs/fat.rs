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
    /// FAT12/16: byte offset and entries of the fixed root directory.
    root_at: u64,
    root_entries: u64,
    /// FAT32: the root directory's first cluster.
    root_cluster: u32,
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
        root_at: (reserved + fats * fat_size) * bps,
        root_entries,
        root_cluster: le32(b, 44),
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
    // The second source: every cluster a file or directory holds.
    Walk::new(r, &bpb, fat_at(0), fat_bytes)
        .run()
        .map_err(|why| {
            FsError::unclean(
                NAME,
                format!(
                    "{why}: the filesystem is inconsistent, copied whole; check it with `fsck.fat -n` before compacting (its repair would cut that file short: copy the file out first)"
                ),
            )
        })?;
    Ok(out)
}

/// Walks the directory tree from the root and every entry's cluster chain,
/// as fsck.fat does, marking each cluster; a chain that reaches a cluster
/// the FAT calls free, leaves the data area, loops or crosses another
/// chain, or is shorter than its file, means the FAT cannot be trusted.
/// Bounded: every cluster is visited at most once, directories included.
struct Walk<'a, 'r> {
    r: &'a Region<'r>,
    bpb: &'a Bpb,
    fat_off: u64,
    fat_bytes: u64,
    /// The FAT window last read: first entry and its bytes.
    win: Option<(u64, Vec<u8>)>,
    seen: Vec<u64>,
}

impl<'a, 'r> Walk<'a, 'r> {
    fn new(r: &'a Region<'r>, bpb: &'a Bpb, fat_off: u64, fat_bytes: u64) -> Self {
        let n = bpb.clusters + 2;
        Self {
            r,
            bpb,
            fat_off,
            fat_bytes,
            win: None,
            seen: vec![0; n.div_ceil(64) as usize],
        }
    }

    /// FAT entry of cluster `c` (< clusters + 2), through a window of
    /// whole entries.
    fn fat(&mut self, c: u64) -> Result<u32, String> {
        const PER: u64 = CHUNK / 12 * 8;
        let first = c / PER * PER;
        if self.win.as_ref().is_none_or(|w| w.0 != first) {
            let eb = |e: u64| match self.bpb.kind {
                Kind::Fat12 => e * 3 / 2,
                Kind::Fat16 => e * 2,
                Kind::Fat32 => e * 4,
            };
            let off = eb(first);
            let end = (eb(first + PER) + 1).min(self.fat_bytes);
            let b = self
                .r
                .read(self.fat_off + off, (end - off) as usize)
                .map_err(|e| e.msg)?;
            self.win = Some((first, b));
        }
        let w = self.win.as_ref().ok_or("no FAT window")?;
        let i = c - w.0;
        let need = match self.bpb.kind {
            Kind::Fat12 => i * 3 / 2 + 2,
            Kind::Fat16 => i * 2 + 2,
            Kind::Fat32 => i * 4 + 4,
        };
        if need > w.1.len() as u64 {
            return Err(format!("cluster {c} has no FAT entry"));
        }
        Ok(entry(self.bpb.kind, &w.1, i))
    }

    /// The clusters of the chain from `start`, each marked; `what` names
    /// the owner in errors.
    fn chain(&mut self, start: u32, what: &str) -> Result<Vec<u64>, String> {
        let n = self.bpb.clusters + 2;
        let eoc = match self.bpb.kind {
            Kind::Fat12 => 0xFF8,
            Kind::Fat16 => 0xFFF8,
            Kind::Fat32 => 0x0FFF_FFF8,
        };
        let mut out = Vec::new();
        let mut c = start as u64;
        loop {
            if c < 2 || c >= n {
                return Err(format!(
                    "the cluster chain of {what} leaves the data area (cluster {c})"
                ));
            }
            let (w, bit) = ((c / 64) as usize, 1u64 << (c % 64));
            if self.seen[w] & bit != 0 {
                return Err(format!(
                    "the cluster chain of {what} loops or crosses another chain at cluster {c}"
                ));
            }
            self.seen[w] |= bit;
            let e = self.fat(c)?;
            if e == 0 {
                return Err(format!(
                    "{what} holds cluster {c}, which the FAT calls free"
                ));
            }
            out.push(c);
            if e >= eoc {
                return Ok(out);
            }
            c = e as u64;
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let bpb = self.bpb;
        // Directories still to read: their clusters (None: the FAT12/16
        // fixed root) and their path. Each cluster is read when its turn
        // comes, so memory is one cluster plus the chains' cluster lists.
        let mut todo: Vec<(Option<Vec<u64>>, String)> = Vec::new();
        if bpb.kind == Kind::Fat32 {
            let cl = self.chain(bpb.root_cluster, "the root directory")?;
            todo.push((Some(cl), String::new()));
        } else {
            todo.push((None, String::new()));
        }
        while let Some((cl, path)) = todo.pop() {
            match cl {
                None => {
                    let len = bpb.root_entries * 32;
                    let b = self.r.read(bpb.root_at, len as usize).map_err(|e| e.msg)?;
                    self.entries(&b, &path, &mut todo)?;
                }
                Some(cl) => {
                    for c in cl {
                        let at = bpb.data_start * bpb.bps + (c - 2) * bpb.cluster;
                        let b = self.r.read(at, bpb.cluster as usize).map_err(|e| e.msg)?;
                        self.entries(&b, &path, &mut todo)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Follows the chain of every entry in `dir` (a piece of the directory
    /// at `path`); subdirectories go on `todo`.
    fn entries(
        &mut self,
        dir: &[u8],
        path: &str,
        todo: &mut Vec<(Option<Vec<u64>>, String)>,
    ) -> Result<(), String> {
        let bpb = self.bpb;
        for e in dir.chunks_exact(32) {
            let attr = e[11];
            // Free or deleted entries (a 0x00 entry is skipped, not taken as
            // the end: Linux reads on past it), long-name pieces, the label.
            if e[0] == 0 || e[0] == 0xE5 || attr & 0x3F == 0x0F || attr & 0x08 != 0 {
                continue;
            }
            let name = &e[0..11];
            if name == b".          " || name == b"..         " {
                continue;
            }
            let hi = if bpb.kind == Kind::Fat32 {
                le16(e, 20) as u32
            } else {
                0
            };
            let start = (hi << 16) | le16(e, 26) as u32;
            let size = le32(e, 28) as u64;
            let what = format!(
                "{path}/{}",
                String::from_utf8_lossy(name).trim_end().escape_default()
            );
            if start == 0 {
                if attr & 0x10 == 0 && size > 0 {
                    return Err(format!("{what} has {size} bytes but no clusters"));
                }
                continue;
            }
            let cl = self.chain(start, &what)?;
            if attr & 0x10 != 0 {
                todo.push((Some(cl), what));
            } else if (cl.len() as u64) < size.div_ceil(bpb.cluster) {
                return Err(format!(
                    "the cluster chain of {what} ({} clusters) is shorter than its {size} bytes",
                    cl.len()
                ));
            }
        }
        Ok(())
    }
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
    fn chains_that_loop_cross_or_leave_are_refused() {
        let img = mkfs(&["-F", "16"], 32);
        let reserved = le16(&img, 14) as usize;
        let fat_size = le16(&img, 22) as usize;
        let root = (reserved + 2 * fat_size) * 512;
        // Root entries 1 and 2 (after the label slot): files A and B.
        let file = |img: &mut Vec<u8>, slot: usize, name: &[u8; 11], start: u16, size: u32| {
            let e = root + slot * 32;
            img[e..e + 11].copy_from_slice(name);
            img[e + 11] = 0x20;
            img[e + 26..e + 28].copy_from_slice(&start.to_le_bytes());
            img[e + 28..e + 32].copy_from_slice(&size.to_le_bytes());
        };
        let set = |img: &mut Vec<u8>, c: usize, v: u16| {
            for k in 0..2 {
                let at = (reserved + k * fat_size) * 512 + 2 * c;
                img[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        };
        let why = |img: &Vec<u8>| free_of(img).map(|_| ()).unwrap_err().msg;
        // An honest file of two clusters passes.
        let mut ok = img.clone();
        file(&mut ok, 1, b"A       BIN", 2, 3000);
        set(&mut ok, 2, 3);
        set(&mut ok, 3, 0xFFFF);
        assert!(free_of(&ok).is_ok());
        // Shorter than its size.
        let mut bad = ok.clone();
        file(&mut bad, 1, b"A       BIN", 2, 300_000);
        assert!(why(&bad).contains("shorter"), "{}", why(&bad));
        // A loop.
        let mut bad = ok.clone();
        set(&mut bad, 3, 2);
        assert!(why(&bad).contains("loops"), "{}", why(&bad));
        // A cross-link.
        let mut bad = ok.clone();
        file(&mut bad, 2, b"B       BIN", 3, 100);
        assert!(why(&bad).contains("crosses"), "{}", why(&bad));
        // Out of the data area.
        let mut bad = ok.clone();
        set(&mut bad, 3, 0xFFF0);
        assert!(why(&bad).contains("leaves"), "{}", why(&bad));
        // Into free space.
        let mut bad = ok.clone();
        set(&mut bad, 3, 0);
        assert!(why(&bad).contains("calls free"), "{}", why(&bad));
        assert!(why(&bad).contains("fsck.fat"));
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
