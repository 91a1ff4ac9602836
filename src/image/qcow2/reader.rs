//! Bounds-checked qcow2 reader (v2, v3, zlib and zstd clusters, zero flag,
//! extended L2). Every offset read from the file is checked against its
//! length before use; a short read is an error, never silent zeros. Images
//! that need another file (backing file, external data file) or a key are
//! refused with an error naming the feature.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::format::{
    ClusterMapping, ENTRY_OFFSET_MASK, EXT_DATA_FILE, EXT_END, Header, IncompatFeatures,
    L2_COMPRESSED, L2_ZERO, SUBCLUSTERS, decode_l2, table_entry,
};
use crate::extent::{self, Extent};
use crate::image::{BlockSource, ImageError, ImageFormat, Result, io_err};

/// qemu's own cap on the L1 table (QCOW_MAX_L1_SIZE).
const MAX_L1_BYTES: u64 = 32 << 20;
/// L2 tables kept decoded in memory.
const L2_CACHE_TABLES: usize = 256;

pub struct Qcow2Image {
    file: File,
    path: PathBuf,
    file_len: u64,
    header: Header,
    l1: Vec<u64>,
    l2_cache: Mutex<HashMap<u64, Arc<Vec<u64>>>>,
}

/// One guest cluster's L2 entry (and, for extended L2, its subcluster bitmap).
#[derive(Debug, Clone, Copy)]
struct L2Entry {
    entry: u64,
    bitmap: u64,
}

impl Qcow2Image {
    pub fn open(file: File, path: &Path) -> Result<Self> {
        let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();
        let mut head = vec![0u8; file_len.min(4096) as usize];
        file.read_exact_at(&mut head, 0)
            .map_err(|e| io_err(path, e))?;
        let corrupt = |what: String| ImageError::Corrupt {
            path: path.to_owned(),
            what,
        };
        let unsupported = |what: String| ImageError::Unsupported {
            path: path.to_owned(),
            what,
        };
        let header = Header::parse(&head).map_err(|e| {
            if e.contains("version") || e.contains("cluster_bits") {
                unsupported(e)
            } else {
                corrupt(e)
            }
        })?;
        let cs = header.cluster_size();

        if header.backing_file_offset != 0 {
            let name = read_string(
                &file,
                file_len,
                header.backing_file_offset,
                header.backing_file_size as u64,
            );
            return Err(unsupported(format!(
                "has a backing file '{name}'; vmfinal never opens backing files: flatten it first with qemu-img convert"
            )));
        }
        if header.crypt_method != 0 {
            return Err(unsupported(format!(
                "is encrypted (crypt_method {})",
                header.crypt_method
            )));
        }
        let unknown = header.incompatible.unsupported();
        if !unknown.is_empty() {
            let mut what = unknown.join(", ");
            if header
                .incompatible
                .has(IncompatFeatures::EXTERNAL_DATA_FILE)
            {
                if let Some(name) = data_file_name(&head, &header) {
                    what = what.replace(
                        "an external data file",
                        &format!("an external data file '{name}'"),
                    );
                }
                what.push_str("; vmfinal never opens other files named by an image");
            }
            return Err(unsupported(format!("uses {what}")));
        }
        if header.compression_type > 1 {
            return Err(unsupported(format!(
                "unknown compression type {}",
                header.compression_type
            )));
        }
        if header.extended_l2() && header.cluster_bits < 14 {
            return Err(corrupt(
                "extended L2 entries need clusters of at least 16 KiB".into(),
            ));
        }
        if header.header_length as u64 > cs {
            return Err(corrupt(format!(
                "header length {} exceeds the cluster size",
                header.header_length
            )));
        }

        // The L1 table.
        let needed = header.l1_entries_needed();
        let l1_bytes = header.l1_size as u64 * 8;
        if (header.l1_size as u64) < needed {
            return Err(corrupt(format!(
                "L1 table has {} entries but the virtual size needs {needed}",
                header.l1_size
            )));
        }
        if l1_bytes > MAX_L1_BYTES {
            return Err(corrupt(format!(
                "absurd L1 table size: {} entries",
                header.l1_size
            )));
        }
        let l1_off = header.l1_table_offset;
        if header.l1_size > 0
            && (l1_off % cs != 0 || l1_off.checked_add(l1_bytes).is_none_or(|e| e > file_len))
        {
            return Err(corrupt(format!(
                "L1 table at offset {l1_off} ({l1_bytes} bytes) is misaligned or past the end of the file ({file_len} bytes)"
            )));
        }
        let mut raw = vec![0u8; l1_bytes as usize];
        file.read_exact_at(&mut raw, l1_off)
            .map_err(|e| io_err(path, e))?;
        let mut l1 = Vec::with_capacity(header.l1_size as usize);
        for i in 0..header.l1_size as usize {
            let e = table_entry(&raw, i);
            let off = e & ENTRY_OFFSET_MASK;
            if off != 0 && (off % cs != 0 || off.checked_add(cs).is_none_or(|end| end > file_len)) {
                return Err(corrupt(format!(
                    "L1 entry {i} points to an L2 table at offset {off}, misaligned or past the end of the file ({file_len} bytes)"
                )));
            }
            l1.push(off);
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            file_len,
            header,
            l1,
            l2_cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Host offsets of the active L2 tables (0 where none), by L1 index.
    pub fn l1_offsets(&self) -> &[u64] {
        &self.l1
    }

    fn corrupt(&self, what: String) -> ImageError {
        ImageError::Corrupt {
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

    fn pread(&self, buf: &mut [u8], off: u64, what: &str) -> Result<()> {
        let end = off.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.file_len) {
            return Err(self.truncated(format!(
                "{what} at offset {off} ({} bytes) lies past the end of the file ({} bytes)",
                buf.len(),
                self.file_len
            )));
        }
        self.file.read_exact_at(buf, off).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.truncated(format!("short read of {what} at offset {off}"))
            } else {
                io_err(&self.path, e)
            }
        })
    }

