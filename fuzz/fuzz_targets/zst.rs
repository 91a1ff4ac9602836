//! Seekable .zst: seek table, frame walk, frame reads and the checker.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmfinal::image::BlockSource;
use vmfinal::image::mem::MemFile;
use vmfinal::image::zst::{self, ZstImage};

fuzz_target!(|data: &[u8]| {
    let host = MemFile(data.to_vec());
    let _ = zst::walk_frames(&host, data.len() as u64);
    let Ok(img) = ZstImage::open_host(Box::new(host), Path::new("fuzz.zst")) else {
        return;
    };
    let _ = img.data_extents();
    let _ = zst::verify(&img);
    let size = img.virtual_size();
    if size > 0 {
        let mut buf = vec![0u8; size.min(1 << 20) as usize];
        let _ = img.read_at(&mut buf, 0);
        let off = size / 2;
        let mut buf = vec![0u8; (size - off).min(5000) as usize];
        let _ = img.read_at(&mut buf, off);
    }
});
