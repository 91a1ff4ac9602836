//! `keep-newest-kernels`: old kernels are removed through the guest's
//! package manager, never by deleting files, so its database stays
//! consistent. dpkg: `dpkg --purge` run chrooted in the guest (maintainer
//! scripts remove the initramfs and regenerate grub.cfg); rpm: `rpm -e` run
//! chrooted with the guest's own rpm; apk installs one kernel per flavour, so
//! there is nothing old to remove.
//!
//! The plan lists every file the removal takes away: the packages' files
//! (dpkg's `.list`), `/lib/modules/KVER` and `/boot/*-KVER`. After the
//! package manager ran, whatever of that list is left (generated files no
//! package owns) is swept.
//!
//! Planning runs no guest binary for dpkg: it reads `/var/lib/dpkg/status`
//! and the `.list` files. For rpm it reads `rpmdb.sqlite` (rpm 4.16 and
//! later; crate::pkgdb decodes the headers: NAME, EPOCH, VERSION,
//! RELEASE, ARCH, the file lists, provides and requires), in dry and real
//! runs alike. The older formats (Berkeley DB, ndb) only the guest's rpm
//! reads soundly: there rpm kernels are planned by `rpm -q` in the sandbox
//! during a real run, and a dry run (which runs nothing from the guest)
//! says they are not planned.
//!
//! Removal runs one package-manager call per kernel version, and checks for
//! Ctrl-C between calls: a call is never interrupted (the sandbox has its
//! own process group), so dpkg is never stopped in the middle of a package.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::ctx::{Ctx, MAX_DEPTH, output_tail};
use super::version;
use crate::guest::root::{self, GuestRoot, Stat};
use crate::guest::sandbox::{OUTPUT_CUT, Sandbox};
use crate::pkgdb::{self as packages, RpmDb, RpmHeader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Dpkg,
    Rpm,
}

#[derive(Debug, Clone)]
pub struct KernelPlan {
    pub backend: Backend,
    /// Packages to remove (kernel images and their per-version companions).
    pub purge: Vec<String>,
    /// The same, one group per kernel version (KVER, packages): one
    /// package-manager call each.
    pub groups: Vec<(String, Vec<String>)>,
    /// Kernel packages kept.
    pub keep: Vec<String>,
    /// Files and directories that go (files first, then directories deepest first).
    pub paths: Vec<(PathBuf, Stat)>,
    /// Of those, what is swept after the package manager ran if it is still
    /// there: only the per-version trees (/lib/modules/KVER, /boot/*-KVER,
    /// ...), never a packaged path another package might share.
    pub sweep: Vec<PathBuf>,
    pub note: Option<String>,
}

struct DebPkg {
    name: String,
    version: String,
    installed: bool,
    depends: Vec<String>,
}

