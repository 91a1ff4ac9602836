//! Guest cleanup on real images (root): synthetic RPM-family, Alpine and
//! Debian-like guests built by scripts/make-guest-image.sh from the recipes
//! in vm-fixtures/, a hostile guest whose symlinks point at host canaries,
//! dry run == real run, and interruption at every stage.
//!
//! Each image: GPT, p1 ext4 /boot (48 MiB), p2 swap (16 MiB), p3 ext4 /.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const MIB: u64 = 1 << 20;
const BOOT: (u64, u64) = (MIB, 48 * MIB);
const ROOT: (u64, u64) = (65 * MIB, 160 * MIB);

fn root_ok() -> bool {
    // SAFETY: no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && in_ci() {
        panic!("guest tests need root in CI");
    }
    root && have("mkfs.ext4") && have("sfdisk") && have("e2fsck") && have("python3")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn make_image(recipe: &str, out: &Path) {
    ok(Command::new(repo().join("scripts/make-guest-image.sh"))
        .arg(repo().join("vm-fixtures").join(recipe).join("tree.txt"))
        .arg(out));
}

/// A mount of one partition (read-only unless `opts` says otherwise), undone on drop.
struct Ro {
    dir: tempfile::TempDir,
}

impl Ro {
    fn new(img: &Path, range: (u64, u64)) -> Self {
        Self::with(img, range, "ro,noload")
    }
    fn with(img: &Path, (off, size): (u64, u64), opts: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        ok(Command::new("mount")
            .arg("-o")
            .arg(format!("{opts},loop,offset={off},sizelimit={size}"))
            .arg(img)
            .arg(dir.path()));
        Self { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Ro {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn walk(base: &Path, rel: &Path, out: &mut BTreeSet<String>) {
    let Ok(rd) = std::fs::read_dir(base.join(rel)) else {
        return;
    };
    for e in rd.flatten() {
        let r = rel.join(e.file_name());
        out.insert(format!("/{}", r.display()));
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(base, &r, out);
        }
    }
}

/// Every path in the guest (/ and /boot), not following symlinks.
fn listing(img: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    {
        let r = Ro::new(img, ROOT);
        walk(r.path(), Path::new(""), &mut out);
    }
    let b = Ro::new(img, BOOT);
    let mut boot = BTreeSet::new();
    walk(b.path(), Path::new(""), &mut boot);
    out.extend(boot.into_iter().map(|p| format!("/boot{p}")));
    out.retain(|p| !p.starts_with("/lost+found") && !p.starts_with("/boot/lost+found"));
    out
}

fn file_size(img: &Path, guest: &str) -> Option<u64> {
    let (part, rel) = match guest.strip_prefix("/boot/") {
        Some(r) => (BOOT, r.to_string()),
        None => (ROOT, guest.trim_start_matches('/').to_string()),
    };
    let m = Ro::new(img, part);
    std::fs::symlink_metadata(m.path().join(rel))
        .ok()
        .map(|m| m.len())
}

fn fsck_clean(img: &Path) {
    for part in [BOOT, ROOT] {
        fs_check(img, part, &["e2fsck", "-fn"]);
    }
}

/// Each of `deleted` was there before and is gone; each of `kept` is there after.
fn assert_cleaned(
    before: &BTreeSet<String>,
    after: &BTreeSet<String>,
    deleted: &[&str],
    kept: &[&str],
) {
    for p in deleted {
        assert!(
            before.contains(*p) && !after.contains(*p),
            "{p} should be deleted"
        );
    }
    for p in kept {
        assert!(after.contains(*p), "{p} should be kept");
    }
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// (op, path) of every planned action, per profile, from a clean/finalize report.
fn planned(v: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for p in v["guest"]["profiles"].as_array().expect("profiles") {
        for s in p["steps"].as_array().expect("steps") {
            for a in s["actions"].as_array().expect("actions") {
                out.push((
                    p["name"].as_str().unwrap_or("").to_string(),
                    a["op"].as_str().unwrap_or("").to_string(),
                    a["path"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    }
    out
}

/// Is `pid` a live vmfinal run?
fn alive_vmfinal(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "vmfinal")
}

fn no_leftovers(dir: &Path) {
    let loops =
        String::from_utf8_lossy(&run(Command::new("losetup").arg("-a")).stdout).into_owned();
    // Loops over a dead run's FUSE view (/run/vmfinal/PID.view).
    for l in loops.lines() {
        if let Some(rest) = l.split("/run/vmfinal/").nth(1)
            && let Some(pid) = rest.split('.').next().and_then(|p| p.parse().ok())
        {
            assert!(alive_vmfinal(pid), "loop over a dead run's view: {l}");
        }
    }
    assert!(
        !loops.contains(&dir.display().to_string()),
        "loop devices left over: {loops}"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    assert!(
        !mounts.contains("/run/vmfinal"),
        "mounts left over: {mounts}"
    );
    assert!(
        !mounts.contains(&dir.display().to_string()),
        "mounts left over: {mounts}"
    );
}

fn sha(p: &Path) -> String {
    let o = ok(Command::new("sha256sum").arg(p));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn rpm_guest_profiles() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("rpm.raw");
    make_image("rpm", &img);
    let before = listing(&img);
    let out = ok(vmfinal()
        .args(["clean", "--profiles", "all", "--json"])
        .arg(&img));
    let v = json(&out);
    let after = listing(&img);
    assert_cleaned(
        &before,
        &after,
        &[
            "/var/cache/dnf/fedora-2d95c80a1fa0a67d",
            "/var/cache/dnf/fedora.solv",
            "/var/cache/dnf/packages.db",
            "/var/cache/yum/x86_64",
            "/var/log/messages-20261101",
            "/var/log/secure-20261101",
            "/var/log/audit/audit.log.1",
            "/var/log/journal/5f2b6c1e0d9a4c3bb2f1e8d7c6b5a493/system.journal",
            "/tmp/build.log",
            "/tmp/.hidden-lock",
            "/tmp/pkgbuild",
            "/var/tmp/cache.bin",
            "/etc/ssh/ssh_host_rsa_key",
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "/root/.bash_history",
            "/home/alice/.python_history",
            "/home/alice/.viminfo",
            "/root/.cache/pip",
            "/home/alice/.cache/pip",
            "/root/.npm/_cacache",
            "/home/alice/.cache/yarn",
            "/var/lib/cloud/instances",
            "/var/log/cloud-init.log",
            "/usr/share/doc/bash/README",
            "/usr/share/man/man1/bash.1.gz",
            "/usr/share/locale/de",
            "/usr/share/locale/fr",
            "/usr/lib/locale/de_DE.utf8",
            "/usr/lib/python3.11/site-packages/requests/__pycache__",
        ],
        &[
            "/usr/lib/sysimage/rpm/rpmdb.sqlite",
            "/var/lib/rpm",
            "/var/cache/dnf",
            "/var/log/messages",
            "/var/log/secure",
            "/var/log/audit/audit.log",
            "/var/log/dnf.log",
            "/var/log/journal/5f2b6c1e0d9a4c3bb2f1e8d7c6b5a493",
            "/etc/machine-id",
            "/etc/ssh/sshd_config",
            "/home/alice/notes.txt",
            "/home/alice/.npm/keep-me.json",
            "/var/lib/cloud/seed/nocloud/meta-data",
            "/usr/share/doc/bash/copyright",
            "/usr/share/doc/bash/COPYING",
            "/usr/share/locale/en_GB/LC_MESSAGES/bash.mo",
            "/usr/share/locale/locale.alias",
            "/usr/lib/locale/C.utf8/LC_CTYPE",
            "/usr/lib/python3.11/site-packages/requests/api.py",
            // The guest has no rpm binary here: kernels are left alone, never deleted as files.
            "/boot/vmlinuz-6.8.5-301.fc40.x86_64",
            "/boot/vmlinuz-6.10.3-200.fc40.x86_64",
            "/usr/lib/modules/6.8.5-301.fc40.x86_64/kernel/fs/ext4/ext4.ko.xz",
            "/etc/systemd/system/vmfinal-ssh-hostkeys.service",
            "/etc/systemd/system/multi-user.target.wants/vmfinal-ssh-hostkeys.service",
            "/tmp",
            "/var/tmp",
        ],
    );
    for p in [
        "/etc/machine-id",
        "/var/log/messages",
        "/var/log/dnf.log",
        "/var/log/audit/audit.log",
    ] {
        assert_eq!(file_size(&img, p), Some(0), "{p} should be truncated");
    }
    let kernels = v["guest"]["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "kernels")
        .unwrap();
    assert!(
        kernels.to_string().contains("without an rpm binary"),
        "kernels note: {kernels}"
    );
    fsck_clean(&img);
    no_leftovers(d.path());
}

#[test]
fn alpine_guest_profiles() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("alpine.raw");
    make_image("alpine", &img);
    let before = listing(&img);
    ok(vmfinal().args(["clean", "-q"]).arg(&img));
    let after = listing(&img);
    assert_cleaned(
        &before,
        &after,
        &[
            "/var/cache/apk/APKINDEX.66df3b4f.tar.gz",
            "/var/cache/apk/openssh-9.7_p1-r4.1a2b3c4d.apk",
            "/var/cache/apk/busybox-1.36.1-r29.5e6f7a8b.apk",
            "/var/log/messages.0",
            "/root/.ash_history",
            "/etc/ssh/ssh_host_ed25519_key",
            "/tmp/apk-build.log",
        ],
        &[
            "/lib/apk/db/installed",
            "/etc/apk/world",
            "/etc/apk/cache",
            "/var/cache/apk",
            "/var/log/messages",
            "/var/log/dmesg",
            "/boot/vmlinuz-virt",
            "/boot/initramfs-virt",
            "/lib/modules/6.6.58-0-virt/kernel/fs/ext4/ext4.ko.gz",
            "/bin/busybox",
        ],
    );
    // No systemd: no first-boot unit (Alpine's sshd init makes missing keys).
    assert!(!after.contains("/etc/systemd/system/vmfinal-ssh-hostkeys.service"));
    assert_eq!(file_size(&img, "/var/log/messages"), Some(0));
    assert_eq!(file_size(&img, "/etc/machine-id"), Some(0));
    fsck_clean(&img);
    no_leftovers(d.path());
}

#[test]
fn dry_run_lists_exactly_what_the_run_removes() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("deb.raw");
    make_image("debian-mini", &img);
    let sum = sha(&img);
    let dry = json(&ok(vmfinal()
        .args(["clean", "--dry-run", "--json", "--profiles", "all"])
        .arg(&img)));
    assert_eq!(sha(&img), sum, "a dry run changed the image");
    assert_eq!(dry["guest"]["dry_run"], true);
    let before = listing(&img);
    let real = json(&ok(vmfinal()
        .args(["clean", "--json", "--profiles", "all"])
        .arg(&img)));
    let (pd, pr) = (planned(&dry), planned(&real));
    assert!(pd.len() > 50, "dry run planned only {} actions", pd.len());
    assert_eq!(pd, pr, "dry run and real run differ");
    let after = listing(&img);
    for (_, op, path) in &pr {
        match op.as_str() {
            "delete" | "rmdir" => assert!(!after.contains(path), "{path} still exists"),
            "truncate" => assert!(after.contains(path), "{path} vanished"),
            _ => {}
        }
    }
    // Nothing else went.
    let removed: BTreeSet<String> = pr
        .iter()
        .filter(|(_, op, _)| op == "delete" || op == "rmdir")
        .map(|(_, _, p)| p.clone())
        .collect();
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(gone, removed, "removed paths differ from the plan");
    // Freed bytes match what the filesystems report, within 1%.
    let planned_bytes = real["guest"]["freed_bytes"].as_u64().unwrap() as f64;
    let measured = real["guest"]["measured_freed_bytes"].as_u64().unwrap() as f64;
    assert!(planned_bytes > 10e6);
    assert!(
        (planned_bytes - measured).abs() <= planned_bytes * 0.01,
        "planned {planned_bytes} vs measured {measured}"
    );
    fsck_clean(&img);
    no_leftovers(d.path());
}

/// Host canaries at the paths the hostile guest's symlinks name.
struct Canaries(Vec<PathBuf>);
impl Drop for Canaries {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
    }
}

fn snapshot(paths: &[PathBuf]) -> Vec<(PathBuf, Vec<u8>, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for p in paths {
        let mut files = vec![p.clone()];
        if p.is_dir() {
            let mut s = BTreeSet::new();
            walk(p, Path::new(""), &mut s);
            files.extend(s.iter().map(|r| p.join(r.trim_start_matches('/'))));
        }
        for f in files {
            let m = std::fs::symlink_metadata(&f).expect("canary");
            let data = if m.is_file() {
                std::fs::read(&f).unwrap()
            } else {
                Vec::new()
            };
            out.push((f, data, m.mtime(), m.ctime()));
        }
    }
    out
}

#[test]
fn hostile_guest_cannot_reach_host_files() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("hostile.raw");
    make_image("hostile", &img);
    let canary_dir = PathBuf::from("/host-canary");
    if canary_dir.exists() {
        panic!("/host-canary exists already; refusing to touch it");
    }
    let etc_canary = PathBuf::from(format!("/etc/vmfinal-canary-{}", std::process::id()));
    let root_log = PathBuf::from(format!("/vmfinal-canary-{}.log", std::process::id()));
    let guard = Canaries(vec![
        canary_dir.clone(),
        etc_canary.clone(),
        root_log.clone(),
    ]);
    std::fs::create_dir(&canary_dir).unwrap();
    for (name, body) in [
        ("history", "host history"),
        ("key", "host key"),
        ("bash_5.2.15-2+b7_amd64.deb", "host deb"),
        ("machine-id", "hostmachineid"),
        ("instances", "host cloud"),
        ("build.log", "host tmp"),
    ] {
        std::fs::write(canary_dir.join(name), body).unwrap();
    }
    std::fs::write(&etc_canary, "host etc").unwrap();
    std::fs::write(&root_log, "host root log").unwrap();
    let etc_before: BTreeSet<String> = std::fs::read_dir("/etc")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let snap = snapshot(&guard.0);
    std::thread::sleep(std::time::Duration::from_millis(20));

    let out = d.path().join("hostile.qcow2");
    let sum = sha(&img);
    ok(vmfinal()
        .args(["finalize", "-q", "--profiles", "all", "-o"])
        .arg(&out)
        .arg(&img));
    assert_eq!(snapshot(&guard.0), snap, "a host canary changed");
    let etc_after: BTreeSet<String> = std::fs::read_dir("/etc")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(etc_before, etc_after, "host /etc changed");
    assert_eq!(sha(&img), sum, "the input changed");
    // The guest's own symlinks were removed as links or left alone, never followed.
    let exp = d.path().join("exp.raw");
    ok(vmfinal().args(["expand", "-q", "-o"]).arg(&exp).arg(&out));
    let after = listing(&exp);
    for kept in ["/var/log", "/tmp", "/var/tmp", "/var/lib/cloud", "/etc"] {
        assert!(after.contains(kept), "{kept} gone");
    }
    assert!(
        !after.contains("/root/.cache/pip"),
        "pip symlink not removed as a link"
    );
    fsck_clean(&exp);
    no_leftovers(d.path());
    drop(guard);
}

#[test]
fn finalize_qcow2_input_and_outputs_are_valid() {
    if !root_ok() || !have("qemu-img") || !have("zstd") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("deb.raw");
    make_image("debian-mini", &raw);
    let q = d.path().join("in.qcow2");
    ok(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&q));
    let sum = sha(&q);
    // Dry run on qcow2: nothing written beside it.
    ok(vmfinal().args(["finalize", "--dry-run", "-q"]).arg(&q));
    assert_only(d.path(), &["deb.raw", "in.qcow2"]);
    let out = d.path().join("out.qcow2");
    let manifest = d.path().join("manifest.json");
    let v = json(&ok(vmfinal()
        .args([
            "finalize",
            "--json",
            "--compression",
            "zstd",
            "--checksum",
            "sha256",
            "-o",
        ])
        .arg(&out)
        .arg("--manifest")
        .arg(&manifest)
        .arg(&q)));
    assert_eq!(sha(&q), sum, "input changed");
    assert!(v["guest"]["freed_bytes"].as_u64().unwrap() > 10_000_000);
    assert!(v["artifact"]["output"]["bytes"].as_u64().unwrap() > 0);
    ok(Command::new("qemu-img").arg("check").arg(&out));
    ok(Command::new("sha256sum")
        .arg("-c")
        .arg("out.qcow2.sha256")
        .current_dir(d.path()));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["builds"][0]["custom_data"]["vmfinal_command"], "finalize");
    let exp = d.path().join("out.raw");
    ok(vmfinal().args(["expand", "-q", "-o"]).arg(&exp).arg(&out));
    fsck_clean(&exp);
    // The same through .zst.
    let z = d.path().join("out.zst");
    ok(vmfinal().args(["finalize", "-q", "-o"]).arg(&z).arg(&q));
    ok(Command::new("zstd").arg("-tq").arg(&z));
    assert_only(
        d.path(),
        &[
            "deb.raw",
            "in.qcow2",
            "out.qcow2",
            "out.qcow2.sha256",
            "manifest.json",
            "out.raw",
            "out.zst",
        ],
    );
    no_leftovers(d.path());
}

#[test]
fn bad_profiles_fail_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: mine\ndescription: x\nsteps:\n  - delete: ['/var/[oops']\n",
    )
    .unwrap();
    let out = run(vmfinal().args(["profiles", "check"]).arg(&bad));
    let e = assert_clean_failure(&out);
    assert!(e.contains("bad.yaml:4:"), "{e}");
    std::fs::write(
        &bad,
        "name: mine\ndescription: x\nsteps:\n  - delete: [/a]\n    colour: red\n",
    )
    .unwrap();
    let e = assert_clean_failure(&run(vmfinal().args(["profiles", "check"]).arg(&bad)));
    assert!(e.contains("bad.yaml:5:") && e.contains("colour"), "{e}");
    let good = d.path().join("good.yaml");
    std::fs::write(
        &good,
        "name: mine\ndescription: x\nsteps:\n  - delete: ['/opt/app/cache/**']\n",
    )
    .unwrap();
    ok(vmfinal().args(["profiles", "check"]).arg(&good));
    let list = ok(vmfinal().args(["profiles", "list"]));
    let s = String::from_utf8_lossy(&list.stdout);
    for p in [
        "apt",
        "dnf",
        "yum",
        "apk",
        "pip",
        "npm",
        "logs",
        "docs",
        "locales",
        "kernels",
        "tmp",
        "ssh-hostkeys",
        "machine-id",
        "shell-history",
        "cloud-init",
    ] {
        assert!(s.lines().any(|l| l.starts_with(p)), "{p} missing from list");
    }
    let show = ok(vmfinal().args(["profiles", "show", "apt"]));
    assert_eq!(
        String::from_utf8_lossy(&show.stdout),
        std::fs::read_to_string(repo().join("profiles/apt.yaml")).unwrap()
    );
    if root_ok() {
        let img = d.path().join("x.raw");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let e = assert_clean_failure(&run(vmfinal()
            .args(["clean", "--profile-file"])
            .arg(&bad)
            .arg(&img)));
        assert!(e.contains("bad.yaml:5:"), "{e}");
        let e = assert_clean_failure(&run(vmfinal()
            .args(["clean", "--profiles", "defaults,nosuch"])
            .arg(&img)));
        assert!(e.contains("nosuch"), "{e}");
        let e = assert_clean_failure(&run(vmfinal().args(["clean"]).arg(&img)));
        assert!(e.contains("no ext2/3/4, xfs or btrfs"), "{e}");
        let e = assert_clean_failure(&run(vmfinal()
            .args(["clean"])
            .arg(d.path().join("missing.raw"))));
        assert!(e.contains("missing.raw"), "{e}");
    }
}

fn wait_for_pause(child: &mut std::process::Child, stage: &str) -> String {
    use std::io::{BufRead, BufReader};
    let err = child.stderr.take().expect("stderr");
    let mut r = BufReader::new(err);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("vmfinal ended before pausing at {stage}: {seen}");
        }
        seen.push_str(&line);
        if line.contains(&format!("paused at {stage}")) {
            // Drain the rest in the background.
            std::thread::spawn(move || {
                let mut rest = String::new();
                let _ = std::io::Read::read_to_string(&mut r, &mut rest);
            });
            return seen;
        }
    }
}

