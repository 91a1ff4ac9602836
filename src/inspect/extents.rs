//! Where on the disk the planned removals' data lies (`FS_IOC_FIEMAP` on
//! each file a plan removes or truncates, in the read-only guest), so that
//! the after-cleaning estimate compresses a fresh sample of what stays
//! rather than scaling the whole image's ratio. A hand-written ioctl: no
//! crate in the tree covers FIEMAP.
//!
//! Only ext2/3/4 and xfs on a loop-mapped partition are mapped (their
//! FIEMAP physical offsets are device offsets; btrfs's are its logical
//! addresses). Any removed file that cannot be mapped makes the whole
//! answer `None`: the caller then falls back to the linear estimate.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use crate::extent::{self, Extent};
use crate::guest::Guest;
use crate::profile::plan::{Op, ProfilePlan};

/// `struct fiemap` (linux/fiemap.h) with room for `N` extents.
#[repr(C)]
struct Fiemap<const N: usize> {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; N],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// `FS_IOC_FIEMAP`: `_IOWR('f', 11, struct fiemap)` (32-byte header).
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// Location unknown, delayed allocation, or encoded: not a plain range.
const FIEMAP_EXTENT_UNMAPPABLE: u32 = 0x2 | 0x4 | 0x8;
/// Data kept in the inode or packed with other files' (no blocks of its own).
const FIEMAP_EXTENT_INLINE: u32 = 0x200 | 0x400;
const BATCH: usize = 64;

/// A file's extents on its device, or None when FIEMAP cannot say.
fn file_extents(fd: &OwnedFd) -> Option<Vec<Extent>> {
    let mut out = Vec::new();
    let mut start = 0u64;
    loop {
        let mut m = Fiemap::<BATCH> {
            start,
            length: u64::MAX - start,
            flags: 0,
            mapped_extents: 0,
            extent_count: BATCH as u32,
            reserved: 0,
            extents: [FiemapExtent::default(); BATCH],
        };
        // SAFETY: `fd` is open for the call; `m` is a live `struct fiemap`
        // whose `extent_count` matches the room that follows its header.
        if unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FIEMAP, &mut m) } != 0 {
            return None;
        }
        let n = (m.mapped_extents as usize).min(BATCH);
        if n == 0 {
            return Some(out);
        }
        for e in &m.extents[..n] {
            if e.flags & FIEMAP_EXTENT_UNMAPPABLE != 0 {
                return None;
            }
            if e.flags & FIEMAP_EXTENT_INLINE == 0 {
                out.push(Extent::new(e.physical, e.length));
            }
            if e.flags & FIEMAP_EXTENT_LAST != 0 {
                return Some(out);
            }
        }
        let last = m.extents[n - 1];
        start = last.logical.checked_add(last.length)?;
    }
}

/// The disk byte ranges of the data the plans remove (files deleted,
/// truncated or removed with a package), merged; None if any of them
/// cannot be mapped to the disk.
pub fn removed_extents(g: &Guest, plans: &[ProfilePlan]) -> Option<Vec<Extent>> {
    // st_dev of each mounted filesystem -> (its partition's disk offset, size).
    let mut devs: Vec<(u64, u64, u64)> = Vec::new();
    for m in &g.mounted {
        if !matches!(m.fstype.as_str(), "ext2" | "ext3" | "ext4" | "xfs") {
            continue;
        }
        let (Ok(md), Some((start, size))) = (
            std::fs::metadata(&m.device),
            g.volumes.get(m.vol).and_then(|v| v.range()),
        ) else {
            continue;
        };
        devs.push((md.rdev(), start, size));
    }
    let mut out = Vec::new();
    for a in plans
        .iter()
        .filter(|p| p.applicable)
        .flat_map(|p| p.paths())
    {
        if a.bytes == 0 || !matches!(a.op, Op::Delete | Op::Truncate | Op::Package) {
            continue;
        }
        // Symlinks and devices hold no data blocks worth sampling.
        if !g.root.lstat(a.path.as_bytes()).ok()?.is_file() {
            continue;
        }
        let fd = g
            .root
            .open_at(
                a.path.as_bytes(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
            )
            .ok()?;
        let st = crate::guest::root::lstat_at(fd.as_raw_fd(), b"").ok()?;
        if !st.is_file() {
            return None;
        }
        let &(_, start, size) = devs.iter().find(|d| d.0 == st.dev)?;
        for e in file_extents(&fd)? {
            if e.end() > size {
                return None;
            }
            out.push(Extent::new(start + e.start, e.len));
        }
    }
    Some(extent::normalize(out))
}
