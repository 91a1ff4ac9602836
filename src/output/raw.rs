//! Sparse raw output: non-zero units are written at their guest offsets; zero
//! units and zero jobs are left as holes; the file is sized at the end.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::pipeline::{JobOut, PipelineError, Sink, UnitOut};

pub struct RawWriter {
    file: File,
    path: PathBuf,
    unit: u64,
    size: u64,
    pub bytes_written: u64,
}

impl RawWriter {
    pub fn new(file: File, path: PathBuf, unit: u64, size: u64) -> Self {
        Self {
            file,
            path,
            unit,
            size,
            bytes_written: 0,
        }
    }

    fn werr(&self, source: std::io::Error) -> PipelineError {
        PipelineError::Write {
            path: self.path.clone(),
            source,
        }
    }

    /// Sets the final length (the trailing holes).
    pub fn finish(self) -> Result<u64, PipelineError> {
        self.file.set_len(self.size).map_err(|e| self.werr(e))?;
        Ok(self.size)
    }
}

impl Sink for RawWriter {
    fn write_job(&mut self, job: JobOut) -> Result<(), PipelineError> {
        if job.is_zero_job() {
            return Ok(());
        }
        // Write each run of non-zero units with one pwrite.
        let n = job.units.len();
        let mut i = 0;
        while i < n {
            if matches!(job.units[i], UnitOut::Zero) {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < n && !matches!(job.units[j], UnitOut::Zero) {
                j += 1;
            }
            let s = (i as u64 * self.unit) as usize;
            let e = ((j as u64 * self.unit).min(job.len)) as usize;
            self.file
                .write_all_at(&job.data[s..e], job.start + s as u64)
                .map_err(|e| self.werr(e))?;
            self.bytes_written += (e - s) as u64;
            i = j;
        }
        Ok(())
    }
}
