//! The privileged part: loop devices, mounts (guards that undo them), the
//! guest's root and fstab, paths resolved inside the guest, and the
//! sandbox that runs commands chrooted in the guest.
//!
//! Mounting follows libguestfs's inspection: every partition with a
//! filesystem we mount (ext2/3/4, xfs, btrfs, vfat) gets its own loop device
//! (offset + size limit); the one holding `/etc/fstab` and a `/usr` or `/bin`
//! is the root; then the guest's fstab says what else goes where (by UUID,
//! LABEL, PARTUUID or device name). Everything is mounted `nosuid,nodev,
//! noatime` under a private directory, read-only for a dry run.

pub mod loopdev;
pub mod lvfile;
pub mod mount;
pub mod root;
pub mod sandbox;
pub mod state;
pub mod verify;
pub mod volume;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::disk;
use crate::fs::{self, Region};
use loopdev::LoopDevice;
use mount::Mount;
use root::GuestRoot;
pub use volume::{Mapping, Volume};

/// A filesystem found on a partition.
#[derive(Debug, Clone, Serialize)]
pub struct FsId {
    /// Mount type: ext4 (also for ext2/3), xfs, btrfs, vfat, swap.
    pub kind: String,
    pub uuid: String,
    pub label: String,
}

fn uuid_str(b: &[u8]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn label_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim_end().to_string()
}

/// Identifies the filesystem on a partition: the kind from the probes in
/// `fs` (the same ones compaction uses), plus its UUID and label.
pub fn identify(r: &Region) -> Option<FsId> {
    let id = |kind: &str, at: u64, label_at: u64, label_len: usize| {
        let uuid = r.read(at, 16).ok()?;
        let label = r.read(label_at, label_len).ok()?;
        Some(FsId {
            kind: kind.into(),
            uuid: uuid_str(&uuid),
            label: label_str(&label),
        })
    };
    if fs::ext4::detect(r) {
        return id("ext4", 1024 + 104, 1024 + 120, 16);
    }
    if fs::xfs::detect(r) {
        return id("xfs", 32, 108, 12);
    }
    if fs::swap::detect(r) {
        return id("swap", 1024 + 12, 1024 + 28, 16);
    }
    if fs::recognise(r) == Some("btrfs") {
        return id("btrfs", 0x10020, 0x1012b, 256);
    }
    let x = r.read(0, 512).ok()?;
    let fat32 = &x[82..87] == b"FAT32";
    if x[510..512] == [0x55, 0xAA] && (fat32 || &x[54..59] == b"FAT16" || &x[54..59] == b"FAT12") {
        let at = if fat32 { 67 } else { 39 };
        let v = u32::from_le_bytes([x[at], x[at + 1], x[at + 2], x[at + 3]]);
        return Some(FsId {
            kind: "vfat".into(),
            uuid: format!("{:04X}-{:04X}", v >> 16, v & 0xFFFF),
            label: String::new(),
        });
    }
    None
}

/// A partition of the workspace and what is on it.
#[derive(Debug, Clone, Serialize)]
pub struct PartInfo {
    pub index: u32,
    pub start: u64,
    pub size: u64,
    #[serde(skip)]
    pub part_uuid: String,
    pub fs: Option<FsId>,
}

/// Lists the workspace's partitions and their filesystems.
pub fn partitions(image: &Path) -> anyhow::Result<Vec<PartInfo>> {
    let src = crate::image::raw::RawImage::open(File::open(image)?, image)?;
    Ok(partitions_of(&src))
}

/// Checks, before any workspace is built, that the disk `src` has a
/// volume vmfinal can mount as the guest's root at all; the error names
/// the real cause (a root on an LV vmfinal cannot map, an unreadable VG).
pub fn preflight(src: &dyn crate::image::BlockSource) -> anyhow::Result<()> {
    let parts = partitions_of(src);
    let vols = volume::scan(src, &parts);
    if !vols.list.iter().any(|v| v.mountable_kind().is_some()) {
        anyhow::bail!("{}", no_root_reason(&vols.list, &vols.warnings));
    }
    Ok(())
}

