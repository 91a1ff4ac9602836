//! What a profile's `write` and `symlink` steps allocate, predicted at plan
//! time, so that a profile's planned savings are net of the blocks it takes
//! back (ssh-hostkeys removes host keys and writes a first-boot unit).
//!
//! The prediction follows how each filesystem stores a new entry: a
//! regular file takes its size rounded up to the filesystem's block size
//! (`statvfs` `f_frsize`); a symlink is stored in the inode when short
//! (ext4: a target under 60 bytes; xfs: within the inode's literal area,
//! 336 bytes with the default 512-byte inodes) and takes blocks otherwise;
//! a directory the step creates takes one block on ext4 and none on xfs
//! (short form, in the inode); ext4 with `inline_data` keeps new directories
//! and files of up to 60 bytes plus the inode's free xattr space (128 with
//! 256-byte inodes) in the inode; btrfs keeps files of up to
//! 2048 bytes, symlinks and directories in its metadata, which its `statvfs`
//! does not count. What an overwritten file or symlink held is freed.
//! With `inline_data` a small directory lives in its inode and takes a
//! block once the new entries (a write's temporary name included) overflow
//! it: predicted. Not predicted: a block directory's new block for one more
//! entry (rare; the entry usually fits), and xattrs the host adds to new
//! files (an LSM's labels) that leave less room inline.
//! ext4 reports one sector per 512 bytes of an inline file in `st_blocks`;
//! `real_allocated` takes those off what a removal frees.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::guest::root::{GuestRoot, Stat};

/// How a filesystem stores small entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `inline`: the largest file kept in the inode (0: no `inline_data`).
    Ext4 {
        inline: u64,
    },
    Xfs,
    Btrfs,
    Other,
}

/// The filesystem a new entry lands on.
#[derive(Debug, Clone, Copy)]
struct Fs {
    kind: Kind,
    block: u64,
}

const EXT4_MAGIC: u64 = 0xEF53;
const EXT4_INCOMPAT_INLINE_DATA: u32 = 0x8000;
const XFS_MAGIC: u64 = 0x5846_5342;
const BTRFS_MAGIC: u64 = 0x9123_683E;
/// ext4 keeps a symlink target in `i_block` when it and its NUL fit (60 bytes).
const EXT4_FAST_SYMLINK: usize = 60;
/// ext4's `i_block`, which `inline_data` fills first.
const EXT4_INLINE_MIN: u64 = 60;
/// xfs v5 inodes of 512 bytes (mkfs.xfs's default) leave 336 bytes for a
/// local symlink.
const XFS_LOCAL_SYMLINK: usize = 336;
/// btrfs's default `max_inline`.
const BTRFS_MAX_INLINE: u64 = 2048;

/// Each ext4 filesystem among `mounts` (device, type) that uses
/// `inline_data`: its st_dev and the largest file its new inodes keep
/// inline, from the superblock on the mounted device.
pub fn inline_data_devs<'a>(mounts: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<(u64, u64)> {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let mut out = Vec::new();
    for (device, fstype) in mounts {
        if fstype != "ext4" {
            continue;
        }
        let Ok(f) = std::fs::File::open(device) else {
            continue;
        };
        let mut sb = [0u8; 1024];
        if f.read_exact_at(&mut sb, 1024).is_err() {
            continue;
        }
        let le16 = |o: usize| u64::from(u16::from_le_bytes([sb[o], sb[o + 1]]));
        let incompat = u32::from_le_bytes([sb[0x60], sb[0x61], sb[0x62], sb[0x63]]);
        if incompat & EXT4_INCOMPAT_INLINE_DATA == 0 {
            continue;
        }
        if let Ok(m) = f.metadata() {
            // s_inode_size, s_want_extra_isize.
            out.push((m.rdev(), ext4_max_inline(le16(0x58), le16(0x15E))));
        }
    }
    out
}

/// The largest file ext4 keeps inline in a new inode of `inode_size` bytes
/// with `extra_isize` extra bytes: the 60 bytes of `i_block`, plus the
/// in-inode xattr space left for the `system.data` value (the kernel's
/// `ext4_get_max_inline_size` for an inode with no other xattr): header
/// and terminator 4 bytes each, the entry 20, the value rounded down to 4.
/// 128 with the default 256-byte inodes (measured: 128 bytes stay inline,
/// 129 take a block).
fn ext4_max_inline(inode_size: u64, extra_isize: u64) -> u64 {
    let extra = if extra_isize == 0 { 32 } else { extra_isize };
    let free = inode_size.saturating_sub(128 + extra + 4 + 4 + 20);
    EXT4_INLINE_MIN + if free > 3 { free & !3 } else { 0 }
}

/// What a file really holds on disk. ext4 reports one sector per 512
/// bytes of a file kept inline (`inline_data`) in `st_blocks`, though no
/// block holds it (so that tools do not take it for sparse): those are
/// taken off.
pub fn real_allocated(st: &Stat, inline_data: &[(u64, u64)]) -> u64 {
    let Some(&(_, max)) = inline_data.iter().find(|d| d.0 == st.dev) else {
        return st.allocated;
    };
    let fake = st.size.div_ceil(512) * 512;
    // Real blocks are whole filesystem blocks (1 KiB at least).
    // (Inline directories too: their 60 bytes report one sector.)
    if !st.is_symlink()
        && st.size <= max
        && st.allocated % 1024 == fake % 1024
        && st.allocated >= fake
    {
        st.allocated - fake
    } else {
        st.allocated
    }
}

