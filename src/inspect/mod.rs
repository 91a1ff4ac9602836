//! `analyze --guest`: where the bytes inside a mounted guest go. One walk
//! of the guest (through descriptors, never following a guest symlink, into
//! every filesystem mounted as the guest's fstab says) gives directory
//! sizes (allocated and apparent bytes; every inode counted once, as `du`
//! does), the largest files, and the candidates for duplicates (same size,
//! then same SHA-256); each entry a profile's dry-run plan acts on is
//! charged to that profile. Package sizes come from the guest's package
//! databases (`packages`), never from running guest binaries.

pub mod extents;
pub mod html;
use crate::pkgdb as packages;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use serde::Serialize;
use sha2::Digest;

use crate::guest::Mounted;
use crate::guest::root::{self, GuestRoot, Stat};
use crate::profile::plan::{MAX_DEPTH, Op, ProfilePlan};

/// A directory and what is below it.
#[derive(Debug, Clone)]
pub struct Node {
    /// Canonical guest path, raw bytes.
    pub path: Vec<u8>,
    pub depth: usize,
    pub apparent: u64,
    pub allocated: u64,
    /// Allocated bytes of the directory itself and the non-directories
    /// directly in it.
    pub own_allocated: u64,
    /// Allocated bytes below this directory each profile would remove
    /// (indexed like the plans).
    pub removable: Vec<u64>,
    /// The same for the directory itself and its direct non-directories.
    pub own_removable: Vec<u64>,
    pub children: Vec<Node>,
}

