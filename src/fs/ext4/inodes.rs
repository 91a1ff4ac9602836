//! ext2/3/4 in-use cross-check: the second, independent source. Every
//! group's metadata (superblock backups, GDT, reserved GDT, bitmaps, inode
//! table) and every block a live inode holds (data, extent index/leaf
//! blocks, indirect blocks, xattr block) must be in use in the block
//! bitmaps; one that the bitmap calls free means the filesystem is
//! inconsistent and it is copied whole. Reads metadata only: inode tables,
//! extent tree blocks and indirect blocks, never file data.
//!
//! "Live" follows e2fsck pass 1, so that nothing a repair would keep can be
//! skipped: reserved inodes and the inodes the superblock names (journal,
//! quota, orphan file) always; other inodes when their link count is not
//! zero. Which inodes exist follows e2fsck too: with group checksums, an
//! INODE_UNINIT group and the `bg_itable_unused` tail hold none, except that
//! a zeroed (INODE_ZEROED) table is read whole and an inode with links there
//! is an inconsistency (e2fsck finds it through its directory entry).
//!
//! Not here: the bitmaps themselves (`bitmap`), the journal's state (`journal`).

use super::ExtErr;
use super::bitmap::FreeMap;
use super::groups::{self, BG_INODE_ZEROED, Desc};
use super::superblock::{Csum, Super};
use crate::bytes::{le16, le32};
use crate::fs::{FsError, Region, crc};
use std::fmt;

const I_MODE: usize = 0x00;
const I_SIZE: usize = 0x04;
const I_LINKS: usize = 0x1A;
const I_BLOCKS: usize = 0x1C;
const I_FLAGS: usize = 0x20;
const I_BLOCK: usize = 0x28;
const I_BLOCK_LEN: usize = 60;
const I_GENERATION: usize = 0x64;
const I_FILE_ACL: usize = 0x68;
const I_SIZE_HIGH: usize = 0x6C;
const I_BLOCKS_HI: usize = 0x74;
const I_FILE_ACL_HIGH: usize = 0x76;
const I_CHECKSUM_LO: usize = 0x7C;
const I_EXTRA_ISIZE: usize = 0x80;
const I_CHECKSUM_HI: usize = 0x82;
/// `i_extra_isize` that reaches past `i_checksum_hi`.
const CSUM_HI_EXTRA_END: u16 = 4;
const GOOD_OLD_INODE_SIZE: usize = 128;
const EXTENTS_FL: u32 = 0x0008_0000;
const INLINE_DATA_FL: u32 = 0x1000_0000;
const S_IFMT: u16 = 0xF000;
const S_IFDIR: u16 = 0x4000;
const S_IFREG: u16 = 0x8000;
const S_IFLNK: u16 = 0xA000;
const BAD_BLOCKS_INO: u64 = 1;
const EXT_MAGIC: u16 = 0xF30A;
const EXT_MAX_DEPTH: u16 = 5;
const EXT_UNWRITTEN: u16 = 32768;
/// Bytes of the inode table read at a time.
const ITABLE_CHUNK: u64 = 1 << 20;

/// What holds a block, for the warning.
#[derive(Clone, Copy)]
enum Holder {
    Group(u64, &'static str),
    Data(u64),
    Tree(u64),
    Xattr(u64),
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Holder::Group(g, what) => write!(f, "{what} of group {g}"),
            Holder::Data(i) => write!(f, "data of inode {i}"),
            Holder::Tree(i) => write!(f, "the block map (extent or indirect block) of inode {i}"),
            Holder::Xattr(i) => write!(f, "the extended-attribute block of inode {i}"),
        }
    }
}

/// What the walk saw, for tests and the cost measurement.
#[derive(Debug, Default, Clone, Copy)]
pub struct WalkStats {
    pub inodes_read: u64,
    pub live_inodes: u64,
    pub tree_blocks_read: u64,
}

/// Checks group metadata and live inodes against the free map.
pub struct Checker<'a> {
    r: &'a Region<'a>,
    sb: &'a Super,
    free: &'a FreeMap,
    e: ExtErr,
    /// Tree blocks that may still be read (a consistent filesystem has at
    /// most one per block): bounds the work on looping or shared trees.
    budget: u64,
    /// Physical block of the journal's first logical block.
    pub journal_first: Option<u64>,
    pub stats: WalkStats,
    meta: Vec<(u64, u64, &'static str)>,
}

/// Coalesces consecutive blocks into one range check.
struct Run {
    start: u64,
    len: u64,
}

