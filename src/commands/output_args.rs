//! The output options of `compact`, `expand` and `finalize`, and the choice
//! of the output format they make. An output says what it is, or vmfinal
//! refuses: `.qcow2`/`.qcow`, `.zst` and `.raw` name their format; an
//! extension that names another format (`.vmdk`, `.gz`, ...) or none
//! (`.img`, no extension) needs `-O`; `-O` against the extension needs
//! `--force-format`; an option that does not apply to the chosen format is
//! an error, not silently ignored. `-o -` is a stream on stdout (zst or raw).
//!
//! Also the pieces every converting command shares once its conversion
//! has run: `register_temp` (the temporary output in the run's state file),
//! `publish` (checksum, manifest, report) and `emit`, and `parse_size` for
//! size options. `cli` and every command import them from here; nothing
//! here imports `cli` or another command.
//!
//! Not here: the conversion (`convert`), the writers (`output`), reading
//! stdin (`spool`).

use std::io::IsTerminal;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::convert::{self, ConvertRequest, DEFAULT_CLUSTER_SIZE, DEFAULT_FRAME_SIZE};
use crate::image::ImageFormat;
use crate::image::qcow2::Compression;
pub use crate::output::{STDIO, is_stdio};

/// Parses sizes such as `65536`, `64K`, `64KiB`, `2M`, `1G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size '{s}'"))?;
    let mult: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("invalid size suffix in '{s}' (use K, M, G or T)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// Where the artifact goes and how the run reports: every converting command.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Output")]
pub struct DestArgs {
    /// Output file, or - for stdout [default: beside IN, with the format's extension]
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Overwrite OUT if it exists
    #[arg(short, long)]
    pub force: bool,
    /// Worker threads [default: all cores]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Also write OUT.sha256 (`HASH  NAME`, as `sha256sum -c` reads it)
    #[arg(long, value_name = "ALGO")]
    pub checksum: Option<crate::artifact::ChecksumKind>,
    /// Append a build entry to this Packer-style manifest (JSON)
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// No progress and no summary
    #[arg(short, long)]
    pub quiet: bool,
}

/// How `compact` and `finalize` encode the artifact.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Format")]
pub struct EncodeArgs {
    /// Output format [default: from OUT's extension (.qcow2, .zst, .raw); qcow2 without -o; zst for -o -]
    #[arg(short = 'O', long = "output-format", value_name = "FMT")]
    pub output_format: Option<ImageFormat>,
    /// Write the -O format even though OUT's extension names another one
    #[arg(long)]
    pub force_format: bool,
    /// qcow2 cluster compression: zlib (every QEMU) or zstd (QEMU 5.1+) [default: zlib]
    #[arg(long, value_name = "CODEC")]
    pub compression: Option<Compression>,
    /// Compression level of qcow2 clusters or .zst frames [default: zlib 6, zstd 3]
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub level: Option<i32>,
    /// qcow2 cluster size, 4K to 2M [default: 64K]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub cluster_size: Option<u64>,
    /// .zst frame size, the unit of parallel work and of seeking [default: 8M]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub frame_size: Option<u64>,
}

/// The output options of `compact` and `finalize`.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    #[command(flatten)]
    pub dest: DestArgs,
    #[command(flatten)]
    pub encode: EncodeArgs,
}

impl Deref for OutputArgs {
    type Target = DestArgs;
    fn deref(&self) -> &DestArgs {
        &self.dest
    }
}

/// What a file name's extension says about its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// One vmfinal writes.
    Format(ImageFormat),
    /// Another format (`VMDK`, `gzip`, ...), which vmfinal does not write.
    Foreign(&'static str),
    /// Nothing definite: `.img`, `.bin`, no extension.
    Unclear,
}

