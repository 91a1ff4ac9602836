//! The xfs probe and free-space map over a whole-disk filesystem.
#![no_main]

#[path = "../common/fs_probe.rs"]
mod fs_probe;

use libfuzzer_sys::fuzz_target;
use vmfinal::fs::xfs;

fuzz_target!(|data: &[u8]| fs_probe::run(data, xfs::detect, xfs::free_space));
