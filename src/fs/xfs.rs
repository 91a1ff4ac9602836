//! xfs: recognised; free space from the per-AG bnobt is not read yet, so an
//! xfs filesystem is copied whole.

use super::{FsError, FsFree, Region};

pub fn detect(r: &Region) -> bool {
    r.read(0, 4).is_ok_and(|b| b == b"XFSB")
}

pub fn free_space(_r: &Region) -> Result<FsFree, FsError> {
    Err(FsError::unclean(
        "xfs",
        "free-space B+tree reading is not implemented yet: copied whole",
    ))
}
