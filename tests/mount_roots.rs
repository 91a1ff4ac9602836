//! Guest code runs while the guest is mounted (package scripts, `run`
//! steps). It may rename the directory above a nested mount point and put
//! a symlink in its place. What vmfinal does on that mount afterwards
//! (syncfs, statvfs, reclaim) must still reach the guest's filesystem, never
//! the host path the symlink names. Judged by the report's reclaim of that
//! mount, `e2fsck -fn` and `qemu-img check` of the artifact.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn root_ok() -> bool {
    // SAFETY: no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && in_ci() {
        panic!("this test needs root in CI");
    }
    root && have("mkfs.ext4") && have("sfdisk") && have("unshare") && have("gcc")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_swapped_ancestor_of_a_mount_point_cannot_steer_reclaim_to_the_host() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // The guest's /bin/sh (what a `run` step runs; a package script could
    // do the same) moves /srv away and points /srv at the host's /proc: a
    // host-side walk of ROOT/srv/data would end in /proc/data (absent), or
    // anywhere else the guest names.
    std::fs::write(
        d.path().join("swap.c"),
        "#include <stdio.h>\n#include <unistd.h>\nint main(void) {\n  if (rename(\"/srv\", \"/srv.moved\") != 0) { perror(\"rename\"); return 1; }\n  if (symlink(\"/proc\", \"/srv\") != 0) { perror(\"symlink\"); return 1; }\n  return 0;\n}\n",
    )
    .unwrap();
    let recipe = d.path().join("tree.txt");
    std::fs::write(
        &recipe,
        format!(
            "include {}\ncc /usr/bin/sh swap.c\n",
            repo().join("vm-fixtures/debian-mini/tree.txt").display()
        ),
    )
    .unwrap();
    let img = d.path().join("guest.raw");
    ok(Command::new(repo().join("scripts/make-guest-image.sh"))
        .arg(&recipe)
        .arg(&img)
        .env("GUEST_BOOT_MOUNTPOINT", "/srv/data"));
    let prof = d.path().join("swap.yaml");
    std::fs::write(
        &prof,
        "name: swap-ancestor\ndescription: rename the ancestor of a mount point\nsteps:\n  - run: \"swap /srv\"\n",
    )
    .unwrap();
    let out = d.path().join("golden.qcow2");
    let o = ok(vmfinal()
        .args([
            "finalize",
            "-q",
            "--json",
            "--allow-run",
            "--workspace",
            "copy",
        ])
        .args([
            "--reclaim",
            "zero",
            "--profiles",
            "swap-ancestor",
            "--profile-file",
        ])
        .arg(&prof)
        .arg("-o")
        .arg(&out)
        .arg(&img));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let g = &v["guest"];
    let step = &g["profiles"][0]["steps"][0];
    assert!(
        step.to_string().contains("swap /srv"),
        "the run step is in the report: {step}"
    );
    let r = g["reclaim"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["target"] == "/srv/data")
        .unwrap_or_else(|| panic!("no reclaim of /srv/data: {}", g["reclaim"]));
    assert_eq!(r["method"], "zero", "{r}");
    assert!(r["note"].is_null(), "{r}");
    assert!(r["bytes"].as_u64().unwrap_or(0) > 0, "{r}");
    ok(Command::new("qemu-img").args(["check", "-q"]).arg(&out));
}
