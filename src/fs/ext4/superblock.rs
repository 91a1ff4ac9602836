//! ext2/3/4 superblock: geometry, feature bits, state and the superblock
//! checksum. Everything vmfinal does not know is refused here: an unknown
//! feature bit, a revision, state bit or checksum type it does not
//! understand, a geometry that does not add up.
//!
//! Not here: group descriptors (`groups`), bitmaps, inodes.

use super::{ExtErr, refuse};
use crate::bytes::{le16, le32};
use crate::fs::{FsError, Region, crc};

pub const MAGIC: u16 = 0xEF53;
pub const SB_OFFSET: u64 = 1024;
pub const SB_LEN: usize = 1024;
const SB_CSUM_OFFSET: usize = 0x3FC;

// Offsets in the superblock.
const S_BLOCKS_COUNT: usize = 0x04;
const S_FIRST_DATA_BLOCK: usize = 0x14;
const S_LOG_BLOCK_SIZE: usize = 0x18;
const S_LOG_CLUSTER_SIZE: usize = 0x1C;
const S_BLOCKS_PER_GROUP: usize = 0x20;
const S_CLUSTERS_PER_GROUP: usize = 0x24;
const S_INODES_PER_GROUP: usize = 0x28;
const S_INODES_COUNT: usize = 0x00;
const S_MAGIC: usize = 0x38;
const S_STATE: usize = 0x3A;
const S_CREATOR_OS: usize = 0x48;
const S_REV_LEVEL: usize = 0x4C;
const S_FIRST_INO: usize = 0x54;
const S_INODE_SIZE: usize = 0x58;
const S_FEATURE_COMPAT: usize = 0x5C;
const S_FEATURE_INCOMPAT: usize = 0x60;
const S_FEATURE_RO_COMPAT: usize = 0x64;
const S_UUID: usize = 0x68;
const S_VOLUME_NAME: usize = 0x78;
const S_RESERVED_GDT_BLOCKS: usize = 0xCE;
const S_JOURNAL_UUID: usize = 0xD0;
const S_JOURNAL_INUM: usize = 0xE0;
const S_LAST_ORPHAN: usize = 0xE8;
const S_DESC_SIZE: usize = 0xFE;
const S_FIRST_META_BG: usize = 0x104;
const S_BLOCKS_COUNT_HI: usize = 0x150;
const S_CHECKSUM_TYPE: usize = 0x175;
const S_SNAPSHOT_INUM: usize = 0x180;
const S_USR_QUOTA_INUM: usize = 0x240;
const S_GRP_QUOTA_INUM: usize = 0x244;
const S_BACKUP_BGS: usize = 0x24C;
const S_PRJ_QUOTA_INUM: usize = 0x26C;
const S_CHECKSUM_SEED: usize = 0x270;
const S_ORPHAN_FILE_INUM: usize = 0x280;

// Feature bits (e2fsprogs lib/ext2fs/ext2_fs.h).
pub const COMPAT_HAS_JOURNAL: u32 = 0x4;
pub const COMPAT_SPARSE_SUPER2: u32 = 0x200;
/// dir_prealloc, imagic_inodes, has_journal, ext_attr, resize_inode,
/// dir_index, sparse_super2, fast_commit, stable_inodes, orphan_file.
const COMPAT_KNOWN: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x200 | 0x400 | 0x800 | 0x1000;

pub const INCOMPAT_RECOVER: u32 = 0x4;
pub const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
pub const INCOMPAT_META_BG: u32 = 0x10;
pub const INCOMPAT_EXTENTS: u32 = 0x40;
pub const INCOMPAT_64BIT: u32 = 0x80;
pub const INCOMPAT_MMP: u32 = 0x100;
pub const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub const INCOMPAT_INLINE_DATA: u32 = 0x8000;
/// filetype, recover, journal_dev, meta_bg, extents, 64bit, mmp, flex_bg,
/// ea_inode, csum_seed, large_dir, inline_data, encrypt, casefold. Not
/// compression (0x1) nor Lustre's dirdata (0x1000).
const INCOMPAT_KNOWN: u32 = 0x2
    | 0x4
    | 0x8
    | 0x10
    | 0x40
    | 0x80
    | 0x100
    | 0x200
    | 0x400
    | 0x2000
    | 0x4000
    | 0x8000
    | 0x10000
    | 0x20000;

