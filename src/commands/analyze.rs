//! `vmfinal analyze IMG`: what the image holds and what compaction would
//! save: partitions and filesystems, used and free space, free space that
//! is not zero (garbage a zero-fill would reclaim), holes, estimated output
//! sizes, and an efficiency figure (live filesystem bytes / allocated bytes).

use std::path::{Path, PathBuf};

use crate::extent::{self, Extent};
use crate::guest::state::State;
use crate::image::{self, BlockSource, ImageFormat};
use crate::inspect::{self, Inspection};
use crate::pipeline::is_zero;
use crate::profile::Profile;
use crate::report::human_bytes;
use crate::session::{self, GuestOptions};

/// Granularity of the free-but-not-zero count.
const BLOCK: usize = 4096;

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// The image (raw or qcow2)
    pub image: PathBuf,
    /// Input format [default: from the name (.raw, .qcow2, .zst); other names are probed]
    #[arg(long = "format", value_name = "FMT")]
    pub format: Option<ImageFormat>,
    /// Machine-readable report on stdout
    #[arg(long)]
    pub json: bool,
    /// Also look inside the guest (root): largest directories and files,
    /// packages by installed size, what each profile would remove,
    /// duplicates. The guest is mounted read-only, as `finalize --dry-run` does
    #[arg(long)]
    pub guest: bool,
    /// Directory levels below / reported and drawn (with --guest) [default: 3]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub depth: Option<u16>,
    /// Entries per list (with --guest) [default: 10]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub top: Option<u32>,
    /// Write a self-contained HTML report (treemap, packages, estimates) to FILE; implies --guest
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Profiles whose dry-run plans are reported (with --guest): defaults, all, none, NAME, +NAME, -NAME [default: defaults]
    #[arg(long, value_name = "LIST")]
    pub profiles: Option<String>,
    /// Also plan this profile file (repeatable)
    #[arg(long = "profile-file", value_name = "FILE")]
    pub profile_files: Vec<PathBuf>,
    /// Add the profiles in this directory (*.yaml) (repeatable)
    #[arg(long = "profile-dir", value_name = "DIR")]
    pub profile_dirs: Vec<PathBuf>,
    /// Set a profile variable, e.g. kernels.keep=2 (repeatable)
    #[arg(long = "set", value_name = "PROFILE.VAR=VALUE")]
    pub sets: Vec<String>,
    /// Directory for the raw copy a qcow2 or .zst input is read through [default: beside the image]
    #[arg(long, value_name = "DIR")]
    pub tmp: Option<PathBuf>,
}

/// Bytes of non-zero 4 KiB blocks inside `ranges`.
fn nonzero_bytes(src: &dyn BlockSource, ranges: &[Extent]) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    for r in ranges {
        let mut off = r.start;
        while off < r.end() {
            crate::interrupt::checkpoint("analyze")?;
            let len = ((r.end() - off) as usize).min(buf.len());
            src.read_at(&mut buf[..len], off)?;
            n += buf[..len]
                .chunks(BLOCK)
                .filter(|c| !is_zero(c))
                .map(|c| c.len() as u64)
                .sum::<u64>();
            off += len as u64;
        }
    }
    Ok(n)
}

fn bar(part: u64, whole: u64, width: usize) -> String {
    let n = if whole == 0 {
        0
    } else {
        ((part as f64 / whole as f64) * width as f64).round() as usize
    };
    format!(
        "{}{}",
        "#".repeat(n.min(width)),
        ".".repeat(width - n.min(width))
    )
}

/// Writes a line of the report text.
macro_rules! out {
    ($w:expr) => { writeln!($w)? };
    ($w:expr, $($t:tt)*) => { writeln!($w, $($t)*)? };
}