/// The format `path`'s extension names.
pub fn named_by_extension(path: &Path) -> Named {
    let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
        return Named::Unclear;
    };
    let foreign = match ext.to_ascii_lowercase().as_str() {
        "qcow2" | "qcow" => return Named::Format(ImageFormat::Qcow2),
        "zst" | "zstd" => return Named::Format(ImageFormat::Zst),
        "raw" => return Named::Format(ImageFormat::Raw),
        "vmdk" => "VMDK",
        "vhd" | "vpc" => "VHD",
        "vhdx" => "VHDX",
        "vdi" => "VDI",
        "qed" => "QED",
        "hdd" | "hds" => "Parallels",
        "dmg" => "DMG",
        "iso" => "ISO 9660",
        "ova" | "ovf" => "OVF/OVA",
        "tar" => "tar",
        "gz" | "tgz" => "gzip",
        "xz" | "txz" => "xz",
        "bz2" => "bzip2",
        "lz4" => "LZ4",
        "lzma" => "LZMA",
        "zip" => "zip",
        "7z" => "7-Zip",
        _ => return Named::Unclear,
    };
    Named::Foreign(foreign)
}

/// `.qcow2`, `.zst`, `.raw`.
fn dot_ext(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Qcow2 => ".qcow2",
        ImageFormat::Zst => ".zst",
        ImageFormat::Raw => ".raw",
    }
}

fn ext_of(path: &Path) -> String {
    path.extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_else(|| "no extension".into())
}

/// The format `compact`/`finalize` write: `-O`, else OUT's extension; qcow2
/// when no OUT is given; zst for stdout. Errors name the choice to make.
pub fn choose_format(
    output: Option<&Path>,
    given: Option<ImageFormat>,
    force_format: bool,
) -> anyhow::Result<ImageFormat> {
    let Some(out) = output else {
        return Ok(given.unwrap_or(ImageFormat::Qcow2));
    };
    if is_stdio(out) {
        let f = given.unwrap_or(ImageFormat::Zst);
        if f == ImageFormat::Qcow2 {
            bail!(
                "qcow2 cannot be written to stdout: its tables and header are written after the data, which needs a seekable file; use -O zst or -O raw for a stream, or -o FILE.qcow2"
            );
        }
        return Ok(f);
    }
    let shown = out.display();
    match (named_by_extension(out), given) {
        (Named::Format(f), None) => Ok(f),
        (Named::Format(f), Some(g)) if f == g || force_format => Ok(g),
        (Named::Format(f), Some(g)) => bail!(
            "{shown}: the name says {f} but -O {g} was given; name it {} or add --force-format",
            dot_ext(g)
        ),
        (Named::Foreign(name), None) => bail!(
            "{shown}: {} names {name}, which vmfinal does not write; name OUT .qcow2, .zst or .raw (or give -O FMT with --force-format to keep this name)",
            ext_of(out)
        ),
        (Named::Foreign(_), Some(g)) if force_format => Ok(g),
        (Named::Foreign(name), Some(g)) => bail!(
            "{shown}: {} names {name} but -O {g} was given; name it {} or add --force-format",
            ext_of(out),
            dot_ext(g)
        ),
        (Named::Unclear, Some(g)) => Ok(g),
        (Named::Unclear, None) => bail!(
            "{shown}: {} does not say which format to write; give -O qcow2, -O zst or -O raw (or name OUT .qcow2, .zst or .raw)",
            ext_of(out)
        ),
    }
}

impl EncodeArgs {
    /// Refuses options that do nothing for `format`.
    pub fn check_applies(&self, format: ImageFormat) -> anyhow::Result<()> {
        if let Some(c) = self.compression
            && format != ImageFormat::Qcow2
        {
            match format {
                ImageFormat::Zst => bail!(
                    "--compression {c} chooses the codec of qcow2 clusters; a .zst output is always zstd (its level is --level)"
                ),
                _ => bail!("--compression {c} does not apply: raw output is not compressed"),
            }
        }
        if let Some(l) = self.level
            && format == ImageFormat::Raw
        {
            bail!("--level {l} does not apply: raw output is not compressed");
        }
        if self.cluster_size.is_some() && format != ImageFormat::Qcow2 {
            bail!("--cluster-size applies to qcow2 output only, not {format}");
        }
        if self.frame_size.is_some() && format != ImageFormat::Zst {
            bail!("--frame-size applies to .zst output only, not {format}");
        }
        Ok(())
    }
}