fn fs_of(fd: &impl AsRawFd, inline_data: &[(u64, u64)]) -> Option<Fs> {
    // SAFETY: the caller holds `fd` open for this call.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    let sf = rustix::fs::fstatfs(b).ok()?;
    let sv = rustix::fs::fstatvfs(b).ok()?;
    let dev = rustix::fs::fstat(b).ok()?.st_dev;
    let kind = match sf.f_type as u64 & 0xFFFF_FFFF {
        EXT4_MAGIC => Kind::Ext4 {
            inline: inline_data.iter().find(|d| d.0 == dev).map_or(0, |d| d.1),
        },
        XFS_MAGIC => Kind::Xfs,
        BTRFS_MAGIC => Kind::Btrfs,
        _ => Kind::Other,
    };
    Some(Fs {
        kind,
        block: sv.f_frsize.max(512),
    })
}

fn round(n: u64, block: u64) -> u64 {
    n.div_ceil(block).saturating_mul(block)
}

fn file_blocks(fs: Fs, size: u64) -> u64 {
    match fs.kind {
        _ if size == 0 => 0,
        Kind::Ext4 { inline } if size <= inline => 0,
        Kind::Btrfs if size <= BTRFS_MAX_INLINE.min(fs.block) => 0,
        _ => round(size, fs.block),
    }
}

fn symlink_blocks(fs: Fs, target: usize) -> u64 {
    match fs.kind {
        Kind::Ext4 { .. } if target < EXT4_FAST_SYMLINK => 0,
        Kind::Xfs if target <= XFS_LOCAL_SYMLINK => 0,
        Kind::Btrfs => 0,
        _ => round(target as u64, fs.block),
    }
}

fn dir_blocks(fs: Fs) -> u64 {
    match fs.kind {
        Kind::Ext4 { inline: 0 } | Kind::Other => fs.block,
        _ => 0,
    }
}

/// A write or symlink step's entry.
pub enum New<'a> {
    File(u64),
    Symlink(&'a [u8]),
}

/// What one planned write or symlink does to the space in use.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Prediction {
    /// Blocks the new entry and the directories made for it take.
    pub allocated: u64,
    /// Blocks of the entry it replaces.
    pub freed: u64,
}

/// What earlier planned steps do to the paths a write lands on.
#[derive(Default)]
pub struct Planned {
    /// Directories an earlier write or symlink creates.
    pub dirs: std::collections::BTreeSet<PathBuf>,
    /// Entries an earlier write or symlink creates, with their blocks.
    pub entries: std::collections::BTreeMap<PathBuf, u64>,
    /// ext4 inline directories an earlier step makes outgrow their inode.
    pub grown: std::collections::BTreeSet<PathBuf>,
    /// Bytes of entries earlier steps add to each inline directory.
    pub added: std::collections::BTreeMap<PathBuf, u64>,
}

/// An ext4 directory entry's length for a name of `n` bytes.
fn rec_len(n: usize) -> u64 {
    ((8 + n as u64) + 3) & !3
}

