//! `vmfinal expand IN -o OUT.raw`: qcow2 or .zst back to a sparse raw file
//! (or a raw stream on stdout with `-o -`).

use std::path::PathBuf;

use super::output_args::DestArgs;
use crate::convert;
use crate::image::ImageFormat;

#[derive(Debug, clap::Args)]
#[command(mut_arg("output", |a| a.help(
    "Output (always raw), or - for stdout [default: IN with .raw]"
)))]
pub struct ExpandArgs {
    /// Input image (qcow2 or .zst), or - for a .zst or raw stream on stdin
    pub input: PathBuf,
    /// Input format [default: from the name (.raw, .qcow2, .zst); other names are probed]
    #[arg(long = "format", value_name = "FMT")]
    pub format: Option<ImageFormat>,
    #[command(flatten)]
    pub out: DestArgs,
}

pub fn run(args: &ExpandArgs) -> anyhow::Result<super::ExitCode> {
    let mut req = args.out.expand_request(args.input.clone(), args.format)?;
    crate::progress::set_quiet(args.out.quiet);
    let _state = super::output_args::register_temp(&req.output);
    let spool = crate::spool::redirect_stdin(&mut req)?;
    let report = crate::spool::relabeled(&spool, convert::convert(&req))?;
    super::output_args::publish(&report, "expand", &args.out, serde_json::Value::Null)?;
    Ok(0)
}
