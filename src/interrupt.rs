//! Ctrl-C and SIGTERM: a flag the long-running loops poll, so that every guard
//! (temp output, mounts, loop devices) unwinds normally instead of the process
//! dying mid-write.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

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
