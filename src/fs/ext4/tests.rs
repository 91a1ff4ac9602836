//! Unit tests on real filesystems made by mke2fs (populated with `-d`, no
//! mount needed) and edited by debugfs, read through the in-memory disk.

use super::*;
use crate::bytes::le32;
use crate::fs::testdisk::MemDisk;
use crate::fs::{Region, scan};
use std::path::Path;
use std::process::{Command, Stdio};

/// A directory tree to populate filesystems with: small and large files,
/// a sparse file, a fast and a slow symlink, a long xattr, a device node.
fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::create_dir_all(p.join("dir/sub")).unwrap();
    for i in 0..40u32 {
        let body: Vec<u8> = (0..(i * 997 % 20_000))
            .map(|j| (j * 31 + i) as u8)
            .collect();
        std::fs::write(p.join(format!("dir/f{i}")), body).unwrap();
    }
    let big: Vec<u8> = (0..3_000_000u32).map(|j| (j % 251) as u8).collect();
    std::fs::write(p.join("dir/sub/big"), big).unwrap();
    let f = std::fs::File::create(p.join("sparse")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"tail", 5_000_000).unwrap();
    // Many separate extents: an extent tree with a leaf block.
    let frag = std::fs::File::create(p.join("frag")).unwrap();
    for i in 0..40u64 {
        frag.write_all_at(&[i as u8 | 1; 4096], i * 65536).unwrap();
    }
    std::os::unix::fs::symlink("dir/f1", p.join("fast-link")).unwrap();
    std::os::unix::fs::symlink("x".repeat(200), p.join("slow-link")).unwrap();
    d
}

/// mke2fs `args` on a fresh `size` image populated from `tree`.
fn mkfs(args: &[&str], size: &str, tree: Option<&Path>) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("fs.img");
    let mut c = Command::new("mke2fs");
    c.args(["-q", "-F", "-E", "lazy_itable_init=0"]).args(args);
    if let Some(t) = tree {
        c.arg("-d").arg(t);
    }
    let st = c
        .arg(&p)
        .arg(size)
        .stdout(Stdio::null())
        .status()
        .expect("mke2fs is needed by the ext4 unit tests");
    assert!(st.success(), "mke2fs {args:?} failed");
    // mke2fs -d leaves quota usage stale; let e2fsck settle it.
    let _ = Command::new("e2fsck")
        .args(["-fy"])
        .arg(&p)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    std::fs::read(&p).unwrap()
}

/// A fresh 16 MiB ext4 (1 KiB blocks, two groups).
fn fresh() -> Vec<u8> {
    mkfs(&["-t", "ext4", "-b", "1024"], "16M", None)
}

/// Runs debugfs -w `cmds` on `img`; returns the changed image and stdout.
fn debugfs(img: &[u8], cmds: &[String]) -> (Vec<u8>, String) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("fs.img");
    std::fs::write(&p, img).unwrap();
    // debugfs takes one -R; run them one by one.
    let mut out = String::new();
    for c in cmds {
        let o = Command::new("debugfs")
            .args(["-w", "-R", c])
            .arg(&p)
            .output()
            .expect("debugfs is needed by the ext4 unit tests");
        out.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    (std::fs::read(&p).unwrap(), out)
}