/// The partitions of the disk `src` and their filesystems.
pub fn partitions_of(src: &dyn crate::image::BlockSource) -> Vec<PartInfo> {
    let table = disk::read_partitions(src);
    table
        .partitions
        .iter()
        .map(|p| PartInfo {
            index: p.index,
            start: p.start,
            size: p.size,
            part_uuid: p.part_uuid.clone(),
            fs: identify(&Region {
                src,
                start: p.start,
                len: p.size,
            }),
        })
        .collect()
}

/// One mounted guest filesystem.
#[derive(Debug, Clone, Serialize)]
pub struct Mounted {
    pub mountpoint: String,
    pub fstype: String,
    /// Its partition (for an LV: the PV's partition).
    pub partition: u32,
    /// `partition 2`, `LVM logical volume vg/root`.
    pub volume: String,
    pub uuid: String,
    pub device: String,
    /// Index into `Guest::volumes`: mounts with the same one share a
    /// filesystem (one device, one superblock).
    #[serde(skip)]
    pub vol: usize,
}

/// The mounted guest. Dropping it unmounts everything (deepest first) and
/// detaches its loop devices.
pub struct Guest {
    mounts: Vec<Mount>,
    /// A private tmpfs holding the block nodes the guest's filesystems are
    /// mounted from (see `node_for`); unmounted last.
    devdir: Option<Mount>,
    devpath: PathBuf,
    /// One loop device per volume in use, by index into `volumes`.
    loops: Vec<(usize, LoopDevice)>,
    /// The FUSE views of LVs in scattered segments, by index into
    /// `volumes`: their loop devices are over these files.
    views: Vec<(usize, lvfile::Served)>,
    /// Each non-root mount's root directory, opened right after it was
    /// mounted (before any guest code ran): later host-side work on a
    /// mount (syncfs, statvfs, reclaim) goes through these descriptors, so
    /// a guest that renames a mount point's ancestor and puts a symlink in
    /// its place cannot steer it to a host path. Dropped before unmounting
    /// (a descriptor keeps its mount busy).
    mount_roots: Vec<(String, std::os::fd::OwnedFd)>,
    image: PathBuf,
    read_only: bool,
    pub root: GuestRoot,
    pub dir: PathBuf,
    pub mounted: Vec<Mounted>,
    pub parts: Vec<PartInfo>,
    pub volumes: Vec<Volume>,
    pub warnings: Vec<String>,
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.unmount();
    }
}

fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

const BASE_FLAGS: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;

/// Mount options beyond flags, per type; `ro` adds the no-replay ones.
fn mount_data(kind: &str, ro_retry: bool, extra: &str) -> String {
    let mut v: Vec<&str> = Vec::new();
    match kind {
        "xfs" => {
            v.push("nouuid");
            if ro_retry {
                v.push("norecovery");
            }
        }
        "ext4" if ro_retry => v.push("noload"),
        _ => {}
    }
    if !extra.is_empty() {
        v.push(extra);
    }
    v.join(",")
}

fn try_mount(
    dev: &Path,
    target: &Path,
    kind: &str,
    ro: bool,
    extra: &str,
    shown: &Path,
) -> std::io::Result<(Mount, Option<String>)> {
    let flags = BASE_FLAGS | if ro { libc::MS_RDONLY } else { 0 };
    match Mount::new(
        dev,
        target,
        kind,
        flags,
        &mount_data(kind, false, extra),
        shown,
    ) {
        Ok(m) => Ok((m, None)),
        Err(e) if ro && matches!(kind, "ext4" | "xfs") => {
            let m = Mount::new(
                dev,
                target,
                kind,
                flags,
                &mount_data(kind, true, extra),
                shown,
            )
            .map_err(|_| e)?;
            Ok((
                m,
                Some(format!(
                    "{} needs journal recovery: mounted without replaying it for the dry run",
                    dev.display()
                )),
            ))
        }
        Err(e) => Err(e),
    }
}

/// Whether the running kernel knows filesystem type `kind`.
fn host_has_fs(kind: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|t| t.lines().any(|l| l.split_whitespace().last() == Some(kind)))
}

