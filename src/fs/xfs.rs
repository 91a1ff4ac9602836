//! xfs: free space from each allocation group's free-space B+tree by block
//! number (bnobt). v5 filesystems have every AGF and btree block checksum
//! (CRC32c) verified; the free blocks found must add up to each AGF's count.
//! Only a filesystem whose log ends with an unmount record (cleanly
//! unmounted) is used; anything else is copied whole.

use super::{FsError, FsFree, Region};
use crate::bytes::{be16, be32, be64};
use crate::extent::Extent;

const SB_MAGIC: &[u8; 4] = b"XFSB";
const AGF_MAGIC: &[u8; 4] = b"XAGF";
const BNOBT_MAGIC_V5: &[u8; 4] = b"AB3B";
const BNOBT_MAGIC_V4: &[u8; 4] = b"ABTB";
const AGF_CRC_OFFSET: usize = 216;
const BTREE_V5_HEADER: usize = 56;
const BTREE_V5_CRC_OFFSET: usize = 52;
const BTREE_V4_HEADER: usize = 16;
const LOG_RECORD_MAGIC: u32 = 0xFEED_BABE;
const LOG_SECTOR: u64 = 512;
const XLOG_UNMOUNT_TRANS: u8 = 0x20;
/// Btree blocks visited per AG at most (guards against loops).
const MAX_BTREE_BLOCKS: usize = 1 << 20;
const MAX_LEVELS: u32 = 10;

/// CRC-32C (Castagnoli), as xfs stores it (little-endian, over the
/// structure with its crc field zeroed).
pub fn crc32c(data: &[u8]) -> u32 {
    crate::bytes::crc32_reflected(0x82F6_3B78, data)
}

fn crc_ok(block: &[u8], at: usize) -> bool {
    let stored = u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
    let mut b = block.to_vec();
    b[at..at + 4].fill(0);
    crc32c(&b) == stored
}

pub fn detect(r: &Region) -> bool {
    r.read(0, 4).is_ok_and(|b| b == SB_MAGIC)
}

struct Sb {
    block: u64,
    sect: u64,
    agblocks: u64,
    agcount: u64,
    dblocks: u64,
    agblklog: u32,
    logstart: u64,
    logblocks: u64,
    v5: bool,
    label: String,
}

fn parse_sb(r: &Region) -> Result<Sb, FsError> {
    let b = r.read(0, 512)?;
    if &b[0..4] != SB_MAGIC {
        return Err(FsError::corrupt("bad xfs superblock magic"));
    }
    let block = be32(&b, 4) as u64;
    let sect = be16(&b, 102) as u64;
    let v5 = be16(&b, 100) & 0xF == 5;
    let sb = Sb {
        block,
        sect,
        agblocks: be32(&b, 84) as u64,
        agcount: be32(&b, 88) as u64,
        dblocks: be64(&b, 8),
        agblklog: b[124] as u32,
        logstart: be64(&b, 48),
        logblocks: be32(&b, 96) as u64,
        v5,
        label: String::from_utf8_lossy(b[108..120].split(|&c| c == 0).next().unwrap_or(&[]))
            .into_owned(),
    };
    if !(512..=65536).contains(&block)
        || !block.is_power_of_two()
        || !(512..=32768).contains(&sect)
        || !sect.is_power_of_two()
    {
        return Err(FsError::corrupt("implausible xfs block or sector size"));
    }
    if sb.agblocks == 0
        || sb.agcount == 0
        || sb.agcount > 1 << 20
        || sb.agblklog > 31
        || (1u64 << sb.agblklog) < sb.agblocks
    {
        return Err(FsError::corrupt("implausible xfs allocation groups"));
    }
    if sb.dblocks.checked_mul(block).is_none_or(|s| s > r.len)
        || sb.dblocks > sb.agcount * sb.agblocks
    {
        return Err(FsError::corrupt("xfs data blocks do not fit the partition"));
    }
    if v5 {
        let full = r.read(0, sect as usize)?;
        if !crc_ok(&full, 224) {
            return Err(FsError::corrupt("xfs superblock checksum mismatch"));
        }
    }
    if b[126] != 0 {
        return Err(FsError::unclean(
            "xfs",
            "mkfs did not finish (sb_inprogress): copied whole",
        ));
    }
    Ok(sb)
}

