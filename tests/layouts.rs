//! Guest layouts beyond one filesystem per partition (root): btrfs with
//! subvolumes @, @home, @var mounted by fstab; LVM2 root and swap LVs
//! mapped without the host's LVM; an LV in two scattered segments mapped
//! through vmfinal's FUSE view of its pieces (and SIGKILL then); a striped
//! root LV refused by name, control characters in its name escaped; an fstab filesystem this kernel cannot mount (vfat). Guests are
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

/// The segment map of LV `name` from a finalize JSON report's volumes:
/// (disk start, length) of each piece, in LV order.
fn lv_pieces(v: &serde_json::Value, name: &str) -> Vec<(u64, u64)> {
    let vol = v["guest"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == format!("LVM logical volume {name}"))
        .unwrap_or_else(|| panic!("no LV {name}: {v}"));
    vol["mapping"]["segments"]["pieces"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} is not mapped by segments: {vol}"))
        .iter()
        .map(|p| {
            (
                p["disk_start"].as_u64().unwrap(),
                p["len"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The LV's bytes: its pieces of the raw disk `img` concatenated with dd.
fn concat_lv(img: &Path, pieces: &[(u64, u64)], out: &Path) {
    let mut at = 0;
    for &(start, len) in pieces {
        assert_eq!(start % MIB, 0);
        assert_eq!(len % MIB, 0);
        ok(Command::new("dd")
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", out.display()))
            .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
            .arg(format!("skip={}", start / MIB))
            .arg(format!("seek={}", at / MIB))
            .arg(format!("count={}", len / MIB)));
        at += len;
    }
}

/// Every path a profile deletes or changes, from a JSON report.
fn planned_paths(v: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = v["guest"]["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["steps"].as_array().unwrap().iter())
        .flat_map(|s| s["actions"].as_array().unwrap().iter())
        .map(|a| format!("{} {}", a["op"], a["path"]))
        .collect();
    out.sort();
    out
}

/// The root LV of the lvm2seg guest lies in two scattered segments (64 MiB,
/// the swap LV, then 96 MiB): vmfinal serves it as one file through its
/// FUSE server and mounts it from a loop device over that file. Through the
/// raw copy and the copy-on-write view, from raw and qcow2 inputs: the
/// artifact's LV (its pieces concatenated with dd from the expanded
/// artifact) is e2fsck-clean, the cleaned files are gone, the kept files
/// are byte-identical, and a dry run plans the same paths.
#[test]
fn an_lv_in_two_scattered_segments_finalizes_through_its_fuse_view() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("lvm2.raw");
    make("lvm2seg", &img, &[]);
    let sum = ok(Command::new("sha256sum").arg(&img)).stdout;
    let q = d.path().join("lvm2.qcow2");
    ok(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&img)
        .arg(&q));
    let keep_sum = |lv: &Path| {
        with_loop(
            lv,
            (0, std::fs::metadata(lv).unwrap().len()),
            "m=$(mktemp -d); mount -o ro,noload \"$L\" \"$m\"
             sha256sum < \"$m/home/alice/work/keep.bin\"; cat \"$m/home/alice/work/keep.txt\"
             umount \"$m\"; rmdir \"$m\"",
        )
    };
    let lv_in = d.path().join("lv-in.img");
    let dry = json(&ok(vmfinal()
        .args([
            "finalize",
            "-q",
            "--json",
            "--dry-run",
            "--profiles",
            "defaults",
        ])
        .arg(&img)));
    let pieces = lv_pieces(&dry, "vg-guest/root");
    assert_eq!(pieces.len(), 2, "{pieces:?}");
    assert_ne!(pieces[0].0 + pieces[0].1, pieces[1].0, "not scattered");
    concat_lv(&img, &pieces, &lv_in);
    let want = keep_sum(&lv_in);
    assert!(want.contains("vmfinal layout guest"), "{want}");
    std::fs::remove_file(&lv_in).unwrap();
    let planned = planned_paths(&dry);
    assert!(planned.iter().any(|p| p.contains(".deb")), "{planned:?}");
    let out = d.path().join("golden.qcow2");
    for (input, ws) in [(&img, "copy"), (&img, "fuse"), (&q, "copy"), (&q, "fuse")] {
        let what = format!("{} through {ws}", input.display());
        let t = std::time::Instant::now();
        let o = ok(vmfinal()
            .args(["finalize", "-q", "--json", "--profiles", "defaults"])
            .args(["--workspace", ws, "--force", "-o"])
            .arg(&out)
            .arg(input));
        eprintln!("{what}: finalize {:.2} s", t.elapsed().as_secs_f64());
        let v = json(&o);
        let root = v["guest"]["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountpoint"] == "/")
            .cloned()
            .unwrap();
        assert_eq!(root["volume"], "LVM logical volume vg-guest/root", "{what}");
        let verified = v["guest"]["verified"].as_array().unwrap();
        assert_eq!(verified.len(), 2, "{what}: {verified:?}");
        assert!(
            verified.iter().all(|x| x["check"] == "e2fsck -fn"),
            "{what}"
        );
        assert_eq!(
            planned_paths(&v),
            planned,
            "{what}: the dry run planned other paths"
        );
        assert_eq!(lv_pieces(&v, "vg-guest/root"), pieces, "{what}");
        ok(Command::new("qemu-img").arg("check").arg(&out));
        let raw = expand(&out);
        let lv = d.path().join("lv.img");
        concat_lv(&raw, &pieces, &lv);
        let fsck = run(Command::new("e2fsck").arg("-fn").arg(&lv));
        assert!(
            fsck.status.success(),
            "{what}: e2fsck on the artifact's root LV: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        let listing = with_loop(
            &lv,
            (0, std::fs::metadata(&lv).unwrap().len()),
            "m=$(mktemp -d); mount -o ro,noload \"$L\" \"$m\"
             ls \"$m/var/cache/apt/archives\" \"$m/home/alice/work\" \"$m/etc/ssh\"
             umount \"$m\"; rmdir \"$m\"",
        );
        assert!(
            !listing.contains(".deb") && !listing.contains("ssh_host_"),
            "{what}: {listing}"
        );
        assert_eq!(keep_sum(&lv), want, "{what}: kept files changed");
        with_loop(&raw, (MIB, 48 * MIB), "e2fsck -fn \"$L\" >/dev/null");
        std::fs::remove_file(&raw).unwrap();
        std::fs::remove_file(&lv).unwrap();
        assert_only(d.path(), &["lvm2.raw", "lvm2.qcow2", "golden.qcow2"]);
        no_leftovers(d.path());
    }
    assert_eq!(ok(Command::new("sha256sum").arg(&img)).stdout, sum);
}

/// Mounts and loop devices of vmfinal run `pid` still visible: lines of
/// /proc/mounts naming /run/vmfinal or fuse.vmfinal, loop devices whose
/// backing file is under /run/vmfinal/PID.
fn leftovers_of(pid: u32) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("/run/vmfinal") || l.contains("fuse.vmfinal"))
        .map(str::to_string)
        .collect();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let b = std::fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
        if b.starts_with(&format!("/run/vmfinal/{pid}.")) {
            out.push(format!("{}: {}", e.path().display(), b.trim()));
        }
    }
    for e in std::fs::read_dir("/run/vmfinal")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("{pid}.")) {
            out.push(e.path().display().to_string());
        }
    }
    out
}

