//! One xfs allocation group: its free extents, and the cross-checks they
//! must pass before any is skipped. The by-block (bnobt) and by-size
//! (cntbt) free-space trees must list the same extents, which must add up
//! to the AGF's free count and longest extent and never overlap; none of
//! them may cover the AG headers, a block of any AG btree (free space,
//! inode, free-inode, reverse-mapping, refcount root), a block on the AG
//! free list, an inode chunk (inobt) or the log; and where the
//! reverse-mapping tree exists, no extent it says is owned may be free.
//!
//! Not here: the btree block format (`btree`), the superblock (`superblock`).

use super::btree::{self, Ag, Root};
use super::crc_ok;
use super::superblock::Sb;
use crate::bytes::{be16, be32};
use crate::fs::{FsError, Region};

const AGF_MAGIC: &[u8; 4] = b"XAGF";
const AGI_MAGIC: &[u8; 4] = b"XAGI";
const AGFL_MAGIC: &[u8; 4] = b"XAFL";
const AGF_CRC: usize = 216;
const AGI_CRC: usize = 312;
const AGFL_CRC: usize = 32;
const AGFL_V5_HEADER: usize = 36;
/// Inodes per chunk, and per bit of a sparse chunk's hole mask.
const INODES_PER_CHUNK: u64 = 64;
const INODES_PER_HOLEMASK_BIT: u64 = 4;
/// Headers in each AG: superblock, AGF, AGI, AGFL sectors.
const HEADER_SECTORS: u64 = 4;

fn inconsistent(ag: u64, why: impl std::fmt::Display) -> FsError {
    FsError::unclean(
        "xfs",
        format!(
            "AG {ag}: {why}: the filesystem is inconsistent, copied whole; check it with `xfs_repair -n`"
        ),
    )
}

/// Sorted, disjoint free extents of one AG, `(agbno, blocks)`.
struct Free(Vec<(u64, u64)>);

impl Free {
    /// The first free block in `[start, start + len)`.
    fn first_in(&self, start: u64, len: u64) -> Option<u64> {
        let end = start.saturating_add(len);
        let i = self.0.partition_point(|&(s, n)| s + n <= start);
        let (s, _) = *self.0.get(i)?;
        (s < end).then(|| s.max(start))
    }
}

/// Checks AG `no` and returns its free extents, `(agbno, blocks)`, sorted.
pub fn free_extents(r: &Region, sb: &Sb, no: u64) -> Result<Vec<(u64, u64)>, FsError> {
    let start = no * sb.agblocks * sb.block;
    let agf = r.read(start + sb.sect, sb.sect as usize)?;
    if &agf[0..4] != AGF_MAGIC || be32(&agf, 4) != 1 || be32(&agf, 8) as u64 != no {
        return Err(FsError::corrupt(format!("AG {no}: bad AGF header")));
    }
    if sb.v5 && (!crc_ok(&agf, AGF_CRC) || agf[64..80] != sb.meta_uuid) {
        return Err(FsError::corrupt(format!("AG {no}: AGF checksum mismatch")));
    }
    let len = be32(&agf, 12) as u64;
    let want_len = if no + 1 == sb.agcount {
        sb.dblocks - no * sb.agblocks
    } else {
        sb.agblocks
    };
    if len != want_len {
        return Err(FsError::corrupt(format!(
            "AG {no}: AGF length {len}, expected {want_len}"
        )));
    }
    let ag = Ag { no, start, len };
    let mut tree_blocks = Vec::new();
    let root = |at: usize, levels_at: usize| Root {
        block: be32(&agf, at) as u64,
        levels: be32(&agf, levels_at),
    };
    let bno = read_free_tree(r, sb, &ag, &btree::BNOBT, root(16, 28), &mut tree_blocks)?;
    let mut cnt = read_free_tree(r, sb, &ag, &btree::CNTBT, root(20, 32), &mut tree_blocks)?;
    let free = Free(bno);
    check_counts(no, &free.0, &agf)?;
    cnt.sort_unstable();
    if cnt != free.0 {
        return Err(inconsistent(
            no,
            "the by-block and by-size free-space trees list different free extents",
        ));
    }
    let used = |b: u64, n: u64, what: &dyn std::fmt::Display| -> Result<(), FsError> {
        if b.checked_add(n).is_none_or(|e| e > len) {
            return Err(inconsistent(
                no,
                format!("{what} lies past the end of the AG"),
            ));
        }
        match free.first_in(b, n) {
            Some(f) => Err(inconsistent(
                no,
                format!("block {f} is listed as free, but holds {what}"),
            )),
            None => Ok(()),
        }
    };
    let hdr_blocks = (HEADER_SECTORS * sb.sect).div_ceil(sb.block);
    used(0, hdr_blocks, &"the AG headers")?;
    if sb.rmapbt() {
        let mut owned = Vec::new();
        btree::walk(
            r,
            sb,
            &ag,
            &btree::RMAPBT,
            root(24, 36),
            &mut tree_blocks,
            |rec| {
                owned.push((be32(rec, 0) as u64, be32(rec, 4) as u64));
                Ok(())
            },
        )?;
        for (b, n) in owned {
            used(
                b,
                n,
                &format_args!("space the reverse-mapping tree says is owned ({b}+{n})"),
            )?;
        }
    }
    if sb.reflink() {
        used(be32(&agf, 88) as u64, 1, &"the refcount btree root")?;
    }
    for (b, n, ino) in inode_chunks(r, sb, &ag, &mut tree_blocks)? {
        used(b, n, &format_args!("the inode chunk at inode {ino}"))?;
    }
    for b in tree_blocks {
        used(b, 1, &"a btree block")?;
    }
    for b in agfl(r, sb, &ag, &agf)? {
        used(b, 1, &"a block on the AG free list")?;
    }
    if let Some((log_off, log_len)) = super::log::extent(sb)
        && log_off < start + len * sb.block
        && log_off + log_len > start
    {
        let b = log_off.saturating_sub(start) / sb.block;
        let e = ((log_off + log_len - start) / sb.block).min(len);
        used(b, e - b, &"the log")?;
    }
    Ok(free.0)
}

