//! Streams: `-o -` writes a .zst or raw stream to stdout (byte for byte what
//! `-o FILE.zst` writes; qcow2 refused), `-` reads a raw or .zst stream from
//! stdin (qcow2 refused). Judged by sha256sum, zstd, cmp and qemu-img, and
//! by what is left in the directories (the stdin copy has no name).

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

fn sha256(bytes: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    let mut stdin = c.stdin.take().expect("stdin");
    let data = bytes.to_vec();
    let t = std::thread::spawn(move || stdin.write_all(&data));
    let out = c.wait_with_output().expect("sha256sum");
    t.join().expect("writer").expect("write");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Runs vmfinal with `stdin` fed from a file (or nothing) and stdout
/// captured, in `dir`, with TMPDIR pointing at `tmp`.
fn stream(args: &[&str], stdin: Option<&Path>, dir: &Path, tmp: &Path) -> Output {
    let mut c = vmfinal();
    c.args(args).current_dir(dir).env("TMPDIR", tmp);
    match stdin {
        Some(p) => c.stdin(std::fs::File::open(p).expect("open stdin file")),
        None => c.stdin(Stdio::null()),
    };
    run(&mut c)
}

fn setup() -> (tempfile::TempDir, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    mixed_raw(&d.path().join("in.raw"), 24 << 20, 11);
    (d, t)
}

fn zstd_d(bytes: &[u8]) -> Vec<u8> {
    let mut c = Command::new("zstd")
        .args(["-d", "-q", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("zstd");
    let mut stdin = c.stdin.take().expect("stdin");
    let data = bytes.to_vec();
    let t = std::thread::spawn(move || stdin.write_all(&data));
    let out = c.wait_with_output().expect("zstd");
    t.join().expect("writer").expect("write");
    assert!(out.status.success(), "zstd -d failed");
    out.stdout
}

#[test]
fn zst_to_stdout_is_the_file_byte_for_byte() {
    if !have("zstd") || !have("sha256sum") {
        return;
    }
    let (d, t) = setup();
    let dir = d.path();
    let s = stream(&["compact", "in.raw", "-o", "-"], None, dir, t.path());
    assert!(s.status.success(), "{s:?}");
    // The report went to stderr, the image to stdout.
    assert!(
        String::from_utf8_lossy(&s.stderr).contains("-> stdout (zst"),
        "{s:?}"
    );
    ok(vmfinal()
        .current_dir(dir)
        .args(["compact", "-q", "in.raw", "-o", "file.zst"]));
    let file = std::fs::read(dir.join("file.zst")).unwrap();
    assert_eq!(sha256(&s.stdout), sha256(&file), "stream and file differ");
    // | zstd -d gives what expand gives.
    ok(vmfinal()
        .current_dir(dir)
        .args(["expand", "-q", "file.zst", "-o", "expanded.raw"]));
    assert_eq!(
        zstd_d(&s.stdout),
        std::fs::read(dir.join("expanded.raw")).unwrap()
    );
    assert_eq!(
        zstd_d(&s.stdout),
        std::fs::read(dir.join("in.raw")).unwrap()
    );
    // No temporary file anywhere, no file named "-".
    assert_only(dir, &["in.raw", "file.zst", "expanded.raw"]);
    assert_only(t.path(), &[]);
}

#[test]
fn raw_to_stdout_is_every_byte() {
    let (d, t) = setup();
    let dir = d.path();
    let inp = std::fs::read(dir.join("in.raw")).unwrap();
    let s = stream(
        &["compact", "-q", "-O", "raw", "in.raw", "-o", "-"],
        None,
        dir,
        t.path(),
    );
    assert!(s.status.success(), "{s:?}");
    assert_eq!(s.stdout, inp);
    ok(vmfinal()
        .current_dir(dir)
        .args(["compact", "-q", "in.raw", "-o", "in.zst"]));
    let s = stream(&["expand", "-q", "in.zst", "-o", "-"], None, dir, t.path());
    assert!(s.status.success(), "{s:?}");
    assert_eq!(s.stdout, inp);
    assert_only(dir, &["in.raw", "in.zst"]);
}

#[test]
fn what_a_stream_cannot_carry_is_refused() {
    let (d, t) = setup();
    let dir = d.path();
    for (args, says) in [
        (
            vec!["compact", "in.raw", "-o", "-", "-O", "qcow2"],
            "qcow2 cannot be written to stdout",
        ),
        (vec!["compact", "in.raw", "-o", "-", "--json"], "--json"),
        (
            vec!["compact", "in.raw", "-o", "-", "--checksum", "sha256"],
            "--checksum",
        ),
        (
            vec!["compact", "in.raw", "-o", "-", "--manifest", "m.json"],
            "--manifest",
        ),
        (
            vec!["compact", "in.raw", "-o", "-", "--compression", "zstd"],
            "always zstd",
        ),
    ] {
        let o = stream(&args, None, dir, t.path());
        let e = assert_clean_failure(&o);
        assert!(e.contains(says), "{args:?}: {e}");
        assert!(o.stdout.is_empty(), "{args:?}: wrote to stdout");
    }
    assert_only(dir, &["in.raw"]);
}

#[test]
fn stdin_raw_and_zst_streams_are_read() {
    if !have("qemu-img") || !have("zstd") {
        return;
    }
    let (d, t) = setup();
    let dir = d.path();
    let inp = dir.join("in.raw");
    // raw stream -> qcow2 file.
    let o = stream(
        &["compact", "-q", "-", "-o", "out.qcow2"],
        Some(&inp),
        dir,
        t.path(),
    );
    assert!(o.status.success(), "{o:?}");
    ok(Command::new("qemu-img")
        .arg("check")
        .arg(dir.join("out.qcow2")));
    ok(Command::new("qemu-img")
        .arg("compare")
        .arg(&inp)
        .arg(dir.join("out.qcow2")));
    // vmfinal's seekable .zst -> raw; a plain `zstd` stream -> raw.
    ok(vmfinal()
        .current_dir(dir)
        .args(["compact", "-q", "in.raw", "-o", "seek.zst"]));
    ok(Command::new("zstd")
        .args(["-q", "-o"])
        .arg(dir.join("plain.zst"))
        .arg(&inp));
    for z in ["seek.zst", "plain.zst"] {
        let out = format!("from-{z}.raw");
        let o = stream(
            &["expand", "-q", "-", "-o", &out],
            Some(&dir.join(z)),
            dir,
            t.path(),
        );
        assert!(o.status.success(), "{z}: {o:?}");
        assert_eq!(
            std::fs::read(dir.join(&out)).unwrap(),
            std::fs::read(&inp).unwrap(),
            "{z}"
        );
    }
    // The report names stdin and the stream's format.
    let o = stream(
        &["compact", "-", "-o", "again.zst", "--json"],
        Some(&dir.join("plain.zst")),
        dir,
        t.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["input"]["path"], "-");
    assert_eq!(v["input"]["format"], "zst");
    // stdin -> stdout: raw in, zst out, zst back to raw.
    let s = stream(
        &["compact", "-q", "-", "-o", "-"],
        Some(&inp),
        dir,
        t.path(),
    );
    assert!(s.status.success(), "{s:?}");
    assert_eq!(zstd_d(&s.stdout), std::fs::read(&inp).unwrap());
    assert_only(
        dir,
        &[
            "in.raw",
            "out.qcow2",
            "seek.zst",
            "plain.zst",
            "from-seek.zst.raw",
            "from-plain.zst.raw",
            "again.zst",
        ],
    );
    assert_only(t.path(), &[]);
}

#[test]
fn stdin_that_is_no_stream_image_is_refused() {
    let (d, t) = setup();
    let dir = d.path();
    ok(vmfinal()
        .current_dir(dir)
        .args(["compact", "-q", "in.raw", "-o", "in.qcow2"]));
    std::fs::write(dir.join("odd.bin"), vec![7u8; 1000]).unwrap();
    std::fs::write(dir.join("empty.bin"), b"").unwrap();
    ok(vmfinal()
        .current_dir(dir)
        .args(["compact", "-q", "in.raw", "-o", "in.zst"]));
    let z = std::fs::read(dir.join("in.zst")).unwrap();
    std::fs::write(dir.join("cut.zst"), &z[..z.len() / 2]).unwrap();
    for (file, says) in [
        ("in.qcow2", "qcow2 cannot be read from a stream"),
        ("odd.bin", "512-byte sectors"),
        ("empty.bin", "stdin was empty"),
        ("cut.zst", "ends inside the zstd frame"),
    ] {
        let o = stream(
            &["compact", "-", "-o", "out.qcow2"],
            Some(&dir.join(file)),
            dir,
            t.path(),
        );
        let e = assert_clean_failure(&o);
        assert!(e.contains(says), "{file}: {e}");
        assert!(
            !e.contains("/proc/self/fd"),
            "{file}: names the temporary file: {e}"
        );
    }
    let e = assert_clean_failure(&stream(
        &["compact", "-"],
        Some(&dir.join("in.raw")),
        dir,
        t.path(),
    ));
    assert!(e.contains("needs -o OUT"), "{e}");
    // --format raw takes an odd size as it is.
    let o = stream(
        &["compact", "-q", "--format", "raw", "-", "-o", "odd.raw"],
        Some(&dir.join("odd.bin")),
        dir,
        t.path(),
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(std::fs::read(dir.join("odd.raw")).unwrap(), vec![7u8; 1000]);
    assert_only(
        dir,
        &[
            "in.raw",
            "in.qcow2",
            "odd.bin",
            "empty.bin",
            "in.zst",
            "cut.zst",
            "odd.raw",
        ],
    );
    assert_only(t.path(), &[]);
}

#[test]
fn a_reader_that_goes_away_ends_the_run_cleanly() {
    let (d, t) = setup();
    let dir = d.path();
    let (child, out) = started_raw_stream(dir, t.path());
    drop(out);
    let o = child.wait_with_output().unwrap();
    let e = assert_clean_failure(&o);
    assert!(e.contains("stdout") && e.contains("incomplete"), "{e}");
    assert_only(dir, &["in.raw"]);
}

#[test]
fn interrupted_stream_says_it_is_incomplete() {
    let (d, t) = setup();
    let dir = d.path();
    let (child, mut out) = started_raw_stream(dir, t.path());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("stream on stdout is incomplete"), "{err}");
    assert!(
        ((rest.len() + 4096) as u64) < 24 << 20,
        "the stream was complete"
    );
    assert_only(dir, &["in.raw"]);
}
