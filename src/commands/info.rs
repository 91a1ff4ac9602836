//! `vmfinal info IMG`: format, virtual size, allocated bytes, details. A
//! qcow2 that names another file (backing file, external data file) is
//! shown from its header, with why `compact` refuses it and what to do; the
//! named file is never opened.

use std::path::PathBuf;

use crate::extent;
use crate::image::{self, BlockSource, ImageFormat, Opened};
use crate::report::{human_bytes, print_json, print_stdout};

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    pub image: PathBuf,
    /// Input format [default: from the name (.raw, .qcow2, .zst), else probed]
    #[arg(long = "format", value_name = "FMT")]
    pub format: Option<ImageFormat>,
    /// Machine-readable output on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &InfoArgs) -> anyhow::Result<super::ExitCode> {
    let opened = image::open_inspect(&args.image, args.format)?;
    let refusal = match &opened {
        Opened::Qcow2(q) => q.refusal().map(|r| r.explain()),
        _ => None,
    };
    let src: Box<dyn BlockSource> = opened.into_source();
    let allocated = match refusal {
        Some(_) => None,
        None => Some(extent::total(&extent::normalize(src.data_extents()?))),
    };
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
            "compact_refuses": refusal,
        });
        print_json(&v)?;
        return Ok(0);
    }
    let mut out = vec![
        format!("image:           {}", args.image.display()),
        format!("format:          {}", src.format()),
        format!(
            "virtual size:    {} ({} bytes)",
            human_bytes(src.virtual_size()),
            src.virtual_size()
        ),
    ];
    // The size lines, each named for what it counts: guest bytes holding
    // data (`allocated`), the file's length, and the host blocks it occupies.
    match allocated {
        Some(a) => out.push(format!(
            "allocated:       {} ({a} bytes of guest data)",
            human_bytes(a)
        )),
        None => out.push("allocated:       not read (see below)".into()),
    }
    if let Ok(m) = std::fs::metadata(&args.image)
        && m.is_file()
    {
        out.push(format!(
            "file length:     {} ({} bytes)",
            human_bytes(m.len()),
            m.len()
        ));
    }
    let host = src.host_allocated_bytes();
    out.push(format!(
        "host allocated:  {} ({host} bytes on the host's disk)",
        human_bytes(host)
    ));
    if let Some(obj) = details.as_object() {
        for (k, v) in obj {
            let val = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push(format!(
                "{:<16} {}",
                format!("{}:", k.replace('_', " ")),
                val
            ));
        }
    }
    if let Some(r) = refusal {
        out.push(format!("compact refuses it: the image {r}"));
    }
    print_stdout(&out.join("\n"))?;
    Ok(0)
}
