//! xfs per-AG (short-form) B+trees: walks one from its root, checking every
//! block's magic, level and record count, and on v5 its CRC, block number,
//! owner (the AG) and UUID, then hands each leaf record to the caller.
//! Bounded: at most `MAX_LEVELS` levels, and no block is visited twice.
//!
//! Not here: what the records mean (`ag`).

use super::crc_ok;
use super::superblock::Sb;
use crate::bytes::{be16, be32, be64};
use crate::fs::{FsError, Region};

const V5_HEADER: usize = 56;
const V5_CRC_OFFSET: usize = 52;
const V4_HEADER: usize = 16;
const MAX_LEVELS: u32 = 10;

/// One kind of per-AG btree.
pub struct Tree {
    pub name: &'static str,
    pub magic_v5: &'static [u8; 4],
    /// None: the tree exists only on v5 filesystems.
    pub magic_v4: Option<&'static [u8; 4]>,
    pub rec_len: usize,
    /// Key bytes per pointer in a node (low and high key for the
    /// overlapping rmap tree).
    pub key_len: usize,
}

pub const BNOBT: Tree = Tree {
    name: "free-space (by block)",
    magic_v5: b"AB3B",
    magic_v4: Some(b"ABTB"),
    rec_len: 8,
    key_len: 8,
};
pub const CNTBT: Tree = Tree {
    name: "free-space (by size)",
    magic_v5: b"AB3C",
    magic_v4: Some(b"ABTC"),
    rec_len: 8,
    key_len: 8,
};
pub const RMAPBT: Tree = Tree {
    name: "reverse-mapping",
    magic_v5: b"RMB3",
    magic_v4: None,
    rec_len: 24,
    key_len: 40,
};
pub const INOBT: Tree = Tree {
    name: "inode",
    magic_v5: b"IAB3",
    magic_v4: Some(b"IABT"),
    rec_len: 16,
    key_len: 4,
};
pub const FINOBT: Tree = Tree {
    name: "free-inode",
    magic_v5: b"FIB3",
    magic_v4: Some(b"FIBT"),
    rec_len: 16,
    key_len: 4,
};

/// An allocation group: number, byte offset in the partition, length in blocks.
pub struct Ag {
    pub no: u64,
    pub start: u64,
    pub len: u64,
}

/// A tree's root block and height, as the AG header records them.
#[derive(Clone, Copy)]
pub struct Root {
    pub block: u64,
    pub levels: u32,
}

/// Walks `tree` from `root` in `ag`: pushes every block of the tree onto
/// `blocks` and calls `rec` on each leaf record.
pub fn walk(
    r: &Region,
    sb: &Sb,
    ag: &Ag,
    tree: &Tree,
    root: Root,
    blocks: &mut Vec<u64>,
    mut rec: impl FnMut(&[u8]) -> Result<(), FsError>,
) -> Result<(), FsError> {
    let Root {
        block: root,
        levels,
    } = root;
    let name = tree.name;
    let n_ag = ag.no;
    let bad = |what: String| FsError::corrupt(format!("AG {n_ag}: {name} btree {what}"));
    let (magic, hdr) = match (sb.v5, tree.magic_v4) {
        (true, _) => (tree.magic_v5, V5_HEADER),
        (false, Some(m)) => (m, V4_HEADER),
        (false, None) => return Err(bad("on a v4 filesystem".into())),
    };
    if levels == 0 || levels > MAX_LEVELS || root == 0 || root >= ag.len {
        return Err(bad(format!(
            "root {root} with {levels} levels is implausible"
        )));
    }
    let bs = sb.block as usize;
    let maxrecs_leaf = (bs - hdr) / tree.rec_len;
    let maxrecs_node = (bs - hdr) / (tree.key_len + 4);
    let ptrs = hdr + maxrecs_node * tree.key_len;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(root, levels - 1)];
    while let Some((bno, level)) = stack.pop() {
        if bno == 0 || bno >= ag.len || !seen.insert(bno) {
            return Err(bad(format!("pointer {bno} is invalid (or the tree loops)")));
        }
        blocks.push(bno);
        let off = ag.start + bno * sb.block;
        let b = r.read(off, bs)?;
        if &b[0..4] != magic || be16(&b, 4) as u32 != level {
            return Err(bad(format!("block {bno} has a bad header")));
        }
        if sb.v5
            && (!crc_ok(&b, V5_CRC_OFFSET)
                || be64(&b, 16) != off / 512
                || be32(&b, 48) as u64 != ag.no
                || b[32..48] != sb.meta_uuid)
        {
            return Err(bad(format!(
                "block {bno} fails its checksum or self-description"
            )));
        }
        let n = be16(&b, 6) as usize;
        if level == 0 {
            if n > maxrecs_leaf {
                return Err(bad(format!("leaf {bno} has {n} records")));
            }
            for i in 0..n {
                rec(&b[hdr + i * tree.rec_len..hdr + (i + 1) * tree.rec_len])?;
            }
        } else {
            if n == 0 || n > maxrecs_node {
                return Err(bad(format!("node {bno} has {n} records")));
            }
            for i in 0..n {
                stack.push((be32(&b, ptrs + i * 4) as u64, level - 1));
            }
        }
    }
    Ok(())
}
