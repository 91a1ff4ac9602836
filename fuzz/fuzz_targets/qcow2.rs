//! qcow2: header, tables and cluster reads through the public reader, the
//! checker, and the format probe's accounting, over the file's bytes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmfinal::image::BlockSource;
use vmfinal::image::mem::MemFile;
use vmfinal::image::qcow2::{Qcow2Image, check};

/// Guest bytes read per input, at most.
const READ_BUDGET: u64 = 256 << 10;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.qcow2");
    if let Ok(img) = Qcow2Image::inspect(Box::new(MemFile(data.to_vec())), path) {
        let _ = check::check(&img);
        let _ = img.details();
    }
    let Ok(img) = Qcow2Image::open_host(Box::new(MemFile(data.to_vec())), path) else {
        return;
    };
    let size = img.virtual_size();
    let mut budget = READ_BUDGET;
    if let Ok(extents) = img.data_extents() {
        for e in extents.iter().take(64) {
            let n = e.len.min(budget).min(64 << 10);
            if n == 0 {
                break;
            }
            let mut buf = vec![0u8; n as usize];
            let _ = img.read_at(&mut buf, e.start);
            budget -= n;
        }
    }
    // Unaligned reads across cluster boundaries, and the last byte.
    if size > 0 {
        let mut buf = vec![0u8; (size.min(20_000)) as usize];
        let _ = img.read_at(&mut buf, 0);
        let mut one = [0u8; 1];
        let _ = img.read_at(&mut one, size - 1);
        let off = (size / 3).min(size - 1);
        let mut buf = vec![0u8; (size - off).min(4097) as usize];
        let _ = img.read_at(&mut buf, off);
    }
});
