//! Mounts held by guards, in a private mount namespace. `clean` and
//! `finalize` move into a namespace of their own before they start any
//! thread: the guest's mounts are never visible to the host, and if vmfinal
//! dies (even by SIGKILL) the kernel tears them down with the namespace;
//! autoclear loop devices then detach themselves.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn cstr(p: &[u8]) -> io::Result<CString> {
    CString::new(p).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(1)
}

/// Enters a private mount namespace (mounts made from now on stay inside it).
/// Must run before any thread starts: only the calling thread would move.
pub fn enter_private_namespace() -> anyhow::Result<()> {
    if threads() != 1 {
        anyhow::bail!("internal: private mount namespace requested after threads started");
    }
    // SAFETY: plain syscalls.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        let e = io::Error::last_os_error();
        anyhow::bail!("cannot create a private mount namespace (needs root / CAP_SYS_ADMIN): {e}");
    }
    let root = cstr(b"/")?;
    let none = cstr(b"none")?;
    // SAFETY: valid C strings; no data argument.
    let r = unsafe {
        libc::mount(
            none.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if r != 0 {
        anyhow::bail!("cannot make mounts private: {}", io::Error::last_os_error());
    }
    Ok(())
}

/// `mount(2)`; an empty `data` passes none. `target` may be a
/// `/proc/self/fd/N` path of an opened directory (see `GuestRoot`).
pub fn mount(
    source: &Path,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let s = cstr(source.as_os_str().as_bytes())?;
    let t = cstr(target.as_os_str().as_bytes())?;
    let f = cstr(fstype.as_bytes())?;
    let d = cstr(data.as_bytes())?;
    // SAFETY: valid C strings for the call.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                d.as_ptr().cast()
            },
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A mount; dropping it unmounts it.
pub struct Mount {
    target: PathBuf,
    active: bool,
}

impl Mount {
    /// Mounts (see [`mount`]) and remembers `shown_as`, the host path the
    /// mount is unmounted by.
    pub fn new(
        source: &Path,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: &str,
        shown_as: &Path,
    ) -> io::Result<Self> {
        mount(source, target, fstype, flags, data)?;
        Ok(Self {
            target: shown_as.to_path_buf(),
            active: true,
        })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The mount was taken down another way (see `detach_at`).
    pub fn forget(&mut self) {
        self.active = false;
    }

    /// Unmounts now; a busy filesystem is retried, then detached lazily.
    pub fn unmount(&mut self) -> io::Result<()> {
        if !self.active {
            return Ok(());
        }
        let t = cstr(self.target.as_os_str().as_bytes())?;
        let mut last = None;
        for _ in 0..20 {
            // SAFETY: valid C string.
            if unsafe { libc::umount2(t.as_ptr(), libc::UMOUNT_NOFOLLOW) } == 0 {
                self.active = false;
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                self.active = false;
                return Err(e);
            }
            last = Some(e);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
        self.active = false;
        Err(last.unwrap_or_else(|| io::Error::other("busy")))
    }
}

/// Detaches the mount whose root `at` (a `/proc/self/fd/N` path) names,
/// lazily: the filesystem goes when the caller closes that descriptor.
pub fn detach_at(at: &Path) -> io::Result<()> {
    let t = cstr(at.as_os_str().as_bytes())?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

/// `syncfs` on a mounted directory.
pub fn syncfs(dir: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    // A directory only, and never waiting on what a path may end in (a
    // FIFO, a device).
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK)
        .open(dir)
    {
        use std::os::fd::AsRawFd;
        // SAFETY: valid descriptor.
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
}

/// `struct xfs_fs_eofblocks` (xfs_fs.h), version 1.
#[repr(C)]
struct XfsEofblocks {
    version: u32,
    flags: u32,
    uid: u32,
    gid: u32,
    prid: u32,
    pad32: u32,
    min_file_size: u64,
    pad64: [u64; 12],
}

/// `XFS_IOC_FREE_EOFBLOCKS`: `_IOR('X', 58, struct xfs_fs_eofblocks)`.
const XFS_IOC_FREE_EOFBLOCKS: libc::c_ulong = 0x8080_583A;

/// Makes what was removed on an xfs filesystem show in its `statvfs`:
/// xfs frees unlinked inodes' blocks in the background (inodegc), and
/// `XFS_IOC_FREE_EOFBLOCKS` with `XFS_EOF_FLAGS_SYNC` waits for that work
/// (it also trims post-EOF preallocations, which closed files mostly no
/// longer have). Errors are ignored: the figure then may read low, as
/// docs/json.md says.
pub fn xfs_settle(dir: &Path) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK)
        .open(dir)
    else {
        return;
    };
    let mut e = XfsEofblocks {
        version: 1,
        flags: 1, // XFS_EOF_FLAGS_SYNC
        uid: 0,
        gid: 0,
        prid: 0,
        pad32: 0,
        min_file_size: 0,
        pad64: [0; 12],
    };
    // SAFETY: `f` is open for the call and `e` is a live buffer of the
    // size the request number encodes (128 bytes).
    unsafe { libc::ioctl(f.as_raw_fd(), XFS_IOC_FREE_EOFBLOCKS, &mut e) };
}
