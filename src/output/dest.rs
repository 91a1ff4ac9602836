//! Where a conversion writes: a file under a temporary name, renamed on
//! success (`TempOutput`), or stdout (`-o -`), a stream written strictly
//! in order with no temporary file and no rename. A stream cannot be taken
//! back: after an error or Ctrl-C the reader has an incomplete stream and
//! vmfinal's exit code says so (use `set -o pipefail`).
//!
//! Not here: the format writers (`output::qcow2`, `output::zst`,
//! `output::raw`).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{OutputError, TempOutput, is_stdio};

/// Set once a stream to stdout has started.
static STREAMING: AtomicBool = AtomicBool::new(false);

/// True if this process has started writing an image to stdout.
pub fn streaming() -> bool {
    STREAMING.load(Ordering::Relaxed)
}

/// The name a stream is called by in messages.
pub const STDOUT_NAME: &str = "stdout";

pub enum Destination {
    File(TempOutput),
    Stdout(File),
}

impl Destination {
    /// `-` is stdout; anything else a file under a temporary name.
    pub fn open(target: &Path, force: bool) -> Result<Self, OutputError> {
        if !is_stdio(target) {
            return TempOutput::create(target, force).map(Destination::File);
        }
        let fd = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| OutputError::Io {
                path: PathBuf::from(STDOUT_NAME),
                source,
            })?;
        STREAMING.store(true, Ordering::Relaxed);
        Ok(Destination::Stdout(File::from(fd)))
    }

    pub fn is_stream(&self) -> bool {
        matches!(self, Destination::Stdout(_))
    }

    /// The name errors use: the temporary file, or `stdout`.
    pub fn name(&self) -> PathBuf {
        match self {
            Destination::File(t) => t.tmp_path().to_owned(),
            Destination::Stdout(_) => PathBuf::from(STDOUT_NAME),
        }
    }

    /// A file for positioned writes (qcow2, sparse raw); a stream has none.
    pub fn file(&self) -> Result<File, OutputError> {
        match self {
            Destination::File(t) => t.try_clone_file(),
            Destination::Stdout(_) => Err(OutputError::Io {
                path: PathBuf::from(STDOUT_NAME),
                source: std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "this format needs a seekable file, not a stream",
                ),
            }),
        }
    }

    /// A writer for output written strictly in order (`.zst`, raw stream).
    pub fn writer(&self) -> Result<Box<dyn Write>, OutputError> {
        let f = match self {
            Destination::File(t) => t.try_clone_file()?,
            Destination::Stdout(f) => f.try_clone().map_err(|source| OutputError::Io {
                path: PathBuf::from(STDOUT_NAME),
                source,
            })?,
        };
        Ok(Box::new(f))
    }

    /// A file: fsync and rename into place. A stream: nothing left to do
    /// (every byte was written with write(2)).
    pub fn commit(self) -> Result<(), OutputError> {
        match self {
            Destination::File(t) => t.commit(),
            Destination::Stdout(_) => Ok(()),
        }
    }
}
