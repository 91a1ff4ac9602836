//! `.zst` artifacts in the zstd seekable format: one independent zstd frame
//! per guest chunk (with content size and checksum), then a seek table in a
//! skippable frame. Plain `zstd -d` decompresses the whole file; vmfinal reads
//! it back frame by frame, in parallel.
//!
//! Seek table (all little-endian): skippable magic 0x184D2A5E, u32 size, then
//! per frame {u32 compressed, u32 decompressed} (+ u32 checksum when the
//! descriptor's bit 7 is set), then the footer {u32 frames, u8 descriptor,
//! u32 0x8F92EAB1}.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::bytes::le32;
use crate::extent::{self, Extent};
use crate::image::{BlockSource, ImageError, ImageFormat, Result, io_err};
use crate::pipeline::{JobOut, PipelineError, Sink, UnitEncoder, UnitOut};

const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
const FOOTER_LEN: u64 = 9;
const SKIPPABLE_HEADER_LEN: u64 = 8;
const DESCRIPTOR_CHECKSUM: u8 = 0x80;
const DESCRIPTOR_RESERVED: u8 = 0x7C;
/// Frames whose compressed size is at most this are checked for all-zero
/// content when listing data extents (zero frames are a few hundred bytes).
const SMALL_FRAME: u32 = 4096;
const WRITE_BUFFER: usize = 8 << 20;

/// The first four bytes of a zstd frame (0xFD2FB528, little-endian) or of a
/// skippable frame (0x184D2A50..=0x184D2A5F; an empty disk's `.zst` is only
/// its seek table).
pub fn is_zstd_magic(m: &[u8; 4]) -> bool {
    *m == [0x28, 0xB5, 0x2F, 0xFD] || (m[0] & 0xF0 == 0x50 && m[1..] == [0x2A, 0x4D, 0x18])
}

/// One entry of the seek table, with its position resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    file_off: u64,
    csize: u32,
    guest_off: u64,
    dsize: u32,
}

/// Encodes the seek table frame for `(compressed, decompressed)` sizes.
pub fn encode_seek_table(frames: &[(u32, u32)]) -> Vec<u8> {
    let body = frames.len() as u64 * 8 + FOOTER_LEN;
    let mut t = Vec::with_capacity((SKIPPABLE_HEADER_LEN + body) as usize);
    t.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    t.extend_from_slice(&(body as u32).to_le_bytes());
    for (c, d) in frames {
        t.extend_from_slice(&c.to_le_bytes());
        t.extend_from_slice(&d.to_le_bytes());
    }
    t.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    t.push(0);
    t.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
    t
}

/// Parses the seek table at the end of a file of `file_len` bytes. `read`
/// reads exactly `len` bytes at an offset. Errors are one-line reasons.
fn parse_seek_table(
    file_len: u64,
    read: &dyn Fn(u64, usize) -> std::io::Result<Vec<u8>>,
) -> std::result::Result<Vec<Frame>, String> {
    if file_len < SKIPPABLE_HEADER_LEN + FOOTER_LEN {
        return Err("no seek table: the file is too short".into());
    }
    let footer = read(file_len - FOOTER_LEN, FOOTER_LEN as usize).map_err(|e| e.to_string())?;
    if le32(&footer, 5) != SEEKABLE_MAGIC {
        return Err("no seek table".into());
    }
    let n = le32(&footer, 0) as u64;
    let desc = footer[4];
    if desc & DESCRIPTOR_RESERVED != 0 {
        return Err("seek table descriptor has reserved bits set".into());
    }
    let entry = if desc & DESCRIPTOR_CHECKSUM != 0 {
        12
    } else {
        8
    };
    let body = n
        .checked_mul(entry)
        .and_then(|x| x.checked_add(FOOTER_LEN))
        .filter(|&b| b + SKIPPABLE_HEADER_LEN <= file_len)
        .ok_or("seek table is larger than the file")?;
    let table_start = file_len - body - SKIPPABLE_HEADER_LEN;
    let head = read(table_start, SKIPPABLE_HEADER_LEN as usize).map_err(|e| e.to_string())?;
    if le32(&head, 0) != SKIPPABLE_MAGIC || le32(&head, 4) as u64 != body {
        return Err("seek table frame header does not match its footer".into());
    }
    let raw = read(
        table_start + SKIPPABLE_HEADER_LEN,
        (body - FOOTER_LEN) as usize,
    )
    .map_err(|e| e.to_string())?;
    let mut frames = Vec::with_capacity(n as usize);
    let (mut file_off, mut guest_off) = (0u64, 0u64);
    for i in 0..n as usize {
        let at = i * entry as usize;
        let (csize, dsize) = (le32(&raw, at), le32(&raw, at + 4));
        frames.push(Frame {
            file_off,
            csize,
            guest_off,
            dsize,
        });
        file_off += csize as u64;
        guest_off += dsize as u64;
    }
    if file_off != table_start {
        return Err(format!(
            "seek table lists {file_off} compressed bytes but the frames occupy {table_start}"
        ));
    }
    Ok(frames)
}

/// A seekable `.zst` file as a guest disk.
pub struct ZstImage {
    file: File,
    path: PathBuf,
    frames: Vec<Frame>,
    size: u64,
}

