//! Block-level access to input images: a uniform, read-only view of a guest
//! disk (virtual size, allocated extents, positioned reads) over raw, qcow2 and
//! seekable `.zst` files. Formats are probed by magic. Nothing here writes.
//!
//! Not here: output writers (see `output`), partition tables (`disk`),
//! filesystems (`fs`).

pub mod qcow2;
pub mod raw;
pub mod zst;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::extent::Extent;

/// The image formats vmfinal reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Qcow2,
    Zst,
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Zst => "zst",
        })
    }
}

/// Errors from reading an image. Each variant is a sentence a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: is a directory, not a disk image")]
    IsDirectory { path: PathBuf },
    #[error("{path}: unsupported image: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: corrupt image: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("{path}: truncated image: {what}")]
    Truncated { path: PathBuf, what: String },
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// A read-only view of a guest disk. Implementations are thread safe: the
/// pipeline's workers call `read_at` concurrently (positioned reads, no shared
/// cursor).
pub trait BlockSource: Send + Sync {
    /// The container format of this image.
    fn format(&self) -> ImageFormat;
    /// Guest size in bytes.
    fn virtual_size(&self) -> u64;
    /// Guest byte ranges that may hold non-zero data: sorted, non-overlapping,
    /// inside `[0, virtual_size)`. Everything outside reads as zeros and is
    /// never read by the converter.
    fn data_extents(&self) -> Result<Vec<Extent>>;
    /// Fills `buf` with guest bytes starting at `offset`. Unallocated ranges
    /// read as zeros. A range past `virtual_size` is a caller bug. A short read
    /// of the underlying file is an error, never silent zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Bytes the image file occupies on the host (allocated, not apparent).
    fn host_allocated_bytes(&self) -> u64;
    /// Reads aligned to this size are cheapest (a `.zst` frame); the
    /// pipeline sizes its jobs to whole multiples of it.
    fn preferred_read_size(&self) -> Option<u64> {
        None
    }
    /// Format details for `info`: cluster size, compression type, ...
    fn details(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Probes the format of an open file by its magic.
pub fn probe_format(file: &File, path: &Path) -> Result<ImageFormat> {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 4];
    let n = file.read_at(&mut magic, 0).map_err(|e| io_err(path, e))?;
    if n == 4 && magic == qcow2::format::QCOW2_MAGIC.to_be_bytes() {
        return Ok(ImageFormat::Qcow2);
    }
    if n == 4 && zst::is_zstd_magic(&magic) {
        return Ok(ImageFormat::Zst);
    }
    Ok(ImageFormat::Raw)
}

/// Opens an image for reading, probing the format unless `forced`.
pub fn open(path: &Path, forced: Option<ImageFormat>) -> Result<Box<dyn BlockSource>> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.is_dir() {
        return Err(ImageError::IsDirectory {
            path: path.to_owned(),
        });
    }
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let format = match forced {
        Some(f) => f,
        None => probe_format(&file, path)?,
    };
    Ok(match format {
        ImageFormat::Raw => Box::new(raw::RawImage::open(file, path)?),
        ImageFormat::Qcow2 => Box::new(qcow2::Qcow2Image::open(file, path)?),
        ImageFormat::Zst => Box::new(zst::ZstImage::open(file, path)?),
    })
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> ImageError {
    ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Bytes a file occupies on the host (st_blocks * 512).
pub fn allocated_bytes(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks() * 512
}
