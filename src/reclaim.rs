//! Free-space reclaim on a mounted guest filesystem: `discard` (FITRIM; on
//! a loop device over a sparse file the kernel punches holes), `zero`
//! (fill free space with zeros, then delete the fill file), and swap
//! partitions cleared except for their header page.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use serde::Serialize;

use crate::disk::lvm::Piece;

/// How free space is given back (command-line spelling: `commands::value_enums`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReclaimMode {
    /// discard, falling back to zero where discard is not supported
    Auto,
    /// FITRIM: punch holes for free blocks
    Discard,
    /// write zeros over free space, then delete them
    Zero,
    /// leave free space as it is
    None,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReclaimResult {
    pub target: String,
    pub method: String,
    /// Bytes trimmed or zeroed.
    pub bytes: u64,
    /// What went otherwise than asked (a fallback, a failure); null when
    /// nothing did.
    pub note: Option<String>,
}

#[repr(C)]
struct FstrimRange {
    start: u64,
    len: u64,
    minlen: u64,
}
const FITRIM: libc::c_ulong = 0xC018_5879;

/// FITRIM over the whole filesystem mounted at `dir`; bytes trimmed.
pub fn discard(dir: &Path) -> io::Result<u64> {
    let f = File::open(dir)?;
    let mut r = FstrimRange {
        start: 0,
        len: u64::MAX,
        minlen: 0,
    };
    // SAFETY: r is a valid fstrim_range.
    if unsafe { libc::ioctl(f.as_raw_fd(), FITRIM, &mut r as *mut FstrimRange) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r.len)
}

/// Fills free space under `dir` with zeros until the filesystem is full,
/// then deletes the fill file. Bytes written.
pub fn zero_fill(dir: &Path) -> io::Result<u64> {
    let path = dir.join(format!(".vmfinal-zero-fill.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    let buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let res = loop {
        if crate::interrupt::requested() {
            break Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        match f.write(&buf) {
            Ok(0) => break Ok(()),
            Ok(n) => total += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
    };
    let _ = f.sync_all();
    drop(f);
    let _ = std::fs::remove_file(&path);
    res.map(|_| total)
}

/// Runs the chosen method on one mounted filesystem.
pub fn reclaim_fs(dir: &Path, label: &str, mode: ReclaimMode) -> ReclaimResult {
    let mut r = ReclaimResult {
        target: label.to_string(),
        method: String::new(),
        bytes: 0,
        note: None,
    };
    match mode {
        ReclaimMode::None => r.method = "none".into(),
        ReclaimMode::Discard | ReclaimMode::Auto => match discard(dir) {
            Ok(n) => {
                r.method = "discard".into();
                r.bytes = n;
            }
            Err(e) if mode == ReclaimMode::Auto => {
                r.note = Some(format!("discard not available ({e}); zero-filled instead"));
                r.method = "zero".into();
                match zero_fill(dir) {
                    Ok(n) => r.bytes = n,
                    Err(e) => r.note = Some(format!("zero-fill failed: {e}")),
                }
            }
            Err(e) => {
                r.method = "discard".into();
                r.note = Some(format!("discard failed: {e}"));
            }
        },
        ReclaimMode::Zero => {
            r.method = "zero".into();
            match zero_fill(dir) {
                Ok(n) => r.bytes = n,
                Err(e) => r.note = Some(format!("zero-fill failed: {e}")),
            }
        }
    }
    r
}

/// Clears a swap volume of the raw `image` (its disk `pieces` in volume
/// order: one for a partition) except its first page (the header with UUID and label): punches a hole,
/// or writes zeros where that is not supported.
pub fn clear_swap(image: &File, pieces: &[Piece]) -> io::Result<u64> {
    const HEADER: u64 = 4096;
    let mut cleared = 0;
    for p in pieces {
        // The header stays: the first 4 KiB of the swap area.
        let skip = HEADER.saturating_sub(p.lv_start).min(p.len);
        cleared += zero_range(image, p.disk_start + skip, p.len - skip)?;
    }
    Ok(cleared)
}

/// Makes `[off, off+len)` of `image` read as zeros: a hole, or zeros
/// written where the filesystem cannot punch one.
fn zero_range(image: &File, off: u64, len: u64) -> io::Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    // SAFETY: valid descriptor; plain integer arguments.
    let r = unsafe {
        libc::fallocate(
            image.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(len);
    }
    use std::os::unix::fs::FileExt;
    let buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        image.write_all_at(&buf[..n], off + done)?;
        done += n as u64;
    }
    Ok(len)
}
