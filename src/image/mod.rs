//! Block-level access to input images: a uniform, read-only view of a guest
//! disk (virtual size, allocated extents, positioned reads) over raw, qcow2 and
//! seekable `.zst` files. Nothing here writes.
//!
//! The format comes from the user, never from the guest (a guest controls
//! the first and last sectors of its raw disk): `--format`, else a name that
//! says it (`.raw`, `.qcow2`, `.zst`), checked against the magic. Only
//! names that say nothing (`.img`, none) are probed, and a probed qcow2 must
//! account for the whole file. Inputs are locked as QEMU locks them.
//!
//! Not here: output writers (see `output`), partition tables (`disk`),
//! filesystems (`fs`).

pub mod host;
pub mod lock;
pub mod mem;
pub mod qcow2;
pub mod raw;
pub mod xxh64;
pub mod zst;

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::extent::Extent;
use host::{HostFile, OsFile};

/// Largest virtual size vmfinal reads or writes (4 EiB): every guest offset
/// plus a job stays far from u64 overflow.
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 62;
/// Raw inputs are whole 512-byte sectors unless `--format raw` says otherwise.
pub const SECTOR: u64 = 512;

/// The image formats vmfinal reads and writes.
/// (Its command-line spelling: `commands::value_enums`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
    /// The format cannot be decided safely: the user must say it.
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Locked {
        path: PathBuf,
        #[source]
        source: lock::LockError,
    },
}

impl ImageError {
    /// Damage to the image (as opposed to an image vmfinal does not read, or
    /// an error of the host): what `check` reports as corruption.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            ImageError::Corrupt { .. } | ImageError::Truncated { .. }
        )
    }
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

/// What a file's name says about its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSays {
    Format(ImageFormat),
    /// A format vmfinal does not read (the extension).
    Other(&'static str),
    Nothing,
}

/// The format a name's extension states, if it states one.
pub fn format_from_name(path: &Path) -> NameSays {
    let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
        return NameSays::Nothing;
    };
    match ext.to_ascii_lowercase().as_str() {
        "raw" => NameSays::Format(ImageFormat::Raw),
        "qcow2" | "qcow" => NameSays::Format(ImageFormat::Qcow2),
        "zst" | "zstd" => NameSays::Format(ImageFormat::Zst),
        "vmdk" => NameSays::Other("vmdk"),
        "vhd" | "vpc" => NameSays::Other("vhd"),
        "vhdx" => NameSays::Other("vhdx"),
        "vdi" => NameSays::Other("vdi"),
        "qed" => NameSays::Other("qed"),
        "gz" => NameSays::Other("gz"),
        "xz" => NameSays::Other("xz"),
        "bz2" => NameSays::Other("bz2"),
        _ => NameSays::Nothing,
    }
}

/// The format the first bytes claim (raw when they claim none).
pub fn magic_format(first: &[u8]) -> ImageFormat {
    match first.get(..4).and_then(|m| <[u8; 4]>::try_from(m).ok()) {
        Some(m) if m == qcow2::format::QCOW2_MAGIC.to_be_bytes() => ImageFormat::Qcow2,
        Some(m) if zst::is_zstd_magic(&m) => ImageFormat::Zst,
        _ => ImageFormat::Raw,
    }
}

/// How the format was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// `--format`.
    Forced,
    /// The name says it and the magic agrees.
    Named,
    /// The name says nothing: the magic was probed.
    Probed,
}

/// Decides the format of `path` (open as `file`): `forced`, else the name
/// checked against the magic, else the magic.
pub fn choose_format(
    path: &Path,
    file: &File,
    forced: Option<ImageFormat>,
) -> Result<(ImageFormat, Decided)> {
    if let Some(f) = forced {
        return Ok((f, Decided::Forced));
    }
    let mut first = [0u8; 4];
    let n = file.read_at(&mut first, 0).map_err(|e| io_err(path, e))?;
    let magic = magic_format(&first[..n]);
    let err = |what: String| ImageError::Format {
        path: path.to_owned(),
        what,
    };
    match format_from_name(path) {
        NameSays::Format(ImageFormat::Raw) if magic != ImageFormat::Raw => Err(err(format!(
            "the name says raw but the file starts with a {magic} header (a guest can write one on its own disk): use --format raw to read it as the raw disk it is named, or --format {magic} if it really is {magic}"
        ))),
        NameSays::Format(named) if named != ImageFormat::Raw && magic != named => {
            Err(err(format!(
                "the name says {named} but the file does not start with a {named} header{}: pass --format to say what it is",
                if magic == ImageFormat::Raw {
                    String::new()
                } else {
                    format!(" (it starts with a {magic} header)")
                }
            )))
        }
        NameSays::Format(named) => Ok((named, Decided::Named)),
        NameSays::Other(ext) => Err(err(format!(
            "the name says {ext}, which vmfinal does not read (raw, qcow2 and seekable .zst only): convert it with qemu-img convert -O raw first, or pass --format if the name is wrong"
        ))),
        NameSays::Nothing => Ok((magic, Decided::Probed)),
    }
}

