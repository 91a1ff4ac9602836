//! The guest half of `clean` and `finalize`: mount the guest of a raw
//! disk, plan the selected profiles, run them (or only report them for a
//! dry run), reclaim free space, unmount. Everything privileged is held by
//! guards, so an error, a panic or Ctrl-C undoes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::guest::sandbox::GuestSandbox;
use crate::guest::verify::{self, Verified};
use crate::guest::{self, Guest, MountOptions, Mounted, PartInfo, Volume, state::State};
use crate::pipeline::PipelineError;
use crate::profile::plan::{self, Ctx, ProfilePlan};
use crate::profile::{Profile, Registry};
use crate::reclaim::{self, ReclaimMode, ReclaimResult};
use crate::report::human_bytes;
use crate::text::human_signed;

/// Options for the guest stage, shared by `clean`, `finalize` and
/// `analyze --guest`. (Their command-line spelling: `commands::guest_args`.)
#[derive(Debug, Clone)]
pub struct GuestOptions {
    /// Profile selection: defaults, all, none, NAME, +NAME, -NAME.
    pub profiles: String,
    /// Profile files to run too.
    pub profile_files: Vec<PathBuf>,
    /// Directories of profiles (*.yaml), selectable by name.
    pub profile_dirs: Vec<PathBuf>,
    /// Profile variables, `PROFILE.VAR=VALUE`.
    pub sets: Vec<String>,
    /// Plan and report only; change nothing.
    pub dry_run: bool,
    /// Allow profiles' `run` steps.
    pub allow_run: bool,
    /// Free-space reclaim after cleaning.
    pub reclaim: ReclaimMode,
    /// Clean without an fstab filesystem that cannot be mounted here.
    pub skip_unmountable: bool,
}

impl GuestOptions {
    /// Loads and selects the profiles (errors before any work starts).
    pub fn selected(&self) -> anyhow::Result<Vec<Profile>> {
        let mut r = Registry::builtin();
        for d in &self.profile_dirs {
            r.add_dir(d)?;
        }
        for f in &self.profile_files {
            r.add_file(f)?;
        }
        for s in &self.sets {
            r.set_var(s)?;
        }
        for n in &r.notes {
            eprintln!("vmfinal: note: {n}");
        }
        r.select(&self.profiles)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FsUsage {
    pub mountpoint: String,
    pub used_before: u64,
    pub used_after: u64,
}

/// What the guest stage did (or would do).
#[derive(Debug, Clone, Serialize)]
pub struct GuestReport {
    pub dry_run: bool,
    pub partitions: Vec<PartInfo>,
    /// Partitions and logical volumes, and how each is mapped.
    pub volumes: Vec<Volume>,
    pub mounts: Vec<Mounted>,
    pub profiles: Vec<ProfilePlan>,
    /// Sum of the profiles' planned net bytes (removed minus allocated).
    pub freed_bytes: i64,
    /// Drop in used space over the guest's filesystems (statvfs), real runs.
    pub measured_freed_bytes: Option<i64>,
    pub filesystems: Vec<FsUsage>,
    pub reclaim: Vec<ReclaimResult>,
    /// Each cleaned filesystem, stamped and checked read-only after unmount.
    pub verified: Vec<Verified>,
    pub warnings: Vec<String>,
    /// Seconds per stage.
    pub stages: BTreeMap<String, f64>,
}

fn used_bytes(dir: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: zeroed statvfs is valid; pointers live through the call.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `s` a live statvfs buffer for the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return 0;
    }
    (s.f_blocks - s.f_bfree) * s.f_frsize
}

fn inline_data(g: &Guest) -> Vec<(u64, u64)> {
    crate::profile::alloc::inline_data_devs(
        g.filesystems()
            .into_iter()
            .map(|m| (m.device.as_str(), m.fstype.as_str())),
    )
}

/// Requires root, enters a private mount namespace, and sweeps what dead
/// runs left. Call first thing, before any thread starts.
pub fn prepare_privileged(command: &str) -> anyhow::Result<State> {
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "{command} needs root (it attaches loop devices and mounts the guest); `vmfinal compact` does not"
        );
    }
    guest::mount::enter_private_namespace()?;
    for line in guest::state::sweep_stale() {
        eprintln!("vmfinal: cleanup: {line}");
    }
    State::create()
}

fn interrupted() -> anyhow::Result<()> {
    if crate::interrupt::requested() {
        return Err(PipelineError::Interrupted.into());
    }
    Ok(())
}

fn checkpoint(stage: &str) -> anyhow::Result<()> {
    crate::interrupt::checkpoint(stage).map_err(Into::into)
}

