//! Read-only filesystem probes and their free-space maps. `compact` treats
//! provably free space as zeros (never read, never written); `analyze`
//! reports it. A filesystem is skipped only when it is provably quiescent
//! and its metadata is consistent; anything else is copied whole, with a
//! warning that says why and what would fix it.
//!
//! Not here: mounting (the guest module), partition tables (`disk`).

pub(crate) mod crc;
pub mod ext4;
pub mod swap;
pub mod xfs;

use crate::disk::{self, TableKind};
use crate::extent::{self, Extent};
use crate::image::BlockSource;

/// A partition's byte range on the disk, read through the image.
pub struct Region<'a> {
    pub src: &'a dyn BlockSource,
    pub start: u64,
    pub len: u64,
}

impl Region<'_> {
    /// Reads `len` bytes at `off` within the region; out of range is an error.
    pub fn read(&self, off: u64, len: usize) -> Result<Vec<u8>, FsError> {
        let end = off.checked_add(len as u64).filter(|&e| e <= self.len);
        if end.is_none() || len > 64 << 20 {
            return Err(FsError::corrupt(format!(
                "metadata at offset {off} (+{len}) lies outside the partition"
            )));
        }
        let mut b = vec![0u8; len];
        self.src
            .read_at(&mut b, self.start + off)
            .map_err(|e| FsError::corrupt(format!("unreadable metadata at offset {off}: {e}")))?;
        Ok(b)
    }
}

/// Why a filesystem's free space is not used.
#[derive(Debug)]
pub struct FsError {
    pub fs: Option<String>,
    pub unclean: bool,
    pub msg: String,
}

impl FsError {
    pub fn corrupt(msg: impl Into<String>) -> Self {
        Self {
            fs: None,
            unclean: false,
            msg: msg.into(),
        }
    }
    pub fn unclean(fs: &str, msg: impl Into<String>) -> Self {
        Self {
            fs: Some(fs.into()),
            unclean: true,
            msg: msg.into(),
        }
    }
}

/// A filesystem's free-space map, offsets relative to its partition.
#[derive(Debug, Clone)]
pub struct FsFree {
    pub fs_type: String,
    pub label: String,
    pub size: u64,
    pub free: Vec<Extent>,
    pub free_bytes: u64,
}

impl FsFree {
    pub fn new(fs_type: &str, label: &str, size: u64) -> Self {
        Self {
            fs_type: fs_type.into(),
            label: label.into(),
            size,
            free: Vec::new(),
            free_bytes: 0,
        }
    }
}

/// One partition's findings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionReport {
    pub index: u32,
    pub start: u64,
    pub size: u64,
    pub type_id: String,
    pub filesystem: String,
    pub label: String,
    /// Filesystem bytes in use and free (null when not read).
    pub used_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    /// Allocated image bytes inside free space: what compact skips.
    pub skipped_bytes: u64,
    /// Free space used for skipping.
    pub fs_aware: bool,
    pub warning: Option<String>,
}

/// What the probes found on a disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FsScan {
    pub table: TableKind,
    /// Disk byte ranges that are provably free: safe to treat as zeros.
    #[serde(skip)]
    pub free: Vec<Extent>,
    pub partitions: Vec<PartitionReport>,
    pub warnings: Vec<String>,
}