impl Node {
    fn new(path: Vec<u8>, depth: usize, np: usize) -> Self {
        Self {
            path,
            depth,
            apparent: 0,
            allocated: 0,
            own_allocated: 0,
            removable: vec![0; np],
            own_removable: vec![0; np],
            children: Vec::new(),
        }
    }
    /// Every node to the kept depth, this one first.
    pub fn all(&self) -> Vec<&Node> {
        let mut v = vec![self];
        for c in &self.children {
            v.extend(c.all());
        }
        v
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    pub path: String,
    pub allocated_bytes: u64,
    pub apparent_bytes: u64,
    /// The profile that would remove or truncate it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_by: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DupGroup {
    pub sha256: String,
    pub size: u64,
    pub allocated_bytes: u64,
    pub paths: Vec<String>,
    /// Allocated bytes that keeping one copy would save.
    pub saved_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Duplicates {
    pub groups: usize,
    pub files: usize,
    /// Allocated bytes a dedup (one copy of each group) would save.
    pub saved_bytes: u64,
    /// Bytes read to hash candidates.
    pub hashed_bytes: u64,
    /// The groups saving most, largest first (at most --top).
    pub largest: Vec<DupGroup>,
}

/// Everything `analyze --guest` finds inside the guest.
pub struct Inspection {
    pub mounts: Vec<Mounted>,
    pub warnings: Vec<String>,
    pub tree: Node,
    pub files: u64,
    pub unreadable_dirs: u64,
    pub top_files: Vec<FileEntry>,
    pub packages: Vec<packages::PackageDb>,
    pub profiles: Vec<ProfilePlan>,
    pub duplicates: Duplicates,
    pub depth: usize,
    /// Disk byte ranges of the data the plans remove (`extents`), for a
    /// fresh sample of what stays; None when they could not be mapped.
    pub removed_extents: Option<Vec<crate::extent::Extent>>,
}

/// Regular files by size: (path, allocated bytes, (dev, ino)).
type BySize = HashMap<u64, Vec<(Vec<u8>, u64, (u64, u64))>>;

struct Walker<'a> {
    seen: HashSet<(u64, u64)>,
    removed: &'a HashMap<String, usize>,
    np: usize,
    keep_depth: usize,
    top: usize,
    files: Vec<(u64, Vec<u8>, u64, Option<usize>)>,
    by_size: BySize,
    nfiles: u64,
    unreadable: u64,
}

fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if p != b"/" {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn open_child_dir(dirfd: &OwnedFd, name: &[u8]) -> std::io::Result<OwnedFd> {
    root::openat2(
        dirfd.as_raw_fd(),
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
}

impl Walker<'_> {
    fn profile_of(&self, path: &[u8]) -> Option<usize> {
        self.removed
            .get(String::from_utf8_lossy(path).as_ref())
            .copied()
    }

    /// Counts an inode once; returns whether it was new.
    fn first(&mut self, st: &Stat) -> bool {
        st.nlink <= 1 && !st.is_dir() || self.seen.insert((st.dev, st.ino))
    }

    fn keep_file(&mut self, path: &[u8], st: &Stat, prof: Option<usize>) {
        self.files
            .push((st.allocated, path.to_vec(), st.size, prof));
        if self.files.len() >= self.top.max(1) * 64 {
            self.trim_files();
        }
    }

    fn trim_files(&mut self) {
        self.files
            .sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        self.files.truncate(self.top);
    }

    fn walk(&mut self, fd: &OwnedFd, path: Vec<u8>, st: &Stat, depth: usize) -> Node {
        let mut n = Node::new(path, depth, self.np);
        if self.first(st) {
            n.apparent += st.size;
            n.own_allocated += st.allocated;
            if let Some(p) = self.profile_of(&n.path) {
                n.own_removable[p] += st.allocated;
            }
        }
        if depth > MAX_DEPTH {
            self.unreadable += 1;
            return self.finish(n);
        }
        if crate::interrupt::requested() {
            return self.finish(n); // inspect() then fails as interrupted
        }
        let Ok(names) = root::list_dir(fd.as_raw_fd()) else {
            self.unreadable += 1;
            return self.finish(n);
        };
        for name in names {
            let name = name.as_bytes();
            let Ok(cst) = root::lstat_at(fd.as_raw_fd(), name) else {
                continue;
            };
            let cpath = child_path(&n.path, name);
            if cst.is_dir() {
                let Ok(cfd) = open_child_dir(fd, name) else {
                    self.unreadable += 1;
                    continue;
                };
                let c = self.walk(&cfd, cpath, &cst, depth + 1);
                n.apparent += c.apparent;
                n.allocated += c.allocated;
                for (a, b) in n.removable.iter_mut().zip(&c.removable) {
                    *a += b;
                }
                if depth < self.keep_depth {
                    n.children.push(c);
                }
                continue;
            }
            if !self.first(&cst) {
                continue;
            }
            self.nfiles += 1;
            n.apparent += cst.size;
            n.own_allocated += cst.allocated;
            let prof = self.profile_of(&cpath);
            if let Some(p) = prof {
                n.own_removable[p] += cst.allocated;
            }
            if cst.is_file() {
                if cst.size > 0 {
                    self.by_size.entry(cst.size).or_default().push((
                        cpath.clone(),
                        cst.allocated,
                        (cst.dev, cst.ino),
                    ));
                }
                self.keep_file(&cpath, &cst, prof);
            }
        }
        self.finish(n)
    }

    fn finish(&self, mut n: Node) -> Node {
        n.allocated += n.own_allocated;
        for (a, b) in n.removable.iter_mut().zip(&n.own_removable) {
            *a += b;
        }
        n.children.sort_by(|a, b| {
            b.allocated
                .cmp(&a.allocated)
                .then_with(|| a.path.cmp(&b.path))
        });
        n
    }
}

/// SHA-256 of a guest file by canonical path (no symlink followed); None
/// if it cannot be read or is no longer the file that was listed.
fn hash_file(root: &GuestRoot, path: &[u8], id: (u64, u64)) -> Option<[u8; 32]> {
    use std::io::Read;
    let rel = path.strip_prefix(b"/").unwrap_or(path);
    let fd = root::openat2(
        root.fd(),
        rel,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
    .ok()?;
    let st = root::lstat_at(fd.as_raw_fd(), b"").ok()?;
    if !st.is_file() || (st.dev, st.ino) != id {
        return None;
    }
    let mut f = std::fs::File::from(fd);
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(_) => return None,
        }
    }
    Some(h.finalize().into())
}

fn duplicates(root: &GuestRoot, by_size: BySize, top: usize) -> Duplicates {
    let mut groups: Vec<DupGroup> = Vec::new();
    let mut hashed = 0u64;
    let mut sizes: Vec<_> = by_size.into_iter().filter(|(_, v)| v.len() > 1).collect();
    sizes.sort_by_key(|(s, _)| std::cmp::Reverse(*s));
    for (size, files) in sizes {
        let mut by_hash: BTreeMap<[u8; 32], Vec<(Vec<u8>, u64)>> = BTreeMap::new();
        for (path, alloc, id) in files {
            if crate::interrupt::requested() {
                break;
            }
            hashed += size;
            if let Some(h) = hash_file(root, &path, id) {
                by_hash.entry(h).or_default().push((path, alloc));
            }
        }
        for (h, mut v) in by_hash {
            if v.len() < 2 {
                continue;
            }
            v.sort();
            let alloc = v.iter().map(|x| x.1).min().unwrap_or(0);
            let saved: u64 =
                v.iter().map(|x| x.1).sum::<u64>() - v.iter().map(|x| x.1).max().unwrap_or(0);
            groups.push(DupGroup {
                sha256: hex::encode(h),
                size,
                allocated_bytes: alloc,
                paths: v
                    .iter()
                    .map(|x| String::from_utf8_lossy(&x.0).into_owned())
                    .collect(),
                saved_bytes: saved,
            });
        }
    }
    groups.sort_by(|a, b| {
        b.saved_bytes
            .cmp(&a.saved_bytes)
            .then_with(|| a.paths.cmp(&b.paths))
    });
    let d = Duplicates {
        groups: groups.len(),
        files: groups.iter().map(|g| g.paths.len()).sum(),
        saved_bytes: groups.iter().map(|g| g.saved_bytes).sum(),
        hashed_bytes: hashed,
        largest: Vec::new(),
    };
    Duplicates {
        largest: groups.into_iter().take(top).collect(),
        ..d
    }
}

/// Guest path -> index of the first profile whose plan removes or
/// truncates it.
fn removal_map(plans: &[ProfilePlan]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for (i, p) in plans.iter().enumerate() {
        for a in p.paths() {
            if matches!(a.op, Op::Delete | Op::Rmdir | Op::Truncate | Op::Package) {
                m.entry(a.path.clone()).or_insert(i);
            }
        }
    }
    m
}

/// Walks the mounted guest `root`. `depth`: directory levels kept in the
/// tree (the walk itself goes all the way down); `top`: list lengths.
pub fn inspect(
    root: &GuestRoot,
    mounts: Vec<Mounted>,
    warnings: Vec<String>,
    profiles: Vec<ProfilePlan>,
    depth: usize,
    top: usize,
) -> anyhow::Result<Inspection> {
    let removed = removal_map(&profiles);
    let mut w = Walker {
        seen: HashSet::new(),
        removed: &removed,
        np: profiles.len(),
        keep_depth: depth,
        top,
        files: Vec::new(),
        by_size: HashMap::new(),
        nfiles: 0,
        unreadable: 0,
    };
    let fd = root.open_dir_strict(b"/")?;
    let st = root::lstat_at(fd.as_raw_fd(), b"")?;
    let tree = w.walk(&fd, b"/".to_vec(), &st, 0);
    if crate::interrupt::requested() {
        return Err(crate::pipeline::PipelineError::Interrupted.into());
    }
    w.trim_files();
    let top_files = w
        .files
        .iter()
        .map(|(alloc, p, size, prof)| FileEntry {
            path: String::from_utf8_lossy(p).into_owned(),
            allocated_bytes: *alloc,
            apparent_bytes: *size,
            removed_by: prof.map(|i| profiles[i].name.clone()),
        })
        .collect();
    let (nfiles, unreadable) = (w.nfiles, w.unreadable);
    let by_size = std::mem::take(&mut w.by_size);
    let dups = duplicates(root, by_size, top);
    if crate::interrupt::requested() {
        return Err(crate::pipeline::PipelineError::Interrupted.into());
    }
    Ok(Inspection {
        mounts,
        warnings,
        tree,
        files: nfiles,
        unreadable_dirs: unreadable,
        top_files,
        packages: packages::read_all(root),
        profiles,
        duplicates: dups,
        depth,
        removed_extents: None,
    })
}

impl Inspection {
    /// Directories to the kept depth (the root excluded), largest first.
    pub fn largest_dirs(&self, n: usize) -> Vec<&Node> {
        let mut v: Vec<&Node> = self.tree.all().into_iter().skip(1).collect();
        v.sort_by(|a, b| {
            b.allocated
                .cmp(&a.allocated)
                .then_with(|| a.path.cmp(&b.path))
        });
        v.truncate(n);
        v
    }

