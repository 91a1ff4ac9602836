//! ext2/3/4: free space from the block bitmaps. Handles 64bit descriptors,
//! meta_bg, flex_bg (bitmaps anywhere), sparse_super and bigalloc clusters.
//! Groups marked BLOCK_UNINIT are treated as fully used (their bitmap is not
//! on disk; conservative). Each bitmap's free count must match its group
//! descriptor, or nothing of the filesystem is skipped.

use super::{FsError, FsFree, Region};
use crate::bytes::{le16, le32};
use crate::extent::Extent;

pub const MAGIC: u16 = 0xEF53;
const SB_OFFSET: u64 = 1024;
const SB_LEN: usize = 1024;

const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_MMP: u32 = 0x100;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const STATE_VALID: u16 = 0x1;
const STATE_ERROR: u16 = 0x2;
const BG_BLOCK_UNINIT: u16 = 0x2;
/// Groups handled at most (a 1 PiB filesystem of 4 KiB blocks has 8M).
const MAX_GROUPS: u64 = 1 << 24;

/// True if the region holds an ext2/3/4 superblock.
pub fn detect(r: &Region) -> bool {
    r.read(SB_OFFSET + 56, 2)
        .is_ok_and(|b| le16(&b, 0) == MAGIC)
}

struct Super {
    block: u64,
    /// Allocation unit of the bitmaps (cluster; = block without bigalloc).
    unit: u64,
    blocks: u64,
    first_data_block: u64,
    units_per_group: u64,
    blocks_per_group: u64,
    groups: u64,
    desc_size: u64,
    incompat: u32,
    ro_compat: u32,
    first_meta_bg: u64,
    state: u16,
    label: String,
}

fn parse_super(r: &Region) -> Result<Super, FsError> {
    let b = r.read(SB_OFFSET, SB_LEN)?;
    if le16(&b, 56) != MAGIC {
        return Err(FsError::corrupt("bad superblock magic"));
    }
    let log_block = le32(&b, 24);
    let log_cluster = le32(&b, 28);
    if log_block > 6 || log_cluster > 16 || log_cluster < log_block {
        return Err(FsError::corrupt(format!(
            "implausible block size (log {log_block})"
        )));
    }
    let incompat = le32(&b, 96);
    let ro_compat = le32(&b, 100);
    let block = 1024u64 << log_block;
    let unit = if ro_compat & RO_COMPAT_BIGALLOC != 0 {
        1024u64 << log_cluster
    } else {
        block
    };
    let mut blocks = le32(&b, 4) as u64;
    let mut desc_size = 32u64;
    if incompat & INCOMPAT_64BIT != 0 {
        blocks |= (le32(&b, 0x150) as u64) << 32;
        desc_size = le16(&b, 0xFE) as u64;
        if !(64..=1024).contains(&desc_size) || !desc_size.is_power_of_two() {
            return Err(FsError::corrupt(format!(
                "implausible group descriptor size {desc_size}"
            )));
        }
    }
    let first_data_block = le32(&b, 20) as u64;
    let blocks_per_group = le32(&b, 32) as u64;
    let units_per_group = if unit == block {
        blocks_per_group
    } else {
        le32(&b, 36) as u64
    };
    if blocks_per_group == 0
        || units_per_group == 0
        || units_per_group > unit * 8
        || blocks <= first_data_block
    {
        return Err(FsError::corrupt("implausible block counts"));
    }
    if blocks.checked_mul(block).is_none_or(|s| s > r.len) {
        return Err(FsError::corrupt(format!(
            "{blocks} blocks of {block} bytes do not fit in the {}-byte partition",
            r.len
        )));
    }
    let groups = (blocks - first_data_block).div_ceil(blocks_per_group);
    if groups > MAX_GROUPS {
        return Err(FsError::corrupt(format!("{groups} block groups")));
    }
    let label_raw = &b[120..136];
    let label =
        String::from_utf8_lossy(label_raw.split(|&c| c == 0).next().unwrap_or(&[])).into_owned();
    Ok(Super {
        block,
        unit,
        blocks,
        first_data_block,
        units_per_group,
        blocks_per_group,
        groups,
        desc_size,
        incompat,
        ro_compat,
        first_meta_bg: le32(&b, 0x104) as u64,
        state: le16(&b, 58),
        label,
    })
}

