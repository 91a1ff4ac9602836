//! xfs primary superblock: geometry, feature bits and the states that mean
//! "copy whole": NEEDSREPAIR, an unfinished mkfs, any feature bit vmfinal
//! does not know (in sb_versionnum, sb_features2 or the v5 feature words),
//! pending log-incompatible items, a superblock checksum mismatch.
//!
//! Not here: the log (`log`), allocation groups (`ag`).

use super::crc_ok;
use crate::bytes::{be16, be32, be64};
use crate::fs::{FsError, Region};

pub const SB_MAGIC: &[u8; 4] = b"XFSB";
const SB_CRC_OFFSET: usize = 224;

const VERSION_NUMBITS: u16 = 0x000F;
const VERSION_SHAREDBIT: u16 = 0x0200;
const VERSION_MOREBITSBIT: u16 = 0x8000;
/// lazysbcount, attr2, projid32, crc, ftype (xfsprogs XFS_SB_VERSION2_OKBITS
/// plus the v5 CRC bit). Not parent pointers (0x10) nor the reserved bits.
const FEATURES2_KNOWN: u32 = 0x2 | 0x8 | 0x80 | 0x100 | 0x200;
/// finobt, rmapbt, reflink, inobtcount.
pub const RO_COMPAT_FINOBT: u32 = 0x1;
pub const RO_COMPAT_RMAPBT: u32 = 0x2;
pub const RO_COMPAT_REFLINK: u32 = 0x4;
const RO_COMPAT_KNOWN: u32 = 0xF;
/// ftype, sparse inodes, meta_uuid, bigtime, nrext64.
pub const INCOMPAT_SPINODES: u32 = 0x2;
const INCOMPAT_META_UUID: u32 = 0x4;
const INCOMPAT_NEEDSREPAIR: u32 = 0x10;
const INCOMPAT_KNOWN: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x20;

/// The superblock fields the probe uses, checked for plausibility.
#[derive(Debug, Clone)]
pub struct Sb {
    pub block: u64,
    pub sect: u64,
    pub agblocks: u64,
    pub agcount: u64,
    pub dblocks: u64,
    pub agblklog: u32,
    pub inopblog: u32,
    pub logstart: u64,
    pub logblocks: u64,
    pub v5: bool,
    pub ro_compat: u32,
    pub incompat: u32,
    /// The UUID metadata blocks carry (sb_meta_uuid with META_UUID).
    pub meta_uuid: [u8; 16],
    pub label: String,
}

impl Sb {
    pub fn rmapbt(&self) -> bool {
        self.ro_compat & RO_COMPAT_RMAPBT != 0
    }
    pub fn finobt(&self) -> bool {
        self.ro_compat & RO_COMPAT_FINOBT != 0
    }
    pub fn reflink(&self) -> bool {
        self.ro_compat & RO_COMPAT_REFLINK != 0
    }
    pub fn sparse_inodes(&self) -> bool {
        self.incompat & INCOMPAT_SPINODES != 0
    }
    /// Filesystem block `fsb` (AG number in the high bits) as (ag, agbno).
    pub fn split(&self, fsb: u64) -> (u64, u64) {
        (fsb >> self.agblklog, fsb & ((1u64 << self.agblklog) - 1))
    }
}

fn refuse(msg: impl Into<String>) -> FsError {
    FsError::unclean("xfs", msg)
}

