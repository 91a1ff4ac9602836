//! ext2/3/4 block groups: where each group's descriptor lives (classic GDT
//! or meta_bg), the descriptor fields and their checksum (gdt_csum CRC-16 or
//! metadata_csum CRC-32C), and the group metadata that must never be
//! skipped: superblock backups, GDT and reserved GDT blocks, meta_bg
//! descriptor blocks, bitmaps and inode tables.
//!
//! Not here: reading the bitmaps (`bitmap`) or the inodes (`inodes`).

use super::ExtErr;
use super::superblock::{COMPAT_SPARSE_SUPER2, Csum, RO_COMPAT_SPARSE_SUPER, Super};
use crate::bytes::{le16, le32};
use crate::fs::{FsError, Region, crc};

pub const BG_INODE_UNINIT: u16 = 0x1;
pub const BG_BLOCK_UNINIT: u16 = 0x2;
pub const BG_INODE_ZEROED: u16 = 0x4;
const BG_FLAGS_KNOWN: u16 = 0x7;
const BG_CHECKSUM: usize = 0x1E;
/// The block bitmap checksum has a high half when the descriptor reaches
/// past `bg_block_bitmap_csum_hi` (0x38 + 2); the inode bitmap's past 0x3A + 2.
const BLOCK_CSUM_HI_END: u64 = 0x3A;
const INODE_CSUM_HI_END: u64 = 0x3C;

/// One group descriptor, checksum verified.
#[derive(Debug, Clone)]
pub struct Desc {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
    pub free_units: u64,
    pub flags: u16,
    pub itable_unused: u64,
    pub block_bitmap_csum: u32,
    pub inode_bitmap_csum: u32,
}

impl Desc {
    pub fn inode_uninit(&self, sb: &Super) -> bool {
        self.flags & BG_INODE_UNINIT != 0 && sb.has_csum()
    }
}

/// Whether group `g` holds a superblock backup.
pub fn has_super(sb: &Super, g: u64) -> bool {
    if g == 0 {
        return true;
    }
    if sb.compat & COMPAT_SPARSE_SUPER2 != 0 {
        return g == sb.backup_bgs[0] || g == sb.backup_bgs[1];
    }
    if g <= 1 || sb.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 {
        return true;
    }
    if g % 2 == 0 {
        return false;
    }
    [3u64, 5, 7].iter().any(|&p| {
        let mut x = p;
        while x < g {
            x *= p; // x < g <= 2^22: no overflow
        }
        x == g
    })
}

/// Blocks of the classic GDT copy (incl. reserved GDT) after each superblock.
fn old_desc_blocks(sb: &Super) -> u64 {
    if sb.meta_bg() {
        sb.first_meta_bg
    } else {
        sb.desc_blocks + sb.reserved_gdt
    }
}

/// Block holding group `g`'s descriptor (primary copy).
fn desc_block(sb: &Super, g: u64) -> u64 {
    let dpb = sb.desc_per_block;
    let mg = g / dpb;
    if sb.meta_bg() && mg >= sb.first_meta_bg {
        let first = mg * dpb;
        return sb.group_block(first) + u64::from(has_super(sb, first));
    }
    sb.group_block(0) + 1 + mg
}

/// Group `g`'s static metadata as (first block, count, what), from the
/// layout rules alone (the descriptor adds bitmaps and inode table).
pub fn layout_metadata(sb: &Super, g: u64, out: &mut Vec<(u64, u64, &'static str)>) {
    let gb = sb.group_block(g);
    let sup = has_super(sb, g);
    if sup {
        out.push((gb, 1, "a superblock"));
    }
    let dpb = sb.desc_per_block;
    if !sb.meta_bg() || g / dpb < sb.first_meta_bg {
        if sup {
            out.push((gb + 1, old_desc_blocks(sb), "the group descriptor table"));
        }
    } else {
        let i = g % dpb;
        if i == 0 || i == 1 || i == dpb - 1 {
            out.push((gb + u64::from(sup), 1, "a meta_bg descriptor block"));
        }
    }
}

/// Reads group descriptors in order, one descriptor block at a time.
pub struct Descs<'a> {
    r: &'a Region<'a>,
    sb: &'a Super,
    e: ExtErr,
    cached: Option<(u64, Vec<u8>)>,
}

impl<'a> Descs<'a> {
    pub fn new(r: &'a Region<'a>, sb: &'a Super) -> Self {
        Self {
            r,
            sb,
            e: ExtErr(sb.name),
            cached: None,
        }
    }

