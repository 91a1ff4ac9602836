//! Read-only filesystem probes and their free-space maps, used by `compact`
//! to treat free blocks as zeros and by `analyze` to report.
//! TODO(helper): ext2/3/4, xfs, swap; partition tables in `disk`.

use crate::extent::Extent;
use crate::image::BlockSource;

/// What the probes found on a disk.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FsScan {
    /// Guest byte ranges that are provably free: safe to treat as zeros.
    pub free: Vec<Extent>,
    /// Per-partition findings for reports.
    pub partitions: Vec<serde_json::Value>,
    /// Human warnings (e.g. a dirty journal: copied whole).
    pub warnings: Vec<String>,
}

/// Probes the partition table and filesystems of `source`.
pub fn scan(_source: &dyn BlockSource) -> FsScan {
    FsScan::default()
}
