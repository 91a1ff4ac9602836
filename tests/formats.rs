//! The image format comes from the user, never from the guest: `--format`,
//! else a name that says it (checked against the magic), else a probe that
//! must account for the whole file. Files that are not whole sectors are
//! not disks unless `--format raw` says so.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A raw disk whose guest wrote a small qcow2 image at LBA 0.
fn planted(dir: &Path, name: &str) -> PathBuf {
    let disk = mixed_raw(&dir.join(name), 8 << 20, 41);
    let q = dir.join("planted.qcow2");
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("1M"));
    ok(Command::new("qemu-io")
        .args(["-c", "write -P 0x66 0 64k"])
        .arg(&q));
    let bytes = std::fs::read(&q).unwrap();
    std::fs::remove_file(&q).unwrap();
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&bytes, 0).unwrap();
    disk
}

#[test]
fn raw_named_disk_with_a_planted_qcow2_is_refused_then_read_as_raw() {
    assert!(have("qemu-img"));
    let d = tempfile::tempdir().unwrap();
    let disk = planted(d.path(), "disk.raw");
    let before = std::fs::read(&disk).unwrap();
    let out = d.path().join("o.qcow2");
    let r = run(vmfinal().arg("compact").arg(&disk).arg("-o").arg(&out));
    let e = assert_clean_failure(&r);
    assert!(
        e.contains("the name says raw") && e.contains("--format raw"),
        "{e}"
    );
    assert_only(d.path(), &["disk.raw"]);
    ok(vmfinal()
        .args(["compact", "-q", "--format", "raw"])
        .arg(&disk)
        .arg("-o")
        .arg(&out));
    // The artifact is the raw disk, not the planted image.
    ok(Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
        .arg(&disk)
        .arg(&out));
    assert_eq!(std::fs::read(&disk).unwrap(), before);
    // info and check follow the same rule.
    assert_clean_failure(&run(vmfinal().arg("info").arg(&disk)));
}

#[test]
fn probed_name_refuses_a_qcow2_that_does_not_account_for_the_file() {
    let d = tempfile::tempdir().unwrap();
    let disk = planted(d.path(), "disk.img");
    let out = d.path().join("o.qcow2");
    let r = run(vmfinal().arg("compact").arg(&disk).arg("-o").arg(&out));
    let e = assert_clean_failure(&r);
    assert!(
        e.contains("inside a raw disk") && e.contains("--format raw"),
        "{e}"
    );
    assert_only(d.path(), &["disk.img"]);
    // A real qcow2 named .img is read, and vmfinal says it probed.
    let img = d.path().join("cloud.img");
    mixed_raw(&d.path().join("src.raw"), 4 << 20, 42);
    ok(Command::new("qemu-img")
        .args(["convert", "-c", "-O", "qcow2"])
        .arg(d.path().join("src.raw"))
        .arg(&img));
    let r = ok(vmfinal()
        .args(["compact", "-q"])
        .arg(&img)
        .arg("-o")
        .arg(&out));
    let note = String::from_utf8_lossy(&r.stderr);
    assert!(note.contains("probed") && note.contains("qcow2"), "{note}");
    ok(Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(d.path().join("src.raw"))
        .arg(&out));
}

#[test]
fn name_and_magic_must_agree() {
    let d = tempfile::tempdir().unwrap();
    let raw = mixed_raw(&d.path().join("x.qcow2"), 1 << 20, 43);
    let e = assert_clean_failure(&run(vmfinal().arg("info").arg(&raw)));
    assert!(
        e.contains("the name says qcow2") && e.contains("--format"),
        "{e}"
    );
    let z = d.path().join("x.zst");
    std::fs::copy(&raw, &z).unwrap();
    let e = assert_clean_failure(&run(vmfinal().arg("info").arg(&z)));
    assert!(e.contains("the name says zst"), "{e}");
    // A raw disk whose guest wrote a zstd frame at LBA 0.
    let r = d.path().join("y.raw");
    let mut b = std::fs::read(&raw).unwrap();
    b[..4].copy_from_slice(&[0x28, 0xB5, 0x2F, 0xFD]);
    std::fs::write(&r, &b).unwrap();
    let e = assert_clean_failure(&run(vmfinal()
        .arg("compact")
        .arg(&r)
        .arg("-o")
        .arg(d.path().join("o.zst"))));
    assert!(
        e.contains("zst header") && e.contains("--format raw"),
        "{e}"
    );
    ok(vmfinal()
        .args(["compact", "-q", "--format", "raw"])
        .arg(&r)
        .arg("-o")
        .arg(d.path().join("o.zst")));
    // Formats vmfinal does not read are named, with the way out.
    let v = d.path().join("x.vmdk");
    std::fs::copy(&raw, &v).unwrap();
    let e = assert_clean_failure(&run(vmfinal().arg("info").arg(&v)));
    assert!(e.contains("vmdk") && e.contains("qemu-img convert"), "{e}");
}

#[test]
fn files_that_are_not_whole_sectors_are_not_disks_unless_forced() {
    assert!(have("zstd"));
    let d = tempfile::tempdir().unwrap();
    let odd = d.path().join("odd.raw");
    let mut b = vec![0u8; 1000];
    Rng::new(44).fill(&mut b);
    std::fs::write(&odd, &b).unwrap();
    let empty = d.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    for input in [&odd, &empty] {
        let e = assert_clean_failure(&run(vmfinal()
            .arg("compact")
            .arg(input)
            .arg("-o")
            .arg(d.path().join("o.zst"))));
        assert!(
            e.contains("512-byte sectors") && e.contains("--format raw"),
            "{e}"
        );
    }
    assert_only(d.path(), &["odd.raw", "empty.img"]);
    // Forced: the size is kept exactly through .zst, and a qcow2 says it rounds.
    let z = d.path().join("o.zst");
    ok(vmfinal()
        .args(["compact", "-q", "--format", "raw"])
        .arg(&odd)
        .arg("-o")
        .arg(&z));
    let back = d.path().join("back.raw");
    ok(vmfinal()
        .args(["expand", "-q"])
        .arg(&z)
        .arg("-o")
        .arg(&back));
    assert_eq!(std::fs::read(&back).unwrap(), b);
    let r = ok(vmfinal()
        .args(["compact", "--format", "raw"])
        .arg(&odd)
        .arg("-o")
        .arg(d.path().join("o.qcow2")));
    let w = String::from_utf8_lossy(&r.stderr);
    assert!(w.contains("rounded up") && w.contains("1024"), "{w}");
}

#[test]
fn scripts_pass_format_explicitly() {
    // Every vmfinal call in the scripts names its input format.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["scripts", "examples"] {
        for e in walk(&root.join(dir)) {
            let text = std::fs::read_to_string(&e).unwrap_or_default();
            for (i, line) in text.lines().enumerate() {
                let l = line.trim();
                if l.starts_with('#') || l.starts_with("record ") || l.starts_with("echo ") {
                    continue;
                }
                let toks: Vec<&str> = l.split_whitespace().collect();
                for w in toks.windows(2) {
                    let prev = w[0].trim_matches('"');
                    let is_vmfinal = prev.starts_with('$') || prev.ends_with("vmfinal");
                    let sub = [
                        "compact", "finalize", "expand", "clean", "analyze", "info", "check",
                    ];
                    if is_vmfinal && sub.contains(&w[1]) && !l.contains("--format") {
                        panic!(
                            "{}:{}: vmfinal {} without --format: {l}",
                            e.display(),
                            i + 1,
                            w[1]
                        );
                    }
                }
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