#[test]
fn interrupted_finalize_leaves_nothing() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("deb.raw");
    make_image("debian-mini", &img);
    let sum = sha(&img);
    let out = d.path().join("out.qcow2");
    for (stage, sig) in [
        ("workspace", libc::SIGINT),
        ("mount", libc::SIGTERM),
        ("clean", libc::SIGINT),
        ("reclaim", libc::SIGTERM),
        ("compact", libc::SIGINT),
    ] {
        let mut child = vmfinal()
            .args(["finalize", "-q", "-o"])
            .arg(&out)
            .arg(&img)
            .env("VMFINAL_TEST_PAUSE", stage)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_pause(&mut child, stage);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let st = child.wait().unwrap();
        assert_eq!(st.code(), Some(130), "stage {stage}: exit {st:?}");
        assert!(!out.exists(), "stage {stage}: output exists");
        assert_eq!(sha(&img), sum, "stage {stage}: input changed");
        assert_only(d.path(), &["deb.raw"]);
        no_leftovers(d.path());
    }
    // SIGKILL after mounting: the namespace dies with the process (with it
    // the guest's mounts and the FUSE mount of the copy-on-write view; the
    // loop devices detach themselves). The view's overlay was unlinked when
    // it was made, so nothing is left; a raw copy is swept by the next run.
    for how in ["fuse", "copy"] {
        let mut child = vmfinal()
            .args(["finalize", "-q", "--workspace", how, "-o"])
            .arg(&out)
            .arg(&img)
            .env("VMFINAL_TEST_PAUSE", "clean")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_pause(&mut child, "clean");
        child.kill().unwrap();
        child.wait().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        assert!(
            !mounts.contains("/run/vmfinal") && !mounts.contains("fuse.vmfinal"),
            "{how}: mount visible after SIGKILL"
        );
        if how == "fuse" {
            assert_only(d.path(), &["deb.raw"]);
        }
        // The killed run's raw workspace, unless a run another test started
        // meanwhile swept it first (every run sweeps what dead runs left).
        let ws_left = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".vmfinal-ws-"));
        let c = ok(vmfinal().arg("cleanup"));
        let said = String::from_utf8_lossy(&c.stderr);
        if how == "copy" && ws_left {
            assert!(
                said.contains(".vmfinal-ws-"),
                "cleanup did not remove the workspace: {said}"
            );
        }
        assert_only(d.path(), &["deb.raw"]);
        no_leftovers(d.path());
        assert_eq!(sha(&img), sum);
    }
    // And a normal run afterwards works.
    ok(vmfinal().args(["finalize", "-q", "-o"]).arg(&out).arg(&img));
    assert!(out.exists());
}