/// Reads and checks the primary superblock.
pub fn parse(r: &Region) -> Result<Sb, FsError> {
    let b = r.read(0, 512)?;
    if &b[0..4] != SB_MAGIC {
        return Err(FsError::corrupt("bad xfs superblock magic"));
    }
    let block = be32(&b, 4) as u64;
    let sect = be16(&b, 102) as u64;
    let version = be16(&b, 100);
    let v5 = version & VERSION_NUMBITS == 5;
    if !(512..=65536).contains(&block)
        || !block.is_power_of_two()
        || !(512..=32768).contains(&sect)
        || !sect.is_power_of_two()
        || sect > block
    {
        return Err(FsError::corrupt("implausible xfs block or sector size"));
    }
    if v5 {
        let full = r.read(0, sect as usize)?;
        if !crc_ok(&full, SB_CRC_OFFSET) {
            return Err(FsError::corrupt("xfs superblock checksum mismatch"));
        }
    }
    check_features(&b, version, v5)?;
    let mut meta_uuid = [0u8; 16];
    let incompat = if v5 { be32(&b, 216) } else { 0 };
    let uuid_at = if v5 && incompat & INCOMPAT_META_UUID != 0 {
        248
    } else {
        32
    };
    meta_uuid.copy_from_slice(&b[uuid_at..uuid_at + 16]);
    let sb = Sb {
        block,
        sect,
        agblocks: be32(&b, 84) as u64,
        agcount: be32(&b, 88) as u64,
        dblocks: be64(&b, 8),
        agblklog: b[124] as u32,
        inopblog: b[123] as u32,
        logstart: be64(&b, 48),
        logblocks: be32(&b, 96) as u64,
        v5,
        ro_compat: if v5 { be32(&b, 212) } else { 0 },
        incompat,
        meta_uuid,
        label: String::from_utf8_lossy(b[108..120].split(|&c| c == 0).next().unwrap_or(&[]))
            .into_owned(),
    };
    let inopblock = be16(&b, 106) as u64;
    if sb.agblocks == 0
        || sb.agcount == 0
        || sb.agcount > 1 << 20
        || sb.agblklog > 31
        || (1u64 << sb.agblklog) < sb.agblocks
        || inopblock == 0
        || sb.inopblog > 8
        || 1u64 << sb.inopblog != inopblock
    {
        return Err(FsError::corrupt("implausible xfs allocation groups"));
    }
    if sb.dblocks.checked_mul(block).is_none_or(|s| s > r.len)
        || sb.dblocks > sb.agcount * sb.agblocks
        || sb.dblocks <= (sb.agcount - 1) * sb.agblocks
    {
        return Err(FsError::corrupt("xfs data blocks do not fit the partition"));
    }
    if b[126] != 0 {
        return Err(refuse("mkfs did not finish (sb_inprogress): copied whole"));
    }
    Ok(sb)
}

fn check_features(b: &[u8], version: u16, v5: bool) -> Result<(), FsError> {
    let vnum = version & VERSION_NUMBITS;
    if vnum != 4 && vnum != 5 {
        return Err(refuse(format!(
            "superblock version {vnum} is not one vmfinal reads: copied whole"
        )));
    }
    if version & VERSION_SHAREDBIT != 0 {
        return Err(refuse(
            "has the (never implemented) shared-superblock bit: copied whole",
        ));
    }
    let f2 = if version & VERSION_MOREBITSBIT != 0 {
        be32(b, 200)
    } else {
        0
    };
    let unknown2 = f2 & !FEATURES2_KNOWN;
    let (compat, ro, inc, log) = if v5 {
        (be32(b, 208), be32(b, 212), be32(b, 216), be32(b, 220))
    } else {
        (0, 0, 0, 0)
    };
    if inc & INCOMPAT_NEEDSREPAIR != 0 {
        return Err(refuse(
            "is marked NEEDSREPAIR (a repair did not finish): copied whole; run xfs_repair on it",
        ));
    }
    let (ro_x, inc_x) = (ro & !RO_COMPAT_KNOWN, inc & !INCOMPAT_KNOWN);
    if unknown2 | compat | ro_x | inc_x != 0 {
        return Err(refuse(format!(
            "has feature bits vmfinal does not know (features2 {unknown2:#x}, compat {compat:#x}, ro_compat {ro_x:#x}, incompat {inc_x:#x}): copied whole"
        )));
    }
    if log != 0 {
        return Err(refuse(format!(
            "has log-incompatible items pending (log_incompat {log:#x}): copied whole; mount and unmount it once"
        )));
    }
    Ok(())
}
