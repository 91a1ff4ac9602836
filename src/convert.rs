//! One conversion, start to finish: open the input, work out which guest
//! ranges hold data (holes and, when allowed, filesystem free space are left
//! out), run the pipeline into the chosen writer under a temporary name, and
//! rename it into place. `compact`, `expand` and `finalize` all come here.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::extent;
use crate::fs::FsScan;
use crate::image::qcow2::Compression;
use crate::image::zst::{MAX_FRAME_BYTES, MAX_FRAMES};
use crate::image::{self, ImageFormat};
use crate::output::dest::Destination;
use crate::output::qcow2::{Qcow2Writer, Qcow2WriterOptions, cluster_encoder};
use crate::output::raw::{RawPositional, RawStreamWriter, RawWriter, Written};
use crate::output::zst::{ZstWriter, frame_encoder};
use crate::output::{OutputError, same_file};
use crate::pipeline::{self, EncoderFactory, PipelineConfig, PipelineError, PipelineStats};
use crate::progress::Transfer;
use crate::report::{ConvertReport, ImageSummary, OutputSummary};

/// Default qcow2 cluster size, as qemu-img.
pub const DEFAULT_CLUSTER_SIZE: u64 = 64 << 10;
/// Default `.zst` frame size: large enough for zstd -3's ratio, small enough
/// for parallel work and seeking.
pub const DEFAULT_FRAME_SIZE: u64 = 8 << 20;
/// Zero-detection granularity of sparse raw output (qemu-img's `-S` default).
pub const RAW_ZERO_GRANULARITY: u64 = 4 << 10;
/// Guest bytes per pipeline job, at least.
const MIN_JOB_BYTES: u64 = 1 << 20;
/// Guest bytes the pipeline aims to hold in flight.
const IN_FLIGHT_BYTES: u64 = 128 << 20;

/// Default compression levels, chosen from `scripts/bench.sh` (see README).
pub fn default_level(format: ImageFormat, compression: Compression) -> i32 {
    match (format, compression) {
        (ImageFormat::Zst, _) => 3,
        (_, Compression::Zlib) => 6,
        (_, Compression::Zstd) => 3,
    }
}

#[derive(Debug, Clone)]
pub struct ConvertRequest {
    pub input: PathBuf,
    pub input_format: Option<ImageFormat>,
    pub output: PathBuf,
    pub output_format: ImageFormat,
    pub compression: Compression,
    pub level: Option<i32>,
    pub threads: usize,
    pub cluster_size: u64,
    pub frame_size: u64,
    pub force: bool,
    pub quiet: bool,
    /// Treat filesystem free space as zeros (never read it).
    pub fs_aware: bool,
}

/// Runs one conversion and returns its report.
pub fn convert(req: &ConvertRequest) -> anyhow::Result<ConvertReport> {
    let started = Instant::now();
    validate(req)?;
    if req.output != Path::new("-") {
        crate::output::check_target(&req.output, req.force)?;
    }
    let src = image::open(&req.input, req.input_format)?;
    if same_file(&req.input, &req.output) {
        return Err(OutputError::SameAsInput(req.output.clone()).into());
    }
    convert_opened(req, src.as_ref(), started)
}

/// As `convert`, reading from `src` (already open: `finalize`'s
/// copy-on-write view); `req.input` only names it in the report.
pub fn convert_source(
    req: &ConvertRequest,
    src: &dyn image::BlockSource,
) -> anyhow::Result<ConvertReport> {
    let started = Instant::now();
    validate(req)?;
    if req.output != Path::new("-") {
        crate::output::check_target(&req.output, req.force)?;
    }
    convert_opened(req, src, started)
}

