//! Guest layouts beyond one filesystem per partition (root): btrfs with
//! subvolumes @, @home, @var mounted by fstab; LVM2 root and swap LVs
//! mapped without the host's LVM; an LV in two scattered segments refused
//! by name; an fstab filesystem this kernel cannot mount (vfat). Guests are
//! built by scripts/make-layout-guests.sh; artifacts are judged by the
//! filesystems' own tools (btrfs check, e2fsck) and by mounting them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const MIB: u64 = 1 << 20;
/// The btrfs partition of the btrfs guest.
const BTRFS: (u64, u64) = (MIB, 320 * MIB);

fn root_ok() -> bool {
    // SAFETY: no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && in_ci() {
        panic!("layout tests need root in CI");
    }
    root && have("mkfs.btrfs")
        && have("btrfs")
        && have("e2fsck")
        && have("pvcreate")
        && have("mkfs.vfat")
        && have("qemu-img")
        && have("python3")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn make(layout: &str, out: &Path, env: &[(&str, &str)]) {
    ok(Command::new(repo().join("scripts/make-layout-guests.sh"))
        .arg(layout)
        .arg(out)
        .envs(env.iter().copied()));
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Expands a qcow2 artifact to raw.
fn expand(art: &Path) -> PathBuf {
    let raw = art.with_extension("expanded.raw");
    ok(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(art)
        .arg(&raw));
    raw
}

/// Runs `sh` with `$L` a read-only loop device over the range, in a
/// private mount namespace; returns stdout.
fn with_loop(img: &Path, (off, size): (u64, u64), sh: &str) -> String {
    let l = Loop::new(img, off, size);
    let o = ok(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-euc", sh])
        .env("L", &l.0));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Loop devices whose backing file is `file`.
fn loops_on(file: &Path) -> usize {
    let want = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
    std::fs::read_dir("/sys/block")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("loop/backing_file"))
                        .is_ok_and(|b| Path::new(b.trim()) == want)
                })
                .count()
        })
        .unwrap_or(0)
}

/// No loop device or mount of vmfinal's is left.
fn no_leftovers(dir: &Path) {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        !mi.contains(&*dir.to_string_lossy()),
        "mount left under {}",
        dir.display()
    );
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        assert_eq!(
            loops_on(&e.path()),
            0,
            "loop left on {}",
            e.path().display()
        );
    }
}

#[test]
fn btrfs_subvolumes_share_one_device_and_the_artifact_checks_clean() {
    btrfs_subvolumes_case("copy");
}

/// The same through the copy-on-write view (the default where FUSE is).
#[test]
fn btrfs_subvolumes_share_one_device_through_the_view() {
    btrfs_subvolumes_case("fuse");
}

