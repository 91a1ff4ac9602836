//! `vmfinal check` for qcow2: rebuilds every cluster's refcount from the
//! tables, as `qemu-img check` does (header, active and snapshot L1 tables,
//! their L2 tables and data and compressed clusters, the snapshot table,
//! persistent bitmaps, the refcount table and blocks), then compares it
//! with the refcounts on disk. More references than the stored refcount is
//! corruption; a stored refcount above the references is a leak.
//!
//! Memory and time follow the file, not the header: references are a list
//! of (cluster, count) pairs; each distinct L2 table is read once however
//! many L1 entries name it; tables in holes of a sparse file are not read.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::entry::{
    ClusterMapping, EntryError, bitmap_table_offset, decode_entry, is_copied, l1_offset, l2_entry,
    refcount_get, refcounts_per_block, reftable_offset, standard_offset,
};
use super::format::{
    AUTOCLEAR_BITMAPS, MAX_BITMAP_DIRECTORY_BYTES, MAX_BITMAPS, MAX_L1_BYTES, parse_bitmap_entry,
    parse_snapshot_entry, table_entry,
};
use super::reader::Qcow2Image;
use crate::image::ImageError;
use crate::image::host::HostFile;

/// Error messages kept (all are counted).
const MAX_MESSAGES: usize = 1000;
/// The snapshot table is at most 1 KiB per snapshot (QEMU's limit).
const MAX_SNAPSHOT_TABLE_BYTES: u64 = 1024 * 65536;
/// Entries of one bitmap table, at most (QEMU's BME_MAX_TABLE_SIZE).
const MAX_BITMAP_TABLE_ENTRIES: u64 = 0x800_0000;

/// Findings of a check.
#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    /// Number of corruptions found.
    pub corruptions: u64,
    /// The first corruptions, as sentences.
    pub messages: Vec<String>,
    pub leaks: u64,
    /// Clusters in the file.
    pub clusters: u64,
    pub notes: Vec<String>,
}

impl CheckReport {
    pub fn exit_code(&self) -> i32 {
        if self.corruptions > 0 {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }

    fn corrupt(&mut self, msg: String) {
        self.corruptions += 1;
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(msg);
        }
    }
}

/// References found by walking the tables.
struct Refs {
    cs: u64,
    file_len: u64,
    nclusters: u64,
    /// (cluster, count), unsorted.
    list: Vec<(u64, u64)>,
    /// End of the last referenced byte.
    max_end: u64,
}

impl Refs {
    /// Counts `n` references to every cluster of `[off, off + len)`.
    fn add(&mut self, rep: &mut CheckReport, off: u64, len: u64, n: u64, what: &str) {
        if len == 0 || n == 0 {
            return;
        }
        let Some(end) = off
            .checked_add(len)
            .filter(|&e| e <= self.nclusters * self.cs)
        else {
            rep.corrupt(format!(
                "{what} at offset {off} ({len} bytes) lies past the end of the file ({} bytes)",
                self.file_len
            ));
            return;
        };
        self.max_end = self.max_end.max(end.min(self.file_len));
        for c in off / self.cs..=(end - 1) / self.cs {
            self.list.push((c, n));
        }
    }
}

fn read_vec(img: &Qcow2Image, off: u64, len: u64, what: &str) -> Result<Vec<u8>, ImageError> {
    let mut b = vec![0u8; len as usize];
    img.pread(&mut b, off, what)?;
    Ok(b)
}

/// Checks a qcow2 image opened with `Qcow2Image::inspect`.
pub fn check(img: &Qcow2Image) -> Result<CheckReport, ImageError> {
    let mut rep = CheckReport::default();
    let refs = collect(img, &mut rep)?;
    compare(img, refs, &mut rep)?;
    Ok(rep)
}

/// The end of the last byte the image's tables reference: a file much
/// longer than this holds data no table accounts for.
pub fn referenced_end(img: &Qcow2Image) -> Result<u64, ImageError> {
    let mut rep = CheckReport::default();
    Ok(collect(img, &mut rep)?.max_end)
}

