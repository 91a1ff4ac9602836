//! `vmfinal compact IN [-o OUT]`: convert to compressed qcow2, seekable .zst
//! or sparse raw.

use std::path::PathBuf;

pub use super::output_args::{DestArgs, OutputArgs};
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

/// As root, records the temporary output in `/run/vmfinal/PID.json`, so
/// that `vmfinal cleanup` removes it if this run is killed (the next run
/// to the same OUT removes it either way). Dropping the state removes the
/// record.
pub fn register_temp(output: &std::path::Path) -> Option<crate::guest::state::State> {
    // A stream on stdout has no temporary file.
    if output == std::path::Path::new("-") {
        return None;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let mut s = crate::guest::state::State::create().ok()?;
    s.add_file(&crate::output::temp_path_for(output)).ok()?;
    Some(s)
}

/// Writes the checksum and manifest entry if asked, then prints the report.
/// `extra` is merged into the manifest's `custom_data` (e.g. finalize's
/// before/after figures).
pub fn publish(
    report: &crate::report::ConvertReport,
    command: &str,
    out: &DestArgs,
    extra: serde_json::Value,
) -> anyhow::Result<()> {
    let mut files = vec![report.output.path.clone()];
    let mut sha = None;
    if out.checksum.is_some() {
        let (digest, sum_path) = crate::artifact::write_checksum(&report.output.path)?;
        files.push(sum_path);
        sha = Some(digest);
    }
    if let Some(m) = &out.manifest {
        let mut custom = serde_json::json!({
            "vmfinal_command": command,
            "input_virtual_size": report.input.virtual_size,
            "input_allocated_bytes": report.input.allocated_bytes,
            "output_bytes": report.output.bytes,
            "output_format": report.output.format,
            "compression": report.output.compression,
            "seconds": report.seconds,
            "sha256": sha,
        });
        if let (Some(c), serde_json::Value::Object(e)) = (custom.as_object_mut(), extra) {
            c.extend(e);
        }
        crate::artifact::append_manifest(m, &files, &report.output.path, custom)?;
    }
    emit(report, command, out);
    Ok(())
}

/// Prints warnings and the summary (stderr) and the JSON report (stdout).
pub fn emit(report: &crate::report::ConvertReport, command: &str, out: &DestArgs) {
    for w in &report.warnings {
        eprintln!("vmfinal: warning: {w}");
    }
    if out.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json(command)).unwrap_or_default()
        );
    } else if !out.quiet {
        eprintln!("{}", report.summary_line());
    }
}
