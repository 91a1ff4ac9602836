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

/// The size lines, each named for what it counts: guest bytes holding data
/// (`allocated`), the file's length, and the host blocks it occupies.
fn print_sizes(path: &std::path::Path, allocated: u64, host_allocated: u64) {
    println!(
        "allocated:       {} ({allocated} bytes of guest data)",
        human_bytes(allocated)
    );
    if let Ok(m) = std::fs::metadata(path)
        && m.is_file()
    {
        println!(
            "file length:     {} ({} bytes)",
            human_bytes(m.len()),
            m.len()
        );
    }
    println!(
        "host allocated:  {} ({host_allocated} bytes on the host's disk)",
        human_bytes(host_allocated)
    );
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
        print_sizes(&args.image, allocated, src.host_allocated_bytes());
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