fn btrfs_subvolumes_case(workspace: &str) {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("btrfs.raw");
    make("btrfs", &img, &[]);
    let out = d.path().join("golden.qcow2");

    // While the guest is mounted: one loop device over the workspace, and
    // every mount's source is the same node.
    let resume = d.path().join("resume");
    let mut child = vmfinal()
        .args(["finalize", "-q", "--json", "--profiles", "defaults"])
        .args(["--workspace", workspace, "-o"])
        .arg(&out)
        .arg(&img)
        .env("VMFINAL_TEST_PAUSE", "mount")
        .env("VMFINAL_TEST_RESUME", &resume)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_pause(&mut child, "mount");
    let ws: Vec<PathBuf> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".vmfinal-ws-"))
        .collect();
    // A raw workspace file with --workspace copy; the view has none (its
    // file lives in vmfinal's own mount namespace): there the mountinfo
    // and the report below say one device.
    let n_loops = if workspace == "copy" {
        assert_eq!(ws.len(), 1, "{ws:?}");
        loops_on(&ws[0])
    } else {
        assert!(ws.is_empty(), "{ws:?}");
        1
    };
    let mi = std::fs::read_to_string(format!("/proc/{}/mountinfo", child.id())).unwrap();
    std::fs::write(&resume, b"").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(n_loops, 1, "loop devices over the workspace while mounted");
    let btrfs: Vec<Vec<&str>> = mi
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| {
            f.iter()
                .position(|x| *x == "-")
                .is_some_and(|i| f.get(i + 1) == Some(&"btrfs"))
        })
        .collect();
    assert_eq!(btrfs.len(), 3, "{mi}");
    let source = |f: &Vec<&str>| {
        let i = f.iter().position(|x| *x == "-").unwrap();
        f[i + 2].to_string()
    };
    let src0 = source(&btrfs[0]);
    assert!(btrfs.iter().all(|f| source(f) == src0), "{mi}");
    let mut roots: Vec<&str> = btrfs.iter().map(|f| f[3]).collect();
    roots.sort();
    assert_eq!(roots, ["/@", "/@home", "/@var"], "{mi}");

    let v = json(&o);
    let mounts = v["guest"]["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 3);
    assert!(mounts.iter().all(|m| m["device"] == mounts[0]["device"]));
    // Reclaimed and checked once, as one filesystem.
    let verified = v["guest"]["verified"].as_array().unwrap();
    assert_eq!(verified.len(), 1, "{verified:?}");
    assert_eq!(verified[0]["check"], "btrfs check --readonly");
    assert_eq!(v["guest"]["reclaim"].as_array().unwrap().len(), 1);
    assert_eq!(v["guest"]["filesystems"].as_array().unwrap().len(), 1);

    // The artifact: btrfs check clean, cleaned files gone, /home intact.
    let raw = expand(&out);
    ok(Command::new("qemu-img").arg("check").arg(&out));
    let listing = with_loop(
        &raw,
        BTRFS,
        "btrfs check --readonly \"$L\" >/dev/null 2>&1 || { echo CHECK-FAILED; exit 0; }
         m=$(mktemp -d); mount -o ro \"$L\" \"$m\"
         ls \"$m/@var/cache/apt/archives\" \"$m/@home/alice/work\"
         wc -c < \"$m/@/etc/machine-id\"
         ls \"$m/@/etc/ssh\"; cat \"$m/@home/alice/work/keep.txt\"
         umount \"$m\"; rmdir \"$m\"",
    );
    assert!(
        !listing.contains("CHECK-FAILED"),
        "btrfs check failed on the artifact"
    );
    assert!(!listing.contains(".deb"), "{listing}");
    assert!(
        listing.contains("keep.bin") && listing.contains("keep.txt"),
        "{listing}"
    );
    assert!(listing.contains("vmfinal layout guest"), "{listing}");
    assert!(!listing.contains("ssh_host_"), "{listing}");
    assert!(
        listing.lines().any(|l| l.trim() == "0"),
        "machine-id not emptied: {listing}"
    );
    // /home's random file is byte-identical to the input's.
    let sum = |img: &Path| {
        with_loop(
            img,
            BTRFS,
            "m=$(mktemp -d); mount -o ro \"$L\" \"$m\"; sha256sum < \"$m/@home/alice/work/keep.bin\"; umount \"$m\"; rmdir \"$m\"",
        )
    };
    assert_eq!(sum(&img), sum(&raw));
    std::fs::remove_file(&raw).unwrap();
    no_leftovers(d.path());
}

