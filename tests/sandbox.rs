//! The sandbox guest code runs in (root): a guest whose dpkg, rpm and sh are
//! vm-fixtures/sandbox-escape/probe.c tries every escape from the kernels
//! step and from a `run` step, and the host is checked with its own eyes
//! (hostname, core_pattern, modules, mounts, a canary file, a decoy
//! process); Ctrl-C during the package manager lets it finish; a dry run
//! executes nothing (strace sees one execve: vmfinal's own).

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;
const BOOT: (u64, u64) = (MIB, 48 * MIB);
const ROOT: (u64, u64) = (65 * MIB, 160 * MIB);

fn root_ok() -> bool {
    // SAFETY: no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && in_ci() {
        panic!("sandbox tests need root in CI");
    }
    root && have("mkfs.ext4") && have("sfdisk") && have("gcc") && have("python3")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the probe guest with `extra` recipe lines (after the fixture's).
fn make_image(dir: &Path, name: &str, base: &str, extra: &str) -> PathBuf {
    let recipe = dir.join(format!("{name}.txt"));
    let fixture = repo().join("vm-fixtures/sandbox-escape").join(base);
    std::fs::write(&recipe, format!("include {}\n{extra}", fixture.display())).unwrap();
    let img = dir.join(format!("{name}.raw"));
    ok(Command::new(repo().join("scripts/make-guest-image.sh"))
        .arg(&recipe)
        .arg(&img));
    img
}

/// A read-only mount of one partition, undone on drop.
struct Ro(tempfile::TempDir);
impl Ro {
    fn new(img: &Path, (off, size): (u64, u64)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        ok(Command::new("mount")
            .arg("-o")
            .arg(format!("ro,noload,loop,offset={off},sizelimit={size}"))
            .arg(img)
            .arg(dir.path()));
        Self(dir)
    }
    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.0.path().join(rel)).unwrap_or_default()
    }
}
impl Drop for Ro {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// A clean failure: non-zero, no panic, one error line (lines of `vmfinal:
/// cleanup:`, about what dead runs of other tests left, and the `vmfinal:
/// done before the error:` summary of the stages that ran, aside).
fn clean_failure(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected failure: {stderr}");
    assert_ne!(out.status.code(), Some(101), "panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            !l.trim().is_empty()
                && !l.starts_with("vmfinal: cleanup:")
                && !l.starts_with("vmfinal: done before the error:")
        })
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("vmfinal: error:"), "{stderr}");
    lines[0].to_string()
}

fn fsck_clean(img: &Path) {
    for (off, size) in [BOOT, ROOT] {
        let lo = Loop::new(img, off, size);
        ok(Command::new("e2fsck").arg("-fn").arg(&lo.0));
    }
}

fn no_leftovers(dir: &Path) {
    let loops =
        String::from_utf8_lossy(&run(Command::new("losetup").arg("-a")).stdout).into_owned();
    assert!(
        !loops.contains(&dir.display().to_string()),
        "loop devices left over: {loops}"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    assert!(
        !mounts.contains("/run/vmfinal"),
        "mounts left over: {mounts}"
    );
}

/// A host process the guest is told about and tries to kill.
struct Decoy(std::process::Child);
impl Drop for Decoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Host state a successful escape would change.
#[derive(Debug, PartialEq)]
struct HostState {
    sysctls: Vec<(String, String)>,
    modules: BTreeSet<String>,
    canary: (Vec<u8>, i64, i64),
}

fn host_state(canary: &Path) -> HostState {
    let sysctls = [
        "kernel/hostname",
        "kernel/domainname",
        "kernel/core_pattern",
        "kernel/modprobe",
    ]
    .iter()
    .map(|k| {
        let v = std::fs::read_to_string(format!("/proc/sys/{k}")).unwrap_or_default();
        (k.to_string(), v)
    })
    .collect();
    let modules = std::fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let m = std::fs::metadata(canary).expect("canary");
    HostState {
        sysctls,
        modules,
        canary: (std::fs::read(canary).unwrap(), m.mtime(), m.mtime_nsec()),
    }
}

/// Host mounts that the probe's attempts would have made.
fn probe_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("/tmp/mnt") || l.contains("vmfinal-disk"))
        .map(str::to_string)
        .collect()
}