    /// The L2 table at host offset `off` (entries, or entry/bitmap pairs).
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
            if cache.len() >= L2_CACHE_TABLES {
                cache.clear();
            }
            cache.insert(off, t.clone());
        }
        Ok(t)
    }

    fn l2_entry(&self, gc: u64) -> Result<Option<L2Entry>> {
        let per = self.header.l2_entries();
        let l1i = (gc / per) as usize;
        let l2_off = match self.l1.get(l1i) {
            Some(&o) if o != 0 => o,
            _ => return Ok(None),
        };
        let t = self.l2_table(l2_off)?;
        let i = (gc % per) as usize;
        Ok(Some(if self.header.extended_l2() {
            L2Entry {
                entry: t[i * 2],
                bitmap: t[i * 2 + 1],
            }
        } else {
            L2Entry {
                entry: t[i],
                bitmap: 0,
            }
        }))
    }

    /// Checks an L2 entry's host range against the file.
    fn check_entry(&self, gc: u64, e: L2Entry) -> Result<()> {
        let cs = self.header.cluster_size();
        match decode_l2(e.entry, self.header.cluster_bits, self.header.version) {
            ClusterMapping::Standard(_) | ClusterMapping::Zero
                if e.entry & ENTRY_OFFSET_MASK != 0 =>
            {
                let off = e.entry & ENTRY_OFFSET_MASK;
                if off % cs != 0
                    || off
                        .checked_add(cs)
                        .is_none_or(|end| end > self.file_len.next_multiple_of(cs))
                {
                    return Err(self.corrupt(format!(
                        "guest cluster {gc}: data at offset {off} is misaligned or past the end of the file ({} bytes)",
                        self.file_len
                    )));
                }
            }
            ClusterMapping::Compressed { offset, .. } if offset >= self.file_len => {
                return Err(self.corrupt(format!(
                    "guest cluster {gc}: compressed data at offset {offset} is past the end of the file ({} bytes)",
                    self.file_len
                )));
            }
            _ => {}
        }
        Ok(())
    }

    /// Reads guest cluster `gc` from `start` (bytes within the cluster) into `out`.
    fn read_cluster(&self, gc: u64, start: u64, out: &mut [u8]) -> Result<()> {
        let e = match self.l2_entry(gc)? {
            Some(e) => e,
            None => {
                out.fill(0);
                return Ok(());
            }
        };
        self.check_entry(gc, e)?;
        let cs = self.header.cluster_size();
        if e.entry & L2_COMPRESSED != 0 {
            let data = self.decompress(gc, e.entry)?;
            out.copy_from_slice(&data[start as usize..start as usize + out.len()]);
            return Ok(());
        }
        let host = e.entry & ENTRY_OFFSET_MASK;
        if !self.header.extended_l2() {
            if e.entry & L2_ZERO != 0 && self.header.version >= 3 || host == 0 {
                out.fill(0);
                return Ok(());
            }
            return self.pread(out, host + start, &format!("data of guest cluster {gc}"));
        }
        // Extended L2: per subcluster.
        let sc = cs / SUBCLUSTERS;
        let mut done = 0usize;
        while done < out.len() {
            let pos = start + done as u64;
            let i = pos / sc;
            let n = ((i + 1) * sc - pos).min((out.len() - done) as u64) as usize;
            let alloc = e.bitmap & (1 << i) != 0;
            let zero = e.bitmap & (1 << (32 + i)) != 0;
            let part = &mut out[done..done + n];
            if zero || !alloc {
                part.fill(0);
            } else if host == 0 {
                return Err(self.corrupt(format!(
                    "guest cluster {gc}: allocated subcluster without a host offset"
                )));
            } else {
                self.pread(part, host + pos, &format!("data of guest cluster {gc}"))?;
            }
            done += n;
        }
        Ok(())
    }

    /// Decompresses the compressed cluster described by `entry`.
    fn decompress(&self, gc: u64, entry: u64) -> Result<Vec<u8>> {
        let cs = self.header.cluster_size() as usize;
        let (off, len) =
            super::format::compressed_layout(entry & !L2_COMPRESSED, self.header.cluster_bits);
        // The last stream may end before its final sector is in the file.
        let avail = len.min(self.file_len.saturating_sub(off));
        let mut c = vec![0u8; avail as usize];
        self.pread(
            &mut c,
            off,
            &format!("compressed data of guest cluster {gc}"),
        )?;
        let mut out = Vec::with_capacity(cs);
        let ok = match self.header.compression_type {
            0 => {
                let mut d = flate2::Decompress::new(false);
                d.decompress_vec(&c, &mut out, flate2::FlushDecompress::Finish)
                    .is_ok()
            }
            _ => match zstd::zstd_safe::find_frame_compressed_size(&c) {
                Ok(n) => {
                    out.resize(cs, 0);
                    match zstd::bulk::Decompressor::new()
                        .and_then(|mut d| d.decompress_to_buffer(&c[..n], &mut out))
                    {
                        Ok(got) => {
                            out.truncate(got);
                            true
                        }
                        Err(_) => false,
                    }
                }
                Err(_) => false,
            },
        };
        if !ok || out.len() != cs {
            let what = format!(
                "guest cluster {gc}: compressed data at offset {off} does not decompress to a whole cluster"
            );
            return Err(if avail < len {
                self.truncated(what)
            } else {
                self.corrupt(what)
            });
        }
        Ok(out)
    }
}

