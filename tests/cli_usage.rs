//! Everyday use, as a new user meets it: outputs say what they are or
//! vmfinal refuses, options that do not apply are errors, help lists what
//! applies, completions and man pages come from the same definitions,
//! reports use the names people use. Judged by the files written (qemu-img,
//! zstd, cmp), exit codes, and what is left in the directory.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn input(d: &Path) -> std::path::PathBuf {
    mixed_raw(&d.join("in.raw"), 6 << 20, 7)
}

fn compact(args: &[&str], input: &Path, out: &Path) -> std::process::Output {
    run(vmfinal()
        .arg("compact")
        .arg("-q")
        .args(args)
        .arg(input)
        .arg("-o")
        .arg(out))
}

fn qemu_format(p: &Path) -> String {
    let o = ok(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(p));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("qemu-img json");
    v["format"].as_str().unwrap_or_default().to_string()
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    run(Command::new("cmp").arg(a).arg(b)).status.success()
}

#[test]
fn extension_chooses_the_format() {
    if !have("qemu-img") || !have("zstd") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let inp = input(d.path());
    for (name, check) in [
        ("a.qcow2", "qcow2"),
        ("b.QCOW", "qcow2"),
        ("c.zst", "zst"),
        ("d.raw", "raw"),
    ] {
        let out = d.path().join(name);
        let o = compact(&[], &inp, &out);
        assert!(o.status.success(), "{name}: {o:?}");
        match check {
            "qcow2" => {
                assert_eq!(qemu_format(&out), "qcow2", "{name}");
                ok(Command::new("qemu-img").arg("check").arg(&out));
            }
            "zst" => {
                ok(Command::new("zstd").arg("-tq").arg(&out));
            }
            _ => assert!(same_bytes(&inp, &out), "{name}"),
        }
    }
    assert_only(d.path(), &["in.raw", "a.qcow2", "b.QCOW", "c.zst", "d.raw"]);
}

#[test]
fn unclear_or_foreign_names_are_refused_unless_o_says() {
    if !have("qemu-img") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let inp = input(d.path());
    for name in ["x.img", "x", "x.bin"] {
        let e = assert_clean_failure(&compact(&[], &inp, &d.path().join(name)));
        assert!(e.contains("-O qcow2, -O zst or -O raw"), "{name}: {e}");
        assert!(e.contains(name), "{name}: {e}");
    }
    for (name, what) in [
        ("x.vmdk", "VMDK"),
        ("x.vhd", "VHD"),
        ("x.vhdx", "VHDX"),
        ("x.vdi", "VDI"),
        ("x.gz", "gzip"),
        ("x.xz", "xz"),
    ] {
        let e = assert_clean_failure(&compact(&[], &inp, &d.path().join(name)));
        assert!(e.contains(what) && e.contains("-O"), "{name}: {e}");
    }
    assert_only(d.path(), &["in.raw"]);
    // -O resolves an unclear name: a qcow2 called .img (as cloud images are).
    let img = d.path().join("x.img");
    assert!(compact(&["-O", "qcow2"], &inp, &img).status.success());
    assert_eq!(qemu_format(&img), "qcow2");
    ok(Command::new("qemu-img").arg("check").arg(&img));
    let bin = d.path().join("x.bin");
    assert!(compact(&["-O", "raw"], &inp, &bin).status.success());
    assert!(same_bytes(&inp, &bin));
    assert_only(d.path(), &["in.raw", "x.img", "x.bin"]);
}

#[test]
fn o_against_the_extension_needs_force_format() {
    if !have("qemu-img") || !have("zstd") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let inp = input(d.path());
    let q = d.path().join("x.qcow2");
    let e = assert_clean_failure(&compact(&["-O", "zst"], &inp, &q));
    assert!(e.contains("--force-format") && e.contains("qcow2"), "{e}");
    let v = d.path().join("x.vmdk");
    let e = assert_clean_failure(&compact(&["-O", "qcow2"], &inp, &v));
    assert!(e.contains("--force-format"), "{e}");
    assert_only(d.path(), &["in.raw"]);
    // Said twice, it is done: a .zst under a .qcow2 name.
    assert!(
        compact(&["-O", "zst", "--force-format"], &inp, &q)
            .status
            .success()
    );
    ok(Command::new("zstd").arg("-tq").arg(&q));
    assert!(
        compact(&["-O", "qcow2", "--force-format"], &inp, &v)
            .status
            .success()
    );
    ok(Command::new("qemu-img").arg("check").arg(&v));
}

