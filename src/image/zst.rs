//! `.zst` artifacts in the zstd seekable format: independent frames, one per
//! guest chunk, then a seek table in a skippable frame. Plain `zstd -d` still
//! decompresses the whole file.
//! TODO(helper): implement.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::extent::Extent;
use crate::image::{BlockSource, ImageError, ImageFormat, Result};
use crate::pipeline::{JobOut, PipelineError, Sink, UnitEncoder};

/// The first four bytes of a zstd frame (0xFD2FB528, little-endian).
pub fn is_zstd_magic(m: &[u8; 4]) -> bool {
    *m == [0x28, 0xB5, 0x2F, 0xFD]
}

pub struct ZstImage {}

impl ZstImage {
    pub fn open(_file: File, path: &Path) -> Result<Self> {
        Err(ImageError::Unsupported {
            path: path.to_owned(),
            what: ".zst reading is not implemented yet".into(),
        })
    }
}

impl BlockSource for ZstImage {
    fn format(&self) -> ImageFormat {
        ImageFormat::Zst
    }
    fn virtual_size(&self) -> u64 {
        0
    }
    fn data_extents(&self) -> Result<Vec<Extent>> {
        Ok(Vec::new())
    }
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> Result<()> {
        Ok(())
    }
    fn host_allocated_bytes(&self) -> u64 {
        0
    }
}

pub struct ZstWriter {
    _file: File,
    _path: PathBuf,
}

impl ZstWriter {
    pub fn new(
        file: File,
        path: PathBuf,
        _virtual_size: u64,
        _frame_size: u64,
        _level: i32,
    ) -> Result<Self, PipelineError> {
        Ok(Self {
            _file: file,
            _path: path,
        })
    }
    /// Writes the seek table; returns the file's final length.
    pub fn finish(self) -> Result<u64, PipelineError> {
        Err(PipelineError::Other(
            ".zst writing is not implemented yet".into(),
        ))
    }
}

impl Sink for ZstWriter {
    fn write_job(&mut self, _job: JobOut) -> Result<(), PipelineError> {
        Ok(())
    }
}

/// One frame encoder (a zstd frame with content checksum).
pub fn frame_encoder(_level: i32) -> std::io::Result<Box<dyn UnitEncoder>> {
    Err(std::io::Error::other("not implemented"))
}
