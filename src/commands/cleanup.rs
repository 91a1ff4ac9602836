//! `vmfinal cleanup`: detach loop devices and remove workspace and
//! temporary files that killed vmfinal runs left behind. (Their mounts
//! lived in a private mount namespace and went with the process.)

#[derive(Debug, clap::Args)]
pub struct CleanupArgs {}

pub fn run(_a: &CleanupArgs) -> anyhow::Result<super::ExitCode> {
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("cleanup needs root (it detaches loop devices)");
    }
    let done = crate::guest::state::sweep_stale();
    if done.is_empty() {
        eprintln!("vmfinal: nothing left behind by earlier runs");
    }
    for d in done {
        eprintln!("vmfinal: {d}");
    }
    Ok(0)
}