pub const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub const RO_COMPAT_GDT_CSUM: u32 = 0x10;
pub const RO_COMPAT_BIGALLOC: u32 = 0x200;
pub const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
pub const RO_COMPAT_ORPHAN_PRESENT: u32 = 0x10000;
/// sparse_super, large_file, huge_file, gdt_csum, dir_nlink, extra_isize,
/// quota, bigalloc, metadata_csum, readonly, project, verity,
/// orphan_present. Not btree_dir, has_snapshot, replica, shared_blocks.
const RO_COMPAT_KNOWN: u32 = 0x1
    | 0x2
    | 0x8
    | 0x10
    | 0x20
    | 0x40
    | 0x100
    | 0x200
    | 0x400
    | 0x1000
    | 0x2000
    | 0x8000
    | 0x10000;

const STATE_VALID: u16 = 0x1;
const CREATOR_HURD: u32 = 1;
const CHECKSUM_TYPE_CRC32C: u8 = 1;
const GOOD_OLD_INODE_SIZE: u64 = 128;
const GOOD_OLD_FIRST_INO: u64 = 11;
/// Groups handled at most (a 64 TiB filesystem of 4 KiB blocks has 512 Ki).
const MAX_GROUPS: u64 = 1 << 22;

/// How group descriptors and bitmaps are checksummed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Csum {
    None,
    /// gdt_csum (uninit_bg): CRC-16 over UUID, group number, descriptor.
    Gdt,
    /// metadata_csum: CRC-32C with this seed.
    Metadata(u32),
}

/// The superblock fields the probe uses, checked for plausibility.
#[derive(Debug, Clone)]
pub struct Super {
    pub name: &'static str,
    pub label: String,
    pub uuid: [u8; 16],
    pub block: u64,
    /// Blocks per allocation cluster (1 without bigalloc).
    pub ratio: u64,
    pub blocks: u64,
    pub first_data_block: u64,
    pub blocks_per_group: u64,
    pub units_per_group: u64,
    pub inodes_per_group: u64,
    pub inode_size: u64,
    pub first_ino: u64,
    pub groups: u64,
    pub desc_size: u64,
    pub desc_per_block: u64,
    pub desc_blocks: u64,
    pub reserved_gdt: u64,
    pub first_meta_bg: u64,
    pub compat: u32,
    pub incompat: u32,
    pub ro_compat: u32,
    pub csum: Csum,
    pub backup_bgs: [u64; 2],
    pub journal_inum: u64,
    /// Inodes the superblock names (journal, quota, orphan file, snapshot):
    /// walked whatever their link count says.
    pub special_inodes: Vec<u64>,
}

impl Super {
    /// Bytes per allocation unit of the block bitmaps.
    pub fn unit(&self) -> u64 {
        self.block * self.ratio
    }
    pub fn meta_bg(&self) -> bool {
        self.incompat & INCOMPAT_META_BG != 0
    }
    pub fn has_csum(&self) -> bool {
        self.csum != Csum::None
    }
    pub fn extents(&self) -> bool {
        self.incompat & INCOMPAT_EXTENTS != 0
    }
    pub fn is_64bit(&self) -> bool {
        self.incompat & INCOMPAT_64BIT != 0
    }
    pub fn inline_data(&self) -> bool {
        self.incompat & INCOMPAT_INLINE_DATA != 0
    }
    /// Blocks of one group's inode table.
    pub fn itable_blocks(&self) -> u64 {
        (self.inodes_per_group * self.inode_size).div_ceil(self.block)
    }
    /// Allocation units covering the filesystem's bitmapped blocks.
    pub fn total_units(&self) -> u64 {
        (self.blocks - self.first_data_block).div_ceil(self.ratio)
    }
    /// First block of group `g` (where its superblock backup would be).
    pub fn group_block(&self, g: u64) -> u64 {
        let b = self.first_data_block + g * self.blocks_per_group;
        // 1 KiB blocks with bigalloc: block 0 is the boot block.
        if b == 0 && self.block == 1024 { 1 } else { b }
    }
}