    /// Group `g`'s descriptor; its checksum is verified and its fields
    /// bounds-checked.
    pub fn get(&mut self, g: u64) -> Result<Desc, FsError> {
        let sb = self.sb;
        let blk = desc_block(sb, g);
        if blk >= sb.blocks {
            return Err(FsError::corrupt(format!(
                "group {g}: descriptor block {blk} lies outside the filesystem"
            )));
        }
        if self.cached.as_ref().is_none_or(|(b, _)| *b != blk) {
            let data = self.r.read(blk * sb.block, sb.block as usize)?;
            self.cached = Some((blk, data));
        }
        let Some((_, block)) = self.cached.as_ref() else {
            return Err(FsError::corrupt("descriptor cache"));
        };
        let off = ((g % sb.desc_per_block) * sb.desc_size) as usize;
        let d = &block[off..off + sb.desc_size as usize];
        self.verify(g, d)?;
        let wide = sb.desc_size >= 64;
        let hi32 = |at: usize| if wide { (le32(d, at) as u64) << 32 } else { 0 };
        let hi16 = |at: usize| if wide { (le16(d, at) as u64) << 16 } else { 0 };
        let desc = Desc {
            block_bitmap: le32(d, 0x0) as u64 | hi32(0x20),
            inode_bitmap: le32(d, 0x4) as u64 | hi32(0x24),
            inode_table: le32(d, 0x8) as u64 | hi32(0x28),
            free_units: le16(d, 0xC) as u64 | hi16(0x2C),
            flags: le16(d, 0x12),
            itable_unused: le16(d, 0x1C) as u64 | hi16(0x32),
            block_bitmap_csum: le16(d, 0x18) as u32
                | if sb.desc_size >= BLOCK_CSUM_HI_END {
                    (le16(d, 0x38) as u32) << 16
                } else {
                    0
                },
            inode_bitmap_csum: le16(d, 0x1A) as u32
                | if sb.desc_size >= INODE_CSUM_HI_END {
                    (le16(d, 0x3A) as u32) << 16
                } else {
                    0
                },
        };
        self.check(g, &desc)?;
        Ok(desc)
    }

    fn verify(&self, g: u64, d: &[u8]) -> Result<(), FsError> {
        let sb = self.sb;
        let le_g = (g as u32).to_le_bytes();
        let stored = le16(d, BG_CHECKSUM);
        let computed = match sb.csum {
            Csum::None => return Ok(()),
            Csum::Metadata(seed) => {
                let c = crc::crc32c_update(seed, &le_g);
                let c = crc::crc32c_update(c, &d[..BG_CHECKSUM]);
                let c = crc::crc32c_update(c, &[0, 0]);
                let c = crc::crc32c_update(c, &d[BG_CHECKSUM + 2..]);
                (c & 0xFFFF) as u16
            }
            Csum::Gdt => {
                let c = crc::crc16_update(!0, &sb.uuid);
                let c = crc::crc16_update(c, &le_g);
                let c = crc::crc16_update(c, &d[..BG_CHECKSUM]);
                crc::crc16_update(c, &d[BG_CHECKSUM + 2..])
            }
        };
        if computed != stored {
            return Err(self
                .e
                .inconsistent(format!("group {g}: descriptor checksum mismatch")));
        }
        Ok(())
    }

    fn check(&self, g: u64, d: &Desc) -> Result<(), FsError> {
        let sb = self.sb;
        if d.flags & !BG_FLAGS_KNOWN != 0 {
            return Err(self.e.refuse(format!(
                "group {g}: unknown descriptor flags {:#x}",
                d.flags
            )));
        }
        if d.free_units > sb.units_per_group || d.itable_unused > sb.inodes_per_group {
            return Err(FsError::corrupt(format!(
                "group {g}: descriptor counts {} free clusters, {} unused inodes",
                d.free_units, d.itable_unused
            )));
        }
        let inside = |b: u64, n: u64| {
            b >= sb.first_data_block && b.checked_add(n).is_some_and(|e| e <= sb.blocks)
        };
        if !inside(d.block_bitmap, 1)
            || !inside(d.inode_bitmap, 1)
            || !inside(d.inode_table, sb.itable_blocks())
        {
            return Err(FsError::corrupt(format!(
                "group {g}: bitmaps or inode table lie outside the filesystem"
            )));
        }
        Ok(())
    }
}

/// Verifies a bitmap's checksum (metadata_csum only; `hi`: all 32 bits stored).
pub fn bitmap_csum_ok(sb: &Super, bitmap: &[u8], stored: u32, hi: bool) -> bool {
    let Csum::Metadata(seed) = sb.csum else {
        return true;
    };
    let c = crc::crc32c_update(seed, bitmap);
    if hi {
        c == stored
    } else {
        c & 0xFFFF == stored
    }
}

/// Whether the descriptor stores the high half of the block bitmap checksum.
pub fn block_csum_has_hi(sb: &Super) -> bool {
    sb.desc_size >= BLOCK_CSUM_HI_END
}

/// Whether the descriptor stores the high half of the inode bitmap checksum.
pub fn inode_csum_has_hi(sb: &Super) -> bool {
    sb.desc_size >= INODE_CSUM_HI_END
}