impl Default for FsScan {
    fn default() -> Self {
        Self {
            table: TableKind::None,
            free: Vec::new(),
            partitions: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// Names a filesystem or container we recognise but do not read.
pub(crate) fn recognise(r: &Region) -> Option<&'static str> {
    let at = |off: u64, magic: &[u8]| r.read(off, magic.len()).is_ok_and(|b| b == magic);
    if at(0x10040, b"_BHRfS_M") {
        Some("btrfs")
    } else if (0..4).any(|s| at(s * 512, b"LABELONE")) {
        Some("LVM2 PV")
    } else if at(0, b"LUKS\xba\xbe") {
        Some("LUKS")
    } else {
        None
    }
}

/// Probes the partition table and filesystems of `source`. `allocated` are
/// the image's allocated ranges (normalized), for the skipped-bytes figures.
pub fn scan(source: &dyn BlockSource, allocated: &[Extent]) -> FsScan {
    let table = disk::read_partitions(source);
    let mut out = FsScan {
        table: table.kind,
        warnings: table.warnings.clone(),
        ..Default::default()
    };
    for p in &table.partitions {
        let r = Region {
            src: source,
            start: p.start,
            len: p.size,
        };
        let probe: Option<(&str, Result<FsFree, FsError>)> = if ext4::detect(&r) {
            Some(("ext", ext4::free_space(&r)))
        } else if xfs::detect(&r) {
            Some(("xfs", xfs::free_space(&r)))
        } else if swap::present(&r) {
            // Swap last: it checks every other signature itself first.
            Some(("swap", swap::free_space(&r)))
        } else {
            None
        };
        let mut rep = PartitionReport {
            index: p.index,
            start: p.start,
            size: p.size,
            type_id: p.type_id.clone(),
            filesystem: String::new(),
            label: String::new(),
            used_bytes: None,
            free_bytes: None,
            skipped_bytes: 0,
            fs_aware: false,
            warning: None,
        };
        match probe {
            Some((_, Ok(f))) => {
                let disk_free: Vec<Extent> = extent::normalize(
                    f.free
                        .iter()
                        .map(|e| Extent::new(p.start + e.start, e.len))
                        .collect(),
                );
                let disk_free = extent::clip(&disk_free, p.start, p.start + p.size);
                let skipped = extent::subtract(allocated, &extent::subtract(allocated, &disk_free));
                rep.filesystem = f.fs_type;
                rep.label = f.label;
                rep.free_bytes = Some(f.free_bytes);
                rep.used_bytes = Some(f.size.saturating_sub(f.free_bytes));
                rep.skipped_bytes = extent::total(&skipped);
                rep.fs_aware = true;
                out.free.extend(disk_free);
            }
            Some((kind, Err(e))) => {
                rep.filesystem = e.fs.clone().unwrap_or_else(|| kind.to_string());
                let msg = if e.unclean {
                    format!("partition {} ({}): {}", p.index, rep.filesystem, e.msg)
                } else {
                    format!(
                        "partition {} ({}): inconsistent metadata ({}): copied whole; check it with e2fsck -fn or xfs_repair -n",
                        p.index, rep.filesystem, e.msg
                    )
                };
                rep.warning = Some(msg.clone());
                out.warnings.push(msg);
            }
            None => {
                rep.filesystem = recognise(&r).unwrap_or("unknown").to_string();
                rep.warning = Some(format!(
                    "{}: free space is not read; copied whole",
                    rep.filesystem
                ));
            }
        }
        out.partitions.push(rep);
    }
    out.free = extent::normalize(std::mem::take(&mut out.free));
    if let Some(why) = &table.layout_error {
        // Partitions that overlap (or cover the table) are not separate
        // regions: one's free space can be another's data.
        out.warnings.push(format!(
            "partition table: {why}: filesystem-aware compaction is off for this disk, it is copied whole; check the table with `sfdisk --verify` or `gdisk`"
        ));
        out.free.clear();
        for p in &mut out.partitions {
            p.fs_aware = false;
            p.skipped_bytes = 0;
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod testdisk {
    use crate::extent::Extent;
    use crate::image::{BlockSource, ImageFormat, Result};

    /// An in-memory disk for probe unit tests.
    pub struct MemDisk(pub Vec<u8>);

    impl BlockSource for MemDisk {
        fn format(&self) -> ImageFormat {
            ImageFormat::Raw
        }
        fn virtual_size(&self) -> u64 {
            self.0.len() as u64
        }
        fn data_extents(&self) -> Result<Vec<Extent>> {
            Ok(vec![Extent::new(0, self.0.len() as u64)])
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            buf.copy_from_slice(&self.0[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn host_allocated_bytes(&self) -> u64 {
            0
        }
    }
}
