//! `vmfinal check IMG`: consistency check of a qcow2 or .zst file.
//! Exit codes follow `qemu-img check`: 0 clean, 2 corrupt, 3 leaks only,
//! 1 the check could not run.
//! TODO(helper): implement.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    pub image: PathBuf,
    /// Machine-readable output on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: &CheckArgs) -> anyhow::Result<super::ExitCode> {
    anyhow::bail!("check is not implemented yet")
}