fn convert_opened(
    req: &ConvertRequest,
    src: &dyn image::BlockSource,
    started: Instant,
) -> anyhow::Result<ConvertReport> {
    let vsize = src.virtual_size();
    check_size_limits(req, vsize)?;
    crate::interrupt::checkpoint("input")?;

    let allocated = extent::normalize(src.data_extents()?);
    let scan = if req.fs_aware {
        crate::fs::scan(src, &allocated)
    } else {
        FsScan::default()
    };
    let free_in_data = extent::total(&extent::clip(
        &extent::subtract(&allocated, &extent::subtract(&allocated, &scan.free)),
        0,
        vsize,
    ));
    let to_read = extent::subtract(&allocated, &scan.free);

    let out = Destination::open(&req.output, req.force)?;
    let tmp = out.name();
    let level = req
        .level
        .unwrap_or_else(|| default_level(req.output_format, req.compression));
    let pref = src.preferred_read_size().unwrap_or(1);

    let progress = Transfer::new(&to_read, req.quiet);
    let on_progress = |n: u64| progress.advance(n);
    let (stats, out_bytes, unit): (PipelineStats, u64, u64) = match req.output_format {
        ImageFormat::Qcow2 => {
            let unit = req.cluster_size;
            let cfg = config(unit, pref, req.threads);
            let mut w = Qcow2Writer::new(
                out.file()?,
                tmp.clone(),
                Qcow2WriterOptions {
                    virtual_size: vsize,
                    cluster_size: unit,
                    compression: req.compression,
                },
            )?;
            let (c, cs) = (req.compression, unit);
            let factory = move || cluster_encoder(c, Some(level), cs);
            let f: &EncoderFactory<'_> = &factory;
            let stats = pipeline::run(src, &to_read, &cfg, Some(f), &mut w, &on_progress)
                .map_err(|e| name_output(e, req, &tmp, &allocated))?;
            let n = w
                .finish()
                .map_err(|e| name_output(e, req, &tmp, &allocated))?;
            (stats, n, unit)
        }
        ImageFormat::Zst => {
            let unit = req.frame_size;
            let cfg = config(unit, pref, req.threads);
            let mut w = ZstWriter::new(out.writer()?, tmp.clone(), vsize, unit, level)?;
            if !out.is_stream() {
                w.set_writeback(out.file()?);
            }
            let factory = move || frame_encoder(level);
            let f: &EncoderFactory<'_> = &factory;
            let stats = pipeline::run(src, &to_read, &cfg, Some(f), &mut w, &on_progress)
                .map_err(|e| name_output(e, req, &tmp, &allocated))?;
            let n = w
                .finish()
                .map_err(|e| name_output(e, req, &tmp, &allocated))?;
            (stats, n, unit)
        }
        ImageFormat::Raw if out.is_stream() => {
            let unit = RAW_ZERO_GRANULARITY;
            let cfg = config(unit, pref, req.threads);
            let mut w = RawStreamWriter::new(out.writer()?, tmp.clone());
            let stats = pipeline::run(src, &to_read, &cfg, None, &mut w, &on_progress)
                .map_err(|e| name_output(e, req, &tmp, &allocated))?;
            let n = w
                .finish()
                .map_err(|e| name_output(e, req, &tmp, &allocated))?;
            (stats, n, unit)
        }
        ImageFormat::Raw => {
            let unit = RAW_ZERO_GRANULARITY;
            let cfg = config(unit, pref, req.threads);
            let w = RawWriter::new(out.file()?, tmp.clone(), unit, vsize);
            // The workers write their own jobs (positioned writes).
            let pw = RawPositional::new(out.file()?, tmp.clone(), unit, vsize);
            let stats = pipeline::run_with(
                src,
                &to_read,
                &cfg,
                None,
                &mut Written,
                &on_progress,
                Some(&pw),
            )
            .map_err(|e| name_output(e, req, &tmp, &allocated))?;
            w.finish()
                .map_err(|e| name_output(e, req, &tmp, &allocated))?;
            let alloc = std::fs::metadata(&tmp)
                .map(|m| image::allocated_bytes(&m))
                .unwrap_or(0);
            (stats, alloc, unit)
        }
    };
    progress.finish();
    out.commit().map_err(|e| match e {
        OutputError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
            anyhow::anyhow!(no_space(req, &tmp, &allocated))
        }
        e => anyhow::Error::new(e).context(format!("could not finish {}", req.output.display())),
    })?;
    let mut warnings = scan.warnings;
    if req.output_format == ImageFormat::Qcow2 && vsize % image::SECTOR != 0 {
        warnings.push(format!(
            "the input holds {vsize} bytes, not a whole number of 512-byte sectors: the qcow2's virtual size is {} (rounded up, as qcow2 requires; the added bytes read as zeros)",
            vsize.next_multiple_of(image::SECTOR)
        ));
    }

    let seconds = started.elapsed().as_secs_f64();
    Ok(ConvertReport {
        input: ImageSummary {
            path: req.input.clone(),
            format: src.format(),
            virtual_size: vsize,
            allocated_bytes: extent::total(&allocated),
            host_bytes: src.host_allocated_bytes(),
        },
        output: OutputSummary {
            path: req.output.clone(),
            format: req.output_format,
            bytes: out_bytes,
            compression: match req.output_format {
                ImageFormat::Qcow2 => Some(req.compression.to_string()),
                ImageFormat::Zst => Some("zstd".into()),
                ImageFormat::Raw => None,
            },
            level: (req.output_format != ImageFormat::Raw).then_some(level),
            unit_size: unit,
        },
        stats,
        fs_free_skipped: free_in_data,
        filesystems: scan
            .partitions
            .iter()
            .filter_map(|p| serde_json::to_value(p).ok())
            .collect(),
        warnings,
        seconds,
    })
}

