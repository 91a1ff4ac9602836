//! A linear LV as a `BlockSource`: reads go through the segment map to the
//! disk below. What the filesystem probes read an LV's filesystem through,
//! and what a user-space block device can serve.

use std::path::PathBuf;

use super::{Lv, Piece, disk_to_lv, lv_to_disk};
use crate::extent::{self, Extent};
use crate::image::{BlockSource, ImageError, ImageFormat, Result};

/// A read-only view of one linear LV over the disk `src`.
pub struct LvView<'a> {
    src: &'a dyn BlockSource,
    name: String,
    map: Vec<Piece>,
    size: u64,
}

impl<'a> LvView<'a> {
    /// The view of `lv` (its map must be non-empty: a linear LV).
    pub fn new(src: &'a dyn BlockSource, lv: &Lv) -> Self {
        Self::of_pieces(src, &lv.full_name(), &lv.map)
    }
    /// The view of the LV `name` whose segment map is `map`.
    pub fn of_pieces(src: &'a dyn BlockSource, name: &str, map: &[Piece]) -> Self {
        Self {
            src,
            name: name.to_owned(),
            size: map.last().map(|p| p.lv_start + p.len).unwrap_or(0),
            map: map.to_vec(),
        }
    }
    fn err(&self, what: String) -> ImageError {
        ImageError::Corrupt {
            path: PathBuf::from(format!("LV {}", self.name)),
            what,
        }
    }
}

impl BlockSource for LvView<'_> {
    fn format(&self) -> ImageFormat {
        self.src.format()
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn data_extents(&self) -> Result<Vec<Extent>> {
        let data = extent::normalize(self.src.data_extents()?);
        Ok(disk_to_lv(&self.map, &data))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(pieces) = lv_to_disk(&self.map, offset, buf.len() as u64) else {
            return Err(self.err(format!(
                "read of {} bytes at {offset} past the LV's end",
                buf.len()
            )));
        };
        let mut at = 0usize;
        for p in pieces {
            let n = p.len as usize;
            self.src.read_at(&mut buf[at..at + n], p.start)?;
            at += n;
        }
        Ok(())
    }
    fn host_allocated_bytes(&self) -> u64 {
        0
    }
}
