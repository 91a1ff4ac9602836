//! Bounds-checked qcow2 reader (v2, v3, zlib and zstd clusters, zero flag,
//! extended L2) that reads what QEMU reads and refuses what QEMU refuses.
//! Every offset read from the file is checked against its length before
//! use; a short read is an error, never silent zeros. Images that need
//! another file (backing file, external data file) or a key are refused
//! with an error naming the feature (`inspect` opens them for `info` and
//! `check` without ever opening the named file).
//!
//! Work is bounded by the file, not by what the header claims: QEMU's caps
//! on the L1 and refcount tables, only the L1 entries the virtual size
//! needs are read, each active L2 table belongs to one L1 entry, and tables
//! lying in holes of a sparse file are known to be zeros without reading.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::entry::{
    ClusterMapping, SUBCLUSTERS, decode_entry, l1_offset, l2_entry, subcluster_allocated,
};
use super::format::{
    Extensions, Header, HeaderError, IncompatFeatures, MAX_BACKING_NAME, MAX_L1_BYTES,
    MAX_REFTABLE_BYTES, MAX_SNAPSHOTS, parse_extensions, table_entry,
};
use crate::extent::{self, Extent};
use crate::image::host::{HostFile, OsFile, in_hole};
use crate::image::{BlockSource, ImageError, ImageFormat, MAX_VIRTUAL_SIZE, Result, io_err};
use crate::text::escape_bytes;

/// Bytes of decoded L2 tables kept in memory.
const L2_CACHE_BYTES: u64 = 32 << 20;

/// Why `open` refuses an image that `inspect` can still describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The image reads its unallocated clusters from this file.
    BackingFile(Vec<u8>),
    /// The image's data lives in this other file.
    DataFile(Option<Vec<u8>>),
}

impl Refusal {
    /// One sentence: what the image needs and what to do.
    pub fn explain(&self) -> String {
        match self {
            Refusal::BackingFile(n) => format!(
                "has a backing file {}; vmfinal never opens files an image names: flatten it first with qemu-img convert -O qcow2 IMAGE FLAT.qcow2",
                escape_bytes(n)
            ),
            Refusal::DataFile(n) => format!(
                "uses an external data file{}; vmfinal never opens files an image names: convert it first with qemu-img convert -O qcow2 IMAGE FLAT.qcow2",
                n.as_ref()
                    .map(|n| format!(" {}", escape_bytes(n)))
                    .unwrap_or_default()
            ),
        }
    }
}

pub struct Qcow2Image {
    host: Box<dyn HostFile>,
    path: PathBuf,
    file_len: u64,
    header: Header,
    ext: Extensions,
    refusal: Option<Refusal>,
    /// Host offsets of the L2 tables (0 where none), by L1 index: every
    /// entry of the L1 table.
    l1: Vec<u64>,
    /// Host data ranges (everything else reads as zeros).
    data: Vec<Extent>,
    l2_cache: Mutex<HashMap<u64, Arc<Vec<u64>>>>,
    cache_tables: usize,
}

impl Qcow2Image {
    /// Opens a qcow2 file for reading guest data.
    pub fn open(file: File, path: &Path) -> Result<Self> {
        let host = OsFile::new(file).map_err(|e| io_err(path, e))?;
        Self::open_host(Box::new(host), path)
    }

    /// Opens qcow2 bytes for reading guest data; refuses images that name
    /// another file.
    pub fn open_host(host: Box<dyn HostFile>, path: &Path) -> Result<Self> {
        let img = Self::inspect(host, path)?;
        if let Some(r) = &img.refusal {
            return Err(img.unsupported(r.explain()));
        }
        Ok(img)
    }