/// Opens `path` and checks it.
pub fn check_path(host: Box<dyn HostFile>, path: &Path) -> Result<CheckReport, ImageError> {
    check(&Qcow2Image::inspect(host, path)?)
}

fn collect(img: &Qcow2Image, rep: &mut CheckReport) -> Result<Refs, ImageError> {
    let h = img.header().clone();
    let cs = h.cluster_size();
    let file_len = img.file_len();
    let mut refs = Refs {
        cs,
        file_len,
        nclusters: file_len.div_ceil(cs),
        list: Vec::new(),
        max_end: 0,
    };
    rep.clusters = refs.nclusters;
    refs.add(rep, 0, cs, 1, "header");

    // Every L1 table: the active one, then each snapshot's. L2 tables are
    // counted per L1 entry naming them and read once.
    let mut l2_uses: HashMap<u64, u64> = HashMap::new();
    let mut note_l1 = |rep: &mut CheckReport, refs: &mut Refs, entries: &[u64], what: &str| {
        for (i, &off) in entries.iter().enumerate() {
            if off == 0 {
                continue;
            }
            if off % cs != 0 {
                rep.corrupt(format!(
                    "{what} entry {i}: L2 table offset {off} is not cluster aligned"
                ));
                continue;
            }
            refs.add(rep, off, cs, 1, &format!("{what} entry {i}: L2 table"));
            if off < refs.nclusters * cs {
                *l2_uses.entry(off).or_insert(0) += 1;
            }
        }
    };
    refs.add(
        rep,
        h.l1_table_offset,
        (h.l1_size as u64 * 8).next_multiple_of(cs),
        1,
        "L1 table",
    );
    note_l1(rep, &mut refs, img.l1_offsets(), "L1");

    if h.nb_snapshots > 0 {
        if h.snapshots_offset % cs != 0 {
            rep.corrupt(format!(
                "snapshot table offset {} is not cluster aligned",
                h.snapshots_offset
            ));
        } else {
            let avail = file_len
                .saturating_sub(h.snapshots_offset)
                .min(MAX_SNAPSHOT_TABLE_BYTES);
            let table = read_vec(img, h.snapshots_offset, avail, "snapshot table")?;
            let mut at = 0usize;
            for s in 0..h.nb_snapshots {
                let Some((len, l1)) = table.get(at..).and_then(parse_snapshot_entry) else {
                    rep.corrupt(format!("snapshot {s}: entry lies past the end of the file"));
                    break;
                };
                at += len;
                let bytes = l1.l1_size as u64 * 8;
                if bytes > MAX_L1_BYTES || l1.l1_table_offset % cs != 0 {
                    rep.corrupt(format!(
                        "snapshot {s}: L1 table ({} entries at offset {}) is misaligned or too large",
                        l1.l1_size, l1.l1_table_offset
                    ));
                    continue;
                }
                if l1
                    .l1_table_offset
                    .checked_add(bytes)
                    .is_none_or(|e| e > file_len)
                {
                    rep.corrupt(format!(
                        "snapshot {s}: L1 table at offset {} lies past the end of the file",
                        l1.l1_table_offset
                    ));
                    continue;
                }
                refs.add(
                    rep,
                    l1.l1_table_offset,
                    bytes.next_multiple_of(cs),
                    1,
                    &format!("snapshot {s} L1 table"),
                );
                let raw = read_vec(img, l1.l1_table_offset, bytes, "snapshot L1 table")?;
                let entries: Vec<u64> = (0..l1.l1_size as usize)
                    .map(|i| l1_offset(table_entry(&raw, i)))
                    .collect();
                note_l1(rep, &mut refs, &entries, &format!("snapshot {s} L1"));
            }
            refs.add(rep, h.snapshots_offset, at as u64, 1, "snapshot table");
        }
    }

    // With an external data file, data clusters live there and are not
    // refcounted here (as in QEMU).
    let data_here = !h
        .incompatible
        .has(super::format::IncompatFeatures::EXTERNAL_DATA_FILE);
    // Each distinct L2 table, once.
    let mut tables: Vec<(u64, u64)> = l2_uses.into_iter().collect();
    tables.sort_unstable();
    for (off, uses) in tables {
        if uses > 1 {
            rep.notes.push(format!(
                "the L2 table at offset {off} is named by {uses} L1 entries"
            ));
        }
        if img.is_hole(off, cs) || off + cs > file_len {
            continue;
        }
        let t = img.l2_table(off)?;
        let per = h.l2_entries() as usize;
        for i in 0..per {
            let (entry, bitmap) = l2_entry(&t, i, h.extended_l2());
            let what =
                |e: &dyn std::fmt::Display| format!("L2 table at offset {off}, entry {i}: {e}");
            match decode_entry(entry, bitmap, h.cluster_bits, h.version) {
                Ok(ClusterMapping::Compressed { offset, len }) => {
                    if is_copied(entry) {
                        rep.corrupt(what(&"compressed cluster with the copied flag set"));
                    }
                    if bitmap.is_some_and(|b| b != 0) {
                        rep.corrupt(what(&"compressed cluster with a subcluster bitmap"));
                    }
                    if offset >= file_len {
                        rep.corrupt(what(&format!(
                            "compressed data at offset {offset} lies past the end of the file"
                        )));
                        continue;
                    }
                    let n = len.min(file_len - offset).max(1);
                    refs.add(rep, offset, n, uses, "compressed cluster");
                }
                Ok(ClusterMapping::Standard(host))
                | Ok(ClusterMapping::Subclusters { host, .. })
                    if host != 0 && data_here =>
                {
                    refs.add(rep, host, cs, uses, "data cluster");
                }
                Ok(ClusterMapping::Zero) if standard_offset(entry) != 0 && data_here => {
                    refs.add(rep, standard_offset(entry), cs, uses, "zero cluster");
                }
                Ok(_) => {}
                Err(EntryError::ZeroInV2) => {
                    rep.corrupt(what(&EntryError::ZeroInV2));
                    let host = standard_offset(entry);
                    if host != 0 {
                        refs.add(rep, host, cs, uses, "data cluster");
                    }
                }
                Err(e) => rep.corrupt(what(&e)),
            }
        }
    }

    // Persistent dirty bitmaps (only while the autoclear bit says they are valid).
    if let Some((count, dir_size, dir_off)) = img.extensions().bitmaps
        && h.autoclear & AUTOCLEAR_BITMAPS != 0
    {
        if count > MAX_BITMAPS || dir_size > MAX_BITMAP_DIRECTORY_BYTES || dir_off % cs != 0 {
            rep.corrupt(format!(
                "bitmap directory ({count} bitmaps, {dir_size} bytes at offset {dir_off}) is misaligned or too large"
            ));
        } else if dir_off.checked_add(dir_size).is_none_or(|e| e > file_len) {
            rep.corrupt(format!(
                "bitmap directory at offset {dir_off} lies past the end of the file"
            ));
        } else {
            refs.add(rep, dir_off, dir_size, 1, "bitmap directory");
            let dir = read_vec(img, dir_off, dir_size, "bitmap directory")?;
            let mut at = 0usize;
            for b in 0..count {
                let Some((len, t)) = dir.get(at..).and_then(parse_bitmap_entry) else {
                    rep.corrupt(format!("bitmap {b}: directory entry is truncated"));
                    break;
                };
                at += len;
                let bytes = t.entries as u64 * 8;
                if t.entries as u64 > MAX_BITMAP_TABLE_ENTRIES
                    || t.offset % cs != 0
                    || t.offset.checked_add(bytes).is_none_or(|e| e > file_len)
                {
                    rep.corrupt(format!(
                        "bitmap {b}: table at offset {} ({} entries) is misaligned, too large or past the end of the file",
                        t.offset, t.entries
                    ));
                    continue;
                }
                refs.add(rep, t.offset, bytes, 1, &format!("bitmap {b} table"));
                let raw = read_vec(img, t.offset, bytes, "bitmap table")?;
                for i in 0..t.entries as usize {
                    let off = bitmap_table_offset(table_entry(&raw, i));
                    if off != 0 {
                        refs.add(rep, off, cs, 1, &format!("bitmap {b} data"));
                    }
                }
            }
        }
    }

    // The refcount table itself (its blocks are counted in `compare`).
    let rt_len = h.refcount_table_clusters as u64 * cs;
    refs.add(rep, h.refcount_table_offset, rt_len, 1, "refcount table");
    Ok(refs)
}

