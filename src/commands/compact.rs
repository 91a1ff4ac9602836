//! `vmfinal compact IN [-o OUT]`: convert to compressed qcow2, seekable .zst
//! or sparse raw.

use std::path::PathBuf;

use crate::cli::parse_size;
use crate::convert::{self, ConvertRequest};
use crate::image::ImageFormat;
use crate::image::qcow2::Compression;

/// Output options shared by `compact`, `expand` and `finalize`.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Output file [default: beside IN, with the new extension]
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Output format [default: from OUT's extension, else qcow2]
    #[arg(short = 'O', long = "output-format", value_name = "FMT")]
    pub output_format: Option<ImageFormat>,
    /// qcow2 cluster compression: zlib (every QEMU) or zstd (QEMU 5.1+)
    #[arg(long, default_value = "zlib")]
    pub compression: Compression,
    /// Compression level [default: zlib 6, zstd 3]
    #[arg(long, allow_hyphen_values = true)]
    pub level: Option<i32>,
    /// Worker threads [default: all cores]
    #[arg(long)]
    pub threads: Option<usize>,
    /// qcow2 cluster size, 4K to 2M
    #[arg(long, value_parser = parse_size, default_value = "64K")]
    pub cluster_size: u64,
    /// .zst frame size (the unit of parallel work and of seeking)
    #[arg(long, value_parser = parse_size, default_value = "8M")]
    pub frame_size: u64,
    /// Overwrite OUT if it exists
    #[arg(short, long)]
    pub force: bool,
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// No progress bar and no summary line
    #[arg(short, long)]
    pub quiet: bool,
    /// Also write OUT.sha256 (`HASH  NAME`, as `sha256sum -c` reads it)
    #[arg(long, value_name = "ALGO")]
    pub checksum: Option<crate::artifact::ChecksumKind>,
    /// Append a build entry to this Packer-style manifest (JSON)
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CompactArgs {
    /// Input image (raw, qcow2 or .zst)
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

impl OutputArgs {
    /// Builds a conversion request for `input`, with `fallback` as the output
    /// format when neither -O nor the extension says.
    pub fn request(
        &self,
        input: PathBuf,
        input_format: Option<ImageFormat>,
        fallback: ImageFormat,
    ) -> ConvertRequest {
        let format = self
            .output_format
            .or_else(|| {
                self.output
                    .as_deref()
                    .and_then(convert::format_from_extension)
            })
            .unwrap_or(fallback);
        let output = self
            .output
            .clone()
            .unwrap_or_else(|| convert::default_output(&input, format));
        ConvertRequest {
            input,
            input_format,
            output,
            output_format: format,
            compression: self.compression,
            level: self.level,
            threads: super::threads_or_default(self.threads),
            cluster_size: self.cluster_size,
            frame_size: self.frame_size,
            force: self.force,
            quiet: self.quiet,
            fs_aware: true,
        }
    }
}

pub fn run(args: &CompactArgs) -> anyhow::Result<super::ExitCode> {
    let mut req = args
        .out
        .request(args.input.clone(), args.format, ImageFormat::Qcow2);
    req.fs_aware = !args.no_fs_aware;
    let _state = register_temp(&req.output);
    let report = convert::convert(&req)?;
    publish(&report, "compact", &args.out, serde_json::Value::Null)?;
    Ok(0)
}

/// As root, records the temporary output in `/run/vmfinal/PID.json`, so
/// that `vmfinal cleanup` removes it if this run is killed (the next run
/// to the same OUT removes it either way). Dropping the state removes the
/// record.
pub fn register_temp(output: &std::path::Path) -> Option<crate::guest::state::State> {
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
    out: &OutputArgs,
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
pub fn emit(report: &crate::report::ConvertReport, command: &str, out: &OutputArgs) {
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
