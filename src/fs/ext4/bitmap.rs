//! ext2/3/4 block bitmaps: the first source of free space. Each bitmap's
//! checksum (metadata_csum) is verified and its free count must equal the
//! descriptor's; groups whose bitmap is not on disk (BLOCK_UNINIT) count as
//! in use. The result is a sorted map of free allocation units that the
//! inode walk then checks every in-use block against.
//!
//! Not here: deciding what is in use (`inodes`, `groups`).

use super::ExtErr;
use super::groups::{self, Descs};
use super::superblock::Super;
use crate::fs::{FsError, Region};

/// Free allocation units (clusters; blocks without bigalloc) as sorted,
/// disjoint runs `(first unit, count)`. Unit `u` is block
/// `first_data_block + u * ratio`.
#[derive(Debug, Default)]
pub struct FreeMap {
    runs: Vec<(u64, u64)>,
    /// Free units the descriptors count (uninitialised groups included).
    pub counted_units: u64,
}

impl FreeMap {
    pub fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }

    /// The first free unit in `[start, start + len)`, if any.
    pub fn first_free_in(&self, start: u64, len: u64) -> Option<u64> {
        let end = start.saturating_add(len);
        // The first run ending after `start` (runs are sorted and disjoint,
        // so their ends are sorted too).
        let i = self.runs.partition_point(|&(s, n)| s + n <= start);
        let (s, _) = *self.runs.get(i)?;
        (s < end).then(|| s.max(start))
    }

    fn push(&mut self, start: u64, len: u64) {
        match self.runs.last_mut() {
            Some((s, n)) if *s + *n == start => *n += len,
            _ => self.runs.push((start, len)),
        }
    }
}

/// Reads every group's block bitmap into a [`FreeMap`].
pub fn read_free_map(r: &Region, sb: &Super) -> Result<FreeMap, FsError> {
    let e = ExtErr(sb.name);
    let mut descs = Descs::new(r, sb);
    let mut map = FreeMap::default();
    let bitmap_len = (sb.units_per_group / 8) as usize;
    let total_units = sb.total_units();
    for g in 0..sb.groups {
        let d = descs.get(g)?;
        map.counted_units += d.free_units;
        // Not on disk (or, without checksums, of unknown meaning): in use.
        if d.flags & groups::BG_BLOCK_UNINIT != 0 {
            continue;
        }
        let block = r.read(d.block_bitmap * sb.block, sb.block as usize)?;
        let bitmap = &block[..bitmap_len];
        if !groups::bitmap_csum_ok(
            sb,
            bitmap,
            d.block_bitmap_csum,
            groups::block_csum_has_hi(sb),
        ) {
            return Err(e.inconsistent(format!("group {g}: block bitmap checksum mismatch")));
        }
        let first_unit = g * sb.units_per_group;
        let n_units = sb
            .units_per_group
            .min(total_units.saturating_sub(first_unit));
        let free = scan_bits(bitmap, n_units, |s, n| map.push(first_unit + s, n));
        if free != d.free_units {
            return Err(e.inconsistent(format!(
                "group {g}: the block bitmap has {free} free clusters, the descriptor says {}",
                d.free_units
            )));
        }
    }
    Ok(map)
}

/// Calls `run(first, count)` for each run of clear bits among the first
/// `n` bits of `bitmap` (`n <= 8 * bitmap.len()`); returns the clear bits.
fn scan_bits(bitmap: &[u8], n: u64, mut run: impl FnMut(u64, u64)) -> u64 {
    let mut total = 0;
    let mut start: Option<u64> = None;
    let mut i = 0u64;
    while i < n {
        let byte = bitmap.get((i / 8) as usize).copied().unwrap_or(0xFF);
        // Whole bytes at once where possible.
        if i % 8 == 0 && i + 8 <= n && (byte == 0 || byte == 0xFF) {
            match (byte == 0, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    run(s, i - s);
                    total += i - s;
                    start = None;
                }
                _ => {}
            }
            i += 8;
            continue;
        }
        let free = byte & (1 << (i % 8)) == 0;
        match (free, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                run(s, i - s);
                total += i - s;
                start = None;
            }
            _ => {}
        }
        i += 1;
    }
    if let Some(s) = start {
        run(s, n - s);
        total += n - s;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_clear_bits() {
        let mut v = Vec::new();
        let n = scan_bits(&[0b1111_0001, 0x00, 0xFF, 0b0111_1111], 32, |s, n| {
            v.push((s, n))
        });
        assert_eq!(v, vec![(1, 3), (8, 8), (31, 1)]);
        assert_eq!(n, 12);
        // A bit count that is not a multiple of 8, and a short bitmap.
        let mut v = Vec::new();
        scan_bits(&[0x00], 13, |s, n| v.push((s, n)));
        assert_eq!(v, vec![(0, 8)]);
    }

    #[test]
    fn lookup() {
        let mut m = FreeMap::default();
        m.push(10, 5);
        m.push(15, 5); // merged
        m.push(40, 1);
        assert_eq!(m.runs(), &[(10, 10), (40, 1)]);
        assert_eq!(m.first_free_in(0, 10), None);
        assert_eq!(m.first_free_in(0, 11), Some(10));
        assert_eq!(m.first_free_in(19, 100), Some(19));
        assert_eq!(m.first_free_in(20, 20), None);
        assert_eq!(m.first_free_in(20, 21), Some(40));
        assert_eq!(m.first_free_in(41, u64::MAX), None);
    }
}