impl ZstImage {
    pub fn open(file: File, path: &Path) -> Result<Self> {
        let len = file.metadata().map_err(|e| io_err(path, e))?.len();
        let read = |off: u64, n: usize| -> std::io::Result<Vec<u8>> {
            let mut b = vec![0u8; n];
            file.read_exact_at(&mut b, off)?;
            Ok(b)
        };
        let frames = parse_seek_table(len, &read).map_err(|what| {
            if what.starts_with("no seek table") {
                ImageError::Unsupported {
                    path: path.to_owned(),
                    what: format!(
                        "{what}: not a seekable .zst (as vmfinal writes them); decompress it with zstd -d first"
                    ),
                }
            } else {
                ImageError::Corrupt { path: path.to_owned(), what }
            }
        })?;
        let size = frames
            .last()
            .map(|f| f.guest_off + f.dsize as u64)
            .unwrap_or(0);
        Ok(Self {
            file,
            path: path.to_owned(),
            frames,
            size,
        })
    }

    fn corrupt(&self, what: String) -> ImageError {
        ImageError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    /// Decompresses frame `i`, checking its size (and checksum, if the frame has one).
    fn frame_bytes(&self, i: usize) -> Result<Vec<u8>> {
        let f = self.frames[i];
        let mut c = vec![0u8; f.csize as usize];
        self.file
            .read_exact_at(&mut c, f.file_off)
            .map_err(|e| io_err(&self.path, e))?;
        let d = zstd::bulk::decompress(&c, f.dsize as usize)
            .map_err(|e| self.corrupt(format!("frame {i} at offset {}: {e}", f.file_off)))?;
        if d.len() != f.dsize as usize {
            return Err(self.corrupt(format!(
                "frame {i} decompresses to {} bytes, the seek table says {}",
                d.len(),
                f.dsize
            )));
        }
        Ok(d)
    }

    fn frame_index(&self, guest: u64) -> usize {
        self.frames
            .partition_point(|f| f.guest_off + f.dsize as u64 <= guest)
    }

    /// Number of frames (for reports).
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }
}

impl BlockSource for ZstImage {
    fn format(&self) -> ImageFormat {
        ImageFormat::Zst
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn data_extents(&self) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        for (i, f) in self.frames.iter().enumerate() {
            if f.dsize == 0 {
                continue;
            }
            if f.csize <= SMALL_FRAME && crate::pipeline::is_zero(&self.frame_bytes(i)?) {
                continue;
            }
            out.push(Extent::new(f.guest_off, f.dsize as u64));
        }
        Ok(extent::normalize(out))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        let mut i = self.frame_index(offset);
        while done < buf.len() {
            let pos = offset + done as u64;
            let f = *self
                .frames
                .get(i)
                .ok_or_else(|| self.corrupt(format!("read past the end at {pos}")))?;
            let d = self.frame_bytes(i)?;
            let start = (pos - f.guest_off) as usize;
            let n = (d.len() - start).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&d[start..start + n]);
            done += n;
            i += 1;
        }
        Ok(())
    }
    fn host_allocated_bytes(&self) -> u64 {
        self.file
            .metadata()
            .map(|m| super::allocated_bytes(&m))
            .unwrap_or(0)
    }
    fn preferred_read_size(&self) -> Option<u64> {
        self.frames
            .first()
            .map(|f| f.dsize as u64)
            .filter(|&s| s > 0)
    }
    fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "frames": self.frames.len(),
            "frame_size": self.frames.first().map(|f| f.dsize).unwrap_or(0),
            "compressed_bytes": self.frames.iter().map(|f| f.csize as u64).sum::<u64>(),
        })
    }
}

/// `vmfinal check` for `.zst`: the seek table, then every frame decompressed
/// and its size and checksum verified. Ok is a one-line summary.
pub fn verify(path: &Path) -> std::result::Result<String, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let img = ZstImage::open(file, path).map_err(|e| e.to_string())?;
    for i in 0..img.frames.len() {
        img.frame_bytes(i).map_err(|e| e.to_string())?;
    }
    Ok(format!(
        "{} frames, {} bytes of guest data, seek table and checksums verified",
        img.frames.len(),
        img.size
    ))
}

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
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> std::result::Result<Vec<Frame>, String> {
        let read = |off: u64, n: usize| -> std::io::Result<Vec<u8>> {
            bytes
                .get(off as usize..off as usize + n)
                .map(|s| s.to_vec())
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
        };
        parse_seek_table(bytes.len() as u64, &read)
    }

    #[test]
    fn seek_table_round_trip() {
        let mut file = vec![0xAAu8; 30];
        file.extend(encode_seek_table(&[(10, 100), (20, 50)]));
        let f = parse(&file).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[1],
            Frame {
                file_off: 10,
                csize: 20,
                guest_off: 100,
                dsize: 50
            }
        );
        assert_eq!(parse(&encode_seek_table(&[])).unwrap(), vec![]);
    }

    #[test]
    fn corrupt_seek_tables_are_errors_not_panics() {
        let mut good = vec![0u8; 30];
        good.extend(encode_seek_table(&[(10, 100), (20, 50)]));
        assert!(parse(&good[..good.len() - 1]).is_err());
        assert!(parse(&good[5..]).is_err());
        assert!(parse(&[]).is_err());
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut b = good.clone();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % b.len() as u64) as usize;
            b[i] ^= (x >> 32) as u8 | 1;
            let _ = parse(&b);
        }
        let mut huge = good.clone();
        let n = huge.len();
        huge[n - 9..n - 5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge).is_err());
    }
}