/// The physical blocks of `path` in `img`, as debugfs lists them.
fn blocks_of(img: &[u8], path: &str) -> Vec<u64> {
    let (_, out) = debugfs(img, &[format!("blocks {path}")]);
    out.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

fn e2fsck_clean(img: &[u8]) -> bool {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("fs.img");
    std::fs::write(&p, img).unwrap();
    Command::new("e2fsck")
        .args(["-fn"])
        .arg(&p)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn free_of(img: &[u8]) -> Result<FsFree, FsError> {
    with_stats(img).map(|(f, _)| f)
}

fn with_stats(img: &[u8]) -> Result<(FsFree, inodes::WalkStats), FsError> {
    let disk = MemDisk(img.to_vec());
    let r = Region {
        src: &disk,
        start: 0,
        len: img.len() as u64,
    };
    free_space_with_stats(&r)
}

fn gdt(img: &[u8]) -> usize {
    // 1 KiB blocks: superblock in block 1, descriptors from block 2.
    assert_eq!(le32(img, 1024 + 24), 0);
    2048
}

/// Free extents never cover a block of a listed file.
fn assert_files_not_free(img: &[u8], f: &FsFree, files: &[&str]) {
    let bs = 1024u64 << le32(img, 1024 + 24);
    for path in files {
        let blocks = blocks_of(img, path);
        assert!(!blocks.is_empty(), "{path} has no blocks");
        for b in blocks {
            let off = b * bs;
            assert!(
                !f.free.iter().any(|e| e.start <= off && off < e.end()),
                "{path}: block {b} reported free"
            );
        }
    }
}

#[test]
fn fresh_filesystem_has_free_space() {
    let img = fresh();
    let f = free_of(&img).unwrap();
    assert!(f.free_bytes > 8 << 20, "{}", f.free_bytes);
    assert_eq!(crate::extent::total(&f.free), f.free_bytes);
}

#[test]
fn every_layout_is_read_and_cross_checked() {
    let t = tree();
    let variants: &[(&str, &[&str])] = &[
        ("ext4 4k", &["-t", "ext4", "-b", "4096"]),
        ("ext4 1k", &["-t", "ext4", "-b", "1024"]),
        ("ext2 (block maps)", &["-t", "ext2"]),
        ("ext3", &["-t", "ext3"]),
        (
            "ext4 no 64bit, no csum",
            &["-t", "ext4", "-O", "^64bit,^metadata_csum"],
        ),
        (
            "ext4 uninit_bg",
            &["-t", "ext4", "-O", "^metadata_csum,uninit_bg"],
        ),
        (
            "ext4 meta_bg",
            &["-t", "ext4", "-O", "meta_bg,^resize_inode"],
        ),
        (
            "ext4 bigalloc",
            &["-t", "ext4", "-O", "bigalloc", "-C", "16384"],
        ),
        ("ext4 inline_data", &["-t", "ext4", "-O", "inline_data"]),
        ("ext4 quota", &["-t", "ext4", "-O", "quota"]),
        ("ext4 sparse_super2", &["-t", "ext4", "-O", "sparse_super2"]),
        ("ext4 orphan_file", &["-t", "ext4", "-O", "orphan_file"]),
        (
            "ext4 csum_seed",
            &["-t", "ext4", "-O", "metadata_csum_seed"],
        ),
        (
            "ext4 small groups",
            &["-t", "ext4", "-b", "1024", "-g", "1024"],
        ),
    ];
    for (name, args) in variants {
        let img = mkfs(args, "64M", Some(t.path()));
        assert!(e2fsck_clean(&img), "{name}: mke2fs made an unclean fs");
        let (f, st) = with_stats(&img).unwrap_or_else(|e| panic!("{name}: {}", e.msg));
        assert!(f.free_bytes > 20 << 20, "{name}: {}", f.free_bytes);
        assert!(st.live_inodes > 40, "{name}: {st:?}");
        assert_files_not_free(&img, &f, &["/dir/sub/big", "/dir/f7", "/sparse"]);
    }
}

/// Marks `blocks` free with scripts/ext4-freeb-lie.sh: bitmaps, group and
/// superblock counts and checksums stay consistent; only the inodes know.
fn lie(img: &[u8], blocks: &[u64]) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("fs.img");
    std::fs::write(&p, img).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ext4-freeb-lie.sh");
    let st = Command::new("bash")
        .arg(script)
        .arg(&p)
        .args(blocks.iter().map(|b| b.to_string()))
        .status()
        .unwrap();
    assert!(st.success());
    let out = std::fs::read(&p).unwrap();
    assert_ne!(out, img, "the lie changed nothing");
    out
}

fn lie_free_blocks(img: &[u8], path: &str) -> Vec<u8> {
    let blocks = blocks_of(img, path);
    lie(img, &blocks[..blocks.len().min(8)])
}

#[test]
fn a_self_consistent_bitmap_lie_is_caught() {
    let t = tree();
    for args in [
        &["-t", "ext4", "-b", "4096"][..],
        &["-t", "ext2"][..],
        &["-t", "ext4", "-O", "bigalloc", "-C", "16384"][..],
        &["-t", "ext4", "-O", "^metadata_csum,uninit_bg"][..],
    ] {
        let img = mkfs(args, "64M", Some(t.path()));
        for path in ["/dir/f7", "/dir/sub/big"] {
            let lie = lie_free_blocks(&img, path);
            let e = free_of(&lie).expect_err("the lie must be refused");
            assert!(
                e.msg.contains("e2fsck -f") && e.msg.contains("inode"),
                "{args:?}: {}",
                e.msg
            );
        }
    }
}

#[test]
fn freed_tree_blocks_and_group_metadata_are_caught() {
    let t = tree();
    // ext2: the big file's indirect blocks come before its data in
    // `blocks` output only as blocks; free the whole list, the indirect
    // block among them.
    let img = mkfs(&["-t", "ext2"], "64M", Some(t.path()));
    let (_, out) = debugfs(&img, &["stat /dir/sub/big".into()]);
    let ind: u64 = out
        .split("(IND):")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|w| w.trim().parse().ok())
        .expect("an indirect block");
    let e = free_of(&lie(&img, &[ind])).unwrap_err();
    assert!(e.msg.contains("block map"), "{}", e.msg);
    // ext4: an inode table block and a backup superblock.
    let img = mkfs(&["-t", "ext4", "-b", "4096"], "256M", Some(t.path()));
    let (_, stats) = debugfs(&img, &["stats".into()]);
    let itable: u64 = stats
        .split("inode table at ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|w| w.trim().parse().ok())
        .expect("inode table location");
    let e = free_of(&lie(&img, &[itable])).unwrap_err();
    assert!(e.msg.contains("inode table"), "{}", e.msg);
    let e = free_of(&lie(&img, &[32768])).unwrap_err();
    assert!(e.msg.contains("superblock"), "{}", e.msg);
    // The journal's last block.
    let (_, out) = debugfs(&img, &["bmap <8> 1000".into()]);
    let j: u64 = out.trim().parse().unwrap();
    let e = free_of(&lie(&img, &[j])).unwrap_err();
    assert!(e.msg.contains("inode 8"), "{}", e.msg);
}

#[test]
fn checksum_mismatches_are_refused() {
    let img = mkfs(&["-t", "ext4", "-b", "1024"], "16M", None);
    // Block bitmap byte flipped, descriptor count fixed, descriptor
    // checksum recomputed: only the bitmap checksum tells.
    let g = gdt(&img);
    let bitmap = le32(&img, g) as usize * 1024;
    let mut b = img.clone();
    let byte = (0..1024).find(|&i| b[bitmap + i] == 0xFF).unwrap();
    b[bitmap + byte] = 0xFE;
    let free = u16::from_le_bytes([b[g + 12], b[g + 13]]) + 1;
    let (b, _) = debugfs(
        &b,
        &[
            format!("set_bg 0 free_blocks_count {free}"),
            "set_bg 0 checksum calc".into(),
        ],
    );
    let e = free_of(&b).unwrap_err();
    assert!(e.msg.contains("block bitmap checksum"), "{}", e.msg);
    // Superblock byte flipped (in an unused field).
    let mut b = img.clone();
    b[1024 + 0x3F0] ^= 1;
    assert!(free_of(&b).unwrap_err().msg.contains("superblock checksum"));
    // A descriptor byte flipped.
    let mut b = img.clone();
    b[g + 0x10] ^= 1; // used dirs count
    assert!(free_of(&b).unwrap_err().msg.contains("descriptor checksum"));
}

/// Byte offset of inode `path` in `img` (debugfs imap).
fn inode_offset(img: &[u8], path: &str) -> usize {
    let (_, out) = debugfs(img, &[format!("imap {path}")]);
    let num = |key: &str| -> usize {
        let w = out
            .split(key)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        let w = w.trim_end_matches(',');
        match w.strip_prefix("0x") {
            Some(h) => usize::from_str_radix(h, 16).unwrap(),
            None => w.parse().unwrap(),
        }
    };
    let bs = 1024usize << le32(img, 1024 + 24);
    num("located at block ") * bs + num("offset ")
}

#[test]
fn inode_extent_block_and_journal_checksums_are_verified() {
    let t = tree();
    let img = mkfs(&["-t", "ext4", "-b", "4096"], "64M", Some(t.path()));
    free_of(&img).unwrap();
    // An inode's mtime changed behind its checksum.
    let mut b = img.clone();
    let at = inode_offset(&img, "/dir/f7");
    b[at + 0x10] ^= 1;
    let e = free_of(&b).unwrap_err();
    assert!(
        e.msg.contains("checksum mismatch") && e.msg.contains("inode"),
        "{}",
        e.msg
    );
    // An extent tree leaf block's entry changed behind its checksum.
    let (_, out) = debugfs(&img, &["stat /frag".into()]);
    let leaf: usize = out
        .split("(ETB0):")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|w| w.parse().ok())
        .expect("/frag has an extent tree block");
    let mut b = img.clone();
    b[leaf * 4096 + 12] ^= 1; // first entry's logical block
    let e = free_of(&b).unwrap_err();
    assert!(e.msg.contains("block checksum mismatch"), "{}", e.msg);
    // The journal superblock with checksum v3 (as the kernel sets it on
    // mount; mke2fs leaves it off): valid, then a padding byte changed.
    let (_, out) = debugfs(&img, &["bmap <8> 0".into()]);
    let j = out.trim().parse::<usize>().unwrap() * 4096;
    let mut b = img.clone();
    b[j + 0x28..j + 0x2C].copy_from_slice(&0x10u32.to_be_bytes());
    b[j + 0x50] = 4;
    b[j + 0xFC..j + 0x100].fill(0);
    let c = crate::fs::crc::crc32c_update(!0, &b[j..j + 1024]);
    b[j + 0xFC..j + 0x100].copy_from_slice(&c.to_be_bytes());
    free_of(&b).unwrap();
    b[j + 0x60] ^= 1;
    let e = free_of(&b).unwrap_err();
    assert!(e.msg.contains("journal superblock checksum"), "{}", e.msg);
}

