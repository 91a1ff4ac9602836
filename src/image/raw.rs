//! Raw images: the file is the guest disk. Holes are found with
//! SEEK_DATA/SEEK_HOLE and are never read.

use rustix::fs::{SeekFrom, seek};
use rustix::io::Errno;
use std::fs::File;
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
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        let data = match seek(file, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break, // no data past pos
            Err(Errno::INVAL | Errno::OPNOTSUPP) => {
                return Ok(vec![Extent::new(pos, size - pos)]);
            }
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = seek(file, SeekFrom::Hole(data))?.min(size);
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
