//! A sparse in-memory disk for the filesystems whose structures lie far
//! apart (btrfs: superblock at 64 KiB, chunk and root trees megabytes in;
//! NTFS: boot sector, MFT, $Bitmap; LVM: label, metadata, LV contents at
//! 1 MiB). The input is a u32 LE disk size in 4 KiB blocks, then records
//! of a u32 LE block number and that block's 4096 bytes (the last one may
//! be short); blocks not given read as zeros. fuzz/make-corpus.sh writes
//! seeds in this form from real images (their non-zero blocks).
//!
//! `run` is the shared filesystem-probe body on that disk: `detect`, then
//! the free-space map, whose extents must lie inside the disk.

use std::collections::BTreeMap;

use vmfinal::extent::Extent;
use vmfinal::fs::{FsError, FsFree, Region};
use vmfinal::image::{BlockSource, ImageError, ImageFormat, Result};

const BLOCK: u64 = 4096;

pub struct SparseDisk {
    pub size: u64,
    blocks: BTreeMap<u64, Vec<u8>>,
}

impl SparseDisk {
    pub fn parse(data: &[u8]) -> Option<Self> {
        let (head, mut rest) = data.split_at_checked(4)?;
        let nblocks = u32::from_le_bytes(head.try_into().ok()?) as u64;
        let mut blocks = BTreeMap::new();
        while let Some((n, r)) = rest.split_at_checked(4) {
            let n = u32::from_le_bytes(n.try_into().ok()?) as u64;
            let take = r.len().min(BLOCK as usize);
            let mut b = r[..take].to_vec();
            b.resize(BLOCK as usize, 0);
            if n < nblocks {
                blocks.insert(n, b);
            }
            rest = &r[take..];
        }
        Some(SparseDisk {
            size: nblocks * BLOCK,
            blocks,
        })
    }
}

impl BlockSource for SparseDisk {
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn data_extents(&self) -> Result<Vec<Extent>> {
        Ok(vec![Extent::new(0, self.size)])
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(ImageError::Truncated {
                path: "memory".into(),
                what: format!("read past the end at offset {offset}"),
            });
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (n, within) = (pos / BLOCK, (pos % BLOCK) as usize);
            let take = (BLOCK as usize - within).min(buf.len() - done);
            match self.blocks.get(&n) {
                Some(b) => buf[done..done + take].copy_from_slice(&b[within..within + take]),
                None => buf[done..done + take].fill(0),
            }
            done += take;
        }
        Ok(())
    }
    fn host_allocated_bytes(&self) -> u64 {
        self.blocks.len() as u64 * BLOCK
    }
}

#[allow(dead_code)]
pub fn run(
    data: &[u8],
    detect: fn(&Region) -> bool,
    free_space: fn(&Region) -> std::result::Result<FsFree, FsError>,
) {
    let Some(disk) = SparseDisk::parse(data) else {
        return;
    };
    let r = Region {
        src: &disk,
        start: 0,
        len: disk.size,
    };
    if detect(&r) {
        if let Ok(f) = free_space(&r) {
            for e in &f.free {
                assert!(
                    e.start
                        .checked_add(e.len)
                        .is_some_and(|end| end <= disk.size)
                );
            }
        }
    }
}
