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
pub mod mount;
pub mod root;
pub mod sandbox;
pub mod state;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::disk;
use crate::fs::{self, Region};
use loopdev::LoopDevice;
use mount::Mount;
use root::GuestRoot;

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
    let table = disk::read_partitions(&src);
    Ok(table
        .partitions
        .iter()
        .map(|p| PartInfo {
            index: p.index,
            start: p.start,
            size: p.size,
            part_uuid: p.part_uuid.clone(),
            fs: identify(&Region {
                src: &src,
                start: p.start,
                len: p.size,
            }),
        })
        .collect())
}

/// One mounted guest filesystem.
#[derive(Debug, Clone, Serialize)]
pub struct Mounted {
    pub mountpoint: String,
    pub fstype: String,
    pub partition: u32,
    pub uuid: String,
    pub device: String,
}

/// The mounted guest. Dropping it unmounts everything (deepest first) and
/// detaches its loop devices.
pub struct Guest {
    mounts: Vec<Mount>,
    /// A private tmpfs holding the block nodes the guest's filesystems are
    /// mounted from (see `node_for`); unmounted last.
    devdir: Option<Mount>,
    devpath: PathBuf,
    loops: Vec<(u32, LoopDevice)>,
    pub root: GuestRoot,
    pub dir: PathBuf,
    pub mounted: Vec<Mounted>,
    pub parts: Vec<PartInfo>,
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

fn looks_like_root(dir: &Path) -> bool {
    let Ok(g) = GuestRoot::open(dir) else {
        return false;
    };
    g.exists("/etc/fstab") && (g.lstat(b"/usr/bin").is_ok() || g.lstat(b"/bin").is_ok())
}

/// One fstab line we act on.
#[derive(Debug, Clone)]
struct FstabEntry {
    spec: String,
    mountpoint: String,
    fstype: String,
    options: String,
}

fn parse_fstab(text: &str) -> Vec<FstabEntry> {
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

fn resolve_spec<'a>(spec: &str, parts: &'a [PartInfo]) -> Option<&'a PartInfo> {
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let by = |key: &str| -> Option<&str> {
        spec.strip_prefix(&format!("{key}="))
            .map(|v| v.trim_matches('"'))
    };
    fn fs_of<'b>(p: &&'b PartInfo) -> Option<&'b FsId> {
        p.fs.as_ref()
    }
    if let Some(u) = by("UUID").or_else(|| spec.strip_prefix("/dev/disk/by-uuid/")) {
        return parts
            .iter()
            .find(|p| fs_of(p).is_some_and(|f| eq(&f.uuid, u)));
    }
    if let Some(l) = by("LABEL").or_else(|| spec.strip_prefix("/dev/disk/by-label/")) {
        return parts
            .iter()
            .find(|p| fs_of(p).is_some_and(|f| f.label == l));
    }
    if let Some(u) = by("PARTUUID").or_else(|| spec.strip_prefix("/dev/disk/by-partuuid/")) {
        return parts.iter().find(|p| eq(&p.part_uuid, u));
    }
    // /dev/sda2, /dev/vda2, /dev/xvda2, /dev/hda2, /dev/nvme0n1p2, /dev/mmcblk0p2
    let dev = spec.strip_prefix("/dev/")?;
    let digits: String = dev
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let stem = &dev[..dev.len() - digits.len()];
    let plain = ["sd", "vd", "xvd", "hd"]
        .iter()
        .any(|p| stem.starts_with(p) && stem.len() == p.len() + 1);
    let nvme = stem.ends_with('p') && (stem.starts_with("nvme") || stem.starts_with("mmcblk"));
    if !(plain || nvme) || digits.is_empty() {
        return None;
    }
    let n: u32 = digits.chars().rev().collect::<String>().parse().ok()?;
    parts.iter().find(|p| p.index == n)
}