/// An opened image, by format (for commands that need the format's own
/// functions, such as `check`).
pub enum Opened {
    Raw(raw::RawImage),
    Qcow2(Box<qcow2::Qcow2Image>),
    Zst(zst::ZstImage),
}

impl Opened {
    pub fn into_source(self) -> Box<dyn BlockSource> {
        match self {
            Opened::Raw(r) => Box::new(r),
            Opened::Qcow2(q) => q,
            Opened::Zst(z) => Box::new(z),
        }
    }
}

/// Opens an image for reading guest data: the format from `forced`, the
/// name or the magic (see `choose_format`), a shared QEMU lock, and for a
/// probed format a check that its structure accounts for the whole file.
pub fn open(path: &Path, forced: Option<ImageFormat>) -> Result<Box<dyn BlockSource>> {
    match open_inspect(path, forced)? {
        Opened::Qcow2(q) if q.refusal().is_some() => Err(ImageError::Unsupported {
            path: path.to_owned(),
            what: q.refusal().map(|r| r.explain()).unwrap_or_default(),
        }),
        o => Ok(o.into_source()),
    }
}

/// As `open`, but a qcow2 that names another file (backing or data file)
/// is opened for its header only (`Qcow2Image::refusal` says why it cannot
/// be read): for `info` and `check`. The named file is never opened.
pub fn open_inspect(path: &Path, forced: Option<ImageFormat>) -> Result<Opened> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.is_dir() {
        return Err(ImageError::IsDirectory {
            path: path.to_owned(),
        });
    }
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    lock::lock(&file, lock::LockMode::Read).map_err(|source| ImageError::Locked {
        path: path.to_owned(),
        source,
    })?;
    let (format, decided) = choose_format(path, &file, forced)?;
    let host =
        OsFile::new(file.try_clone().map_err(|e| io_err(path, e))?).map_err(|e| io_err(path, e))?;
    let len = host.len();
    if format == ImageFormat::Raw
        && decided != Decided::Forced
        && meta.file_type().is_file()
        && (len == 0 || len % SECTOR != 0)
    {
        return Err(ImageError::Format {
            path: path.to_owned(),
            what: format!(
                "{len} bytes is not a whole number of 512-byte sectors, so not a disk image; use --format raw to read it as it is"
            ),
        });
    }
    let opened = match format {
        ImageFormat::Raw => Opened::Raw(raw::RawImage::open(file, path)?),
        ImageFormat::Qcow2 => {
            Opened::Qcow2(Box::new(qcow2::Qcow2Image::inspect(Box::new(host), path)?))
        }
        ImageFormat::Zst => Opened::Zst(zst::ZstImage::open_host(Box::new(host), path)?),
    };
    if decided == Decided::Probed {
        if let Opened::Qcow2(q) = &opened {
            let cs = q.header().cluster_size();
            let end = qcow2::check::referenced_end(q)?.next_multiple_of(cs);
            if q.file_len() > end {
                return Err(ImageError::Format {
                    path: path.to_owned(),
                    what: format!(
                        "starts with a qcow2 header, but its tables reference only the first {end} of its {len} bytes: that is what a qcow2 image written inside a raw disk looks like; use --format raw to read the disk, or --format qcow2 to trust the header"
                    ),
                });
            }
        }
        crate::text::note(&format!(
            "{}: the name does not say the format; read as {format} (probed; --format chooses)",
            path.display()
        ));
    }
    Ok(opened)
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