/// Why no root was found, naming the real cause where there is one: a
/// filesystem on an LV vmfinal cannot map, an unreadable volume group.
pub fn no_root_reason(vols: &[Volume], warnings: &[String]) -> String {
    let refused: Vec<&Volume> = vols
        .iter()
        .filter(|v| matches!(v.mapping, Mapping::Refused(_)))
        .collect();
    // An LV named like a root first, then any with a filesystem.
    let pick = refused
        .iter()
        .find(|v| v.lv.as_ref().is_some_and(|l| l.lv.contains("root")) && v.fs.is_some())
        .or_else(|| refused.iter().find(|v| v.fs.is_some()))
        .or(refused.first());
    if let Some(v) = pick {
        let why = match &v.mapping {
            Mapping::Refused(w) => w.as_str(),
            Mapping::Loop { .. } | Mapping::Segments { .. } => "",
        };
        let fs =
            v.fs.as_ref()
                .map(|f| format!(" ({})", f.kind))
                .unwrap_or_default();
        return format!(
            "the root filesystem is on {}{fs}, which {why} (no other volume holds /etc/fstab and /usr/bin or /bin)",
            v.name
        );
    }
    if let Some(w) = warnings.first() {
        return format!("no guest root filesystem found; LVM: {w}");
    }
    if !vols.iter().any(|v| v.mountable_kind().is_some()) {
        return "no ext2/3/4, xfs or btrfs filesystem found on the image".into();
    }
    "no guest root filesystem found (none holds /etc/fstab and /usr/bin or /bin)".into()
}

fn looks_like_root(dir: &Path) -> bool {
    let Ok(g) = GuestRoot::open(dir) else {
        return false;
    };
    g.exists("/etc/fstab") && (g.lstat(b"/usr/bin").is_ok() || g.lstat(b"/bin").is_ok())
}

/// One fstab line we act on.
#[derive(Debug, Clone)]
pub struct FstabEntry {
    pub spec: String,
    pub mountpoint: String,
    pub fstype: String,
    pub options: String,
}

impl FstabEntry {
    /// Swap, pseudo, network and bind mounts: nothing vmfinal mounts.
    pub fn is_net_or_virtual(&self) -> bool {
        matches!(
            self.fstype.as_str(),
            "swap"
                | "tmpfs"
                | "proc"
                | "sysfs"
                | "devpts"
                | "devtmpfs"
                | "nfs"
                | "nfs4"
                | "cifs"
                | "none"
                | "bind"
                | "efivarfs"
                | "cgroup"
                | "cgroup2"
                | "securityfs"
                | "fuse"
                | "sshfs"
                | "9p"
                | "virtiofs"
        ) || self
            .options
            .split(',')
            .any(|o| o == "bind" || o == "rbind" || o == "_netdev")
    }
}

/// The guest's `/etc/fstab` text (guest bytes, read lossily as UTF-8):
/// one entry per line with at least three fields; comments dropped.
pub fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| FstabEntry {
                spec: unescape(f[0]),
                mountpoint: unescape(f[1]),
                fstype: f[2].to_string(),
                options: f.get(3).unwrap_or(&"defaults").to_string(),
            })
        })
        .collect()
}

/// fstab's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How the guest is mounted.
#[derive(Debug, Clone, Copy, Default)]
pub struct MountOptions {
    /// Read-only loop devices and mounts (a dry run).
    pub read_only: bool,
    /// Go on (with a warning) when a filesystem the guest's fstab mounts
    /// without `nofail`/`noauto` cannot be mounted; else that is an error.
    pub skip_unmountable: bool,
}

/// The subdirectory of a btrfs top level that holds the guest's root
/// (`@`, `@rootfs`, `root`, ...), if `dir` (the top level) is not the root.
fn btrfs_root_subvol(dir: &Path) -> Option<String> {
    let rd = std::fs::read_dir(dir).ok()?;
    let mut names: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().find(|n| looks_like_root(&dir.join(n)))
}

impl Guest {
    /// Attaches and mounts the guest on `image` (a raw disk) under `dir`.
    ///
    /// One loop device per volume (partition or LV), reused by every mount
    /// of its filesystem: btrfs subvolumes and repeated mounts of one
    /// filesystem share one block device and so one superblock. The steps:
    /// read the volumes and serve the scattered LVs' views, find the root,
    /// mount it, mount what its fstab names, let go of unused devices.
    pub fn mount(image: &Path, dir: &Path, opts: MountOptions) -> anyhow::Result<Self> {
        let mut g = Self::prepare(image, dir, opts.read_only)?;
        let (rvi, subvol) = g.find_root()?;
        g.mount_root(rvi, &subvol)?;
        g.mount_fstab(opts)?;
        g.release_unused();
        Ok(g)
    }

