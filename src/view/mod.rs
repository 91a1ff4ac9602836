//! A copy-on-write view of an input image: reads come from the input
//! (raw, qcow2 or `.zst`, through vmfinal's own readers in `image`),
//! writes go to a sparse overlay file, with an in-memory bitmap of the
//! 4 KiB blocks the overlay holds. `finalize` serves the view as one file
//! through FUSE (`fuse`) for a loop device to mount the guest from, then
//! compacts the merged view in-process (it is a `BlockSource`). Nothing is
//! copied but what cleaning writes; the input is opened read-only.

pub mod fuse;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::extent::{self, Extent};
use crate::image::{BlockSource, ImageError, ImageFormat, Result, io_err};

/// Overlay granularity: a guest filesystem writes whole 4 KiB blocks.
pub const BLOCK: u64 = 4096;
/// Base reads smaller than this go through the chunk cache when the input
/// prefers large reads (a `.zst` frame is decoded whole).
const CACHE_CHUNKS: usize = 4;

/// Decoded input chunks kept for small reads (the loop device reads 4 KiB
/// to 1 MiB at a time; a `.zst` frame is 8 MiB).
struct ChunkCache {
    chunk: u64,
    entries: Mutex<Vec<(u64, Arc<Vec<u8>>)>>,
}

pub struct CowView {
    base: Box<dyn BlockSource>,
    overlay: File,
    overlay_path: PathBuf,
    size: u64,
    /// One bit per BLOCK: set when the overlay holds the block.
    bits: Vec<AtomicU64>,
    /// Writers hold it: read-modify-write of partial blocks and the bits.
    wlock: Mutex<()>,
    cache: Option<ChunkCache>,
    /// The first error the view met while serving writes (the guest only
    /// sees EIO; finalize must not compact a guest whose writes were lost).
    first_error: Mutex<Option<String>>,
}

