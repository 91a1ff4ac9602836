//! `vmfinal check` for qcow2: rebuilds every cluster's refcount from the
//! tables (header, L1, L2 tables, data and compressed clusters, refcount
//! table and blocks) and compares it with the refcounts on disk, as
//! `qemu-img check` does. More references than the stored refcount is
//! corruption; a stored refcount above the references is a leak.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::format::{
    ENTRY_OFFSET_MASK, L2_COMPRESSED, REFTABLE_OFFSET_MASK, compressed_layout, table_entry,
};
use super::reader::Qcow2Image;
use crate::image::{ImageError, io_err};

/// Findings of a check.
#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub corruptions: Vec<String>,
    pub leaks: u64,
    pub clusters: u64,
    pub notes: Vec<String>,
}

impl CheckReport {
    pub fn exit_code(&self) -> i32 {
        if !self.corruptions.is_empty() {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }
}

/// Checks a qcow2 file. `Err` means it could not be checked at all.
pub fn check(path: &Path) -> Result<CheckReport, ImageError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let img = Qcow2Image::open(file.try_clone().map_err(|e| io_err(path, e))?, path)?;
    let h = img.header().clone();
    let cs = h.cluster_size();
    let nclusters = len.div_ceil(cs);
    let mut rep = CheckReport {
        clusters: nclusters,
        ..Default::default()
    };
    let mut refs = vec![0u32; nclusters as usize];
    let mut add = |rep: &mut CheckReport, off: u64, n: u64, what: &str| {
        if n == 0 {
            return;
        }
        let first = off / cs;
        let last = (off.saturating_add(n) - 1) / cs;
        if first >= nclusters {
            rep.corruptions.push(format!(
                "{what} at offset {off} is past the end of the file"
            ));
            return;
        }
        for c in first..=last.min(nclusters - 1) {
            refs[c as usize] = refs[c as usize].saturating_add(1);
        }
    };

    add(&mut rep, 0, cs, "header");
    add(
        &mut rep,
        h.l1_table_offset,
        (h.l1_size as u64 * 8).next_multiple_of(cs),
        "L1 table",
    );
    let per = h.l2_entries() as usize;
    let stride = if h.extended_l2() { 2 } else { 1 };
    for (l1i, &l2) in img.l1_offsets().iter().enumerate() {
        if l2 == 0 {
            continue;
        }
        add(&mut rep, l2, cs, &format!("L2 table {l1i}"));
        let t = img.l2_table(l2)?;
        for i in 0..per {
            let e = t[i * stride];
            if e & L2_COMPRESSED != 0 {
                let (off, n) = compressed_layout(e & !L2_COMPRESSED, h.cluster_bits);
                let n = n.min(len.saturating_sub(off)).max(1);
                add(&mut rep, off, n, "compressed cluster");
            } else {
                let off = e & ENTRY_OFFSET_MASK;
                if off != 0 {
                    if off % cs != 0 {
                        rep.corruptions
                            .push(format!("L2 table {l1i} entry {i}: misaligned offset {off}"));
                    }
                    add(&mut rep, off, cs, "data cluster");
                }
            }
        }
    }

    // Refcount table and blocks.
    let rt_off = h.refcount_table_offset;
    let rt_len = h.refcount_table_clusters as u64 * cs;
    if rt_off % cs != 0 || rt_off.checked_add(rt_len).is_none_or(|e| e > len) {
        rep.corruptions.push(format!(
            "refcount table at offset {rt_off} is misaligned or past the end of the file"
        ));
        return Ok(rep);
    }
    add(&mut rep, rt_off, rt_len, "refcount table");
    let mut rt = vec![0u8; rt_len as usize];
    file.read_exact_at(&mut rt, rt_off)
        .map_err(|e| io_err(path, e))?;
    let bits = 1u64 << h.refcount_order;
    let per_block = cs * 8 / bits;
    let mut stored = vec![0u64; nclusters as usize];
    let mut block = vec![0u8; cs as usize];
    for b in 0..(rt_len / 8) as usize {
        let off = table_entry(&rt, b) & REFTABLE_OFFSET_MASK;
        if off == 0 {
            continue;
        }
        if off % cs != 0 || off.checked_add(cs).is_none_or(|e| e > len) {
            rep.corruptions.push(format!(
                "refcount block {b} at offset {off} is misaligned or past the end of the file"
            ));
            continue;
        }
        add(&mut rep, off, cs, "refcount block");
        file.read_exact_at(&mut block, off)
            .map_err(|e| io_err(path, e))?;
        for j in 0..per_block {
            let c = b as u64 * per_block + j;
            let v = refcount_at(&block, j, bits);
            if c < nclusters {
                stored[c as usize] = v;
            } else if v != 0 {
                rep.leaks += 1;
            }
        }
    }
    if h.nb_snapshots > 0 {
        rep.notes.push(format!(
            "{} internal snapshots: their tables are not walked, refcounts not compared",
            h.nb_snapshots
        ));
        return Ok(rep);
    }
    for c in 0..nclusters as usize {
        let (want, have) = (refs[c] as u64, stored[c]);
        if have < want {
            rep.corruptions.push(format!(
                "cluster {c} (offset {}) is referenced {want} times but its refcount is {have}",
                c as u64 * cs
            ));
        } else if have > want {
            rep.leaks += 1;
        }
    }
    Ok(rep)
}

/// The `i`th refcount of `bits` width in a big-endian refcount block.
fn refcount_at(block: &[u8], i: u64, bits: u64) -> u64 {
    if bits >= 8 {
        let w = (bits / 8) as usize;
        let at = i as usize * w;
        block[at..at + w]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64)
    } else {
        let bit = i * bits;
        let byte = block[(bit / 8) as usize];
        // Sub-byte refcounts are stored from the least significant bit.
        ((byte >> (bit % 8)) as u64) & ((1 << bits) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_widths() {
        let b = [0x12u8, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0];
        assert_eq!(refcount_at(&b, 0, 16), 0x1234);
        assert_eq!(refcount_at(&b, 1, 32), 0x9abc_def0);
        assert_eq!(refcount_at(&b, 0, 64), 0x1234_5678_9abc_def0);
        assert_eq!(refcount_at(&b, 1, 8), 0x34);
        assert_eq!(refcount_at(&b, 1, 4), 0x1);
        assert_eq!(refcount_at(&b, 0, 4), 0x2);
    }
}
