//! ext2/3/4: which blocks are provably free. A block is skipped only when
//! two independent sources agree: the block bitmap calls it free (bitmap
//! checksum and descriptor count verified), and nothing in use holds it:
//! neither group metadata nor any block of a live inode (see `inodes`).
//! Anything vmfinal does not understand (a feature bit, a state, a checksum
//! that does not match) means the filesystem is copied whole, with the
//! reason.
//!
//! Submodules: `superblock` (geometry, features, state, checksum), `groups`
//! (descriptors, their checksums, group metadata layout), `bitmap` (the
//! free map), `inodes` (the in-use cross-check), `journal` (nothing to
//! replay).
//!
//! Not here: mounting or repairing anything; ext4 is only ever read.

mod bitmap;
mod groups;
mod inodes;
mod journal;
mod superblock;

pub use superblock::MAGIC;

use super::{FsError, FsFree, Region};
use crate::bytes::le16;
use crate::extent::Extent;

/// Builds the errors that carry their whole message (printed as is).
#[derive(Clone, Copy)]
struct ExtErr(&'static str);

impl ExtErr {
    /// A feature or state vmfinal does not understand.
    fn refuse(self, why: impl std::fmt::Display) -> FsError {
        refuse(self.0, format!("{why}: copied whole"))
    }
    /// Metadata that contradicts itself or the other source.
    fn inconsistent(self, why: impl std::fmt::Display) -> FsError {
        refuse(
            self.0,
            format!(
                "{why}: the filesystem is inconsistent, copied whole; repair it with `e2fsck -f` before compacting"
            ),
        )
    }
}

fn refuse(name: &str, msg: impl Into<String>) -> FsError {
    FsError::unclean(name, msg)
}

/// True if the region holds an ext2/3/4 superblock.
pub fn detect(r: &Region) -> bool {
    r.read(superblock::SB_OFFSET + 56, 2)
        .is_ok_and(|b| le16(&b, 0) == MAGIC)
}

/// Reads the free-space map of the ext filesystem in `r`, cross-checked
/// against every in-use block.
pub fn free_space(r: &Region) -> Result<FsFree, FsError> {
    free_space_with_stats(r).map(|(f, _)| f)
}

fn free_space_with_stats(r: &Region) -> Result<(FsFree, inodes::WalkStats), FsError> {
    let sb = superblock::parse(r)?;
    let free = bitmap::read_free_map(r, &sb)?;
    let mut check = inodes::Checker::new(r, &sb, &free);
    let mut descs = groups::Descs::new(r, &sb);
    for g in 0..sb.groups {
        let d = descs.get(g)?;
        check.check_group(g, &d)?;
    }
    journal::check(r, &sb, check.journal_first)?;
    let stats = check.stats;
    let mut out = FsFree::new(sb.name, &sb.label, sb.blocks * sb.block);
    let unit = sb.unit();
    let fs_end = sb.blocks * sb.block;
    out.free = free
        .runs()
        .iter()
        .map(|&(u, n)| {
            let start = (sb.first_data_block + u * sb.ratio) * sb.block;
            // A partial last cluster ends at the filesystem's end.
            Extent::new(start, (n * unit).min(fs_end - start))
        })
        .collect();
    out.free_bytes = free.counted_units * unit;
    Ok((out, stats))
}

#[cfg(test)]
mod tests;