/// Signals while the scattered LV is mounted through its FUSE view (with
/// either workspace): SIGTERM/SIGINT leave nothing at all; after SIGKILL
/// nothing is left mounted or attached that the next `vmfinal cleanup`
/// does not remove. The input is unchanged.
#[test]
fn signals_with_a_scattered_lv_mounted_leave_nothing() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("lvm2.raw");
    make("lvm2seg", &img, &[]);
    let sum = ok(Command::new("sha256sum").arg(&img)).stdout;
    let out = d.path().join("golden.qcow2");
    // SIGTERM and SIGINT: vmfinal takes everything down itself.
    for (ws, sig) in [("fuse", libc::SIGTERM), ("copy", libc::SIGINT)] {
        let mut child = vmfinal()
            .args(["finalize", "-q", "--workspace", ws, "-o"])
            .arg(&out)
            .arg(&img)
            .env("VMFINAL_TEST_PAUSE", "clean")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        wait_for_pause(&mut child, "clean");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, sig) };
        let st = child.wait().unwrap();
        assert_eq!(st.code(), Some(130), "{ws}: exit {st:?}");
        let left = leftovers_of(pid);
        assert!(left.is_empty(), "{ws}: left after signal {sig}: {left:?}");
        assert!(!out.exists());
        assert_only(d.path(), &["lvm2.raw"]);
        no_leftovers(d.path());
    }
    for ws in ["fuse", "copy"] {
        let mut child = vmfinal()
            .args(["finalize", "-q", "--workspace", ws, "-o"])
            .arg(&out)
            .arg(&img)
            .env("VMFINAL_TEST_PAUSE", "clean")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        wait_for_pause(&mut child, "clean");
        // The LV's loop device is over its FUSE file while paused.
        let mi = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let lv_files = mi
            .lines()
            .filter(|l| l.contains(&format!("/run/vmfinal/{pid}.lv")))
            .count();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(lv_files, 1, "{ws}: one LV view while mounted: {mi}");
        let mut left = leftovers_of(pid);
        for _ in 0..50 {
            if left.iter().all(|l| l.starts_with("/run/vmfinal/")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            left = leftovers_of(pid);
        }
        let c = ok(vmfinal().arg("cleanup"));
        let left = leftovers_of(pid);
        assert!(
            left.is_empty(),
            "{ws}: left after SIGKILL and cleanup: {left:?}; cleanup said: {}",
            String::from_utf8_lossy(&c.stderr)
        );
        assert!(!out.exists());
        assert_only(d.path(), &["lvm2.raw"]);
        no_leftovers(d.path());
        assert_eq!(ok(Command::new("sha256sum").arg(&img)).stdout, sum);
    }
    // And a normal run afterwards works.
    ok(vmfinal().args(["finalize", "-q", "-o"]).arg(&out).arg(&img));
    assert!(out.exists());
}

