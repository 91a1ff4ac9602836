//! LVM2 on a whole disk (or inside a partition table): PV labels, metadata
//! area headers, every text metadata copy, VG assembly and LV segment maps,
//! through the entry points compact (`fs::scan`, which also probes the
//! filesystems inside LVs) and finalize (`guest::volume::scan`) use. Every
//! free extent must lie inside the disk. The disk is sparse (see
//! common/sparse.rs for the input's form).
#![no_main]

#[path = "../common/sparse.rs"]
mod sparse;

use libfuzzer_sys::fuzz_target;
use vmfinal::extent::Extent;
use vmfinal::guest::{self, volume};

fuzz_target!(|data: &[u8]| {
    let Some(disk) = sparse::SparseDisk::parse(data) else {
        return;
    };
    let len = disk.size;
    let scan = vmfinal::fs::scan(&disk, &[Extent::new(0, len)]);
    for e in &scan.free {
        assert!(e.start.checked_add(e.len).is_some_and(|end| end <= len));
    }
    let parts = guest::partitions_of(&disk);
    let vols = volume::scan(&disk, &parts);
    for v in &vols.list {
        let _ = v.range();
        let _ = v.pieces();
        let _ = v.short_name();
        let _ = volume::resolve(&format!("/dev/{}", v.short_name()), &vols.list, &parts);
    }
});