/// Whether group `g` holds a superblock backup (sparse_super: 0, 1, powers of 3, 5, 7).
fn has_super(sb: &Super, g: u64) -> bool {
    if sb.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&p| {
        let mut x = p;
        while x < g {
            x *= p;
        }
        x == g
    })
}

/// Byte offset of group `g`'s descriptor.
fn desc_offset(sb: &Super, g: u64) -> u64 {
    let per_block = sb.block / sb.desc_size;
    let first_gdt_block = sb.first_data_block + 1;
    if sb.incompat & INCOMPAT_META_BG != 0 && g / per_block >= sb.first_meta_bg {
        let mg_first = g / per_block * per_block;
        let blk =
            sb.first_data_block + mg_first * sb.blocks_per_group + has_super(sb, mg_first) as u64;
        return blk * sb.block + (g % per_block) * sb.desc_size;
    }
    first_gdt_block * sb.block + g * sb.desc_size
}

/// Reads the free-space map of the ext filesystem in `r`.
pub fn free_space(r: &Region) -> Result<FsFree, FsError> {
    let sb = parse_super(r)?;
    let name = if sb.incompat & 0x40 != 0 || sb.incompat & INCOMPAT_64BIT != 0 {
        "ext4"
    } else {
        "ext2/3"
    };
    let mut out = FsFree::new(name, &sb.label, sb.blocks * sb.block);
    if sb.incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return Err(FsError::unclean(name, "is an external journal device"));
    }
    if sb.incompat & INCOMPAT_RECOVER != 0 {
        return Err(FsError::unclean(
            name,
            "journal needs recovery (needs_recovery): copied whole; run `e2fsck -fy` on it, or mount and unmount it once",
        ));
    }
    if sb.state & STATE_ERROR != 0 || sb.state & STATE_VALID == 0 {
        return Err(FsError::unclean(
            name,
            "was not cleanly unmounted or has errors: copied whole; run `e2fsck -fy` on it",
        ));
    }
    if sb.incompat & INCOMPAT_MMP != 0 {
        return Err(FsError::unclean(
            name,
            "uses multi-mount protection (MMP): copied whole; it may be in use elsewhere",
        ));
    }
    let bitmap_len = (sb.units_per_group / 8) as usize;
    let blocks_per_unit = sb.unit / sb.block;
    let total_units = (sb.blocks - sb.first_data_block).div_ceil(blocks_per_unit);
    // Free space as the descriptors count it (uninit groups included), for
    // reports; the extents below only cover groups whose bitmap was read.
    let mut free_units = 0u64;
    for g in 0..sb.groups {
        let d = r.read(desc_offset(&sb, g), sb.desc_size as usize)?;
        let mut bitmap_blk = le32(&d, 0) as u64;
        let mut gd_free = le16(&d, 12) as u64;
        if sb.desc_size >= 64 {
            bitmap_blk |= (le32(&d, 0x20) as u64) << 32;
            gd_free |= (le16(&d, 0x2C) as u64) << 16;
        }
        let flags = le16(&d, 18);
        if gd_free > sb.units_per_group {
            return Err(FsError::corrupt(format!(
                "group {g}: descriptor counts {gd_free} free clusters"
            )));
        }
        free_units += gd_free;
        if flags & BG_BLOCK_UNINIT != 0 {
            continue;
        }
        if bitmap_blk == 0 || bitmap_blk >= sb.blocks {
            return Err(FsError::corrupt(format!(
                "group {g}: block bitmap at block {bitmap_blk} is outside the filesystem"
            )));
        }
        let bitmap = r.read(bitmap_blk * sb.block, bitmap_len)?;
        let first_unit = g * sb.units_per_group;
        let n_units = sb
            .units_per_group
            .min(total_units.saturating_sub(first_unit));
        let mut group_free = 0u64;
        let mut run_start: Option<u64> = None;
        for i in 0..=n_units {
            let free = i < n_units && bitmap[(i / 8) as usize] & (1 << (i % 8)) == 0;
            match (free, run_start) {
                (true, None) => run_start = Some(i),
                (false, Some(s)) => {
                    let start_block = sb.first_data_block + (first_unit + s) * blocks_per_unit;
                    out.free
                        .push(Extent::new(start_block * sb.block, (i - s) * sb.unit));
                    group_free += i - s;
                    run_start = None;
                }
                _ => {}
            }
        }
        if group_free != gd_free {
            return Err(FsError::corrupt(format!(
                "group {g}: the bitmap has {group_free} free clusters, the descriptor says {gd_free}"
            )));
        }
    }
    out.free_bytes = free_units * sb.unit;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::testdisk::MemDisk;
    use crate::fs::{Region, scan};

    /// A fresh 16 MiB ext4 (1 KiB blocks, two groups) made by mkfs.ext4.
    fn fresh() -> Vec<u8> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fs.img");
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "1024", "-E", "lazy_itable_init=0"])
            .arg(&p)
            .arg("16M")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("mkfs.ext4 is needed by the ext4 unit tests");
        assert!(st.success());
        std::fs::read(&p).unwrap()
    }

    fn free_of(img: &[u8]) -> Result<FsFree, FsError> {
        let disk = MemDisk(img.to_vec());
        let r = Region {
            src: &disk,
            start: 0,
            len: img.len() as u64,
        };
        free_space(&r)
    }

    fn gdt(img: &[u8]) -> usize {
        // 1 KiB blocks: superblock in block 1, descriptors from block 2.
        assert_eq!(le32(img, 1024 + 24), 0);
        2048
    }

    #[test]
    fn fresh_filesystem_has_free_space() {
        let img = fresh();
        let f = free_of(&img).unwrap();
        assert!(f.free_bytes > 8 << 20, "{}", f.free_bytes);
        assert_eq!(crate::extent::total(&f.free), f.free_bytes);
    }

    fn assert_copied_whole(img: &[u8]) {
        assert!(free_of(img).is_err());
        let disk = MemDisk(img.to_vec());
        let s = scan(&disk, &[]);
        assert!(s.free.is_empty());
        assert!(!s.warnings.is_empty() || s.partitions.iter().all(|p| !p.fs_aware));
    }

    #[test]
    fn corrupt_superblock() {
        let mut img = fresh();
        img[1024 + 4..1024 + 8].copy_from_slice(&u32::MAX.to_le_bytes()); // blocks count
        assert_copied_whole(&img);
        let mut img = fresh();
        img[1024 + 32..1024 + 36].copy_from_slice(&0u32.to_le_bytes()); // blocks per group
        assert_copied_whole(&img);
        let mut img = fresh();
        img[1024 + 24] = 40; // log block size
        assert_copied_whole(&img);
    }

    #[test]
    fn corrupt_group_descriptor() {
        let mut img = fresh();
        let g = gdt(&img);
        img[g..g + 4].copy_from_slice(&0x00FF_FFFFu32.to_le_bytes()); // bitmap block
        assert_copied_whole(&img);
        let mut img = fresh();
        let g = gdt(&img);
        img[g + 12] ^= 0x10; // free count
        img[g + 18] &= !(BG_BLOCK_UNINIT as u8);
        assert_copied_whole(&img);
    }

    #[test]
    fn corrupt_bitmap() {
        let mut img = fresh();
        let g = gdt(&img);
        let bitmap = le32(&img, g) as usize * 1024;
        img[bitmap] = 0; // the first used blocks marked free
        assert_copied_whole(&img);
    }

    #[test]
    fn needs_recovery_and_errors_are_unclean() {
        let mut img = fresh();
        img[1024 + 96] |= INCOMPAT_RECOVER as u8;
        let e = free_of(&img).unwrap_err();
        assert!(e.unclean && e.msg.contains("e2fsck"), "{}", e.msg);
        let mut img = fresh();
        img[1024 + 58] |= STATE_ERROR as u8;
        assert!(free_of(&img).unwrap_err().unclean);
    }

    #[test]
    fn random_corruption_never_panics() {
        let good = fresh();
        let mut x = 0x1234_5678u64;
        for _ in 0..300 {
            let mut img = good.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = 1024 + (x % 64_000) as usize;
                img[i] ^= (x >> 40) as u8 | 1;
            }
            let _ = free_of(&img);
        }
    }
}