/// `assert_clean_failure`, but lines of the startup sweep (`vmfinal:
/// cleanup: ...`, what a run SIGKILLed by a test beside this one left) are
/// not the run's own; returns the error line.
fn clean_failure(o: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let own: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("vmfinal: cleanup:") && !l.trim().is_empty())
        .collect();
    assert!(
        o.status.code().is_some_and(|c| c != 0 && c != 101),
        "{:?}: {stderr}",
        o.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(own.len(), 1, "expected one error line: {stderr}");
    assert!(own[0].starts_with("vmfinal: error:"), "{stderr}");
    own[0].to_string()
}

/// A write the scattered LV's FUSE view cannot make (the raw workspace's
/// directory, a 40 MiB tmpfs in a namespace of its own, fills up during a
/// zero-fill of the root LV) makes the run fail in one line naming the LV
/// and the cause: no artifact, the input unchanged, nothing left.
#[test]
fn a_write_the_lv_view_cannot_make_fails_the_run() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("lvm2.raw");
    make("lvm2seg", &img, &[]);
    let sum = ok(Command::new("sha256sum").arg(&img)).stdout;
    let tiny = d.path().join("tiny");
    std::fs::create_dir(&tiny).unwrap();
    let out = d.path().join("golden.qcow2");
    let script = format!(
        "mount -t tmpfs -o size=40m tmpfs '{t}' && exec '{v}' finalize -q --workspace copy --reclaim zero --profiles defaults --tmp '{t}' -o '{o}' '{i}'",
        t = tiny.display(),
        v = env!("CARGO_BIN_EXE_vmfinal"),
        o = out.display(),
        i = img.display()
    );
    let r = run(Command::new("unshare").args(["-m", "sh", "-c", &script]));
    let err = clean_failure(&r);
    assert!(
        err.contains("LVM logical volume vg-guest/root") && err.contains("No space left"),
        "{err}"
    );
    assert!(!out.exists());
    assert_only(&tiny, &[]);
    assert_only(d.path(), &["lvm2.raw", "tiny"]);
    no_leftovers(d.path());
    assert_eq!(ok(Command::new("sha256sum").arg(&img)).stdout, sum);
}