    /// Step 1: the partitions and volumes of `image`; a FUSE view for each
    /// LV in scattered segments that holds a filesystem (served first,
    /// while no loop device or mount of the guest exists: see
    /// `lvfile::Served::serve`); the private /dev for the block nodes.
    fn prepare(image: &Path, dir: &Path, read_only: bool) -> anyhow::Result<Self> {
        let parts = partitions(image)?;
        let vols = {
            let src = crate::image::raw::RawImage::open(File::open(image)?, image)?;
            volume::scan(&src, &parts)
        };
        let mut views = Vec::new();
        for (vi, v) in vols.list.iter().enumerate() {
            let Mapping::Segments { pieces, .. } = &v.mapping else {
                continue;
            };
            if v.fs.as_ref().is_none_or(|f| f.kind == "swap") {
                continue;
            }
            let view = lvfile::Served::serve(image, &v.short_name(), pieces, read_only)?;
            views.push((vi, view));
        }
        let devpath = dir.with_extension("dev");
        std::fs::create_dir_all(&devpath)?;
        let devmount = Mount::new(
            Path::new("tmpfs"),
            &devpath,
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "mode=0700,size=64k",
            &devpath,
        )
        .map_err(|e| anyhow::anyhow!("cannot mount a tmpfs on {}: {e}", devpath.display()))?;
        Ok(Guest {
            mounts: Vec::new(),
            devdir: Some(devmount),
            devpath,
            loops: Vec::new(),
            views,
            mount_roots: Vec::new(),
            image: image.to_path_buf(),
            read_only,
            root: GuestRoot::open(dir)?,
            dir: dir.to_path_buf(),
            mounted: Vec::new(),
            parts,
            volumes: vols.list,
            warnings: vols.warnings,
        })
    }

    /// Step 2: the root volume (and, on btrfs, the root's subvolume): each
    /// candidate mounted read-only (once per filesystem, on the device the
    /// real mount uses) and looked at.
    fn find_root(&mut self) -> anyhow::Result<(usize, String)> {
        let mountable: Vec<usize> = (0..self.volumes.len())
            .filter(|&i| self.volumes[i].mountable_kind().is_some())
            .collect();
        let dir = self.dir.clone();
        for vi in mountable {
            let kind = self.volumes[vi]
                .mountable_kind()
                .unwrap_or_default()
                .to_string();
            let node = self.device(vi)?;
            let found = match try_mount(&node, &dir, &kind, true, "", &dir) {
                Ok((mut m, _)) => {
                    let found = if looks_like_root(&dir) {
                        Some(String::new())
                    } else if kind == "btrfs" {
                        btrfs_root_subvol(&dir)
                    } else {
                        None
                    };
                    let _ = m.unmount();
                    found
                }
                Err(_) => None,
            };
            if let Some(sub) = found {
                return Ok((vi, sub));
            }
        }
        anyhow::bail!("{}", no_root_reason(&self.volumes, &self.warnings))
    }

    /// Step 3: the root, read-write unless a dry run.
    fn mount_root(&mut self, rvi: usize, subvol: &str) -> anyhow::Result<()> {
        let rv = self.volumes[rvi].clone();
        let rkind = rv.mountable_kind().unwrap_or_default().to_string();
        let extra = if subvol.is_empty() {
            String::new()
        } else {
            format!("subvol={subvol}")
        };
        let node = self.device(rvi)?;
        let dir = self.dir.clone();
        let (m, w) = try_mount(&node, &dir, &rkind, self.read_only, &extra, &dir).map_err(|e| {
            anyhow::anyhow!("cannot mount the guest root ({rkind} on {}): {e}", rv.name)
        })?;
        self.warnings.extend(w);
        self.push_mounted("/", &rv, rvi, &rkind);
        self.mounts.push(m);
        self.root = GuestRoot::open(&dir)?;
        Ok(())
    }

