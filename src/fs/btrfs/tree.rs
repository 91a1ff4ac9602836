//! btrfs trees as vmfinal reads them: the chunk map (logical -> physical,
//! from the superblock's sys_chunk_array, then the chunk tree), tree blocks
//! with their CRC32c, fsid, bytenr and level verified, and a bounded walk
//! over every leaf item of a tree. Pure parsing over byte slices, with the
//! block reads done through a closure.

use crate::bytes::{le16, le32, le64};

pub const HEADER: usize = 0x65;
const KEY: usize = 17;
const ITEM: usize = KEY + 8;
const KEY_PTR: usize = KEY + 16;
const CHUNK_FIXED: usize = 48;
const STRIPE: usize = 32;
pub const CHUNK_ITEM_KEY: u8 = 228;
/// Profiles with more than one device's worth of layout.
const MULTI_DEVICE_PROFILES: u64 = 0x8 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400;
/// Tree blocks visited per walk at most.
const MAX_BLOCKS: usize = 1 << 20;
const MAX_LEVEL: u8 = 7;

/// CRC-32C, as btrfs stores it (little-endian in the first csum bytes).
pub fn crc32c(data: &[u8]) -> u32 {
    crate::fs::crc::crc32c(data)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub objectid: u64,
    pub kind: u8,
    pub offset: u64,
}

pub fn key(b: &[u8]) -> Key {
    Key {
        objectid: le64(b, 0),
        kind: b[8],
        offset: le64(b, 9),
    }
}

/// One chunk: `length` logical bytes from `logical`, stored at each
/// `(devid, physical)` stripe (single and DUP profiles: the whole chunk per
/// stripe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub logical: u64,
    pub length: u64,
    pub flags: u64,
    pub stripes: Vec<(u64, u64)>,
}

/// Parses a chunk item (`b` starts at it); returns it and its size.
pub fn parse_chunk(logical: u64, b: &[u8]) -> Result<(Chunk, usize), String> {
    if b.len() < CHUNK_FIXED {
        return Err("truncated chunk item".into());
    }
    let n = le16(b, 44) as usize;
    let size = CHUNK_FIXED + n * STRIPE;
    if n == 0 || b.len() < size {
        return Err(format!("chunk at {logical} with {n} stripes"));
    }
    let c = Chunk {
        logical,
        length: le64(b, 0),
        flags: le64(b, 24),
        stripes: (0..n)
            .map(|i| {
                let s = &b[CHUNK_FIXED + i * STRIPE..];
                (le64(s, 0), le64(s, 8))
            })
            .collect(),
    };
    if c.length == 0 || c.logical.checked_add(c.length).is_none() {
        return Err(format!("chunk at {logical} of length {}", c.length));
    }
    if c.flags & MULTI_DEVICE_PROFILES != 0 {
        return Err(format!(
            "chunk at {logical} uses a multi-device profile ({:#x})",
            c.flags
        ));
    }
    Ok((c, size))
}

/// The superblock's sys_chunk_array.
pub fn parse_sys_array(b: &[u8]) -> Result<Vec<Chunk>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        if at + KEY > b.len() {
            return Err("sys_chunk_array ends inside a key".into());
        }
        let k = key(&b[at..]);
        if k.kind != CHUNK_ITEM_KEY {
            return Err(format!("sys_chunk_array holds an item of type {}", k.kind));
        }
        let (c, size) = parse_chunk(k.offset, &b[at + KEY..])?;
        out.push(c);
        at += KEY + size;
    }
    Ok(out)
}

/// Logical -> physical on device `devid` through `chunks`.
pub fn map(chunks: &[Chunk], devid: u64, logical: u64, len: u64) -> Option<u64> {
    let c = chunks
        .iter()
        .find(|c| logical >= c.logical && logical - c.logical < c.length)?;
    if logical - c.logical + len > c.length {
        return None;
    }
    let &(d, phys) = c.stripes.first()?;
    if d != devid {
        return None;
    }
    phys.checked_add(logical - c.logical)
}

/// What a tree block must match.
pub struct Expect<'a> {
    pub fsid: &'a [u8],
    pub nodesize: usize,
    pub generation: u64,
}

