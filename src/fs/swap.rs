//! Linux swap: everything after the header page is free. The header page
//! (signature, UUID, label) is kept.

use super::{FsError, FsFree, Region};
use crate::extent::Extent;

const PAGE: u64 = 4096;
const SIGNATURE: &[u8; 10] = b"SWAPSPACE2";

pub fn detect(r: &Region) -> bool {
    r.read(PAGE - 10, 10).is_ok_and(|b| b == SIGNATURE)
}

pub fn free_space(r: &Region) -> Result<FsFree, FsError> {
    if !detect(r) {
        return Err(FsError::corrupt("no swap signature"));
    }
    let label = r
        .read(1024 + 4 + 4 + 4 + 16, 16)
        .map(|b| String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap_or(&[])).into_owned())
        .unwrap_or_default();
    let mut out = FsFree::new("swap", &label, r.len);
    if r.len > PAGE {
        out.free.push(Extent::new(PAGE, r.len - PAGE));
        out.free_bytes = r.len - PAGE;
    }
    Ok(out)
}
