//! `vmfinal check IMG`: consistency check of a qcow2 or .zst file.
//! Exit codes follow `qemu-img check`: 0 clean, 2 corrupt, 3 leaks only,
//! 1 the check could not run.

use std::path::PathBuf;

use crate::image::{self, ImageFormat, qcow2, zst};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    pub image: PathBuf,
    /// Machine-readable output on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &CheckArgs) -> anyhow::Result<super::ExitCode> {
    let path = &args.image;
    let meta = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if meta.is_dir() {
        anyhow::bail!("{}: is a directory, not a disk image", path.display());
    }
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let (format, corruptions, leaks, notes) = match image::probe_format(&file, path)? {
        ImageFormat::Qcow2 => {
            let r = qcow2::check::check(path)?;
            (ImageFormat::Qcow2, r.corruptions, r.leaks, r.notes)
        }
        ImageFormat::Zst => match zst::verify(path) {
            Ok(summary) => (ImageFormat::Zst, vec![], 0, vec![summary]),
            Err(e) => (ImageFormat::Zst, vec![e], 0, vec![]),
        },
        ImageFormat::Raw => anyhow::bail!(
            "{}: not a qcow2 or .zst file; raw images have no metadata to check",
            path.display()
        ),
    };
    let code = if !corruptions.is_empty() {
        2
    } else if leaks > 0 {
        3
    } else {
        0
    };
    if args.json {
        let v = serde_json::json!({
            "schema_version": crate::report::JSON_SCHEMA_VERSION,
            "path": path,
            "format": format,
            "clean": code == 0,
            "corruptions": corruptions.len(),
            "leaks": leaks,
            "errors": corruptions,
            "notes": notes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for c in corruptions.iter().take(20) {
            println!("ERROR {c}");
        }
        if corruptions.len() > 20 {
            println!("... and {} more errors", corruptions.len() - 20);
        }
        for n in &notes {
            println!("{n}");
        }
        match code {
            0 => println!("{}: no errors were found", path.display()),
            3 => println!(
                "{}: {leaks} leaked clusters (harmless, but space is wasted)",
                path.display()
            ),
            _ => println!(
                "{}: {} errors found: the image is corrupt",
                path.display(),
                corruptions.len()
            ),
        }
    }
    Ok(code)
}
