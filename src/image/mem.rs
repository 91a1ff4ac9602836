//! Images held in memory: `MemFile` is an image file's bytes (for the qcow2
//! and `.zst` readers), `MemDisk` is a raw guest disk (for the partition and
//! filesystem probes). Used by the fuzz targets and unit tests; vmfinal
//! itself always reads real files.

use crate::extent::Extent;
use crate::image::{BlockSource, ImageError, ImageFormat, Result};

use super::host::HostFile;

/// An image file's bytes in memory.
pub struct MemFile(pub Vec<u8>);

impl HostFile for MemFile {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        let src = usize::try_from(off)
            .ok()
            .and_then(|o| Some(o..o.checked_add(buf.len())?))
            .and_then(|r| self.0.get(r))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A raw guest disk in memory.
pub struct MemDisk(pub Vec<u8>);

impl BlockSource for MemDisk {
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }
    fn virtual_size(&self) -> u64 {
        self.0.len() as u64
    }
    fn data_extents(&self) -> Result<Vec<Extent>> {
        Ok(vec![Extent::new(0, self.0.len() as u64)])
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        MemFile::read_exact_at_slice(&self.0, buf, offset).map_err(|_| ImageError::Truncated {
            path: "memory".into(),
            what: format!("read past the end at offset {offset}"),
        })
    }
    fn host_allocated_bytes(&self) -> u64 {
        self.0.len() as u64
    }
}

impl MemFile {
    fn read_exact_at_slice(b: &[u8], buf: &mut [u8], off: u64) -> std::io::Result<()> {
        let src = usize::try_from(off)
            .ok()
            .and_then(|o| Some(o..o.checked_add(buf.len())?))
            .and_then(|r| b.get(r))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}
