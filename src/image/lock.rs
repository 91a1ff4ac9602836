//! QEMU's image locks: open file description (OFD) byte-range locks on the
//! image file, as QEMU's file-posix driver takes them
//! (`raw_apply_lock_bytes`): byte 100 + bit for each permission a user
//! holds, byte 200 + bit for each permission it does not let others hold.
//! All locks are shared (read) locks; a conflict is another open file
//! description holding a byte we test. So QEMU refuses a disk vmfinal is
//! writing, and vmfinal refuses a disk a running VM is using.
//!
//! Not here: which commands lock what (the callers decide).
//!
//! Raw `libc::fcntl` rather than rustix: rustix's `fcntl_lock` takes and
//! tests whole-file locks only, and QEMU's protocol is byte ranges with
//! `F_OFD_GETLK`/`F_OFD_SETLK`.

use std::fs::File;
use std::os::fd::AsRawFd;

/// QEMU's lock byte bases (block/file-posix.c).
const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;
/// QEMU's permission bits (BLK_PERM_*).
const CONSISTENT_READ: u32 = 0;
const WRITE: u32 = 1;
const WRITE_UNCHANGED: u32 = 2;
const RESIZE: u32 = 3;
const ALL: [u32; 4] = [CONSISTENT_READ, WRITE, WRITE_UNCHANGED, RESIZE];

fn name(bit: u32) -> &'static str {
    match bit {
        CONSISTENT_READ => "consistent read",
        WRITE => "write",
        WRITE_UNCHANGED => "write unchanged",
        _ => "resize",
    }
}

/// What a lock is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Reading an input: others may read, nobody may write or resize.
    Read,
    /// Changing the image in place: nobody else may use it.
    Exclusive,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "is in use by another process (it holds QEMU's \"{0}\" lock: a running VM or qemu-img?); stop it first"
    )]
    InUse(&'static str),
    #[error("cannot lock it: {0}")]
    Io(std::io::Error),
}

fn flock(kind: libc::c_short, start: i64) -> libc::flock {
    // SAFETY: flock is plain old data; zero is a valid value for each field.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = kind;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l.l_start = start;
    l.l_len = 1;
    l.l_pid = 0;
    l
}

/// Takes a shared lock on byte `at`.
fn set(file: &File, at: i64) -> std::io::Result<()> {
    let l = flock(libc::F_RDLCK as libc::c_short, at);
    // SAFETY: fcntl with F_OFD_SETLK reads the flock struct we pass.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &l) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// True if another open file description holds a lock on byte `at`.
fn held_elsewhere(file: &File, at: i64) -> std::io::Result<bool> {
    let mut l = flock(libc::F_WRLCK as libc::c_short, at);
    // SAFETY: fcntl with F_OFD_GETLK fills the flock struct we pass.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut l) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(l.l_type != libc::F_UNLCK as libc::c_short)
}

/// Errors that mean "this filesystem has no OFD locks": QEMU's
/// `locking=auto` goes on without them, and so do we.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOLCK) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    )
}

/// Locks `file` as QEMU would for `mode`; the locks live as long as the
/// open file description (closing every descriptor of it releases them).
pub fn lock(file: &File, mode: LockMode) -> Result<(), LockError> {
    let (perm, shared): (&[u32], &[u32]) = match mode {
        LockMode::Read => (&[CONSISTENT_READ], &[CONSISTENT_READ, WRITE_UNCHANGED]),
        LockMode::Exclusive => (&[CONSISTENT_READ, WRITE, RESIZE], &[]),
    };
    let run = || -> std::io::Result<Option<&'static str>> {
        for &b in perm {
            set(file, PERM_BASE + b as i64)?;
        }
        for &b in ALL.iter().filter(|b| !shared.contains(b)) {
            set(file, SHARED_BASE + b as i64)?;
        }
        // Someone forbids what we need, or holds what we forbid?
        for &b in perm {
            if held_elsewhere(file, SHARED_BASE + b as i64)? {
                return Ok(Some(name(b)));
            }
        }
        for &b in ALL.iter().filter(|b| !shared.contains(b)) {
            if held_elsewhere(file, PERM_BASE + b as i64)? {
                return Ok(Some(name(b)));
            }
        }
        Ok(None)
    };
    match run() {
        Ok(None) => Ok(()),
        Ok(Some(what)) => Err(LockError::InUse(what)),
        Err(e) if unsupported(&e) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
            Err(LockError::InUse("write"))
        }
        Err(e) => Err(LockError::Io(e)),
    }
}
