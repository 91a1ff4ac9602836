//! Planning and running profiles. A plan is the exact list of paths each
//! step acts on, with the bytes each frees; `--dry-run` prints it, a real
//! run computes the same plan for every selected profile first and then
//! carries it out, so the two list the same paths. Each path is acted on
//! once, by the first step that names it.
//!
//! Walking rules: the literal directory part of a glob (before the first
//! wildcard) is resolved inside the guest root, following the guest's own
//! symlinks there (merged /usr needs that); below a wildcard nothing is
//! followed; the last component is never followed (a symlink is removed as
//! a link). A prefix whose symlinks lead up to one of its own ancestors
//! (`/var/log -> /`) matches nothing. Directories are removed bottom-up; a directory that still holds
//! a kept entry, or is a mount point, stays.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::alloc;
pub use super::ctx::{Ctx, MAX_DEPTH, output_tail, printable};
use super::glob::{self, Glob, Segment};
use super::kernels;
use super::schema::{self, Action, Condition, Count, Profile};
use crate::guest::root::{self, GuestRoot, Stat};
pub use crate::guest::sandbox::{OUTPUT_CUT, Sandbox};

/// What a planned action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Delete,
    Rmdir,
    Truncate,
    /// Removed by the package manager (old kernels).
    Package,
    Write,
    Symlink,
    Run,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Planned {
    pub op: Op,
    pub path: String,
    /// Allocated bytes the action frees (for a write or symlink: what the
    /// entry it replaces held).
    pub bytes: u64,
    /// Bytes the action allocates: a write's or symlink's new entry and
    /// the directories made for it (`alloc`); 0 for removals.
    pub allocated_bytes: u64,
}

impl Planned {
    fn new(op: Op, path: String, bytes: u64) -> Self {
        Self {
            op,
            path,
            bytes,
            allocated_bytes: 0,
        }
    }
}

/// One step's plan.
#[derive(Debug, Clone, Serialize)]
pub struct StepPlan {
    pub kind: &'static str,
    pub actions: Vec<Planned>,
    /// Packages a keep-newest-kernels step removes, and those it keeps.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove_packages: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keep_packages: Vec<String>,
    /// Why the step did nothing (null when it acted).
    pub note: Option<String>,
    #[serde(skip)]
    pub(crate) kernel: Option<kernels::KernelPlan>,
    #[serde(skip)]
    pub(crate) write: Option<(PathBuf, Vec<u8>, u32)>,
    #[serde(skip)]
    pub(crate) link: Option<(PathBuf, Vec<u8>)>,
    #[serde(skip)]
    pub(crate) command: Option<String>,
}

impl StepPlan {
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            actions: Vec::new(),
            remove_packages: Vec::new(),
            keep_packages: Vec::new(),
            note: None,
            kernel: None,
            write: None,
            link: None,
            command: None,
        }
    }
}

/// One profile's plan (and, after a run, its outcome).
#[derive(Debug, Clone, Serialize)]
pub struct ProfilePlan {
    pub name: String,
    pub description: String,
    pub applicable: bool,
    /// Why the profile does not apply (null when it does).
    pub reason: Option<String>,
    pub steps: Vec<StepPlan>,
    /// Allocated bytes the planned actions remove.
    pub removed_bytes: u64,
    /// Bytes the planned writes and symlinks allocate.
    pub allocated_bytes: u64,
    /// The plan's net: removed minus allocated (negative when the profile
    /// takes more than it frees).
    pub freed_bytes: i64,
    /// Real runs: the drop in used space (syncfs, then statvfs before and
    /// after the profile) over `measured_filesystems`; null in a dry run.
    pub measured_freed_bytes: Option<i64>,
    /// The filesystems the profile touched (mount points, each filesystem
    /// once), measured around it; empty in a dry run.
    pub measured_filesystems: Vec<String>,
    /// Paths that could not be acted on, with why (real runs only).
    pub failures: Vec<String>,
    pub seconds: f64,
}

impl ProfilePlan {
    /// Every planned path, in order.
    pub fn paths(&self) -> impl Iterator<Item = &Planned> {
        self.steps.iter().flat_map(|s| s.actions.iter())
    }
}

/// A matched entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub stat: Stat,
}

fn join(dir: &Path, name: &OsStr) -> PathBuf {
    let mut p = dir.to_path_buf();
    p.push(name);
    p
}