/// The disk-level facts `analyze` reports without looking inside the guest.
pub struct DiskFacts {
    pub json: serde_json::Value,
    pub text: String,
    pub allocated_bytes: u64,
    /// Allocated bytes outside the filesystems' free space (what compaction reads).
    pub read_bytes: u64,
    pub est_zlib: u64,
    pub est_zstd: u64,
    /// The image and what compaction reads of it, for a fresh sample of
    /// what stays after cleaning.
    image: PathBuf,
    format: Option<ImageFormat>,
    to_read: Vec<crate::extent::Extent>,
}

/// The qcow2 estimates after cleaning.
pub struct After {
    pub zlib: u64,
    pub zstd: u64,
    /// `resampled`: a fresh sample of what stays (the removed files'
    /// extents left out); `linear`: today's figures scaled by the bytes
    /// left (the removals could not be mapped to the disk).
    pub method: &'static str,
    pub sampled_bytes: u64,
}

impl DiskFacts {
    /// The qcow2 estimates scaled to what is left after the profiles free
    /// `freed` bytes of data (zlib, zstd): a linear estimate.
    pub fn after(&self, freed: u64) -> (u64, u64) {
        let left = self.read_bytes.saturating_sub(freed);
        let scale = |e: u64| {
            if self.read_bytes == 0 {
                0
            } else {
                (e as f64 * left as f64 / self.read_bytes as f64) as u64
            }
        };
        (scale(self.est_zlib), scale(self.est_zstd))
    }

    /// The estimates after `i`'s plans: a fresh compression sample of what
    /// compaction would still read (its ranges less the removed files'
    /// extents), scaled to those bytes; the linear estimate when the
    /// removals could not be mapped.
    pub fn after_cleaning(&self, i: &Inspection) -> anyhow::Result<After> {
        let Some(removed) = &i.removed_extents else {
            let (zlib, zstd) = self.after(i.freed_bytes_or_zero());
            return Ok(After {
                zlib,
                zstd,
                method: "linear",
                sampled_bytes: 0,
            });
        };
        let stays = crate::extent::subtract(&self.to_read, removed);
        let left = crate::extent::total(&stays);
        let src = image::open(&self.image, self.format)?;
        let (sampled, zl, zs) = crate::estimate::sample_ratio(src.as_ref(), &stays)?;
        let est = |c: u64| {
            if sampled == 0 {
                0
            } else {
                (left as f64 * c as f64 / sampled as f64) as u64
            }
        };
        Ok(After {
            zlib: est(zl),
            zstd: est(zs),
            method: "resampled",
            sampled_bytes: sampled,
        })
    }
}

