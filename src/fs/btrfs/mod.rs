//! btrfs: device space that no chunk is allocated in. The superblock
//! (CRC32c) bootstraps the system chunks (sys_chunk_array), the chunk tree
//! gives every chunk, the root tree leads to the device tree; every tree
//! block's CRC32c, fsid, bytenr, level and generation are verified. Two
//! sources must agree: the device's stripes in the chunk tree and its
//! extents in the device tree (same ranges), whose total must also equal
//! the device item's `bytes_used`. Inside data chunks, the space no extent
//! item uses (`extents.rs`; a block group's extents must add up to its
//! item's `used` bytes). Never skipped: the first MiB (boot area, primary
//! superblock), the superblock copies at 64 MiB, 256 GiB and 1 PiB, and
//! anything in metadata, system or mixed chunks.
//!
//! Refused (copied whole, with the reason): checksums other than crc32c
//! (named), several devices, a log tree to replay, the error flag, seeding,
//! metadump, an fsid or checksum change under way, a balance in progress,
//! zoned, extent tree v2, the raid stripe tree, and unknown incompat bits.
//!
//! Not here: mounting (the guest module).

mod extents;
mod tree;

use super::{FsError, FsFree, Region};
use crate::bytes::{le16, le32, le64};
use crate::extent::{self, Extent};
use tree::{Chunk, Expect, Key};

const NAME: &str = "btrfs";
pub const SB_OFFSET: u64 = 0x10000;
const SB_LEN: usize = 4096;
const MAGIC: &[u8; 8] = b"_BHRfS_M";
/// Superblock copies (primary and mirrors), 4 KiB each.
const SB_COPIES: [u64; 4] = [0x10000, 64 << 20, 256 << 30, 1 << 50];
/// Device bytes btrfs never allocates (boot area and primary superblock).
const RESERVED: u64 = 1 << 20;
const DEV_ITEM_AT: usize = 0xc9;
const SYS_ARRAY_AT: usize = 0x32b;
const SYS_ARRAY_MAX: usize = 2048;
const ROOT_TREE_EXTENT: u64 = 2;
const ROOT_TREE_DEV: u64 = 4;
const ROOT_TREE_BLOCK_GROUP: u64 = 11;
const ROOT_TREE_CSUM: u64 = 7;
const EXTENT_CSUM_OBJECTID: u64 = (-10i64) as u64;
const EXTENT_CSUM_KEY: u8 = 128;
/// The root tree's balance item (objectid -4, temporary item key).
const BALANCE_OBJECTID: u64 = (-4i64) as u64;
const TEMPORARY_ITEM_KEY: u8 = 248;
const COMPAT_RO_BLOCK_GROUP_TREE: u64 = 1 << 3;
const ROOT_ITEM_KEY: u8 = 132;
const DEV_EXTENT_KEY: u8 = 204;
const DEV_ITEM_KEY: u8 = 216;
const FLAG_ERROR: u64 = 1 << 2;
/// Seeding, metadump (v1, v2), changing fsid (v1, v2), changing the
/// block-group tree, data or metadata checksums.
const FLAGS_REFUSED: u64 = (1 << 32) | (1 << 33) | (1 << 34) | (1 << 35) | (1 << 36) | (0x7 << 38);
const INCOMPAT_METADATA_UUID: u64 = 0x400;
/// Known incompat features that keep the chunk and device trees as read here.
const INCOMPAT_OK: u64 = 0x7FF | 0x10000;

/// True if the region holds a btrfs superblock.
pub fn detect(r: &Region) -> bool {
    r.read(SB_OFFSET + 0x40, 8).is_ok_and(|b| b == MAGIC)
}

fn corrupt(m: impl Into<String>) -> FsError {
    FsError::corrupt(m)
}
fn refuse(m: impl Into<String>) -> FsError {
    FsError::unclean(NAME, m)
}