    /// Bytes the selected profiles' plans free, net of what their writes
    /// allocate.
    pub fn freed_bytes(&self) -> i64 {
        self.profiles.iter().map(|p| p.freed_bytes).sum()
    }

    /// `freed_bytes`, 0 when the writes take more than is removed.
    pub fn freed_bytes_or_zero(&self) -> u64 {
        u64::try_from(self.freed_bytes()).unwrap_or(0)
    }

    fn node_json(&self, n: &Node) -> serde_json::Value {
        let removable: serde_json::Map<String, serde_json::Value> = self
            .profiles
            .iter()
            .zip(&n.removable)
            .filter(|(_, b)| **b > 0)
            .map(|(p, b)| (p.name.clone(), (*b).into()))
            .collect();
        let mut v = serde_json::json!({
            "path": String::from_utf8_lossy(&n.path),
            "depth": n.depth,
            "allocated_bytes": n.allocated,
            "apparent_bytes": n.apparent,
            "removable_bytes": removable,
        });
        if !n.children.is_empty() {
            v["children"] = n.children.iter().map(|c| self.node_json(c)).collect();
        }
        v
    }

    /// The `guest` object of `analyze --guest --json` (docs/json.md).
    pub fn to_json(&self, top: usize) -> serde_json::Value {
        let plans: Vec<serde_json::Value> = self
            .profiles
            .iter()
            .map(|p| {
                let mut v = serde_json::to_value(p).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.remove("failures");
                    o.remove("seconds");
                    o.remove("measured_freed_bytes");
                    o.remove("measured_filesystems");
                }
                v
            })
            .collect();
        serde_json::json!({
            "mounts": self.mounts,
            "warnings": self.warnings,
            "files": self.files,
            "unreadable_directories": self.unreadable_dirs,
            "allocated_bytes": self.tree.allocated,
            "apparent_bytes": self.tree.apparent,
            "depth": self.depth,
            "tree": self.node_json(&self.tree),
            "largest_directories": self.largest_dirs(top).iter().map(|n| serde_json::json!({
                "path": String::from_utf8_lossy(&n.path),
                "allocated_bytes": n.allocated,
                "apparent_bytes": n.apparent,
            })).collect::<Vec<_>>(),
            "largest_files": self.top_files,
            "packages": self.packages,
            "profiles": plans,
            "freed_bytes": self.freed_bytes(),
            "duplicates": self.duplicates,
        })
    }
}
