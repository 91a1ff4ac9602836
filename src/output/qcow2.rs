//! Sequential compressed qcow2 v3 writer, and the cluster encoders the
//! pipeline's workers run. The layout it writes (header fields, entry
//! encoding, limits) is `image::qcow2::format`, which the reader and the
//! checker read with; the tuned raw deflate is `image::qcow2::deflate`.
//!
//! Layout, in file order: the header cluster; packed compressed clusters (byte
//! granular) with plain clusters cluster-aligned among them and each L2 table
//! written as soon as its guest span is finished; then the L1 table, the
//! refcount table and the refcount blocks; the header is written last.
//! Zero units are never written: their L2 entries stay 0 (unallocated), which
//! reads as zeros without a backing file.
//!
//! Memory: one L2 table, the L1 table and one refcount per host cluster.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::image::qcow2::Compression;
use crate::image::qcow2::deflate::RawDeflate;
use crate::image::qcow2::entry::{
    encode_compressed, encode_l1, encode_reftable, encode_standard, refcount_set,
    refcounts_per_block,
};
use crate::image::qcow2::format::{self, QCOW2_MAGIC};
use crate::pipeline::{JobOut, PipelineError, Sink, UnitEncoder, UnitOut};

const VERSION: u32 = 3;
const HEADER_LENGTH: u32 = 112;
/// Incompatible feature bit 3: compression type in header byte 104.
const INCOMPAT_COMPRESSION_TYPE: u64 = format::IncompatFeatures::COMPRESSION_TYPE;
const COMPRESSION_TYPE_ZLIB: u8 = 0;
const COMPRESSION_TYPE_ZSTD: u8 = 1;
const SECTOR: u64 = 512;
/// Write buffer size: large sequential writes, few syscalls.
const WRITE_BUFFER: usize = 8 << 20;

/// Refcount blocks and refcount-table clusters needed so that every cluster of
/// a file of `used` clusters plus the refcount structures themselves has a
/// refcount slot: the smallest fixed point.
pub fn refcount_layout(used: u64, cluster_size: u64, refcount_bits: u64) -> (u64, u64) {
    let per_block = refcounts_per_block(cluster_size, refcount_bits);
    let (mut blocks, mut table) = (0u64, 0u64);
    loop {
        let nb = (used + blocks + table).div_ceil(per_block);
        let nt = (nb * 8).div_ceil(cluster_size).max(1);
        if nb == blocks && nt == table {
            return (blocks, table);
        }
        blocks = nb;
        table = nt;
    }
}

/// Checks that a qcow2 of `virtual_size` bytes with clusters of
/// `cluster_size` is one QEMU (and vmfinal) can read: its L1 table within
/// QEMU's 32 MiB. Call before creating anything.
pub fn check_limits(virtual_size: u64, cluster_size: u64) -> Result<(), PipelineError> {
    if !cluster_size.is_power_of_two() || !(4096..=2 << 20).contains(&cluster_size) {
        return Err(PipelineError::Other(format!(
            "invalid qcow2 cluster size {cluster_size}"
        )));
    }
    let per_l2 = cluster_size * (cluster_size / 8);
    let max = (format::MAX_L1_BYTES / 8).saturating_mul(per_l2);
    let size = virtual_size.div_ceil(SECTOR).saturating_mul(SECTOR);
    if size > max {
        let hint = if cluster_size < 2 << 20 {
            "; a larger --cluster-size raises the limit (2M: 2 EiB)"
        } else {
            ""
        };
        return Err(PipelineError::Other(format!(
            "a virtual size of {virtual_size} bytes is too large for qcow2 with {} KiB clusters: QEMU reads at most {max} bytes (an L1 table of 32 MiB){hint}",
            cluster_size >> 10
        )));
    }
    Ok(())
}

pub struct Qcow2WriterOptions {
    pub virtual_size: u64,
    pub cluster_size: u64,
    pub compression: Compression,
}

