//! Everyday use of `finalize` and `clean` (root): every stage shows on a
//! terminal and nothing of it without one; `-q` quiets dry-run listings but not
//! warnings, which reach stderr with `--json` too;
//! when a later stage fails, what was done is still reported; the Packer
//! wrapper works with `VMFINAL="sudo vmfinal"` from another directory.
//! Judged by exit codes, the files left, qemu-img and sha256sum.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn root_ok() -> bool {
    // SAFETY: no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && in_ci() {
        panic!("guest tests need root in CI");
    }
    root && have("mkfs.ext4") && have("sfdisk") && have("python3") && have("script")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn make_image(out: &Path) {
    ok(Command::new(repo().join("scripts/make-guest-image.sh"))
        .arg(repo().join("vm-fixtures/debian-mini/tree.txt"))
        .arg(out));
}

fn sha(p: &Path) -> String {
    let o = ok(Command::new("sha256sum").arg(p));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Runs vmfinal with stdin, stdout and stderr on a pseudo-terminal
/// (util-linux `script`); returns what the terminal showed and the exit code.
fn on_terminal(args: &[&str]) -> (String, Option<i32>) {
    let mut cmd = shell_quote(env!("CARGO_BIN_EXE_vmfinal"));
    for a in args {
        cmd.push(' ');
        cmd.push_str(&shell_quote(a));
    }
    let o = run(Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .env("COLUMNS", "120"));
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        o.status.code(),
    )
}

/// A stage's finished line: two spaces, the name, its seconds.
fn stage_line(shown: &str, stage: &str) -> bool {
    shown.split(['\r', '\n']).any(|l| {
        let l = strip_ansi(l);
        let mut w = l.split_whitespace();
        w.next() == Some(stage)
            && w.next().is_some_and(|s| s.parse::<f64>().is_ok())
            && w.next() == Some("s")
    })
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn finalize_shows_every_stage_on_a_terminal_only() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("guest.raw");
    make_image(&img);
    let out = d.path().join("golden.qcow2");
    let o = out.to_string_lossy().into_owned();
    let i = img.to_string_lossy().into_owned();
    let (shown, code) = on_terminal(&["finalize", "--compression", "zstd", "-o", &o, &i]);
    assert_eq!(code, Some(0), "{shown}");
    for stage in [
        "workspace",
        "mount",
        "plan",
        "clean",
        "reclaim",
        "unmount",
        "compact",
    ] {
        assert!(
            stage_line(&shown, stage),
            "no finished line for {stage}:\n{shown}"
        );
    }
    // The clean stage's line says what it did.
    assert!(
        shown.contains("profiles,") && shown.contains("freed"),
        "{shown}"
    );
    ok(Command::new("qemu-img").arg("check").arg(&out));

    // Without a terminal: the report only, no progress line, no escape codes.
    let p = run(vmfinal().args(["finalize", "--force", "-o", &o, &i]));
    assert!(p.status.success(), "{p:?}");
    let err = String::from_utf8_lossy(&p.stderr);
    assert!(
        !err.contains('\u{1b}'),
        "escape codes without a terminal: {err}"
    );
    assert!(
        !stage_line(&err, "mount"),
        "progress lines without a terminal: {err}"
    );
    assert!(err.contains("stages: workspace"), "{err}");

    // -q on a terminal: no progress either.
    let (shown, code) = on_terminal(&["finalize", "-q", "--force", "-o", &o, &i]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        !stage_line(&shown, "mount"),
        "-q still shows progress: {shown}"
    );
    assert!(strip_ansi(&shown).trim().is_empty(), "-q printed: {shown}");
}

