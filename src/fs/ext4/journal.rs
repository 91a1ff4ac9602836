//! ext3/4 internal journal: it must have nothing to replay. A clear
//! needs_recovery flag alone is one source; the journal superblock's
//! `s_start` (0 when empty) and `s_errno` are the other: e2fsck replays a
//! non-empty journal even when the flag is clear, and a replay could write
//! into blocks the bitmaps call free.
//!
//! Not here: the journal's blocks (walked as inode blocks by `inodes`).

use super::ExtErr;
use super::superblock::{COMPAT_HAS_JOURNAL, Super};
use crate::bytes::be32;
use crate::fs::{FsError, Region};

const JBD2_MAGIC: u32 = 0xC03B_3998;
const JBD2_SUPERBLOCK_V1: u32 = 3;
const JBD2_SUPERBLOCK_V2: u32 = 4;
const JSB_BLOCKTYPE: usize = 4;
const JSB_START: usize = 28;
const JSB_ERRNO: usize = 32;

/// Checks the journal whose first block is at `first` (from the walk).
pub fn check(r: &Region, sb: &Super, first: Option<u64>) -> Result<(), FsError> {
    if sb.compat & COMPAT_HAS_JOURNAL == 0 || sb.journal_inum == 0 {
        return Ok(());
    }
    let e = ExtErr(sb.name);
    let Some(first) = first else {
        return Err(e.inconsistent("the journal inode has no first block"));
    };
    let j = r.read(first * sb.block, 1024)?;
    let btype = be32(&j, JSB_BLOCKTYPE);
    if be32(&j, 0) != JBD2_MAGIC || (btype != JBD2_SUPERBLOCK_V1 && btype != JBD2_SUPERBLOCK_V2) {
        return Err(e.inconsistent("the journal superblock is not valid"));
    }
    if be32(&j, JSB_START) != 0 {
        return Err(e.refuse(
            "journal holds transactions to replay although needs_recovery is clear; run `e2fsck -fy` on it",
        ));
    }
    if be32(&j, JSB_ERRNO) != 0 {
        return Err(e.refuse("journal recorded an error (aborted); run `e2fsck -fy` on it"));
    }
    Ok(())
}
