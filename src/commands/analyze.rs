//! `vmfinal analyze`.
//! TODO(helper): implement.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// The image (raw or qcow2)
    pub image: PathBuf,
    /// Machine-readable report on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: &AnalyzeArgs) -> anyhow::Result<super::ExitCode> {
    anyhow::bail!("analyze is not implemented yet")
}