#[test]
fn quiet_dry_runs_list_no_paths() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("guest.raw");
    make_image(&img);
    let sum = sha(&img);
    // Loud dry runs list paths (an indented op and a guest path).
    let lists = |o: &Output| {
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .any(|l| l.starts_with("    ") && l.contains(" /var/"))
    };
    let loud = ok(vmfinal().args(["finalize", "--dry-run"]).arg(&img));
    assert!(lists(&loud), "{loud:?}");
    let loud = ok(vmfinal().args(["clean", "--dry-run"]).arg(&img));
    assert!(lists(&loud), "{loud:?}");
    // -q: finalize says nothing, clean only its summary table.
    let q = ok(vmfinal().args(["finalize", "--dry-run", "-q"]).arg(&img));
    // (Only notes of the sweep for other runs' leftovers may appear.)
    let said: Vec<String> = String::from_utf8_lossy(&q.stderr)
        .lines()
        .filter(|l| !l.starts_with("vmfinal: cleanup:"))
        .map(str::to_string)
        .collect();
    assert!(said.is_empty() && q.stdout.is_empty(), "{q:?}");
    let q = ok(vmfinal().args(["clean", "--dry-run", "-q"]).arg(&img));
    assert!(!lists(&q), "{q:?}");
    assert!(
        String::from_utf8_lossy(&q.stderr).contains("total"),
        "{q:?}"
    );
    assert_eq!(sha(&img), sum, "a dry run changed the image");
    assert_only(d.path(), &["guest.raw"]);
}

/// A tmpfs too small for the artifact, unmounted on drop.
struct SmallFs(tempfile::TempDir);
impl SmallFs {
    fn new() -> Self {
        let d = tempfile::tempdir().unwrap();
        ok(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(d.path()));
        SmallFs(d)
    }
}
impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_failed_compaction_still_reports_what_was_done() {
    if !root_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("guest.raw");
    make_image(&img);
    let sum = sha(&img);
    let small = SmallFs::new();
    let out = small.0.path().join("golden.qcow2");
    let o = run(vmfinal()
        .args(["finalize", "--tmp"])
        .arg(d.path())
        .arg("-o")
        .arg(&out)
        .arg(&img));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let done = lines
        .iter()
        .find(|l| l.starts_with("vmfinal: done before the error:"))
        .unwrap_or_else(|| panic!("no report of the stages done: {err}"));
    for stage in [
        "workspace",
        "mount",
        "plan",
        "clean",
        "reclaim",
        "compact failed",
    ] {
        assert!(done.contains(stage), "{stage} missing: {done}");
    }
    assert!(done.contains("freed"), "{done}");
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("vmfinal: error:")),
        "the error is not last: {err}"
    );
    // Nothing left: no artifact, no temp file, no workspace; input unchanged.
    assert_only(small.0.path(), &[]);
    assert_only(d.path(), &["guest.raw"]);
    assert_eq!(sha(&img), sum);
}

#[test]
fn packer_wrapper_runs_sudo_vmfinal_from_any_directory() {
    if !root_ok() || !have("sudo") || !have("qemu-img") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // Packer's working directory, with the builder's output in it.
    let work = d.path().join("build");
    std::fs::create_dir_all(work.join("output-golden")).unwrap();
    make_image(&work.join("output-golden/disk.raw"));
    // The wrapper on PATH under its installed name, as the .deb puts it.
    let bin = d.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(
        repo().join("scripts/packer-post-process.sh"),
        bin.join("vmfinal-packer-post-process"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let wrapper = |vmfinal: &str| {
        run(Command::new("vmfinal-packer-post-process")
            .current_dir(&work)
            .env("PATH", &path)
            .env("VMFINAL", vmfinal)
            .env("VMFINAL_IMAGE", "output-golden/disk.raw")
            .env("VMFINAL_OUTPUT", "output-golden/golden.qcow2")
            .env("VMFINAL_MANIFEST", "output-golden/manifest.json")
            .env("VMFINAL_ARGS", "--profiles defaults --compression zstd -q")
            .env("PACKER_BUILD_NAME", "golden")
            .env("PACKER_BUILDER_TYPE", "qemu")
            .env("PACKER_RUN_UUID", "6a1e0c3e-0000-4000-8000-000000000013"))
    };
    // A command that is not there: a clear message, nothing touched.
    let o = wrapper("no-such-vmfinal --flag");
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no-such-vmfinal: command not found"),
        "{o:?}"
    );
    assert!(work.join("output-golden/disk.raw").exists());
    // A command with arguments.
    let o = wrapper(&format!("sudo {}", env!("CARGO_BIN_EXE_vmfinal")));
    assert!(o.status.success(), "{o:?}");
    let art = work.join("output-golden/golden.qcow2");
    ok(Command::new("qemu-img").arg("check").arg(&art));
    ok(Command::new("sha256sum")
        .args(["-c", "golden.qcow2.sha256"])
        .current_dir(work.join("output-golden")));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("output-golden/manifest.json")).unwrap())
            .unwrap();
    let b = &m["builds"][0];
    assert_eq!(b["name"], "golden");
    assert_eq!(b["builder_type"], "qemu");
    assert_eq!(b["packer_run_uuid"], "6a1e0c3e-0000-4000-8000-000000000013");
    assert!(
        b["custom_data"]["freed_bytes"].as_u64().unwrap_or(0) > 0,
        "{b}"
    );
    // The scratch disk is gone; nothing else was left.
    assert_only(
        &work.join("output-golden"),
        &["golden.qcow2", "golden.qcow2.sha256", "manifest.json"],
    );
}

