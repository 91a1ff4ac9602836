//! The host side of an image: the bytes of the file that holds a qcow2 or
//! `.zst` image, behind a small trait so that the readers run the same over
//! a real file and over bytes in memory (the fuzz targets, unit tests).
//!
//! Not here: guest-side views (`BlockSource`), writing.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::extent::Extent;

/// Positioned, read-only access to an image file. Thread safe: readers call
/// it from the pipeline's workers concurrently.
pub trait HostFile: Send + Sync {
    /// File length in bytes, as it was when the image was opened.
    fn len(&self) -> u64;
    /// True for an empty file.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads exactly `buf.len()` bytes at `off`; a short read is an error.
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()>;
    /// Byte ranges of the file that may hold data (everything else is a
    /// hole and reads as zeros): lets table walks skip holes of a sparse
    /// file instead of reading them.
    fn data_ranges(&self) -> std::io::Result<Vec<Extent>> {
        Ok(vec![Extent::new(0, self.len())])
    }
    /// Bytes the file occupies on the host.
    fn allocated_bytes(&self) -> u64 {
        self.len()
    }
}

/// A real file, with its length taken once.
pub struct OsFile {
    pub file: File,
    len: u64,
}

impl OsFile {
    pub fn new(file: File) -> std::io::Result<Self> {
        let meta = file.metadata()?;
        let len = if meta.file_type().is_file() {
            meta.len()
        } else {
            use std::io::{Seek, SeekFrom};
            let mut f = &file;
            f.seek(SeekFrom::End(0))?
        };
        Ok(Self { file, len })
    }
}

impl HostFile for OsFile {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, off)
    }
    fn data_ranges(&self) -> std::io::Result<Vec<Extent>> {
        super::raw::seek_data_extents(&self.file, self.len)
    }
    fn allocated_bytes(&self) -> u64 {
        self.file
            .metadata()
            .map(|m| super::allocated_bytes(&m))
            .unwrap_or(0)
    }
}

/// True if `[off, off + len)` lies entirely in a hole of `data` (normalized
/// data ranges): it reads as zeros without being read.
pub fn in_hole(data: &[Extent], off: u64, len: u64) -> bool {
    let end = off.saturating_add(len);
    let i = data.partition_point(|e| e.end() <= off);
    data.get(i).is_none_or(|e| e.start >= end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes() {
        let d = vec![Extent::new(100, 50), Extent::new(300, 10)];
        assert!(in_hole(&d, 0, 100));
        assert!(!in_hole(&d, 0, 101));
        assert!(in_hole(&d, 150, 150));
        assert!(!in_hole(&d, 149, 2));
        assert!(in_hole(&d, 310, u64::MAX));
        assert!(!in_hole(&d, 305, 1));
    }
}
