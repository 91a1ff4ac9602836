//! Faults while writing: ENOSPC and EIO on the output and on the workspace,
//! EIO on the input, SIGKILL at every stage. Each case checks the same
//! invariants: the input's sha256 is unchanged, nothing is left under OUT,
//! `vmfinal cleanup` then leaves nothing, and the next run succeeds.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let r = unsafe { libc::geteuid() } == 0;
    assert!(r || !in_ci(), "CI runs as root");
    r
}

fn sha256(p: &Path) -> String {
    let o = ok(Command::new("sha256sum").arg(p));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A small ext4 filesystem on a loop device, mounted here; undone on drop.
struct Tiny {
    dir: PathBuf,
}
impl Tiny {
    fn new(parent: &Path, name: &str, mib: u64) -> Tiny {
        let img = parent.join(format!("{name}.ext4"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        ok(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&img));
        let dir = parent.join(name);
        std::fs::create_dir(&dir).unwrap();
        ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&dir));
        let _ = std::fs::remove_dir(dir.join("lost+found"));
        Tiny { dir }
    }
}
impl Drop for Tiny {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// The FUSE filesystem of scripts/eio-fuse.py, mounted here; unmounted on drop.
struct Eio {
    dir: PathBuf,
    child: Child,
}
impl Eio {
    fn new(dir: &Path, args: &[&str]) -> Eio {
        std::fs::create_dir_all(dir).unwrap();
        let mut child =
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/eio-fuse.py"))
                .arg(dir)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
        for _ in 0..100 {
            let m = std::fs::read_to_string("/proc/self/mounts").unwrap();
            if m.contains(&format!(" {} fuse", dir.display())) {
                return Eio {
                    dir: dir.to_owned(),
                    child,
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("eio-fuse.py did not mount");
    }
}
impl Drop for Eio {
    fn drop(&mut self) {
        let _ = Command::new("fusermount").arg("-u").arg(&self.dir).status();
        let _ = self.child.wait();
    }
}

fn cleanup_leaves_nothing(dirs: &[&Path], keep: &[&[&str]]) {
    if root() {
        ok(vmfinal().arg("cleanup"));
    }
    for (d, k) in dirs.iter().zip(keep) {
        assert_only(d, k);
    }
}

#[test]
fn enospc_on_the_output() {
    if !root() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.raw");
    let mut b = vec![0u8; 24 << 20];
    Rng::new(61).fill(&mut b);
    std::fs::write(&input, &b).unwrap();
    let sum = sha256(&input);
    let tiny = Tiny::new(d.path(), "small", 8);
    for o in ["o.raw", "o.qcow2", "o.zst"] {
        let out = tiny.dir.join(o);
        let e = assert_clean_failure(&run(vmfinal()
            .arg("compact")
            .arg(&input)
            .arg("-o")
            .arg(&out)));
        assert!(
            e.contains(&out.display().to_string()) && e.contains("no space left"),
            "{e}"
        );
        assert!(e.contains("needs up to"), "{e}");
        assert_eq!(sha256(&input), sum);
        cleanup_leaves_nothing(&[&tiny.dir], &[&[]]);
        // The next run, with room, succeeds.
        let room = d.path().join(o);
        ok(vmfinal()
            .args(["compact", "-q"])
            .arg(&input)
            .arg("-o")
            .arg(&room));
        std::fs::remove_file(&room).unwrap();
    }
}

#[test]
fn eio_on_the_output_and_on_the_input() {
    assert!(have("fusermount"));
    let d = tempfile::tempdir().unwrap();
    let input = mixed_raw(&d.path().join("in.raw"), 16 << 20, 62);
    let sum = sha256(&input);
    {
        let m = Eio::new(&d.path().join("out"), &["--write-limit", "1000000"]);
        for o in ["o.raw", "o.qcow2", "o.zst"] {
            let out = m.dir.join(o);
            let e = assert_clean_failure(&run(vmfinal()
                .arg("compact")
                .arg(&input)
                .arg("-o")
                .arg(&out)));
            assert!(
                e.contains(&out.display().to_string()) && e.contains("Input/output error"),
                "{e}"
            );
            assert!(!e.contains(".vmfinal-"), "{e}");
            assert_only(&m.dir, &[]);
            assert_eq!(sha256(&input), sum);
        }
    }
    {
        let src = d.path().join("src");
        let m = Eio::new(
            &src,
            &[
                "--source",
                input.to_str().unwrap(),
                "--bad-read",
                &(5u64 << 20).to_string(),
            ],
        );
        let fused = m.dir.join("input.raw");
        let out = d.path().join("o.qcow2");
        let e = assert_clean_failure(&run(vmfinal()
            .args(["compact", "--no-fs-aware"])
            .arg(&fused)
            .arg("-o")
            .arg(&out)));
        assert!(e.contains("Input/output error"), "{e}");
        assert!(!out.exists());
    }
    assert_eq!(sha256(&input), sum);
    cleanup_leaves_nothing(&[d.path()], &[&["in.raw", "out", "src"]]);
    ok(vmfinal()
        .args(["compact", "-q"])
        .arg(&input)
        .arg("-o")
        .arg(d.path().join("o.qcow2")));
}

#[test]
fn enospc_on_the_workspace_points_to_tmp() {
    if !root() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // A qcow2 input: the workspace is a decompressed copy (--workspace copy).
    let q = mini_guest_qcow2(d.path());
    let sum = sha256(&q);
    let tiny = Tiny::new(d.path(), "ws", 4);
    let out = d.path().join("golden.qcow2");
    let r = run(vmfinal()
        .args([
            "finalize",
            "--workspace",
            "copy",
            "--profiles",
            "none",
            "--reclaim",
            "none",
            "--tmp",
        ])
        .arg(&tiny.dir)
        .arg(&q)
        .arg("-o")
        .arg(&out));
    // finalize first sweeps what killed runs left ("vmfinal: cleanup: ..."
    // lines, e.g. from the SIGKILL test running beside this one).
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("vmfinal: cleanup:") && !l.trim().is_empty())
        .collect();
    assert!(
        r.status.code().is_some_and(|c| c != 0 && c != 101),
        "{stderr}"
    );
    assert_eq!(lines.len(), 1, "{stderr}");
    let e = lines[0];
    assert!(e.contains("no space left") && e.contains("--tmp"), "{e}");
    assert_eq!(sha256(&q), sum);
    cleanup_leaves_nothing(
        &[&tiny.dir, d.path()],
        &[&[], &["guest.qcow2", "ws", "ws.ext4"]],
    );
    ok(vmfinal()
        .args(["finalize", "-q", "--profiles", "none", "--reclaim", "none"])
        .arg(&q)
        .arg("-o")
        .arg(&out));
    ok(Command::new("qemu-img").args(["check", "-q"]).arg(&out));
}

/// SIGKILL at every stage of compact (opening, reading, compressing,
/// writing the tables, renaming): no partial OUT; the temporary file is
/// removed by `vmfinal cleanup` or by the next run to the same OUT.
#[test]
fn sigkill_at_every_stage_of_compact() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.raw");
    let mut b = vec![0u8; 48 << 20];
    Rng::new(63).fill(&mut b[..24 << 20]);
    std::fs::write(&input, &b).unwrap();
    let sum = sha256(&input);
    let out = d.path().join("o.qcow2");
    let mut killed_with_temp = 0;
    for (i, ms) in [0u64, 20, 60, 150, 400, 900, 1600].iter().enumerate() {
        let mut c = vmfinal()
            .args([
                "compact",
                "-q",
                "--threads",
                "1",
                "--compression",
                "zstd",
                "--level",
                "9",
            ])
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(*ms));
        let _ = c.kill();
        let st = c.wait().unwrap();
        if st.success() {
            // Finished before the kill: a complete artifact.
            ok(Command::new("qemu-img").args(["check", "-q"]).arg(&out));
            std::fs::remove_file(&out).unwrap();
            continue;
        }
        assert!(!out.exists(), "a partial OUT after SIGKILL at {ms} ms");
        assert_eq!(sha256(&input), sum);
        let temps: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".vmfinal-"))
            .collect();
        if !temps.is_empty() {
            killed_with_temp += 1;
        }
        if i % 2 == 0 && root() {
            // `vmfinal cleanup` removes it ...
            cleanup_leaves_nothing(&[d.path()], &[&["in.raw"]]);
        }
        // ... and so does the next run to the same OUT, which succeeds.
        ok(vmfinal()
            .args(["compact", "-q", "--threads", "1"])
            .arg(&input)
            .arg("-o")
            .arg(&out));
        assert_only(d.path(), &["in.raw", "o.qcow2"]);
        std::fs::remove_file(&out).unwrap();
    }
    assert!(
        killed_with_temp > 0,
        "no kill landed while the temporary output existed"
    );
}