impl Guest {
    /// Attaches and mounts the guest on `image` (a raw disk) under `dir`.
    pub fn mount(image: &Path, dir: &Path, read_only: bool) -> anyhow::Result<Self> {
        let parts = partitions(image)?;
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
        let mut g = Guest {
            mounts: Vec::new(),
            devdir: Some(devmount),
            devpath,
            loops: Vec::new(),
            root: GuestRoot::open(dir)?,
            dir: dir.to_path_buf(),
            mounted: Vec::new(),
            parts: parts.clone(),
            warnings: Vec::new(),
        };
        let mountable: Vec<&PartInfo> = parts
            .iter()
            .filter(|p| {
                p.fs.as_ref()
                    .is_some_and(|f| matches!(f.kind.as_str(), "ext4" | "xfs" | "btrfs"))
            })
            .collect();
        if mountable.is_empty() {
            anyhow::bail!("no ext2/3/4, xfs or btrfs filesystem found on the image");
        }
        // Find the root: mount each candidate read-only and look.
        let mut root: Option<(u32, String)> = None;
        for p in &mountable {
            let kind = p.fs.as_ref().map(|f| f.kind.clone()).unwrap_or_default();
            let lo = LoopDevice::attach(image, p.start, p.size, true)?;
            let probe = {
                let res = try_mount(lo.path(), dir, &kind, true, "", dir);
                match res {
                    Ok((mut m, _)) => {
                        let mut found = None;
                        if looks_like_root(dir) {
                            found = Some(String::new());
                        } else if kind == "btrfs" {
                            // A root in a subvolume: @, @rootfs, root, ...
                            if let Ok(rd) = std::fs::read_dir(dir) {
                                let mut names: Vec<String> = rd
                                    .flatten()
                                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                                    .map(|e| e.file_name().to_string_lossy().into_owned())
                                    .collect();
                                names.sort();
                                found = names.into_iter().find(|n| looks_like_root(&dir.join(n)));
                            }
                        }
                        let _ = m.unmount();
                        found
                    }
                    Err(_) => None,
                }
            };
            drop(lo);
            if let Some(sub) = probe {
                root = Some((p.index, sub));
                break;
            }
        }
        let Some((root_index, subvol)) = root else {
            anyhow::bail!(
                "no guest root filesystem found (none holds /etc/fstab and /usr/bin or /bin)"
            );
        };
        let rp = parts
            .iter()
            .find(|p| p.index == root_index)
            .ok_or_else(|| anyhow::anyhow!("internal: root partition vanished"))?;
        let rkind = rp.fs.as_ref().map(|f| f.kind.clone()).unwrap_or_default();
        let lo = LoopDevice::attach(image, rp.start, rp.size, read_only)?;
        let extra = if subvol.is_empty() {
            String::new()
        } else {
            format!("subvol={subvol}")
        };
        let node = g.node_for(&lo, root_index)?;
        let (m, w) = try_mount(&node, dir, &rkind, read_only, &extra, dir).map_err(|e| {
            anyhow::anyhow!("cannot mount the guest root ({rkind} on partition {root_index}): {e}")
        })?;
        g.warnings.extend(w);
        g.mounted.push(Mounted {
            mountpoint: "/".into(),
            fstype: rkind.clone(),
            partition: root_index,
            uuid: rp.fs.as_ref().map(|f| f.uuid.clone()).unwrap_or_default(),
            device: lo.path().display().to_string(),
        });
        g.mounts.push(m);
        g.loops.push((root_index, lo));
        g.root = GuestRoot::open(dir)?;

        // The guest's fstab.
        let fstab = g.root.read("/etc/fstab", 1 << 20).unwrap_or_default();
        let mut entries = parse_fstab(&String::from_utf8_lossy(&fstab));
        entries.retain(|e| e.mountpoint.starts_with('/') && e.mountpoint != "/");
        entries.sort_by_key(|e| (e.mountpoint.matches('/').count(), e.mountpoint.clone()));
        for e in entries {
            let net_or_virtual = matches!(
                e.fstype.as_str(),
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
            ) || e.options.split(',').any(|o| o == "bind" || o == "rbind");
            if net_or_virtual {
                continue;
            }
            let Some(p) = resolve_spec(&e.spec, &parts) else {
                g.warnings.push(format!(
                    "fstab: {} for {} is not a partition of this image; not mounted",
                    e.spec, e.mountpoint
                ));
                continue;
            };
            let Some(fs) = p.fs.clone() else {
                g.warnings.push(format!(
                    "fstab: {} ({}) holds no filesystem we know; not mounted",
                    e.mountpoint, e.spec
                ));
                continue;
            };
            if !matches!(fs.kind.as_str(), "ext4" | "xfs" | "btrfs" | "vfat") {
                continue;
            }
            // The mount point must be a real directory inside the guest:
            // no symlink anywhere on the way.
            let target = match root::openat2(
                g.root.fd(),
                e.mountpoint.trim_start_matches('/').as_bytes(),
                libc::O_PATH | libc::O_DIRECTORY,
                libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
            ) {
                Ok(t) => t,
                Err(err) => {
                    g.warnings.push(format!("fstab: mount point {} is not a plain directory in the guest ({err}); not mounted", e.mountpoint));
                    continue;
                }
            };
            let shown = dir.join(e.mountpoint.trim_start_matches('/'));
            let subvol = e
                .options
                .split(',')
                .find(|o| o.starts_with("subvol=") || o.starts_with("subvolid="))
                .filter(|_| fs.kind == "btrfs")
                .unwrap_or("")
                .to_string();
            let lo = LoopDevice::attach(image, p.start, p.size, read_only)?;
            let node = g.node_for(&lo, p.index)?;
            match try_mount(
                &node,
                &fd_path(&target),
                &fs.kind,
                read_only,
                &subvol,
                &shown,
            ) {
                Ok((m, w)) => {
                    g.warnings.extend(w);
                    g.mounted.push(Mounted {
                        mountpoint: e.mountpoint.clone(),
                        fstype: fs.kind.clone(),
                        partition: p.index,
                        uuid: fs.uuid.clone(),
                        device: lo.path().display().to_string(),
                    });
                    g.mounts.push(m);
                    g.loops.push((p.index, lo));
                }
                Err(err) => g.warnings.push(format!(
                    "fstab: cannot mount {} on {}: {err}",
                    e.spec, e.mountpoint
                )),
            }
        }
        Ok(g)
    }

