//! Reading `.zst` artifacts in the zstd seekable format: one independent zstd frame
//! per guest chunk (with content size and checksum), then a seek table in a
//! skippable frame. Plain `zstd -d` decompresses the whole file; vmfinal reads
//! it back frame by frame, in parallel, and produces exactly the bytes
//! `zstd -d` does or refuses the file.
//!
//! Seek table (all little-endian): skippable magic 0x184D2A5E, u32 size, then
//! per frame {u32 compressed, u32 decompressed} (+ u32 checksum, the low 32
//! bits of the XXH64 of the frame's content, when the descriptor's bit 7 is
//! set), then the footer {u32 frames, u8 descriptor, u32 0x8F92EAB1}.
//!
//! Limits, checked before anything is allocated: a frame holds at most
//! `MAX_FRAME_BYTES` (so vmfinal's own files are always readable within a
//! bounded amount of memory), a file at most `MAX_FRAMES` frames.
//!
//! Hand-written rather than a seekable-zstd crate: the frames are
//! compressed by the pipeline's workers and handed over in order, and the
//! reader must refuse a seek table against these limits before it allocates
//! anything, then read frames in parallel through any `BlockSource`. The
//! format itself is the few lines of layout above; the compression is the
//! `zstd` crate.
//!
//! The writer is `output::zst`; the layout both use is here
//! (`encode_seek_table` beside `parse_seek_table`, the limits).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::bytes::le32;
use crate::extent::{self, Extent};
use crate::image::host::{HostFile, OsFile};
use crate::image::{BlockSource, ImageError, ImageFormat, MAX_VIRTUAL_SIZE, Result, io_err};

const FRAME_MAGIC: u32 = 0xFD2F_B528;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE_BASE: u32 = 0x184D_2A50;
const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
const FOOTER_LEN: u64 = 9;
const SKIPPABLE_HEADER_LEN: u64 = 8;
const DESCRIPTOR_CHECKSUM: u8 = 0x80;
const DESCRIPTOR_RESERVED: u8 = 0x7C;
/// Frames whose compressed size is at most this are checked for all-zero
/// content when listing data extents (zero frames are a few hundred bytes).
const SMALL_FRAME: u32 = 4096;
/// Largest frame (decompressed) vmfinal writes or reads.
pub const MAX_FRAME_BYTES: u64 = 64 << 20;
/// Largest compressed frame vmfinal reads: zstd's bound for a maximal frame.
const MAX_FRAME_COMPRESSED: u64 = MAX_FRAME_BYTES + (MAX_FRAME_BYTES >> 8) + (1 << 20);
/// Most frames in one file (a seek table of 128 MiB at most).
pub const MAX_FRAMES: u64 = 1 << 24;

/// The first four bytes of a zstd frame (0xFD2FB528, little-endian) or of a
/// skippable frame (0x184D2A50..=0x184D2A5F; an empty disk's `.zst` is only
/// its seek table).
pub fn is_zstd_magic(m: &[u8; 4]) -> bool {
    let v = u32::from_le_bytes(*m);
    v == FRAME_MAGIC || v & SKIPPABLE_MASK == SKIPPABLE_BASE
}

/// Why a seek table cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeekTableError {
    #[error("no seek table: the file is too short")]
    TooShort,
    #[error("no seek table at the end of the file")]
    Missing,
    #[error("seek table descriptor has reserved bits set")]
    ReservedBits,
    #[error("seek table is larger than the file")]
    TooLarge,
    #[error("seek table frame header does not match its footer")]
    HeaderMismatch,
    #[error("seek table lists {listed} compressed bytes but the frames occupy {actual}")]
    Coverage { listed: u64, actual: u64 },
    #[error("frame {0} holds {1} bytes, above the limit of {MAX_FRAME_BYTES}")]
    FrameTooLarge(usize, u64),
    #[error("frame {0} has {1} compressed bytes, above the limit of {MAX_FRAME_COMPRESSED}")]
    CompressedTooLarge(usize, u64),
    #[error("{0} frames exceed the limit of {MAX_FRAMES}")]
    TooManyFrames(u64),
    #[error("{0}")]
    Io(String),
}

impl SeekTableError {
    /// No table at all (as opposed to a damaged one).
    pub fn is_missing(&self) -> bool {
        matches!(self, SeekTableError::TooShort | SeekTableError::Missing)
    }
}