fn make_fs_image(layout: &str, out: &Path) {
    ok(Command::new(repo().join("scripts/make-guest-image-fs.sh"))
        .arg(layout)
        .arg(repo().join("vm-fixtures/debian-mini/tree.txt"))
        .arg(out));
}

/// Runs `check` (argv) on the partition at (offset, size) through a read-only loop device.
fn fs_check(img: &Path, (off, size): (u64, u64), check: &[&str]) {
    let lo = Loop::new(img, off, size);
    let out = run(Command::new(check[0]).args(&check[1..]).arg(&lo.0));
    assert!(
        out.status.success(),
        "{check:?} at offset {off} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Used bytes (df) of the filesystem at (offset, size), mounted with `opts`.
fn df_used(img: &Path, range: (u64, u64), opts: &str) -> u64 {
    let m = Ro::with(img, range, opts);
    let o = run(Command::new("df")
        .args(["-B1", "--output=used"])
        .arg(m.path()));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}

fn part_range(img: &Path, n: usize) -> (u64, u64) {
    let o = ok(Command::new("sfdisk").arg("-J").arg(img));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = &v["partitiontable"]["partitions"][n];
    (
        p["start"].as_u64().unwrap() * 512,
        p["size"].as_u64().unwrap() * 512,
    )
}

#[test]
fn btrfs_root_in_a_subvolume() {
    if !root_ok() || !have("mkfs.btrfs") || !have("btrfs") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("btrfs.raw");
    make_fs_image("btrfs-subvol", &img);
    let v = json(&ok(vmfinal().args(["clean", "--json"]).arg(&img)));
    let m = &v["guest"]["mounts"][0];
    assert_eq!(
        (m["mountpoint"].as_str(), m["fstype"].as_str()),
        (Some("/"), Some("btrfs"))
    );
    let paths: Vec<String> = planned(&v).into_iter().map(|(_, _, p)| p).collect();
    assert!(
        paths
            .iter()
            .any(|p| p == "/var/cache/apt/archives/bash_5.2.15-2+b7_amd64.deb")
    );
    let (off, size) = part_range(&img, 0);
    let (gone, kept) = {
        let m = Ro::with(&img, (off, size), "ro,subvol=@");
        let deb = "var/cache/apt/archives/bash_5.2.15-2+b7_amd64.deb";
        (
            !m.path().join(deb).exists(),
            m.path().join("etc/fstab").exists(),
        )
    };
    assert!(gone && kept, "btrfs guest not cleaned as planned");
    fs_check(&img, (off, size), &["btrfs", "check", "--readonly"]);
    no_leftovers(d.path());
}

#[test]
fn xfs_var_mounted_by_label() {
    if !root_ok() || !have("mkfs.xfs") || !have("xfs_repair") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("xfs.raw");
    make_fs_image("xfs-var", &img);
    let before =
        df_used(&img, part_range(&img, 0), "ro") + df_used(&img, part_range(&img, 1), "ro,nouuid");
    let v = json(&ok(vmfinal().args(["clean", "--json"]).arg(&img)));
    let mounts = v["guest"]["mounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountpoint"] == "/var" && m["fstype"] == "xfs"),
        "{mounts:?}"
    );
    // xfs frees unlinked inodes' blocks lazily (inodegc), so statvfs right
    // after cleaning can lag; compare with df on fresh mounts instead.
    let after =
        df_used(&img, part_range(&img, 0), "ro") + df_used(&img, part_range(&img, 1), "ro,nouuid");
    let f = v["guest"]["freed_bytes"].as_f64().unwrap();
    let m = before.saturating_sub(after) as f64;
    assert!(
        f > 10e6 && (f - m).abs() <= f * 0.01,
        "planned {f} vs df {m}"
    );
    // Per profile, what finalize measured around it (inodegc waited for):
    // the profiles that free over 1 MB within 1% (a few KiB of xfs's own
    // metadata move with the small ones).
    for p in v["guest"]["profiles"].as_array().unwrap() {
        let planned = p["freed_bytes"].as_i64().unwrap();
        if planned > 1_000_000 {
            let measured = p["measured_freed_bytes"].as_i64().unwrap();
            assert!(
                (planned - measured).unsigned_abs() * 100 <= planned.unsigned_abs(),
                "{}: planned {planned}, measured {measured}",
                p["name"]
            );
        }
    }
    let var = part_range(&img, 1);
    let (gone, kept) = {
        let m = Ro::with(&img, var, "ro,nouuid");
        let deb = "cache/apt/archives/libc6_2.36-9+deb12u9_amd64.deb";
        (
            !m.path().join(deb).exists(),
            m.path().join("lib/dpkg/status").exists(),
        )
    };
    assert!(gone && kept, "xfs /var not cleaned as planned");
    fs_check(&img, var, &["xfs_repair", "-n"]);
    fs_check(&img, part_range(&img, 0), &["e2fsck", "-fn"]);
    no_leftovers(d.path());
}

