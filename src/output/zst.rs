//! Writing `.zst` artifacts in the zstd seekable format (the layout, its
//! limits and the reader: `image::zst`): frames in guest order, then the
//! seek table, strictly in order, so a file and a stream on stdout get the
//! same bytes. The frames are compressed by the pipeline's workers
//! (`frame_encoder`); the writer only places them.
//!
//! Hand-written rather than a seekable-zstd crate: see `image::zst`.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::image::zst::encode_seek_table;
use crate::pipeline::{JobOut, PipelineError, Sink, UnitEncoder, UnitOut};

const WRITE_BUFFER: usize = 8 << 20;

/// Writes frames in guest order and the seek table at the end, strictly in
/// order (so the same writer serves a file and a stream on stdout).
pub struct ZstWriter {
    out: Box<dyn std::io::Write>,
    path: PathBuf,
    frame_size: u64,
    level: i32,
    buf: Vec<u8>,
    pos: u64,
    frames: Vec<(u32, u32)>,
    /// Compressed all-zero frames by length: each is compressed once.
    zero_frames: HashMap<u64, Vec<u8>>,
    /// The output file (not a stream), for early writeback.
    file: Option<std::fs::File>,
}

impl ZstWriter {
    pub fn new(
        out: Box<dyn std::io::Write>,
        path: PathBuf,
        _virtual_size: u64,
        frame_size: u64,
        level: i32,
    ) -> Result<Self, PipelineError> {
        Ok(Self {
            out,
            path,
            frame_size,
            level,
            buf: Vec::with_capacity(WRITE_BUFFER * 2),
            pos: 0,
            frames: Vec::new(),
            zero_frames: HashMap::new(),
            file: None,
        })
    }

    /// The output as a file: what is written is sent to disk as it goes.
    pub fn set_writeback(&mut self, file: std::fs::File) {
        self.file = Some(file);
    }

    fn werr(&self, source: std::io::Error) -> PipelineError {
        PipelineError::Write {
            path: self.path.clone(),
            source,
        }
    }

    fn push_frame(&mut self, frame: &[u8], dsize: u64) -> Result<(), PipelineError> {
        self.buf.extend_from_slice(frame);
        self.frames.push((frame.len() as u32, dsize as u32));
        if self.buf.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn push_zero_frame(&mut self, len: u64) -> Result<(), PipelineError> {
        if !self.zero_frames.contains_key(&len) {
            let mut enc = frame_encoder(self.level).map_err(PipelineError::Encode)?;
            let frame = enc
                .encode(&vec![0u8; len as usize])
                .map_err(PipelineError::Encode)?
                .unwrap_or_default();
            self.zero_frames.insert(len, frame);
        }
        let frame = std::mem::take(self.zero_frames.get_mut(&len).expect("inserted above"));
        let r = self.push_frame(&frame, len);
        self.zero_frames.insert(len, frame);
        r
    }

    fn flush(&mut self) -> Result<(), PipelineError> {
        if !self.buf.is_empty() {
            let r = self.out.write_all(&self.buf);
            r.map_err(|e| self.werr(e))?;
            if let Some(f) = &self.file {
                crate::output::start_writeback(f, self.pos, self.buf.len() as u64);
            }
            self.pos += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes the seek table; returns the file's final length.
    pub fn finish(mut self) -> Result<u64, PipelineError> {
        let table = encode_seek_table(&self.frames);
        self.buf.extend_from_slice(&table);
        self.flush()?;
        let r = self.out.flush();
        r.map_err(|e| self.werr(e))?;
        Ok(self.pos)
    }
}

impl Sink for ZstWriter {
    fn write_job(&mut self, job: JobOut) -> Result<(), PipelineError> {
        let fs = self.frame_size;
        if job.is_zero_job() {
            let mut left = job.len;
            while left > 0 {
                let n = left.min(fs);
                self.push_zero_frame(n)?;
                left -= n;
            }
            return Ok(());
        }
        for (i, unit) in job.units.iter().enumerate() {
            let len = job.unit_bytes(i, fs).len() as u64;
            match unit {
                UnitOut::Zero => self.push_zero_frame(len)?,
                UnitOut::Compressed(frame) => self.push_frame(frame, len)?,
                UnitOut::Plain => {
                    // The frame encoder always returns a frame; be safe anyway.
                    let data = job.unit_bytes(i, fs).to_vec();
                    let mut enc = frame_encoder(self.level).map_err(PipelineError::Encode)?;
                    let frame = enc
                        .encode(&data)
                        .map_err(PipelineError::Encode)?
                        .unwrap_or_default();
                    self.push_frame(&frame, len)?;
                }
            }
        }
        Ok(())
    }
}

struct FrameEncoder {
    c: zstd::bulk::Compressor<'static>,
}

impl UnitEncoder for FrameEncoder {
    fn encode(&mut self, unit: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(unit.len()));
        self.c.compress_to_buffer(unit, &mut out)?;
        Ok(Some(out))
    }
}

/// One frame encoder: a zstd frame with content size and checksum, so that
/// `zstd -t` verifies every frame.
pub fn frame_encoder(level: i32) -> std::io::Result<Box<dyn UnitEncoder>> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.include_checksum(true)?;
    c.include_contentsize(true)?;
    Ok(Box::new(FrameEncoder { c }))
}