fn label_of(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw.split(|&c| c == 0).next().unwrap_or(&[])).into_owned()
}

fn name_of(incompat: u32, compat: u32) -> &'static str {
    if incompat & !(0x2 | INCOMPAT_RECOVER | INCOMPAT_META_BG | INCOMPAT_JOURNAL_DEV) != 0 {
        "ext4"
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    }
}

/// Reads and checks the superblock. Errors name what was refused.
pub fn parse(r: &Region) -> Result<Super, FsError> {
    let b = r.read(SB_OFFSET, SB_LEN)?;
    if le16(&b, S_MAGIC) != MAGIC {
        return Err(FsError::corrupt("bad superblock magic"));
    }
    let compat = le32(&b, S_FEATURE_COMPAT);
    let incompat = le32(&b, S_FEATURE_INCOMPAT);
    let ro_compat = le32(&b, S_FEATURE_RO_COMPAT);
    let name = name_of(incompat, compat);
    let e = ExtErr(name);
    let rev = le32(&b, S_REV_LEVEL);
    if rev > 1 {
        return Err(e.refuse(format!("unknown revision level {rev}")));
    }
    let (compat_x, incompat_x, ro_x) = (
        compat & !COMPAT_KNOWN,
        incompat & !INCOMPAT_KNOWN,
        ro_compat & !RO_COMPAT_KNOWN,
    );
    if compat_x | incompat_x | ro_x != 0 {
        return Err(refuse(
            name,
            format!(
                "has feature bits vmfinal does not know (compat {compat_x:#x}, incompat {incompat_x:#x}, ro_compat {ro_x:#x}): copied whole"
            ),
        ));
    }
    let csum = if ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
        if ro_compat & RO_COMPAT_GDT_CSUM != 0 {
            return Err(e.inconsistent("both metadata_csum and gdt_csum are set"));
        }
        if b[S_CHECKSUM_TYPE] != CHECKSUM_TYPE_CRC32C {
            return Err(e.refuse(format!(
                "unknown metadata checksum type {}",
                b[S_CHECKSUM_TYPE]
            )));
        }
        let stored = le32(&b, SB_CSUM_OFFSET);
        if crc::crc32c_update(!0, &b[..SB_CSUM_OFFSET]) != stored {
            return Err(e.inconsistent("superblock checksum mismatch"));
        }
        let seed = if incompat & INCOMPAT_CSUM_SEED != 0 {
            le32(&b, S_CHECKSUM_SEED)
        } else {
            crc::crc32c_update(!0, &b[S_UUID..S_UUID + 16])
        };
        Csum::Metadata(seed)
    } else if ro_compat & RO_COMPAT_GDT_CSUM != 0 {
        Csum::Gdt
    } else {
        Csum::None
    };
    if le32(&b, S_CREATOR_OS) == CREATOR_HURD {
        return Err(e.refuse("was made by GNU Hurd (translator blocks are not walked)"));
    }
    let sb = geometry(&b, r.len, name, compat, incompat, ro_compat, csum)?;
    check_state(&b, &sb, e)?;
    Ok(sb)
}

fn bad<T>(m: String) -> Result<T, FsError> {
    Err(FsError::corrupt(m))
}

/// Block and cluster size, block count, group size and count.
struct Blocks {
    block: u64,
    ratio: u64,
    blocks: u64,
    desc_size: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    units_per_group: u64,
    groups: u64,
}