    /// Step 4: what the guest's fstab mounts, shallowest first.
    fn mount_fstab(&mut self, opts: MountOptions) -> anyhow::Result<()> {
        let fstab = self.root.read("/etc/fstab", 1 << 20).unwrap_or_default();
        let mut entries = parse_fstab(&String::from_utf8_lossy(&fstab));
        entries.retain(|e| e.mountpoint.starts_with('/') && e.mountpoint != "/");
        entries.sort_by_key(|e| (e.mountpoint.matches('/').count(), e.mountpoint.clone()));
        for e in entries.iter().filter(|e| !e.is_net_or_virtual()) {
            match self.fstab_volume(e) {
                Ok(Some((vi, kind))) => self.mount_entry(e, vi, &kind, opts)?,
                Ok(None) => {}
                Err(why) => self.unmountable(e, why, opts)?,
            }
        }
        Ok(())
    }

    /// The volume and filesystem type an fstab entry mounts; `None`: a
    /// swap; an error: why vmfinal cannot mount it.
    fn fstab_volume(&self, e: &FstabEntry) -> Result<Option<(usize, String)>, String> {
        let Some(vi) = volume::resolve(&e.spec, &self.volumes, &self.parts)
            .and_then(|v| self.volumes.iter().position(|x| x.key == v.key))
        else {
            return Err("is not a partition or logical volume of this image".into());
        };
        let v = &self.volumes[vi];
        if let Mapping::Refused(why) = &v.mapping {
            return Err(format!("is on {}, which {why}", v.name));
        }
        let Some(fs) = &v.fs else {
            return Err(format!(
                "is on {}, which holds no filesystem vmfinal knows",
                v.name
            ));
        };
        if fs.kind == "swap" {
            return Ok(None);
        }
        let kind_ok = matches!(fs.kind.as_str(), "ext4" | "xfs" | "btrfs")
            || (fs.kind == "vfat" && host_has_fs("vfat"));
        if !kind_ok {
            return Err(format!(
                "is {} on {}, which this host's kernel cannot mount",
                fs.kind, v.name
            ));
        }
        Ok(Some((vi, fs.kind.clone())))
    }

    /// A filesystem the guest mounts at boot that vmfinal cannot mount: an
    /// error (package scripts may need it), unless it is optional there or
    /// the user said to go on.
    fn unmountable(
        &mut self,
        e: &FstabEntry,
        why: String,
        opts: MountOptions,
    ) -> anyhow::Result<()> {
        let msg = format!("fstab: {} ({}) {why}", e.mountpoint, e.spec);
        let optional = e.options.split(',').any(|o| o == "nofail" || o == "noauto");
        if optional {
            self.warnings
                .push(format!("{msg}; not mounted (nofail/noauto)"));
        } else if opts.skip_unmountable {
            self.warnings
                .push(format!("{msg}; not mounted (--skip-unmountable)"));
        } else {
            anyhow::bail!(
                "{msg}; the guest mounts it at boot and its package scripts may need it (mark it nofail in the guest's fstab, or pass --skip-unmountable to clean without it)"
            )
        }
        Ok(())
    }

    /// Mounts volume `vi` (type `kind`) where fstab entry `e` says, on a
    /// real directory inside the guest (no symlink anywhere on the way).
    fn mount_entry(
        &mut self,
        e: &FstabEntry,
        vi: usize,
        kind: &str,
        opts: MountOptions,
    ) -> anyhow::Result<()> {
        let target = match root::openat2(
            self.root.fd(),
            e.mountpoint.trim_start_matches('/').as_bytes(),
            libc::O_PATH | libc::O_DIRECTORY,
            libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
        ) {
            Ok(t) => t,
            Err(err) => {
                self.warnings.push(format!(
                    "fstab: mount point {} is not a plain directory in the guest ({err}); not mounted",
                    e.mountpoint
                ));
                return Ok(());
            }
        };
        let shown = self.dir.join(e.mountpoint.trim_start_matches('/'));
        let subvol = e
            .options
            .split(',')
            .find(|o| o.starts_with("subvol=") || o.starts_with("subvolid="))
            .filter(|_| kind == "btrfs")
            .unwrap_or("")
            .to_string();
        let v = self.volumes[vi].clone();
        let node = self.device(vi)?;
        match try_mount(
            &node,
            &fd_path(&target),
            kind,
            self.read_only,
            &subvol,
            &shown,
        ) {
            Ok((m, w)) => {
                self.warnings.extend(w);
                self.push_mounted(&e.mountpoint, &v, vi, kind);
                self.mounts.push(m);
                // The same walk again, now ending on the new mount's root.
                let root = root::openat2(
                    self.root.fd(),
                    e.mountpoint.trim_start_matches('/').as_bytes(),
                    libc::O_PATH | libc::O_DIRECTORY,
                    libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
                )
                .map_err(|err| {
                    anyhow::anyhow!("{}: cannot open the new mount: {err}", shown.display())
                })?;
                self.mount_roots.push((e.mountpoint.clone(), root));
                Ok(())
            }
            Err(err) => {
                self.unmountable(e, format!("cannot be mounted from {}: {err}", v.name), opts)
            }
        }
    }

