//! `vmfinal check IMG`: consistency check of a qcow2 or .zst file.
//! Exit codes follow `qemu-img check`: 0 clean, 2 corrupt (including a
//! truncated or structurally broken file), 3 leaks only, 1 the check could
//! not run. With `--json` the report is always JSON, errors included.

use std::path::PathBuf;

use crate::image::{self, ImageError, ImageFormat, Opened, qcow2, zst};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    pub image: PathBuf,
    /// Input format [default: from the name (.qcow2, .zst), else probed]
    #[arg(long = "format", value_name = "FMT")]
    pub format: Option<ImageFormat>,
    /// Machine-readable output on stdout
    #[arg(long)]
    pub json: bool,
}

/// What a check found.
struct Outcome {
    format: Option<ImageFormat>,
    code: i32,
    corruptions: u64,
    leaks: u64,
    errors: Vec<String>,
    notes: Vec<String>,
    /// Why the check could not run (exit 1).
    failure: Option<String>,
}

fn failed(format: Option<ImageFormat>, e: &dyn std::fmt::Display) -> Outcome {
    Outcome {
        format,
        code: 1,
        corruptions: 0,
        leaks: 0,
        errors: vec![],
        notes: vec![],
        failure: Some(e.to_string()),
    }
}

fn damaged(format: ImageFormat, e: &ImageError) -> Outcome {
    Outcome {
        format: Some(format),
        code: 2,
        corruptions: 1,
        leaks: 0,
        errors: vec![e.to_string()],
        notes: vec![],
        failure: None,
    }
}

fn examine(args: &CheckArgs) -> Outcome {
    let path = &args.image;
    let forced = args.format;
    let named = match image::format_from_name(path) {
        image::NameSays::Format(f) => Some(f),
        _ => forced,
    };
    let opened = match image::open_inspect(path, forced) {
        Ok(o) => o,
        Err(e) if e.is_damage() => return damaged(named.unwrap_or(ImageFormat::Qcow2), &e),
        Err(e) => return failed(named, &e),
    };
    match opened {
        Opened::Qcow2(img) => match qcow2::check::check(&img) {
            Ok(r) => {
                let code = r.exit_code();
                let mut notes = r.notes;
                if let Some(refusal) = img.refusal() {
                    notes.push(format!(
                        "the image {}; its own tables were checked",
                        refusal.explain()
                    ));
                }
                Outcome {
                    format: Some(ImageFormat::Qcow2),
                    code,
                    corruptions: r.corruptions,
                    leaks: r.leaks,
                    errors: r.messages,
                    notes,
                    failure: None,
                }
            }
            Err(e) if e.is_damage() => damaged(ImageFormat::Qcow2, &e),
            Err(e) => failed(Some(ImageFormat::Qcow2), &e),
        },
        Opened::Zst(img) => match zst::verify(&img) {
            Ok(summary) => Outcome {
                format: Some(ImageFormat::Zst),
                code: 0,
                corruptions: 0,
                leaks: 0,
                errors: vec![],
                notes: vec![summary],
                failure: None,
            },
            Err(e) if e.is_damage() => damaged(ImageFormat::Zst, &e),
            Err(e) => failed(Some(ImageFormat::Zst), &e),
        },
        Opened::Raw(_) => failed(
            Some(ImageFormat::Raw),
            &format!(
                "{}: a raw image has no metadata to check (check reads qcow2 and .zst files)",
                path.display()
            ),
        ),
    }
}

pub fn run(args: &CheckArgs) -> anyhow::Result<super::ExitCode> {
    let o = examine(args);
    let path = &args.image;
    if args.json {
        let v = serde_json::json!({
            "schema_version": crate::report::JSON_SCHEMA_VERSION,
            "path": path,
            "format": o.format,
            "clean": o.code == 0,
            "exit_code": o.code,
            "corruptions": o.corruptions,
            "leaks": o.leaks,
            "errors": o.errors,
            "notes": o.notes,
            "check_error": o.failure,
        });
        crate::report::print_json(&v)?;
        return Ok(o.code);
    }
    if let Some(f) = o.failure {
        anyhow::bail!("{f}");
    }
    let mut lines = Vec::new();
    for c in o.errors.iter().take(20) {
        lines.push(format!("ERROR {c}"));
    }
    if o.corruptions > 20 {
        lines.push(format!("... and {} more errors", o.corruptions - 20));
    }
    lines.extend(o.notes.iter().cloned());
    lines.push(match o.code {
        0 => format!("{}: no errors were found", path.display()),
        3 => format!(
            "{}: {} leaked clusters (harmless, but space is wasted; qemu-img check -r leaks repairs them)",
            path.display(),
            o.leaks
        ),
        _ => format!(
            "{}: {} errors found: the image is corrupt",
            path.display(),
            o.corruptions
        ),
    });
    crate::report::print_stdout(&lines.join("\n"))?;
    Ok(o.code)
}