#[test]
fn unknown_features_and_states_are_refused() {
    let img = fresh();
    for (what, cmd) in [
        ("ro_compat", "ssv feature_ro_compat 0x80000473"),
        ("incompat", "ssv feature_incompat 0x40000242"),
        ("compat", "ssv feature_compat 0x80000038"),
    ] {
        let (b, _) = debugfs(&img, &[cmd.to_string()]);
        let e = free_of(&b).unwrap_err();
        assert!(e.msg.contains("does not know"), "{what}: {}", e.msg);
    }
    let (b, _) = debugfs(&img, &["ssv last_orphan 12".into()]);
    assert!(free_of(&b).unwrap_err().msg.contains("orphan"));
    let (b, _) = debugfs(&img, &["ssv state 5".into()]);
    assert!(free_of(&b).unwrap_err().msg.contains("state"));
}

#[test]
fn a_journal_with_transactions_is_refused() {
    let img = mkfs(&["-t", "ext4", "-b", "4096"], "64M", None);
    // The journal superblock's s_start, set behind needs_recovery's back.
    let (_, out) = debugfs(&img, &["bmap <8> 0".into()]);
    let jblk: usize = out.trim().parse().unwrap();
    let mut b = img.clone();
    b[jblk * 4096 + 28..jblk * 4096 + 32].copy_from_slice(&1u32.to_be_bytes());
    let e = free_of(&b).unwrap_err();
    assert!(e.msg.contains("replay"), "{}", e.msg);
}

