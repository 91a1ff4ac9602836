//! Errors a user can cause get one clear line, a non-zero exit, no panic, no
//! output under the final name, no temp files, and an unchanged input.

mod common;

use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn missing_input() {
    let d = tempfile::tempdir().unwrap();
    let out = run(vmfinal()
        .args(["compact", "/nonexistent/disk.raw", "-o"])
        .arg(d.path().join("o.qcow2")));
    let e = assert_clean_failure(&out);
    assert!(e.contains("No such file"), "{e}");
    assert_only(d.path(), &[]);
}

#[test]
fn directory_input() {
    let d = tempfile::tempdir().unwrap();
    let out = run(vmfinal()
        .arg("compact")
        .arg(d.path())
        .arg("-o")
        .arg(d.path().join("o.qcow2")));
    let e = assert_clean_failure(&out);
    assert!(e.contains("is a directory"), "{e}");
    assert_only(d.path(), &[]);
}

#[test]
fn existing_output_needs_force() {
    let d = tempfile::tempdir().unwrap();
    let input = mixed_raw(&d.path().join("in.raw"), 4 << 20, 1);
    let outp = d.path().join("o.raw");
    std::fs::write(&outp, b"keep me").unwrap();
    let out = run(vmfinal().arg("compact").arg(&input).arg("-o").arg(&outp));
    let e = assert_clean_failure(&out);
    assert!(e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(&outp).unwrap(), b"keep me");
    ok(vmfinal()
        .arg("compact")
        .arg("-q")
        .arg("--force")
        .arg(&input)
        .arg("-o")
        .arg(&outp));
    assert_eq!(
        std::fs::read(&outp).unwrap(),
        std::fs::read(&input).unwrap()
    );
    assert_only(d.path(), &["in.raw", "o.raw"]);
}

#[test]
fn output_onto_input_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let input = mixed_raw(&d.path().join("in.raw"), 4 << 20, 2);
    let before = std::fs::read(&input).unwrap();
    let out = run(vmfinal()
        .arg("compact")
        .arg("--force")
        .arg(&input)
        .arg("-o")
        .arg(&input));
    let e = assert_clean_failure(&out);
    assert!(e.contains("overwrite the input"), "{e}");
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn forced_wrong_format_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let input = mixed_raw(&d.path().join("in.raw"), 4 << 20, 3);
    for fmt in ["qcow2", "zst"] {
        let out = run(vmfinal()
            .args(["compact", "--format", fmt])
            .arg(&input)
            .arg("-o")
            .arg(d.path().join("o.qcow2")));
        assert_clean_failure(&out);
    }
    assert_only(d.path(), &["in.raw"]);
}

#[test]
fn bad_options_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let input = mixed_raw(&d.path().join("in.raw"), 1 << 20, 4);
    for args in [
        vec!["--cluster-size", "3K"],
        vec!["--cluster-size", "4M"],
        vec!["--compression", "zlib", "--level", "12"],
    ] {
        let out = run(vmfinal()
            .arg("compact")
            .arg(&input)
            .arg("-o")
            .arg(d.path().join("o.qcow2"))
            .args(&args));
        assert_clean_failure(&out);
    }
    assert_only(d.path(), &["in.raw"]);
}

/// A full disk: the output goes to a 2 MiB tmpfs that this test mounts.
#[test]
fn full_disk() {
    if !nix_is_root() {
        assert!(!in_ci(), "CI runs as root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let input = mixed_raw(&d.path().join("in.raw"), 32 << 20, 5);
    let mnt = d.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    ok(std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "vmfinal-test"])
        .arg(&mnt));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    for o in ["o.raw", "o.qcow2", "o.zst"] {
        let out = run(vmfinal()
            .arg("compact")
            .arg(&input)
            .arg("-o")
            .arg(mnt.join(o)));
        let e = assert_clean_failure(&out);
        // Names OUT (not the hidden temporary file), says how much, points to --tmp.
        assert!(e.contains("no space left"), "{e}");
        assert!(e.contains(&format!("{}:", mnt.join(o).display())), "{e}");
        assert!(!e.contains(".vmfinal-"), "{e}");
        assert!(e.contains("needs up to") && e.contains("--tmp"), "{e}");
        assert_only(&mnt, &[]);
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Ctrl-C and SIGTERM during a slow conversion: exit 130, no output, no temp.
#[test]
fn interrupted_conversion_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.raw");
    {
        let mut buf = vec![0u8; 192 << 20];
        Rng::new(6).fill(&mut buf);
        std::fs::write(&input, &buf).unwrap();
    }
    for sig in ["INT", "TERM"] {
        let outp = d.path().join("o.zst");
        let child = vmfinal()
            .args(["compact", "-q", "--threads", "1", "--level", "19"])
            .arg(&input)
            .arg("-o")
            .arg(&outp)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        ok(std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string()));
        let start = Instant::now();
        let out = child.wait_with_output().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "took too long to stop"
        );
        assert_eq!(
            out.status.code(),
            Some(130),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!outp.exists());
        assert_only(d.path(), &["in.raw"]);
    }
}