/// Attempts every probe run must report (so none is silently skipped).
const ATTEMPTS: &[&str] = &[
    "write-disk-a",
    "blkroset-disk-a",
    "mknod-block-sda",
    "mknod-char-mem",
    "create-in-dev",
    "mount-tmpfs",
    "mount-disk",
    "mount-bind-root",
    "remount-proc-rw",
    "umount-proc",
    "fsopen",
    "pivot-root",
    "swapon",
    "write-core-pattern",
    "write-hostname",
    "sethostname",
    "init-module",
    "finit-module",
    "delete-module",
    "kexec-load",
    "reboot",
    "bpf",
    "keyctl",
    "io-uring-setup",
    "ptrace-attach-parent",
    "ptrace-attach-decoy",
    "process-vm-readv-parent",
    "kill-decoy",
    "see-other-processes",
    "parent-outside-pid-namespace",
    "process-group-outside",
    "kill-all",
    "kill-parent",
    "open-proc-1-root",
    "open-proc-1-ns",
    "setns",
    "unshare-user",
    "clone-newuser",
    "tiocsti",
    "open-dev-tty",
    "chroot",
    "dotdot-out-of-root",
    "inherited-fds",
    "open-by-handle-at",
    "write-canary",
    "write-canary-via-proc-1-root",
    "write-canary-via-dotdot",
];

/// Checks one invocation's section of the probe log.
fn check_probe_section(section: &str) {
    for l in section.lines() {
        assert!(
            !l.contains(" ALLOWED"),
            "escape not refused: {l}\n{section}"
        );
        if l.starts_with("EXPECT") {
            assert!(
                l.contains(" ok"),
                "the package manager lost what it needs: {l}"
            );
        }
    }
    let mut attempts = ATTEMPTS.to_vec();
    // Probed only where the host kernel has them.
    if Path::new("/proc/sysrq-trigger").exists() {
        attempts.push("open-sysrq-trigger");
    }
    for a in attempts {
        assert!(
            section.contains(&format!("RESULT {a} refused")),
            "attempt {a} missing:\n{section}"
        );
    }
    for e in ["read-disk", "mkfifo", "chown", "setuid", "write-guest-file"] {
        assert!(
            section.contains(&format!("EXPECT {e} ok")),
            "{e}:\n{section}"
        );
    }
    // Bounding set = the kept capabilities (CHOWN, DAC_OVERRIDE, FOWNER,
    // FSETID, KILL, SETGID, SETUID, SETFCAP), nothing inheritable or ambient.
    for s in [
        "CapBnd:\t00000000800000fb",
        "CapEff:\t00000000800000fb",
        "CapInh:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(section.contains(s), "{s} missing:\n{section}");
    }
}

#[test]
fn guest_code_cannot_escape_the_sandbox() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let decoy = Decoy(
        Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("decoy process"),
    );
    let canary = PathBuf::from(format!(
        "/var/tmp/vmfinal-sandbox-canary-{}",
        std::process::id()
    ));
    std::fs::write(&canary, "host canary").unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(canary.clone());
    let img = make_image(
        d.path(),
        "escape",
        "tree.txt",
        &format!(
            "text /etc/probe.conf mode=escape\\ndecoy={}\\ncanary={}\\n\n",
            decoy.0.id(),
            canary.display()
        ),
    );
    let before = host_state(&canary);
    std::thread::sleep(Duration::from_millis(20));

    // From the kernels step: the probe is the guest's dpkg.
    let out = run(vmfinal().args(["clean", "--profiles", "kernels"]).arg(&img));
    let e = clean_failure(&out);
    assert!(
        e.contains("removing kernel") && e.contains("dpkg --purge") && e.contains("0 allowed"),
        "{e}"
    );
    // From a run step: the probe is the guest's /bin/sh.
    let prof = d.path().join("run.yaml");
    std::fs::write(
        &prof,
        "name: hook\ndescription: x\nsteps:\n  - run: cleanup-hook\n",
    )
    .unwrap();
    let out = run(vmfinal()
        .args([
            "clean",
            "--allow-run",
            "--profiles",
            "none",
            "--profile-file",
        ])
        .arg(&prof)
        .arg(&img));
    let e = clean_failure(&out);
    assert!(
        e.contains("run step failed") && e.contains("0 allowed"),
        "{e}"
    );

    assert_eq!(host_state(&canary), before, "the host changed");
    assert!(
        probe_mounts().is_empty(),
        "host mounts: {:?}",
        probe_mounts()
    );
    assert_eq!(
        // SAFETY: signal 0 to our own child only checks it exists.
        unsafe { libc::kill(decoy.0.id() as i32, 0) },
        0,
        "decoy killed"
    );
    let log = Ro::new(&img, ROOT).read("root/probe.log");
    let sections: Vec<&str> = log.split("INVOKED ").filter(|s| !s.is_empty()).collect();
    assert_eq!(sections.len(), 2, "two probe runs expected:\n{log}");
    assert!(sections[0].starts_with("dpkg") && sections[1].starts_with("/bin/sh"));
    for s in sections {
        check_probe_section(s);
    }
    fsck_clean(&img);
    no_leftovers(d.path());
}

