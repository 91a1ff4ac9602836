//! The fat probe and free-space map over a whole-disk filesystem, on a
//! sparse in-memory disk (see common/sparse.rs for the input's form).
#![no_main]

#[path = "../common/sparse.rs"]
mod sparse;

use libfuzzer_sys::fuzz_target;
use vmfinal::fs::fat;

fuzz_target!(|data: &[u8]| sparse::run(data, fat::detect, fat::free_space));