impl CowView {
    /// A view of `base` whose writes go to a new sparse file in `dir`
    /// (unlinked at once: nothing is left behind, even after a SIGKILL).
    pub fn new(base: Box<dyn BlockSource>, dir: &Path, stem: &str) -> Result<Self> {
        let size = base.virtual_size();
        let overlay_path = dir.join(format!(".vmfinal-ov-{}-{stem}.overlay", std::process::id()));
        let overlay = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&overlay_path)
            .map_err(|e| io_err(&overlay_path, e))?;
        let _ = std::fs::remove_file(&overlay_path);
        overlay
            .set_len(size)
            .map_err(|e| io_err(&overlay_path, e))?;
        let words = size.div_ceil(BLOCK).div_ceil(64) as usize;
        let mut bits = Vec::new();
        bits.resize_with(words, || AtomicU64::new(0));
        let cache = base
            .preferred_read_size()
            .filter(|&p| p >= 256 << 10)
            .map(|chunk| ChunkCache {
                chunk,
                entries: Mutex::new(Vec::new()),
            });
        Ok(Self {
            base,
            overlay,
            overlay_path,
            size,
            bits,
            wlock: Mutex::new(()),
            cache,
            first_error: Mutex::new(None),
        })
    }

    /// Where the overlay was created (it is unlinked).
    pub fn overlay_dir(&self) -> &Path {
        self.overlay_path.parent().unwrap_or(Path::new("."))
    }

    /// Bytes the overlay occupies on the host now.
    pub fn overlay_allocated(&self) -> u64 {
        self.overlay
            .metadata()
            .map(|m| crate::image::allocated_bytes(&m))
            .unwrap_or(0)
    }

    /// Blocks the overlay holds, in bytes.
    pub fn overlay_blocks_bytes(&self) -> u64 {
        self.bits
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
            .sum::<u64>()
            * BLOCK
    }

    /// The first write error met while serving the guest, if any.
    pub fn error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }

    pub(crate) fn record_error(&self, e: &str) {
        if let Ok(mut g) = self.first_error.lock() {
            if g.is_none() {
                *g = Some(e.to_string());
            }
        }
    }

    fn has(&self, block: u64) -> bool {
        let w = (block / 64) as usize;
        self.bits
            .get(w)
            .is_some_and(|x| x.load(Ordering::Acquire) & (1 << (block % 64)) != 0)
    }

    fn set(&self, first: u64, end: u64) {
        for b in first..end {
            if let Some(x) = self.bits.get((b / 64) as usize) {
                x.fetch_or(1 << (b % 64), Ordering::Release);
            }
        }
    }

    fn ov_err(&self, e: std::io::Error) -> ImageError {
        io_err(&self.overlay_path, e)
    }

    /// Reads `buf.len()` bytes of the input at `off`, small reads of a
    /// frame-based input through the cache.
    fn read_base(&self, buf: &mut [u8], off: u64) -> Result<()> {
        let Some(c) = &self.cache else {
            return self.base.read_at(buf, off);
        };
        if buf.len() as u64 >= c.chunk {
            return self.base.read_at(buf, off);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let start = pos - pos % c.chunk;
            let data = self.chunk(c, start)?;
            let at = (pos - start) as usize;
            let n = (data.len() - at).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[at..at + n]);
            done += n;
        }
        Ok(())
    }

    fn chunk(&self, c: &ChunkCache, start: u64) -> Result<Arc<Vec<u8>>> {
        if let Ok(mut e) = c.entries.lock() {
            if let Some(i) = e.iter().position(|(s, _)| *s == start) {
                let hit = e.remove(i);
                let d = hit.1.clone();
                e.push(hit);
                return Ok(d);
            }
        }
        let len = c.chunk.min(self.size - start) as usize;
        let mut d = vec![0u8; len];
        self.base.read_at(&mut d, start)?;
        let d = Arc::new(d);
        if let Ok(mut e) = c.entries.lock() {
            if e.len() >= CACHE_CHUNKS {
                e.remove(0);
            }
            e.push((start, d.clone()));
        }
        Ok(d)
    }

    /// Writes `data` at guest offset `off` into the overlay.
    pub fn write_at(&self, data: &[u8], off: u64) -> Result<()> {
        let end = off
            .checked_add(data.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| self.ov_err(std::io::Error::from_raw_os_error(libc::ENOSPC)))?;
        if data.is_empty() {
            return Ok(());
        }
        let _g = self.wlock.lock().unwrap_or_else(|p| p.into_inner());
        let a = off - off % BLOCK;
        let b = end
            .next_multiple_of(BLOCK)
            .min(self.size.next_multiple_of(BLOCK));
        if a == off && b == end && crate::pipeline::is_zero(data) {
            // Zeros (a zero-fill reclaim): a hole, not disk space.
            drop(_g);
            return self.punch(off, end - off);
        }
        if a == off && (b == end || end == self.size) {
            self.overlay
                .write_all_at(data, off)
                .map_err(|e| self.ov_err(e))?;
        } else {
            // Partial blocks: the rest of each comes from where it lives now.
            let mut buf = vec![0u8; (b - a) as usize];
            let first = a / BLOCK;
            let last = (b - BLOCK) / BLOCK;
            for blk in [first, last] {
                let s = blk * BLOCK;
                let n = BLOCK.min(self.size - s) as usize;
                let at = (s - a) as usize;
                self.read_merged(&mut buf[at..at + n], s)?;
            }
            let at = (off - a) as usize;
            buf[at..at + data.len()].copy_from_slice(data);
            let n = (b.min(self.size) - a) as usize;
            self.overlay
                .write_all_at(&buf[..n], a)
                .map_err(|e| self.ov_err(e))?;
        }
        self.set(a / BLOCK, b / BLOCK);
        Ok(())
    }

    /// Makes `[off, off+len)` read as zeros (a discard).
    pub fn punch(&self, off: u64, len: u64) -> Result<()> {
        let end = off.saturating_add(len).min(self.size);
        if end <= off {
            return Ok(());
        }
        let a = off.next_multiple_of(BLOCK);
        let b = end - end % BLOCK;
        if a >= b {
            return self.write_at(&vec![0u8; (end - off) as usize], off);
        }
        if off < a {
            self.write_at(&vec![0u8; (a - off) as usize], off)?;
        }
        if b < end {
            self.write_at(&vec![0u8; (end - b) as usize], b)?;
        }
        let _g = self.wlock.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: fallocate on our own descriptor; no memory arguments.
        let r = unsafe {
            libc::fallocate(
                self.overlay.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                a as libc::off_t,
                (b - a) as libc::off_t,
            )
        };
        if r != 0 {
            // No hole punching under --tmp: zeros written do the same.
            let zeros = vec![0u8; 1 << 20];
            let mut pos = a;
            while pos < b {
                let n = (b - pos).min(1 << 20) as usize;
                self.overlay
                    .write_all_at(&zeros[..n], pos)
                    .map_err(|e| self.ov_err(e))?;
                pos += n as u64;
            }
        }
        self.set(a / BLOCK, b / BLOCK);
        Ok(())
    }

    /// Guest bytes: overlay blocks from the overlay, the rest from the input.
    fn read_merged(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let blk = pos / BLOCK;
            let ov = self.has(blk);
            // Extend the run while the blocks stay on the same side.
            let mut next = (blk + 1) * BLOCK;
            let end = offset + buf.len() as u64;
            while next < end && self.has(next / BLOCK) == ov {
                next += BLOCK;
            }
            let n = (next.min(end) - pos) as usize;
            let part = &mut buf[done..done + n];
            if ov {
                self.overlay
                    .read_exact_at(part, pos)
                    .map_err(|e| self.ov_err(e))?;
            } else {
                self.read_base(part, pos)?;
            }
            done += n;
        }
        Ok(())
    }

    /// Overlay block ranges, in bytes.
    fn overlay_extents(&self) -> Vec<Extent> {
        let mut out: Vec<Extent> = Vec::new();
        for (wi, w) in self.bits.iter().enumerate() {
            let mut v = w.load(Ordering::Acquire);
            while v != 0 {
                let bit = v.trailing_zeros() as u64;
                v &= v - 1;
                let s = (wi as u64 * 64 + bit) * BLOCK;
                let e = Extent::new(s, BLOCK.min(self.size.saturating_sub(s)));
                match out.last_mut() {
                    Some(l) if l.end() == e.start => l.len += e.len,
                    _ => out.push(e),
                }
            }
        }
        out
    }
}

