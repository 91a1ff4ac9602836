//! `vmfinal clean IMG`: run cleanup profiles on a raw image in place, then
//! reclaim free space. `--dry-run` mounts read-only and only reports.

use std::path::PathBuf;
use std::time::Instant;

use crate::commands::guest_args::GuestArgs;
use crate::image::{self, ImageFormat};
use crate::session;

#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    /// Raw disk image to clean in place
    pub image: PathBuf,
    /// Input format (only raw is cleaned in place) [default: from the name, else probed]
    #[arg(long = "format", value_name = "FMT")]
    pub format: Option<ImageFormat>,
    #[command(flatten)]
    pub guest: GuestArgs,
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// No progress, and only the summary, not every path (dry runs too)
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(a: &CleanArgs) -> anyhow::Result<super::ExitCode> {
    crate::progress::set_quiet(a.quiet);
    let mut state = session::prepare_privileged("clean")?;
    let profiles = a.guest.selected()?;
    let f = std::fs::File::open(&a.image)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", a.image.display()))?;
    if !f.metadata()?.is_file() {
        anyhow::bail!("{} is not a regular file", a.image.display());
    }
    let (fmt, _) = image::choose_format(&a.image, &f, a.format)?;
    if fmt != ImageFormat::Raw {
        anyhow::bail!(
            "{} is {fmt}: clean changes raw images in place; use `vmfinal finalize {} -o OUT` for {fmt}",
            a.image.display(),
            a.image.display()
        );
    }
    // QEMU's locks: nobody else may use the disk while it changes, and a
    // running VM's disk is refused.
    image::lock::lock(&f, image::lock::LockMode::Exclusive)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.image.display()))?;
    let t0 = Instant::now();
    let before = image::allocated_bytes(&f.metadata()?);
    let r = session::run_guest(&a.image, &profiles, &a.guest, &mut state, false)?;
    let after = image::allocated_bytes(&std::fs::metadata(&a.image)?);
    session::print_warnings(&r);
    if a.json {
        let v = serde_json::json!({
            "schema_version": crate::report::JSON_SCHEMA_VERSION,
            "command": "clean",
            "image": {"path": a.image, "allocated_before": before, "allocated_after": after},
            "guest": r,
            "seconds": t0.elapsed().as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        session::print_human(&r, !a.quiet);
        if !a.guest.dry_run {
            let st: Vec<String> = ["mount", "plan", "clean", "reclaim", "unmount", "verify"]
                .iter()
                .filter_map(|k| r.stages.get(*k).map(|v| format!("{k} {v:.1} s")))
                .collect();
            eprintln!("stages: {}", st.join(", "));
            eprintln!(
                "image: {} allocated -> {} in {:.1} s",
                crate::report::human_bytes(before),
                crate::report::human_bytes(after),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(0)
}
