//! Filesystem-aware compaction on real filesystems made by mkfs and filled
//! through real loop mounts (scripts/make-fs-fixtures.sh): outputs pass
//! qemu-img check, expand to identical file trees (rsync -naHAXc: content,
//! modes, owners, times, xattrs, ACLs, links, specials), pass
//! e2fsck -fn / xfs_repair -n; a needs_recovery ext4 is copied whole; analyze
//! finds the free-but-not-zero bytes the fixture script measured.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds the fixtures once per test binary; None (skip) only outside CI.
fn fixtures() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let tools = [
        "mkfs.ext4",
        "mkfs.xfs",
        "losetup",
        "sfdisk",
        "rsync",
        "setfattr",
        "python3",
        "qemu-img",
    ];
    fixture_dir(
        &DIR,
        "vmfinal-fs",
        "make-fs-fixtures.sh",
        &tools,
        "filesystem",
    )
}

/// A read-only mount; unmounted on drop.
struct Mount(PathBuf);
impl Mount {
    fn new(dev: &str, dir: &Path, fs: &str) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        // nouuid: the input and its copy share a UUID, which xfs refuses otherwise.
        let opts = if fs == "xfs" {
            "ro,norecovery,nouuid"
        } else {
            "ro,noload"
        };
        ok(Command::new("mount")
            .args(["-t", fs, "-o", opts, dev])
            .arg(dir));
        Mount(dir.to_owned())
    }
}
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// (offset, size, fs) of the fixture's filesystems.
fn layout(name: &str) -> Vec<(u64, u64, &'static str)> {
    const M: u64 = 1 << 20;
    match name {
        "gpt-ext4-swap.raw" => vec![(M, 200 * M, "ext4"), (201 * M, 64 * M, "swap")],
        "bare-ext4.raw" => vec![(0, 192 * M, "ext4")],
        "ext4-recovery.raw" => vec![(0, 128 * M, "ext4")],
        "mbr-xfs.raw" => vec![(M, 320 * M, "xfs"), (322 * M, 48 * M, "ext4")],
        _ => unreachable!(),
    }
}

/// The file trees of `a` and `b` (raw images) are identical, partition by partition.
fn assert_same_trees(name: &str, a: &Path, b: &Path, work: &Path) {
    for (i, (off, size, fs)) in layout(name).into_iter().enumerate() {
        if fs == "swap" {
            let ha = std::fs::read(a).unwrap()[off as usize..(off + 4096) as usize].to_vec();
            let hb = std::fs::read(b).unwrap()[off as usize..(off + 4096) as usize].to_vec();
            assert_eq!(ha, hb, "{name}: swap header changed");
            continue;
        }
        let (la, lb) = (Loop::new(a, off, size), Loop::new(b, off, size));
        {
            let ma = Mount::new(&la.0, &work.join(format!("a{i}")), fs);
            let mb = Mount::new(&lb.0, &work.join(format!("b{i}")), fs);
            let r = ok(Command::new("rsync")
                .args(["-naHAXc", "--delete", "--itemize-changes"])
                .arg(format!("{}/", ma.0.display()))
                .arg(format!("{}/", mb.0.display())));
            assert!(
                r.stdout.is_empty(),
                "{name} partition {i}: trees differ:\n{}",
                String::from_utf8_lossy(&r.stdout)
            );
        }
        // The output's filesystem is consistent.
        let fsck = if fs == "xfs" {
            run(Command::new("xfs_repair").args(["-n", &lb.0]))
        } else {
            run(Command::new("e2fsck").args(["-fn", &lb.0]))
        };
        assert!(
            fsck.status.success(),
            "{name} partition {i}: {fs} check failed: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
    }
}

fn compact_json(input: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let o = ok(vmfinal()
        .args(["compact", "--json", "--force"])
        .args(extra)
        .arg(input)
        .arg("-o")
        .arg(out));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn check_fixture(name: &str) {
    let Some(dir) = fixtures() else { return };
    let input = dir.join(name);
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    for (mode, extra) in [("fs-aware", vec![]), ("no-fs-aware", vec!["--no-fs-aware"])] {
        let q = work.path().join("out.qcow2");
        let mut args = vec!["--compression", "zstd"];
        args.extend(extra.iter());
        let report = compact_json(&input, &q, &args);
        ok(Command::new("qemu-img").args(["check", "-q"]).arg(&q));
        let skipped = report["fs_free_skipped"].as_u64().unwrap();
        if mode == "fs-aware" && name != "ext4-recovery.raw" {
            assert!(skipped > 0, "{name}: nothing skipped: {report}");
        } else {
            assert_eq!(skipped, 0, "{name} {mode}");
        }
        let back = work.path().join("back.raw");
        ok(vmfinal()
            .args(["expand", "-q", "--force"])
            .arg(&q)
            .arg("-o")
            .arg(&back));
        assert_same_trees(name, &input, &back, work.path());
        if mode == "no-fs-aware" {
            ok(Command::new("cmp").arg(&input).arg(&back));
        }
    }
}

#[test]
fn gpt_ext4_and_swap() {
    check_fixture("gpt-ext4-swap.raw");
}

#[test]
fn bare_ext4() {
    check_fixture("bare-ext4.raw");
}

#[test]
fn mbr_xfs_with_logical_partition() {
    check_fixture("mbr-xfs.raw");
}

#[test]
fn needs_recovery_is_copied_whole_with_a_warning() {
    let Some(dir) = fixtures() else { return };
    let input = dir.join("ext4-recovery.raw");
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let q = work.path().join("out.qcow2");
    let o = ok(vmfinal()
        .args(["compact", "--force"])
        .arg(&input)
        .arg("-o")
        .arg(&q));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("needs recovery"),
        "{stderr}"
    );
    ok(Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(&input)
        .arg(&q));
    let report = compact_json(&input, &q, &[]);
    assert_eq!(report["fs_free_skipped"], 0);
    assert!(report["warnings"][0].as_str().unwrap().contains("e2fsck"));
    check_fixture("ext4-recovery.raw");
}

#[test]
fn analyze_finds_the_dirty_free_space() {
    let Some(dir) = fixtures() else { return };
    for name in ["gpt-ext4-swap.raw", "bare-ext4.raw", "mbr-xfs.raw"] {
        let truth: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join(name.replace(".raw", ".truth.json"))).unwrap(),
        )
        .unwrap();
        let o = ok(vmfinal().args(["analyze", "--json"]).arg(dir.join(name)));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for t in truth["partitions"].as_array().unwrap() {
            let p = v["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["index"] == t["index"])
                .unwrap();
            assert_eq!(p["fs_aware"], true, "{name} partition {}: {p}", t["index"]);
            let (want, got) = (
                t["free_not_zero_bytes"].as_f64().unwrap(),
                p["free_not_zero_bytes"].as_f64().unwrap(),
            );
            assert!(
                (got - want).abs() <= want * 0.01 + 8192.0,
                "{name} partition {}: {got} vs truth {want}",
                t["index"]
            );
        }
        assert!(v["estimate"]["qcow2_zstd_bytes"].as_u64().unwrap() > 0);
    }
}
