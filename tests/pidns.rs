//! A vmfinal run in another PID namespace (a container, `unshare --pid`)
//! shares the host's loop devices and maybe its /run and output
//! directories, but its PIDs mean other processes here. A sweep in this
//! namespace (`vmfinal cleanup`, or the start of any run) must not take
//! such a live run for dead: its loop devices stay attached, its workspace
//! and state stay, and it finishes with a good artifact. (Judged by
//! losetup, the files left and `qemu-img check`.)

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

fn root_ok() -> bool {
    // SAFETY: no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && in_ci() {
        panic!("this test needs root in CI");
    }
    root && have("mkfs.ext4") && have("sfdisk") && have("unshare") && have("losetup")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn loops_on(file: &Path) -> usize {
    let o = ok(Command::new("losetup").arg("-j").arg(file));
    String::from_utf8_lossy(&o.stdout).lines().count()
}

#[test]
fn a_live_run_in_another_pid_namespace_is_not_swept() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("guest.raw");
    ok(Command::new(repo().join("scripts/make-guest-image.sh"))
        .arg(repo().join("vm-fixtures/debian-mini/tree.txt"))
        .arg(&img));
    let out = d.path().join("golden.qcow2");
    let resume = d.path().join("resume");
    // vmfinal is PID 1 of a new PID namespace: "1" here is the host's init.
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_vmfinal"))
        .args([
            "finalize",
            "-q",
            "--workspace",
            "copy",
            "--profiles",
            "defaults",
        ])
        .arg("-o")
        .arg(&out)
        .arg(&img)
        .env("VMFINAL_TEST_PAUSE", "clean")
        .env("VMFINAL_TEST_RESUME", &resume)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (seen, err) = paused_at(&mut child, "clean");
    let ws: Vec<PathBuf> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".vmfinal-ws-"))
        .collect();
    assert_eq!(ws.len(), 1, "{ws:?}");
    let before = loops_on(&ws[0]);
    assert!(before >= 1, "the paused run has its loop devices");

    // The sweep in this namespace, twice: the explicit one and a run's own.
    let c = ok(vmfinal().arg("cleanup"));
    let said =
        String::from_utf8_lossy(&c.stdout).into_owned() + &String::from_utf8_lossy(&c.stderr);
    let other = d.path().join("other.raw");
    ok(Command::new(repo().join("scripts/make-guest-image.sh"))
        .arg(repo().join("vm-fixtures/debian-mini/tree.txt"))
        .arg(&other));
    let r = ok(vmfinal().args(["clean", "--dry-run", "-q"]).arg(&other));
    let said2 = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(
        ws[0].exists(),
        "the live run's workspace was removed: {said}{said2}"
    );
    assert_eq!(loops_on(&ws[0]), before, "{said}{said2}");
    assert!(
        !said.contains(&ws[0].display().to_string()) && !said2.contains("left by"),
        "{said}{said2}"
    );

    std::fs::write(&resume, b"").unwrap();
    let mut rest = String::new();
    for l in err.lines().map_while(Result::ok) {
        rest.push_str(&l);
        rest.push('\n');
    }
    let st = child.wait().unwrap();
    assert!(st.success(), "{seen:?}\n{rest}");
    ok(Command::new("qemu-img").args(["check", "-q"]).arg(&out));
    assert!(!ws[0].exists(), "the run removed its own workspace");
}