    /// Opens and validates the header and L1 table, but accepts images
    /// with a backing file or an external data file (see `refusal`): for
    /// `info` and `check`, which never read guest data.
    pub fn inspect(host: Box<dyn HostFile>, path: &Path) -> Result<Self> {
        let file_len = host.len();
        let corrupt = |what: String| ImageError::Corrupt {
            path: path.to_owned(),
            what,
        };
        let unsupported = |what: String| ImageError::Unsupported {
            path: path.to_owned(),
            what,
        };
        let mut first = vec![0u8; file_len.min(4096) as usize];
        host.read_exact_at(&mut first, 0)
            .map_err(|e| io_err(path, e))?;
        let header = Header::parse(&first).map_err(|e| match e {
            HeaderError::TooShort => ImageError::Truncated {
                path: path.to_owned(),
                what: e.to_string(),
            },
            e if e.is_unsupported() => unsupported(e.to_string()),
            e => corrupt(e.to_string()),
        })?;
        let cs = header.cluster_size();
        if header.header_length as u64 > cs {
            return Err(corrupt(format!(
                "header length {} exceeds the cluster size",
                header.header_length
            )));
        }
        let mut head = vec![0u8; file_len.min(cs) as usize];
        host.read_exact_at(&mut head, 0)
            .map_err(|e| io_err(path, e))?;
        // Extensions end where the backing file name starts (as in QEMU).
        let ext_end = match header.backing_file_offset {
            0 => head.len(),
            o => (o.min(head.len() as u64)) as usize,
        };
        let ext = if header.version >= 3 {
            parse_extensions(&head[..ext_end], header.header_length as usize)
        } else {
            Extensions::default()
        };

        let mut refusal = None;
        if header.backing_file_offset != 0 && header.backing_file_size != 0 {
            let (off, len) = (header.backing_file_offset, header.backing_file_size as u64);
            let end = off.checked_add(len).filter(|&e| e <= cs);
            if len > MAX_BACKING_NAME || end.is_none() {
                return Err(corrupt(format!(
                    "backing file name ({len} bytes at offset {off}) is too long or lies outside the header cluster"
                )));
            }
            let name = head
                .get(off as usize..(off + len) as usize)
                .map(|n| n.to_vec())
                .ok_or_else(|| ImageError::Truncated {
                    path: path.to_owned(),
                    what: "backing file name lies past the end of the file".into(),
                })?;
            refusal = Some(Refusal::BackingFile(name));
        }
        if header.crypt_method != 0 {
            return Err(unsupported(format!(
                "is encrypted (crypt_method {}); decrypt it with qemu-img convert first",
                header.crypt_method
            )));
        }
        let inc = header.incompatible;
        let unknown: Vec<String> =
            IncompatFeatures(inc.0 & !IncompatFeatures::EXTERNAL_DATA_FILE).unsupported();
        if !unknown.is_empty() {
            return Err(unsupported(format!("uses {}", unknown.join(", "))));
        }
        if inc.has(IncompatFeatures::EXTERNAL_DATA_FILE) {
            refusal = Some(Refusal::DataFile(ext.data_file.clone()));
        }
        match (
            header.compression_type,
            inc.has(IncompatFeatures::COMPRESSION_TYPE),
        ) {
            (0, false) | (1, true) => {}
            (0, true) => {
                return Err(corrupt(
                    "the compression type feature bit is set but the type is zlib".into(),
                ));
            }
            (1, false) => {
                return Err(corrupt(
                    "compression type zstd without the compression type feature bit".into(),
                ));
            }
            (t, _) => return Err(unsupported(format!("unknown compression type {t}"))),
        }
        if header.extended_l2() && header.cluster_bits < 14 {
            return Err(corrupt(
                "extended L2 entries need clusters of at least 16 KiB".into(),
            ));
        }
        let rt_bytes = header.refcount_table_clusters as u64 * cs;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(corrupt(format!(
                "refcount table of {} clusters exceeds QEMU's limit of {} MiB",
                header.refcount_table_clusters,
                MAX_REFTABLE_BYTES >> 20
            )));
        }
        if header.refcount_table_offset % cs != 0 {
            return Err(corrupt(format!(
                "refcount table offset {} is not cluster aligned",
                header.refcount_table_offset
            )));
        }
        if header.nb_snapshots > MAX_SNAPSHOTS {
            return Err(corrupt(format!(
                "{} snapshots exceed QEMU's limit of {MAX_SNAPSHOTS}",
                header.nb_snapshots
            )));
        }
        if header.size > MAX_VIRTUAL_SIZE {
            return Err(unsupported(format!(
                "virtual size {} exceeds vmfinal's limit of {MAX_VIRTUAL_SIZE} bytes",
                header.size
            )));
        }

