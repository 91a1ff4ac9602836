//! The ext4 probe and free-space map over a whole-disk filesystem.
#![no_main]

#[path = "../common/fs_probe.rs"]
mod fs_probe;

use libfuzzer_sys::fuzz_target;
use vmfinal::fs::ext4;

fuzz_target!(|data: &[u8]| fs_probe::run(data, ext4::detect, ext4::free_space));