/// The warning lines of a run's stderr.
fn warning_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.starts_with("vmfinal: warning: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn warnings_reach_stderr_with_json_and_quiet() {
    if !root_ok() || !have("qemu-img") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("guest.raw");
    make_image(&img);
    // An optional fstab entry for a disk this image lacks: the run goes
    // on with a warning. The fstab line is written through a mount of the
    // root partition (p3: 65 MiB, 160 MiB), undone right after.
    {
        let m = tempfile::tempdir().unwrap();
        ok(Command::new("mount")
            .arg("-o")
            .arg(format!("loop,offset={},sizelimit={}", 65 << 20, 160 << 20))
            .arg(&img)
            .arg(m.path()));
        let fstab = m.path().join("etc/fstab");
        let mut t = std::fs::read_to_string(&fstab).unwrap_or_default();
        t.push_str("UUID=0badc0de-0000-4000-8000-00000000beef /data ext4 nofail 0 2\n");
        let w = std::fs::write(&fstab, t);
        ok(Command::new("umount").arg(m.path()));
        w.expect("write fstab");
    }
    let want = "vmfinal: warning: fstab: /data (UUID=0badc0de-0000-4000-8000-00000000beef) is not a partition or logical volume of this image; not mounted (nofail/noauto)";
    let i = img.to_string_lossy().into_owned();
    let out = d.path().join("out.qcow2");
    let o = out.to_string_lossy().into_owned();
    for args in [
        vec!["clean", "--dry-run", "--json", &i],
        vec!["clean", "--dry-run", "--json", "-q", &i],
        vec!["clean", "--dry-run", "-q", &i],
        vec!["finalize", "--dry-run", "--json", "-o", &o, &i],
        vec!["finalize", "--dry-run", "-q", "-o", &o, &i],
        vec!["finalize", "--json", "-o", &o, &i],
        vec!["finalize", "--json", "-q", "--force", "-o", &o, &i],
        vec!["finalize", "-q", "--force", "-o", &o, &i],
        vec!["finalize", "--force", "-o", &o, &i],
    ] {
        let p = ok(vmfinal().args(&args));
        let lines = warning_lines(&p.stderr);
        assert_eq!(
            lines,
            vec![want.to_string()],
            "{args:?}: stderr {}",
            String::from_utf8_lossy(&p.stderr)
        );
        if args.contains(&"--json") {
            let v: serde_json::Value = serde_json::from_slice(&p.stdout)
                .unwrap_or_else(|e| panic!("{args:?}: bad JSON ({e})"));
            let ws = v["guest"]["warnings"].to_string();
            assert!(ws.contains("/data (UUID=0badc0de"), "{args:?}: {ws}");
        } else if args.contains(&"-q") {
            assert!(p.stdout.is_empty(), "{args:?}: stdout with -q");
        }
    }
    ok(Command::new("qemu-img").arg("check").arg(&out));
}