/// ENOSPC on the copy-on-write view's overlay (a 64 KiB tmpfs as --tmp,
/// mounted in a private namespace of its own): the guest's writes fail,
/// and finalize says so in one line naming --tmp; no artifact, the input
/// unchanged, nothing left mounted or attached.
#[test]
fn enospc_on_the_overlay_points_to_tmp() {
    if !root() {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        assert!(std::env::var("CI").is_err(), "CI=true but no /dev/fuse");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let q = mini_guest_qcow2(d.path());
    let sum = sha256(&q);
    let tiny = d.path().join("tiny");
    std::fs::create_dir(&tiny).unwrap();
    let out = d.path().join("golden.qcow2");
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs '{t}' && exec '{v}' finalize -q --workspace fuse --tmp '{t}' -o '{o}' '{q}'",
        t = tiny.display(),
        v = env!("CARGO_BIN_EXE_vmfinal"),
        o = out.display(),
        q = q.display()
    );
    let r = run(Command::new("unshare").args(["-m", "sh", "-c", &script]));
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("vmfinal: cleanup:") && !l.trim().is_empty())
        .collect();
    assert!(
        r.status.code().is_some_and(|c| c != 0 && c != 101),
        "{stderr}"
    );
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("overlay") && lines[0].contains("--tmp"),
        "{stderr}"
    );
    assert_eq!(sha256(&q), sum);
    cleanup_leaves_nothing(&[d.path()], &[&["guest.qcow2", "tiny"]]);
    assert_only(&tiny, &[]);
}