/// Paused after cleaning, checking and unmounting, before compaction, the
/// workspace's btrfs gets a write vmfinal did not make: still a consistent
/// filesystem, but not the one cleaned and checked. No artifact, one error
/// line naming the filesystem and what changed.
#[test]
fn a_workspace_changed_after_cleaning_gives_no_artifact() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("btrfs.raw");
    make("btrfs", &img, &[]);
    let out = d.path().join("golden.qcow2");
    let resume = d.path().join("resume");
    let mut child = vmfinal()
        .args(["finalize", "-q", "--workspace", "copy", "-o"])
        .arg(&out)
        .arg(&img)
        .env("VMFINAL_TEST_PAUSE", "compact")
        .env("VMFINAL_TEST_RESUME", &resume)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_, mut r) = paused_at(&mut child, "compact");
    let ws: PathBuf = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains(".vmfinal-ws-"))
        .unwrap();
    {
        let l = Loop::rw(&ws, BTRFS.0, BTRFS.1);
        ok(Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-euc",
                "m=$(mktemp -d); mount \"$L\" \"$m\"; touch \"$m/@/new\"; umount \"$m\"; rmdir \"$m\"",
            ])
            .env("L", &l.0));
    }
    std::fs::write(&resume, b"").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut r, &mut rest).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(1), "{rest}");
    let errs: Vec<&str> = rest
        .lines()
        .filter(|l| l.starts_with("vmfinal: error:"))
        .collect();
    assert_eq!(errs.len(), 1, "{rest}");
    assert!(
        errs[0].contains("partition 1 (btrfs) changed between cleaning and compaction")
            && errs[0].contains("generation")
            && errs[0].contains("no artifact"),
        "{rest}"
    );
    assert!(!out.exists(), "artifact written");
    std::fs::remove_file(&resume).unwrap();
    assert_only(d.path(), &["btrfs.raw"]);
    no_leftovers(d.path());
}

/// The LV range of `name` from a finalize JSON report's volumes.
fn lv_range(v: &serde_json::Value, name: &str) -> (u64, u64) {
    let vol = v["guest"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == format!("LVM logical volume {name}"))
        .unwrap_or_else(|| panic!("no LV {name}: {v}"));
    let m = &vol["mapping"]["loop"];
    (m["start"].as_u64().unwrap(), m["size"].as_u64().unwrap())
}

#[test]
fn lvm_guest_finalizes_through_its_lvs() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("lvm.raw");
    make("lvm", &img, &[]);
    let out = d.path().join("golden.qcow2");
    let o = ok(vmfinal()
        .args(["finalize", "-q", "--json", "--profiles", "defaults", "-o"])
        .arg(&out)
        .arg(&img));
    let v = json(&o);
    let mounts: Vec<(String, String)> = v["guest"]["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountpoint"].as_str().unwrap().to_string(),
                m["volume"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        [
            (
                "/".to_string(),
                "LVM logical volume vg-guest/root".to_string()
            ),
            ("/boot".to_string(), "partition 1".to_string())
        ]
    );
    let verified = v["guest"]["verified"].as_array().unwrap();
    assert_eq!(verified.len(), 2);
    assert!(verified.iter().all(|x| x["check"] == "e2fsck -fn"));
    let root = lv_range(&v, "vg-guest/root");
    let raw = expand(&out);
    ok(Command::new("qemu-img").arg("check").arg(&out));
    let listing = with_loop(
        &raw,
        root,
        "e2fsck -fn \"$L\" >/dev/null 2>&1 || { echo CHECK-FAILED; exit 0; }
         m=$(mktemp -d); mount -o ro,noload \"$L\" \"$m\"
         ls \"$m/var/cache/apt/archives\" \"$m/home/alice/work\" \"$m/etc/ssh\"
         umount \"$m\"; rmdir \"$m\"",
    );
    assert!(
        !listing.contains("CHECK-FAILED"),
        "e2fsck failed on the root LV"
    );
    assert!(
        !listing.contains(".deb") && !listing.contains("ssh_host_"),
        "{listing}"
    );
    assert!(listing.contains("keep.txt"), "{listing}");
    with_loop(&raw, (MIB, 48 * MIB), "e2fsck -fn \"$L\" >/dev/null");
    std::fs::remove_file(&raw).unwrap();

    // Within 5% of the same guest without LVM (/boot, root, swap on
    // partitions; same trees and filesystem sizes).
    let plain = d.path().join("plain.raw");
    make("plain", &plain, &[]);
    let pout = d.path().join("plain.qcow2");
    ok(vmfinal()
        .args(["finalize", "-q", "--profiles", "defaults", "-o"])
        .arg(&pout)
        .arg(&plain));
    let (a, b) = (
        std::fs::metadata(&out).unwrap().len(),
        std::fs::metadata(&pout).unwrap().len(),
    );
    eprintln!("finalize artifacts: LVM guest {a} bytes, plain guest {b} bytes");
    assert!(
        (a as f64) <= (b as f64) * 1.05,
        "LVM artifact {a} vs plain {b}"
    );
    no_leftovers(d.path());
}