#[test]
fn blocks_per_group_not_a_multiple_of_8_does_not_panic() {
    let img = fresh();
    for bpg in [8191u32, 8193, 7, 1] {
        let mut b = img.clone();
        b[1024 + 32..1024 + 36].copy_from_slice(&bpg.to_le_bytes());
        b[1024 + 36..1024 + 40].copy_from_slice(&bpg.to_le_bytes());
        assert!(free_of(&b).is_err());
    }
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
    img[g + 18] &= !(groups::BG_BLOCK_UNINIT as u8);
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
    img[1024 + 96] |= superblock::INCOMPAT_RECOVER as u8;
    let e = free_of(&img).unwrap_err();
    assert!(e.unclean && e.msg.contains("e2fsck"), "{}", e.msg);
    let mut img = fresh();
    img[1024 + 58] |= 0x2; // error state
    assert!(free_of(&img).unwrap_err().unclean);
}

/// Random corruption of the metadata never panics, and a corrupted image
/// never yields more free space than the intact one (the free map only
/// shrinks or is refused).
#[test]
fn random_corruption_never_panics() {
    let t = tree();
    for good in [
        mkfs(
            &["-t", "ext4", "-b", "1024", "-O", "^metadata_csum"],
            "16M",
            Some(t.path()),
        ),
        mkfs(&["-t", "ext2", "-b", "1024"], "16M", Some(t.path())),
    ] {
        let mut x = 0x1234_5678u64;
        for _ in 0..300 {
            let mut img = good.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = 1024 + (x % 300_000) as usize;
                img[i] ^= (x >> 40) as u8 | 1;
            }
            let _ = free_of(&img);
        }
    }
}