    /// Step 5: devices and LV views no mount uses (root-probe candidates)
    /// go now.
    fn release_unused(&mut self) {
        let used: Vec<usize> = self.mounted.iter().map(|m| m.vol).collect();
        self.loops.retain(|(vi, _)| used.contains(vi));
        let (keep, unused): (Vec<_>, Vec<_>) = std::mem::take(&mut self.views)
            .into_iter()
            .partition(|(vi, _)| used.contains(vi));
        self.views = keep;
        for (_, mut v) in unused {
            self.warnings.extend(v.unmount());
        }
    }

    fn push_mounted(&mut self, mountpoint: &str, v: &Volume, vi: usize, kind: &str) {
        let device = self
            .loops
            .iter()
            .find(|(i, _)| *i == vi)
            .map(|(_, lo)| lo.path().display().to_string())
            .unwrap_or_default();
        self.mounted.push(Mounted {
            mountpoint: mountpoint.into(),
            fstype: kind.into(),
            partition: v.partition,
            volume: v.name.clone(),
            uuid: v.fs.as_ref().map(|f| f.uuid.clone()).unwrap_or_default(),
            device,
            vol: vi,
        });
    }

    /// The block node of volume `vi` in our private /dev, attaching its
    /// loop device on first use; every later mount of the volume reuses it.
    fn device(&mut self, vi: usize) -> anyhow::Result<PathBuf> {
        let v = &self.volumes[vi];
        let path = self.devpath.join(&v.key);
        if self.loops.iter().any(|(i, _)| *i == vi) {
            return Ok(path);
        }
        let (backing, start, size) = match (&v.mapping, v.range()) {
            (_, Some((start, size))) => (self.image.clone(), start, size),
            (Mapping::Segments { .. }, None) => {
                let Some((_, view)) = self.views.iter().find(|(i, _)| *i == vi) else {
                    anyhow::bail!("internal: {} has no FUSE view", v.name);
                };
                (view.path().to_path_buf(), 0, view.size())
            }
            _ => anyhow::bail!("internal: {} has no mapping", v.name),
        };
        let lo = LoopDevice::attach(&backing, start, size, self.read_only)
            .map_err(|e| anyhow::anyhow!("cannot attach a loop device for {}: {e}", v.name))?;
        self.make_node(&lo, &path)?;
        self.loops.push((vi, lo));
        Ok(path)
    }