/// A private, empty mount directory; removed on drop.
struct MountDir(PathBuf);
impl Drop for MountDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The filesystems a profile's plan touches, each once (`filesystems`:
/// one mount per filesystem): those holding its paths, or all of them when
/// it runs the package manager or a command (which may write anywhere).
fn touched<'a>(
    p: &ProfilePlan,
    mounted: &[Mounted],
    filesystems: &'a [Mounted],
) -> Vec<&'a Mounted> {
    let anywhere = p
        .steps
        .iter()
        .any(|s| s.kind == "keep-newest-kernels" || s.kind == "run");
    let mut vols: Vec<usize> = Vec::new();
    for a in p.paths() {
        let under = |mp: &str| {
            mp == "/" || a.path == mp || a.path.strip_prefix(mp).is_some_and(|r| r.starts_with('/'))
        };
        // The deepest mount above the path; btrfs subvolumes of one
        // filesystem share its volume.
        if let Some(m) = mounted
            .iter()
            .filter(|m| under(&m.mountpoint))
            .max_by_key(|m| m.mountpoint.len())
        {
            vols.push(m.vol);
        }
    }
    filesystems
        .iter()
        .filter(|m| anywhere || vols.contains(&m.vol))
        .collect()
}

/// Mounts the guest on the raw disk `image`, runs `profiles` (or plans them
/// for a dry run), reclaims, and unmounts.
/// `compaction_follows`: `finalize` compacts the workspace next, skipping the
/// free space of ext2/3/4, xfs and swap by their own maps; `--reclaim auto`
/// then leaves those alone (the artifact is byte-identical either way) and
/// only trims what compaction cannot map (btrfs, vfat).
pub fn run_guest(
    image: &Path,
    profiles: &[Profile],
    args: impl Into<GuestOptions>,
    state: &mut State,
    compaction_follows: bool,
) -> anyhow::Result<GuestReport> {
    let args: GuestOptions = args.into();
    let args = &args;
    let mut stages = BTreeMap::new();
    let st = crate::progress::stage("mount");
    let t = Instant::now();
    let dir = PathBuf::from(guest::state::STATE_DIR).join(format!("{}.root", std::process::id()));
    std::fs::create_dir(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    state.add_dir(&dir)?;
    state.add_dir(&dir.with_extension("dev"))?;
    let _dir_guard = MountDir(dir.clone());
    let mut g = Guest::mount(
        image,
        &dir,
        MountOptions {
            read_only: args.dry_run,
            skip_unmountable: args.skip_unmountable,
        },
    )?;
    st.done();
    stages.insert("mount".to_string(), t.elapsed().as_secs_f64());
    checkpoint("mount")?;

    let sandbox = GuestSandbox {
        root: dir.clone(),
        devices: g.devices(),
    };
    // A dry run runs no guest binary: planning reads the guest's files only.
    let ctx = Ctx {
        root: &g.root,
        allow_run: args.allow_run,
        sandbox: if args.dry_run { None } else { Some(&sandbox) },
        inline_data: inline_data(&g),
    };
    let mut st = crate::progress::stage("plan");
    let t = Instant::now();
    let mut plans = plan::plan_all(&ctx, profiles).map_err(|e| anyhow::anyhow!(e))?;
    stages.insert("plan".to_string(), t.elapsed().as_secs_f64());
    let freed_bytes = plans.iter().map(|p| p.freed_bytes).sum();
    st.note(format!("{} to free", human_signed(freed_bytes)));
    st.done();
    let mut report = GuestReport {
        dry_run: args.dry_run,
        partitions: g.parts.clone(),
        volumes: g.volumes.clone(),
        mounts: g.mounted.clone(),
        profiles: Vec::new(),
        freed_bytes,
        measured_freed_bytes: None,
        filesystems: Vec::new(),
        reclaim: Vec::new(),
        verified: Vec::new(),
        warnings: g.warnings.clone(),
        stages,
    };
    if args.dry_run {
        report.profiles = plans;
        return Ok(report);
    }

    // Each filesystem once (btrfs subvolumes share one), synced so that
    // what was written before cleaning is not counted as cleaning's.
    let filesystems: Vec<Mounted> = g.filesystems().into_iter().cloned().collect();
    let mut measure_seconds = 0f64;
    let mut sync_and_use = |m: &Mounted| {
        let t = Instant::now();
        let dir = g.host_path(&m.mountpoint);
        if m.fstype == "xfs" {
            guest::mount::xfs_settle(&dir);
        }
        guest::mount::syncfs(&dir);
        let u = used_bytes(&dir);
        measure_seconds += t.elapsed().as_secs_f64();
        u
    };
    let before: Vec<u64> = filesystems.iter().map(&mut sync_and_use).collect();
    let mut st = crate::progress::stage("clean");
    st.items(plans.iter().filter(|p| p.applicable).count() as u64);
    let t = Instant::now();
    for p in plans.iter_mut() {
        if !p.applicable {
            continue;
        }
        interrupted()?;
        st.message(p.name.clone());
        // Around each profile: the filesystems it touches, synced, statvfs.
        let touched = touched(p, &g.mounted, &filesystems);
        let used: Vec<u64> = touched.iter().map(|m| sync_and_use(m)).collect();
        plan::execute(&ctx, p)?;
        let mut freed = 0i64;
        for (m, u) in touched.iter().zip(used) {
            freed += plan::net(u, sync_and_use(m));
        }
        p.measured_freed_bytes = Some(freed);
        p.measured_filesystems = touched.iter().map(|m| m.mountpoint.clone()).collect();
        st.inc(1);
    }
    // Every filesystem synced (and xfs settled) once more: the totals.
    let after: Vec<u64> = filesystems.iter().map(&mut sync_and_use).collect();
    report
        .stages
        .insert("clean".to_string(), t.elapsed().as_secs_f64());
    let mut measured = 0i64;
    for ((m, b), a) in filesystems.iter().zip(before).zip(after) {
        measured += plan::net(b, a);
        report.filesystems.push(FsUsage {
            mountpoint: m.mountpoint.clone(),
            used_before: b,
            used_after: a,
        });
    }
    // The syncfs and statvfs calls around the profiles (the last round
    // would have run anyway).
    report.stages.insert("measure".to_string(), measure_seconds);
    report.measured_freed_bytes = Some(measured);
    st.message("");
    st.note(format!(
        "{} profiles, {} freed",
        plans.iter().filter(|p| p.applicable).count(),
        human_signed(measured)
    ));
    st.done();
    report.profiles = plans;
    checkpoint("clean")?;

    let mut st = crate::progress::stage("reclaim");
    let t = Instant::now();
    let mapped = |kind: &str| matches!(kind, "ext4" | "xfs" | "swap");
    let skip_mapped = compaction_follows && args.reclaim == ReclaimMode::Auto;
    if args.reclaim != ReclaimMode::None {
        for m in g.filesystems() {
            interrupted()?;
            if skip_mapped && mapped(&m.fstype) {
                report.reclaim.push(ReclaimResult {
                    target: m.mountpoint.clone(),
                    method: "none".into(),
                    bytes: 0,
                    note: Some("compaction skips its free space".into()),
                });
                continue;
            }
            let r = reclaim::reclaim_fs(&g.host_path(&m.mountpoint), &m.mountpoint, args.reclaim);
            report.reclaim.push(r);
        }
        let img = std::fs::OpenOptions::new().write(true).open(image)?;
        for v in &g.volumes {
            let Some((pieces, _)) = v.pieces() else {
                continue;
            };
            if v.fs.as_ref().is_some_and(|f| f.kind == "swap") && !skip_mapped {
                let n = reclaim::clear_swap(&img, &pieces)?;
                report.reclaim.push(ReclaimResult {
                    target: format!("swap ({})", v.name),
                    method: "cleared".into(),
                    bytes: n,
                    note: None,
                });
            }
        }
    }
    report
        .stages
        .insert("reclaim".to_string(), t.elapsed().as_secs_f64());
    st.note(format!(
        "{} reclaimed",
        human_bytes(report.reclaim.iter().map(|r| r.bytes).sum())
    ));
    st.done();
    checkpoint("reclaim")?;
    let st = crate::progress::stage("unmount");
    let t = Instant::now();
    let cleaned: Vec<(Volume, String)> = g
        .filesystems()
        .into_iter()
        .map(|m| (g.volumes[m.vol].clone(), m.fstype.clone()))
        .collect();
    let errs = g.unmount();
    if !errs.is_empty() {
        anyhow::bail!(
            "the guest did not unmount cleanly ({}); its filesystems may not hold what was cleaned",
            errs.join("; ")
        );
    }
    drop(g);
    report
        .stages
        .insert("unmount".to_string(), t.elapsed().as_secs_f64());
    st.done();
    checkpoint("unmount")?;
    // What was cleaned: stamped, and checked by each filesystem's own tool.
    let st = crate::progress::stage("verify");
    let t = Instant::now();
    for (v, kind) in &cleaned {
        interrupted()?;
        let r = verify::verify(image, v, kind)?;
        if let Some(n) = &r.note {
            report.warnings.push(format!("{} ({kind}): {n}", v.name));
        }
        report.verified.push(r);
    }
    report
        .stages
        .insert("verify".to_string(), t.elapsed().as_secs_f64());
    st.done();
    Ok(report)
}

/// Mounts the guest on the raw disk `image` read-only, exactly as a dry
/// run does, plans `profiles` (no guest binary runs), and hands the mounted
/// guest and the plans to `f`; unmounts after. `tag` names the mount
/// directory, so that one process can inspect a guest before and after
/// cleaning it.
pub fn with_dry_run_guest<T>(
    image: &Path,
    profiles: &[Profile],
    state: &mut State,
    tag: &str,
    f: impl FnOnce(&Guest, Vec<ProfilePlan>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let st = crate::progress::stage("mount");
    let dir =
        PathBuf::from(guest::state::STATE_DIR).join(format!("{}.{tag}.root", std::process::id()));
    std::fs::create_dir(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    state.add_dir(&dir)?;
    state.add_dir(&dir.with_extension("dev"))?;
    let _dir_guard = MountDir(dir.clone());
    // A report of what is inside: a filesystem that cannot be mounted here
    // is left out with a warning rather than stopping the look.
    let g = Guest::mount(
        image,
        &dir,
        guest::MountOptions {
            read_only: true,
            skip_unmountable: true,
        },
    )?;
    st.done();
    checkpoint("mount")?;
    let ctx = Ctx {
        root: &g.root,
        allow_run: false,
        sandbox: None,
        inline_data: inline_data(&g),
    };
    let st = crate::progress::stage("plan");
    let plans = plan::plan_all(&ctx, profiles).map_err(|e| anyhow::anyhow!(e))?;
    st.done();
    let r = f(&g, plans);
    drop(g);
    r
}

/// The guest's warnings, one escaped line each on stderr. Printed whatever
/// the output mode: with `--json` (they are in the report too, but a
/// pipeline reading stdout would not show them) and with `-q` (which
/// quiets progress and summaries, never warnings or errors).
pub fn print_warnings(r: &GuestReport) {
    for w in &r.warnings {
        eprintln!("vmfinal: warning: {}", crate::text::one_safe_line(w));
    }
}

/// The human report (stderr); the warnings are printed apart
/// (`print_warnings`).
pub fn print_human(r: &GuestReport, list_paths: bool) {
    let mounts: Vec<String> = r
        .mounts
        .iter()
        .map(|m| {
            format!(
                "{} ({} on partition {})",
                m.mountpoint, m.fstype, m.partition
            )
        })
        .collect();
    eprintln!("guest: {}", mounts.join(", "));
    if r.dry_run {
        eprintln!("dry run: nothing was changed");
    }
    // "plans" is each profile's net (what it removes less what its writes
    // and symlinks allocate); a real run adds what statvfs then showed.
    let real = !r.dry_run;
    let measured_col = |m: Option<i64>| {
        if real {
            format!(" {:>12}", m.map(human_signed).unwrap_or_else(|| "-".into()))
        } else {
            String::new()
        }
    };
    eprintln!(
        "{:<16} {:>8} {:>12}{}  notes",
        "profile",
        "paths",
        "plans",
        if real {
            format!(" {:>12}", "freed")
        } else {
            String::new()
        }
    );
    for p in &r.profiles {
        let n = p.paths().count();
        let mut notes: Vec<String> = Vec::new();
        if let Some(x) = &p.reason {
            notes.push(x.clone());
        }
        if p.allocated_bytes > 0 {
            notes.push(format!(
                "removes {}, writes take {}",
                human_bytes(p.removed_bytes),
                human_bytes(p.allocated_bytes)
            ));
        }
        for s in &p.steps {
            if !s.remove_packages.is_empty() {
                notes.push(format!("remove {}", s.remove_packages.join(" ")));
            }
            if let Some(x) = &s.note {
                notes.push(x.clone());
            }
        }
        if !p.failures.is_empty() {
            notes.push(format!("{} failed", p.failures.len()));
        }
        eprintln!(
            "{:<16} {:>8} {:>12}{}  {}",
            p.name,
            n,
            human_signed(p.freed_bytes),
            measured_col(p.measured_freed_bytes),
            notes.join("; ")
        );
        if list_paths {
            for a in p.paths() {
                let op = serde_json::to_value(a.op)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let bytes = if a.allocated_bytes > 0 {
                    human_signed(plan::net(a.bytes, a.allocated_bytes))
                } else {
                    human_bytes(a.bytes)
                };
                eprintln!("    {op:<9} {bytes:>10}  {}", a.path);
            }
        }
        for f in &p.failures {
            eprintln!("    failed: {f}");
        }
    }
    let measured = r
        .measured_freed_bytes
        .map(|m| format!(" (filesystems report {} less used)", human_signed(m)))
        .unwrap_or_default();
    eprintln!(
        "{:<16} {:>8} {:>12}{}{measured}",
        "total",
        r.profiles.iter().map(|p| p.paths().count()).sum::<usize>(),
        human_signed(r.freed_bytes),
        measured_col(Some(
            r.profiles
                .iter()
                .filter_map(|p| p.measured_freed_bytes)
                .sum::<i64>()
        ))
    );
    for x in &r.reclaim {
        eprintln!(
            "reclaim {}: {} {}{}",
            x.target,
            x.method,
            human_bytes(x.bytes),
            x.note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
}