    /// A block node for `lo` named `part{index}` in our private tmpfs, used
    /// as the mount source. The guest's tools then see that name, not
    /// `/dev/loopN`: grub-mkconfig's 10_linux skips every kernel when the
    /// root is on a file-backed loop device.
    fn node_for(&self, lo: &LoopDevice, index: u32) -> anyhow::Result<PathBuf> {
        let path = self.devpath.join(format!("part{index}"));
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        let _ = std::fs::remove_file(&path);
        // SAFETY: valid C string.
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, lo.rdev()?) } != 0 {
            anyhow::bail!(
                "cannot create {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(path)
    }

    /// Host path of a guest mount point.
    pub fn host_path(&self, mountpoint: &str) -> PathBuf {
        self.dir.join(mountpoint.trim_start_matches('/'))
    }

    /// Loop devices with their partition's filesystem UUID (for the sandbox's /dev).
    pub fn devices(&self) -> Vec<(PathBuf, u64, String)> {
        self.loops
            .iter()
            .filter_map(|(idx, lo)| {
                let uuid = self
                    .mounted
                    .iter()
                    .find(|m| m.partition == *idx)
                    .map(|m| m.uuid.clone())?;
                Some((
                    self.devpath.join(format!("part{idx}")),
                    lo.rdev().ok()?,
                    uuid,
                ))
            })
            .collect()
    }

    /// Unmounts (deepest first) and detaches; errors are warnings.
    pub fn unmount(&mut self) -> Vec<String> {
        let mut errs = Vec::new();
        // Our descriptor of the guest root would keep it busy.
        if let Some(Ok(r)) = self.dir.parent().map(GuestRoot::open) {
            self.root = r;
        }
        while let Some(mut m) = self.mounts.pop() {
            mount::syncfs(m.target());
            if let Err(e) = m.unmount() {
                errs.push(format!("unmount {}: {e}", m.target().display()));
            }
        }
        self.loops.clear();
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
    fn fstab_specs() {
        let parts = vec![PartInfo {
            index: 2,
            start: 0,
            size: 1,
            part_uuid: "abcd-02".into(),
            fs: Some(FsId {
                kind: "ext4".into(),
                uuid: "1111-aa".into(),
                label: "boot".into(),
            }),
        }];
        assert!(resolve_spec("UUID=1111-AA", &parts).is_some());
        assert!(resolve_spec("LABEL=boot", &parts).is_some());
        assert!(resolve_spec("PARTUUID=abcd-02", &parts).is_some());
        assert!(resolve_spec("/dev/vda2", &parts).is_some());
        assert!(resolve_spec("/dev/nvme0n1p2", &parts).is_some());
        assert!(resolve_spec("/dev/mapper/x", &parts).is_none());
        let e = parse_fstab("UUID=x /mnt\\040a ext4 defaults 0 2\n# c\n");
        assert_eq!(e[0].mountpoint, "/mnt a");
    }
}
