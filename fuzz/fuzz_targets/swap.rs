//! The swap probe and free-space map over a whole-disk filesystem.
#![no_main]

#[path = "../common/fs_probe.rs"]
mod fs_probe;

use libfuzzer_sys::fuzz_target;
use vmfinal::fs::swap;

fuzz_target!(|data: &[u8]| fs_probe::run(data, swap::detect, swap::free_space));