        // The L1 table.
        let needed = header.l1_entries_needed();
        let l1_bytes = header.l1_size as u64 * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(corrupt(format!(
                "L1 table of {} entries exceeds QEMU's limit of {} MiB",
                header.l1_size,
                MAX_L1_BYTES >> 20
            )));
        }
        if (header.l1_size as u64) < needed {
            return Err(corrupt(format!(
                "L1 table has {} entries but the virtual size needs {needed}",
                header.l1_size
            )));
        }
        let l1_off = header.l1_table_offset;
        if header.l1_size > 0 && l1_off % cs != 0 {
            return Err(corrupt(format!(
                "L1 table offset {l1_off} is not cluster aligned"
            )));
        }
        if header.l1_size > 0 && l1_off.checked_add(l1_bytes).is_none_or(|e| e > file_len) {
            return Err(ImageError::Truncated {
                path: path.to_owned(),
                what: format!(
                    "L1 table at offset {l1_off} ({l1_bytes} bytes) lies past the end of the file ({file_len} bytes)"
                ),
            });
        }
        let mut raw = vec![0u8; l1_bytes as usize];
        host.read_exact_at(&mut raw, l1_off)
            .map_err(|e| io_err(path, e))?;
        let l1: Vec<u64> = (0..header.l1_size as usize)
            .map(|i| l1_offset(table_entry(&raw, i)))
            .collect();
        drop(raw);
        let mut active: Vec<(u64, usize)> = Vec::new();
        for (i, &off) in l1.iter().enumerate().take(needed as usize) {
            if off == 0 {
                continue;
            }
            if off % cs != 0 {
                return Err(corrupt(format!(
                    "L1 entry {i}: L2 table offset {off} is not cluster aligned"
                )));
            }
            if off.checked_add(cs).is_none_or(|end| end > file_len) {
                return Err(ImageError::Truncated {
                    path: path.to_owned(),
                    what: format!(
                        "L1 entry {i} points to an L2 table at offset {off}, past the end of the file ({file_len} bytes)"
                    ),
                });
            }
            active.push((off, i));
        }
        active.sort_unstable();
        if let Some(w) = active.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(corrupt(format!(
                "L1 entries {} and {} point to the same L2 table (offset {})",
                w[0].1.min(w[1].1),
                w[0].1.max(w[1].1),
                w[0].0
            )));
        }
        drop(active);
        let data = extent::normalize(host.data_ranges().map_err(|e| io_err(path, e))?);
        let cache_tables = (L2_CACHE_BYTES / cs).clamp(4, 256) as usize;
        Ok(Self {
            host,
            path: path.to_owned(),
            file_len,
            header,
            ext,
            refusal,
            l1,
            data,
            l2_cache: Mutex::new(HashMap::new()),
            cache_tables,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    /// Why reading guest data is refused, if it is (from `inspect`).
    pub fn refusal(&self) -> Option<&Refusal> {
        self.refusal.as_ref()
    }

    /// Host offsets of the L2 tables (0 where none), every L1 entry.
    pub fn l1_offsets(&self) -> &[u64] {
        &self.l1
    }

    /// L1 entries the virtual size needs (the ones reads use).
    pub fn l1_needed(&self) -> usize {
        self.header.l1_entries_needed() as usize
    }

    pub fn host(&self) -> &dyn HostFile {
        self.host.as_ref()
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True if `[off, off + len)` of the file is a hole (reads as zeros).
    pub fn is_hole(&self, off: u64, len: u64) -> bool {
        in_hole(&self.data, off, len)
    }

    fn corrupt(&self, what: String) -> ImageError {
        ImageError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    fn unsupported(&self, what: String) -> ImageError {
        ImageError::Unsupported {
            path: self.path.clone(),
            what,
        }
    }

    fn truncated(&self, what: String) -> ImageError {
        ImageError::Truncated {
            path: self.path.clone(),
            what,
        }
    }

    /// Reads file bytes; past the end of the file is `Truncated`.
    pub fn pread(&self, buf: &mut [u8], off: u64, what: &str) -> Result<()> {
        let end = off.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.file_len) {
            return Err(self.truncated(format!(
                "{what} at offset {off} ({} bytes) lies past the end of the file ({} bytes)",
                buf.len(),
                self.file_len
            )));
        }
        if self.is_hole(off, buf.len() as u64) {
            buf.fill(0);
            return Ok(());
        }
        self.host.read_exact_at(buf, off).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.truncated(format!("short read of {what} at offset {off}"))
            } else {
                io_err(&self.path, e)
            }
        })
    }

    /// The L2 table at host offset `off` as u64 entries (for extended L2,
    /// entry/bitmap pairs). A table in a hole of the file is all zeros.
    pub fn l2_table(&self, off: u64) -> Result<Arc<Vec<u64>>> {
        if let Ok(cache) = self.l2_cache.lock()
            && let Some(t) = cache.get(&off)
        {
            return Ok(t.clone());
        }
        let cs = self.header.cluster_size();
        let mut raw = vec![0u8; cs as usize];
        self.pread(&mut raw, off, "L2 table")?;
        let t = Arc::new(
            (0..(cs / 8) as usize)
                .map(|i| table_entry(&raw, i))
                .collect::<Vec<u64>>(),
        );
        if let Ok(mut cache) = self.l2_cache.lock() {
            if cache.len() >= self.cache_tables {
                cache.clear();
            }
            cache.insert(off, t.clone());
        }
        Ok(t)
    }

    /// Entry `i` of an L2 table, decoded and checked against the file.
    fn mapping_in(&self, t: &[u64], i: usize, gc: u64) -> Result<ClusterMapping> {
        let h = &self.header;
        let (entry, bitmap) = l2_entry(t, i, h.extended_l2());
        let m = decode_entry(entry, bitmap, h.cluster_bits, h.version)
            .map_err(|e| self.corrupt(format!("guest cluster {gc}: {e}")))?;
        let cs = h.cluster_size();
        match m {
            ClusterMapping::Standard(off) | ClusterMapping::Subclusters { host: off, .. }
                if off != 0
                    && off
                        .checked_add(cs)
                        .is_none_or(|end| end > self.file_len.next_multiple_of(cs)) =>
            {
                return Err(self.truncated(format!(
                    "guest cluster {gc}: data at offset {off} lies past the end of the file ({} bytes)",
                    self.file_len
                )));
            }
            ClusterMapping::Compressed { offset, .. } if offset >= self.file_len => {
                return Err(self.truncated(format!(
                    "guest cluster {gc}: compressed data at offset {offset} lies past the end of the file ({} bytes)",
                    self.file_len
                )));
            }
            _ => {}
        }
        Ok(m)
    }

    fn mapping(&self, gc: u64) -> Result<ClusterMapping> {
        if let Some(r) = &self.refusal {
            return Err(self.unsupported(r.explain()));
        }
        let per = self.header.l2_entries();
        let l2_off = match self.l1.get((gc / per) as usize) {
            Some(&o) if o != 0 => o,
            _ => return Ok(ClusterMapping::Unallocated),
        };
        let t = self.l2_table(l2_off)?;
        self.mapping_in(&t, (gc % per) as usize, gc)
    }

    /// Reads guest cluster `gc` from `start` (bytes within the cluster) into `out`.
    fn read_cluster(&self, gc: u64, start: u64, out: &mut [u8]) -> Result<()> {
        let what = || format!("data of guest cluster {gc}");
        match self.mapping(gc)? {
            ClusterMapping::Unallocated | ClusterMapping::Zero => out.fill(0),
            ClusterMapping::Standard(host) => self.read_plain(out, host + start, &what())?,
            ClusterMapping::Compressed { offset, len } => {
                let data = self.decompress(gc, offset, len)?;
                out.copy_from_slice(&data[start as usize..start as usize + out.len()]);
            }
            ClusterMapping::Subclusters { host, bitmap } => {
                let sc = self.header.cluster_size() / SUBCLUSTERS;
                let mut done = 0usize;
                while done < out.len() {
                    let pos = start + done as u64;
                    let i = pos / sc;
                    let n = ((i + 1) * sc - pos).min((out.len() - done) as u64) as usize;
                    let part = &mut out[done..done + n];
                    if subcluster_allocated(bitmap, i) {
                        self.read_plain(part, host + pos, &what())?;
                    } else {
                        part.fill(0);
                    }
                    done += n;
                }
            }
        }
        Ok(())
    }

    /// Reads plain cluster data; the part of the last cluster past the end
    /// of the file reads as zeros, as in QEMU.
    fn read_plain(&self, out: &mut [u8], off: u64, what: &str) -> Result<()> {
        let avail = self.file_len.saturating_sub(off).min(out.len() as u64) as usize;
        let (have, tail) = out.split_at_mut(avail);
        tail.fill(0);
        self.pread(have, off, what)
    }

    /// Decompresses a compressed cluster as QEMU does: raw deflate with a
    /// 4 KiB window, or zstd frames streamed until the cluster is full
    /// (several frames and skippable frames allowed; trailing bytes ignored).
    pub fn decompress(&self, gc: u64, off: u64, len: u64) -> Result<Vec<u8>> {
        let cs = self.header.cluster_size() as usize;
        // The last stream may end before its final sector is in the file.
        let avail = len.min(self.file_len.saturating_sub(off));
        let mut c = vec![0u8; avail as usize];
        self.pread(
            &mut c,
            off,
            &format!("compressed data of guest cluster {gc}"),
        )?;
        let out = match self.header.compression_type {
            0 => inflate_cluster(&c, cs),
            _ => zstd_cluster(&c, cs),
        };
        out.ok_or_else(|| {
            let what = format!(
                "guest cluster {gc}: compressed data at offset {off} does not decompress to a whole cluster"
            );
            if avail < len {
                self.truncated(what)
            } else {
                self.corrupt(what)
            }
        })
    }
}

