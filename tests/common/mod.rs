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