pub struct Qcow2Writer {
    file: File,
    path: PathBuf,
    cluster_size: u64,
    cluster_bits: u32,
    /// Guest size written into the header (rounded up to 512, as qemu does).
    size: u64,
    compression: Compression,
    l1: Vec<u64>,
    /// The L2 table being filled and its L1 index.
    l2: Vec<u64>,
    l2_index: Option<usize>,
    l2_used: bool,
    /// Refcount per host cluster.
    refcounts: Vec<u32>,
    /// First free host cluster (byte offset, cluster aligned): the file end.
    end: u64,
    /// Host cluster that compressed data is being packed into, and the next
    /// free byte there. Plain clusters and tables are allocated at `end`
    /// without breaking the packing, as qemu does.
    packing_cluster: Option<u64>,
    packing_pos: u64,
    /// Write combining: `buf` holds the bytes for `buf_start..`.
    buf: Vec<u8>,
    buf_start: u64,
}

impl Qcow2Writer {
    pub fn new(file: File, path: PathBuf, opts: Qcow2WriterOptions) -> Result<Self, PipelineError> {
        let cs = opts.cluster_size;
        check_limits(opts.virtual_size, cs)?;
        let size = opts.virtual_size.div_ceil(SECTOR) * SECTOR;
        let l2_entries = cs / 8;
        let l1_size = size.div_ceil(cs * l2_entries);
        let mut w = Self {
            file,
            path,
            cluster_size: cs,
            cluster_bits: cs.trailing_zeros(),
            size,
            compression: opts.compression,
            l1: vec![0; l1_size as usize],
            l2: vec![0; l2_entries as usize],
            l2_index: None,
            l2_used: false,
            refcounts: Vec::new(),
            end: 0,
            packing_cluster: None,
            packing_pos: 0,
            buf: Vec::with_capacity(WRITE_BUFFER + cs as usize),
            buf_start: 0,
        };
        // The header cluster; its content is written by `finish`.
        w.alloc(1);
        Ok(w)
    }

    fn werr(&self, source: std::io::Error) -> PipelineError {
        PipelineError::Write {
            path: self.path.clone(),
            source,
        }
    }

    /// Takes `n` clusters at the end of the file (no references yet).
    fn reserve(&mut self, n: u64) -> u64 {
        let off = self.end;
        self.end += n * self.cluster_size;
        off
    }

    /// Allocates `n` clusters at the end of the file, referenced once each.
    fn alloc(&mut self, n: u64) -> u64 {
        let off = self.reserve(n);
        self.add_ref(off, n * self.cluster_size);
        off
    }

    /// Host offset for a compressed cluster of `len` bytes (`len` < cluster
    /// size): packed right after the previous one; spilling into the next
    /// host cluster only when that is the file end, else starting afresh.
    fn place_compressed(&mut self, len: u64) -> u64 {
        let cs = self.cluster_size;
        let off = match self.packing_cluster {
            Some(c) if self.packing_pos + len <= c + cs => self.packing_pos,
            Some(c) if c + cs == self.end => {
                let spill = self.reserve(1);
                self.packing_cluster = Some(spill);
                self.packing_pos
            }
            _ => {
                let c = self.reserve(1);
                self.packing_cluster = Some(c);
                c
            }
        };
        self.packing_pos = off + len;
        self.add_ref(off, len);
        off
    }

