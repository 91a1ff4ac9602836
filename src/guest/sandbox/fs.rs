//! What the guest sees inside the sandbox, set up by vmfinal (still fully
//! privileged) before it drops capabilities: a read-only /proc of the new
//! PID namespace (so /proc/sys, /proc/sysrq-trigger and friends cannot be
//! written), a read-only /sys, tmpfs /run and /tmp, and a private read-only
//! /dev holding only null, zero, full, random, urandom, a tmpfs /dev/shm,
//! and the guest's disks as nodes of read-only loop devices (GRUB reads
//! them; nothing can write them) with /dev/disk/by-uuid links. Every mount
//! point is resolved inside the guest root with no symlink on the way, so a
//! guest symlink cannot redirect a mount to a host path.
//!
//! Not for: dropping privileges (see `caps`, `seccomp`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::guest::root::openat2;

/// A guest disk offered in /dev: the path vmfinal mounted it from (a
/// symlink to the node is made there, inside the guest's fresh /run), the
/// read-only device's number and the filesystem UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevSpec {
    pub path: String,
    pub major: u32,
    pub minor: u32,
    pub uuid: String,
}

impl DevSpec {
    /// `PATH:MAJOR:MINOR:UUID` (the form `__sandbox --dev` takes).
    pub fn to_arg(&self) -> String {
        format!("{}:{}:{}:{}", self.path, self.major, self.minor, self.uuid)
    }

    pub fn parse(s: &str) -> io::Result<Self> {
        let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad --dev {s}"));
        let f: Vec<&str> = s.rsplitn(4, ':').collect();
        let [uuid, minor, major, path] = f[..] else {
            return Err(bad());
        };
        Ok(Self {
            path: path.to_string(),
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
            uuid: uuid.to_string(),
        })
    }
}

fn c(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL"))
}

fn check(r: libc::c_int, what: &str) -> io::Result<()> {
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// A directory inside the guest, with no symlink on the way.
fn guest_dir(root: &OwnedFd, rel: &str) -> io::Result<OwnedFd> {
    openat2(
        root.as_raw_fd(),
        rel.as_bytes(),
        libc::O_PATH | libc::O_DIRECTORY,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn mount_on(
    fd: &OwnedFd,
    src: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    crate::guest::mount::mount(Path::new(src), &fd_path(fd), fstype, flags, data)
        .map_err(|e| io::Error::new(e.kind(), format!("mount {fstype} on {src}: {e}")))
}

/// A directory descriptor usable with the *at calls (not O_PATH).
fn dir_fd(dir: &OwnedFd) -> io::Result<OwnedFd> {
    openat2(
        dir.as_raw_fd(),
        b".",
        libc::O_RDONLY | libc::O_DIRECTORY,
        libc::RESOLVE_BENEATH,
    )
}

fn mknod(dir: &OwnedFd, name: &str, kind: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let n = c(name.as_bytes())?;
    // SAFETY: valid descriptor and string.
    let r = unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            n.as_ptr(),
            kind,
            libc::makedev(major, minor),
        )
    };
    check(r, name)
}

fn symlink(dir: &OwnedFd, target: &str, name: &str) -> io::Result<()> {
    let (t, n) = (c(target.as_bytes())?, c(name.as_bytes())?);
    // SAFETY: valid descriptor and strings.
    check(
        unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) },
        name,
    )
}

fn mkdir(dir: &OwnedFd, name: &str) -> io::Result<()> {
    let n = c(name.as_bytes())?;
    // SAFETY: valid descriptor and string.
    check(
        unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), 0o755) },
        name,
    )
}

/// Mounts the guest's /proc, /sys, /run, /tmp and /dev under `root`.
pub fn prepare(root: &OwnedFd, devs: &[DevSpec]) -> io::Result<()> {
    let ms = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if let Ok(d) = guest_dir(root, "proc") {
        // Read-only: /proc/sys, /proc/sysrq-trigger, /proc/PID/* writes all
        // fail with EROFS. This is the new PID namespace's proc: it lists
        // only the sandbox's own processes.
        mount_on(&d, "proc", "proc", ms | libc::MS_RDONLY, "")?;
    }
    if let Ok(d) = guest_dir(root, "sys") {
        // Best effort (a guest without sysfs support in its tools is fine);
        // read-only when it is there.
        let _ = mount_on(&d, "sysfs", "sysfs", ms | libc::MS_RDONLY, "");
    }
    for (dir, mode) in [("run", "0755"), ("tmp", "1777")] {
        if let Ok(d) = guest_dir(root, dir) {
            mount_on(
                &d,
                "tmpfs",
                "tmpfs",
                libc::MS_NOSUID | libc::MS_NODEV,
                &format!("mode={mode},size=256m"),
            )?;
        }
    }
    if let Ok(d) = guest_dir(root, "dev") {
        prepare_dev(root, &d, devs)?;
    }
    Ok(())
}