#[test]
fn run_steps_need_allow_run() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("deb.raw");
    make_image("debian-mini", &img);
    let prof = d.path().join("run.yaml");
    std::fs::write(
        &prof,
        "name: hook\ndescription: x\nsteps:\n  - run: touch /root/ran\n",
    )
    .unwrap();
    let v = json(&ok(vmfinal()
        .args(["clean", "--json", "--profiles", "none", "--profile-file"])
        .arg(&prof)
        .arg(&img)));
    let step = &v["guest"]["profiles"][0]["steps"][0];
    assert!(
        step["note"].as_str().unwrap_or("").contains("--allow-run"),
        "{step}"
    );
    assert!(step["actions"].as_array().unwrap().is_empty());
    assert!(!listing(&img).contains("/root/ran"));
    no_leftovers(d.path());
}

/// A profile that only writes: its plan is net of what its writes and
/// symlinks allocate (new directories, a file over several blocks, a long
/// symlink, a short one kept in the inode, an overwrite freeing the old
/// file), negative here, and equals what the run measures around it and
/// what df shows on a fresh mount, to the byte (ext4).
#[test]
fn write_steps_are_priced_by_what_they_allocate() {
    if root_ok() {
        priced_writes(false);
    }
}

/// The same on an ext4 root with `inline_data`: new directories and files
/// of up to 128 bytes (256-byte inodes) take no block.
#[test]
fn write_steps_are_priced_on_ext4_with_inline_data() {
    if root_ok() {
        priced_writes(true);
    }
}