impl<'a> Checker<'a> {
    pub fn new(r: &'a Region<'a>, sb: &'a Super, free: &'a FreeMap) -> Self {
        Self {
            r,
            sb,
            free,
            e: ExtErr(sb.name),
            // A consistent tree block is a used block, referenced once.
            budget: sb
                .blocks
                .saturating_sub(free.runs().iter().map(|r| r.1 * sb.ratio).sum::<u64>()),
            journal_first: None,
            stats: WalkStats::default(),
            meta: Vec::new(),
        }
    }

    /// Blocks `[blk, blk + n)` belong to `who`: they must lie inside the
    /// filesystem and be in use in the bitmaps.
    fn used(&self, blk: u64, n: u64, who: Holder) -> Result<(), FsError> {
        let sb = self.sb;
        if n == 0 {
            return Ok(());
        }
        if blk.checked_add(n).is_none_or(|e| e > sb.blocks) {
            return Err(self.e.inconsistent(format!(
                "{who} refers to blocks {blk}..{} past the end of the filesystem",
                blk.saturating_add(n)
            )));
        }
        let end = blk + n;
        // Blocks before the first data block (the 1 KiB boot block) are in no bitmap.
        let blk = blk.max(sb.first_data_block);
        if blk >= end {
            return Ok(());
        }
        let first = (blk - sb.first_data_block) / sb.ratio;
        let last = (end - 1 - sb.first_data_block) / sb.ratio;
        if let Some(u) = self.free.first_free_in(first, last - first + 1) {
            let b = sb.first_data_block + u * sb.ratio;
            let b = b.max(blk);
            return Err(self.e.inconsistent(format!(
                "block {b} is free in the block bitmap of group {}, but holds {who}",
                u / sb.units_per_group
            )));
        }
        Ok(())
    }

    fn read_tree_block(&mut self, blk: u64, who: Holder) -> Result<Vec<u8>, FsError> {
        self.used(blk, 1, who)?;
        if self.budget == 0 {
            return Err(self.e.inconsistent(format!(
                "the block maps reference more blocks than the filesystem has (a loop?), at {who}"
            )));
        }
        self.budget -= 1;
        self.stats.tree_blocks_read += 1;
        self.r.read(blk * self.sb.block, self.sb.block as usize)
    }

    /// Checks group `g`: its metadata, its inode bitmap checksum, its inodes.
    pub fn check_group(&mut self, g: u64, d: &Desc) -> Result<(), FsError> {
        let sb = self.sb;
        self.meta.clear();
        groups::layout_metadata(sb, g, &mut self.meta);
        self.meta.push((d.block_bitmap, 1, "the block bitmap"));
        self.meta.push((d.inode_bitmap, 1, "the inode bitmap"));
        self.meta
            .push((d.inode_table, sb.itable_blocks(), "the inode table"));
        for i in 0..self.meta.len() {
            let (b, n, what) = self.meta[i];
            self.used(b, n, Holder::Group(g, what))?;
        }
        let ipg = sb.inodes_per_group;
        let in_use = if d.inode_uninit(sb) {
            0
        } else if sb.has_csum() {
            ipg - d.itable_unused
        } else {
            ipg
        };
        if matches!(sb.csum, Csum::Metadata(_)) && !d.inode_uninit(sb) {
            let b = self.r.read(d.inode_bitmap * sb.block, (ipg / 8) as usize)?;
            if !groups::bitmap_csum_ok(sb, &b, d.inode_bitmap_csum, groups::inode_csum_has_hi(sb)) {
                return Err(self
                    .e
                    .inconsistent(format!("group {g}: inode bitmap checksum mismatch")));
            }
        }
        let to_read = if sb.has_csum() && d.flags & BG_INODE_ZEROED != 0 {
            ipg
        } else {
            in_use
        };
        self.scan_table(g, d.inode_table, in_use, to_read)
    }

    /// Reads the first `to_read` inodes of group `g`'s table at `table`;
    /// the first `in_use` may be live.
    fn scan_table(&mut self, g: u64, table: u64, in_use: u64, to_read: u64) -> Result<(), FsError> {
        let sb = self.sb;
        let isz = sb.inode_size;
        let bytes = to_read * isz;
        let mut off = 0u64;
        while off < bytes {
            let n = ITABLE_CHUNK.min(bytes - off);
            let chunk = self.r.read(table * sb.block + off, n as usize)?;
            for (k, raw) in chunk.chunks_exact(isz as usize).enumerate() {
                let idx = off / isz + k as u64;
                let ino = g * sb.inodes_per_group + idx + 1;
                self.stats.inodes_read += 1;
                if idx >= in_use {
                    if le16(raw, I_LINKS) != 0 {
                        return Err(self.e.inconsistent(format!(
                            "inode {ino} has links but lies in the unused part of group {g}'s inode table"
                        )));
                    }
                    continue;
                }
                self.inode(ino, raw)?;
            }
            off += n;
        }
        Ok(())
    }

