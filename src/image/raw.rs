//! Raw images: the file is the guest disk. Holes are found with
//! SEEK_DATA/SEEK_HOLE and are never read.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{BlockSource, ImageError, ImageFormat, Result, io_err};
use crate::extent::Extent;

pub struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
}

impl RawImage {
    pub fn open(file: File, path: &Path) -> Result<Self> {
        let meta = file.metadata().map_err(|e| io_err(path, e))?;
        let size = if meta.file_type().is_file() {
            meta.len()
        } else {
            // A block device: its size is where SEEK_END lands.
            use std::io::{Seek, SeekFrom};
            let mut f = &file;
            f.seek(SeekFrom::End(0)).map_err(|e| io_err(path, e))?
        };
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
        })
    }
}

/// Data ranges of a file by SEEK_DATA/SEEK_HOLE. Falls back to "all data"
/// where the filesystem does not support the calls.
pub fn seek_data_extents(file: &File, size: u64) -> std::io::Result<Vec<Extent>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on a valid, owned fd has no memory effects.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENXIO) => break, // no data past pos
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                    return Ok(vec![Extent::new(pos, size - pos)]);
                }
                _ => return Err(err),
            }
        }
        let data = data as u64;
        if data >= size {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let hole = (hole as u64).min(size);
        out.push(Extent::new(data, hole - data));
        pos = hole;
    }
    Ok(out)
}

impl BlockSource for RawImage {
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn data_extents(&self) -> Result<Vec<Extent>> {
        seek_data_extents(&self.file, self.size).map_err(|e| io_err(&self.path, e))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ImageError::Truncated {
                    path: self.path.clone(),
                    what: format!("file shrank while reading at offset {offset}"),
                }
            } else {
                io_err(&self.path, e)
            }
        })
    }
    fn host_allocated_bytes(&self) -> u64 {
        self.file
            .metadata()
            .map(|m| super::allocated_bytes(&m))
            .unwrap_or(0)
    }
}
