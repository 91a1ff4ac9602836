//! The xfs probe and free-space map over a whole-disk filesystem.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmfinal::fs::{Region, xfs};
use vmfinal::image::mem::MemDisk;

fuzz_target!(|data: &[u8]| {
    let disk = MemDisk(data.to_vec());
    let r = Region {
        src: &disk,
        start: 0,
        len: data.len() as u64,
    };
    if xfs::detect(&r) {
        if let Ok(f) = xfs::free_space(&r) {
            for e in &f.free {
                assert!(e.start.checked_add(e.len).is_some_and(|end| end <= data.len() as u64));
            }
        }
    }
});
