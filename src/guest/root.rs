//! Paths resolved inside the guest root. Every lookup of a guest path goes
//! through `openat2(2)` with `RESOLVE_IN_ROOT`: an absolute symlink in the
//! guest means the guest's `/`, and `..` stops at the guest's root, so no
//! guest content can name a host path. Magic links (`/proc/*/fd`) are never
//! followed. The last component of a path that is deleted or truncated is
//! never followed at all.
//!
//! The system calls go through `rustix` (openat2 with its resolve flags,
//! fstatat, a directory iteration that reports read errors, unlinkat,
//! renameat, symlinkat, mkdirat, fchmod/fchown, ftruncate); the one
//! `unsafe` left borrows a raw descriptor the caller holds open.

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// What `lstat` says about a guest entry.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub mode: u32,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub size: u64,
    /// Allocated bytes (st_blocks × 512).
    pub allocated: u64,
}

impl Stat {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
    fn from(st: &rfs::Stat) -> Self {
        Self {
            mode: st.st_mode,
            dev: st.st_dev,
            ino: st.st_ino,
            nlink: st.st_nlink,
            size: u64::try_from(st.st_size).unwrap_or(0),
            allocated: u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512),
        }
    }
}

/// The descriptor `dirfd` names, or the working directory for `AT_FDCWD`.
fn dir_fd<'a>(dirfd: RawFd) -> BorrowedFd<'a> {
    if dirfd == libc::AT_FDCWD {
        return rfs::CWD;
    }
    // SAFETY: every caller passes a descriptor it holds open (an `OwnedFd`'s
    // `as_raw_fd()` or `GuestRoot::fd()`) for the whole call that borrows it.
    unsafe { BorrowedFd::borrow_raw(dirfd) }
}