impl BlockSource for CowView {
    fn format(&self) -> ImageFormat {
        self.base.format()
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn data_extents(&self) -> Result<Vec<Extent>> {
        let mut all = self.base.data_extents()?;
        all.extend(self.overlay_extents());
        Ok(extent::normalize(all))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.read_merged(buf, offset)
    }
    fn host_allocated_bytes(&self) -> u64 {
        self.base.host_allocated_bytes() + self.overlay_allocated()
    }
    fn preferred_read_size(&self) -> Option<u64> {
        self.base.preferred_read_size()
    }
    fn details(&self) -> serde_json::Value {
        self.base.details()
    }
}

/// Shared so that the FUSE server threads and compaction read one view.
pub type SharedView = Arc<CowView>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_merge_over_the_input() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("in.raw");
        let base: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &base).unwrap();
        let src = crate::image::open(&p, Some(ImageFormat::Raw)).unwrap();
        let v = CowView::new(src, d.path(), "t").unwrap();
        // Nothing but the input is left in the directory.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let mut want = base.clone();
        for (off, len) in [(100u64, 10usize), (4096, 4096), (8190, 5000), (65530, 6)] {
            let data = vec![0xEEu8; len];
            v.write_at(&data, off).unwrap();
            want[off as usize..off as usize + len].copy_from_slice(&data);
        }
        v.punch(20000, 9000).unwrap();
        want[20000..29000].fill(0);
        let mut got = vec![0u8; base.len()];
        v.read_at(&mut got, 0).unwrap();
        assert_eq!(got, want);
        for off in [0u64, 4000, 8191, 30000] {
            let mut g = vec![0u8; 3000];
            v.read_at(&mut g, off).unwrap();
            assert_eq!(g, want[off as usize..off as usize + 3000]);
        }
        assert!(v.write_at(&[1], 64 * 1024).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), base, "the input changed");
    }
}