/// Reads the image's partitions, filesystems, free space and estimates.
pub fn disk_facts(image: &Path, format: Option<ImageFormat>) -> anyhow::Result<DiskFacts> {
    use std::fmt::Write;
    let mut so = String::new();
    let src = image::open(image, format)?;
    let vsize = src.virtual_size();
    let allocated = extent::normalize(src.data_extents()?);
    let alloc_bytes = extent::total(&allocated);
    let scan = crate::fs::scan(src.as_ref(), &allocated);
    let free_alloc = extent::subtract(&allocated, &extent::subtract(&allocated, &scan.free));
    let to_read = extent::subtract(&allocated, &scan.free);

    let mut parts = Vec::new();
    let mut total_fnz = 0u64;
    let mut live = 0u64;
    for p in &scan.partitions {
        let fnz = nonzero_bytes(
            src.as_ref(),
            &extent::clip(&free_alloc, p.start, p.start + p.size),
        )?;
        total_fnz += fnz;
        let part_alloc = extent::total(&extent::clip(&allocated, p.start, p.start + p.size));
        live += p.used_bytes.unwrap_or(0).min(part_alloc);
        let mut v = serde_json::to_value(p)?;
        let mut lv_fnz = Vec::new();
        for lv in &p.logical_volumes {
            let alloc_free =
                extent::subtract(&allocated, &extent::subtract(&allocated, &lv.disk_free));
            lv_fnz.push(nonzero_bytes(src.as_ref(), &alloc_free)?);
        }
        if let Some(o) = v.as_object_mut() {
            o.insert("free_not_zero_bytes".into(), fnz.into());
            if let Some(serde_json::Value::Array(lvs)) = o.get_mut("logical_volumes") {
                for (l, n) in lvs.iter_mut().zip(&lv_fnz) {
                    if let Some(lo) = l.as_object_mut() {
                        lo.insert("free_not_zero_bytes".into(), (*n).into());
                    }
                }
            }
        }
        parts.push((p.clone(), fnz, v, lv_fnz));
    }
    let (sampled, zl, zs) = crate::estimate::sample_ratio(src.as_ref(), &to_read)?;
    let read_bytes = extent::total(&to_read);
    let est = |c: u64| {
        if sampled == 0 {
            0
        } else {
            (read_bytes as f64 * c as f64 / sampled as f64) as u64
        }
    };
    let fs_known = scan.partitions.iter().any(|p| p.used_bytes.is_some());
    let efficiency = (fs_known && alloc_bytes > 0).then(|| live as f64 / alloc_bytes as f64);

    let json = serde_json::json!({
        "schema_version": crate::report::JSON_SCHEMA_VERSION,
        "path": image,
        "format": src.format(),
        "virtual_size": vsize,
        "allocated_bytes": alloc_bytes,
        "holes_bytes": vsize - alloc_bytes.min(vsize),
        "partition_table": scan.table,
        "partitions": parts.iter().map(|p| p.2.clone()).collect::<Vec<_>>(),
        "free_not_zero_bytes": total_fnz,
        "bytes_to_read": read_bytes,
        "estimate": { "sampled_bytes": sampled, "qcow2_zlib_bytes": est(zl), "qcow2_zstd_bytes": est(zs) },
        "efficiency": efficiency,
        "warnings": scan.warnings,
    });
    out!(
        so,
        "{}: {} image, {} virtual, {} allocated, {} holes",
        image.display(),
        src.format(),
        human_bytes(vsize),
        human_bytes(alloc_bytes),
        human_bytes(vsize - alloc_bytes.min(vsize))
    );
    out!(so, "partition table: {}", table_name(scan.table));
    out!(so);
    out!(
        so,
        "{:>3}  {:<10} {:<12} {:>10} {:>10} {:>10} {:>12}  used",
        "#",
        "filesystem",
        "label",
        "size",
        "used",
        "free",
        "free, dirty"
    );
    for (p, fnz, _, lv_fnz) in &parts {
        let (used, free) = (
            p.used_bytes.map(human_bytes).unwrap_or("-".into()),
            p.free_bytes.map(human_bytes).unwrap_or("-".into()),
        );
        out!(
            so,
            "{:>3}  {:<10} {:<12} {:>10} {:>10} {:>10} {:>12}  [{}]",
            p.index,
            printable(&p.filesystem),
            printable(&p.label),
            human_bytes(p.size),
            used,
            free,
            human_bytes(*fnz),
            bar(p.used_bytes.unwrap_or(p.size), p.size, 30)
        );
        for (lv, fnz) in p.logical_volumes.iter().zip(lv_fnz) {
            let (used, free) = (
                lv.used_bytes.map(human_bytes).unwrap_or("-".into()),
                lv.free_bytes.map(human_bytes).unwrap_or("-".into()),
            );
            let fs = if lv.kind == "linear" {
                lv.filesystem.clone()
            } else {
                lv.kind.clone()
            };
            out!(
                so,
                "     LV {:<20} {:<12} {:<12} {:>10} {:>10} {:>10} {:>12}  [{}]",
                printable(&lv.name),
                fs,
                printable(&lv.label),
                human_bytes(lv.size),
                used,
                free,
                human_bytes(*fnz),
                bar(lv.used_bytes.unwrap_or(lv.size), lv.size, 30)
            );
        }
    }
    out!(so);
    out!(
        so,
        "free but not zero:  {} (what a zero-fill would reclaim; vmfinal compact skips it without one)",
        human_bytes(total_fnz)
    );
    out!(
        so,
        "compact would read: {} of {} allocated",
        human_bytes(read_bytes),
        human_bytes(alloc_bytes)
    );
    out!(
        so,
        "estimated qcow2:    zlib {}, zstd {} (from a {} sample)",
        human_bytes(est(zl)),
        human_bytes(est(zs)),
        human_bytes(sampled)
    );
    if let Some(e) = efficiency {
        out!(
            so,
            "efficiency:         {:.1}% of allocated bytes are live filesystem data  [{}]",
            e * 100.0,
            bar((e * 1000.0) as u64, 1000, 30)
        );
    }
    for w in &scan.warnings {
        out!(so, "warning: {}", printable(w));
    }
    Ok(DiskFacts {
        json,
        text: so,
        allocated_bytes: alloc_bytes,
        read_bytes,
        image: image.to_path_buf(),
        format,
        to_read: to_read.clone(),
        est_zlib: est(zl),
        est_zstd: est(zs),
    })
}