impl DestArgs {
    /// Refuses what a stream on stdout cannot carry.
    pub fn check_stream(&self) -> anyhow::Result<()> {
        if !self.output.as_deref().is_some_and(is_stdio) {
            return Ok(());
        }
        if self.json {
            bail!("--json prints the report on stdout, which -o - uses for the image");
        }
        if self.checksum.is_some() {
            bail!(
                "--checksum writes OUT.sha256 beside OUT, and -o - has no OUT; pipe the stream through `tee >(sha256sum)` instead"
            );
        }
        if self.manifest.is_some() {
            bail!("--manifest lists OUT's file, and -o - has no file");
        }
        if std::io::stdout().is_terminal() {
            bail!(
                "-o -: stdout is a terminal; pipe or redirect it (vmfinal writes no image data to a terminal)"
            );
        }
        Ok(())
    }

    fn base_request(
        &self,
        input: PathBuf,
        input_format: Option<ImageFormat>,
        format: ImageFormat,
    ) -> anyhow::Result<ConvertRequest> {
        self.check_stream()?;
        let output = match &self.output {
            Some(o) => o.clone(),
            None if is_stdio(&input) => {
                bail!("reading stdin (-) needs -o OUT, or -o - for stdout")
            }
            None => convert::default_output(&input, format),
        };
        Ok(ConvertRequest {
            input,
            input_format,
            output,
            output_format: format,
            compression: Compression::Zlib,
            level: None,
            threads: super::threads_or_default(self.threads),
            cluster_size: DEFAULT_CLUSTER_SIZE,
            frame_size: DEFAULT_FRAME_SIZE,
            force: self.force,
            quiet: self.quiet,
            fs_aware: true,
        })
    }

    /// `expand`'s request: always a sparse raw image (a file, or a raw stream
    /// on stdout). An OUT whose extension names another format is refused.
    pub fn expand_request(
        &self,
        input: PathBuf,
        input_format: Option<ImageFormat>,
    ) -> anyhow::Result<ConvertRequest> {
        if let Some(out) = self.output.as_deref().filter(|o| !is_stdio(o)) {
            match named_by_extension(out) {
                Named::Format(ImageFormat::Raw) | Named::Unclear => {}
                Named::Format(f) => bail!(
                    "{}: expand writes a raw image, but the name says {f}; name it .raw (or use `vmfinal compact -o {}`)",
                    out.display(),
                    out.display()
                ),
                Named::Foreign(name) => bail!(
                    "{}: expand writes a raw image, but {} names {name}; name it .raw",
                    out.display(),
                    ext_of(out)
                ),
            }
        }
        let mut req = self.base_request(input, input_format, ImageFormat::Raw)?;
        // Expanding restores the image as it was: free space is copied.
        req.fs_aware = false;
        Ok(req)
    }
}

impl OutputArgs {
    /// The conversion request for `input`, after choosing and checking the
    /// output format.
    pub fn request(
        &self,
        input: PathBuf,
        input_format: Option<ImageFormat>,
    ) -> anyhow::Result<ConvertRequest> {
        let e = &self.encode;
        let format = choose_format(self.output.as_deref(), e.output_format, e.force_format)?;
        e.check_applies(format)?;
        let mut req = self.dest.base_request(input, input_format, format)?;
        req.compression = e.compression.unwrap_or(Compression::Zlib);
        req.level = e.level;
        req.cluster_size = e.cluster_size.unwrap_or(DEFAULT_CLUSTER_SIZE);
        req.frame_size = e.frame_size.unwrap_or(DEFAULT_FRAME_SIZE);
        Ok(req)
    }

    /// The same options with no JSON and no summary (finalize prints its
    /// own report after publishing).
    pub fn quieted(&self) -> OutputArgs {
        let mut o = self.clone();
        o.dest.json = false;
        o.dest.quiet = true;
        o
    }
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
        eprintln!("vmfinal: warning: {}", crate::text::one_safe_line(w));
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

#[cfg(test)]
mod tests {
    use super::*;
    use ImageFormat::*;