/// One entry of the seek table, with its position resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    file_off: u64,
    csize: u32,
    guest_off: u64,
    dsize: u32,
    checksum: Option<u32>,
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
/// reads exactly `len` bytes at an offset.
fn parse_seek_table(
    file_len: u64,
    read: &dyn Fn(u64, usize) -> std::io::Result<Vec<u8>>,
) -> std::result::Result<Vec<Frame>, SeekTableError> {
    let io = |e: std::io::Error| SeekTableError::Io(e.to_string());
    if file_len < SKIPPABLE_HEADER_LEN + FOOTER_LEN {
        return Err(SeekTableError::TooShort);
    }
    let footer = read(file_len - FOOTER_LEN, FOOTER_LEN as usize).map_err(io)?;
    if le32(&footer, 5) != SEEKABLE_MAGIC {
        return Err(SeekTableError::Missing);
    }
    let n = le32(&footer, 0) as u64;
    let desc = footer[4];
    if desc & DESCRIPTOR_RESERVED != 0 {
        return Err(SeekTableError::ReservedBits);
    }
    if n > MAX_FRAMES {
        return Err(SeekTableError::TooManyFrames(n));
    }
    let with_sum = desc & DESCRIPTOR_CHECKSUM != 0;
    let entry = if with_sum { 12 } else { 8 };
    let body = n
        .checked_mul(entry)
        .and_then(|x| x.checked_add(FOOTER_LEN))
        .filter(|&b| b + SKIPPABLE_HEADER_LEN <= file_len)
        .ok_or(SeekTableError::TooLarge)?;
    let table_start = file_len - body - SKIPPABLE_HEADER_LEN;
    let head = read(table_start, SKIPPABLE_HEADER_LEN as usize).map_err(io)?;
    if le32(&head, 0) != SKIPPABLE_MAGIC || le32(&head, 4) as u64 != body {
        return Err(SeekTableError::HeaderMismatch);
    }
    let raw = read(
        table_start + SKIPPABLE_HEADER_LEN,
        (body - FOOTER_LEN) as usize,
    )
    .map_err(io)?;
    let mut frames = Vec::with_capacity(n as usize);
    let (mut file_off, mut guest_off) = (0u64, 0u64);
    for i in 0..n as usize {
        let at = i * entry as usize;
        let (csize, dsize) = (le32(&raw, at), le32(&raw, at + 4));
        if dsize as u64 > MAX_FRAME_BYTES {
            return Err(SeekTableError::FrameTooLarge(i, dsize as u64));
        }
        if csize as u64 > MAX_FRAME_COMPRESSED {
            return Err(SeekTableError::CompressedTooLarge(i, csize as u64));
        }
        frames.push(Frame {
            file_off,
            csize,
            guest_off,
            dsize,
            checksum: with_sum.then(|| le32(&raw, at + 8)),
        });
        file_off += csize as u64;
        guest_off += dsize as u64;
    }
    if file_off != table_start {
        return Err(SeekTableError::Coverage {
            listed: file_off,
            actual: table_start,
        });
    }
    Ok(frames)
}

/// How a run of zstd frames from the start of a file ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameWalk {
    /// Whole frames up to the end of the file.
    Complete { frames: u64 },
    /// The file ends inside a frame that starts at this offset.
    Truncated { frame_at: u64 },
    /// Bytes at this offset are not a zstd or skippable frame.
    Garbage { at: u64 },
}