/// Reads the free-space map (unallocated device space) of the btrfs in `r`.
pub fn free_space(r: &Region) -> Result<FsFree, FsError> {
    let sb = r.read(SB_OFFSET, SB_LEN)?;
    if &sb[0x40..0x48] != MAGIC {
        return Err(corrupt("bad btrfs superblock magic"));
    }
    let csum_type = le16(&sb, 0xc4);
    if csum_type != 0 {
        let name = match csum_type {
            1 => "xxhash64",
            2 => "sha256",
            3 => "blake2b",
            _ => "unknown",
        };
        return Err(refuse(format!(
            "uses {name} checksums, which vmfinal does not verify: copied whole"
        )));
    }
    if tree::crc32c(&sb[0x20..]) != le32(&sb, 0) {
        return Err(corrupt("superblock checksum mismatch"));
    }
    if le64(&sb, 0x30) != SB_OFFSET {
        return Err(corrupt("superblock is not the primary one"));
    }
    let flags = le64(&sb, 0x38);
    let incompat = le64(&sb, 0xbc);
    if flags & FLAG_ERROR != 0 {
        return Err(refuse(
            "has its error flag set: copied whole; run `btrfs check`",
        ));
    }
    if flags & FLAGS_REFUSED != 0 {
        return Err(refuse(format!(
            "is a seed, a metadump, or in the middle of an fsid or checksum change (flags {flags:#x}): copied whole"
        )));
    }
    if incompat & !INCOMPAT_OK != 0 {
        return Err(refuse(format!(
            "uses incompat features vmfinal does not read ({:#x}: zoned, extent tree v2, raid stripe tree or newer): copied whole",
            incompat & !INCOMPAT_OK
        )));
    }
    if le64(&sb, 0x88) != 1 {
        return Err(refuse(format!(
            "spans {} devices: copied whole",
            le64(&sb, 0x88)
        )));
    }
    if le64(&sb, 0x60) != 0 {
        return Err(refuse(
            "has a log tree to replay (it was not cleanly unmounted): copied whole; mount and unmount it once",
        ));
    }
    let (sectorsize, nodesize) = (le32(&sb, 0x90) as u64, le32(&sb, 0x94) as u64);
    if !sectorsize.is_power_of_two()
        || !(4096..=65536).contains(&sectorsize)
        || !nodesize.is_power_of_two()
        || !(sectorsize..=65536).contains(&nodesize)
    {
        return Err(corrupt(format!(
            "implausible sector/node size {sectorsize}/{nodesize}"
        )));
    }
    let dev = &sb[DEV_ITEM_AT..DEV_ITEM_AT + 98];
    let (devid, dev_total, dev_used) = (le64(dev, 0), le64(dev, 8), le64(dev, 16));
    let fsid = if incompat & INCOMPAT_METADATA_UUID != 0 {
        sb[0x23b..0x24b].to_vec()
    } else {
        sb[0x20..0x30].to_vec()
    };
    let e = Expect {
        fsid: &fsid,
        nodesize: nodesize as usize,
        generation: le64(&sb, 0x48),
    };
    let sys_len = le32(&sb, 0xa0) as usize;
    if sys_len > SYS_ARRAY_MAX {
        return Err(corrupt(format!("sys_chunk_array of {sys_len} bytes")));
    }
    let sys = tree::parse_sys_array(&sb[SYS_ARRAY_AT..SYS_ARRAY_AT + sys_len]).map_err(corrupt)?;

    // Chunk tree, through the system chunks.
    let read_with = |chunks: &[Chunk]| {
        let chunks = chunks.to_vec();
        move |logical: u64| -> Result<Vec<u8>, String> {
            let phys = tree::map(&chunks, devid, logical, nodesize)
                .ok_or_else(|| format!("tree block {logical} lies in no chunk on this device"))?;
            r.read(phys, nodesize as usize).map_err(|e| e.msg)
        }
    };
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut dev_item_used = None;
    tree::walk(
        le64(&sb, 0x58),
        sb[0xc7],
        &e,
        &mut read_with(&sys),
        &mut |k: Key, d: &[u8]| {
            match k.kind {
                tree::CHUNK_ITEM_KEY => chunks.push(tree::parse_chunk(k.offset, d)?.0),
                DEV_ITEM_KEY if k.offset == devid && d.len() >= 24 => {
                    dev_item_used = Some(le64(d, 16));
                }
                _ => {}
            }
            Ok(())
        },
    )
    .map_err(|m| corrupt(format!("chunk tree: {m}")))?;
    for s in &sys {
        if !chunks.contains(s) {
            return Err(corrupt(format!(
                "system chunk at {} is not in the chunk tree",
                s.logical
            )));
        }
    }
    // Root tree -> device tree.
    let mut roots: Vec<(u64, (u64, u8))> = Vec::new();
    let mut balance = false;
    tree::walk(
        le64(&sb, 0x50),
        sb[0xc6],
        &e,
        &mut read_with(&chunks),
        &mut |k: Key, d: &[u8]| {
            if k.kind == ROOT_ITEM_KEY && d.len() > 238 {
                roots.push((k.objectid, (le64(d, 176), d[238])));
            }
            balance |= k.objectid == BALANCE_OBJECTID && k.kind == TEMPORARY_ITEM_KEY;
            Ok(())
        },
    )
    .map_err(|m| corrupt(format!("root tree: {m}")))?;
    let root_of = |id: u64| roots.iter().find(|r| r.0 == id).map(|r| r.1);
    let (dev_bytenr, dev_level) =
        root_of(ROOT_TREE_DEV).ok_or_else(|| corrupt("no device tree"))?;
    let mut dev_extents: Vec<(u64, u64, u64)> = Vec::new(); // (physical, length, chunk)
    tree::walk(
        dev_bytenr,
        dev_level,
        &e,
        &mut read_with(&chunks),
        &mut |k: Key, d: &[u8]| {
            if k.kind == DEV_EXTENT_KEY && k.objectid == devid {
                if d.len() < 32 {
                    return Err("truncated device extent".into());
                }
                dev_extents.push((k.offset, le64(d, 24), le64(d, 16)));
            }
            Ok(())
        },
    )
    .map_err(|m| corrupt(format!("device tree: {m}")))?;

    // The two sources: chunk stripes on this device, and device extents.
    let mut from_chunks: Vec<(u64, u64, u64)> = chunks
        .iter()
        .flat_map(|c| {
            c.stripes
                .iter()
                .filter(|s| s.0 == devid)
                .map(|s| (s.1, c.length, c.logical))
                .collect::<Vec<_>>()
        })
        .collect();
    if chunks
        .iter()
        .any(|c| c.stripes.iter().any(|s| s.0 != devid))
    {
        return Err(corrupt("a chunk has a stripe on another device"));
    }
    from_chunks.sort_unstable();
    dev_extents.sort_unstable();
    if from_chunks != dev_extents {
        return Err(corrupt(format!(
            "the chunk tree places {} stripes on the device, the device tree {} extents, and they differ",
            from_chunks.len(),
            dev_extents.len()
        )));
    }
    let used: u64 = dev_extents.iter().map(|d| d.1).sum();
    if used != dev_used || dev_item_used.is_some_and(|u| u != used) {
        return Err(corrupt(format!(
            "device extents total {used} bytes, the device item says {dev_used}"
        )));
    }
    let end = dev_total.min(r.len);
    let mut allocated = Vec::new();
    for &(phys, len, _) in &dev_extents {
        if phys < RESERVED || phys.checked_add(len).is_none_or(|x| x > dev_total) {
            return Err(corrupt(format!(
                "device extent at {phys} (+{len}) lies outside the device"
            )));
        }
        allocated.push(Extent::new(phys, len));
    }
    let allocated = extent::normalize(allocated);
    if extent::total(&allocated) != used {
        return Err(corrupt("device extents overlap"));
    }
    let keep: Vec<Extent> = SB_COPIES
        .iter()
        .map(|&o| Extent::new(o, SB_LEN as u64))
        .collect();
    let mut out = FsFree::new(NAME, &label(&sb), dev_total);
    let mut free = Vec::new();
    if end > RESERVED {
        free = extent::subtract(&[Extent::new(RESERVED, end - RESERVED)], &allocated);
    }
    // Inside data chunks: what the extent tree does not use.
    if balance {
        return Err(refuse(
            "has a balance in progress: copied whole; let it finish (`btrfs balance status`)",
        ));
    }
    let extent_root = root_of(ROOT_TREE_EXTENT).ok_or_else(|| corrupt("no extent tree"))?;
    let bg_root = if le64(&sb, 0xb4) & COMPAT_RO_BLOCK_GROUP_TREE != 0 {
        Some(root_of(ROOT_TREE_BLOCK_GROUP).ok_or_else(|| corrupt("no block group tree"))?)
    } else {
        None
    };
    // A third record of data in use: the checksum tree's crc32c items
    // (one 4-byte checksum per sector of every extent written with
    // checksums; nodatasum files have none).
    let mut csums = Vec::new();
    if let Some((at, level)) = root_of(ROOT_TREE_CSUM) {
        tree::walk(at, level, &e, &mut read_with(&chunks), &mut |k, d| {
            if k.objectid == EXTENT_CSUM_OBJECTID && k.kind == EXTENT_CSUM_KEY {
                let len = (d.len() as u64 / 4)
                    .checked_mul(sectorsize)
                    .filter(|l| k.offset.checked_add(*l).is_some())
                    .ok_or("checksum item overflows")?;
                csums.push(Extent::new(k.offset, len));
            }
            Ok(())
        })
        .map_err(|m| corrupt(format!("checksum tree: {m}")))?;
    }
    let csums = extent::normalize(csums);
    let in_data = extents::data_free(
        extent_root,
        bg_root,
        &e,
        &chunks,
        devid,
        &csums,
        &mut read_with(&chunks),
    )
    .map_err(corrupt)?;
    free.extend(extent::clip(&in_data, RESERVED, end));
    out.free = extent::subtract(&extent::normalize(free), &keep);
    out.free_bytes = extent::total(&out.free);
    Ok(out)
}