    /// A block node for `lo` at `path` in our private tmpfs, used
    /// as the mount source. The guest's tools then see that name, not
    /// `/dev/loopN`: grub-mkconfig's 10_linux skips every kernel when the
    /// root is on a file-backed loop device.
    fn make_node(&self, lo: &LoopDevice, path: &Path) -> anyhow::Result<()> {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        let _ = std::fs::remove_file(path);
        // SAFETY: valid C string.
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, lo.rdev()?) } != 0 {
            anyhow::bail!(
                "cannot create {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Host path of a guest mount point: the guest root's directory for
    /// `/`, else `/proc/self/fd/N` of the descriptor opened when it was
    /// mounted (see `mount_roots`; the last mount on a mount point wins).
    pub fn host_path(&self, mountpoint: &str) -> PathBuf {
        match self.mount_roots.iter().rev().find(|(m, _)| m == mountpoint) {
            Some((_, fd)) => fd_path(fd),
            None => self.dir.join(mountpoint.trim_start_matches('/')),
        }
    }

    /// Loop devices with their filesystem's UUID (for the sandbox's /dev),
    /// each device once.
    pub fn devices(&self) -> Vec<(PathBuf, u64, String)> {
        self.loops
            .iter()
            .filter_map(|(vi, lo)| {
                let v = &self.volumes[*vi];
                let uuid = v.fs.as_ref().map(|f| f.uuid.clone()).unwrap_or_default();
                Some((self.devpath.join(&v.key), lo.rdev().ok()?, uuid))
            })
            .collect()
    }

    /// The guest's filesystems, each once: its first (shallowest) mount.
    pub fn filesystems(&self) -> Vec<&Mounted> {
        let mut seen = Vec::new();
        self.mounted
            .iter()
            .filter(|m| {
                let first = !seen.contains(&m.vol);
                seen.push(m.vol);
                first
            })
            .collect()
    }

    /// Unmounts (deepest first), detaches, and takes down the LV views;
    /// errors are warnings (a write an LV view failed among them).
    pub fn unmount(&mut self) -> Vec<String> {
        let mut errs = Vec::new();
        // A mount whose host path no longer leads to it (guest code renamed
        // an ancestor of its mount point, maybe with a symlink in its
        // place) is synced and detached through the descriptor opened when
        // it was mounted, never by that path.
        let mut moved: Vec<PathBuf> = Vec::new();
        for (mp, fd) in std::mem::take(&mut self.mount_roots).into_iter().rev() {
            let at = fd_path(&fd);
            mount::syncfs(&at);
            let here = root::openat2(
                self.root.fd(),
                mp.trim_start_matches('/').as_bytes(),
                libc::O_PATH | libc::O_DIRECTORY,
                libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
            );
            let same = |a: &std::os::fd::OwnedFd| {
                matches!((rustix::fs::fstat(a), rustix::fs::fstat(&fd)),
                    (Ok(x), Ok(y)) if x.st_dev == y.st_dev && x.st_ino == y.st_ino)
            };
            if here.as_ref().is_ok_and(same) {
                continue;
            }
            let shown = self.dir.join(mp.trim_start_matches('/'));
            match mount::detach_at(&at) {
                Ok(()) => moved.push(shown),
                Err(e) => errs.push(format!(
                    "unmount {} (moved by the guest): {e}",
                    shown.display()
                )),
            }
        }
        // Our descriptor of the guest root would keep it busy.
        if let Some(Ok(r)) = self.dir.parent().map(GuestRoot::open) {
            self.root = r;
        }
        while let Some(mut m) = self.mounts.pop() {
            if moved.iter().any(|p| p == m.target()) {
                m.forget();
                continue;
            }
            mount::syncfs(m.target());
            if let Err(e) = m.unmount() {
                errs.push(format!("unmount {}: {e}", m.target().display()));
            }
        }
        self.loops.clear();
        // The LV views after their loop devices.
        for (_, mut v) in self.views.drain(..) {
            errs.extend(v.unmount());
        }
        if let Some(mut d) = self.devdir.take() {
            let _ = d.unmount();
            let _ = std::fs::remove_dir(&self.devpath);
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_root_names_the_lv() {
        let lv = Volume {
            key: "lv-vg-root".into(),
            name: "LVM logical volume vg/root".into(),
            partition: 2,
            lv: Some(volume::LvName {
                vg: "vg".into(),
                lv: "root".into(),
                mapper: "vg-root".into(),
            }),
            fs: Some(FsId {
                kind: "ext4".into(),
                uuid: "u".into(),
                label: String::new(),
            }),
            mapping: Mapping::Refused("is a thin LV; vmfinal maps only linear LVs".into()),
        };
        let msg = no_root_reason(&[lv], &[]);
        assert!(
            msg.starts_with(
                "the root filesystem is on LVM logical volume vg/root (ext4), which is a thin LV"
            ),
            "{msg}"
        );
        assert_eq!(
            no_root_reason(&[], &[]),
            "no ext2/3/4, xfs or btrfs filesystem found on the image"
        );
    }

    #[test]
    fn fstab_parse() {
        let e = parse_fstab("UUID=x /mnt\\040a ext4 defaults 0 2\n# c\n");
        assert_eq!(e[0].mountpoint, "/mnt a");
    }
}