fn blocks_layout(
    b: &[u8],
    part_len: u64,
    incompat: u32,
    ro_compat: u32,
) -> Result<Blocks, FsError> {
    let log_block = le32(b, S_LOG_BLOCK_SIZE);
    let log_cluster = le32(b, S_LOG_CLUSTER_SIZE);
    if log_block > 6 {
        return bad(format!("implausible block size (log {log_block})"));
    }
    let block = 1024u64 << log_block;
    let bigalloc = ro_compat & RO_COMPAT_BIGALLOC != 0;
    let ratio = if bigalloc {
        if log_cluster < log_block || log_cluster - log_block > 16 {
            return bad(format!("implausible cluster size (log {log_cluster})"));
        }
        1u64 << (log_cluster - log_block)
    } else {
        1
    };
    let mut blocks = le32(b, S_BLOCKS_COUNT) as u64;
    let mut desc_size = 32u64;
    if incompat & INCOMPAT_64BIT != 0 {
        blocks |= (le32(b, S_BLOCKS_COUNT_HI) as u64) << 32;
        desc_size = le16(b, S_DESC_SIZE) as u64;
        if !(64..=1024).contains(&desc_size) || !desc_size.is_power_of_two() {
            return bad(format!("implausible group descriptor size {desc_size}"));
        }
    }
    if desc_size > block {
        return bad(format!(
            "group descriptor size {desc_size} exceeds the block"
        ));
    }
    let first_data_block = le32(b, S_FIRST_DATA_BLOCK) as u64;
    if first_data_block != u64::from(block == 1024 && !bigalloc) {
        return bad(format!("first data block {first_data_block}"));
    }
    let blocks_per_group = le32(b, S_BLOCKS_PER_GROUP) as u64;
    let units_per_group = if bigalloc {
        le32(b, S_CLUSTERS_PER_GROUP) as u64
    } else {
        blocks_per_group
    };
    // A bitmap is one block; whole bytes of it (mke2fs keeps groups a
    // multiple of 8), and the 16-bit descriptor counts must hold it.
    if units_per_group == 0
        || units_per_group % 8 != 0
        || units_per_group > block * 8
        || units_per_group > (1 << 16) - 8
        || blocks_per_group != units_per_group * ratio
        || blocks <= first_data_block
    {
        return bad(format!(
            "implausible group size ({blocks_per_group} blocks, {units_per_group} clusters)"
        ));
    }
    if blocks.checked_mul(block).is_none_or(|s| s > part_len) {
        return bad(format!(
            "{blocks} blocks of {block} bytes do not fit in the {part_len}-byte partition"
        ));
    }
    let groups = (blocks - first_data_block).div_ceil(blocks_per_group);
    if groups > MAX_GROUPS {
        return bad(format!("{groups} block groups"));
    }
    Ok(Blocks {
        block,
        ratio,
        blocks,
        desc_size,
        first_data_block,
        blocks_per_group,
        units_per_group,
        groups,
    })
}

/// Inode size, first non-reserved inode, inodes per group and in all.
fn inodes_layout(b: &[u8], l: &Blocks) -> Result<(u64, u64, u64, u64), FsError> {
    let (inode_size, first_ino) = if le32(b, S_REV_LEVEL) == 0 {
        (GOOD_OLD_INODE_SIZE, GOOD_OLD_FIRST_INO)
    } else {
        (le16(b, S_INODE_SIZE) as u64, le32(b, S_FIRST_INO) as u64)
    };
    let per_group = le32(b, S_INODES_PER_GROUP) as u64;
    let count = le32(b, S_INODES_COUNT) as u64;
    if !(128..=l.block).contains(&inode_size) || !inode_size.is_power_of_two() {
        return bad(format!("implausible inode size {inode_size}"));
    }
    if per_group == 0
        || per_group % 8 != 0
        || per_group > l.block * 8
        || count != per_group * l.groups
        || first_ino < GOOD_OLD_FIRST_INO
        || first_ino > count
    {
        return bad(format!(
            "implausible inode counts ({per_group} per group, {count} in all, first {first_ino})"
        ));
    }
    Ok((inode_size, first_ino, per_group, count))
}

