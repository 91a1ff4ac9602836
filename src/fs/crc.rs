//! The checksums the filesystem probes verify, by their old path: they
//! live on the ground floor (`crate::crc`) because the partition-table and
//! LVM readers in `disk` need them too, and `disk` sits below `fs`.

pub use crate::crc::{crc16_update, crc32c, crc32c_update};
