//! `vmfinal finalize IN -o OUT`: the whole line. A sparse raw workspace
//! (from a qcow2 or .zst through our own reader, or a sparse copy of a raw
//! image; the raw input itself with --in-place), the guest mounted and
//! cleaned by profiles, free space reclaimed, unmounted, then compacted
//! into OUT with every `compact` output option. The input is never changed
//! unless --in-place.

use std::path::PathBuf;
use std::time::Instant;

use super::compact::OutputArgs;
use crate::convert::{self, ConvertRequest};
use crate::image::{self, ImageFormat};
use crate::session::{self, GuestArgs};

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
    /// Keep the cleaned raw workspace (its path is printed)
    #[arg(long)]
    pub keep_workspace: bool,
    /// Write a self-contained HTML report of the guest before and after cleaning
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub out: OutputArgs,
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

pub fn run(a: &FinalizeArgs) -> anyhow::Result<super::ExitCode> {
    crate::progress::set_quiet(a.out.quiet);
    let mut state = session::prepare_privileged("finalize")?;
    let t0 = Instant::now();
    let profiles = a.guest.selected()?;
    let src = image::open(&a.input, a.format)?;
    let in_fmt = src.format();
    let in_alloc = src
        .data_extents()
        .map(|e| crate::extent::total(&crate::extent::normalize(e)))
        .unwrap_or(0);
    // Failures the guest's layout makes certain come before any workspace.
    let layout = crate::guest::preflight(src.as_ref());
    drop(src);
    if a.in_place && in_fmt != ImageFormat::Raw {
        anyhow::bail!(
            "--in-place needs a raw input; {} is {in_fmt}",
            a.input.display()
        );
    }
    let mut req = a.out.request(a.input.clone(), a.format)?;
    if !a.guest.dry_run {
        if !a.out.force && std::fs::symlink_metadata(&req.output).is_ok() {
            anyhow::bail!("{} exists (use --force to overwrite)", req.output.display());
        }
        if crate::output::same_file(&a.input, &req.output) {
            anyhow::bail!("the output {} is the input", req.output.display());
        }
    }
    layout?;
    let mut stages = std::collections::BTreeMap::new();

    // The workspace.
    let st = crate::progress::stage("workspace");
    let t = Instant::now();
    let ws = if in_fmt == ImageFormat::Raw && (a.in_place || a.guest.dry_run) {
        // A dry run reads the raw input through read-only loop devices.
        Workspace {
            path: a.input.clone(),
            remove: false,
        }
    } else {
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
        ws
    };
    st.done();
    stages.insert("workspace".to_string(), t.elapsed().as_secs_f64());
    // Cleaning the input in place: QEMU's locks say nobody else may use it
    // (released before compaction reads it back).
    let in_place_lock = if ws.path == a.input && !a.guest.dry_run {
        let f = std::fs::File::open(&a.input)?;
        image::lock::lock(&f, image::lock::LockMode::Exclusive)
            .map_err(|e| anyhow::anyhow!("{}: {e}", a.input.display()))?;
        Some(f)
    } else {
        None
    };
    crate::interrupt::checkpoint("workspace")?;

    let html = match &a.report {
        Some(p) => Some(super::analyze::FinalizeReport::before(
            p, &ws.path, &profiles, &mut state,
        )?),
        None => None,
    };
    let guest = session::run_guest(&ws.path, &profiles, &a.guest, &mut state, true)?;
    for (k, v) in &guest.stages {
        stages.insert(k.clone(), *v);
    }
    let json_doc = |artifact: Option<serde_json::Value>,
                    stages: &std::collections::BTreeMap<String, f64>| {
        let mut v = serde_json::json!({
            "schema_version": crate::report::JSON_SCHEMA_VERSION,
            "command": "finalize",
            "dry_run": artifact.is_none(),
            "input": {"path": a.input, "format": in_fmt, "allocated_bytes": in_alloc},
            "guest": guest,
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
    };
    if a.guest.dry_run {
        if let Some(h) = html {
            h.write(&ws.path, &profiles, &mut state, None)?;
        }
        if a.out.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json_doc(None, &stages))?
            );
        } else if !a.out.quiet {
            session::print_human(&guest, true);
        }
        return Ok(0);
    }
    // Compact.
    drop(in_place_lock);
    crate::interrupt::checkpoint("compact")?;
    let st = crate::progress::stage("compact");
    let t = Instant::now();
    req.input = ws.path.clone();
    req.input_format = Some(ImageFormat::Raw);
    req.fs_aware = true;
    state.add_file(&crate::output::temp_path_for(&req.output))?;
    // The workspace must still hold exactly what was cleaned and checked,
    // before compaction reads it and after (else no artifact).
    crate::guest::verify::recheck(&ws.path, &guest.verified, "between cleaning and compaction")?;
    let report = convert::convert(&req)?;
    if let Err(e) = crate::guest::verify::recheck(&ws.path, &guest.verified, "during compaction") {
        let _ = std::fs::remove_file(&req.output);
        return Err(e);
    }
    // What the cleaned guest still holds: the workspace's allocated bytes
    // minus the filesystems' free space (which compaction skipped).
    let cleaned = report
        .input
        .allocated_bytes
        .saturating_sub(report.fs_free_skipped);
    st.done();
    stages.insert("compact".to_string(), t.elapsed().as_secs_f64());
    if let Some(h) = html {
        let name = report.output.path.display().to_string();
        h.write(
            &ws.path,
            &profiles,
            &mut state,
            Some((name, report.output.bytes)),
        )?;
    }
    let extra = serde_json::json!({
        "input": a.input,
        "input_format": in_fmt,
        "input_allocated_bytes": in_alloc,
        "cleaned_data_bytes": cleaned,
        "freed_bytes": guest.freed_bytes,
        "profiles": guest.profiles.iter().filter(|p| p.applicable).map(|p| p.name.clone()).collect::<Vec<_>>(),
        "total_seconds": t0.elapsed().as_secs_f64(),
    });
    if a.keep_workspace && ws.path != a.input {
        eprintln!("vmfinal: workspace kept: {}", ws.path.display());
    }
    drop(ws);
    // The checksum and manifest; the human summary follows.
    let quiet_out = a.out.quieted();
    super::compact::publish(&report, "finalize", &quiet_out, extra)?;
    stages.insert("total".to_string(), t0.elapsed().as_secs_f64());
    if a.out.json {
        let v = json_doc(Some(report.to_json("finalize")), &stages);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if !a.out.quiet {
        session::print_human(&guest, false);
        for w in &report.warnings {
            eprintln!("vmfinal: warning: {w}");
        }
        eprintln!(
            "image: {} allocated -> {} in use after cleaning -> {} {} artifact {}",
            crate::report::human_bytes(in_alloc),
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
    Ok(0)
}
