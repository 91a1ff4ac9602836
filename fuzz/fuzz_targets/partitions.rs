//! MBR (with logical partitions) and GPT (primary and backup) over a disk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmfinal::image::mem::MemDisk;

fuzz_target!(|data: &[u8]| {
    let disk = MemDisk(data.to_vec());
    let t = vmfinal::disk::read_partitions(&disk);
    for p in &t.partitions {
        assert!(p.start.checked_add(p.size).is_some_and(|e| e <= data.len() as u64));
    }
});
