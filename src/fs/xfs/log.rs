//! xfs internal log: the filesystem is quiescent only when the log record
//! with the highest LSN is an unmount record. An external log cannot be
//! checked, so such a filesystem is not proven clean.
//!
//! Not here: replaying or parsing log items.

use super::superblock::Sb;
use crate::bytes::{be32, be64};
use crate::fs::{FsError, Region};

const LOG_RECORD_MAGIC: u32 = 0xFEED_BABE;
const LOG_SECTOR: u64 = 512;
const XLOG_UNMOUNT_TRANS: u8 = 0x20;

/// Byte offset and length of the internal log, if it lies inside the filesystem.
pub fn extent(sb: &Sb) -> Option<(u64, u64)> {
    if sb.logstart == 0 {
        return None;
    }
    let (agno, agbno) = sb.split(sb.logstart);
    let first = agno.checked_mul(sb.agblocks)?.checked_add(agbno)?;
    let end = first.checked_add(sb.logblocks)?;
    (agno < sb.agcount && sb.logblocks > 0 && end <= sb.dblocks)
        .then(|| (first * sb.block, sb.logblocks * sb.block))
}

/// True if the internal log's last record is an unmount record.
pub fn is_clean(r: &Region, sb: &Sb) -> Result<bool, FsError> {
    let Some((start, len)) = extent(sb) else {
        return Ok(false); // external or implausible log: cannot tell
    };
    // The record with the highest LSN is the last one written.
    let mut best: Option<(u64, u64)> = None; // (lsn, byte offset of the header)
    let chunk = 1u64 << 20;
    let mut off = 0u64;
    while off < len {
        let n = chunk.min(len - off);
        let b = r.read(start + off, n as usize)?;
        for s in (0..n).step_by(LOG_SECTOR as usize) {
            let s = s as usize;
            if s + 48 <= b.len() && be32(&b, s) == LOG_RECORD_MAGIC {
                let lsn = be64(&b, s + 16);
                if best.is_none_or(|(l, _)| lsn > l) {
                    best = Some((lsn, start + off + s as u64));
                }
            }
        }
        off += n;
    }
    let Some((_, hdr)) = best else {
        return Ok(false);
    };
    let h = r.read(hdr, 512)?;
    let num_ops = be32(&h, 40);
    let version = be32(&h, 8);
    let size = be32(&h, 320) as u64;
    let hdr_sectors = if version & 2 != 0 && size > 32768 {
        size.div_ceil(32768)
    } else {
        1
    };
    let op = r.read(hdr + hdr_sectors * LOG_SECTOR, 16)?;
    // ophdr: tid u32, len u32, clientid u8, flags u8.
    Ok(num_ops >= 1 && op[9] & XLOG_UNMOUNT_TRANS != 0)
}
