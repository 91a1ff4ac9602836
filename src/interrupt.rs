//! Ctrl-C and SIGTERM: a flag the long-running loops poll, so that every guard
//! (temp output, mounts, loop devices) unwinds normally instead of the process
//! dying mid-write.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// The error of work stopped by SIGINT/SIGTERM. `main` maps it (and
/// `pipeline::PipelineError::Interrupted`, which the pipeline converts it
/// into) to exit code 130.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Installs the SIGINT/SIGTERM handlers. Call once, early in `main`.
pub fn install() -> std::io::Result<()> {
    let flag = FLAG
        .get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(())
}

/// True once SIGINT or SIGTERM arrived.
pub fn requested() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// Test hook: when `VMFINAL_TEST_PAUSE` names `stage`, prints
/// `vmfinal: paused at STAGE` and waits (up to 120 s) for a signal, so the
/// interruption tests can hit every stage deterministically (or, with
/// `VMFINAL_TEST_RESUME`, until that file exists). Returns
/// `Interrupted` once a signal arrived (or at once if one already had).
pub fn checkpoint(stage: &str) -> Result<(), Interrupted> {
    if requested() {
        return Err(Interrupted);
    }
    if std::env::var("VMFINAL_TEST_PAUSE").is_ok_and(|s| s == stage) {
        eprintln!("vmfinal: paused at {stage}");
        // VMFINAL_TEST_RESUME=FILE: go on once FILE exists (tests that
        // change something while vmfinal waits).
        let resume = std::env::var_os("VMFINAL_TEST_RESUME").map(std::path::PathBuf::from);
        for _ in 0..2400 {
            if requested() {
                return Err(Interrupted);
            }
            if resume.as_ref().is_some_and(|f| f.exists()) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    Ok(())
}
