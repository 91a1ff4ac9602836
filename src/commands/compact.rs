//! `vmfinal compact IN [-o OUT]`: convert to compressed qcow2, seekable .zst
//! or sparse raw.

use std::path::PathBuf;

pub use super::output_args::{DestArgs, OutputArgs, emit, publish, register_temp};
use crate::convert;
use crate::image::ImageFormat;

#[derive(Debug, clap::Args)]
pub struct CompactArgs {
    /// Input image (raw, qcow2 or .zst), or - for a raw or .zst stream on stdin
    pub input: PathBuf,
    /// Input format [default: from the name (.raw, .qcow2, .zst); other names are probed]
    #[arg(long = "format", value_name = "FMT")]
    pub format: Option<ImageFormat>,
    /// Copy filesystem free space too, instead of skipping it as zeros
    #[arg(long)]
    pub no_fs_aware: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

pub fn run(args: &CompactArgs) -> anyhow::Result<super::ExitCode> {
    let mut req = args.out.request(args.input.clone(), args.format)?;
    req.fs_aware = !args.no_fs_aware;
    crate::progress::set_quiet(args.out.quiet);
    let _state = register_temp(&req.output);
    let spool = crate::spool::redirect_stdin(&mut req)?;
    let report = crate::spool::relabeled(&spool, convert::convert(&req))?;
    publish(&report, "compact", &args.out, serde_json::Value::Null)?;
    Ok(0)
}
