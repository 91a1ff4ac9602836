//! Writing outputs safely: every output is written under a temporary name in
//! the target's directory and renamed over the final name only on success. A
//! failure, a panic or Ctrl-C leaves no file under the final name.
//!
//! The format writers live beside their readers (`image::qcow2::writer`,
//! `image::zst`); the sparse raw writer is here.

pub mod dest;
pub mod raw;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{0}: already exists (use --force to overwrite)")]
    Exists(PathBuf),
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

/// An output file under construction. Dropping it without `commit` removes it.
pub struct TempOutput {
    tmp: PathBuf,
    target: PathBuf,
    file: Option<File>,
}

impl TempOutput {
    /// Creates `.NAME.vmfinal-PID.tmp` beside `target`. Refuses an existing
    /// target unless `force`.
    pub fn create(target: &Path, force: bool) -> Result<Self, OutputError> {
        if !force && std::fs::symlink_metadata(target).is_ok() {
            return Err(OutputError::Exists(target.to_owned()));
        }
        let tmp = temp_path_for(target);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|source| OutputError::Io {
                path: tmp.clone(),
                source,
            })?;
        Ok(Self {
            tmp,
            target: target.to_owned(),
            file: Some(file),
        })
    }

    pub fn file(&self) -> &File {
        // The file is only taken by `commit`, which consumes self.
        self.file
            .as_ref()
            .expect("TempOutput file present until commit")
    }

    pub fn try_clone_file(&self) -> Result<File, OutputError> {
        self.file().try_clone().map_err(|source| OutputError::Io {
            path: self.tmp.clone(),
            source,
        })
    }

    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes to disk and renames over the target.
    pub fn commit(mut self) -> Result<(), OutputError> {
        let file = self.file.take().expect("TempOutput committed once");
        file.sync_all().map_err(|source| OutputError::Io {
            path: self.tmp.clone(),
            source,
        })?;
        drop(file);
        std::fs::rename(&self.tmp, &self.target).map_err(|source| OutputError::Io {
            path: self.target.clone(),
            source,
        })?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// True if `a` and `b` name the same existing file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