fn parse_status(text: &str) -> Vec<DebPkg> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let mut p = DebPkg {
            name: String::new(),
            version: String::new(),
            installed: false,
            depends: Vec::new(),
        };
        let mut field = "";
        for line in para.lines() {
            let (key, val) = if line.starts_with([' ', '\t']) {
                (field, line.trim())
            } else if let Some((k, v)) = line.split_once(':') {
                field = k;
                (k, v.trim())
            } else {
                continue;
            };
            match key {
                "Package" => p.name = val.to_string(),
                "Version" => p.version = val.to_string(),
                "Status" => p.installed = val.ends_with(" installed") && val.starts_with("install"),
                "Depends" | "Pre-Depends" => {
                    for d in val.split([',', '|']) {
                        let n = d.trim().split([' ', '(', ':']).next().unwrap_or("");
                        if !n.is_empty() {
                            p.depends.push(n.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        if !p.name.is_empty() {
            out.push(p);
        }
    }
    out
}

fn dpkg_list(root: &GuestRoot, pkg: &str) -> Vec<String> {
    for name in [
        format!("{pkg}.list"),
        format!("{pkg}:amd64.list"),
        format!("{pkg}:arm64.list"),
    ] {
        if let Ok(b) = root.read(&format!("/var/lib/dpkg/info/{name}"), 64 << 20) {
            return String::from_utf8_lossy(&b)
                .lines()
                .map(str::to_string)
                .collect();
        }
    }
    Vec::new()
}

/// A kernel version string safe to put in a path.
fn valid_kver(k: &str) -> bool {
    !k.is_empty() && k != "." && k != ".." && !k.contains('/') && !k.contains('\0')
}

/// A packaged path as a removal candidate: its canonical path when it is a
/// file or a symlink that does not lead to a directory (dpkg lists
/// directories, and on merged-/usr guests `/lib` is a symlink to one).
fn packaged_file(root: &GuestRoot, p: &str) -> Option<(PathBuf, Stat)> {
    let (path, st) = canon(root, p)?;
    if st.is_dir() {
        return None;
    }
    if st.is_symlink() {
        if let Ok(fd) = root.open_at(p.as_bytes(), libc::O_PATH) {
            if root::lstat_at(fd.as_raw_fd(), b"").is_ok_and(|t| t.is_dir()) {
                return None;
            }
        }
    }
    Some((path, st))
}

/// The per-version trees of removed kernels: swept after the package
/// manager ran, and part of the plan's paths.
#[derive(Default)]
struct Trees {
    files: BTreeMap<PathBuf, Stat>,
    dirs: BTreeMap<PathBuf, Stat>,
}

impl Trees {
    /// Adds `PREFIX+KVER` for each prefix, and the /boot entries named
    /// after the version (`vmlinuz-KVER`, `initramfs-KVER.img`, ...).
    fn add_version(&mut self, root: &GuestRoot, kver: &str, prefixes: &[&str]) {
        for p in prefixes {
            collect_tree(
                root,
                &format!("{p}{kver}"),
                &mut self.files,
                &mut self.dirs,
                0,
            );
        }
        let Ok(fd) = root.open_dir(b"/boot") else {
            return;
        };
        let (end, mid) = (format!("-{kver}"), format!("-{kver}."));
        for name in root::list_dir(fd.as_raw_fd()).unwrap_or_default() {
            let n = name.to_string_lossy();
            if n.ends_with(&end) || n.contains(&mid) {
                collect_tree(
                    root,
                    &format!("/boot/{n}"),
                    &mut self.files,
                    &mut self.dirs,
                    0,
                );
            }
        }
    }

    /// Sets the plan's sweep list and its paths (packaged files plus the trees).
    fn finish(self, plan: &mut KernelPlan, mut files: BTreeMap<PathBuf, Stat>) {
        plan.sweep = order(self.files.clone(), self.dirs.clone())
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        files.extend(self.files);
        plan.paths = order(files, self.dirs);
    }
}

/// Canonical guest path of `p` (parent resolved inside the guest) and its lstat.
fn canon(root: &GuestRoot, p: &str) -> Option<(PathBuf, Stat)> {
    let (parent, name) = root::split(Path::new(p));
    if name.is_empty() {
        return None;
    }
    let d = root.open_dir(parent).ok()?;
    let st = root::lstat_at(d.as_raw_fd(), name).ok()?;
    let dir = root.guest_path_of(d.as_raw_fd()).ok()?;
    Some((dir.join(std::ffi::OsStr::from_bytes(name)), st))
}

fn collect_tree(
    root: &GuestRoot,
    p: &str,
    files: &mut BTreeMap<PathBuf, Stat>,
    dirs: &mut BTreeMap<PathBuf, Stat>,
    depth: usize,
) {
    // Deeper than planning goes: left alone (and its ancestors stay).
    if depth > MAX_DEPTH {
        return;
    }
    let Some((path, st)) = canon(root, p) else {
        return;
    };
    if !st.is_dir() {
        files.insert(path, st);
        return;
    }
    let Ok(fd) = root.open_dir_strict(path.as_os_str().as_bytes()) else {
        return;
    };
    for name in root::list_dir(fd.as_raw_fd()).unwrap_or_default() {
        let child = path.join(&name);
        collect_tree(root, &child.to_string_lossy(), files, dirs, depth + 1);
    }
    dirs.insert(path, st);
}

fn order(files: BTreeMap<PathBuf, Stat>, dirs: BTreeMap<PathBuf, Stat>) -> Vec<(PathBuf, Stat)> {
    let mut out: Vec<(PathBuf, Stat)> = files.into_iter().collect();
    let mut d: Vec<(PathBuf, Stat)> = dirs.into_iter().collect();
    d.sort_by(|a, b| {
        b.0.components()
            .count()
            .cmp(&a.0.components().count())
            .then_with(|| a.0.cmp(&b.0))
    });
    out.extend(d);
    out
}

fn plan_dpkg(root: &GuestRoot, keep: u32) -> Result<KernelPlan, String> {
    let status = root
        .read("/var/lib/dpkg/status", 256 << 20)
        .map_err(|e| format!("cannot read /var/lib/dpkg/status: {e}"))?;
    let pkgs = parse_status(&String::from_utf8_lossy(&status));
    let installed: BTreeMap<&str, &DebPkg> = pkgs
        .iter()
        .filter(|p| p.installed)
        .map(|p| (p.name.as_str(), p))
        .collect();
    // Kernel images: linux-image-* packages that ship /boot/vmlinuz-KVER.
    let mut kernels: Vec<(&DebPkg, String, Vec<String>)> = Vec::new();
    for p in installed.values() {
        if !p.name.starts_with("linux-image-") {
            continue;
        }
        let list = dpkg_list(root, &p.name);
        if let Some(kver) = list
            .iter()
            .find_map(|l| l.strip_prefix("/boot/vmlinuz-"))
            .filter(|k| valid_kver(k))
            .map(str::to_string)
        {
            kernels.push((p, kver, list));
        }
    }
    kernels.sort_by(|a, b| {
        version::deb_cmp(&b.0.version, &a.0.version).then_with(|| version::deb_cmp(&b.1, &a.1))
    });
    let mut plan = KernelPlan {
        backend: Backend::Dpkg,
        purge: Vec::new(),
        groups: Vec::new(),
        keep: Vec::new(),
        paths: Vec::new(),
        sweep: Vec::new(),
        note: None,
    };
    if kernels.is_empty() {
        plan.note = Some("no kernel package installed".into());
        return Ok(plan);
    }
    let (kept, old) = kernels.split_at((keep as usize).min(kernels.len()));
    plan.keep = kept.iter().map(|k| k.0.name.clone()).collect();
    let mut candidates: Vec<(String, String, Vec<String>)> = Vec::new();
    for (p, kver, list) in old {
        let mut names = vec![(p.name.clone(), list.clone())];
        for companion in [
            "linux-headers-",
            "linux-modules-",
            "linux-modules-extra-",
            "linux-image-unsigned-",
        ] {
            let n = format!("{companion}{kver}");
            if n != p.name && installed.contains_key(n.as_str()) {
                let l = dpkg_list(root, &n);
                names.push((n, l));
            }
        }
        for (n, l) in names {
            candidates.push((n, kver.clone(), l));
        }
    }
    // Something that stays and depends on a candidate keeps it (and dpkg
    // would refuse anyway).
    let purge_names: BTreeSet<&str> = candidates.iter().map(|c| c.0.as_str()).collect();
    let mut blocked: BTreeSet<String> = BTreeSet::new();
    for p in installed.values() {
        if purge_names.contains(p.name.as_str()) {
            continue;
        }
        for d in &p.depends {
            if purge_names.contains(d.as_str()) {
                blocked.insert(d.clone());
            }
        }
    }
    let blocked_kvers: BTreeSet<String> = candidates
        .iter()
        .filter(|c| blocked.contains(&c.0))
        .map(|c| c.1.clone())
        .collect();
    if !blocked_kvers.is_empty() {
        plan.note = Some(format!(
            "kept kernel {} (an installed package depends on it)",
            blocked_kvers.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let mut files = BTreeMap::new();
    let mut trees = Trees::default();
    for (name, kver, list) in &candidates {
        if blocked_kvers.contains(kver) {
            continue;
        }
        plan.purge.push(name.clone());
        // Candidates come grouped by version (image, then companions).
        match plan.groups.last_mut() {
            Some((k, g)) if k == kver => g.push(name.clone()),
            _ => plan.groups.push((kver.clone(), vec![name.clone()])),
        }
        for l in list {
            if let Some((path, st)) = packaged_file(root, l) {
                files.insert(path, st);
            }
        }
        trees.add_version(
            root,
            kver,
            &[
                "/lib/modules/",
                "/usr/src/linux-headers-",
                "/var/lib/initramfs-tools/",
            ],
        );
    }
    trees.finish(&mut plan, files);
    Ok(plan)
}

fn plan_rpm(ctx: &Ctx, keep: u32) -> Result<KernelPlan, String> {
    let mut plan = KernelPlan {
        backend: Backend::Rpm,
        purge: Vec::new(),
        groups: Vec::new(),
        keep: Vec::new(),
        paths: Vec::new(),
        sweep: Vec::new(),
        note: None,
    };
    if !ctx.root.exists("/usr/bin/rpm") && !ctx.root.exists("/bin/rpm") {
        plan.note = Some("rpm guest without an rpm binary: kernels left alone".into());
        return Ok(plan);
    }
    // rpmdb.sqlite is read directly, in dry and real runs alike (so both
    // choose the same kernels); the guest's rpm only removes them. Other
    // database formats are planned by the guest's rpm in a real run.
    let why = match packages::rpm_headers(ctx.root) {
        RpmDb::Read(_, headers) => {
            plan_rpm_db(ctx.root, keep, &headers, &mut plan);
            return Ok(plan);
        }
        RpmDb::Unreadable(db, why) => format!("{db}: {why}"),
        RpmDb::Missing => "no rpm database file found".into(),
    };
    let Some(sb) = ctx.sandbox else {
        plan.note = Some(format!(
            "rpm kernels are not planned without running rpm (a dry run runs no guest binary, and {}); a real run asks the guest's rpm",
            crate::text::one_safe_line(&why)
        ));
        return Ok(plan);
    };
    let (ok, out) = sb
        .run(&[
            "rpm",
            "-q",
            "--qf",
            "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\t%{VERSION}-%{RELEASE}.%{ARCH}\n",
            RPM_KERNELS[0],
            RPM_KERNELS[1],
            RPM_KERNELS[2],
        ])
        .map_err(|e| format!("rpm query: {e}"))?;
    if !ok && out.trim().is_empty() {
        return Err("rpm -q failed in the guest".into());
    }
    let mut ks: Vec<(String, String, String)> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((
                f.next()?.to_string(),
                f.next()?.to_string(),
                f.next()?.to_string(),
            ))
        })
        .collect();
    // kernel-core is the package with the files; "kernel" is a meta package
    // of the same version. Group by KVER.
    let mut by_kver: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for (name, evr, kver) in ks.drain(..) {
        let e = by_kver.entry(kver.clone()).or_insert((evr, Vec::new()));
        e.1.push(format!("{name}-{kver}"));
    }
    let mut kernels: Vec<(String, String, Vec<String>)> = by_kver
        .into_iter()
        .map(|(k, (evr, p))| (k, evr, p))
        .collect();
    rpm_sort(&mut kernels);
    let (kept, old) = kernels.split_at((keep as usize).min(kernels.len()));
    plan.keep = kept.iter().flat_map(|k| k.2.clone()).collect();
    // Every kernel* package once; companions (modules, modules-core, ...)
    // share the kernel's VERSION-RELEASE.ARCH.
    let (_, all) = sb
        .run(&[
            "rpm",
            "-qa",
            "--qf",
            "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\n",
            "kernel*",
        ])
        .map_err(|e| format!("rpm query: {e}"))?;
    let mut files = BTreeMap::new();
    let mut trees = Trees::default();
    for (kver, _, pkgs) in old {
        if !valid_kver(kver) {
            continue;
        }
        let mut names: Vec<String> = all
            .lines()
            .filter(|l| l.ends_with(&format!("-{kver}")))
            .map(str::to_string)
            .collect();
        names.extend(pkgs.iter().cloned());
        names.sort();
        names.dedup();
        let mut argv = vec!["rpm", "-ql"];
        argv.extend(names.iter().map(String::as_str));
        let (_, fl) = sb.run(&argv).map_err(|e| format!("rpm -ql: {e}"))?;
        if fl.starts_with(OUTPUT_CUT) {
            return Err(format!("rpm -ql {kver}: the file list is too long to plan"));
        }
        for l in fl.lines().filter(|l| l.starts_with('/')) {
            if let Some((p, st)) = packaged_file(ctx.root, l) {
                files.insert(p, st);
            }
        }
        plan.purge.extend(names.iter().cloned());
        plan.groups.push((kver.clone(), names));
        trees.add_version(ctx.root, kver, &["/lib/modules/"]);
    }
    trees.finish(&mut plan, files);
    Ok(plan)
}

/// The kernel packages `rpm -q kernel-core kernel kernel-default` names.
const RPM_KERNELS: [&str; 3] = ["kernel-core", "kernel", "kernel-default"];

/// Newest first: EPOCHNUM, then VERSION-RELEASE, by rpm's comparison.
fn rpm_sort(kernels: &mut [(String, String, Vec<String>)]) {
    kernels.sort_by(|a, b| {
        let (ea, va) = a.1.split_once(':').unwrap_or(("0", &a.1));
        let (eb, vb) = b.1.split_once(':').unwrap_or(("0", &b.1));
        version::rpm_cmp(eb, ea).then_with(|| version::rpm_cmp(vb, va))
    });
}

const RPMSENSE_LESS: u32 = 2;
const RPMSENSE_GREATER: u32 = 4;
const RPMSENSE_EQUAL: u32 = 8;

/// (name, version) pairs of a header's provides, plus its own name.
fn provides(h: &RpmHeader) -> Vec<(String, String)> {
    let names = h.strings(packages::TAG_PROVIDENAME);
    let vers = h.strings(packages::TAG_PROVIDEVERSION);
    let mut out: Vec<(String, String)> = names
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, vers.get(i).cloned().unwrap_or_default()))
        .collect();
    out.push((h.name(), String::new()));
    out
}

fn strip_epoch0(v: &str) -> &str {
    v.strip_prefix("0:").unwrap_or(v)
}

/// Does a provide satisfy a requirement? Exact-version requirements
/// (`= V`) need that version (epoch 0 written or not); any other
/// requirement is judged by name alone, which keeps more rather than less.
fn satisfies(p: &(String, String), name: &str, flags: u32, ver: &str) -> bool {
    if p.0 != name {
        return false;
    }
    let exact = flags & RPMSENSE_EQUAL != 0 && flags & (RPMSENSE_LESS | RPMSENSE_GREATER) == 0;
    !exact || ver.is_empty() || p.1.is_empty() || strip_epoch0(&p.1) == strip_epoch0(ver)
}

/// The rpm plan from the headers of rpmdb.sqlite: the same choice the
/// `rpm -q` queries make, and a kernel that a package which stays requires
/// (by a name, an exact version, or a file only it provides) is kept, as
/// for dpkg.
fn plan_rpm_db(root: &GuestRoot, keep: u32, headers: &[RpmHeader], plan: &mut KernelPlan) {
    let nevra = |h: &RpmHeader| format!("{}-{}", h.name(), h.vra());
    let mut by_kver: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for name in RPM_KERNELS {
        for h in headers.iter().filter(|h| h.name() == name) {
            let kver = h.vra();
            let e = by_kver.entry(kver.clone()).or_insert((h.evr(), Vec::new()));
            e.1.push(format!("{name}-{kver}"));
        }
    }
    let mut kernels: Vec<(String, String, Vec<String>)> = by_kver
        .into_iter()
        .map(|(k, (evr, p))| (k, evr, p))
        .collect();
    if kernels.is_empty() {
        plan.note = Some("no kernel package installed".into());
        return;
    }
    rpm_sort(&mut kernels);
    let (kept, old) = kernels.split_at((keep as usize).min(kernels.len()));
    plan.keep = kept.iter().flat_map(|k| k.2.clone()).collect();
    // Candidates: every kernel* package whose NEVRA ends in an old KVER.
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (kver, _, pkgs) in old {
        if !valid_kver(kver) {
            continue;
        }
        let mut names: Vec<String> = headers
            .iter()
            .filter(|h| h.name().starts_with("kernel"))
            .map(nevra)
            .filter(|n| n.ends_with(&format!("-{kver}")))
            .collect();
        names.extend(pkgs.iter().cloned());
        names.sort();
        names.dedup();
        groups.push((kver.clone(), names));
    }
    let kver_of: BTreeMap<&str, &str> = groups
        .iter()
        .flat_map(|(k, ns)| ns.iter().map(move |n| (n.as_str(), k.as_str())))
        .collect();
    let (cands, stays): (Vec<&RpmHeader>, Vec<&RpmHeader>) = headers
        .iter()
        .partition(|h| kver_of.contains_key(nevra(h).as_str()));
    // What the candidates provide (capabilities and files), per KVER.
    let mut cand_caps: Vec<((String, String), &str)> = Vec::new();
    let mut cand_files: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for h in &cands {
        let n = nevra(h);
        let Some(k) = kver_of.get(n.as_str()).copied() else {
            continue;
        };
        cand_caps.extend(provides(h).into_iter().map(|p| (p, k)));
        for f in h.files() {
            cand_files.entry(f).or_default().insert(k);
        }
    }
    let stay_caps: Vec<(String, String)> = stays.iter().flat_map(|h| provides(h)).collect();
    let mut file_reqs: BTreeSet<String> = BTreeSet::new();
    let mut blocked: BTreeSet<String> = BTreeSet::new();
    for h in &stays {
        let names = h.strings(packages::TAG_REQUIRENAME);
        let flags = h.ints(packages::TAG_REQUIREFLAGS);
        let vers = h.strings(packages::TAG_REQUIREVERSION);
        for (i, r) in names.iter().enumerate() {
            if r.starts_with("rpmlib(") {
                continue;
            }
            if r.starts_with('/') {
                if cand_files.contains_key(r) {
                    file_reqs.insert(r.clone());
                }
                continue;
            }
            let (f, v) = (
                flags.get(i).copied().unwrap_or(0),
                vers.get(i).map(String::as_str).unwrap_or(""),
            );
            if stay_caps.iter().any(|p| satisfies(p, r, f, v)) {
                continue;
            }
            for (p, k) in &cand_caps {
                if satisfies(p, r, f, v) {
                    blocked.insert(k.to_string());
                }
            }
        }
    }
    if !file_reqs.is_empty() {
        let stay_files: BTreeSet<String> = stays
            .iter()
            .flat_map(|h| h.files())
            .filter(|f| file_reqs.contains(f))
            .collect();
        for f in file_reqs.difference(&stay_files) {
            if let Some(ks) = cand_files.get(f) {
                blocked.extend(ks.iter().map(|k| k.to_string()));
            }
        }
    }
    if !blocked.is_empty() {
        plan.note = Some(format!(
            "kept kernel {} (an installed package requires it)",
            blocked.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let mut files = BTreeMap::new();
    let mut trees = Trees::default();
    for (kver, names) in groups {
        if blocked.contains(&kver) {
            continue;
        }
        for h in cands.iter().filter(|h| names.contains(&nevra(h))) {
            for l in h.files() {
                if let Some((p, st)) = packaged_file(root, &l) {
                    files.insert(p, st);
                }
            }
        }
        trees.add_version(root, &kver, &["/lib/modules/"]);
        plan.purge.extend(names.iter().cloned());
        plan.groups.push((kver, names));
    }
    trees.finish(plan, files);
}

/// Plans the removal of all but the `keep` newest kernels.
pub fn plan(ctx: &Ctx, keep: u32) -> Result<KernelPlan, String> {
    let root = ctx.root;
    if root.exists("/var/lib/dpkg/status") {
        plan_dpkg(root, keep)
    } else if root.exists("/var/lib/rpm") || root.exists("/usr/lib/sysimage/rpm") {
        plan_rpm(ctx, keep)
    } else if root.exists("/lib/apk/db/installed") {
        Err("apk installs one kernel per flavour: nothing old to remove".into())
    } else {
        Err("no package database found (dpkg, rpm, apk)".into())
    }
}

/// Removes the planned packages inside the guest, then sweeps what is left
/// of the per-version trees (generated files no package owns).
pub fn execute(
    sb: &dyn Sandbox,
    root: &GuestRoot,
    plan: &KernelPlan,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    for (kver, group) in &plan.groups {
        // Between calls, never during one: dpkg/rpm finish the package they
        // are working on.
        if crate::interrupt::requested() {
            anyhow::bail!(crate::interrupt::Interrupted);
        }
        let mut argv: Vec<&str> = match plan.backend {
            Backend::Dpkg => vec!["dpkg", "--purge"],
            Backend::Rpm => vec!["rpm", "-e"],
        };
        argv.extend(group.iter().map(String::as_str));
        let (ok, out) = sb.run(&argv)?;
        if !ok {
            anyhow::bail!(
                "removing kernel {kver} failed ({}): {}",
                argv[..2].join(" "),
                output_tail(&out, 3)
            );
        }
    }
    if crate::interrupt::requested() {
        anyhow::bail!(crate::interrupt::Interrupted);
    }
    for p in &plan.sweep {
        if let Ok(st) = root.lstat(p.as_os_str().as_bytes()) {
            if let Err(e) = root.remove(p, st.is_dir()) {
                failures.push(format!("{}: {e}", p.display()));
            }
        }
    }
    Ok(())
}