    /// Walks inode `ino` if a repair would keep it.
    fn inode(&mut self, ino: u64, raw: &[u8]) -> Result<(), FsError> {
        let sb = self.sb;
        let special = ino < sb.first_ino || sb.special_inodes.contains(&ino);
        if !special && le16(raw, I_LINKS) == 0 {
            return Ok(());
        }
        self.stats.live_inodes += 1;
        if let Csum::Metadata(seed) = sb.csum
            && !inode_csum_ok(seed, ino, raw)
        {
            return Err(self
                .e
                .inconsistent(format!("inode {ino}: checksum mismatch")));
        }
        let flags = le32(raw, I_FLAGS);
        let mut acl = le32(raw, I_FILE_ACL) as u64;
        if sb.is_64bit() {
            acl |= (le16(raw, I_FILE_ACL_HIGH) as u64) << 32;
        }
        if acl != 0 {
            self.used(acl, 1, Holder::Xattr(ino))?;
        }
        if flags & INLINE_DATA_FL != 0 {
            if !sb.inline_data() {
                return Err(self.e.inconsistent(format!(
                    "inode {ino} has inline data on a filesystem without inline_data"
                )));
            }
            return Ok(());
        }
        if !has_blocks(raw, acl) && ino != BAD_BLOCKS_INO {
            return Ok(());
        }
        let iblock = &raw[I_BLOCK..I_BLOCK + I_BLOCK_LEN];
        if flags & EXTENTS_FL != 0 {
            if !sb.extents() {
                return Err(self.e.inconsistent(format!(
                    "inode {ino} uses extents on a filesystem without the extent feature"
                )));
            }
            self.extents(ino, le32(raw, I_GENERATION), iblock, None)
        } else {
            self.block_map(ino, iblock)
        }
    }

    /// Walks an extent tree node (the inode's `i_block` or a tree block;
    /// `generation` is the inode's, for tree block checksums).
    fn extents(
        &mut self,
        ino: u64,
        generation: u32,
        node: &[u8],
        want_depth: Option<u16>,
    ) -> Result<(), FsError> {
        let e = self.e;
        let bad = move |why: &str| e.inconsistent(format!("inode {ino}: extent tree {why}"));
        if le16(node, 0) != EXT_MAGIC {
            return Err(bad("header has a bad magic number"));
        }
        let (entries, max, depth) = (
            le16(node, 2) as usize,
            le16(node, 4) as usize,
            le16(node, 6),
        );
        if entries > max || 12 + max * 12 > node.len() || depth > EXT_MAX_DEPTH {
            return Err(bad("header is implausible"));
        }
        if want_depth.is_some_and(|w| w != depth) {
            return Err(bad("depth does not decrease by one per level"));
        }
        // Tree blocks (not the root in the inode) end in a checksum.
        if let (Some(_), Csum::Metadata(seed)) = (want_depth, self.sb.csum) {
            let tail = 12 + max * 12;
            if tail + 4 > node.len() {
                return Err(bad("block has no room for its checksum"));
            }
            let c = crc::crc32c_update(seed, &(ino as u32).to_le_bytes());
            let c = crc::crc32c_update(c, &generation.to_le_bytes());
            if crc::crc32c_update(c, &node[..tail]) != le32(node, tail) {
                return Err(bad("block checksum mismatch"));
            }
        }
        for i in 0..entries {
            let x = &node[12 + i * 12..24 + i * 12];
            if depth == 0 {
                let lblk = le32(x, 0);
                let raw_len = le16(x, 4);
                let len = if raw_len > EXT_UNWRITTEN {
                    raw_len - EXT_UNWRITTEN
                } else {
                    raw_len
                };
                let start = (le16(x, 6) as u64) << 32 | le32(x, 8) as u64;
                self.used(start, len as u64, Holder::Data(ino))?;
                if lblk == 0 && len > 0 && ino == self.sb.journal_inum {
                    self.journal_first = Some(start);
                }
            } else {
                let leaf = (le16(x, 8) as u64) << 32 | le32(x, 4) as u64;
                let child = self.read_tree_block(leaf, Holder::Tree(ino))?;
                self.extents(ino, generation, &child, Some(depth - 1))?;
            }
        }
        Ok(())
    }