fn priced_writes(inline: bool) {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("deb.raw");
    ok(Command::new(repo().join("scripts/make-guest-image.sh"))
        .env(
            "GUEST_ROOT_MKFS_OPTS",
            if inline { "-O inline_data -I 256" } else { "" },
        )
        .arg(repo().join("vm-fixtures/debian-mini/tree.txt"))
        .arg(&img));
    let prof = d.path().join("writes.yaml");
    let long = format!("../{}", "t".repeat(120));
    std::fs::write(
        &prof,
        format!(
            "name: writes\ndescription: x\nsteps:\n  - write:\n      path: /opt/vmfinal-new/a/b/big.conf\n      content: \"{}\"\n  - write:\n      path: /etc/debian_version\n      content: \"{}\"\n  - symlink:\n      path: /opt/vmfinal-new/long-link\n      target: {long}\n  - symlink:\n      path: /opt/vmfinal-new/short-link\n      target: a/b/big.conf\n  - write:\n      path: /opt/vmfinal-new/small.conf\n      content: \"{}\"\n",
            "x".repeat(5000),
            "y".repeat(3000),
            "z".repeat(128)
        ),
    )
    .unwrap();
    let root = part_range(&img, 2);
    let before = df_used(&img, root, "ro,noload");
    let args = ["clean", "--json", "--profiles", "none", "--profile-file"];
    let dry = json(&ok(vmfinal()
        .args(args)
        .arg(&prof)
        .arg("--dry-run")
        .arg(&img)));
    let v = json(&ok(vmfinal().args(args).arg(&prof).arg(&img)));
    let after = df_used(&img, root, "ro,noload");
    let p = &v["guest"]["profiles"][0];
    assert_eq!(p["name"], "writes");
    assert!(p["failures"].as_array().unwrap().is_empty(), "{p}");
    assert_eq!(dry["guest"]["profiles"][0]["freed_bytes"], p["freed_bytes"]);
    let actions: Vec<&serde_json::Value> = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["actions"].as_array().unwrap())
        .collect();
    let alloc = |path: &str| {
        let a = actions.iter().find(|a| a["path"] == path).expect(path);
        (
            a["allocated_bytes"].as_u64().unwrap(),
            a["bytes"].as_u64().unwrap(),
        )
    };
    // The long symlink takes one block: the filesystem's block size.
    let (block, _) = alloc("/opt/vmfinal-new/long-link");
    assert!(block == 1024 || block == 4096, "{p}");
    assert_eq!(alloc("/opt/vmfinal-new/short-link"), (0, 0));
    let (big, freed) = alloc("/opt/vmfinal-new/a/b/big.conf");
    let new_dirs = (big - 5000u64.div_ceil(block) * block) / block;
    assert_eq!(freed, 0);
    // The overwritten file's old block is freed (inline: it had none).
    let (ver, old) = alloc("/etc/debian_version");
    let small = alloc("/opt/vmfinal-new/small.conf");
    if inline {
        assert_eq!(new_dirs, 0, "{p}");
        assert_eq!((ver, old), (3000u64.div_ceil(block) * block, 0), "{p}");
        assert_eq!(small, (0, 0), "{p}");
    } else {
        assert!((3..=4).contains(&new_dirs), "{p}");
        assert_eq!((ver, old), (3000u64.div_ceil(block) * block, block), "{p}");
        assert_eq!(small, (block, 0), "{p}");
    }
    let planned = p["freed_bytes"].as_i64().unwrap();
    eprintln!(
        "writes (inline_data {inline}): removes {} B, allocates {} B ({new_dirs} new directory blocks, {block} B blocks): plans {planned} B; measured {}, df {}",
        p["removed_bytes"],
        p["allocated_bytes"],
        p["measured_freed_bytes"],
        before as i64 - after as i64
    );
    assert!(planned < 0, "{p}");
    assert_eq!(
        p["removed_bytes"].as_i64().unwrap() - p["allocated_bytes"].as_i64().unwrap(),
        planned
    );
    assert_eq!(p["measured_freed_bytes"].as_i64(), Some(planned), "{p}");
    assert_eq!(
        before as i64 - after as i64,
        planned,
        "df before {before}, after {after}"
    );
    fsck_clean(&img);
    no_leftovers(d.path());
}