/// With `inline_data`, a small directory lives in its inode: `i_block`'s
/// 60 bytes (4 of them the parent's inode number), which a directory the
/// kernel makes extends into the inode's xattr space (up to `inline`, the
/// largest inline file); one that the entries overflow becomes a block
/// directory. Measured: directories mke2fs made (size 60) were not
/// extended, so their room is their size less 4. `adds`: (directory, bytes
/// of entries at the step's peak, bytes that stay); `fresh`: directories
/// the step makes. Returns how many directories take a block.
fn inline_dirs_grown(
    root: &GuestRoot,
    adds: &[(PathBuf, u64, u64)],
    fresh: &[PathBuf],
    inline: u64,
    planned: &mut Planned,
) -> u64 {
    let mut n = 0;
    for (dir, peak, stays) in adds {
        let before = planned.added.get(dir).copied().unwrap_or(0);
        *planned.added.entry(dir.clone()).or_default() += stays;
        if planned.grown.contains(dir) {
            continue;
        }
        let (capacity, used) = if fresh.contains(dir) || planned.dirs.contains(dir) {
            (inline.saturating_sub(4), 0)
        } else {
            let Ok(st) = root.lstat(dir.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            if !st.is_dir() || st.allocated != 0 {
                continue;
            }
            let Ok(fd) = root.open_dir_strict(dir.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            let names = crate::guest::root::list_dir(fd.as_raw_fd()).unwrap_or_default();
            let used: u64 = names.iter().map(|x| rec_len(x.len())).sum();
            (st.size.saturating_sub(4), used)
        };
        if used + before + peak > capacity {
            planned.grown.insert(dir.clone());
            n += 1;
        }
    }
    n
}

/// Predicts a write (`New::File(size)`) or symlink at the guest `path`, as
/// `plan::execute` carries it out: missing parents made (`mkdir -p`), then
/// the entry created or replaced. `removed(p)`: an earlier step deletes
/// `p`. Records what it creates in `planned`.
pub fn predict(
    root: &GuestRoot,
    path: &Path,
    new: New,
    inline_data: &[(u64, u64)],
    removed: impl Fn(&Path) -> bool,
    planned: &mut Planned,
) -> Prediction {
    let mut p = Prediction::default();
    let Some(parent) = path.parent() else {
        return p;
    };
    // The nearest ancestor that exists (or an earlier step makes): the
    // filesystem the new directories and the entry land on. As mkdir_p,
    // whatever exists there is not made; what an earlier step removes is.
    let on_disk = |b: &Path| !removed(b) && root.lstat(b.as_os_str().as_encoded_bytes()).is_ok();
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut base = parent.to_path_buf();
    while !planned.dirs.contains(&base) && !on_disk(&base) {
        missing.push(base.clone());
        match base.parent() {
            Some(b) => base = b.to_path_buf(),
            None => return p,
        }
    }
    // Planned directories exist only in the plan: their filesystem is the
    // nearest one on disk.
    let mut disk = base.clone();
    while !on_disk(&disk) {
        match disk.parent() {
            Some(d) => disk = d.to_path_buf(),
            None => return p,
        }
    }
    // execute() opens each parent strictly (no symlink): a symlink on the
    // way makes the step fail, which allocates nothing.
    let Ok(fd) = root.open_dir_strict(disk.as_os_str().as_encoded_bytes()) else {
        return p;
    };
    let Some(fs) = fs_of(&fd, inline_data) else {
        return p;
    };
    drop(fd);
    for d in &missing {
        p.allocated += dir_blocks(fs);
        planned.dirs.insert(d.clone());
    }
    // What the entry replaces.
    let old = if let Some(b) = planned.entries.get(path) {
        Some(*b)
    } else if missing.is_empty() && !removed(path) {
        match root.lstat(path.as_os_str().as_encoded_bytes()) {
            Ok(st) if st.is_dir() => return p,
            Ok(st) if matches!(new, New::Symlink(_)) && !st.is_symlink() => return p,
            Ok(st) if st.nlink <= 1 => Some(real_allocated(&st, inline_data)),
            _ => None,
        }
    } else {
        None
    };
    let blocks = match new {
        New::File(size) => file_blocks(fs, size),
        New::Symlink(t) => symlink_blocks(fs, t.len()),
    };
    if let Kind::Ext4 { inline } = fs.kind {
        if inline > 0 {
            // The entries the step adds to each directory: its name (and
            // for a write the temporary name beside it), and each new
            // directory's name in its parent.
            let name = path.file_name().map_or(0, |x| x.len());
            let own = if old.is_none() { rec_len(name) } else { 0 };
            let tmp = if matches!(new, New::File(_)) {
                rec_len(".vmfinal-new.".len() + name)
            } else {
                0
            };
            let mut adds = vec![(parent.to_path_buf(), own + tmp, own)];
            for d in &missing {
                if let (Some(up), Some(n)) = (d.parent(), d.file_name()) {
                    let r = rec_len(n.len());
                    adds.push((up.to_path_buf(), r, r));
                }
            }
            p.allocated += fs.block * inline_dirs_grown(root, &adds, &missing, inline, planned);
        }
    }
    p.freed = old.unwrap_or(0);
    p.allocated += blocks;
    planned.entries.insert(path.to_path_buf(), blocks);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_to_blocks_by_filesystem() {
        let ext4 = Fs {
            kind: Kind::Ext4 { inline: 0 },
            block: 4096,
        };
        let inline = Fs {
            kind: Kind::Ext4 {
                inline: ext4_max_inline(256, 32),
            },
            block: 1024,
        };
        let xfs = Fs {
            kind: Kind::Xfs,
            block: 4096,
        };
        let btrfs = Fs {
            kind: Kind::Btrfs,
            block: 4096,
        };
        assert_eq!(file_blocks(ext4, 0), 0);
        assert_eq!(file_blocks(ext4, 1), 4096);
        assert_eq!(file_blocks(ext4, 4097), 8192);
        assert_eq!(ext4_max_inline(256, 32), 128);
        assert_eq!(ext4_max_inline(128, 0), 60);
        assert_eq!(file_blocks(inline, 128), 0);
        assert_eq!(file_blocks(inline, 129), 1024);
        assert_eq!(file_blocks(btrfs, 2048), 0);
        assert_eq!(file_blocks(btrfs, 2049), 4096);
        assert_eq!(symlink_blocks(ext4, 59), 0);
        assert_eq!(symlink_blocks(ext4, 60), 4096);
        assert_eq!(symlink_blocks(xfs, 336), 0);
        assert_eq!(symlink_blocks(xfs, 337), 4096);
        assert_eq!(dir_blocks(ext4), 4096);
        assert_eq!(dir_blocks(inline), 0);
        assert_eq!(dir_blocks(xfs), 0);
    }
}
