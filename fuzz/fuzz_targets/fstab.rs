//! The guest's /etc/fstab as finalize and `analyze --guest` read it: parse
//! (octal unescapes included), classify each entry, and resolve its spec
//! (UUID=, LABEL=, PARTUUID=, /dev/mapper/VG-LV, /dev/VG/LV, /dev/disk/by-*)
//! against the volumes the input itself holds as a disk (so a seed can be
//! an fstab followed by a real partition table or LVM PV).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmfinal::guest::{self, volume};
use vmfinal::image::mem::MemDisk;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let entries = guest::parse_fstab(&text);
    let disk = MemDisk(data.to_vec());
    let parts = guest::partitions_of(&disk);
    let vols = volume::scan(&disk, &parts);
    for e in &entries {
        let _ = e.is_net_or_virtual();
        let _ = volume::resolve(&e.spec, &vols.list, &parts);
    }
});
