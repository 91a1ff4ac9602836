//! The guest report's package databases, parsed from guest bytes: the
//! first byte picks dpkg's status file (0), apk's installed database (1)
//! or one rpm header blob as rpmdb.sqlite's Packages table stores it (2);
//! the rest is the file or blob.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmfinal::pkgdb as packages;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => drop(packages::parse_dpkg_status(&String::from_utf8_lossy(body))),
        1 => drop(packages::parse_apk_installed(&String::from_utf8_lossy(
            body,
        ))),
        _ => drop(packages::decode_header(body)),
    }
});