#[test]
fn an_lv_in_two_scattered_segments_is_refused_by_name() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("lvm2.raw");
    make("lvm2seg", &img, &[]);
    let sum = ok(Command::new("sha256sum").arg(&img)).stdout;
    let out = d.path().join("golden.qcow2");
    for dry in [true, false] {
        let o = run(vmfinal()
            .args(["finalize", "-q", "-o"])
            .arg(&out)
            .args(dry.then_some("--dry-run"))
            .arg(&img));
        let err = assert_clean_failure(&o);
        assert!(
            err.contains("LVM logical volume vg-guest/root")
                && err.contains("2 segments")
                && err.contains("device-mapper"),
            "{err}"
        );
        assert!(!out.exists());
        assert_only(d.path(), &["lvm2.raw"]);
        no_leftovers(d.path());
    }
    // A qcow2 input: refused before any workspace is built.
    let q = d.path().join("lvm2.qcow2");
    ok(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&img)
        .arg(&q));
    let o = run(vmfinal().args(["finalize", "-q", "-o"]).arg(&out).arg(&q));
    let err = assert_clean_failure(&o);
    assert!(
        err.contains("vg-guest/root") && err.contains("2 segments"),
        "{err}"
    );
    assert_only(d.path(), &["lvm2.raw", "lvm2.qcow2"]);
    assert_eq!(ok(Command::new("sha256sum").arg(&img)).stdout, sum);
}

#[test]
fn an_fstab_filesystem_this_kernel_cannot_mount_stops_the_run() {
    if !root_ok() {
        return;
    }
    let vfat = std::fs::read_to_string("/proc/filesystems").is_ok_and(|t| {
        t.lines()
            .any(|l| l.split_whitespace().last() == Some("vfat"))
    });
    if vfat {
        eprintln!("this kernel mounts vfat: nothing unmountable to test");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("esp.raw");
    make("btrfs", &img, &[("ESP", "1")]);
    let out = d.path().join("golden.qcow2");
    for dry in [true, false] {
        let o = run(vmfinal()
            .args(["finalize", "-q", "-o"])
            .arg(&out)
            .args(dry.then_some("--dry-run"))
            .arg(&img));
        let err = assert_clean_failure(&o);
        assert!(
            err.contains("/boot/efi") && err.contains("vfat") && err.contains("--skip-unmountable"),
            "{err}"
        );
        assert!(!out.exists());
        assert_only(d.path(), &["esp.raw"]);
    }
    let o = ok(vmfinal()
        .args(["finalize", "-q", "--json", "--skip-unmountable", "-o"])
        .arg(&out)
        .arg(&img));
    let err = json(&o)["guest"]["warnings"].to_string();
    assert!(err.contains("not mounted (--skip-unmountable)"), "{err}");
    assert!(out.exists());
    // Marked nofail in the guest: a warning, no flag needed.
    let img2 = d.path().join("esp-nofail.raw");
    make("btrfs", &img2, &[("ESP", "nofail")]);
    let o = ok(vmfinal()
        .args(["finalize", "-q", "--json", "--force", "-o"])
        .arg(&out)
        .arg(&img2));
    let err = json(&o)["guest"]["warnings"].to_string();
    assert!(err.contains("not mounted (nofail/noauto)"), "{err}");
    no_leftovers(d.path());
}