/// PIDs of processes named `comm` that descend from `ancestor`.
fn descendants_named(ancestor: u32, comm: &str) -> Vec<u32> {
    let parent = |pid: u32| -> Option<u32> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &s[s.rfind(')')? + 2..];
        rest.split_whitespace().nth(1)?.parse().ok()
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm) {
            let mut p = pid;
            while let Some(pp) = parent(p) {
                if pp == ancestor {
                    out.push(pid);
                    break;
                }
                if pp <= 1 {
                    break;
                }
                p = pp;
            }
        }
    }
    out
}

#[test]
fn ctrl_c_lets_the_package_manager_finish() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = make_image(
        d.path(),
        "slow",
        "tree.txt",
        "text /etc/probe.conf mode=slow\\n\n",
    );
    let child = vmfinal()
        .args(["clean", "-q", "--profiles", "kernels"])
        .arg(&img)
        .process_group(0)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while descendants_named(child.id(), "dpkg").is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(60), "dpkg never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // Ctrl-C: the terminal signals the whole foreground process group.
    // SAFETY: signalling the process group of our own child.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    // The dpkg call that was running finished; the next one never started.
    let calls = Ro::new(&img, ROOT).read("root/dpkg-calls.log");
    assert_eq!(calls, "start\nend\n", "dpkg interrupted or run again");
    fsck_clean(&img);
    no_leftovers(d.path());
}

/// execve calls strace saw while `args` ran on `img`.
fn execs(d: &Path, img: &Path, args: &[&str]) -> (Vec<String>, serde_json::Value) {
    let log = d.join("strace.log");
    let out = ok(Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=execve", "-o"])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_vmfinal"))
        .args(args)
        .arg(img));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let calls = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("execve("))
        .map(str::to_string)
        .collect();
    (calls, v)
}

fn kernels_step(v: &serde_json::Value) -> serde_json::Value {
    let p = v["guest"]["profiles"]
        .as_array()
        .expect("profiles")
        .iter()
        .find(|p| p["name"] == "kernels")
        .expect("kernels profile");
    p["steps"][0].clone()
}

#[test]
fn dry_run_runs_no_guest_binary() {
    if !root_ok() || !have("strace") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let args = ["clean", "--dry-run", "--json", "--profiles", "kernels"];
    // dpkg: the plan comes from /var/lib/dpkg/status and the .list files.
    let deb = make_image(d.path(), "deb", "tree.txt", "");
    let (calls, v) = execs(d.path(), &deb, &args);
    assert_eq!(calls.len(), 1, "guest or helper binaries ran: {calls:?}");
    assert!(calls[0].contains("vmfinal"), "{calls:?}");
    let step = kernels_step(&v);
    assert_eq!(
        step["remove_packages"],
        serde_json::json!(["linux-image-6.1.0-2-amd64", "linux-image-6.1.0-1-amd64"]),
        "{step}"
    );
    assert_eq!(
        step["keep_packages"],
        serde_json::json!(["linux-image-6.1.0-3-amd64"])
    );
    // rpm: its database is not read without rpm; the plan says so, and the
    // guest's rpm (the probe, which answers with CANARY kernels) never ran.
    let rpm = make_image(d.path(), "rpm", "rpm-tree.txt", "");
    let (calls, v) = execs(d.path(), &rpm, &args);
    assert_eq!(calls.len(), 1, "guest or helper binaries ran: {calls:?}");
    let step = kernels_step(&v);
    assert!(!step.to_string().contains("CANARY"), "rpm ran: {step}");
    assert!(
        step["note"]
            .as_str()
            .is_some_and(|n| n.contains("not planned without running rpm")),
        "{step}"
    );
    no_leftovers(d.path());
}
