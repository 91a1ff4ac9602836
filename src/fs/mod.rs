//! Read-only filesystem probes and their free-space maps. `compact` treats
//! provably free space as zeros (never read, never written); `analyze`
//! reports it. A filesystem is skipped only when it is provably quiescent
//! and its metadata is consistent; anything else is copied whole, with a
//! warning that says why and what would fix it.
//!
//! Not here: mounting (the guest module), partition tables (`disk`).

pub mod btrfs;
pub(crate) mod crc;
pub mod ext4;
pub mod fat;
mod lvm;
pub mod ntfs;
pub mod swap;
pub mod xfs;

pub use lvm::LvReport;

use crate::disk::lvm::DiskRange;
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

/// Why a filesystem's free space is not used. `unclean` separates a
/// filesystem that needs its own repair tool (`fs` names it) from one
/// vmfinal cannot read; the message says which check failed.
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
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
    /// An LVM PV's logical volumes (all of its VG's, on the VG's first PV).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logical_volumes: Vec<LvReport>,
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

/// The filesystem probes, in order: the name of the first that recognises
/// `r` and its free-space map (or why it is not used); None if none does.
pub(crate) fn probe(r: &Region) -> Option<(&'static str, Result<FsFree, FsError>)> {
    if ext4::detect(r) {
        Some(("ext", ext4::free_space(r)))
    } else if xfs::detect(r) {
        Some(("xfs", xfs::free_space(r)))
    } else if fat::detect(r) {
        Some(("vfat", fat::free_space(r)))
    } else if ntfs::detect(r) {
        Some(("ntfs", ntfs::free_space(r)))
    } else if btrfs::detect(r) {
        Some(("btrfs", btrfs::free_space(r)))
    } else if swap::present(r) {
        // Swap last: it checks every other signature itself first.
        Some(("swap", swap::free_space(r)))
    } else {
        None
    }
}

/// The tool that checks a filesystem of this probe's kind.
fn check_tool(kind: &str) -> &'static str {
    match kind {
        "xfs" => "xfs_repair -n",
        "vfat" => "fsck.vfat -n",
        "ntfs" => "ntfsfix -n",
        "btrfs" => "btrfs check --readonly",
        _ => "e2fsck -fn",
    }
}

/// What the probes found in one region (a partition or an LV).
pub(crate) struct Finding {
    pub filesystem: String,
    pub label: String,
    pub used_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    pub skipped_bytes: u64,
    pub fs_aware: bool,
    pub warning: Option<String>,
    /// Disk ranges provably free (normalized).
    pub disk_free: Vec<Extent>,
}

/// Probes `r`, named `what` in warnings ("partition 2", "LV vg/root"), and
/// maps its free space to disk ranges with `to_disk` (region-relative,
/// normalized extents in; disk extents out). Inconsistencies and unclean
/// states are pushed to `warnings`.
pub(crate) fn examine(
    r: &Region,
    what: &str,
    allocated: &[Extent],
    to_disk: &dyn Fn(&[Extent]) -> Vec<Extent>,
    warnings: &mut Vec<String>,
) -> Finding {
    let mut f = Finding {
        filesystem: String::new(),
        label: String::new(),
        used_bytes: None,
        free_bytes: None,
        skipped_bytes: 0,
        fs_aware: false,
        warning: None,
        disk_free: Vec::new(),
    };
    match probe(r) {
        Some((_, Ok(free))) => {
            let rel = extent::clip(&extent::normalize(free.free), 0, r.len);
            let disk_free = extent::normalize(to_disk(&rel));
            let skipped = extent::subtract(allocated, &extent::subtract(allocated, &disk_free));
            f.filesystem = free.fs_type;
            f.label = free.label;
            f.free_bytes = Some(free.free_bytes);
            f.used_bytes = Some(free.size.saturating_sub(free.free_bytes));
            f.skipped_bytes = extent::total(&skipped);
            f.fs_aware = true;
            f.disk_free = disk_free;
        }
        Some((kind, Err(e))) => {
            f.filesystem = e.fs.clone().unwrap_or_else(|| kind.to_string());
            let msg = if e.unclean {
                format!("{what} ({}): {}", f.filesystem, e.msg)
            } else {
                format!(
                    "{what} ({}): inconsistent metadata ({}): copied whole; check it with {}",
                    f.filesystem,
                    e.msg,
                    check_tool(kind)
                )
            };
            f.warning = Some(msg.clone());
            warnings.push(msg);
        }
        None => {
            f.filesystem = recognise(r).unwrap_or("unknown").to_string();
            f.warning = Some(format!(
                "{}: free space is not read; copied whole",
                f.filesystem
            ));
        }
    }
    f
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
    let ranges: Vec<DiskRange> = table
        .partitions
        .iter()
        .map(|p| DiskRange {
            index: p.index,
            start: p.start,
            len: p.size,
        })
        .collect();
    let lvm = disk::lvm::scan(source, &ranges);
    for p in &table.partitions {
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
            logical_volumes: Vec::new(),
        };
        if lvm.is_pv(p.index) {
            out.free.extend(lvm::pv_partition(
                source,
                allocated,
                &lvm,
                &mut rep,
                &mut out.warnings,
            ));
            out.partitions.push(rep);
            continue;
        }
        let r = Region {
            src: source,
            start: p.start,
            len: p.size,
        };
        let to_disk = |v: &[Extent]| -> Vec<Extent> {
            v.iter()
                .map(|e| Extent::new(p.start + e.start, e.len))
                .collect()
        };
        let f = examine(
            &r,
            &format!("partition {}", p.index),
            allocated,
            &to_disk,
            &mut out.warnings,
        );
        rep.filesystem = f.filesystem;
        rep.label = f.label;
        rep.used_bytes = f.used_bytes;
        rep.free_bytes = f.free_bytes;
        rep.skipped_bytes = f.skipped_bytes;
        rep.fs_aware = f.fs_aware;
        rep.warning = f.warning;
        out.free.extend(f.disk_free);
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
            for lv in &mut p.logical_volumes {
                lv.fs_aware = false;
                lv.skipped_bytes = 0;
            }
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