#[test]
fn options_for_another_format_are_errors() {
    if !have("qemu-img") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let inp = input(d.path());
    let cases: &[(&[&str], &str, &str)] = &[
        (&["--compression", "zstd"], "o.zst", "always zstd"),
        (&["--compression", "zlib"], "o.raw", "not compressed"),
        (&["--level", "3"], "o.raw", "not compressed"),
        (&["--cluster-size", "4K"], "o.zst", "qcow2 output only"),
        (&["--frame-size", "1M"], "o.qcow2", ".zst output only"),
    ];
    for (args, name, says) in cases {
        let e = assert_clean_failure(&compact(args, &inp, &d.path().join(name)));
        assert!(e.contains(says), "{args:?} {name}: {e}");
    }
    assert_only(d.path(), &["in.raw"]);
    // Where they apply they still work.
    let q = d.path().join("o.qcow2");
    assert!(
        compact(
            &["--compression", "zstd", "--cluster-size", "128K"],
            &inp,
            &q
        )
        .status
        .success()
    );
    let o = ok(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&q));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["cluster-size"], 131072);
    assert_eq!(
        v["format-specific"]["data"]["compression-type"], "zstd",
        "{v}"
    );
    let z = d.path().join("o.zst");
    assert!(
        compact(&["--level", "5", "--frame-size", "1M"], &inp, &z)
            .status
            .success()
    );
}

#[test]
fn expand_help_lists_only_what_expand_does() {
    let h = String::from_utf8_lossy(&ok(vmfinal().args(["expand", "--help"])).stdout).into_owned();
    for absent in [
        "--compression",
        "--level",
        "--cluster-size",
        "--frame-size",
        "--output-format",
        "--force-format",
        "qcow2 without -o",
    ] {
        assert!(!h.contains(absent), "expand --help lists {absent}:\n{h}");
    }
    assert!(h.contains("with .raw"), "{h}");
    let c = String::from_utf8_lossy(&ok(vmfinal().args(["compact", "--help"])).stdout).into_owned();
    for present in [
        "--compression",
        "--level",
        "--cluster-size",
        "--frame-size",
        "--force-format",
    ] {
        assert!(c.contains(present), "compact --help lacks {present}");
    }
}

#[test]
fn expand_writes_raw_whatever_unclear_name() {
    let d = tempfile::tempdir().unwrap();
    let inp = input(d.path());
    let z = d.path().join("in.zst");
    assert!(compact(&[], &inp, &z).status.success());
    let e = assert_clean_failure(&run(vmfinal()
        .args(["expand", "-q"])
        .arg(&z)
        .arg("-o")
        .arg(d.path().join("back.qcow2"))));
    assert!(e.contains("expand writes a raw image"), "{e}");
    let img = d.path().join("back.img");
    ok(vmfinal().args(["expand", "-q"]).arg(&z).arg("-o").arg(&img));
    assert!(same_bytes(&inp, &img));
    // The default name is IN with .raw.
    std::fs::rename(&inp, d.path().join("orig.raw")).unwrap();
    ok(vmfinal().args(["expand", "-q"]).arg(&z));
    assert!(same_bytes(
        &d.path().join("orig.raw"),
        &d.path().join("in.raw")
    ));
    assert_only(d.path(), &["orig.raw", "in.zst", "back.img", "in.raw"]);
}

#[test]
fn commands_that_need_a_file_refuse_stdin() {
    for cmd in [
        vec!["info", "-"],
        vec!["check", "-"],
        vec!["analyze", "-"],
        vec!["finalize", "-", "-o", "/nonexistent/x.qcow2"],
        vec!["clean", "-"],
    ] {
        let e = assert_clean_failure(&run(vmfinal().args(&cmd)));
        assert!(e.contains("not stdin"), "{cmd:?}: {e}");
    }
}

#[test]
fn completions_load_in_bash_and_name_no_internal_command() {
    let bin = env!("CARGO_BIN_EXE_vmfinal");
    let o = ok(Command::new("bash").arg("-c").arg(format!(
        "source <('{bin}' completions bash) && complete -p vmfinal"
    )));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("_vmfinal vmfinal"),
        "{o:?}"
    );
    for sh in ["bash", "zsh", "fish"] {
        let out = ok(vmfinal().args(["completions", sh]));
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(s.contains("compact") && s.contains("finalize"), "{sh}");
        assert!(!s.contains("__sandbox") && !s.contains("__man"), "{sh}");
        assert!(s.contains("output-format"), "{sh}");
    }
    let o = run(vmfinal().args(["completions", "tcsh"]));
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("tcsh"));
}

