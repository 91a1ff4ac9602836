//! Criterion 4: images that would make vmfinal read another file, or whose
//! tables point outside the file, are refused with one clear line, no
//! panic, and no output file.

mod common;

use common::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use vmfinal::image::qcow2::entry;

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

/// (l1 offset, first L2 table offset, index of the first non-zero L2 entry, that entry).
fn first_l2_entry(path: &Path) -> (u64, u64, u64, u64) {
    first_l2_entry_where(path, |_| true)
}

fn first_l2_entry_where(path: &Path, pick: impl Fn(u64) -> bool) -> (u64, u64, u64, u64) {
    let b = std::fs::read(path).unwrap();
    let l1 = be64(&b, 40);
    let l2 = entry::l1_offset(be64(&b, l1 as usize));
    for i in 0..8192u64 {
        let e = be64(&b, (l2 + i * 8) as usize);
        if e != 0 && pick(e) {
            return (l1, l2, i, e);
        }
    }
    panic!("no allocated cluster");
}

fn refuse(img: &Path, dir: &Path, expect: &str) {
    let before = std::fs::read(img).unwrap();
    for (cmd, out) in [
        ("compact", "out.qcow2"),
        ("compact", "out.zst"),
        ("expand", "out.raw"),
    ] {
        let o = dir.join(out);
        let r = run(vmfinal().arg(cmd).arg(img).arg("-o").arg(&o));
        let e = assert_clean_failure(&r);
        assert!(
            e.to_lowercase().contains(expect),
            "{}: expected '{expect}' in: {e}",
            img.display()
        );
        assert!(!o.exists());
    }
    let r = run(vmfinal().arg("check").arg(img));
    assert!(
        r.status.code().is_some_and(|c| c != 101),
        "check panicked or died by a signal: {:?}",
        r.status
    );
    if expect == "backing file" || expect == "data file" {
        // check reads the image's own tables; info shows the header and why
        // compact refuses it. Neither opens the named file.
        let i = ok(vmfinal().arg("info").arg(img));
        let text = String::from_utf8_lossy(&i.stdout);
        assert!(
            text.contains("compact refuses it") && text.contains(expect),
            "{text}"
        );
        assert!(text.contains("qemu-img convert"), "{text}");
    } else {
        assert_ne!(r.status.code(), Some(0), "check accepted {}", img.display());
    }
    assert_eq!(std::fs::read(img).unwrap(), before, "input changed");
}

fn compressed(dir: &Path, name: &str) -> PathBuf {
    mixed_raw(&dir.join("src.raw"), 8 << 20, 13);
    let p = dir.join(name);
    ok(Command::new("qemu-img")
        .args(["convert", "-c", "-O", "qcow2"])
        .arg(dir.join("src.raw"))
        .arg(&p));
    std::fs::remove_file(dir.join("src.raw")).unwrap();
    p
}

#[test]
fn backing_file_is_refused_and_never_opened() {
    assert!(have("qemu-img"));
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.raw");
    std::fs::write(&base, vec![7u8; 1 << 20]).unwrap();
    let img = d.path().join("child.qcow2");
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&img));
    std::fs::remove_file(&base).unwrap();
    refuse(&img, d.path(), "backing file");
    assert_only(d.path(), &["child.qcow2"]);
}

#[test]
fn external_data_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("ext.qcow2");
    ok(Command::new("qemu-img").current_dir(d.path()).args([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=data.raw",
        "ext.qcow2",
        "4M",
    ]));
    refuse(&img, d.path(), "data file");
    assert_only(d.path(), &["ext.qcow2", "data.raw"]);
}

#[test]
fn truncated_tail_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let img = compressed(d.path(), "t.qcow2");
    let len = std::fs::metadata(&img).unwrap().len();
    // Cut into the data: qemu puts tables first, data after.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    refuse(&img, d.path(), "past the end");
    assert_only(d.path(), &["t.qcow2"]);
}

#[test]
fn l1_entry_past_eof_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let img = compressed(d.path(), "l1.qcow2");
    let (l1, _, _, _) = first_l2_entry(&img);
    patch(&img, l1, &((1u64 << 63) | (1 << 40)).to_be_bytes());
    refuse(&img, d.path(), "past the end");
    assert_only(d.path(), &["l1.qcow2"]);
}

#[test]
fn l2_entry_past_eof_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src.raw");
    mixed_raw(&src, 8 << 20, 14);
    let img = d.path().join("l2.qcow2");
    ok(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&src)
        .arg(&img));
    std::fs::remove_file(&src).unwrap();
    let (_, l2, i, _) = first_l2_entry(&img);
    patch(&img, l2 + i * 8, &((1u64 << 63) | (1 << 40)).to_be_bytes());
    refuse(&img, d.path(), "past the end");
    assert_only(d.path(), &["l2.qcow2"]);
}

#[test]
fn compressed_offset_past_eof_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let img = compressed(d.path(), "c.qcow2");
    let (_, l2, i, e) = first_l2_entry_where(&img, entry::is_compressed);
    // 64K clusters: host offset in bits 0..54.
    let patched = (e & !((1u64 << 54) - 1)) | (1u64 << 45);
    patch(&img, l2 + i * 8, &patched.to_be_bytes());
    refuse(&img, d.path(), "past the end");
    assert_only(d.path(), &["c.qcow2"]);
}

#[test]
fn absurd_l1_size_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let img = compressed(d.path(), "a.qcow2");
    patch(&img, 36, &0x7fff_ffffu32.to_be_bytes());
    refuse(&img, d.path(), "l1");
    assert_only(d.path(), &["a.qcow2"]);
}

/// Random corruption of a small image's metadata never panics.
#[test]
fn random_corruption_never_panics() {
    let d = tempfile::tempdir().unwrap();
    let good = std::fs::read(compressed(d.path(), "g.qcow2")).unwrap();
    let meta_end = good.len().min(256 << 10);
    let mut rng = Rng::new(99);
    let bad = d.path().join("bad.qcow2");
    for _ in 0..60 {
        let mut b = good.clone();
        for _ in 0..1 + rng.next() % 8 {
            let i = (rng.next() % meta_end as u64) as usize;
            b[i] ^= (rng.next() as u8) | 1;
        }
        std::fs::write(&bad, &b).unwrap();
        for args in [vec!["check"], vec!["info"]] {
            let r = run(vmfinal().args(&args).arg(&bad));
            // A panic (101) or death by a signal (abort, stack overflow, OOM
            // kill: no exit code) both fail.
            assert!(
                r.status.code().is_some_and(|c| c != 101),
                "crash ({:?}): {}",
                r.status,
                String::from_utf8_lossy(&r.stderr)
            );
        }
        let o = d.path().join("o.raw");
        let r = run(vmfinal()
            .args(["expand", "-q", "--force"])
            .arg(&bad)
            .arg("-o")
            .arg(&o));
        assert!(
            r.status.code().is_some_and(|c| c != 101),
            "crash ({:?}): {}",
            r.status,
            String::from_utf8_lossy(&r.stderr)
        );
        let _ = std::fs::remove_file(&o);
    }
}