impl AnalyzeArgs {
    fn depth_or_default(&self) -> usize {
        self.depth.map_or(3, usize::from)
    }

    fn top_or_default(&self) -> usize {
        self.top.map_or(10, |t| t as usize)
    }

    /// The options that only mean something inside the guest, as given.
    fn guest_only_options(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (given, name) in [
            (self.depth.is_some(), "--depth"),
            (self.top.is_some(), "--top"),
            (self.profiles.is_some(), "--profiles"),
            (!self.profile_files.is_empty(), "--profile-file"),
            (!self.profile_dirs.is_empty(), "--profile-dir"),
            (!self.sets.is_empty(), "--set"),
            (self.tmp.is_some(), "--tmp"),
        ] {
            if given {
                v.push(name);
            }
        }
        v
    }

    fn guest_args(&self) -> GuestOptions {
        GuestOptions {
            profiles: self.profiles.clone().unwrap_or_else(|| "defaults".into()),
            profile_files: self.profile_files.clone(),
            profile_dirs: self.profile_dirs.clone(),
            sets: self.sets.clone(),
            dry_run: true,
            allow_run: false,
            reclaim: crate::reclaim::ReclaimMode::None,
            // Only a report: what cannot be mounted here is a warning.
            skip_unmountable: true,
        }
    }
}

/// The raw copy a qcow2 or .zst input is mounted through; removed on drop.
struct RawCopy(PathBuf);
impl Drop for RawCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Mounts the guest of the raw disk `raw` read-only (as a dry run does),
/// plans `profiles` and walks it.
pub fn inspect_raw(
    raw: &Path,
    profiles: &[Profile],
    state: &mut State,
    tag: &str,
    depth: usize,
    top: usize,
) -> anyhow::Result<Inspection> {
    session::with_dry_run_guest(raw, profiles, state, tag, |g, plans| {
        let st = crate::progress::stage("inspect");
        let removed = inspect::extents::removed_extents(g, &plans);
        let r = inspect::inspect(
            &g.root,
            g.mounted.clone(),
            g.warnings.clone(),
            plans,
            depth,
            top,
        )
        .map(|mut i| {
            i.removed_extents = removed;
            i
        });
        st.done();
        r
    })
}

/// `inspect_raw` of any input: a qcow2 or .zst is first expanded into a
/// sparse raw copy (as `finalize` builds its workspace).
fn inspect_image(
    args: &AnalyzeArgs,
    profiles: &[Profile],
    state: &mut State,
) -> anyhow::Result<Inspection> {
    let fmt = image::open(&args.image, args.format)?.format();
    let (depth, top) = (args.depth_or_default(), args.top_or_default());
    if fmt == ImageFormat::Raw {
        return inspect_raw(&args.image, profiles, state, "inspect", depth, top);
    }
    let path = crate::workspace::path(args.tmp.as_deref(), &args.image, &args.image);
    state.add_file(&path)?;
    state.add_file(&crate::output::temp_path_for(&path))?;
    let copy = RawCopy(path.clone());
    let req = crate::convert::ConvertRequest {
        input: args.image.clone(),
        input_format: args.format,
        output: path,
        output_format: ImageFormat::Raw,
        compression: crate::image::qcow2::Compression::Zlib,
        level: None,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cluster_size: 65536,
        frame_size: 4 << 20,
        force: false,
        quiet: true,
        fs_aware: true,
    };
    crate::convert::convert(&req).map_err(|e| e.context("cannot build the raw copy to mount"))?;
    let r = inspect_raw(&copy.0, profiles, state, "inspect", depth, top);
    drop(copy);
    r
}

