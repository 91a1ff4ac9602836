//! QEMU's image locks, both ways, with the real QEMU: vmfinal refuses a
//! disk a running VM holds, and QEMU refuses to start on a disk vmfinal is
//! reading (it may not write it) or changing in place (nothing may use it).

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A paused (`-S`) TCG VM with `disk` attached read-write; killed on drop.
struct Vm(Child);
impl Vm {
    fn start(disk: &Path) -> Vm {
        let spawn = || {
            Command::new("qemu-system-x86_64")
                .args([
                    "-machine",
                    "accel=tcg",
                    "-S",
                    "-display",
                    "none",
                    "-nodefaults",
                    "-m",
                    "64",
                ])
                .arg("-drive")
                .arg(format!("file={},format=raw,if=virtio", disk.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut vm = Vm(spawn());
        // Up once qemu-img can no longer open the disk. The probe itself
        // holds a lock that forbids writers while it runs: a VM that started
        // during a probe fails on that lock and exits, and is started again.
        let t = Instant::now();
        while qemu_reads(disk) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "qemu-system did not lock the disk"
            );
            if vm.0.try_wait().unwrap().is_some() {
                vm = Vm(spawn());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        vm
    }
}
impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `qemu-img convert` can read `disk` (it takes QEMU's read lock and
/// forbids writers; `qemu-img info` and `qemu-io -r` share everything and
/// would not notice a VM).
fn qemu_reads(disk: &Path) -> bool {
    let probe = disk.with_extension("probe");
    let ok = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(disk)
        .arg(&probe)
        .output()
        .unwrap()
        .status
        .success();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// qemu-system-x86_64 fails to start on `disk`, naming the lock.
fn qemu_refuses(disk: &Path) {
    let o = run(Command::new("timeout")
        .args([
            "30",
            "qemu-system-x86_64",
            "-machine",
            "accel=tcg",
            "-S",
            "-display",
            "none",
            "-nodefaults",
        ])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .args(["-monitor", "none"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("lock"),
        "qemu started: {err}"
    );
}

/// Starts vmfinal paused at `stage`; returns it once it says so.
fn paused(args: &[&str], stage: &str) -> Child {
    let mut c = vmfinal()
        .env("VMFINAL_TEST_PAUSE", stage)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut r = BufReader::new(c.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "vmfinal ended before pausing"
        );
        if line.contains(&format!("paused at {stage}")) {
            break;
        }
    }
    std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
    c
}

fn stop(mut c: Child) {
    ok(Command::new("kill").arg("-TERM").arg(c.id().to_string()));
    let s = c.wait().unwrap();
    assert_eq!(s.code(), Some(130));
}

#[test]
fn a_running_vms_disk_is_refused() {
    assert!(have("qemu-system-x86_64"));
    let d = tempfile::tempdir().unwrap();
    let disk = mixed_raw(&d.path().join("disk.raw"), 4 << 20, 51);
    let before = std::fs::read(&disk).unwrap();
    let vm = Vm::start(&disk);
    for args in [vec!["compact"], vec!["info"], vec!["analyze"]] {
        let mut c = vmfinal();
        c.args(&args).arg(&disk);
        if args[0] == "compact" {
            c.arg("-o").arg(d.path().join("o.qcow2"));
        }
        let e = assert_clean_failure(&run(&mut c));
        assert!(e.contains("in use") && e.contains("write"), "{e}");
    }
    drop(vm);
    assert_only(d.path(), &["disk.raw"]);
    assert_eq!(std::fs::read(&disk).unwrap(), before);
    ok(vmfinal()
        .args(["compact", "-q"])
        .arg(&disk)
        .arg("-o")
        .arg(d.path().join("o.qcow2")));
}

#[test]
fn qemu_refuses_a_disk_vmfinal_is_reading() {
    assert!(have("qemu-system-x86_64"));
    let d = tempfile::tempdir().unwrap();
    let disk = mixed_raw(&d.path().join("disk.raw"), 4 << 20, 52);
    let out = d.path().join("o.qcow2");
    let c = paused(
        &[
            "compact",
            disk.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        "input",
    );
    qemu_refuses(&disk);
    // Readers may share it.
    assert!(qemu_reads(&disk));
    stop(c);
    assert_only(d.path(), &["disk.raw"]);
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let r = unsafe { libc::geteuid() } == 0;
    assert!(r || !in_ci(), "CI runs as root");
    r
}

fn guest_image(dir: &Path) -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = dir.join("guest.raw");
    ok(Command::new(repo.join("scripts/make-guest-image.sh"))
        .arg(repo.join("vm-fixtures/debian-mini/tree.txt"))
        .arg(&out));
    out
}

#[test]
fn nothing_may_use_a_disk_vmfinal_changes_in_place() {
    if !root() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let disk = guest_image(d.path());
    let c = paused(
        &[
            "clean",
            "-q",
            "--format",
            "raw",
            "--profiles",
            "none",
            "--reclaim",
            "none",
            disk.to_str().unwrap(),
        ],
        "mount",
    );
    qemu_refuses(&disk);
    assert!(!qemu_reads(&disk), "qemu-io read a disk being cleaned");
    // vmfinal's own readers are refused too.
    let e = assert_clean_failure(&run(vmfinal().arg("info").arg(&disk)));
    assert!(e.contains("in use"), "{e}");
    stop(c);
    assert!(qemu_reads(&disk));
    // And clean refuses a disk a VM holds.
    let vm = Vm::start(&disk);
    let e = assert_clean_failure(&run(vmfinal()
        .args([
            "clean",
            "-q",
            "--format",
            "raw",
            "--profiles",
            "none",
            "--reclaim",
            "none",
        ])
        .arg(&disk)));
    assert!(e.contains("in use"), "{e}");
    drop(vm);
}