/// Verifies a tree block read from `logical` that should be at `level`.
pub fn check_block(b: &[u8], logical: u64, level: u8, e: &Expect) -> Result<(), String> {
    if b.len() != e.nodesize {
        return Err("short tree block".into());
    }
    if crc32c(&b[0x20..]) != le32(b, 0) {
        return Err(format!("tree block {logical}: checksum mismatch"));
    }
    if &b[0x20..0x30] != e.fsid {
        return Err(format!(
            "tree block {logical}: belongs to another filesystem"
        ));
    }
    if le64(b, 0x30) != logical {
        return Err(format!(
            "tree block {logical}: says it is at {}",
            le64(b, 0x30)
        ));
    }
    if b[0x64] != level {
        return Err(format!(
            "tree block {logical}: level {} where {level} was expected",
            b[0x64]
        ));
    }
    if le64(b, 0x50) > e.generation {
        return Err(format!("tree block {logical}: newer than the superblock"));
    }
    Ok(())
}

/// Reads the tree block at a logical address.
pub type ReadBlock<'a> = dyn FnMut(u64) -> Result<Vec<u8>, String> + 'a;
/// Visits one leaf item.
pub type Visit<'a> = dyn FnMut(Key, &[u8]) -> Result<(), String> + 'a;

/// Calls `f(key, item data)` for every leaf item of the tree rooted at
/// `root` (`level`), reading blocks with `read(logical)`.
pub fn walk(
    root: u64,
    level: u8,
    e: &Expect,
    read: &mut ReadBlock,
    f: &mut Visit,
) -> Result<(), String> {
    if level > MAX_LEVEL {
        return Err(format!("tree of level {level}"));
    }
    let mut stack = vec![(root, level)];
    let mut seen = std::collections::HashSet::new();
    while let Some((at, lvl)) = stack.pop() {
        if !seen.insert(at) {
            return Err(format!("tree block {at} is referenced twice"));
        }
        if seen.len() > MAX_BLOCKS {
            return Err("tree has too many blocks".into());
        }
        let b = read(at)?;
        check_block(&b, at, lvl, e)?;
        let n = le32(&b, 0x60) as usize;
        let per = if lvl == 0 { ITEM } else { KEY_PTR };
        if HEADER + n * per > b.len() {
            return Err(format!("tree block {at}: {n} items do not fit"));
        }
        let mut kids = Vec::with_capacity(if lvl == 0 { 0 } else { n });
        for i in 0..n {
            let p = &b[HEADER + i * per..];
            let k = key(p);
            if lvl == 0 {
                let (off, size) = (le32(p, KEY) as usize, le32(p, KEY + 4) as usize);
                let data = b
                    .get(HEADER + off..HEADER + off + size)
                    .ok_or_else(|| format!("tree block {at}: item {i} lies outside it"))?;
                f(k, data)?;
            } else {
                kids.push((le64(p, KEY), lvl - 1));
            }
        }
        // Depth first, in key order.
        stack.extend(kids.into_iter().rev());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn chunks_and_mapping() {
        let mut item = vec![0u8; 17 + 48 + 32];
        item[8] = CHUNK_ITEM_KEY;
        item[9..17].copy_from_slice(&(22u64 << 20).to_le_bytes());
        item[17..25].copy_from_slice(&(8u64 << 20).to_le_bytes());
        item[17 + 24..17 + 32].copy_from_slice(&2u64.to_le_bytes()); // SYSTEM
        item[17 + 44..17 + 46].copy_from_slice(&1u16.to_le_bytes());
        item[65..73].copy_from_slice(&1u64.to_le_bytes()); // devid
        item[73..81].copy_from_slice(&(1u64 << 20).to_le_bytes());
        let c = parse_sys_array(&item).unwrap();
        assert_eq!(c[0].stripes, vec![(1, 1 << 20)]);
        assert_eq!(map(&c, 1, (22 << 20) + 4096, 16384), Some((1 << 20) + 4096));
        assert_eq!(map(&c, 2, 22 << 20, 16384), None);
        assert_eq!(map(&c, 1, (30 << 20) - 4096, 16384), None);
        assert!(parse_sys_array(&item[..60]).is_err());
        item[17 + 24] = 0x10 | 2; // RAID1
        assert!(parse_sys_array(&item).is_err());
    }
}