fn compare(img: &Qcow2Image, mut refs: Refs, rep: &mut CheckReport) -> Result<(), ImageError> {
    let h = img.header();
    let cs = refs.cs;
    let file_len = refs.file_len;
    let rt_off = h.refcount_table_offset;
    let rt_len = h.refcount_table_clusters as u64 * cs;
    if rt_off.checked_add(rt_len).is_none_or(|e| e > file_len) {
        rep.corrupt(format!(
            "refcount table at offset {rt_off} lies past the end of the file"
        ));
        return Ok(());
    }
    let rt = read_vec(img, rt_off, rt_len, "refcount table")?;
    let bits = h.refcount_bits();
    let per_block = refcounts_per_block(cs, bits);
    // Stored refcounts, in cluster order: (cluster, refcount) for non-zero ones.
    let mut stored: Vec<(u64, u64)> = Vec::new();
    let mut seen = HashSet::new();
    let mut block = vec![0u8; cs as usize];
    for b in 0..(rt_len / 8) as usize {
        let off = reftable_offset(table_entry(&rt, b));
        if off == 0 {
            continue;
        }
        if off % cs != 0
            || off
                .checked_add(cs)
                .is_none_or(|e| e > file_len.next_multiple_of(cs))
        {
            rep.corrupt(format!(
                "refcount block {b} at offset {off} is misaligned or past the end of the file"
            ));
            continue;
        }
        refs.add(rep, off, cs, 1, "refcount block");
        if !seen.insert(off) || img.is_hole(off, cs) {
            continue;
        }
        let avail = (file_len - off).min(cs) as usize;
        block.fill(0);
        img.pread(&mut block[..avail], off, "refcount block")?;
        // Only the bytes in the file can be non-zero; zero words are skipped.
        let first = b as u64 * per_block;
        let per_word = 64 / bits;
        for (w, word) in block[..avail.next_multiple_of(8).min(block.len())]
            .chunks(8)
            .enumerate()
        {
            if word.iter().all(|&x| x == 0) {
                continue;
            }
            for k in 0..per_word {
                let j = w as u64 * per_word + k;
                let v = refcount_get(&block, j, bits);
                if v != 0 {
                    stored.push((first + j, v));
                }
            }
        }
    }
    let mut want = std::mem::take(&mut refs.list);
    want.sort_unstable();
    // Merge: walk both sorted lists.
    let (mut i, mut j) = (0usize, 0usize);
    while i < want.len() || j < stored.len() {
        let next_w = want.get(i).map(|x| x.0);
        let next_s = stored.get(j).map(|x| x.0);
        let c = match (next_w, next_s) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        let mut w = 0u64;
        while i < want.len() && want[i].0 == c {
            w = w.saturating_add(want[i].1);
            i += 1;
        }
        let s = if next_s == Some(c) {
            j += 1;
            stored[j - 1].1
        } else {
            0
        };
        if s < w {
            rep.corrupt(format!(
                "cluster {c} (offset {}) is referenced {w} times but its refcount is {s}",
                c * cs
            ));
        } else if s > w {
            rep.leaks += 1;
        }
    }
    Ok(())
}
