//! The body every filesystem-probe fuzz target shares: the input as a
//! whole-disk region, the probe's `detect`, then its free-space map, whose
//! extents must lie inside the disk. Included by the targets with
//! `#[path]` (cargo-fuzz builds each target as a binary of this crate; a
//! module file beside them needs no library target).

use vmfinal::fs::{FsError, FsFree, Region};
use vmfinal::image::mem::MemDisk;

pub fn run(
    data: &[u8],
    detect: fn(&Region) -> bool,
    free_space: fn(&Region) -> Result<FsFree, FsError>,
) {
    let disk = MemDisk(data.to_vec());
    let r = Region {
        src: &disk,
        start: 0,
        len: data.len() as u64,
    };
    if detect(&r) {
        if let Ok(f) = free_space(&r) {
            for e in &f.free {
                assert!(e.start.checked_add(e.len).is_some_and(|end| end <= data.len() as u64));
            }
        }
    }
}