thread_local! {
    /// One inflater and one zstd context per thread, reset per cluster.
    static INFLATE: std::cell::RefCell<Option<flate2::Decompress>> =
        const { std::cell::RefCell::new(None) };
    static ZSTD: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// QEMU's `qcow2_zlib_decompress`: raw deflate, window bits 12; success is a
/// full output buffer (the stream may be cut at the end of the sector).
pub fn inflate_cluster(c: &[u8], cs: usize) -> Option<Vec<u8>> {
    INFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = slot.get_or_insert_with(|| flate2::Decompress::new_with_window_bits(false, 12));
        d.reset(false);
        let mut out = Vec::with_capacity(cs);
        d.decompress_vec(c, &mut out, flate2::FlushDecompress::Finish)
            .ok()?;
        (out.len() == cs).then_some(out)
    })
}

/// QEMU's `qcow2_zstd_decompress`: stream frames until `cs` bytes came out,
/// failing when a step makes no progress.
pub fn zstd_cluster(c: &[u8], cs: usize) -> Option<Vec<u8>> {
    use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer, ResetDirective};
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(DCtx::try_create()?);
        }
        let d = slot.as_mut()?;
        d.reset(ResetDirective::SessionOnly).ok()?;
        let mut out = vec![0u8; cs];
        let mut ob = OutBuffer::around(&mut out[..]);
        let mut ib = InBuffer::around(c);
        while ob.pos() < cs {
            let (lin, lout) = (ib.pos, ob.pos());
            d.decompress_stream(&mut ob, &mut ib).ok()?;
            if ib.pos <= lin && ob.pos() <= lout {
                return None;
            }
        }
        Some(out)
    })
}