#[test]
fn man_pages_for_every_subcommand_render() {
    let d = tempfile::tempdir().unwrap();
    ok(vmfinal().arg("__man").arg(d.path()));
    for page in [
        "vmfinal",
        "vmfinal-compact",
        "vmfinal-expand",
        "vmfinal-check",
        "vmfinal-info",
        "vmfinal-analyze",
        "vmfinal-clean",
        "vmfinal-finalize",
        "vmfinal-profiles",
        "vmfinal-cleanup",
        "vmfinal-completions",
    ] {
        let p = d.path().join(format!("{page}.1"));
        assert!(p.exists(), "{page}.1 missing");
    }
    assert!(!d.path().join("vmfinal-__sandbox.1").exists());
    if !have("man") {
        return;
    }
    let o = ok(Command::new("man")
        .arg("-l")
        .arg(d.path().join("vmfinal-compact.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100"));
    let text = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(text.contains("vmfinal compact"), "{text}");
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    assert!(text.contains("--output-format"), "{text}");
}

#[test]
fn analyze_spells_partition_tables_as_people_do() {
    if !have("sfdisk") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    for (label, shown) in [("gpt", "GPT"), ("dos", "MBR")] {
        let img = d.path().join(format!("{label}.raw"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let mut c = Command::new("sfdisk");
        c.arg("-q").arg(&img).stdin(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("label: {label}\nstart=2048, size=65536\n").as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        let o = ok(vmfinal().arg("analyze").arg(&img));
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(s.contains(&format!("partition table: {shown}")), "{s}");
    }
}

#[test]
fn info_names_each_size_for_what_it_counts() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("sparse.raw");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(32 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[1u8; 1 << 20], 4 << 20).unwrap();
    f.sync_all().unwrap();
    let o = ok(vmfinal().arg("info").arg(&img));
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    let line = |label: &str| {
        s.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line: {s}"))
            .to_string()
    };
    assert!(
        line("allocated:").contains("(1048576 bytes of guest data)"),
        "{s}"
    );
    assert!(
        line("file length:").contains(&format!("({} bytes)", 32 << 20)),
        "{s}"
    );
    let host = allocated(&img);
    assert!(
        line("host allocated:").contains(&format!("({host} bytes")),
        "{s}"
    );
}

/// A pipe whose reading end is already closed: every write fails.
fn closed_pipe() -> std::process::Stdio {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: closing the read end we own; the write end is handed over.
    unsafe {
        libc::close(fds[0]);
        std::process::Stdio::from(std::os::fd::OwnedFd::from_raw_fd(fds[1]))
    }
}

#[test]
fn a_closed_pipe_ends_listings_quietly() {
    use std::os::unix::process::ExitStatusExt;
    for args in [
        vec!["profiles", "list"],
        vec!["completions", "bash"],
        vec!["--help"],
    ] {
        let o = run(vmfinal().args(&args).stdout(closed_pipe()));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        // Ended by SIGPIPE, as `cat` is (clap prints help itself: exit 0 or
        // its own error, never a panic).
        if args[0] != "--help" {
            assert_eq!(o.status.signal(), Some(libc::SIGPIPE), "{args:?}: {o:?}");
        }
    }
}

/// Runs vmfinal on a pseudo-terminal (util-linux `script`); what it showed.
fn on_terminal(args: &[&str]) -> (String, Option<i32>) {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut cmd = q(env!("CARGO_BIN_EXE_vmfinal"));
    for a in args {
        cmd.push(' ');
        cmd.push_str(&q(a));
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

#[test]
fn the_byte_bar_shows_on_a_terminal_only() {
    if !have("script") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("rand.raw");
    let mut data = vec![0u8; 48 << 20];
    Rng::new(5).fill(&mut data);
    std::fs::write(&img, &data).unwrap();
    let i = img.to_string_lossy().into_owned();
    let out = d.path().join("o.qcow2").to_string_lossy().into_owned();
    let (shown, code) = on_terminal(&["compact", &i, "-o", &out]);
    assert_eq!(code, Some(0), "{shown}");
    // A bar of the bytes read: "[=====>   ] 12.00 MiB/48.00 MiB".
    assert!(shown.contains("/48.00 MiB"), "no byte bar: {shown}");
    assert!(shown.contains("[="), "no bar: {shown}");
    // -q: no bar, no summary.
    let (shown, code) = on_terminal(&["compact", "-q", "-f", &i, "-o", &out]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.trim().is_empty(), "-q printed: {shown}");
    // Not a terminal: the summary only, no escape codes.
    let o = ok(vmfinal().args(["compact", "-f", &i, "-o", &out]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains('\u{1b}') && !err.contains("[="), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn guest_only_analyze_options_need_guest() {
    let d = tempfile::tempdir().unwrap();
    let img = input(d.path());
    for extra in [
        &["--depth", "2"][..],
        &["--top", "5"],
        &["--profiles", "all"],
        &["--set", "kernels.keep=2"],
    ] {
        let e = assert_clean_failure(&run(vmfinal()
            .args(["analyze", "--format", "raw"])
            .args(extra)
            .arg(&img)));
        assert!(e.contains(extra[0]) && e.contains("--guest"), "{e}");
    }
    ok(vmfinal().args(["analyze", "--format", "raw"]).arg(&img));
}