/// The PV of the lvm guests (partition 2).
const PV: u64 = 49 * MIB;
/// In lvm-edit-meta.py's escapes: root's one linear area, and the same 40
/// extents as two stripes (an LV LVM cannot create without device-mapper).
const LINEAR_ROOT: &str = "stripe_count = 1\\n\\nstripes = [\\n\"pv0\", 0\\n]";
const STRIPED_ROOT: &str =
    "stripe_count = 2\\nstripe_size = 128\\n\\nstripes = [\\n\"pv0\", 0,\\n\"pv0\", 20\\n]";

/// The lvm guest with its metadata edited by `scripts/lvm-edit-meta.py`.
fn lvm_guest_edited(img: &Path, edits: &[&str]) {
    make("lvm", img, &[]);
    ok(Command::new(repo().join("scripts/lvm-edit-meta.py"))
        .arg(img)
        .arg(PV.to_string())
        .args(edits));
}

/// A root LV of a kind vmfinal does not map (striped) stays a clear
/// refusal by name, before any workspace, with dry runs and real runs,
/// raw and qcow2 inputs; nothing is left and the input is unchanged.
#[test]
fn a_striped_root_lv_is_refused_by_name() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("striped.raw");
    lvm_guest_edited(&img, &[LINEAR_ROOT, STRIPED_ROOT]);
    let q = d.path().join("striped.qcow2");
    ok(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&img)
        .arg(&q));
    let sum = ok(Command::new("sha256sum").arg(&img).arg(&q)).stdout;
    let out = d.path().join("golden.qcow2");
    for input in [&img, &q] {
        for dry in [true, false] {
            let o = run(vmfinal()
                .args(["finalize", "-q", "-o"])
                .arg(&out)
                .args(dry.then_some("--dry-run"))
                .arg(input));
            let err = clean_failure(&o);
            assert!(
                err.contains("the root filesystem is on LVM logical volume vg-guest/root")
                    && err.contains("striped (2 stripes)")
                    && err.contains("maps only linear LVs"),
                "{err}"
            );
            assert!(!out.exists());
            assert_only(d.path(), &["striped.raw", "striped.qcow2"]);
            no_leftovers(d.path());
        }
    }
    assert_eq!(ok(Command::new("sha256sum").arg(&img).arg(&q)).stdout, sum);
}

/// An LV name is guest bytes: with ESC, BEL and a C1 control character in
/// it (LVM's tools refuse such names; the metadata is edited), the error
/// line shows them escaped and the terminal gets none of them raw.
#[test]
fn control_characters_in_an_lv_name_reach_the_error_line_escaped() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("named.raw");
    lvm_guest_edited(
        &img,
        &[
            LINEAR_ROOT,
            STRIPED_ROOT,
            "root {",
            "ro\\x1bot\\x07\\xc2\\x9b {",
        ],
    );
    let out = d.path().join("golden.qcow2");
    for dry in [true, false] {
        let o = run(vmfinal()
            .args(["finalize", "-q", "-o"])
            .arg(&out)
            .args(dry.then_some("--dry-run"))
            .arg(&img));
        let err = clean_failure(&o);
        assert!(
            !o.stderr.iter().any(|&b| b == 0x1b || b == 0x07) && !err.contains('\u{9b}'),
            "a raw control character reached stderr: {err:?}"
        );
        assert!(
            err.contains("LVM logical volume vg-guest/ro\\x1bot\\x07\\x9b"),
            "{err}"
        );
        assert!(!out.exists());
        assert_only(d.path(), &["named.raw"]);
        no_leftovers(d.path());
    }
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
