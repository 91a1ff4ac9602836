//! The btrfs probe and free-space map over a whole-disk filesystem, on a
//! sparse in-memory disk (see common/sparse.rs for the input's form).
#![no_main]

#[path = "../common/sparse.rs"]
mod sparse;

use libfuzzer_sys::fuzz_target;
use vmfinal::fs::btrfs;

fuzz_target!(|data: &[u8]| sparse::run(data, btrfs::detect, btrfs::free_space));