/// Reads a name stored in the file (backing file), for error messages only.
fn read_string(file: &File, file_len: u64, off: u64, len: u64) -> String {
    let len = len.min(1023);
    if off.checked_add(len).is_none_or(|e| e > file_len) {
        return "(name past end of file)".into();
    }
    let mut b = vec![0u8; len as usize];
    match file.read_exact_at(&mut b, off) {
        Ok(()) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => "(unreadable name)".into(),
    }
}

/// The external data file's name from the header extensions, if present.
fn data_file_name(head: &[u8], h: &Header) -> Option<String> {
    let mut at = h.header_length as usize;
    for _ in 0..64 {
        let t = u32::from_be_bytes(head.get(at..at + 4)?.try_into().ok()?);
        let l = u32::from_be_bytes(head.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        if t == EXT_END {
            return None;
        }
        if t == EXT_DATA_FILE {
            return Some(String::from_utf8_lossy(head.get(at + 8..at + 8 + l)?).into_owned());
        }
        at = at.checked_add(8 + l.next_multiple_of(8))?;
    }
    None
}

impl BlockSource for Qcow2Image {
    fn format(&self) -> ImageFormat {
        ImageFormat::Qcow2
    }
    fn virtual_size(&self) -> u64 {
        self.header.size
    }
    fn data_extents(&self) -> Result<Vec<Extent>> {
        let cs = self.header.cluster_size();
        let per = self.header.l2_entries();
        let sc = cs / SUBCLUSTERS;
        let mut out = Vec::new();
        for (l1i, &l2_off) in self.l1.iter().enumerate() {
            if l2_off == 0 {
                continue;
            }
            let t = self.l2_table(l2_off)?;
            for i in 0..per {
                let gc = l1i as u64 * per + i;
                let start = gc * cs;
                if start >= self.header.size {
                    break;
                }
                let e = if self.header.extended_l2() {
                    L2Entry {
                        entry: t[i as usize * 2],
                        bitmap: t[i as usize * 2 + 1],
                    }
                } else {
                    L2Entry {
                        entry: t[i as usize],
                        bitmap: 0,
                    }
                };
                self.check_entry(gc, e)?;
                if e.entry & L2_COMPRESSED != 0 {
                    out.push(Extent::new(start, cs));
                } else if self.header.extended_l2() {
                    for s in 0..SUBCLUSTERS {
                        if e.bitmap & (1 << s) != 0 && e.bitmap & (1 << (32 + s)) == 0 {
                            out.push(Extent::new(start + s * sc, sc));
                        }
                    }
                } else if matches!(
                    decode_l2(e.entry, self.header.cluster_bits, self.header.version),
                    ClusterMapping::Standard(_)
                ) {
                    out.push(Extent::new(start, cs));
                }
            }
        }
        let size = self.header.size;
        Ok(extent::clip(&extent::normalize(out), 0, size))
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
        self.file
            .metadata()
            .map(|m| super::super::allocated_bytes(&m))
            .unwrap_or(0)
    }
    fn preferred_read_size(&self) -> Option<u64> {
        Some(self.header.cluster_size())
    }
    fn details(&self) -> serde_json::Value {
        let h = &self.header;
        serde_json::json!({
            "version": h.version,
            "cluster_size": h.cluster_size(),
            "compression_type": if h.compression_type == 1 { "zstd" } else { "zlib" },
            "refcount_bits": 1u64 << h.refcount_order,
            "extended_l2": h.extended_l2(),
            "dirty": h.incompatible.has(IncompatFeatures::DIRTY),
            "l1_entries": h.l1_size,
            "snapshots": h.nb_snapshots,
        })
    }
}