fn label(sb: &[u8]) -> String {
    let l = &sb[0x12b..0x12b + 256];
    String::from_utf8_lossy(l.split(|&c| c == 0).next().unwrap_or(&[])).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::testdisk::MemDisk;

    fn fresh(mib: usize) -> Option<Vec<u8>> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("btrfs.img");
        std::fs::write(&p, vec![0u8; mib << 20]).unwrap();
        let st = std::process::Command::new("mkfs.btrfs")
            .args(["-q", "-f", "-L", "vmf"])
            .arg(&p)
            .stdout(std::process::Stdio::null())
            .status()
            .ok()?;
        assert!(st.success());
        Some(std::fs::read(&p).unwrap())
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

    fn resum(img: &mut [u8]) {
        let at = SB_OFFSET as usize;
        let c = tree::crc32c(&img[at + 0x20..at + SB_LEN]);
        img[at..at + 4].copy_from_slice(&c.to_le_bytes());
    }

    #[test]
    fn fresh_filesystem_has_unallocated_space() {
        let Some(img) = fresh(512) else { return };
        let f = free_of(&img).unwrap();
        assert_eq!(f.label, "vmf");
        assert!(f.free_bytes > 300 << 20, "{}", f.free_bytes);
        assert!(f.free.iter().all(|e| e.start >= RESERVED));
        // The 64 MiB superblock copy is never in it.
        assert!(
            !f.free
                .iter()
                .any(|e| e.start <= 64 << 20 && e.end() > 64 << 20)
        );
    }

    #[test]
    fn refusals() {
        let Some(img) = fresh(256) else { return };
        let sb = SB_OFFSET as usize;
        let mut bad = img.clone();
        bad[sb + 0x100] ^= 1;
        assert!(!free_of(&bad).unwrap_err().unclean); // checksum
        let mut bad = img.clone();
        bad[sb + 0xc4] = 2;
        let e = free_of(&bad).unwrap_err();
        assert!(e.msg.contains("sha256"), "{}", e.msg);
        let mut bad = img.clone();
        bad[sb + 0x60] = 1; // log_root
        resum(&mut bad);
        assert!(free_of(&bad).unwrap_err().msg.contains("log tree"));
        let mut bad = img.clone();
        bad[sb + 0x88] = 2; // num_devices
        resum(&mut bad);
        assert!(free_of(&bad).unwrap_err().msg.contains("2 devices"));
        // The device item disagrees with the extents.
        let mut bad = img.clone();
        bad[sb + DEV_ITEM_AT + 16] ^= 0x10;
        resum(&mut bad);
        assert!(free_of(&bad).is_err());
        // A damaged chunk tree block.
        let mut bad = img.clone();
        let chunk_root = le64(&img, sb + 0x58);
        let sys = tree::parse_sys_array(
            &img[sb + SYS_ARRAY_AT..sb + SYS_ARRAY_AT + le32(&img, sb + 0xa0) as usize],
        )
        .unwrap();
        let phys = tree::map(&sys, 1, chunk_root, 16384).unwrap() as usize;
        bad[phys + 200] ^= 1;
        let e = free_of(&bad).unwrap_err();
        assert!(e.msg.contains("checksum"), "{}", e.msg);
    }

    #[test]
    fn random_corruption_never_panics() {
        let Some(good) = fresh(128) else { return };
        let mut disk = MemDisk(good);
        let mut x = 0xdead_beef_1234_5678u64;
        for _ in 0..60 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = SB_OFFSET as usize + 0x20 + (x % 4000) as usize;
            let keep = disk.0[i];
            disk.0[i] ^= (x >> 40) as u8 | 1;
            resum(&mut disk.0);
            {
                let r = Region {
                    src: &disk,
                    start: 0,
                    len: disk.0.len() as u64,
                };
                let _ = free_space(&r);
            }
            disk.0[i] = keep;
        }
    }
}