    /// Buffered positioned write; contiguous writes are combined.
    fn write_at(&mut self, off: u64, bytes: &[u8]) -> Result<(), PipelineError> {
        if off != self.buf_start + self.buf.len() as u64 || self.buf.len() >= WRITE_BUFFER {
            self.flush()?;
            self.buf_start = off;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PipelineError> {
        if !self.buf.is_empty() {
            self.file
                .write_all_at(&self.buf, self.buf_start)
                .map_err(|e| self.werr(e))?;
            super::start_writeback(&self.file, self.buf_start, self.buf.len() as u64);
            self.buf_start += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// +1 on every host cluster that `[off, off + len)` touches.
    fn add_ref(&mut self, off: u64, len: u64) {
        let first = off >> self.cluster_bits;
        let last = (off + len - 1) >> self.cluster_bits;
        if self.refcounts.len() <= last as usize {
            self.refcounts.resize(last as usize + 1, 0);
        }
        for c in first..=last {
            self.refcounts[c as usize] += 1;
        }
    }

    /// Makes the L2 table for guest cluster `gc` current, flushing the old one.
    fn select_l2(&mut self, gc: u64) -> Result<usize, PipelineError> {
        let l2_entries = self.cluster_size / 8;
        let l1i = (gc / l2_entries) as usize;
        if self.l2_index != Some(l1i) {
            self.flush_l2()?;
            self.l2_index = Some(l1i);
        }
        Ok((gc % l2_entries) as usize)
    }

    fn flush_l2(&mut self) -> Result<(), PipelineError> {
        if let Some(l1i) = self.l2_index.take()
            && self.l2_used
        {
            let off = self.alloc(1);
            let mut bytes = Vec::with_capacity(self.cluster_size as usize);
            for e in &self.l2 {
                bytes.extend_from_slice(&e.to_be_bytes());
            }
            self.write_at(off, &bytes)?;
            self.l1[l1i] = encode_l1(off);
            self.l2.fill(0);
            self.l2_used = false;
        }
        Ok(())
    }

    fn set_entry(&mut self, gc: u64, entry: u64) -> Result<(), PipelineError> {
        let i = self.select_l2(gc)?;
        self.l2[i] = entry;
        self.l2_used = true;
        Ok(())
    }

    /// Writes tables and header; returns the file's final length.
    pub fn finish(mut self) -> Result<u64, PipelineError> {
        self.flush_l2()?;
        let cs = self.cluster_size;
        // L1 table. An empty disk has none (l1_size 0, offset 0), as qemu writes it.
        let l1_clusters = (self.l1.len() as u64 * 8).div_ceil(cs);
        let l1_off = if l1_clusters == 0 {
            0
        } else {
            self.alloc(l1_clusters)
        };
        if l1_clusters > 0 {
            let mut l1_bytes = vec![0u8; (l1_clusters * cs) as usize];
            for (i, e) in self.l1.iter().enumerate() {
                l1_bytes[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
            }
            self.write_at(l1_off, &l1_bytes)?;
        }

        // Refcount structures at the end: table, then blocks.
        let max_ref = self.refcounts.iter().copied().max().unwrap_or(1);
        let (order, bits) = if max_ref <= u16::MAX as u32 {
            (4u32, 16u64)
        } else {
            (5, 32)
        };
        let used = self.end / cs;
        let (blocks, table) = refcount_layout(used, cs, bits);
        let table_off = self.alloc(table);
        let blocks_off = self.alloc(blocks);
        self.refcounts.resize((used + table + blocks) as usize, 0);

        let mut table_bytes = vec![0u8; (table * cs) as usize];
        for b in 0..blocks {
            let e = encode_reftable(blocks_off + b * cs);
            table_bytes[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&e.to_be_bytes());
        }
        self.write_at(table_off, &table_bytes)?;
        let per_block = refcounts_per_block(cs, bits) as usize;
        let mut block = vec![0u8; cs as usize];
        for b in 0..blocks as usize {
            block.fill(0);
            let first = b * per_block;
            let last = (first + per_block).min(self.refcounts.len());
            for (i, &r) in self.refcounts[first.min(last)..last].iter().enumerate() {
                refcount_set(&mut block, i as u64, bits, r as u64);
            }
            self.write_at(blocks_off + b as u64 * cs, &block)?;
        }
        self.flush()?;
        // Packed clusters may end mid-cluster: the length covers them all.
        self.file.set_len(self.end).map_err(|e| self.werr(e))?;
        let header = self.header(l1_off, table_off, table, order);
        self.file
            .write_all_at(&header, 0)
            .map_err(|e| self.werr(e))?;
        Ok(self.end)
    }

    fn header(
        &self,
        l1_off: u64,
        table_off: u64,
        table_clusters: u64,
        refcount_order: u32,
    ) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LENGTH as usize + 8);
        let (incompat, ctype) = match self.compression {
            Compression::Zlib => (0u64, COMPRESSION_TYPE_ZLIB),
            Compression::Zstd => (INCOMPAT_COMPRESSION_TYPE, COMPRESSION_TYPE_ZSTD),
        };
        h.extend_from_slice(&QCOW2_MAGIC.to_be_bytes());
        h.extend_from_slice(&VERSION.to_be_bytes());
        h.extend_from_slice(&0u64.to_be_bytes()); // backing_file_offset
        h.extend_from_slice(&0u32.to_be_bytes()); // backing_file_size
        h.extend_from_slice(&self.cluster_bits.to_be_bytes());
        h.extend_from_slice(&self.size.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // crypt_method
        h.extend_from_slice(&(self.l1.len() as u32).to_be_bytes());
        h.extend_from_slice(&l1_off.to_be_bytes());
        h.extend_from_slice(&table_off.to_be_bytes());
        h.extend_from_slice(&(table_clusters as u32).to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // nb_snapshots
        h.extend_from_slice(&0u64.to_be_bytes()); // snapshots_offset
        h.extend_from_slice(&incompat.to_be_bytes());
        h.extend_from_slice(&0u64.to_be_bytes()); // compatible
        h.extend_from_slice(&0u64.to_be_bytes()); // autoclear
        h.extend_from_slice(&refcount_order.to_be_bytes());
        h.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
        h.push(ctype);
        h.resize(HEADER_LENGTH as usize, 0);
        h.extend_from_slice(&[0u8; 8]); // end of header extensions
        h
    }
}

impl Sink for Qcow2Writer {
    fn write_job(&mut self, job: JobOut) -> Result<(), PipelineError> {
        if job.is_zero_job() {
            return Ok(());
        }
        let cs = self.cluster_size;
        let first = job.start / cs;
        for (i, unit) in job.units.iter().enumerate() {
            let gc = first + i as u64;
            match unit {
                UnitOut::Zero => {}
                UnitOut::Compressed(bytes) => {
                    let len = bytes.len() as u64;
                    let off = self.place_compressed(len);
                    self.write_at(off, bytes)?;
                    self.set_entry(gc, encode_compressed(off, len, self.cluster_bits))?;
                }
                UnitOut::Plain => {
                    let off = self.alloc(1);
                    let data = job.unit_bytes(i, cs);
                    self.write_at(off, data)?;
                    if (data.len() as u64) < cs {
                        let pad = vec![0u8; cs as usize - data.len()];
                        self.write_at(off + data.len() as u64, &pad)?;
                    }
                    self.set_entry(gc, encode_standard(off))?;
                }
            }
        }
        Ok(())
    }
}

/// Raw deflate with a 4 KiB window, see `deflate.rs`.
struct ZlibClusterEncoder {
    d: RawDeflate,
    cluster_size: usize,
    padded: Vec<u8>,
}

impl UnitEncoder for ZlibClusterEncoder {
    fn encode(&mut self, unit: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        let input = pad_to_cluster(unit, self.cluster_size, &mut self.padded);
        let mut out = Vec::new();
        // Must be smaller than a cluster, as qemu requires (cluster_size - 1).
        let fits = self.d.compress(input, &mut out, self.cluster_size - 1)?;
        Ok(fits.then_some(out))
    }
}

/// One zstd frame per cluster, no length prefix. Compressed through the
/// streaming API without a pledged size, as qemu does: zstd then picks its
/// large-input parameters, which compress disk clusters about 1.5% smaller
/// than the small-input ones a one-shot call with a known 64 KiB size gets.
struct ZstdClusterEncoder {
    c: zstd::zstd_safe::CCtx<'static>,
    cluster_size: usize,
    padded: Vec<u8>,
}

fn zstd_err(code: usize) -> std::io::Error {
    std::io::Error::other(zstd::zstd_safe::get_error_name(code))
}

impl UnitEncoder for ZstdClusterEncoder {
    fn encode(&mut self, unit: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end;
        use zstd::zstd_safe::{InBuffer, OutBuffer, ResetDirective};
        let input = pad_to_cluster(unit, self.cluster_size, &mut self.padded);
        self.c
            .reset(ResetDirective::SessionOnly)
            .map_err(zstd_err)?;
        // Must be smaller than a cluster, as qemu requires (cluster_size - 1).
        let mut out: Vec<u8> = Vec::with_capacity(self.cluster_size - 1);
        let mut ob = OutBuffer::around(&mut out);
        let mut ib = InBuffer::around(input);
        let left = self
            .c
            .compress_stream2(&mut ob, &mut ib, ZSTD_e_end)
            .map_err(zstd_err)?;
        // Output full before the frame ended: store the cluster plain.
        Ok((left == 0).then_some(out))
    }
}

/// QEMU decompresses a whole cluster: a short last unit is padded with zeros.
fn pad_to_cluster<'a>(unit: &'a [u8], cluster_size: usize, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    if unit.len() == cluster_size {
        return unit;
    }
    scratch.clear();
    scratch.extend_from_slice(unit);
    scratch.resize(cluster_size, 0);
    scratch
}

/// One cluster encoder: returns `None` when the cluster does not shrink below
/// `cluster_size - 1`, so it is stored plain, as qemu does.
pub fn cluster_encoder(
    compression: Compression,
    level: Option<i32>,
    cluster_size: u64,
) -> std::io::Result<Box<dyn UnitEncoder>> {
    let cs = cluster_size as usize;
    Ok(match compression {
        Compression::Zlib => {
            let lvl = level.unwrap_or(6).clamp(0, 9) as u32;
            Box::new(ZlibClusterEncoder {
                d: RawDeflate::new(lvl)?,
                cluster_size: cs,
                padded: Vec::new(),
            })
        }
        Compression::Zstd => {
            let mut c = zstd::zstd_safe::CCtx::create();
            c.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(
                level.unwrap_or(3),
            ))
            .map_err(zstd_err)?;
            Box::new(ZstdClusterEncoder {
                c,
                cluster_size: cs,
                padded: Vec::new(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_qemus_l1_cap() {
        // 64 KiB clusters: 2 PiB; 2 MiB clusters: 2 EiB.
        assert!(check_limits(2 << 50, 65536).is_ok());
        assert!(check_limits((2 << 50) + 512, 65536).is_err());
        assert!(check_limits(1 << 60, 2 << 20).is_ok());
        assert!(check_limits(2 << 60, 2 << 20).is_ok());
        assert!(check_limits(4 << 60, 2 << 20).is_err());
        assert!(check_limits(u64::MAX, 2 << 20).is_err());
        assert!(check_limits(1 << 20, 3000).is_err());
    }

    #[test]
    fn refcount_layout_is_a_fixed_point() {
        for used in [1u64, 100, 32767, 32768, 1 << 20] {
            let (b, t) = refcount_layout(used, 65536, 16);
            assert!(b * 32768 >= used + b + t);
            assert!(t * 65536 >= b * 8);
        }
    }

    #[test]
    fn zlib_encoder_round_trips_with_4k_window() {
        let mut e = cluster_encoder(Compression::Zlib, Some(6), 65536).unwrap();
        let data: Vec<u8> = (0..65536u32)
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect();
        let c = e.encode(&data).unwrap().expect("compresses");
        let mut d = flate2::Decompress::new_with_window_bits(false, 12);
        let mut out = Vec::with_capacity(65536);
        d.decompress_vec(&c, &mut out, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn incompressible_cluster_is_plain() {
        let mut e = cluster_encoder(Compression::Zstd, Some(3), 4096).unwrap();
        let mut x = 0x1234_5678_9abc_def0u64;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(e.encode(&data).unwrap().is_none());
    }
}
