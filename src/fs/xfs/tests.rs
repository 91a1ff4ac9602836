//! Unit tests on real xfs images made by mkfs.xfs (populated from a
//! protofile, no mount needed) and edited by xfs_db, read through the
//! in-memory disk.

use super::*;
use crate::bytes::{be16, be32};
use crate::fs::testdisk::MemDisk;
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn crc32c_known_value() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
}

/// A 320 MiB xfs made with `opts`, holding a few files; None outside CI
/// when mkfs.xfs is missing.
fn mkfs(opts: &[&str]) -> Option<Vec<u8>> {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\n");
    for (i, size) in [2_000_000usize, 300_000, 70_000, 5_000].iter().enumerate() {
        let f = src.join(format!("f{i}"));
        std::fs::write(
            &f,
            (0..*size).map(|j| (j * 13 + i) as u8).collect::<Vec<u8>>(),
        )
        .unwrap();
        proto.push_str(&format!("f{i} ---644 0 0 {}\n", f.display()));
    }
    proto.push_str("sub d--755 0 0\nlink l--777 0 0 ../f1\n$\n$\n");
    std::fs::write(d.path().join("proto"), proto).unwrap();
    let p = d.path().join("x.img");
    std::fs::File::create(&p)
        .unwrap()
        .set_len(320 << 20)
        .unwrap();
    let st = Command::new("mkfs.xfs")
        .args(["-q", "-f"])
        .args(opts)
        .arg("-p")
        .arg(d.path().join("proto"))
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

fn fresh() -> Option<Vec<u8>> {
    mkfs(&[])
}

fn free_of(img: &[u8]) -> Result<FsFree, FsError> {
    free_in(&MemDisk(img.to_vec()))
}

fn free_in(disk: &MemDisk) -> Result<FsFree, FsError> {
    free_space(&Region {
        src: disk,
        start: 0,
        len: disk.0.len() as u64,
    })
}

/// Runs a script of scripts/ on a copy of `img`; returns the copy.
fn script(img: &[u8], name: &str, args: &[&str]) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.img");
    std::fs::write(&p, img).unwrap();
    let s = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let o = Command::new("bash")
        .arg(s)
        .arg(&p)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(&p).unwrap()
}

fn xfs_db(img: &[u8], cmds: &[&str]) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.img");
    std::fs::write(&p, img).unwrap();
    let mut c = Command::new("xfs_db");
    c.arg("-x");
    for x in cmds {
        c.args(["-c", x]);
    }
    let st = c.arg(&p).stdout(Stdio::null()).status().unwrap();
    assert!(st.success());
    std::fs::read(&p).unwrap()
}

#[test]
fn fresh_xfs_is_clean_with_free_space() {
    for opts in [
        &[][..],
        &["-m", "rmapbt=1"],
        &["-m", "crc=0"],
        &["-i", "sparse=0", "-m", "finobt=0"],
    ] {
        let Some(img) = mkfs(opts) else { return };
        let f = free_of(&img).unwrap_or_else(|e| panic!("{opts:?}: {}", e.msg));
        assert!(f.free_bytes > 250 << 20, "{opts:?}: {}", f.free_bytes);
    }
}

#[test]
fn free_space_trees_that_disagree_are_refused() {
    let Some(img) = fresh() else { return };
    let lie = script(&img, "xfs-free-lie.sh", &["0", "16", "bno"]);
    let e = free_of(&lie).unwrap_err();
    assert!(
        e.msg.contains("by-size") && e.msg.contains("xfs_repair"),
        "{}",
        e.msg
    );
}

#[test]
fn rmapbt_catches_a_consistent_free_space_lie() {
    let Some(img) = mkfs(&["-m", "rmapbt=1"]) else {
        return;
    };
    let lie = script(&img, "xfs-free-lie.sh", &["0", "16", "both"]);
    let e = free_of(&lie).unwrap_err();
    assert!(e.msg.contains("reverse-mapping"), "{}", e.msg);
}

#[test]
fn needsrepair_and_unknown_features_are_refused() {
    let Some(img) = fresh() else { return };
    let inc = be32(&img, 216);
    for (bits, want) in [(0x10u32, "NEEDSREPAIR"), (0x8000_0000, "does not know")] {
        let cmd = format!("write -d features_incompat {:#x}", inc | bits);
        let b = xfs_db(&img, &["sb 0", &cmd]);
        let e = free_of(&b).unwrap_err();
        assert!(e.msg.contains(want), "{}", e.msg);
    }
    let b = xfs_db(&img, &["sb 0", "write -d features_ro_compat 0x8000000f"]);
    assert!(free_of(&b).unwrap_err().msg.contains("does not know"));
    let b = xfs_db(&img, &["sb 0", "write -d features_log_incompat 1"]);
    assert!(free_of(&b).unwrap_err().msg.contains("log"));
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
    b[root + 56 + 3] ^= 0x40;
    assert!(free_of(&b).is_err());
    // Random flips in the first AG's headers and btrees never panic.
    let mut d = MemDisk(img);
    let mut x = 0x9e37u64;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x % 65536) as usize;
        let flip = (x >> 33) as u8 | 1;
        d.0[i] ^= flip;
        let _ = free_in(&d);
        d.0[i] ^= flip;
    }
}