/// Walks zstd and skippable frames by their headers and block headers (no
/// decompression), from offset 0 to `end`.
pub fn walk_frames(host: &dyn HostFile, end: u64) -> std::io::Result<FrameWalk> {
    let get = |off: u64, n: usize| -> std::io::Result<Option<Vec<u8>>> {
        if off.checked_add(n as u64).is_none_or(|e| e > end) {
            return Ok(None);
        }
        let mut b = vec![0u8; n];
        host.read_exact_at(&mut b, off)?;
        Ok(Some(b))
    };
    let mut pos = 0u64;
    let mut frames = 0u64;
    while pos < end {
        let start = pos;
        let truncated = Ok(FrameWalk::Truncated { frame_at: start });
        let Some(m) = get(pos, 4)? else {
            return truncated;
        };
        let magic = le32(&m, 0);
        if magic & SKIPPABLE_MASK == SKIPPABLE_BASE {
            let Some(l) = get(pos + 4, 4)? else {
                return truncated;
            };
            pos = pos + 8 + le32(&l, 0) as u64;
            if pos > end {
                return truncated;
            }
            frames += 1;
            continue;
        }
        if magic != FRAME_MAGIC {
            return Ok(FrameWalk::Garbage { at: pos });
        }
        let Some(fhd) = get(pos + 4, 1)? else {
            return truncated;
        };
        let fhd = fhd[0];
        let single = fhd & 0x20 != 0;
        let fcs_len = match fhd >> 6 {
            0 => u64::from(single),
            1 => 2,
            2 => 4,
            _ => 8,
        };
        let did_len = [0u64, 1, 2, 4][(fhd & 3) as usize];
        pos += 5 + u64::from(!single) + did_len + fcs_len;
        loop {
            let Some(bh) = get(pos, 3)? else {
                return truncated;
            };
            let v = bh[0] as u32 | (bh[1] as u32) << 8 | (bh[2] as u32) << 16;
            let last = v & 1 != 0;
            let size = (v >> 3) as u64;
            pos += 3 + match (v >> 1) & 3 {
                1 => 1,
                3 => return Ok(FrameWalk::Garbage { at: pos }),
                _ => size,
            };
            if pos > end {
                return truncated;
            }
            if last {
                break;
            }
        }
        if fhd & 0x04 != 0 {
            pos += 4;
        }
        if pos > end {
            return truncated;
        }
        frames += 1;
    }
    Ok(FrameWalk::Complete { frames })
}

/// A seekable `.zst` file as a guest disk.
pub struct ZstImage {
    host: Box<dyn HostFile>,
    path: PathBuf,
    frames: Vec<Frame>,
    size: u64,
}

impl ZstImage {
    pub fn open(file: File, path: &Path) -> Result<Self> {
        let host = OsFile::new(file).map_err(|e| io_err(path, e))?;
        Self::open_host(Box::new(host), path)
    }

