//! Outputs and stdout: `-o NODE -f` never replaces a device node or any
//! non-regular file, a closed stdout pipe is no panic, read-only commands
//! stop at once on SIGINT, and a panic in a worker thread is an error.

mod common;

use std::os::unix::process::CommandExt;

use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn force_never_replaces_a_device_node_or_a_fifo() {
    use std::os::unix::fs::FileTypeExt;
    let d = tempfile::tempdir().unwrap();
    let input = mixed_raw(&d.path().join("in.raw"), 1 << 20, 31);
    let fifo = d.path().join("fifo.raw");
    ok(Command::new("mkfifo").arg(&fifo));
    let mut targets = vec![(fifo.clone(), "named pipe")];
    if is_root() {
        let node = d.path().join("null.raw");
        ok(Command::new("mknod").arg(&node).args(["c", "1", "3"]));
        targets.push((node, "character device"));
    } else {
        assert!(!in_ci(), "CI runs as root");
    }
    for (t, kind) in &targets {
        for cmd in ["compact", "expand"] {
            let e = assert_clean_failure(&run(vmfinal()
                .args([cmd, "-f", "--format", "raw"])
                .arg(&input)
                .arg("-o")
                .arg(t)));
            assert!(e.contains(kind) && e.contains("regular file"), "{e}");
        }
        let ft = std::fs::symlink_metadata(t).unwrap().file_type();
        assert!(
            ft.is_fifo() || ft.is_char_device(),
            "{} was replaced",
            t.display()
        );
    }
    let mut keep = vec!["in.raw", "fifo.raw"];
    if is_root() {
        keep.push("null.raw");
    }
    assert_only(d.path(), &keep);
}

/// Runs vmfinal with stdout a pipe that is closed at once.
fn closed_stdout(args: &[&str]) -> std::process::Output {
    let mut c = vmfinal()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(c.stdout.take());
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = c.wait().unwrap();
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(
        status.code().is_some_and(|c| c != 101),
        "{args:?}: {status:?}: {err}"
    );
    std::process::Output {
        status,
        stdout: vec![],
        stderr: err.into_bytes(),
    }
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let input = mixed_raw(&d.path().join("in.raw"), 8 << 20, 32);
    let q = d.path().join("o.qcow2");
    ok(vmfinal()
        .args(["compact", "-q"])
        .arg(&input)
        .arg("-o")
        .arg(&q));
    let (i, qs) = (input.to_str().unwrap(), q.to_str().unwrap());
    for args in [
        vec!["analyze", "--json", i],
        vec!["analyze", i],
        vec!["info", i],
        vec!["info", "--json", qs],
        vec!["check", qs],
        vec!["check", "--json", qs],
    ] {
        closed_stdout(&args);
    }
    // And through a real shell pipeline, as users type it.
    for pipe in [
        format!(
            "'{}' analyze --json '{i}' | head -1",
            env!("CARGO_BIN_EXE_vmfinal")
        ),
        format!("'{}' info '{i}' | head -0", env!("CARGO_BIN_EXE_vmfinal")),
    ] {
        let o = run(Command::new("bash").args(["-c", &format!("set -o pipefail; {pipe}")]));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{pipe}: {err}");
        assert!(
            o.status.code().is_some_and(|c| c != 101),
            "{pipe}: {:?}",
            o.status
        );
    }
}

#[test]
fn read_only_commands_stop_at_once_on_sigint() {
    // `info` on a named pipe blocks in open(2) until a writer comes: a
    // stand-in for any long read. SIGINT must end it.
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("slow.img");
    ok(Command::new("mkfifo").arg(&fifo));
    for cmd in ["info", "check", "analyze"] {
        let mut c = vmfinal();
        c.arg(cmd).arg(&fifo).stderr(Stdio::piped());
        // As a shell in the foreground starts it: SIGINT at its default
        // action (a test run started in the background by a
        // non-interactive shell inherits SIGINT ignored).
        // SAFETY: between fork and exec only signal(2), which is
        // async-signal-safe, runs in the child.
        unsafe {
            c.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut c = c.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        ok(Command::new("kill").arg("-INT").arg(c.id().to_string()));
        let t = Instant::now();
        loop {
            if let Some(_s) = c.try_wait().unwrap() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{cmd} ignored SIGINT"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_worker_panic_is_an_error_not_a_crash() {
    use vmfinal::extent::Extent;
    use vmfinal::image::mem::MemDisk;
    use vmfinal::pipeline::{self, JobOut, PipelineConfig, PipelineError, Sink, UnitEncoder};
    struct Boom;
    impl UnitEncoder for Boom {
        fn encode(&mut self, _: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
            panic!("encoder exploded")
        }
    }
    struct Null;
    impl Sink for Null {
        fn write_job(&mut self, _: JobOut) -> Result<(), PipelineError> {
            Ok(())
        }
    }
    let mut data = vec![0u8; 4 << 20];
    Rng::new(1).fill(&mut data);
    let src = MemDisk(data);
    let cfg = PipelineConfig {
        unit: 65536,
        job_bytes: 1 << 20,
        threads: 2,
        queue_depth: 4,
    };
    let factory = || -> std::io::Result<Box<dyn UnitEncoder>> { Ok(Box::new(Boom)) };
    let r = pipeline::run(
        &src,
        &[Extent::new(0, 4 << 20)],
        &cfg,
        Some(&factory),
        &mut Null,
        &|_| {},
    );
    match r {
        Err(PipelineError::Other(m)) => assert!(m.contains("encoder exploded"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }
}
