//! Helpers shared by the integration tests: the binary, temp dirs, external
//! tools (which must exist when CI=true), and file builders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn vmfinal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmfinal"))
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// True if `tool` is on PATH. In CI a missing tool fails the test.
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && in_ci() {
        panic!("{tool} is required in CI but missing");
    }
    found
}

/// Runs a command and returns its output; panics if it could not start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs and asserts success, printing stderr on failure.
pub fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Asserts the vmfinal invocation failed cleanly: non-zero, not a panic, one
/// "vmfinal: error:" line on stderr.
pub fn assert_clean_failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert_ne!(out.status.code(), Some(101), "panicked: {stderr}");
    assert!(
        out.status.code().is_some(),
        "died by a signal ({:?}): {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(
        lines[0].starts_with("vmfinal: error:"),
        "unexpected stderr: {stderr}"
    );
    stderr
}

/// No file in `dir` other than `keep` (catches temp files left behind).
pub fn assert_only(dir: &Path, keep: &[&str]) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        assert!(
            keep.contains(&name.as_str()),
            "unexpected leftover file {name} in {}",
            dir.display()
        );
    }
}

/// A small deterministic PRNG (xorshift64*), so fixtures need no crate.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Writes a sparse raw disk of `size` bytes with a mix of random data,
/// compressible text, written zeros and holes.
pub fn mixed_raw(path: &Path, size: u64, seed: u64) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).expect("create");
    f.set_len(size).expect("set_len");
    let mut rng = Rng::new(seed);
    let mut off = 0u64;
    let mut i = 0u64;
    while off < size {
        let len = (64 << 10) + rng.next() % (700 << 10);
        let len = len.min(size - off);
        let mut buf = vec![0u8; len as usize];
        match i % 4 {
            0 => rng.fill(&mut buf),
            1 => {
                let text =
                    b"vmfinal compacts disk images; the quick brown fox jumps over the lazy dog. ";
                for (j, b) in buf.iter_mut().enumerate() {
                    *b = text[(j + (rng.next() % 7) as usize) % text.len()];
                }
            }
            2 => {} // written zeros
            _ => {
                off += len; // hole
                i += 1;
                continue;
            }
        }
        f.write_all_at(&buf, off).expect("write");
        off += len;
        i += 1;
    }
    path.to_owned()
}

/// Bytes allocated on the host (st_blocks * 512).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("metadata").blocks() * 512
}

/// A read-only loop device over part of an image; detached on drop.
pub struct Loop(pub String);
impl Loop {
    pub fn new(img: &Path, off: u64, size: u64) -> Loop {
        Self::attach(img, off, size, true)
    }
    /// A writable one (for repair tools working on a copy).
    pub fn rw(img: &Path, off: u64, size: u64) -> Loop {
        Self::attach(img, off, size, false)
    }
    fn attach(img: &Path, off: u64, size: u64, ro: bool) -> Loop {
        let o = ok(Command::new("losetup")
            .args(ro.then_some("-r"))
            .args([
                "-f",
                "--show",
                "--offset",
                &off.to_string(),
                "--sizelimit",
                &size.to_string(),
            ])
            .arg(img));
        Loop(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }
}
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// True when the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Directories `fixture_dir` made, removed by one exit hook (statics are
/// never dropped).
static FIXTURE_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

extern "C" fn remove_fixture_dirs() {
    if let Ok(dirs) = FIXTURE_DIRS.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Builds fixtures once per test binary: `scripts/SCRIPT DIR` into a fresh
/// directory under /var/tmp named PREFIX..., after checking that the tests
/// run as root and that `tools` exist. `None` (skip) only outside CI; `what`
/// names the tests in CI's error. The directory is removed at exit.
pub fn fixture_dir(
    cell: &'static std::sync::OnceLock<Option<PathBuf>>,
    prefix: &str,
    script: &str,
    tools: &[&str],
    what: &str,
) -> Option<&'static Path> {
    cell.get_or_init(|| {
        if !is_root() {
            assert!(!in_ci(), "CI must run the {what} tests as root");
            return None;
        }
        for t in tools {
            assert!(have(t), "{t} is missing");
        }
        let d = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/var/tmp")
            .unwrap()
            .keep();
        let mut dirs = FIXTURE_DIRS.lock().unwrap();
        if dirs.is_empty() {
            // SAFETY: registers a plain extern "C" fn with no captured state.
            unsafe { libc::atexit(remove_fixture_dirs) };
        }
        dirs.push(d.clone());
        drop(dirs);
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(script);
        ok(Command::new("bash").arg(script).arg(&d));
        Some(d)
    })
    .as_deref()
}

/// Waits until a child started with `VMFINAL_TEST_PAUSE=STAGE` and a piped
/// stderr prints `vmfinal: paused at STAGE`; returns what it printed and
/// the rest of its stderr, to read after resuming.
pub fn paused_at(
    child: &mut std::process::Child,
    stage: &str,
) -> (Vec<String>, std::io::BufReader<std::process::ChildStderr>) {
    use std::io::BufRead;
    let err = child.stderr.take().expect("stderr piped");
    let mut lines = Vec::new();
    let mut r = std::io::BufReader::new(err);
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 {
            panic!("vmfinal ended before pausing at {stage}: {lines:?}");
        }
        let done = l.contains(&format!("paused at {stage}"));
        lines.push(l);
        if done {
            return (lines, r);
        }
    }
}

/// `paused_at`, then stderr is drained so the child never blocks on a full
/// pipe.
pub fn wait_for_pause(child: &mut std::process::Child, stage: &str) -> Vec<String> {
    use std::io::BufRead;
    let (lines, mut r) = paused_at(child, stage);
    std::thread::spawn(move || {
        let mut sink = String::new();
        while r.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    lines
}

/// A small Debian guest (vm-fixtures/debian-mini) as `DIR/guest.qcow2`,
/// built by scripts/make-guest-image.sh (needs root) and compacted; the raw
/// image is removed.
pub fn mini_guest_qcow2(dir: &Path) -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let guest = dir.join("guest.raw");
    ok(Command::new(repo.join("scripts/make-guest-image.sh"))
        .arg(repo.join("vm-fixtures/debian-mini/tree.txt"))
        .arg(&guest));
    let q = dir.join("guest.qcow2");
    ok(vmfinal()
        .args(["compact", "-q"])
        .arg(&guest)
        .arg("-o")
        .arg(&q));
    std::fs::remove_file(&guest).unwrap();
    q
}

/// `vmfinal compact -q -O raw in.raw -o -` in `dir` (TMPDIR `tmp`), its
/// stdout and stderr piped, once the first 4 KiB of the stream arrived:
/// the child and the rest of its stdout.
pub fn started_raw_stream(
    dir: &Path,
    tmp: &Path,
) -> (std::process::Child, std::process::ChildStdout) {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = vmfinal()
        .current_dir(dir)
        .env("TMPDIR", tmp)
        .args(["compact", "-q", "-O", "raw", "in.raw", "-o", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 4096];
    out.read_exact(&mut first).unwrap();
    (child, out)
}