    pub fn open_host(host: Box<dyn HostFile>, path: &Path) -> Result<Self> {
        let len = host.len();
        let read = |off: u64, n: usize| -> std::io::Result<Vec<u8>> {
            let mut b = vec![0u8; n];
            host.read_exact_at(&mut b, off)?;
            Ok(b)
        };
        let frames = match parse_seek_table(len, &read) {
            Ok(f) => f,
            Err(e) if e.is_missing() => return Err(no_table(host.as_ref(), path, len, &e)),
            Err(e) => {
                return Err(ImageError::Corrupt {
                    path: path.to_owned(),
                    what: e.to_string(),
                });
            }
        };
        let size = frames
            .last()
            .map(|f| f.guest_off + f.dsize as u64)
            .unwrap_or(0);
        if size > MAX_VIRTUAL_SIZE {
            return Err(ImageError::Unsupported {
                path: path.to_owned(),
                what: format!(
                    "virtual size {size} exceeds vmfinal's limit of {MAX_VIRTUAL_SIZE} bytes"
                ),
            });
        }
        Ok(Self {
            host,
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

    /// Decompresses frame `i` into a buffer of its table size, checking that
    /// the bytes are whole frames that give exactly that many bytes (and the
    /// table's checksum, if it has them).
    fn frame_bytes(&self, i: usize) -> Result<Vec<u8>> {
        let f = self.frames[i];
        let mut c = vec![0u8; f.csize as usize];
        self.host
            .read_exact_at(&mut c, f.file_off)
            .map_err(|e| io_err(&self.path, e))?;
        let d = zstd::bulk::decompress(&c, f.dsize as usize).map_err(|e| {
            self.corrupt(format!(
                "frame {i} at offset {} does not decompress to the {} bytes the seek table says: {e}",
                f.file_off, f.dsize
            ))
        })?;
        if d.len() != f.dsize as usize {
            return Err(self.corrupt(format!(
                "frame {i} decompresses to {} bytes, the seek table says {}",
                d.len(),
                f.dsize
            )));
        }
        if let Some(sum) = f.checksum
            && super::xxh64::xxh64(&d, 0) as u32 != sum
        {
            return Err(self.corrupt(format!(
                "frame {i}: content does not match the seek table's checksum"
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

    /// Frames whose header carries a content checksum.
    fn frames_with_checksum(&self) -> usize {
        self.frames
            .iter()
            .filter(|f| {
                let mut h = [0u8; 5];
                f.csize >= 5
                    && self.host.read_exact_at(&mut h, f.file_off).is_ok()
                    && le32(&h, 0) == FRAME_MAGIC
                    && h[4] & 0x04 != 0
            })
            .count()
    }
}

/// The error for a file without a seek table, with a hint from its frames.
fn no_table(host: &dyn HostFile, path: &Path, len: u64, e: &SeekTableError) -> ImageError {
    match walk_frames(host, len) {
        Ok(FrameWalk::Truncated { frame_at }) => ImageError::Truncated {
            path: path.to_owned(),
            what: format!(
                "{e}, and the file ends inside the zstd frame at offset {frame_at}: it was cut short (an interrupted copy or a full disk?); copy it again, or recover the whole frames with zstd -d"
            ),
        },
        Ok(FrameWalk::Complete { .. }) if len > 0 => ImageError::Unsupported {
            path: path.to_owned(),
            what: format!(
                "{e}: a plain .zst, not a seekable one; decompress it with zstd -d first (or write it with vmfinal compact -O zst)"
            ),
        },
        _ => ImageError::Corrupt {
            path: path.to_owned(),
            what: format!("{e}: not a seekable .zst"),
        },
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
        let mut out: Vec<Extent> = Vec::new();
        // vmfinal writes every zero frame of a size with the same bytes:
        // known zero frames are recognised without decompressing again.
        let mut zero_frames: HashMap<Vec<u8>, u32> = HashMap::new();
        for (i, f) in self.frames.iter().enumerate() {
            if f.dsize == 0 {
                if f.csize > 0 {
                    // zstd -d would output whatever this frame holds.
                    self.frame_bytes(i)?;
                }
                continue;
            }
            if f.csize <= SMALL_FRAME {
                let mut c = vec![0u8; f.csize as usize];
                self.host
                    .read_exact_at(&mut c, f.file_off)
                    .map_err(|e| io_err(&self.path, e))?;
                if zero_frames.get(&c) == Some(&f.dsize) {
                    continue;
                }
                if crate::bytes::is_zero(&self.frame_bytes(i)?) {
                    if zero_frames.len() < 64 {
                        zero_frames.insert(c, f.dsize);
                    }
                    continue;
                }
            }
            let e = Extent::new(f.guest_off, f.dsize as u64);
            match out.last_mut() {
                Some(last) if last.end() == e.start => last.len += e.len,
                _ => out.push(e),
            }
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
            if f.dsize == 0 {
                i += 1;
                continue;
            }
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
        self.host.allocated_bytes()
    }
    fn preferred_read_size(&self) -> Option<u64> {
        self.frames
            .iter()
            .map(|f| f.dsize as u64)
            .max()
            .filter(|&s| s > 0)
    }
    fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "frames": self.frames.len(),
            "frame_size": self.frames.first().map(|f| f.dsize).unwrap_or(0),
            "compressed_bytes": self.frames.iter().map(|f| f.csize as u64).sum::<u64>(),
            "seek_table_checksums": self.frames.first().is_some_and(|f| f.checksum.is_some()),
        })
    }
}

/// `vmfinal check` for `.zst`: the seek table, then every frame decompressed
/// and its size verified, with whatever checksums the file carries. Ok is a
/// one-line summary.
pub fn verify(img: &ZstImage) -> Result<String> {
    for i in 0..img.frames.len() {
        img.frame_bytes(i)?;
    }
    let n = img.frames.len();
    let with = img.frames_with_checksum();
    let table = if img.frames.first().is_some_and(|f| f.checksum.is_some()) {
        "the seek table's checksums verified"
    } else {
        "the seek table carries no checksums"
    };
    let frames = match with {
        0 => "no frame carries a content checksum (sizes checked only)".to_string(),
        w if w == n => "every frame's content checksum verified".to_string(),
        w => format!("{w} of {n} frames carry a content checksum (verified)"),
    };
    Ok(format!(
        "{n} frames, {} bytes of guest data: seek table and frame sizes verified, {frames}, {table}",
        img.size
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> std::result::Result<Vec<Frame>, SeekTableError> {
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
                dsize: 50,
                checksum: None,
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