fn push_merged(out: &mut Vec<Extent>, e: Extent) {
    match out.last_mut() {
        Some(last) if last.end() == e.start => last.len += e.len,
        _ => out.push(e),
    }
}

impl BlockSource for Qcow2Image {
    fn format(&self) -> ImageFormat {
        ImageFormat::Qcow2
    }
    fn virtual_size(&self) -> u64 {
        // QEMU counts whole sectors: a size that is not a multiple of 512
        // is rounded down (bs->total_sectors = size / 512).
        self.header.size / 512 * 512
    }
    fn data_extents(&self) -> Result<Vec<Extent>> {
        let cs = self.header.cluster_size();
        let per = self.header.l2_entries();
        let sc = cs / SUBCLUSTERS;
        let size = self.virtual_size();
        if let Some(r) = &self.refusal {
            return Err(self.unsupported(r.explain()));
        }
        let mut out = Vec::new();
        for (l1i, &l2_off) in self.l1.iter().enumerate().take(self.l1_needed()) {
            if l2_off == 0 || self.is_hole(l2_off, cs) {
                continue;
            }
            let t = self.l2_table(l2_off)?;
            for i in 0..per {
                let gc = l1i as u64 * per + i;
                let start = gc * cs;
                if start >= size {
                    break;
                }
                match self.mapping_in(&t, i as usize, gc)? {
                    ClusterMapping::Compressed { .. } | ClusterMapping::Standard(_) => {
                        push_merged(&mut out, Extent::new(start, cs))
                    }
                    ClusterMapping::Subclusters { bitmap, .. } => {
                        for s in 0..SUBCLUSTERS {
                            if subcluster_allocated(bitmap, s) {
                                push_merged(&mut out, Extent::new(start + s * sc, sc));
                            }
                        }
                    }
                    ClusterMapping::Unallocated | ClusterMapping::Zero => {}
                }
            }
        }
        Ok(extent::clip(&out, 0, size))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let cs = self.header.cluster_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let gc = pos / cs;
            let start = pos % cs;
            let n = ((cs - start) as usize).min(buf.len() - done);
            self.read_cluster(gc, start, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
    fn host_allocated_bytes(&self) -> u64 {
        self.host.allocated_bytes()
    }
    fn preferred_read_size(&self) -> Option<u64> {
        Some(self.header.cluster_size())
    }
    fn details(&self) -> serde_json::Value {
        let h = &self.header;
        let mut v = serde_json::json!({
            "version": h.version,
            "cluster_size": h.cluster_size(),
            "compression_type": if h.compression_type == 1 { "zstd" } else { "zlib" },
            "refcount_bits": h.refcount_bits(),
            "extended_l2": h.extended_l2(),
            "dirty": h.incompatible.has(IncompatFeatures::DIRTY),
            "l1_entries": h.l1_size,
            "snapshots": h.nb_snapshots,
        });
        if let (Some(o), Some(r)) = (v.as_object_mut(), &self.refusal) {
            match r {
                Refusal::BackingFile(n) => {
                    o.insert("backing_file".into(), escape_bytes(n).into());
                }
                Refusal::DataFile(n) => {
                    o.insert(
                        "data_file".into(),
                        n.as_ref()
                            .map(|n| escape_bytes(n))
                            .unwrap_or_default()
                            .into(),
                    );
                }
            }
        }
        v
    }
}