fn open_child_dir(dirfd: &OwnedFd, name: &[u8]) -> io::Result<OwnedFd> {
    root::openat2(
        dirfd.as_raw_fd(),
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// All guest entries a glob matches, canonical paths, sorted, unique.
pub fn find(root: &GuestRoot, g: &Glob) -> Vec<Entry> {
    let n = g.segments.len();
    let lit = g
        .segments
        .iter()
        .take(n - 1)
        .take_while(|s| matches!(s, Segment::Literal(_)))
        .count();
    let mut prefix = PathBuf::from("/");
    for s in &g.segments[..lit] {
        if let Segment::Literal(l) = s {
            prefix.push(l);
        }
    }
    let mut out = Vec::new();
    let Ok(fd) = root.open_dir(prefix.as_os_str().as_bytes()) else {
        return out;
    };
    let Ok(canon) = root.guest_path_of(fd.as_raw_fd()) else {
        return out;
    };
    // A guest symlink may move the prefix sideways (/lib -> usr/lib,
    // /var/run -> /run) but not up onto one of its own ancestors
    // (/var/log -> /): that would turn a log cleanup into a sweep of the
    // whole guest.
    if canon != prefix && prefix.starts_with(&canon) {
        return out;
    }
    walk(&fd, &canon, &g.segments[lit..], &mut out, 0);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    out
}

/// Entries any of `globs` matches, sorted by path, unique.
fn find_all(root: &GuestRoot, globs: &[Glob]) -> Vec<Entry> {
    let mut out: Vec<Entry> = globs.iter().flat_map(|g| find(root, g)).collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    out
}

fn walk(dirfd: &OwnedFd, dir: &Path, segs: &[Segment], out: &mut Vec<Entry>, depth: usize) {
    let Some(seg) = segs.first() else { return };
    if depth > MAX_DEPTH {
        return;
    }
    let last = segs.len() == 1;
    let visit = |name: &OsStr, out: &mut Vec<Entry>| {
        let Ok(st) = root::lstat_at(dirfd.as_raw_fd(), name.as_bytes()) else {
            return;
        };
        let path = join(dir, name);
        if last {
            out.push(Entry { path, stat: st });
        } else if st.is_dir() {
            if let Ok(c) = open_child_dir(dirfd, name.as_bytes()) {
                walk(&c, &path, &segs[1..], out, depth + 1);
            }
        }
    };
    match seg {
        Segment::Literal(name) => visit(name, out),
        Segment::Pattern(toks) => {
            for name in root::list_dir(dirfd.as_raw_fd()).unwrap_or_default() {
                if glob::match_name(toks, name.as_bytes()) {
                    visit(&name, out);
                }
            }
        }
        Segment::AnyDirs => {
            if last {
                descendants(dirfd, dir, out, depth);
                return;
            }
            walk(dirfd, dir, &segs[1..], out, depth);
            for name in root::list_dir(dirfd.as_raw_fd()).unwrap_or_default() {
                let Ok(st) = root::lstat_at(dirfd.as_raw_fd(), name.as_bytes()) else {
                    continue;
                };
                if st.is_dir() {
                    if let Ok(c) = open_child_dir(dirfd, name.as_bytes()) {
                        walk(&c, &join(dir, &name), segs, out, depth + 1);
                    }
                }
            }
        }
    }
}

fn descendants(dirfd: &OwnedFd, dir: &Path, out: &mut Vec<Entry>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    for name in root::list_dir(dirfd.as_raw_fd()).unwrap_or_default() {
        let Ok(st) = root::lstat_at(dirfd.as_raw_fd(), name.as_bytes()) else {
            continue;
        };
        let path = join(dir, &name);
        out.push(Entry {
            path: path.clone(),
            stat: st,
        });
        if st.is_dir() {
            if let Ok(c) = open_child_dir(dirfd, name.as_bytes()) {
                descendants(&c, &path, out, depth + 1);
            }
        }
    }
}

/// Compiles pattern texts after variable substitution.
fn globs(
    texts: &[schema::PatternText],
    vars: &BTreeMap<String, schema::Var>,
) -> Result<Vec<Glob>, String> {
    let mut out = Vec::new();
    for t in texts {
        for e in schema::expand_vars(&t.0, vars)? {
            out.extend(glob::compile(&e).map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

fn condition_holds(
    root: &GuestRoot,
    c: &Condition,
    vars: &BTreeMap<String, schema::Var>,
) -> Result<bool, String> {
    let any = |ts: &[schema::PatternText]| -> Result<bool, String> {
        Ok(globs(ts, vars)?.iter().any(|g| !find(root, g).is_empty()))
    };
    let exists_ok = c.exists.is_empty() || any(&c.exists)?;
    let missing_ok = c.missing.is_empty() || !any(&c.missing)?;
    Ok(exists_ok && missing_ok)
}

/// Paths already claimed by earlier steps (deleted subtrees included).
#[derive(Default)]
pub struct Claims {
    paths: BTreeSet<PathBuf>,
    /// What earlier writes and symlinks create.
    written: alloc::Planned,
}

impl Claims {
    fn covers(&self, p: &Path) -> bool {
        p.ancestors().any(|a| self.paths.contains(a))
    }
    fn add(&mut self, p: &Path) {
        self.paths.insert(p.to_path_buf());
    }
}

fn kept(p: &Path, excepts: &[Glob]) -> bool {
    excepts
        .iter()
        .any(|g| g.matches_self_or_ancestor(p.as_os_str().as_bytes()))
}

/// Plans the removal of a directory's contents (bottom-up). Returns whether
/// anything inside stays.
fn plan_subtree(
    root: &GuestRoot,
    dir: &Path,
    dir_stat: &Stat,
    excepts: &[Glob],
    claims: &Claims,
    out: &mut Vec<(Op, PathBuf, Stat)>,
    depth: usize,
) -> bool {
    if depth > MAX_DEPTH {
        return true;
    }
    let Ok(fd) = root.open_dir_strict(dir.as_os_str().as_bytes()) else {
        return true;
    };
    let mut keeps = false;
    for name in root::list_dir(fd.as_raw_fd()).unwrap_or_default() {
        let Ok(st) = root::lstat_at(fd.as_raw_fd(), name.as_bytes()) else {
            continue;
        };
        let p = join(dir, &name);
        if claims.covers(&p) {
            continue;
        }
        if kept(&p, excepts) {
            keeps = true;
            continue;
        }
        if st.is_dir() {
            let child_keeps = plan_subtree(root, &p, &st, excepts, claims, out, depth + 1);
            // A mount point (another filesystem) is emptied but stays.
            if child_keeps || st.dev != dir_stat.dev {
                keeps = true;
            } else {
                out.push((Op::Rmdir, p, st));
            }
        } else {
            out.push((Op::Delete, p, st));
        }
    }
    keeps
}

/// Turns (op, path, stat) into planned actions with bytes: a file's blocks
/// count once, and only when every one of its hard links goes.
/// `inline_data`: as `Ctx::inline_data` (ext4's inline files report
/// sectors no block holds).
fn price(items: Vec<(Op, PathBuf, Stat)>, inline_data: &[(u64, u64)]) -> Vec<Planned> {
    let mut links: HashMap<(u64, u64), u64> = HashMap::new();
    for (op, _, st) in &items {
        if *op == Op::Delete && !st.is_dir() {
            *links.entry((st.dev, st.ino)).or_default() += 1;
        }
    }
    let mut priced: BTreeSet<(u64, u64)> = BTreeSet::new();
    items
        .into_iter()
        .map(|(op, path, st)| {
            let allocated = alloc::real_allocated(&st, inline_data);
            let bytes = match op {
                Op::Delete if !st.is_dir() => {
                    let key = (st.dev, st.ino);
                    let all = links.get(&key).copied().unwrap_or(0) >= st.nlink;
                    if all && priced.insert(key) {
                        allocated
                    } else {
                        0
                    }
                }
                _ => allocated,
            };
            Planned::new(op, path.to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

/// Plans one profile against the guest. Errors in a user's globs (after
/// `--set`) are returned; everything about the guest is a note.
pub fn plan_profile(ctx: &Ctx, p: &Profile, claims: &mut Claims) -> Result<ProfilePlan, String> {
    let mut plan = ProfilePlan {
        name: p.name.clone(),
        description: p.description.clone(),
        applicable: true,
        reason: None,
        steps: Vec::new(),
        removed_bytes: 0,
        allocated_bytes: 0,
        freed_bytes: 0,
        measured_freed_bytes: None,
        measured_filesystems: Vec::new(),
        failures: Vec::new(),
        seconds: 0.0,
    };
    if let Some(c) = &p.applies_if {
        if !condition_holds(ctx.root, c, &p.vars)? {
            plan.applicable = false;
            plan.reason = Some("does not apply to this guest".into());
            return Ok(plan);
        }
    }
    for step in &p.steps {
        let mut sp = StepPlan::new(step.action.kind());
        if let Some(c) = &step.when {
            if !condition_holds(ctx.root, c, &p.vars)? {
                sp.note = Some("condition not met; skipped".into());
                plan.steps.push(sp);
                continue;
            }
        }
        let excepts = globs(&step.except, &p.vars)?;
        let mut items: Vec<(Op, PathBuf, Stat)> = Vec::new();
        match &step.action {
            Action::Delete(g) | Action::EmptyDir(g) => {
                let empty = matches!(step.action, Action::EmptyDir(_));
                let matches = find_all(ctx.root, &globs(g, &p.vars)?);
                let mut local = Claims::default();
                for m in matches {
                    if claims.covers(&m.path) || local.covers(&m.path) || kept(&m.path, &excepts) {
                        continue;
                    }
                    if empty {
                        if !m.stat.is_dir() {
                            sp.note = Some(format!(
                                "{} is not a directory; left alone",
                                m.path.display()
                            ));
                            continue;
                        }
                        plan_subtree(ctx.root, &m.path, &m.stat, &excepts, claims, &mut items, 0);
                        local.add(&m.path);
                        continue;
                    }
                    if m.stat.is_dir() {
                        let parent_dev = ctx
                            .root
                            .lstat(root::split(&m.path).0)
                            .map(|s| s.dev)
                            .unwrap_or(m.stat.dev);
                        let keeps = plan_subtree(
                            ctx.root, &m.path, &m.stat, &excepts, claims, &mut items, 0,
                        );
                        if !keeps && parent_dev == m.stat.dev {
                            items.push((Op::Rmdir, m.path.clone(), m.stat));
                        }
                    } else {
                        items.push((Op::Delete, m.path.clone(), m.stat));
                    }
                    local.add(&m.path);
                }
                for (_, path, _) in &items {
                    claims.add(path);
                }
                for m in local.paths {
                    if !empty {
                        claims.add(&m);
                    }
                }
            }
            Action::Truncate(g) => {
                let matches = find_all(ctx.root, &globs(g, &p.vars)?);
                for m in matches {
                    if !m.stat.is_file() || m.stat.size == 0 && m.stat.allocated == 0 {
                        continue;
                    }
                    if claims.covers(&m.path) || kept(&m.path, &excepts) {
                        continue;
                    }
                    claims.add(&m.path);
                    items.push((Op::Truncate, m.path, m.stat));
                }
            }
            Action::KeepNewestKernels(count) => {
                let keep = match count {
                    Count::N(n) => *n,
                    Count::Var(v) => {
                        let val = schema::expand_one(v, &p.vars)
                            .map_err(|e| format!("profile {}: {e}", p.name))?;
                        val.trim().parse().map_err(|_| {
                            format!("profile {}: {v} ('{val}') must be a whole number", p.name)
                        })?
                    }
                };
                if keep == 0 {
                    return Err(format!(
                        "profile {}: keeping 0 kernels would leave the guest unbootable",
                        p.name
                    ));
                }
                match kernels::plan(ctx, keep) {
                    Ok(kp) => {
                        sp.remove_packages = kp.purge.clone();
                        sp.keep_packages = kp.keep.clone();
                        sp.note = kp.note.clone();
                        for (path, st) in &kp.paths {
                            if claims.covers(path) {
                                continue;
                            }
                            claims.add(path);
                            items.push((Op::Package, path.clone(), *st));
                        }
                        sp.kernel = Some(kp);
                    }
                    Err(e) => sp.note = Some(e),
                }
            }
            Action::Run(cmd) => {
                sp.command = Some(cmd.clone());
                sp.actions.push(Planned::new(Op::Run, cmd.clone(), 0));
                if !ctx.allow_run {
                    sp.note = Some("skipped: run steps need --allow-run".into());
                    sp.actions.clear();
                    sp.command = None;
                }
            }
            Action::Write(w) => {
                let path = schema::expand_one(&w.path.0, &p.vars)
                    .map_err(|e| format!("profile {}: {e}", p.name))?;
                let mode = w.mode.unwrap_or(schema::FileMode::DEFAULT).0;
                let content = w.content.clone().into_bytes();
                let new = alloc::New::File(content.len() as u64);
                sp.actions
                    .push(predicted(ctx, claims, Op::Write, &path, new));
                sp.write = Some((PathBuf::from(path), content, mode));
            }
            Action::Symlink(s) => {
                let path = schema::expand_one(&s.path.0, &p.vars)
                    .map_err(|e| format!("profile {}: {e}", p.name))?;
                let target = s.target.clone().into_bytes();
                let new = alloc::New::Symlink(&target);
                sp.actions
                    .push(predicted(ctx, claims, Op::Symlink, &path, new));
                sp.link = Some((PathBuf::from(path), target));
            }
        }
        sp.actions.extend(price(items, &ctx.inline_data));
        plan.steps.push(sp);
    }
    plan.removed_bytes = plan.paths().map(|a| a.bytes).sum();
    plan.allocated_bytes = plan.paths().map(|a| a.allocated_bytes).sum();
    plan.freed_bytes = net(plan.removed_bytes, plan.allocated_bytes);
    Ok(plan)
}

/// `removed - allocated`, signed.
pub fn net(removed: u64, allocated: u64) -> i64 {
    let d = i128::from(removed) - i128::from(allocated);
    i64::try_from(d).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
}

/// A write or symlink step's action, priced by `alloc::predict`.
fn predicted(ctx: &Ctx, claims: &mut Claims, op: Op, path: &str, new: alloc::New) -> Planned {
    let p = Path::new(path);
    let paths = &claims.paths;
    let removed = |q: &Path| q.ancestors().any(|a| paths.contains(a));
    let pr = alloc::predict(
        ctx.root,
        p,
        new,
        &ctx.inline_data,
        removed,
        &mut claims.written,
    );
    Planned {
        op,
        path: path.to_string(),
        bytes: pr.freed,
        allocated_bytes: pr.allocated,
    }
}

/// Plans every selected profile in order (claims carried across them).
pub fn plan_all(ctx: &Ctx, profiles: &[Profile]) -> Result<Vec<ProfilePlan>, String> {
    let mut claims = Claims::default();
    profiles
        .iter()
        .map(|p| plan_profile(ctx, p, &mut claims))
        .collect()
}

/// Carries out a plan. Failures on single paths are recorded, not fatal.
pub fn execute(ctx: &Ctx, plan: &mut ProfilePlan) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    for sp in &mut plan.steps {
        if crate::interrupt::requested() {
            anyhow::bail!(crate::interrupt::Interrupted);
        }
        if let Some(kp) = &sp.kernel {
            if !kp.purge.is_empty() {
                let sb = ctx
                    .sandbox
                    .ok_or_else(|| anyhow::anyhow!("removing kernels needs the guest sandbox"))?;
                kernels::execute(sb, ctx.root, kp, &mut plan.failures)?;
                // A grub.cfg regenerated over loop devices must not name them.
                for cfg in ["/boot/grub/grub.cfg", "/boot/grub2/grub.cfg"] {
                    if let Ok(b) = ctx.root.read(cfg, 16 << 20) {
                        if String::from_utf8_lossy(&b).contains("root=/dev/loop") {
                            anyhow::bail!(
                                "{cfg} was regenerated with root=/dev/loop*: the image would not boot"
                            );
                        }
                    }
                }
            }
        }
        if let Some((path, content, mode)) = &sp.write {
            let r = path
                .parent()
                .map(|d| ctx.root.mkdir_p(d, 0o755))
                .unwrap_or(Ok(()))
                .and_then(|_| ctx.root.write_file(path, content, *mode));
            if let Err(e) = r {
                plan.failures.push(format!("{}: {e}", path.display()));
            }
        }
        if let Some((path, target)) = &sp.link {
            let r = path
                .parent()
                .map(|d| ctx.root.mkdir_p(d, 0o755))
                .unwrap_or(Ok(()))
                .and_then(|_| ctx.root.symlink(path, target));
            if let Err(e) = r {
                plan.failures.push(format!("{}: {e}", path.display()));
            }
        }
        if let Some(cmd) = &sp.command {
            let sb = ctx
                .sandbox
                .ok_or_else(|| anyhow::anyhow!("run steps need the guest sandbox"))?;
            let (ok, output) = sb.run(&["/bin/sh", "-c", cmd])?;
            if !ok {
                anyhow::bail!(
                    "profile {}: run step failed: {}: {}",
                    plan.name,
                    printable(cmd),
                    output_tail(&output, 3)
                );
            }
        }
        for a in &sp.actions {
            let path = Path::new(&a.path);
            let r = match a.op {
                Op::Delete => ctx.root.remove(path, false),
                Op::Rmdir => ctx.root.remove(path, true),
                Op::Truncate => ctx.root.truncate(path),
                // The package manager removed these (kernels::execute
                // swept the per-version trees it left).
                Op::Package => Ok(()),
                Op::Write | Op::Symlink | Op::Run => Ok(()),
            };
            if let Err(e) = r {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    plan.failures.push(format!("{}: {e}", a.path));
                }
            }
        }
    }
    plan.seconds = t0.elapsed().as_secs_f64();
    Ok(())
}
