//! Free space inside btrfs data block groups: each data block group's
//! range minus the extents the extent tree records in it. Second source:
//! those extents must add up to the block group item's `used` bytes. Only
//! pure data block groups (not metadata, system or mixed) are read.
//! Third source: no data checksum (the checksum tree's items, `csums`,
//! logical ranges) may lie in space the extent tree calls free.
//! Refused (nothing inside chunks skipped): a balance in progress.

use super::tree::{self, Chunk, Expect, Key, ReadBlock};
use crate::bytes::le64;
use crate::extent::{self, Extent};

const EXTENT_ITEM_KEY: u8 = 168;
const BLOCK_GROUP_ITEM_KEY: u8 = 192;
const BG_DATA: u64 = 0x1;
const BG_TYPE_MASK: u64 = 0x7;

/// Logical free ranges of the data block groups of the extent tree rooted
/// at `root` (block group items in it, or in the tree at `bg_root`), as
/// physical ranges on device `devid` through `chunks`.
pub fn data_free(
    root: (u64, u8),
    bg_root: Option<(u64, u8)>,
    e: &Expect,
    chunks: &[Chunk],
    devid: u64,
    csums: &[Extent],
    read: &mut ReadBlock,
) -> Result<Vec<Extent>, String> {
    let mut groups: Vec<(u64, u64, u64)> = Vec::new(); // (start, length, used)
    let mut extents: Vec<(u64, u64)> = Vec::new();
    let visit = |k: Key, d: &[u8], groups: &mut Vec<(u64, u64, u64)>| -> Result<(), String> {
        if k.kind == BLOCK_GROUP_ITEM_KEY {
            if d.len() < 24 {
                return Err("truncated block group item".into());
            }
            if le64(d, 16) & BG_TYPE_MASK == BG_DATA {
                groups.push((k.objectid, k.offset, le64(d, 0)));
            }
        }
        Ok(())
    };
    tree::walk(root.0, root.1, e, read, &mut |k, d| {
        if k.kind == EXTENT_ITEM_KEY {
            extents.push((k.objectid, k.offset));
        }
        if bg_root.is_none() {
            visit(k, d, &mut groups)?;
        }
        Ok(())
    })
    .map_err(|m| format!("extent tree: {m}"))?;
    if let Some((at, level)) = bg_root {
        tree::walk(at, level, e, read, &mut |k, d| visit(k, d, &mut groups))
            .map_err(|m| format!("block group tree: {m}"))?;
    }
    extents.sort_unstable();
    let mut out = Vec::new();
    for &(start, len, used) in &groups {
        let end = start.checked_add(len).ok_or("block group overflows")?;
        let chunk = chunks
            .iter()
            .find(|c| c.logical == start && c.length == len)
            .ok_or_else(|| format!("block group at {start} has no chunk"))?;
        let from = extents.partition_point(|x| x.0 < start);
        let inside: Vec<Extent> = extents[from..]
            .iter()
            .take_while(|x| x.0 < end)
            .map(|&(s, l)| Extent::new(s, l))
            .collect();
        let total: u64 = inside.iter().map(|x| x.len).sum();
        if total != used || inside.iter().any(|x| x.end() > end) {
            return Err(format!(
                "block group at {start}: its extents hold {total} bytes, its item says {used}"
            ));
        }
        let inside = extent::normalize(inside);
        if extent::total(&inside) != total {
            return Err(format!("block group at {start}: extents overlap"));
        }
        for f in extent::subtract(&[Extent::new(start, len)], &inside) {
            if let Some(c) = extent::clip(csums, f.start, f.end()).first() {
                return Err(format!(
                    "block group at {start}: the checksum tree holds checksums of data at {} (+{}) that the extent tree calls free",
                    c.start, c.len
                ));
            }
            for &(d, phys) in &chunk.stripes {
                if d == devid {
                    out.push(Extent::new(phys + (f.start - start), f.len));
                }
            }
        }
    }
    Ok(extent::normalize(out))
}