/// Walks a free-space tree; returns its extents sorted by block.
fn read_free_tree(
    r: &Region,
    sb: &Sb,
    ag: &Ag,
    tree: &btree::Tree,
    root: Root,
    blocks: &mut Vec<u64>,
) -> Result<Vec<(u64, u64)>, FsError> {
    let mut out = Vec::new();
    let no = ag.no;
    btree::walk(r, sb, ag, tree, root, blocks, |rec| {
        let (s, c) = (be32(rec, 0) as u64, be32(rec, 4) as u64);
        if c == 0 || s + c > ag.len {
            return Err(FsError::corrupt(format!(
                "AG {no}: free extent {s}+{c} outside the AG"
            )));
        }
        out.push((s, c));
        Ok(())
    })?;
    out.sort_unstable();
    Ok(out)
}

/// The bnobt's extents are disjoint and match the AGF's counters.
fn check_counts(no: u64, free: &[(u64, u64)], agf: &[u8]) -> Result<(), FsError> {
    if free.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
        return Err(inconsistent(no, "free extents overlap"));
    }
    let total: u64 = free.iter().map(|e| e.1).sum();
    let longest = free.iter().map(|e| e.1).max().unwrap_or(0);
    let (freeblks, agf_longest) = (be32(agf, 52) as u64, be32(agf, 56) as u64);
    if total != freeblks || longest != agf_longest {
        return Err(inconsistent(
            no,
            format!(
                "the free-space tree lists {total} free blocks (longest {longest}), the AGF says {freeblks} (longest {agf_longest})"
            ),
        ));
    }
    Ok(())
}

/// The allocated parts of every inode chunk (inobt), as `(agbno, blocks,
/// first inode)`; collects the inode and free-inode btree blocks.
fn inode_chunks(
    r: &Region,
    sb: &Sb,
    ag: &Ag,
    tree_blocks: &mut Vec<u64>,
) -> Result<Vec<(u64, u64, u64)>, FsError> {
    let agi = r.read(ag.start + 2 * sb.sect, sb.sect as usize)?;
    let no = ag.no;
    if &agi[0..4] != AGI_MAGIC || be32(&agi, 4) != 1 || be32(&agi, 8) as u64 != no {
        return Err(FsError::corrupt(format!("AG {no}: bad AGI header")));
    }
    if sb.v5 && (!crc_ok(&agi, AGI_CRC) || agi[296..312] != sb.meta_uuid) {
        return Err(FsError::corrupt(format!("AG {no}: AGI checksum mismatch")));
    }
    let root = |at: usize, levels_at: usize| Root {
        block: be32(&agi, at) as u64,
        levels: be32(&agi, levels_at),
    };
    let mut chunks = Vec::new();
    btree::walk(r, sb, ag, &btree::INOBT, root(20, 24), tree_blocks, |rec| {
        let start = be32(rec, 0) as u64;
        let holes = if sb.sparse_inodes() { be16(rec, 4) } else { 0 };
        chunks.push((start, holes));
        Ok(())
    })?;
    if sb.finobt() {
        btree::walk(
            r,
            sb,
            ag,
            &btree::FINOBT,
            root(328, 332),
            tree_blocks,
            |_| Ok(()),
        )?;
    }
    let shift = sb.inopblog;
    let mut out = Vec::new();
    for (start, holes) in chunks {
        for i in 0..INODES_PER_CHUNK / INODES_PER_HOLEMASK_BIT {
            if holes & (1 << i) != 0 {
                continue;
            }
            let first = start + i * INODES_PER_HOLEMASK_BIT;
            let (b, e) = (
                first >> shift,
                (first + INODES_PER_HOLEMASK_BIT - 1) >> shift,
            );
            out.push((b, e - b + 1, start));
        }
    }
    Ok(out)
}

/// The blocks on the AG free list (between `flfirst` and `fllast`).
fn agfl(r: &Region, sb: &Sb, ag: &Ag, agf: &[u8]) -> Result<Vec<u64>, FsError> {
    let no = ag.no;
    let fl = r.read(ag.start + 3 * sb.sect, sb.sect as usize)?;
    let hdr = if sb.v5 {
        if &fl[0..4] != AGFL_MAGIC
            || be32(&fl, 4) as u64 != no
            || fl[8..24] != sb.meta_uuid
            || !crc_ok(&fl, AGFL_CRC)
        {
            return Err(FsError::corrupt(format!("AG {no}: bad AGFL")));
        }
        AGFL_V5_HEADER
    } else {
        0
    };
    let size = ((sb.sect as usize - hdr) / 4) as u64;
    let (first, last, count) = (
        be32(agf, 40) as u64,
        be32(agf, 44) as u64,
        be32(agf, 48) as u64,
    );
    if count > size || (count > 0 && (first >= size || last >= size)) {
        return Err(FsError::corrupt(format!("AG {no}: implausible free list")));
    }
    Ok((0..count)
        .map(|k| be32(&fl, hdr + (((first + k) % size) as usize) * 4) as u64)
        .collect())
}
