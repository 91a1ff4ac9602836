//! Output-size estimates without a conversion: an evenly spread sample of
//! the data is compressed the way the writers compress it (raw deflate at
//! level 6 for qcow2 zlib clusters, zstd level 3), and the ratio scales to
//! the whole. Used by `vmfinal analyze`.
//!
//! Not here: the writers themselves (`output::qcow2`, `output::zst`).

use crate::bytes::is_zero;
use crate::extent::{self, Extent};
use crate::image::BlockSource;
use crate::image::qcow2::deflate::RawDeflate;

/// Data sampled for the size estimates, and the sample unit.
const SAMPLE_BYTES: u64 = 64 << 20;
const SAMPLE_UNIT: u64 = 64 << 10;

/// Compresses an evenly spread sample of `ranges`; returns (sampled, zlib, zstd) bytes.
pub fn sample_ratio(src: &dyn BlockSource, ranges: &[Extent]) -> anyhow::Result<(u64, u64, u64)> {
    let total = extent::total(ranges);
    if total == 0 {
        return Ok((0, 0, 0));
    }
    let step = (total / SAMPLE_BYTES.max(1)).max(1) * SAMPLE_UNIT;
    let mut zlib = RawDeflate::new(6)?;
    let mut zstd = zstd::bulk::Compressor::new(3)?;
    let (mut sampled, mut zl, mut zs) = (0u64, 0u64, 0u64);
    let mut buf = vec![0u8; SAMPLE_UNIT as usize];
    let mut out = Vec::new();
    let mut next = 0u64; // position in the concatenation of ranges
    let mut base = 0u64;
    for r in ranges {
        while next < base + r.len {
            crate::interrupt::checkpoint("analyze")?;
            let off = r.start + (next - base);
            let len = SAMPLE_UNIT.min(r.end() - off) as usize;
            src.read_at(&mut buf[..len], off)?;
            let chunk = &buf[..len];
            sampled += len as u64;
            if !is_zero(chunk) {
                zl += if zlib.compress(chunk, &mut out, len.saturating_sub(1).max(1))? {
                    out.len() as u64
                } else {
                    len as u64
                };
                zs += zstd.compress(chunk)?.len().min(len) as u64;
            }
            next += step;
        }
        base += r.len;
    }
    Ok((sampled, zl, zs))
}