fn prepare_dev(root: &OwnedFd, dev: &OwnedFd, devs: &[DevSpec]) -> io::Result<()> {
    let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    mount_on(dev, "tmpfs", "tmpfs", flags, "mode=0755,size=1m")?;
    // The mount is on top now: open it afresh.
    let dev = guest_dir(root, "dev")?;
    let fd = dir_fd(&dev)?;
    for (n, mi) in [
        ("null", 3),
        ("zero", 5),
        ("full", 7),
        ("random", 8),
        ("urandom", 9),
    ] {
        mknod(&fd, n, libc::S_IFCHR | 0o666, 1, mi)?;
    }
    symlink(&fd, "/proc/self/fd", "fd")?;
    symlink(&fd, "/proc/self/fd/0", "stdin")?;
    symlink(&fd, "/proc/self/fd/1", "stdout")?;
    symlink(&fd, "/proc/self/fd/2", "stderr")?;
    mkdir(&fd, "pts")?;
    mkdir(&fd, "shm")?;
    if !devs.is_empty() {
        mkdir(&fd, "disk")?;
        mkdir(&fd, "disk/by-uuid")?;
    }
    // The guest's disks, at the same path as vmfinal mounted them from
    // (/run/vmfinal/PID.dev/partN, inside the guest's fresh /run), with
    // /dev/disk/by-uuid links to them.
    let run = openat2(
        root.as_raw_fd(),
        b"run",
        libc::O_RDONLY | libc::O_DIRECTORY,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS,
    )?;
    for (devno, d) in devs.iter().enumerate() {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad --dev path {}", d.path),
            )
        };
        let rel = d
            .path
            .strip_prefix("/run/")
            .filter(|r| r.split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
            .ok_or_else(bad)?;
        let comps: Vec<&str> = rel.split('/').collect();
        let (last, parents) = comps.split_last().ok_or_else(bad)?;
        let mut dir = dir_fd(&run)?;
        for c0 in parents {
            let n = c(c0.as_bytes())?;
            // SAFETY: valid descriptor and string (EEXIST is fine).
            unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), 0o755) };
            dir = openat2(
                dir.as_raw_fd(),
                c0.as_bytes(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
            )?;
        }
        // The node lives in /dev under a name GRUB's hostdisk code accepts
        // as a whole disk (no trailing digits); the path vmfinal mounted
        // from is a symlink to it. The device is a read-only loop device.
        let letter = (b'a' + (devno % 26) as u8) as char;
        let devname = format!("vmfinal-disk-{letter}");
        mknod(&fd, &devname, libc::S_IFBLK | 0o440, d.major, d.minor)?;
        symlink(&dir, &format!("/dev/{devname}"), last)?;
        if !d.uuid.is_empty() && !d.uuid.contains('/') {
            let _ = symlink(
                &fd,
                &format!("../../{devname}"),
                &format!("disk/by-uuid/{}", d.uuid),
            );
        }
    }
    // Nothing more may be created in /dev; /dev/shm gets its own tmpfs.
    crate::guest::mount::mount(
        Path::new("none"),
        &fd_path(&dev),
        "",
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | flags,
        "",
    )
    .map_err(|e| io::Error::new(e.kind(), format!("remount /dev read-only: {e}")))?;
    let shm = guest_dir(root, "dev/shm")?;
    mount_on(
        &shm,
        "tmpfs",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "mode=1777,size=64m",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_spec_round_trip() {
        let d = DevSpec {
            path: "/run/vmfinal/12.dev/part3".into(),
            major: 7,
            minor: 12,
            uuid: "1111-aa".into(),
        };
        assert_eq!(DevSpec::parse(&d.to_arg()).unwrap(), d);
        assert!(DevSpec::parse("x:1:2").is_err());
        assert!(DevSpec::parse("x:a:2:u").is_err());
    }
}