    fn pick(
        out: Option<&str>,
        given: Option<ImageFormat>,
        force: bool,
    ) -> Result<ImageFormat, String> {
        choose_format(out.map(Path::new), given, force).map_err(|e| e.to_string())
    }

    #[test]
    fn extension_names_the_format() {
        assert_eq!(pick(Some("a.qcow2"), None, false), Ok(Qcow2));
        assert_eq!(pick(Some("a.QCOW"), None, false), Ok(Qcow2));
        assert_eq!(pick(Some("dir.d/a.zst"), None, false), Ok(Zst));
        assert_eq!(pick(Some("a.raw"), None, false), Ok(Raw));
        assert_eq!(pick(None, None, false), Ok(Qcow2));
        assert_eq!(pick(None, Some(Zst), false), Ok(Zst));
        assert_eq!(pick(Some("a.qcow2"), Some(Qcow2), false), Ok(Qcow2));
    }

    #[test]
    fn unclear_names_need_o() {
        for n in ["a.img", "a", "a.bin", "dir.x/a"] {
            let e = pick(Some(n), None, false).unwrap_err();
            assert!(e.contains("-O qcow2, -O zst or -O raw"), "{n}: {e}");
            assert_eq!(pick(Some(n), Some(Raw), false), Ok(Raw));
        }
    }

    #[test]
    fn foreign_names_and_contradictions_need_force_format() {
        let e = pick(Some("a.vmdk"), None, false).unwrap_err();
        assert!(e.contains("VMDK") && e.contains("--force-format"), "{e}");
        let e = pick(Some("a.vmdk"), Some(Qcow2), false).unwrap_err();
        assert!(e.contains("--force-format"), "{e}");
        assert_eq!(pick(Some("a.vmdk"), Some(Qcow2), true), Ok(Qcow2));
        let e = pick(Some("a.qcow2"), Some(Zst), false).unwrap_err();
        assert!(
            e.contains("says qcow2") && e.contains("--force-format"),
            "{e}"
        );
        assert_eq!(pick(Some("a.qcow2"), Some(Zst), true), Ok(Zst));
        for n in ["a.gz", "a.xz", "a.vhd", "a.vhdx", "a.vdi"] {
            assert!(pick(Some(n), None, false).is_err(), "{n}");
        }
    }

    #[test]
    fn stdout_streams_zst_or_raw() {
        assert_eq!(pick(Some("-"), None, false), Ok(Zst));
        assert_eq!(pick(Some("-"), Some(Raw), false), Ok(Raw));
        let e = pick(Some("-"), Some(Qcow2), false).unwrap_err();
        assert!(e.contains("qcow2 cannot be written to stdout"), "{e}");
    }

    #[test]
    fn options_that_do_not_apply_are_refused() {
        let base = EncodeArgs {
            output_format: None,
            force_format: false,
            compression: None,
            level: None,
            cluster_size: None,
            frame_size: None,
        };
        let with = |f: &dyn Fn(&mut EncodeArgs)| {
            let mut e = base.clone();
            f(&mut e);
            e
        };
        let comp = with(&|e| e.compression = Some(Compression::Zstd));
        assert!(comp.check_applies(Qcow2).is_ok());
        assert!(comp.check_applies(Zst).is_err());
        assert!(comp.check_applies(Raw).is_err());
        let level = with(&|e| e.level = Some(5));
        assert!(level.check_applies(Zst).is_ok());
        assert!(level.check_applies(Raw).is_err());
        assert!(
            with(&|e| e.cluster_size = Some(4096))
                .check_applies(Zst)
                .is_err()
        );
        assert!(
            with(&|e| e.frame_size = Some(1 << 20))
                .check_applies(Qcow2)
                .is_err()
        );
        assert!(base.check_applies(Raw).is_ok());
    }
}
