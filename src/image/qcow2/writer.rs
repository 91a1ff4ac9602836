//! Sequential compressed qcow2 v3 writer.
//! TODO(helper): implement.

use std::fs::File;
use std::path::PathBuf;

use super::Compression;
use crate::pipeline::{JobOut, PipelineError, Sink, UnitEncoder};

pub struct Qcow2WriterOptions {
    pub virtual_size: u64,
    pub cluster_size: u64,
    pub compression: Compression,
}

pub struct Qcow2Writer {
    _file: File,
    _path: PathBuf,
}

impl Qcow2Writer {
    pub fn new(
        file: File,
        path: PathBuf,
        _opts: Qcow2WriterOptions,
    ) -> Result<Self, PipelineError> {
        Ok(Self {
            _file: file,
            _path: path,
        })
    }
    /// Writes tables and header; returns the file's final length.
    pub fn finish(self) -> Result<u64, PipelineError> {
        Err(PipelineError::Other(
            "qcow2 writing is not implemented yet".into(),
        ))
    }
}

impl Sink for Qcow2Writer {
    fn write_job(&mut self, _job: JobOut) -> Result<(), PipelineError> {
        Ok(())
    }
}

/// One cluster encoder: returns `None` when the cluster does not shrink below
/// `cluster_size - 1`, so it is stored plain, as qemu does.
pub fn cluster_encoder(
    _compression: Compression,
    _level: Option<i32>,
    _cluster_size: u64,
) -> std::io::Result<Box<dyn UnitEncoder>> {
    Err(std::io::Error::other("not implemented"))
}