/// True if the internal log's last record is an unmount record.
fn log_is_clean(r: &Region, sb: &Sb) -> Result<bool, FsError> {
    if sb.logstart == 0 {
        return Ok(false); // external log: cannot tell
    }
    let agno = sb.logstart >> sb.agblklog;
    let agbno = sb.logstart & ((1 << sb.agblklog) - 1);
    let start = (agno * sb.agblocks + agbno) * sb.block;
    let len = sb.logblocks * sb.block;
    // The record with the highest LSN is the last one written.
    let mut best: Option<(u64, u64)> = None; // (lsn, byte offset of the header)
    let chunk = 1u64 << 20;
    let mut off = 0u64;
    while off < len {
        let n = chunk.min(len - off);
        let b = r.read(start + off, n as usize)?;
        for s in (0..n).step_by(LOG_SECTOR as usize) {
            let s = s as usize;
            if be32(&b, s) == LOG_RECORD_MAGIC && s + 48 <= b.len() {
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

/// Walks AG `ag`'s bnobt; appends free extents (partition byte offsets) and
/// returns the free block count.
fn ag_free(r: &Region, sb: &Sb, ag: u64, out: &mut Vec<Extent>) -> Result<u64, FsError> {
    let ag_start = ag * sb.agblocks * sb.block;
    let agf = r.read(ag_start + sb.sect, sb.sect as usize)?;
    if &agf[0..4] != AGF_MAGIC || be32(&agf, 8) as u64 != ag {
        return Err(FsError::corrupt(format!("AG {ag}: bad AGF header")));
    }
    if sb.v5 && !crc_ok(&agf, AGF_CRC_OFFSET) {
        return Err(FsError::corrupt(format!("AG {ag}: AGF checksum mismatch")));
    }
    let ag_len = be32(&agf, 12) as u64;
    let root = be32(&agf, 16) as u64;
    let levels = be32(&agf, 28);
    let freeblks = be32(&agf, 52) as u64;
    if ag_len > sb.agblocks || levels == 0 || levels > MAX_LEVELS || root == 0 || root >= ag_len {
        return Err(FsError::corrupt(format!("AG {ag}: implausible AGF")));
    }
    let (magic, hdr) = if sb.v5 {
        (BNOBT_MAGIC_V5, BTREE_V5_HEADER)
    } else {
        (BNOBT_MAGIC_V4, BTREE_V4_HEADER)
    };
    let bs = sb.block as usize;
    let maxrecs_leaf = (bs - hdr) / 8;
    let maxrecs_node = (bs - hdr) / 12;
    let mut found = 0u64;
    let mut visited = 0usize;
    let mut stack = vec![(root, levels - 1)];
    while let Some((bno, level)) = stack.pop() {
        visited += 1;
        if visited > MAX_BTREE_BLOCKS || bno == 0 || bno >= ag_len {
            return Err(FsError::corrupt(format!(
                "AG {ag}: free-space btree pointer {bno} is invalid"
            )));
        }
        let b = r.read(ag_start + bno * sb.block, bs)?;
        if &b[0..4] != magic || be16(&b, 4) as u32 != level {
            return Err(FsError::corrupt(format!(
                "AG {ag}: free-space btree block {bno} has a bad header"
            )));
        }
        if sb.v5 && !crc_ok(&b, BTREE_V5_CRC_OFFSET) {
            return Err(FsError::corrupt(format!(
                "AG {ag}: free-space btree block {bno} checksum mismatch"
            )));
        }
        let n = be16(&b, 6) as usize;
        if level == 0 {
            if n > maxrecs_leaf {
                return Err(FsError::corrupt(format!(
                    "AG {ag}: btree leaf {bno} has {n} records"
                )));
            }
            for i in 0..n {
                let s = be32(&b, hdr + i * 8) as u64;
                let c = be32(&b, hdr + i * 8 + 4) as u64;
                if c == 0 || s + c > ag_len {
                    return Err(FsError::corrupt(format!(
                        "AG {ag}: free extent {s}+{c} outside the AG"
                    )));
                }
                found += c;
                out.push(Extent::new(ag_start + s * sb.block, c * sb.block));
            }
        } else {
            if n == 0 || n > maxrecs_node {
                return Err(FsError::corrupt(format!(
                    "AG {ag}: btree node {bno} has {n} records"
                )));
            }
            let ptrs = hdr + maxrecs_node * 8;
            for i in 0..n {
                stack.push((be32(&b, ptrs + i * 4) as u64, level - 1));
            }
        }
    }
    if found != freeblks {
        return Err(FsError::corrupt(format!(
            "AG {ag}: btree lists {found} free blocks, the AGF says {freeblks}"
        )));
    }
    Ok(found)
}

pub fn free_space(r: &Region) -> Result<FsFree, FsError> {
    let sb = parse_sb(r)?;
    let mut out = FsFree::new("xfs", &sb.label, sb.dblocks * sb.block);
    if !log_is_clean(r, &sb)? {
        return Err(FsError::unclean(
            "xfs",
            "log not proven clean (no unmount record at its end): copied whole; mount and unmount it once, or run xfs_repair",
        ));
    }
    let mut free = 0u64;
    for ag in 0..sb.agcount {
        free += ag_free(r, &sb, ag, &mut out.free)?;
    }
    out.free_bytes = free * sb.block;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::testdisk::MemDisk;

    #[test]
    fn crc32c_known_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    fn fresh() -> Option<Vec<u8>> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.img");
        std::fs::File::create(&p)
            .unwrap()
            .set_len(320 << 20)
            .unwrap();
        let st = std::process::Command::new("mkfs.xfs")
            .args(["-q", "-f"])
            .arg(&p)
            .status();
        match st {
            Ok(s) if s.success() => Some(std::fs::read(&p).unwrap()),
            _ => {
                assert!(std::env::var("CI").is_err(), "mkfs.xfs is needed in CI");
                None
            }
        }
    }

    fn free_of(img: &[u8]) -> Result<FsFree, FsError> {
        let disk = MemDisk(img.to_vec());
        free_space(&Region {
            src: &disk,
            start: 0,
            len: img.len() as u64,
        })
    }

    #[test]
    fn fresh_xfs_is_clean_with_free_space() {
        let Some(img) = fresh() else { return };
        let f = free_of(&img).unwrap();
        assert!(f.free_bytes > 250 << 20, "{}", f.free_bytes);
    }

    #[test]
    fn corrupt_metadata_is_refused() {
        let Some(img) = fresh() else { return };
        let sect = be16(&img, 102) as usize;
        // AGF: flip a byte of the free count (checksum then fails).
        let mut b = img.clone();
        b[sect + 52] ^= 1;
        assert!(free_of(&b).is_err());
        // Superblock: agcount.
        let mut b = img.clone();
        b[88] = 0xFF;
        assert!(free_of(&b).is_err());
        // bnobt root block: flip a record byte.
        let mut b = img.clone();
        let root = be32(&img, sect + 16) as usize * be32(&img, 4) as usize;
        b[root + BTREE_V5_HEADER + 3] ^= 0x40;
        assert!(free_of(&b).is_err());
        // Random flips in the first AG's headers never panic.
        let mut b = img.clone();
        let mut x = 0x9e37u64;
        for _ in 0..40 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % 16384) as usize;
            let flip = (x >> 33) as u8 | 1;
            b[i] ^= flip;
            let _ = free_of(&b);
            b[i] ^= flip;
        }
    }
}
