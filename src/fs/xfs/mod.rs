//! xfs: which blocks are provably free. A block is skipped only when both
//! free-space B+trees of its allocation group (by block number and by size)
//! list it, they agree with each other and with the AGF, and nothing in
//! use covers it: AG headers, btree blocks, the AG free list, inode chunks,
//! the log and, where the filesystem has one, every owned extent in the
//! reverse-mapping tree (see `ag`). v5 filesystems have every header and
//! btree block CRC32c-verified. Only a filesystem whose log ends with an
//! unmount record, without NEEDSREPAIR and without a feature bit vmfinal
//! does not know, is used; anything else is copied whole.
//!
//! Submodules: `superblock` (geometry, features, states), `log` (clean
//! unmount), `btree` (per-AG btree walk), `ag` (the cross-checks).
//!
//! Not here: file data forks; without rmapbt, an in-use extent that both
//! free-space trees consistently list as free is not detected (xfs_repair
//! finds it).

mod ag;
mod btree;
mod log;
mod superblock;

use super::{FsError, FsFree, Region};
use crate::extent::Extent;

/// CRC-32C (Castagnoli), as xfs stores it (little-endian, over the
/// structure with its crc field zeroed).
pub fn crc32c(data: &[u8]) -> u32 {
    super::crc::crc32c(data)
}

/// Whether the little-endian CRC-32C at `at` matches `block`.
fn crc_ok(block: &[u8], at: usize) -> bool {
    let Some(s) = block.get(at..at + 4) else {
        return false;
    };
    let stored = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let c = super::crc::crc32c_update(!0, &block[..at]);
    let c = super::crc::crc32c_update(c, &[0; 4]);
    !super::crc::crc32c_update(c, &block[at + 4..]) == stored
}

pub fn detect(r: &Region) -> bool {
    r.read(0, 4).is_ok_and(|b| b == superblock::SB_MAGIC)
}

pub fn free_space(r: &Region) -> Result<FsFree, FsError> {
    let sb = superblock::parse(r)?;
    let mut out = FsFree::new("xfs", &sb.label, sb.dblocks * sb.block);
    if !log::is_clean(r, &sb)? {
        return Err(FsError::unclean(
            "xfs",
            "log not proven clean (no unmount record at its end): copied whole; mount and unmount it once, or run xfs_repair",
        ));
    }
    let mut free = 0u64;
    for no in 0..sb.agcount {
        let ag_start = no * sb.agblocks * sb.block;
        for (s, c) in ag::free_extents(r, &sb, no)? {
            free += c;
            out.free
                .push(Extent::new(ag_start + s * sb.block, c * sb.block));
        }
    }
    out.free_bytes = free * sb.block;
    Ok(out)
}

#[cfg(test)]
mod tests;