/// `openat2(dirfd, path, flags, resolve)`, with `O_CLOEXEC`; retried on
/// EAGAIN (a rename raced the lookup) and EINTR.
pub fn openat2(dirfd: RawFd, path: &[u8], flags: i32, resolve: u64) -> io::Result<OwnedFd> {
    let oflags = OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC;
    let resolve = ResolveFlags::from_bits_retain(resolve);
    loop {
        match rfs::openat2(dir_fd(dirfd), path, oflags, Mode::empty(), resolve) {
            Ok(fd) => return Ok(fd),
            Err(Errno::AGAIN | Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`; an empty name stats `dirfd`.
pub fn lstat_at(dirfd: RawFd, name: &[u8]) -> io::Result<Stat> {
    let flags = if name.is_empty() {
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    Ok(Stat::from(&rfs::statat(dir_fd(dirfd), name, flags)?))
}

/// Names in a directory (no `.`/`..`), sorted. An error while reading the
/// directory is an error, not the end of the listing.
pub fn list_dir(dirfd: RawFd) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for ent in rfs::Dir::read_from(dir_fd(dirfd))? {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsString::from_vec(name.to_vec()));
        }
    }
    out.sort();
    Ok(out)
}

/// Splits a guest path into parent and last component.
pub fn split(path: &Path) -> (&[u8], &[u8]) {
    let b = path.as_os_str().as_bytes();
    let b = b.strip_suffix(b"/").unwrap_or(b);
    match b.iter().rposition(|&c| c == b'/') {
        Some(i) => (&b[..i.max(1)], &b[i + 1..]),
        None => (b"/", b),
    }
}

/// The guest's root directory, mounted somewhere on the host.
pub struct GuestRoot {
    fd: OwnedFd,
    host: PathBuf,
}

const RESOLVE_IN: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
const RESOLVE_STRICT: u64 =
    libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_SYMLINKS;

impl GuestRoot {
    pub fn open(host: &Path) -> io::Result<Self> {
        let fd = openat2(
            libc::AT_FDCWD,
            host.as_os_str().as_bytes(),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        Ok(Self {
            fd,
            host: host.to_owned(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn rel(path: &[u8]) -> &[u8] {
        let r = path.trim_ascii_start();
        let mut r = r;
        while let Some(s) = r.strip_prefix(b"/") {
            r = s;
        }
        if r.is_empty() { b"." } else { r }
    }

    /// Opens a guest directory for listing, following guest symlinks inside
    /// the guest root.
    pub fn open_dir(&self, path: &[u8]) -> io::Result<OwnedFd> {
        openat2(
            self.fd(),
            Self::rel(path),
            libc::O_RDONLY | libc::O_DIRECTORY,
            RESOLVE_IN,
        )
    }

    /// Opens a directory whose guest path holds no symlink at all: used to
    /// act on paths a plan recorded in canonical form.
    pub fn open_dir_strict(&self, path: &[u8]) -> io::Result<OwnedFd> {
        openat2(
            self.fd(),
            Self::rel(path),
            libc::O_RDONLY | libc::O_DIRECTORY,
            RESOLVE_STRICT,
        )
    }

    /// Opens a guest path with `flags`, symlinks followed inside the guest.
    pub fn open_at(&self, path: &[u8], flags: i32) -> io::Result<OwnedFd> {
        openat2(self.fd(), Self::rel(path), flags, RESOLVE_IN)
    }

    /// Reads a small guest file (following guest symlinks inside the guest).
    pub fn read(&self, path: &str, max: u64) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let fd = self.open_at(
            path.as_bytes(),
            libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK,
        )?;
        let st = lstat_at(fd.as_raw_fd(), b"")?;
        if !st.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file",
            ));
        }
        let mut f = std::fs::File::from(fd);
        let mut buf = Vec::new();
        f.by_ref().take(max).read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// `lstat` of a guest path: the parent is resolved inside the guest,
    /// the last component is not followed.
    pub fn lstat(&self, path: &[u8]) -> io::Result<Stat> {
        let (parent, name) = split(Path::new(OsStr::from_bytes(path)));
        if name.is_empty() {
            return lstat_at(self.fd(), b"");
        }
        let d = self.open_dir(parent)?;
        lstat_at(d.as_raw_fd(), name)
    }

    /// Does the guest path exist (as itself, not followed)?
    pub fn exists(&self, path: &str) -> bool {
        self.lstat(path.as_bytes()).is_ok()
    }

    /// The canonical guest path of an open descriptor below the root.
    pub fn guest_path_of(&self, fd: RawFd) -> io::Result<PathBuf> {
        let host = std::fs::read_link(format!("/proc/self/fd/{fd}"))?;
        let rel = host.strip_prefix(&self.host).map_err(|_| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} resolved outside the guest root", host.display()),
            )
        })?;
        Ok(Path::new("/").join(rel))
    }

    /// Removes a file, symlink or (empty) directory by canonical guest path.
    pub fn remove(&self, path: &Path, dir: bool) -> io::Result<()> {
        let (parent, name) = split(path);
        let d = self.open_dir_strict(parent)?;
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        Ok(rfs::unlinkat(&d, name, flags)?)
    }

    /// Truncates a regular file to zero bytes, keeping its inode: owner,
    /// mode, timestamps other than mtime, and xattrs (SELinux label) stay.
    pub fn truncate(&self, path: &Path) -> io::Result<()> {
        let (parent, name) = split(path);
        let d = self.open_dir_strict(parent)?;
        let fd = openat2(
            d.as_raw_fd(),
            name,
            libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
            RESOLVE_STRICT,
        )?;
        let st = lstat_at(fd.as_raw_fd(), b"")?;
        if !st.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(rfs::ftruncate(&fd, 0)?)
    }

    /// Creates or replaces a regular file with `content` and `mode`, owned
    /// by root. The parent must exist; nothing is followed.
    pub fn write_file(&self, path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
        use std::io::Write;
        let (parent, name) = split(path);
        let d = self.open_dir_strict(parent)?;
        let tmp = [b".vmfinal-new.", name].concat();
        let fd = openat2(
            d.as_raw_fd(),
            &tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            RESOLVE_STRICT,
        );
        let fd = match fd {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // A leftover of an earlier run: replaced.
                let _ = rfs::unlinkat(&d, tmp.as_slice(), AtFlags::empty());
                openat2(
                    d.as_raw_fd(),
                    &tmp,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    RESOLVE_STRICT,
                )?
            }
            Err(e) => return Err(e),
        };
        rfs::fchmod(&fd, Mode::from_bits_retain(mode))?;
        rfs::fchown(&fd, Some(rfs::Uid::ROOT), Some(rfs::Gid::ROOT))?;
        let mut f = std::fs::File::from(fd);
        f.write_all(content)?;
        f.sync_all()?;
        if let Err(e) = rfs::renameat(&d, tmp.as_slice(), &d, name) {
            let _ = rfs::unlinkat(&d, tmp.as_slice(), AtFlags::empty());
            return Err(e.into());
        }
        Ok(())
    }

    /// Creates a symlink (replacing an existing symlink of that name).
    pub fn symlink(&self, path: &Path, target: &[u8]) -> io::Result<()> {
        let (parent, name) = split(path);
        let d = self.open_dir_strict(parent)?;
        if let Ok(st) = lstat_at(d.as_raw_fd(), name) {
            if !st.is_symlink() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a symlink",
                ));
            }
            let _ = rfs::unlinkat(&d, name, AtFlags::empty());
        }
        Ok(rfs::symlinkat(target, &d, name)?)
    }

    /// Creates a directory (and missing parents) with `mode`, strictly.
    pub fn mkdir_p(&self, path: &Path, mode: u32) -> io::Result<()> {
        let mut cur = PathBuf::from("/");
        for c in path.components().skip(1) {
            let parent = cur.clone();
            cur.push(c);
            if self.lstat(cur.as_os_str().as_bytes()).is_ok() {
                continue;
            }
            let d = self.open_dir_strict(parent.as_os_str().as_bytes())?;
            match rfs::mkdirat(&d, c.as_os_str().as_bytes(), Mode::from_bits_retain(mode)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_stay_inside() {
        let host = tempfile::tempdir().unwrap();
        let guest = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), b"host").unwrap();
        std::fs::create_dir_all(guest.path().join("etc")).unwrap();
        std::fs::write(guest.path().join("etc/secret"), b"guest").unwrap();
        std::os::unix::fs::symlink("/etc", guest.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../..", guest.path().join("up")).unwrap();
        let g = GuestRoot::open(guest.path()).unwrap();
        assert_eq!(g.read("/abs/secret", 100).unwrap(), b"guest");
        let d = g.open_dir(b"/up").unwrap();
        assert_eq!(g.guest_path_of(d.as_raw_fd()).unwrap(), Path::new("/"));
        assert!(g.open_dir_strict(b"/abs").is_err());
        let hostname = host.path().file_name().unwrap().to_str().unwrap();
        assert!(g.read(&format!("/up/tmp/{hostname}/secret"), 100).is_err());
    }

    #[test]
    fn split_paths() {
        assert_eq!(split(Path::new("/a/b")), (&b"/a"[..], &b"b"[..]));
        assert_eq!(split(Path::new("/a")), (&b"/"[..], &b"a"[..]));
    }
}