/// Writes `text` to `path` through a temporary file renamed into place.
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let t = crate::output::TempOutput::create(path, true)?;
    t.file().write_all(text.as_bytes())?;
    t.commit()?;
    Ok(())
}

/// A guest path or name for the terminal.
fn shown(b: &[u8]) -> String {
    let e = crate::report::escape_bytes(b);
    if e.len() == b.len() + 2 {
        String::from_utf8_lossy(b).into_owned()
    } else {
        e
    }
}

/// The human report of what is inside the guest.
pub fn guest_text(
    insp: &Inspection,
    facts: &DiskFacts,
    after: &After,
    top: usize,
) -> anyhow::Result<String> {
    use std::fmt::Write;
    let mut so = String::new();
    let mounts: Vec<String> = insp
        .mounts
        .iter()
        .map(|m| {
            format!(
                "{} ({} on partition {})",
                shown(m.mountpoint.as_bytes()),
                m.fstype,
                m.partition
            )
        })
        .collect();
    out!(so);
    out!(so, "guest (mounted read-only): {}", mounts.join(", "));
    for w in &insp.warnings {
        out!(so, "warning: {}", printable(w));
    }
    let total = insp.tree.allocated;
    out!(
        so,
        "{} files, {} allocated ({} apparent){}",
        insp.files,
        human_bytes(total),
        human_bytes(insp.tree.apparent),
        if insp.unreadable_dirs > 0 {
            format!(", {} directories not read", insp.unreadable_dirs)
        } else {
            String::new()
        }
    );
    out!(so);
    out!(so, "largest directories (depth {}):", insp.depth);
    for n in insp.largest_dirs(top) {
        let rem: u64 = n.removable.iter().sum();
        out!(
            so,
            "  {:>10}  [{}]  {}{}",
            human_bytes(n.allocated),
            bar(n.allocated, total, 20),
            shown(&n.path),
            if rem > 0 {
                format!("  ({} removable)", human_bytes(rem))
            } else {
                String::new()
            }
        );
    }
    out!(so);
    out!(so, "largest files:");
    for f in &insp.top_files {
        out!(
            so,
            "  {:>10}  [{}]  {}{}",
            human_bytes(f.allocated_bytes),
            bar(f.allocated_bytes, total, 20),
            shown(f.path.as_bytes()),
            f.removed_by
                .as_ref()
                .map(|p| format!("  ({p})"))
                .unwrap_or_default()
        );
    }
    for db in &insp.packages {
        out!(so);
        if !db.readable {
            out!(
                so,
                "packages ({}, {}): not read: {}",
                db.manager,
                shown(db.database.as_bytes()),
                printable(db.reason.as_deref().unwrap_or(""))
            );
            continue;
        }
        out!(
            so,
            "packages ({}, {}): {} installed, {} by the database",
            db.manager,
            shown(db.database.as_bytes()),
            db.packages.len(),
            human_bytes(db.total_installed_bytes)
        );
        let max = db.packages.first().map(|p| p.installed_bytes).unwrap_or(0);
        for p in db.packages.iter().take(top) {
            out!(
                so,
                "  {:>10}  [{}]  {} {}",
                human_bytes(p.installed_bytes),
                bar(p.installed_bytes, max, 20),
                shown(p.name.as_bytes()),
                shown(p.version.as_bytes())
            );
        }
        if let Some(r) = &db.reason {
            out!(so, "  note: {}", printable(r));
        }
    }
    out!(so);
    out!(
        so,
        "profiles (dry run: what each would free, net of what its writes take):"
    );
    let freed = insp.freed_bytes_or_zero();
    for p in &insp.profiles {
        let note = if p.applicable && p.allocated_bytes > 0 {
            format!(
                "{} paths; removes {}, writes take {}",
                p.paths().count(),
                human_bytes(p.removed_bytes),
                human_bytes(p.allocated_bytes)
            )
        } else if p.applicable {
            format!("{} paths", p.paths().count())
        } else {
            p.reason.clone().unwrap_or_default()
        };
        out!(
            so,
            "  {:<16} {:>10}  [{}]  {}",
            p.name,
            crate::text::human_signed(p.freed_bytes),
            bar(u64::try_from(p.freed_bytes).unwrap_or(0), total, 20),
            note
        );
    }
    out!(
        so,
        "  {:<16} {:>10}  ({} still in use after)",
        "total",
        human_bytes(freed),
        human_bytes(total.saturating_sub(freed))
    );
    let d = &insp.duplicates;
    out!(so);
    out!(
        so,
        "duplicates: {} files in {} groups; a dedup would save {}",
        d.files,
        d.groups,
        human_bytes(d.saved_bytes)
    );
    for g in d.largest.iter().take(top.min(5)) {
        out!(
            so,
            "  {:>10}  {} x {}  {}",
            human_bytes(g.saved_bytes),
            g.paths.len(),
            human_bytes(g.size),
            g.paths
                .iter()
                .take(2)
                .map(|p| shown(p.as_bytes()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out!(so);
    out!(
        so,
        "estimated qcow2 after cleaning: zlib {}, zstd {} (now {}, {}; {})",
        human_bytes(after.zlib),
        human_bytes(after.zstd),
        human_bytes(facts.est_zlib),
        human_bytes(facts.est_zstd),
        if after.method == "resampled" {
            "a fresh sample of what stays"
        } else {
            "scaled by the bytes the profiles free"
        }
    );
    Ok(so)
}

/// The JSON of the estimates before and after cleaning.
pub fn estimate_json(facts: &DiskFacts, freed: u64, after: &After) -> serde_json::Value {
    serde_json::json!({
        "freed_bytes": freed,
        "bytes_to_read": facts.read_bytes.saturating_sub(freed),
        "qcow2_zlib_bytes": after.zlib,
        "qcow2_zstd_bytes": after.zstd,
        "method": after.method,
        "sampled_bytes": after.sampled_bytes,
    })
}

pub fn run(args: &AnalyzeArgs) -> anyhow::Result<super::ExitCode> {
    let want_guest = args.guest || args.html.is_some();
    let stray = args.guest_only_options();
    if !want_guest && !stray.is_empty() {
        anyhow::bail!(
            "{} only apply to the look inside the guest: add --guest (or --html FILE)",
            stray.join(", ")
        );
    }
    if let Some(p) = &args.html {
        // Before any work: the page may replace a regular file only.
        crate::output::check_target(p, true)?;
    }
    let mut state = if want_guest {
        Some(session::prepare_privileged("analyze --guest")?)
    } else {
        None
    };
    let profiles = if want_guest {
        args.guest_args().selected()?
    } else {
        Vec::new()
    };
    let facts = disk_facts(&args.image, args.format)?;
    let insp = match state.as_mut() {
        Some(st) => Some(inspect_image(args, &profiles, st)?),
        None => None,
    };
    let after = match &insp {
        Some(i) => Some(facts.after_cleaning(i)?),
        None => None,
    };
    if let (Some(path), Some(i), Some(af)) = (&args.html, &insp, &after) {
        let (zl, zs) = (af.zlib, af.zstd);
        let page = inspect::html::render(&inspect::html::Page {
            title: args.image.display().to_string(),
            snapshots: vec![inspect::html::Snapshot {
                label: "guest".into(),
                insp: i,
            }],
            estimates: vec![
                ("allocated now".into(), facts.allocated_bytes),
                ("qcow2 zlib now (est.)".into(), facts.est_zlib),
                ("qcow2 zlib after cleaning (est.)".into(), zl),
                ("qcow2 zstd now (est.)".into(), facts.est_zstd),
                ("qcow2 zstd after cleaning (est.)".into(), zs),
            ],
        });
        write_file(path, &page)?;
    }
    if args.json {
        let mut v = facts.json.clone();
        if let (Some(i), Some(af), Some(o)) = (&insp, &after, v.as_object_mut()) {
            o.insert("guest".into(), i.to_json(args.top_or_default()));
            o.insert(
                "estimate_after_cleaning".into(),
                estimate_json(&facts, i.freed_bytes_or_zero(), af),
            );
        }
        crate::report::print_json(&v)?;
        return Ok(0);
    }
    let mut text = facts.text.clone();
    if let (Some(i), Some(af)) = (&insp, &after) {
        text.push_str(&guest_text(i, &facts, af, args.top_or_default())?);
    }
    crate::report::print_stdout(text.trim_end())?;
    Ok(0)
}

/// Partition tables as people write them.
fn table_name(t: crate::disk::TableKind) -> &'static str {
    match t {
        crate::disk::TableKind::Gpt => "GPT",
        crate::disk::TableKind::Mbr => "MBR",
        crate::disk::TableKind::None => "none (a filesystem on the whole disk, or nothing known)",
    }
}

/// Text from the guest (labels), escaped only where it needs it.
fn printable(s: &str) -> String {
    let e = crate::report::escape(s);
    if e.len() == s.len() + 2 {
        s.to_string()
    } else {
        e
    }
}

/// `finalize --report FILE.html`: the guest before cleaning (read before
/// the profiles run), then after it; written once the artifact exists.
pub struct FinalizeReport {
    path: PathBuf,
    before: Inspection,
    facts: DiskFacts,
    /// Sampled before cleaning changes the workspace.
    after: After,
}

impl FinalizeReport {
    /// Inspects the raw workspace before cleaning.
    pub fn before(
        path: &Path,
        workspace: &Path,
        profiles: &[Profile],
        state: &mut State,
    ) -> anyhow::Result<Self> {
        let facts = disk_facts(workspace, Some(ImageFormat::Raw))?;
        let before = inspect_raw(workspace, profiles, state, "before", 3, 10)?;
        let after = facts.after_cleaning(&before)?;
        Ok(Self {
            path: path.to_owned(),
            before,
            facts,
            after,
        })
    }

    /// Inspects the cleaned workspace (unless a dry run) and writes the page;
    /// `artifact`: the output's name and bytes.
    pub fn write(
        self,
        workspace: &Path,
        profiles: &[Profile],
        state: &mut State,
        artifact: Option<(String, u64)>,
    ) -> anyhow::Result<()> {
        let after = match artifact {
            Some(_) => Some(inspect_raw(workspace, profiles, state, "after", 3, 10)?),
            None => None,
        };
        let (zl, zs) = (self.after.zlib, self.after.zstd);
        let mut estimates = vec![
            ("allocated before".to_string(), self.facts.allocated_bytes),
            ("qcow2 zlib before (est.)".to_string(), self.facts.est_zlib),
            ("qcow2 zstd before (est.)".to_string(), self.facts.est_zstd),
            ("qcow2 zlib after cleaning (est.)".to_string(), zl),
            ("qcow2 zstd after cleaning (est.)".to_string(), zs),
        ];
        let mut snapshots = vec![inspect::html::Snapshot {
            label: "before cleaning".into(),
            insp: &self.before,
        }];
        if let Some((name, bytes)) = artifact {
            estimates.push((format!("artifact {name} (actual)"), bytes));
        }
        if let Some(a) = &after {
            snapshots.push(inspect::html::Snapshot {
                label: "after cleaning".into(),
                insp: a,
            });
        }
        let page = inspect::html::render(&inspect::html::Page {
            title: self.path.display().to_string(),
            snapshots,
            estimates,
        });
        write_file(&self.path, &page)
    }
}