/// The copy-on-write view through FUSE (the default where the host has
/// /dev/fuse) gives the same guest as the full raw copy: same files and
/// sizes, both filesystems clean by e2fsck; the overlay holds only what
/// cleaning wrote, and the input is untouched.
#[test]
fn finalize_through_the_fuse_view_equals_the_copy() {
    if !root_ok() || !have("qemu-img") {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        assert!(std::env::var("CI").is_err(), "CI=true but no /dev/fuse");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("deb.raw");
    make_image("debian-mini", &raw);
    for fmt in ["qcow2", "zst"] {
        let input = d.path().join(format!("in.{fmt}"));
        ok(vmfinal()
            .args(["compact", "-q", "-O", fmt])
            .arg(&raw)
            .arg("-o")
            .arg(&input));
        let sum = sha(&input);
        let mut trees = Vec::new();
        for how in ["fuse", "copy"] {
            let out = d.path().join(format!("out-{how}.qcow2"));
            let v = json(&ok(vmfinal()
                .args(["finalize", "--json", "--workspace", how, "-o"])
                .arg(&out)
                .arg(&input)));
            let want = if how == "fuse" { "fuse-view" } else { "copy" };
            assert_eq!(v["workspace"]["mechanism"], want, "{v}");
            if how == "fuse" {
                let ov = v["workspace"]["overlay_allocated_bytes"].as_u64().unwrap();
                let used: u64 = v["guest"]["filesystems"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f["used_before"].as_u64().unwrap())
                    .sum();
                assert!(ov > 0 && ov < used / 10, "overlay {ov} of {used} used");
            }
            assert_eq!(sha(&input), sum, "{how}: the input changed");
            ok(Command::new("qemu-img").arg("check").arg(&out));
            let exp = d.path().join(format!("exp-{how}.raw"));
            ok(vmfinal().args(["expand", "-q", "-o"]).arg(&exp).arg(&out));
            fsck_clean(&exp);
            let files = listing(&exp);
            let sizes: Vec<(String, Option<u64>)> = ["/etc/fstab", "/etc/machine-id", "/var/log"]
                .iter()
                .map(|p| (p.to_string(), file_size(&exp, p)))
                .collect();
            trees.push((files, sizes));
            std::fs::remove_file(&exp).unwrap();
            std::fs::remove_file(&out).unwrap();
        }
        assert_eq!(trees[0], trees[1], "{fmt}: the view and the copy differ");
        std::fs::remove_file(&input).unwrap();
    }
    assert_only(d.path(), &["deb.raw"]);
    no_leftovers(d.path());
}

/// The kernels step of a clean/finalize report.
fn kernels_step(v: &serde_json::Value) -> serde_json::Value {
    v["guest"]["profiles"]
        .as_array()
        .expect("profiles")
        .iter()
        .find(|p| p["name"] == "kernels")
        .expect("kernels profile")["steps"][0]
        .clone()
}

fn sha256(p: &Path) -> String {
    let o = ok(Command::new("sha256sum").arg(p));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn rpm_kernels_dry_run_from_rpmdb_sqlite() {
    if !root_ok() || !have("rpm") || !have("rpmbuild") {
        return;
    }
    const OLD: &str = "6.8.5-301.fc40.x86_64";
    const NEW: &str = "6.10.3-200.fc40.x86_64";
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("rpmk.raw");
    make_image("rpm-kernels", &img);
    let before = sha256(&img);
    let out = ok(vmfinal()
        .args(["clean", "--dry-run", "--json", "--profiles", "kernels"])
        .arg(&img));
    assert_eq!(sha256(&img), before, "a dry run changed the image");
    let step = kernels_step(&json(&out));
    let mut remove: Vec<String> = step["remove_packages"]
        .as_array()
        .expect("remove_packages")
        .iter()
        .map(|s| s.as_str().unwrap_or("").to_string())
        .collect();
    remove.sort();
    let want: Vec<String> = [
        "kernel",
        "kernel-core",
        "kernel-modules",
        "kernel-modules-extra",
    ]
    .iter()
    .map(|n| format!("{n}-{OLD}"))
    .collect();
    assert_eq!(remove, want, "{step}");
    assert_eq!(
        step["keep_packages"],
        serde_json::json!([format!("kernel-core-{NEW}"), format!("kernel-{NEW}")]),
        "{step}"
    );
    assert!(step["note"].is_null(), "{step}");
    // rpm itself, on a copy of the guest's database, lists the same files.
    let (ql, alloc) = {
        let r = Ro::new(&img, ROOT);
        let db = tempfile::tempdir().unwrap();
        std::fs::copy(
            r.path().join("usr/lib/sysimage/rpm/rpmdb.sqlite"),
            db.path().join("rpmdb.sqlite"),
        )
        .expect("copy rpmdb");
        let o = ok(Command::new("rpm")
            .arg("--dbpath")
            .arg(db.path())
            .arg("-ql")
            .args(&want));
        let ql: BTreeSet<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with('/'))
            .map(str::to_string)
            .collect();
        let b = Ro::new(&img, BOOT);
        use std::os::unix::fs::MetadataExt;
        let alloc = |p: &str| {
            let full = match p.strip_prefix("/boot/") {
                Some(rest) => b.path().join(rest),
                None => r.path().join(p.trim_start_matches('/')),
            };
            let m = std::fs::symlink_metadata(&full).unwrap_or_else(|e| panic!("{p}: {e}"));
            (m.is_dir(), m.blocks() * 512)
        };
        let files: Vec<(String, bool, u64)> = ql
            .iter()
            .chain(std::iter::once(&format!("/boot/initramfs-{OLD}.img")))
            .map(|p| {
                let (dir, n) = alloc(p);
                (p.clone(), dir, n)
            })
            .collect();
        (ql, files)
    };
    assert_eq!(ql.len(), 5, "rpm -ql: {ql:?}");
    let actions: BTreeMap<String, u64> = step["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| {
            (
                a["path"].as_str().unwrap_or("").to_string(),
                a["bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    for p in &ql {
        assert!(
            actions.contains_key(p),
            "{p} (rpm -ql) not planned: {actions:?}"
        );
    }
    let mods = format!("/usr/lib/modules/{OLD}");
    for p in actions.keys() {
        assert!(
            ql.contains(p) || *p == format!("/boot/initramfs-{OLD}.img") || p.starts_with(&mods),
            "{p} planned, not the old kernel's"
        );
        assert!(!p.contains(NEW), "{p} of the kept kernel planned");
    }
    let mut total = 0;
    for (p, dir, n) in &alloc {
        if !dir {
            assert_eq!(actions.get(p), Some(n), "{p}: planned bytes vs allocated");
            total += n;
        }
    }
    let planned: u64 = actions.values().sum();
    eprintln!(
        "rpm kernels dry run: {} paths, {planned} bytes planned; files of rpm -ql + initramfs: {total} bytes",
        actions.len()
    );
    assert!(planned >= total && total > 3 << 20, "{planned} vs {total}");

    // A package that stays requires the old kernel (kmod: kernel-uname-r = OLD): kept.
    let img = d.path().join("rpmkmod.raw");
    make_image("rpm-kernels-kmod", &img);
    let out = ok(vmfinal()
        .args(["clean", "--dry-run", "--json", "--profiles", "kernels"])
        .arg(&img));
    let step = kernels_step(&json(&out));
    assert!(
        step["remove_packages"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{step}"
    );
    assert!(
        step["note"]
            .as_str()
            .is_some_and(|n| n.contains(&format!("kept kernel {OLD}"))),
        "{step}"
    );
    assert!(
        step["actions"].as_array().is_some_and(|a| a.is_empty()),
        "{step}"
    );
    no_leftovers(d.path());
}
