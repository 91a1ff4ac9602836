//! Raw output. `RawWriter`: a sparse file; non-zero units are written at
//! their guest offsets, zero units and zero jobs are left as holes, the file
//! is sized at the end. `RawStreamWriter`: every guest byte in order, zeros
//! included, for a stream on stdout.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::pipeline::{JobOut, PipelineError, PositionalWrite, Sink, UnitOut};

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

    /// Writes a job's non-zero units at their offsets (any thread, any order).
    fn write_at_offsets(&self, job: &JobOut) -> Result<u64, PipelineError> {
        if job.is_zero_job() {
            return Ok(0);
        }
        // Write each run of non-zero units with one pwrite.
        let n = job.units.len();
        let mut i = 0;
        let mut written = 0u64;
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
            written += (e - s) as u64;
            i = j;
        }
        crate::output::start_writeback(&self.file, job.start, job.len);
        Ok(written)
    }

    /// Sets the final length (the trailing holes).
    pub fn finish(self) -> Result<u64, PipelineError> {
        self.file.set_len(self.size).map_err(|e| self.werr(e))?;
        Ok(self.size)
    }
}

impl Sink for RawWriter {
    fn write_job(&mut self, job: JobOut) -> Result<(), PipelineError> {
        self.bytes_written += self.write_at_offsets(&job)?;
        Ok(())
    }
}

/// The workers' side of a `RawWriter` (see `PositionalWrite`); the
/// `RawWriter` itself then only counts.
pub struct RawPositional {
    inner: RawWriter,
}

impl RawPositional {
    pub fn new(file: File, path: PathBuf, unit: u64, size: u64) -> Self {
        Self {
            inner: RawWriter::new(file, path, unit, size),
        }
    }
}

impl PositionalWrite for RawPositional {
    fn write_job_at(&self, job: &JobOut) -> Result<(), PipelineError> {
        self.inner.write_at_offsets(job).map(|_| ())
    }
}

/// A `Sink` for jobs a `RawPositional` wrote already.
pub struct Written;

impl Sink for Written {
    fn write_job(&mut self, _job: JobOut) -> Result<(), PipelineError> {
        Ok(())
    }
}

/// Zeros written at a time for zero jobs of a stream.
const ZERO_CHUNK: usize = 1 << 20;

/// Every guest byte in guest order (a raw stream has no holes).
pub struct RawStreamWriter {
    out: Box<dyn Write>,
    path: PathBuf,
    zeros: Vec<u8>,
    pub bytes_written: u64,
}

impl RawStreamWriter {
    pub fn new(out: Box<dyn Write>, path: PathBuf) -> Self {
        Self {
            out,
            path,
            zeros: Vec::new(),
            bytes_written: 0,
        }
    }

    fn werr(&self, source: std::io::Error) -> PipelineError {
        PipelineError::Write {
            path: self.path.clone(),
            source,
        }
    }

    /// Flushes; returns the bytes written.
    pub fn finish(mut self) -> Result<u64, PipelineError> {
        self.out.flush().map_err(|e| self.werr(e))?;
        Ok(self.bytes_written)
    }
}

impl Sink for RawStreamWriter {
    fn write_job(&mut self, job: JobOut) -> Result<(), PipelineError> {
        if !job.is_zero_job() {
            // Zero units inside a data job are zeros in its buffer already.
            let r = self.out.write_all(&job.data[..job.len as usize]);
            r.map_err(|e| self.werr(e))?;
            self.bytes_written += job.len;
            return Ok(());
        }
        if self.zeros.is_empty() {
            self.zeros = vec![0u8; ZERO_CHUNK];
        }
        let mut left = job.len;
        while left > 0 {
            let n = left.min(ZERO_CHUNK as u64) as usize;
            let r = self.out.write_all(&self.zeros[..n]);
            r.map_err(|e| self.werr(e))?;
            left -= n as u64;
        }
        self.bytes_written += job.len;
        Ok(())
    }
}