fn config(unit: u64, preferred_read: u64, threads: usize) -> PipelineConfig {
    // A job is whole units and whole input frames/clusters, and at least 1 MiB.
    let mut job = unit.max(MIN_JOB_BYTES);
    if preferred_read > job {
        job = preferred_read.div_ceil(unit) * unit;
    }
    // Jobs in flight: enough to keep every worker busy, at most ~128 MiB of
    // guest data (each job also holds its compressed copy).
    let depth = ((IN_FLIGHT_BYTES / job) as usize).clamp(threads + 2, threads * 4);
    PipelineConfig {
        unit,
        job_bytes: job,
        threads,
        queue_depth: depth,
    }
}

fn validate(req: &ConvertRequest) -> anyhow::Result<()> {
    let cs = req.cluster_size;
    if req.output_format == ImageFormat::Qcow2
        && (!cs.is_power_of_two() || !(4096..=2 << 20).contains(&cs))
    {
        anyhow::bail!("--cluster-size must be a power of two from 4K to 2M, not {cs}");
    }
    let fs = req.frame_size;
    if req.output_format == ImageFormat::Zst && !(64 << 10..=MAX_FRAME_BYTES).contains(&fs) {
        anyhow::bail!(
            "--frame-size must be between 64K and {}M, not {fs} (larger frames need too much memory to read back)",
            MAX_FRAME_BYTES >> 20
        );
    }
    if let Some(l) = req.level {
        let ok = match (req.output_format, req.compression) {
            (ImageFormat::Qcow2, Compression::Zlib) => (0..=9).contains(&l),
            (ImageFormat::Raw, _) => true,
            _ => (-7..=22).contains(&l) && l != 0,
        };
        if !ok {
            anyhow::bail!("--level {l} is out of range (zlib: 0-9, zstd: -7..22 except 0)");
        }
    }
    Ok(())
}

/// Limits that depend on the input's size, checked before anything is
/// created: the qcow2 L1 table QEMU can read, the `.zst` seek table.
fn check_size_limits(req: &ConvertRequest, vsize: u64) -> anyhow::Result<()> {
    match req.output_format {
        ImageFormat::Qcow2 => {
            crate::output::qcow2::check_limits(vsize, req.cluster_size)?;
        }
        ImageFormat::Zst => {
            let frames = vsize.div_ceil(req.frame_size);
            if frames > MAX_FRAMES {
                anyhow::bail!(
                    "a .zst of {vsize} bytes in frames of {} would have {frames} frames, above the limit of {MAX_FRAMES}; use a larger --frame-size",
                    req.frame_size
                );
            }
        }
        ImageFormat::Raw => {}
    }
    Ok(())
}

/// A write error, told about OUT (not the hidden temporary file).
fn name_output(
    e: PipelineError,
    req: &ConvertRequest,
    tmp: &Path,
    allocated: &[crate::extent::Extent],
) -> anyhow::Error {
    match e {
        PipelineError::Write { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
            anyhow::anyhow!(no_space(req, tmp, allocated))
        }
        PipelineError::Write { source, .. } => {
            anyhow::anyhow!("{}: write failed: {source}", req.output.display())
        }
        e => e.into(),
    }
}

/// The ENOSPC sentence: where, how much was written, how much is needed.
fn no_space(req: &ConvertRequest, tmp: &Path, allocated: &[crate::extent::Extent]) -> String {
    let written = std::fs::metadata(tmp)
        .map(|m| image::allocated_bytes(&m))
        .unwrap_or(0);
    let data = extent::total(allocated);
    let dir = req
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    format!(
        "{}: no space left on the device holding {} after writing {written} bytes; the output needs up to {data} bytes (the input's data{}); free space there, write OUT elsewhere, or for finalize's workspace choose another directory with --tmp DIR",
        req.output.display(),
        dir.display(),
        if req.output_format == ImageFormat::Raw {
            ""
        } else {
            ", before compression"
        }
    )
}

/// The output path used when none is given: beside the input, with the new
/// extension (`disk.raw` -> `disk.qcow2`); `NAME.compact.EXT` if that would be
/// the input itself.
pub fn default_output(input: &Path, format: ImageFormat) -> PathBuf {
    let ext = match format {
        ImageFormat::Qcow2 => "qcow2",
        ImageFormat::Zst => "zst",
        ImageFormat::Raw => "raw",
    };
    let out = input.with_extension(ext);
    if out == input {
        input.with_extension(format!("compact.{ext}"))
    } else {
        out
    }
}
