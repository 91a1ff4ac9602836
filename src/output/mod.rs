//! Writing outputs safely: every output is written under a temporary name in
//! the target's directory and renamed over the final name only on success. A
//! failure, a panic or Ctrl-C leaves no file under the final name. The
//! temporary file is `tempfile`'s `NamedTempFile` under vmfinal's own name
//! (`TempOutput`); a SIGKILL's leftovers are found by that name.
//!
//! Every format writer is here, each a pipeline `Sink`: `qcow2` (with the
//! cluster encoders), `zst` (seekable `.zst`) and `raw` (sparse file or
//! stream). The readers are in `image/`; the on-disk layout both sides use
//! (qcow2 header and entry encoding, the `.zst` seek table) lives with the
//! readers, in `image::qcow2::format` and `image::zst`.

pub mod dest;
pub mod qcow2;
pub mod raw;
pub mod zst;

use std::fs::File;
use std::path::{Path, PathBuf};

/// The name that means stdin (as input) or stdout (as output).
pub const STDIO: &str = "-";

/// True if `p` is `-`.
pub fn is_stdio(p: &Path) -> bool {
    p.as_os_str() == STDIO
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{0}: already exists (use --force to overwrite)")]
    Exists(PathBuf),
    #[error("{0}: is {1}, not a regular file; vmfinal only writes or replaces regular files")]
    NotRegular(PathBuf, &'static str),
    #[error("{0}: output would overwrite the input")]
    SameAsInput(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The temporary name an output is written under: `.NAME.vmfinal-PID.tmp`
/// beside `target`.
pub fn temp_path_for(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    dir.join(format!(".{name}.vmfinal-{}.tmp", std::process::id()))
}

/// What kind of thing `meta` describes, for messages.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Refuses an output name that exists (unless `force`) or that names
/// anything but a regular file (even with `force`: `-o /dev/null -f` must
/// never replace a device node). Checked before any work starts.
pub fn check_target(target: &Path, force: bool) -> Result<(), OutputError> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if !m.file_type().is_file() => {
            Err(OutputError::NotRegular(target.to_owned(), kind(&m)))
        }
        Ok(_) if !force => Err(OutputError::Exists(target.to_owned())),
        _ => Ok(()),
    }
}

/// True while `pid` is a running vmfinal.
pub fn pid_is_vmfinal(pid: u32) -> bool {
    pid == std::process::id()
        || std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "vmfinal")
}

/// Removes temporary outputs for `target` that dead vmfinal runs left
/// (`.NAME.vmfinal-PID.tmp` whose PID is not a running vmfinal and which no
/// live run holds: `crate::owner::in_use`, since the PID in the name may
/// come from another PID namespace). Returns the paths removed.
pub fn sweep_stale_temps(target: &Path) -> Vec<PathBuf> {
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let prefix = format!(".{name}.vmfinal-");
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return removed;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = n
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".tmp"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let regular = e.file_type().is_ok_and(|t| t.is_file());
        if regular
            && !pid_is_vmfinal(pid)
            && !crate::owner::in_use(&e.path())
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed.push(e.path());
        }
    }
    removed
}

/// An output file under construction. Dropping it without `commit` removes it.
///
/// The file is a `tempfile::NamedTempFile` (created exclusively, removed on
/// drop, renamed by `persist`) under the name vmfinal has always used,
/// `temp_path_for(target)`: that name is what `register_temp` records for a
/// cleanup after SIGKILL and what `sweep_stale_temps` recognises, so it is
/// given (no random part, the PID makes it unique) rather than drawn.
pub struct TempOutput {
    file: tempfile::NamedTempFile,
    target: PathBuf,
}

impl TempOutput {
    /// Creates `.NAME.vmfinal-PID.tmp` beside `target`. Refuses an existing
    /// target unless `force`.
    pub fn create(target: &Path, force: bool) -> Result<Self, OutputError> {
        use std::os::unix::fs::PermissionsExt;
        check_target(target, force)?;
        for p in sweep_stale_temps(target) {
            crate::text::note(&format!(
                "removed {}, left by a vmfinal run that was killed",
                p.display()
            ));
        }
        let tmp = temp_path_for(target);
        let io = |source| OutputError::Io {
            path: target.to_owned(),
            source,
        };
        let (dir, name) = match (tmp.parent(), tmp.file_name()) {
            (Some(d), Some(n)) => (d, n),
            _ => return Err(io(std::io::Error::from(std::io::ErrorKind::InvalidInput))),
        };
        // Mode 0666 less the umask, as a plain create gives (tempfile's own
        // default is 0600).
        let file = tempfile::Builder::new()
            .prefix(name)
            .rand_bytes(0)
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)
            .map_err(io)?;
        // Held for the run's life, so no sweep in another PID namespace
        // takes it for a dead run's file.
        crate::owner::hold(file.as_file()).map_err(io)?;
        Ok(Self {
            file,
            target: target.to_owned(),
        })
    }

    pub fn file(&self) -> &File {
        self.file.as_file()
    }

    pub fn try_clone_file(&self) -> Result<File, OutputError> {
        self.file().try_clone().map_err(|source| OutputError::Io {
            path: self.target.clone(),
            source,
        })
    }

    pub fn tmp_path(&self) -> &Path {
        self.file.path()
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes to disk and renames over the target.
    pub fn commit(self) -> Result<(), OutputError> {
        self.file
            .as_file()
            .sync_all()
            .map_err(|source| OutputError::Io {
                path: self.target.clone(),
                source,
            })?;
        // The name may have become something else meanwhile: never replace
        // a device node or a directory.
        check_target(&self.target, true)?;
        let target = self.target;
        self.file.persist(&target).map_err(|e| OutputError::Io {
            path: target.clone(),
            source: e.error,
        })?;
        Ok(())
    }
}

/// Starts writing `[off, off+len)` of `file` back to disk without waiting
/// (sync_file_range WRITE), so the fsync before the rename into place has
/// little left to wait for. Errors (a pipe, a filesystem without it) are
/// ignored: the final fsync still decides. Raw libc: rustix has no
/// sync_file_range.
pub fn start_writeback(file: &File, off: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor; no memory arguments.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            off as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

/// True if `a` and `b` name the same existing file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
