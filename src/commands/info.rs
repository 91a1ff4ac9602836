//! `vmfinal info IMG`: format, virtual size, allocated bytes, details.

use std::path::PathBuf;

use crate::extent;
use crate::image::{self, ImageFormat};
use crate::report::human_bytes;

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    pub image: PathBuf,
    /// Input format [default: probed by magic]
    #[arg(long = "format", value_name = "FMT")]
    pub format: Option<ImageFormat>,
    /// Machine-readable output on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &InfoArgs) -> anyhow::Result<super::ExitCode> {
    let src = image::open(&args.image, args.format)?;
    let allocated = extent::total(&extent::normalize(src.data_extents()?));
    let details = src.details();
    if args.json {
        let v = serde_json::json!({
            "schema_version": crate::report::JSON_SCHEMA_VERSION,
            "path": args.image,
            "format": src.format(),
            "virtual_size": src.virtual_size(),
            "allocated_bytes": allocated,
            "host_bytes": src.host_allocated_bytes(),
            "details": details,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("image:           {}", args.image.display());
        println!("format:          {}", src.format());
        println!(
            "virtual size:    {} ({} bytes)",
            human_bytes(src.virtual_size()),
            src.virtual_size()
        );
        println!(
            "allocated:       {} ({} bytes)",
            human_bytes(allocated),
            allocated
        );
        println!(
            "file size:       {}",
            human_bytes(src.host_allocated_bytes())
        );
        if let Some(obj) = details.as_object() {
            for (k, v) in obj {
                let val = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                println!("{:<16} {}", format!("{}:", k.replace('_', " ")), val);
            }
        }
    }
    Ok(0)
}