/// Block size, counts and group layout; all must add up.
fn geometry(
    b: &[u8],
    part_len: u64,
    name: &'static str,
    compat: u32,
    incompat: u32,
    ro_compat: u32,
    csum: Csum,
) -> Result<Super, FsError> {
    let l = blocks_layout(b, part_len, incompat, ro_compat)?;
    let (inode_size, first_ino, inodes_per_group, inodes_count) = inodes_layout(b, &l)?;
    let desc_per_block = l.block / l.desc_size;
    let desc_blocks = l.groups.div_ceil(desc_per_block);
    let reserved_gdt = le16(b, S_RESERVED_GDT_BLOCKS) as u64;
    let first_meta_bg = le32(b, S_FIRST_META_BG) as u64;
    let meta_bg = incompat & INCOMPAT_META_BG != 0;
    let old_desc_blocks = if meta_bg {
        first_meta_bg
    } else {
        desc_blocks + reserved_gdt
    };
    if (meta_bg && first_meta_bg > desc_blocks) || 1 + old_desc_blocks > l.blocks_per_group {
        return bad("group descriptor table does not fit in a group".into());
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[S_UUID..S_UUID + 16]);
    let inum = |off: usize| le32(b, off) as u64;
    let special_inodes: Vec<u64> = [
        S_JOURNAL_INUM,
        S_USR_QUOTA_INUM,
        S_GRP_QUOTA_INUM,
        S_PRJ_QUOTA_INUM,
        S_ORPHAN_FILE_INUM,
        S_SNAPSHOT_INUM,
    ]
    .iter()
    .map(|&o| inum(o))
    .filter(|&i| i != 0)
    .collect();
    if special_inodes.iter().any(|&i| i > inodes_count) {
        return bad("the superblock names an inode past the inode count".into());
    }
    Ok(Super {
        name,
        label: label_of(&b[S_VOLUME_NAME..S_VOLUME_NAME + 16]),
        uuid,
        block: l.block,
        ratio: l.ratio,
        blocks: l.blocks,
        first_data_block: l.first_data_block,
        blocks_per_group: l.blocks_per_group,
        units_per_group: l.units_per_group,
        inodes_per_group,
        inode_size,
        first_ino,
        groups: l.groups,
        desc_size: l.desc_size,
        desc_per_block,
        desc_blocks,
        reserved_gdt,
        first_meta_bg,
        compat,
        incompat,
        ro_compat,
        csum,
        backup_bgs: [inum(S_BACKUP_BGS), inum(S_BACKUP_BGS + 4)],
        journal_inum: if compat & COMPAT_HAS_JOURNAL != 0 {
            inum(S_JOURNAL_INUM)
        } else {
            0
        },
        special_inodes,
    })
}

/// The filesystem must be cleanly unmounted with nothing pending.
fn check_state(b: &[u8], sb: &Super, e: ExtErr) -> Result<(), FsError> {
    let name = sb.name;
    if sb.incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return Err(refuse(name, "is an external journal device: copied whole"));
    }
    if sb.incompat & INCOMPAT_RECOVER != 0 {
        return Err(refuse(
            name,
            "journal needs recovery (needs_recovery): copied whole; run `e2fsck -fy` on it, or mount and unmount it once",
        ));
    }
    let state = le16(b, S_STATE);
    if state != STATE_VALID {
        return Err(refuse(
            name,
            format!(
                "was not cleanly unmounted, has errors or is mid-recovery (state {state:#x}): copied whole; run `e2fsck -fy` on it"
            ),
        ));
    }
    if sb.incompat & INCOMPAT_MMP != 0 {
        return Err(refuse(
            name,
            "uses multi-mount protection (MMP): copied whole; it may be in use elsewhere",
        ));
    }
    if le32(b, S_LAST_ORPHAN) != 0 || sb.ro_compat & RO_COMPAT_ORPHAN_PRESENT != 0 {
        return Err(e.refuse(
            "has orphan inodes waiting to be released; run `e2fsck -fy` on it, or mount and unmount it once",
        ));
    }
    if sb.compat & COMPAT_HAS_JOURNAL != 0
        && sb.journal_inum == 0
        && b[S_JOURNAL_UUID..S_JOURNAL_UUID + 16]
            .iter()
            .any(|&x| x != 0)
    {
        return Err(e.refuse(
            "has its journal on another device (vmfinal cannot check it has nothing to replay)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name_of(0x2, 0), "ext2");
        assert_eq!(name_of(0x2, COMPAT_HAS_JOURNAL), "ext3");
        assert_eq!(name_of(0x2 | INCOMPAT_EXTENTS, COMPAT_HAS_JOURNAL), "ext4");
    }
}
