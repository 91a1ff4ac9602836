//! `vmfinal finalize IN -o OUT`: the whole line. A writable workspace of
//! the input, the guest mounted and cleaned by profiles, free space
//! reclaimed, unmounted, then compacted into OUT with every `compact`
//! output option. The input is never changed unless --in-place.
//!
//! The workspace is, in order of preference: a copy-on-write view
//! (`view`: reads from the input through our own readers, writes to a
//! sparse overlay under --tmp) served through FUSE for the loop devices,
//! and compacted in-process; else a sparse raw copy of the whole input
//! (the host has no FUSE, or --workspace copy / --keep-workspace); the raw
//! input itself with --in-place (and for a dry run of a raw input).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::compact::OutputArgs;
use crate::commands::guest_args::GuestArgs;
use crate::convert::{self, ConvertRequest};
use crate::image::{self, ImageFormat};
use crate::session;

#[derive(Debug, clap::Args)]
pub struct FinalizeArgs {
    /// Input image (raw, qcow2 or .zst)
    pub input: PathBuf,
    /// Input format [default: from the name (.raw, .qcow2, .zst); other names are probed]
    #[arg(long = "format", value_name = "FMT")]
    pub format: Option<ImageFormat>,
    /// Directory for the raw workspace [default: beside OUT]
    #[arg(long, value_name = "DIR")]
    pub tmp: Option<PathBuf>,
    /// Clean a raw input in place instead of a sparse copy of it
    #[arg(long)]
    pub in_place: bool,
    /// Keep the cleaned raw workspace (its path is printed; implies --workspace copy)
    #[arg(long)]
    pub keep_workspace: bool,
    /// Write a self-contained HTML report of the guest before and after cleaning
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// fuse: a copy-on-write view of the input (only what cleaning writes
    /// is stored, under --tmp); copy: a sparse raw copy of the whole input;
    /// auto: fuse where the host has it, else copy
    #[arg(long, value_enum, default_value = "auto", value_name = "HOW")]
    pub workspace: WorkspaceMode,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkspaceMode {
    Auto,
    Fuse,
    Copy,
}

/// The copy-on-write view and its FUSE mount (unmounted first on drop).
struct View {
    fuse: crate::view::fuse::FuseView,
    view: Arc<crate::view::CowView>,
}

/// Why there is no view: the input itself (an error for the user, as
/// with any workspace), or the host (the copy is the fallback).
#[derive(Debug, thiserror::Error)]
enum ViewError {
    #[error("{0:#}")]
    Input(anyhow::Error),
    #[error(transparent)]
    Host(#[from] anyhow::Error),
}
impl From<std::io::Error> for ViewError {
    fn from(e: std::io::Error) -> Self {
        ViewError::Host(e.into())
    }
}
impl From<crate::image::ImageError> for ViewError {
    fn from(e: crate::image::ImageError) -> Self {
        ViewError::Host(e.into())
    }
}

/// Serves a copy-on-write view of the input through FUSE.
fn open_view(a: &FinalizeArgs, dir: &Path, stem: &str) -> Result<View, ViewError> {
    if !Path::new("/dev/fuse").exists() {
        return Err(anyhow::anyhow!("this host has no /dev/fuse").into());
    }
    let base = image::open(&a.input, a.format).map_err(|e| ViewError::Input(e.into()))?;
    let view = Arc::new(crate::view::CowView::new(base, dir, stem)?);
    let mp =
        PathBuf::from(crate::guest::state::STATE_DIR).join(format!("{}.view", std::process::id()));
    let fuse = crate::view::fuse::FuseView::serve(view.clone(), &mp, a.guest.dry_run)?;
    Ok(View { fuse, view })
}

/// The workspace file; removed on drop unless it is the input or kept.
struct Workspace {
    path: PathBuf,
    remove: bool,
}
impl Drop for Workspace {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What `finalize` knows of its input before any workspace.
struct Input {
    format: ImageFormat,
    allocated: u64,
}

/// The writable guest `finalize` cleans, and how it was made.
struct Prepared {
    ws: Workspace,
    view: Option<View>,
    /// `input`, `fuse-view` or `copy` (docs/json.md).
    mechanism: &'static str,
    /// Why a raw copy rather than the view.
    reason: Option<String>,
    /// Where the overlay or the raw copy lives.
    dir: PathBuf,
}

type Stages = std::collections::BTreeMap<String, f64>;

/// `finalize`, as a sequence of named steps: check the input and the
/// output, make the workspace, inspect it for the report, clean the guest,
/// then (unless a dry run) compact it, publish and summarise.
pub fn run(a: &FinalizeArgs) -> anyhow::Result<super::ExitCode> {
    crate::progress::set_quiet(a.out.quiet);
    let mut state = session::prepare_privileged("finalize")?;
    let t0 = Instant::now();
    let profiles = a.guest.selected()?;
    let (input, layout) = probe_input(a)?;
    let mut req = a.out.request(a.input.clone(), a.format)?;
    check_output(a, &req)?;
    layout?;
    let mut stages = Stages::new();
    let mut prep = prepare_workspace(a, &input, &req, &mut state, &mut stages)?;
    let in_place_lock = lock_in_place(a, &prep.ws)?;
    crate::interrupt::checkpoint("workspace")?;
    let html = match &a.report {
        Some(p) => Some(super::analyze::FinalizeReport::before(
            p,
            &prep.ws.path,
            &profiles,
            &mut state,
        )?),
        None => None,
    };
    let (guest, overlay_bytes) = clean_guest(a, &mut prep, &profiles, &mut state)?;
    for (k, v) in &guest.stages {
        stages.insert(k.clone(), *v);
    }
    let workspace_json = serde_json::json!({
        "mechanism": prep.mechanism,
        "reason": prep.reason,
        "overlay_allocated_bytes": prep.view.as_ref().map(|_| overlay_bytes),
    });
    if a.guest.dry_run {
        if let Some(h) = html {
            h.write(&prep.ws.path, &profiles, &mut state, None)?;
        }
        session::print_warnings(&guest);
        if a.out.json {
            let v = json_doc(a, &input, &guest, &workspace_json, None, &stages);
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else if !a.out.quiet {
            session::print_human(&guest, true);
        }
        return Ok(0);
    }
    drop(in_place_lock);
    let report = compact(&mut req, &mut prep, &guest, &mut state, &mut stages)?;
    if let Some(h) = html {
        let name = report.output.path.display().to_string();
        h.write(
            &prep.ws.path,
            &profiles,
            &mut state,
            Some((name, report.output.bytes)),
        )?;
    }
    let done = Done {
        input,
        guest,
        workspace_json,
        overlay_bytes,
        report,
    };
    publish_and_summarise(a, t0, prep, done, &mut stages)
}

/// What a real run has when the artifact is written.
struct Done {
    input: Input,
    guest: session::GuestReport,
    workspace_json: serde_json::Value,
    overlay_bytes: u64,
    report: crate::report::ConvertReport,
}

/// The checksum and manifest, the workspace removed (or kept), then the
/// JSON document or the human summary.
fn publish_and_summarise(
    a: &FinalizeArgs,
    t0: Instant,
    prep: Prepared,
    d: Done,
    stages: &mut Stages,
) -> anyhow::Result<super::ExitCode> {
    let Done {
        input,
        guest,
        workspace_json,
        overlay_bytes,
        report,
    } = d;
    // What the cleaned guest still holds: the workspace's allocated bytes
    // minus the filesystems' free space (which compaction skipped).
    let cleaned = report
        .input
        .allocated_bytes
        .saturating_sub(report.fs_free_skipped);
    let extra = serde_json::json!({
        "input": a.input,
        "input_format": input.format,
        "input_allocated_bytes": input.allocated,
        "cleaned_data_bytes": cleaned,
        "freed_bytes": guest.freed_bytes,
        "profiles": guest.profiles.iter().filter(|p| p.applicable).map(|p| p.name.clone()).collect::<Vec<_>>(),
        "total_seconds": t0.elapsed().as_secs_f64(),
        "workspace": workspace_json,
    });
    if a.keep_workspace && prep.ws.path != a.input {
        eprintln!("vmfinal: workspace kept: {}", prep.ws.path.display());
    }
    let Prepared {
        ws,
        mechanism,
        reason,
        dir,
        ..
    } = prep;
    drop(ws);
    // The guest's warnings, then the checksum and manifest (publish prints
    // the artifact's warnings); the human summary follows. Warnings go to
    // stderr with --json and -q too.
    session::print_warnings(&guest);
    let quiet_out = a.out.quieted();
    super::compact::publish(&report, "finalize", &quiet_out, extra)?;
    stages.insert("total".to_string(), t0.elapsed().as_secs_f64());
    if a.out.json {
        let art = report.to_json("finalize");
        let v = json_doc(a, &input, &guest, &workspace_json, Some(art), stages);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if !a.out.quiet {
        let ws_line = match mechanism {
            "fuse-view" => Some(format!(
                "workspace: copy-on-write view of the input through FUSE ({} written to the overlay in {})",
                crate::report::human_bytes(overlay_bytes),
                dir.display()
            )),
            "copy" => Some(format!(
                "workspace: a raw copy of the input ({})",
                reason.as_deref().unwrap_or("")
            )),
            _ => None,
        };
        print_summary(&guest, ws_line, &report, &input, cleaned, stages);
    }
    Ok(0)
}

/// The input's format and allocated bytes, with the failures its layout
/// makes certain (returned apart: they are reported after the output's).
fn probe_input(a: &FinalizeArgs) -> anyhow::Result<(Input, anyhow::Result<()>)> {
    let src = image::open(&a.input, a.format)?;
    let format = src.format();
    let allocated = src
        .data_extents()
        .map(|e| crate::extent::total(&crate::extent::normalize(e)))
        .unwrap_or(0);
    // Failures the guest's layout makes certain come before any workspace.
    let layout = crate::guest::preflight(src.as_ref());
    drop(src);
    if a.in_place && format != ImageFormat::Raw {
        anyhow::bail!(
            "--in-place needs a raw input; {} is {format}",
            a.input.display()
        );
    }
    Ok((Input { format, allocated }, layout))
}

/// OUT may be written: absent (or --force), and not the input.
fn check_output(a: &FinalizeArgs, req: &ConvertRequest) -> anyhow::Result<()> {
    if a.guest.dry_run {
        return Ok(());
    }
    if !a.out.force && std::fs::symlink_metadata(&req.output).is_ok() {
        anyhow::bail!("{} exists (use --force to overwrite)", req.output.display());
    }
    if crate::output::same_file(&a.input, &req.output) {
        anyhow::bail!("the output {} is the input", req.output.display());
    }
    Ok(())
}

/// The workspace: the raw input itself (in place, or a dry run of a raw
/// input), a copy-on-write view through FUSE, or a sparse raw copy.
fn prepare_workspace(
    a: &FinalizeArgs,
    input: &Input,
    req: &ConvertRequest,
    state: &mut crate::guest::state::State,
    stages: &mut Stages,
) -> anyhow::Result<Prepared> {
    let st = crate::progress::stage("workspace");
    let t = Instant::now();
    let dir = match &a.tmp {
        Some(d) => d.clone(),
        None => match req.output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        },
    };
    let stem = a
        .input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    let use_input = input.format == ImageFormat::Raw && (a.in_place || a.guest.dry_run);
    let mut reason: Option<String> = None;
    let mut view: Option<View> = None;
    if use_input {
        // A dry run reads the raw input through read-only loop devices.
    } else if a.keep_workspace {
        reason = Some("--keep-workspace keeps a raw copy".into());
    } else if a.workspace == WorkspaceMode::Copy {
        reason = Some("--workspace copy".into());
    } else if a.report.is_some() {
        // The page inspects the cleaned guest again after compaction,
        // when the view is gone.
        if a.workspace == WorkspaceMode::Fuse {
            anyhow::bail!(
                "--report reads the cleaned guest from a raw copy: use --workspace auto or copy"
            );
        }
        reason = Some("--report reads the cleaned guest from a raw copy".into());
    } else {
        match open_view(a, &dir, &stem) {
            Ok(v) => view = Some(v),
            Err(ViewError::Input(e)) => return Err(e),
            Err(ViewError::Host(e)) if a.workspace == WorkspaceMode::Fuse => {
                return Err(e.context("cannot serve a copy-on-write view through FUSE"));
            }
            Err(ViewError::Host(e)) => reason = Some(format!("no copy-on-write view: {e:#}")),
        }
    }
    let mechanism = if use_input {
        "input"
    } else if view.is_some() {
        "fuse-view"
    } else {
        "copy"
    };
    let ws = if use_input {
        Workspace {
            path: a.input.clone(),
            remove: false,
        }
    } else if let Some(v) = &view {
        Workspace {
            path: v.fuse.path().to_owned(),
            remove: false,
        }
    } else {
        raw_copy(a, req, &dir, &stem, state)?
    };
    st.done();
    stages.insert("workspace".to_string(), t.elapsed().as_secs_f64());
    Ok(Prepared {
        ws,
        view,
        mechanism,
        reason,
        dir,
    })
}

/// A sparse raw copy of the input beside OUT (or in --tmp), removed on
/// drop unless --keep-workspace.
fn raw_copy(
    a: &FinalizeArgs,
    req: &ConvertRequest,
    dir: &Path,
    stem: &str,
    state: &mut crate::guest::state::State,
) -> anyhow::Result<Workspace> {
    let path = dir.join(format!(".vmfinal-ws-{}-{stem}.raw", std::process::id()));
    state.add_file(&path)?;
    state.add_file(&crate::output::temp_path_for(&path))?;
    let ws = Workspace {
        path: path.clone(),
        remove: !a.keep_workspace,
    };
    let wreq = ConvertRequest {
        input: a.input.clone(),
        input_format: a.format,
        output: path,
        output_format: ImageFormat::Raw,
        compression: req.compression,
        level: None,
        threads: req.threads,
        cluster_size: 65536,
        frame_size: req.frame_size,
        force: false,
        quiet: a.out.quiet,
        fs_aware: true,
    };
    convert::convert(&wreq).map_err(|e| e.context("cannot build the raw workspace"))?;
    Ok(ws)
}

/// Cleaning the input in place: QEMU's locks say nobody else may use it
/// (released before compaction reads it back).
fn lock_in_place(a: &FinalizeArgs, ws: &Workspace) -> anyhow::Result<Option<std::fs::File>> {
    if ws.path != a.input || a.guest.dry_run {
        return Ok(None);
    }
    let f = std::fs::File::open(&a.input)?;
    image::lock::lock(&f, image::lock::LockMode::Exclusive)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.input.display()))?;
    Ok(Some(f))
}

/// Why the view's overlay failed, as the user's error.
fn overlay_failed(v: &View) -> Option<anyhow::Error> {
    v.view.error().map(|e| {
        anyhow::anyhow!(
            "the copy-on-write overlay in {} failed while the guest was mounted ({e}); the guest's changes are incomplete, so nothing was written: free space there or choose another directory with --tmp DIR",
            v.view.overlay_dir().display()
        )
    })
}

/// Mounts, cleans (or plans) and unmounts the guest; then the FUSE mount
/// goes. Returns the guest's report and what the overlay took.
fn clean_guest(
    a: &FinalizeArgs,
    prep: &mut Prepared,
    profiles: &[crate::profile::Profile],
    state: &mut crate::guest::state::State,
) -> anyhow::Result<(session::GuestReport, u64)> {
    let guest = session::run_guest(&prep.ws.path, profiles, &a.guest, state, true);
    // An overlay that failed explains whatever the guest then did wrong.
    let mut guest = match (guest, prep.view.as_ref().and_then(overlay_failed)) {
        (_, Some(e)) => return Err(e),
        (g, None) => g?,
    };
    // The guest's mounts and loop devices are gone: the FUSE mount next.
    let mut overlay_bytes = 0u64;
    if let Some(v) = &mut prep.view {
        if let Some(w) = v.fuse.unmount() {
            guest.warnings.push(w);
        }
        if let Some(e) = overlay_failed(v) {
            return Err(e);
        }
        overlay_bytes = v.view.overlay_allocated();
    }
    Ok((guest, overlay_bytes))
}

/// Compacts the cleaned workspace into OUT. The workspace must still hold
/// exactly what was cleaned and checked, before compaction reads it and
/// after (else no artifact). The view goes after.
fn compact(
    req: &mut ConvertRequest,
    prep: &mut Prepared,
    guest: &session::GuestReport,
    state: &mut crate::guest::state::State,
    stages: &mut Stages,
) -> anyhow::Result<crate::report::ConvertReport> {
    crate::interrupt::checkpoint("compact")?;
    let st = crate::progress::stage("compact");
    let t = Instant::now();
    req.fs_aware = true;
    state.add_file(&crate::output::temp_path_for(&req.output))?;
    let recheck = |when: &str| match &prep.view {
        Some(v) => crate::guest::verify::recheck_source(v.view.as_ref(), &guest.verified, when),
        None => crate::guest::verify::recheck(&prep.ws.path, &guest.verified, when),
    };
    recheck("between cleaning and compaction")?;
    let report = if let Some(v) = &prep.view {
        // The merged view, read in-process (no FUSE round trip).
        convert::convert_source(req, v.view.as_ref())?
    } else {
        req.input = prep.ws.path.clone();
        req.input_format = Some(ImageFormat::Raw);
        convert::convert(req)?
    };
    if let Err(e) = recheck("during compaction") {
        let _ = std::fs::remove_file(&req.output);
        return Err(e);
    }
    prep.view = None;
    st.done();
    stages.insert("compact".to_string(), t.elapsed().as_secs_f64());
    Ok(report)
}

/// The `finalize --json` document (docs/json.md); `artifact` is the
/// output's report, none for a dry run.
fn json_doc(
    a: &FinalizeArgs,
    input: &Input,
    guest: &session::GuestReport,
    workspace: &serde_json::Value,
    artifact: Option<serde_json::Value>,
    stages: &Stages,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "schema_version": crate::report::JSON_SCHEMA_VERSION,
        "command": "finalize",
        "dry_run": artifact.is_none(),
        "input": {"path": a.input, "format": input.format, "allocated_bytes": input.allocated},
        "guest": guest,
        "workspace": workspace,
        "stages": stages,
    });
    if let (Some(art), Some(o)) = (artifact, v.as_object_mut()) {
        let alloc = art["input"]["allocated_bytes"].as_u64().unwrap_or(0);
        let free = art["fs_free_skipped"].as_u64().unwrap_or(0);
        o.insert("workspace_allocated_bytes".into(), alloc.into());
        o.insert(
            "cleaned_data_bytes".into(),
            alloc.saturating_sub(free).into(),
        );
        o.insert("artifact".into(), art);
    }
    v
}

/// The human summary of a real run (stderr).
fn print_summary(
    guest: &session::GuestReport,
    workspace: Option<String>,
    report: &crate::report::ConvertReport,
    input: &Input,
    cleaned: u64,
    stages: &Stages,
) {
    session::print_human(guest, false);
    if let Some(w) = workspace {
        eprintln!("{w}");
    }
    eprintln!(
        "image: {} allocated -> {} in use after cleaning -> {} {} artifact {}",
        crate::report::human_bytes(input.allocated),
        crate::report::human_bytes(cleaned),
        crate::report::human_bytes(report.output.bytes),
        report.output.format,
        report.output.path.display()
    );
    let order = [
        "workspace",
        "mount",
        "plan",
        "clean",
        "reclaim",
        "unmount",
        "verify",
        "compact",
        "total",
    ];
    let st: Vec<String> = order
        .iter()
        .filter_map(|k| stages.get(*k).map(|v| format!("{k} {v:.1} s")))
        .collect();
    eprintln!("stages: {}", st.join(", "));
}
