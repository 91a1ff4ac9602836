//! ext3/4 internal journal: it must have nothing to replay. A clear
//! needs_recovery flag alone is one source; the journal superblock's
//! `s_start` (0 when empty) and `s_errno` are the other: e2fsck replays a
//! non-empty journal even when the flag is clear, and a replay could write
//! into blocks the bitmaps call free.
//!
//! The journal superblock's own checksum (csum v2/v3) is verified, and
//! journal feature bits vmfinal does not know are refused.
//!
//! Not here: the journal's blocks (walked as inode blocks by `inodes`).

use super::ExtErr;
use super::superblock::{COMPAT_HAS_JOURNAL, Super};
use crate::bytes::be32;
use crate::fs::{FsError, Region, crc};

const JBD2_MAGIC: u32 = 0xC03B_3998;
const JBD2_SUPERBLOCK_V1: u32 = 3;
const JBD2_SUPERBLOCK_V2: u32 = 4;
const JSB_BLOCKTYPE: usize = 4;
const JSB_START: usize = 28;
const JSB_ERRNO: usize = 32;
const JSB_INCOMPAT: usize = 0x28;
const JSB_CHECKSUM_TYPE: usize = 0x50;
const JSB_CHECKSUM: usize = 0xFC;
const JSB_LEN: usize = 1024;
/// revoke, 64bit, async_commit, csum_v2, csum_v3, fast_commit.
const JBD2_INCOMPAT_KNOWN: u32 = 0x3F;
const JBD2_INCOMPAT_CSUM: u32 = 0x8 | 0x10;
const JBD2_CRC32C_CHKSUM: u8 = 4;

/// Checks the journal whose first block is at `first` (from the walk).
pub fn check(r: &Region, sb: &Super, first: Option<u64>) -> Result<(), FsError> {
    if sb.compat & COMPAT_HAS_JOURNAL == 0 || sb.journal_inum == 0 {
        return Ok(());
    }
    let e = ExtErr(sb.name);
    let Some(first) = first else {
        return Err(e.inconsistent("the journal inode has no first block"));
    };
    let mut j = r.read(first * sb.block, JSB_LEN)?;
    let btype = be32(&j, JSB_BLOCKTYPE);
    if be32(&j, 0) != JBD2_MAGIC || (btype != JBD2_SUPERBLOCK_V1 && btype != JBD2_SUPERBLOCK_V2) {
        return Err(e.inconsistent("the journal superblock is not valid"));
    }
    let incompat = if btype == JBD2_SUPERBLOCK_V2 {
        be32(&j, JSB_INCOMPAT)
    } else {
        0
    };
    if incompat & !JBD2_INCOMPAT_KNOWN != 0 {
        return Err(e.refuse(format!(
            "the journal has feature bits vmfinal does not know ({:#x})",
            incompat & !JBD2_INCOMPAT_KNOWN
        )));
    }
    if incompat & JBD2_INCOMPAT_CSUM != 0 {
        let stored = be32(&j, JSB_CHECKSUM);
        j[JSB_CHECKSUM..JSB_CHECKSUM + 4].fill(0);
        if j[JSB_CHECKSUM_TYPE] != JBD2_CRC32C_CHKSUM || crc::crc32c_update(!0, &j) != stored {
            return Err(e.inconsistent("journal superblock checksum mismatch"));
        }
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