    /// Walks a block-mapped inode: 12 direct, then single, double and
    /// triple indirect blocks.
    fn block_map(&mut self, ino: u64, iblock: &[u8]) -> Result<(), FsError> {
        let mut run = Run { start: 0, len: 0 };
        let first = le32(iblock, 0) as u64;
        if first != 0 && ino == self.sb.journal_inum {
            self.journal_first = Some(first);
        }
        for i in 0..12 {
            self.data(ino, le32(iblock, i * 4) as u64, &mut run)?;
        }
        for (i, level) in [(12usize, 1u32), (13, 2), (14, 3)] {
            let b = le32(iblock, i * 4) as u64;
            if b != 0 {
                self.indirect(ino, b, level, &mut run)?;
            }
        }
        self.flush(ino, &mut run)
    }

    fn indirect(&mut self, ino: u64, blk: u64, level: u32, run: &mut Run) -> Result<(), FsError> {
        let b = self.read_tree_block(blk, Holder::Tree(ino))?;
        for c in b.chunks_exact(4) {
            let e = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64;
            if e == 0 {
                continue;
            }
            if level == 1 {
                self.data(ino, e, run)?;
            } else {
                self.indirect(ino, e, level - 1, run)?;
            }
        }
        Ok(())
    }

    fn data(&mut self, ino: u64, blk: u64, run: &mut Run) -> Result<(), FsError> {
        if blk == 0 {
            return Ok(());
        }
        if run.len > 0 && run.start + run.len == blk {
            run.len += 1;
            return Ok(());
        }
        self.flush(ino, run)?;
        *run = Run { start: blk, len: 1 };
        Ok(())
    }

    fn flush(&mut self, ino: u64, run: &mut Run) -> Result<(), FsError> {
        let r = std::mem::replace(run, Run { start: 0, len: 0 });
        self.used(r.start, r.len, Holder::Data(ino))
    }
}

/// Verifies an inode's metadata_csum checksum (CRC-32C over inode number,
/// generation and the inode with its checksum fields zeroed). An all-zero
/// base inode passes, as e2fsck lets it.
fn inode_csum_ok(seed: u32, ino: u64, raw: &[u8]) -> bool {
    let has_hi = raw.len() > GOOD_OLD_INODE_SIZE && le16(raw, I_EXTRA_ISIZE) >= CSUM_HI_EXTRA_END;
    let mut stored = le16(raw, I_CHECKSUM_LO) as u32;
    let c = crc::crc32c_update(seed, &(ino as u32).to_le_bytes());
    let c = crc::crc32c_update(c, &raw[I_GENERATION..I_GENERATION + 4]);
    let c = crc::crc32c_update(c, &raw[..I_CHECKSUM_LO]);
    let c = crc::crc32c_update(c, &[0, 0]);
    let mut computed = if has_hi {
        stored |= (le16(raw, I_CHECKSUM_HI) as u32) << 16;
        let c = crc::crc32c_update(c, &raw[I_CHECKSUM_LO + 2..I_CHECKSUM_HI]);
        let c = crc::crc32c_update(c, &[0, 0]);
        crc::crc32c_update(c, &raw[I_CHECKSUM_HI + 2..])
    } else {
        crc::crc32c_update(c, &raw[I_CHECKSUM_LO + 2..])
    };
    if !has_hi {
        computed &= 0xFFFF;
    }
    computed == stored || raw[..GOOD_OLD_INODE_SIZE].iter().all(|&b| b == 0)
}

/// Whether `i_block` holds block references, as e2fsck decides
/// (`ext2fs_inode_has_valid_blocks2`): directories, regular files and
/// symlinks that are not fast symlinks.
fn has_blocks(raw: &[u8], acl: u64) -> bool {
    let fmt = le16(raw, I_MODE) & S_IFMT;
    if fmt != S_IFDIR && fmt != S_IFREG && fmt != S_IFLNK {
        return false;
    }
    if fmt == S_IFLNK {
        let size = le32(raw, I_SIZE) as u64 | (le32(raw, I_SIZE_HIGH) as u64) << 32;
        let blocks = le32(raw, I_BLOCKS) as u64 | (le16(raw, I_BLOCKS_HI) as u64) << 32;
        if acl == 0 {
            let fast = size != 0 && size < I_BLOCK_LEN as u64;
            return blocks != 0 && !fast;
        }
        return size >= I_BLOCK_LEN as u64 || (size > 4 && le32(raw, I_BLOCK + 4) == 0);
    }
    true
}
