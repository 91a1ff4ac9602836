//! `vmfinal expand IN -o OUT.raw`: qcow2 or .zst back to a sparse raw file.

use std::path::PathBuf;

use super::compact::OutputArgs;
use crate::convert;
use crate::image::ImageFormat;

#[derive(Debug, clap::Args)]
pub struct ExpandArgs {
    /// Input image (qcow2 or .zst)
    pub input: PathBuf,
    /// Input format [default: from the name (.raw, .qcow2, .zst); other names are probed]
    #[arg(long = "format", value_name = "FMT")]
    pub format: Option<ImageFormat>,
    #[command(flatten)]
    pub out: OutputArgs,
}

pub fn run(args: &ExpandArgs) -> anyhow::Result<super::ExitCode> {
    let mut req = args
        .out
        .request(args.input.clone(), args.format, ImageFormat::Raw);
    if args.out.output_format.is_none() {
        // expand always means raw, whatever OUT is called.
        req.output_format = ImageFormat::Raw;
        if args.out.output.is_none() {
            req.output = convert::default_output(&args.input, ImageFormat::Raw);
        }
    }
    // Expanding restores the image as it was: free space is copied.
    req.fs_aware = false;
    let _state = super::compact::register_temp(&req.output);
    let report = convert::convert(&req)?;
    super::compact::publish(&report, "expand", &args.out, serde_json::Value::Null)?;
    Ok(0)
}
