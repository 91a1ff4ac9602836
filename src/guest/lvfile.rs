//! A user-space block view of a logical volume in several scattered
//! segments: one file whose bytes are the LV's pieces concatenated from the
//! disk below (the raw workspace file, or the copy-on-write view's FUSE
//! file), served through vmfinal's own FUSE server (`view::fuse`) for a
//! loop device to mount the LV's filesystem from. This host kind of kernel
//! has no device-mapper; the view is how vmfinal maps such an LV anywhere.
//!
//! Reads and writes go to the pieces' bytes with pread/pwrite on one
//! descriptor of the disk, opened before the server threads start (they
//! leave the shared descriptor table); a discard punches a hole in the
//! disk (or writes zeros where the disk cannot punch), so a reclaim by
//! discard frees the same bytes it would on a partition. The first error
//! met serving the kernel is kept: `Guest::unmount` reports it, and the run
//! then fails rather than compact a guest whose writes were lost.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::disk::lvm::{Piece, lv_to_disk};
use crate::extent::Extent;
use crate::image::{ImageError, Result, io_err};
use crate::view::fuse::{FuseFile, FuseView};

/// Numbers the FUSE files of one process (`STATE_DIR/PID.lvN`).
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// An LV's view, mounted as a FUSE file; `unmount` (or drop) takes it down
/// once no loop device uses it.
pub struct Served {
    fuse: FuseView,
    file: Arc<LvFile>,
}

impl Served {
    /// Serves LV `name`'s pieces `map` of the disk file `disk` as a new
    /// file under vmfinal's state directory. Call it before the guest's
    /// loop devices and mounts exist: the server threads copy the process's
    /// descriptor table and mount namespace as they are then.
    pub fn serve(disk: &Path, name: &str, map: &[Piece], read_only: bool) -> anyhow::Result<Self> {
        if !Path::new("/dev/fuse").exists() {
            anyhow::bail!(
                "LVM logical volume {name} is in {} scattered segments, which vmfinal maps through a FUSE view, and this host has no /dev/fuse",
                map.len()
            );
        }
        let file = Arc::new(LvFile::open(disk, name, map, read_only)?);
        let path = PathBuf::from(super::state::STATE_DIR).join(format!(
            "{}.lv{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let fuse = FuseView::serve(file.clone(), &path, read_only).map_err(|e| {
            anyhow::anyhow!("cannot serve LVM logical volume {name} through FUSE: {e}")
        })?;
        Ok(Self { fuse, file })
    }

    /// The FUSE file: the LV's bytes.
    pub fn path(&self) -> &Path {
        self.fuse.path()
    }

    pub fn size(&self) -> u64 {
        self.file.size()
    }

    /// Unmounts; what went wrong while serving (a lost write) or unmounting.
    pub fn unmount(&mut self) -> Vec<String> {
        let mut errs: Vec<String> = self.fuse.unmount().into_iter().collect();
        if let Some(e) = self.file.error() {
            errs.push(format!(
                "LVM logical volume {}: its FUSE view failed a request ({e})",
                self.file.name
            ));
        }
        errs
    }
}

/// One LV's pieces over the disk file.
pub struct LvFile {
    disk: File,
    disk_path: PathBuf,
    name: String,
    map: Vec<Piece>,
    size: u64,
    first_error: Mutex<Option<String>>,
}

impl LvFile {
    /// The LV `name` (`vg/lv`) whose `map` lies on the disk file `disk`.
    pub fn open(disk: &Path, name: &str, map: &[Piece], read_only: bool) -> Result<Self> {
        let f = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(disk)
            .map_err(|e| io_err(disk, e))?;
        Ok(Self {
            disk: f,
            disk_path: disk.to_owned(),
            name: name.to_owned(),
            size: map.last().map(|p| p.lv_start + p.len).unwrap_or(0),
            map: map.to_vec(),
            first_error: Mutex::new(None),
        })
    }

    /// The first error met serving the kernel, if any.
    pub fn error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }

    /// The disk ranges of LV bytes `[off, off+len)`; ENOSPC past the end
    /// (what a block device says to a write past its end).
    fn pieces(&self, off: u64, len: u64) -> Result<Vec<Extent>> {
        lv_to_disk(&self.map, off, len).ok_or_else(|| ImageError::Io {
            path: PathBuf::from(format!("LV {}", self.name)),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        })
    }

    fn err(&self, e: std::io::Error) -> ImageError {
        io_err(&self.disk_path, e)
    }

    fn zero(&self, e: Extent) -> Result<()> {
        // SAFETY: fallocate on our own descriptor; no memory arguments.
        let r = unsafe {
            libc::fallocate(
                self.disk.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                e.start as libc::off_t,
                e.len as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        // No hole punching in the disk's filesystem: zeros do the same.
        let zeros = vec![0u8; 1 << 20];
        let mut pos = e.start;
        while pos < e.end() {
            let n = (e.end() - pos).min(1 << 20) as usize;
            self.disk
                .write_all_at(&zeros[..n], pos)
                .map_err(|x| self.err(x))?;
            pos += n as u64;
        }
        Ok(())
    }
}

impl FuseFile for LvFile {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        let mut at = 0usize;
        for p in self.pieces(off, buf.len() as u64)? {
            let n = p.len as usize;
            self.disk
                .read_exact_at(&mut buf[at..at + n], p.start)
                .map_err(|e| self.err(e))?;
            at += n;
        }
        Ok(())
    }
    fn write_at(&self, data: &[u8], off: u64) -> Result<()> {
        let mut at = 0usize;
        for p in self.pieces(off, data.len() as u64)? {
            let n = p.len as usize;
            self.disk
                .write_all_at(&data[at..at + n], p.start)
                .map_err(|e| self.err(e))?;
            at += n;
        }
        Ok(())
    }
    fn punch(&self, off: u64, len: u64) -> Result<()> {
        let len = len.min(self.size.saturating_sub(off));
        for p in self.pieces(off, len)? {
            self.zero(p)?;
        }
        Ok(())
    }
    fn allocated(&self) -> u64 {
        self.size
    }
    fn record_error(&self, e: &str) {
        if let Ok(mut g) = self.first_error.lock() {
            if g.is_none() {
                *g = Some(e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_read_and_write_in_lv_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.raw");
        let base: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &base).unwrap();
        // LV bytes 0..8K at disk 40K, 8K..12K at disk 4K.
        let map = [
            Piece {
                lv_start: 0,
                len: 8192,
                disk_start: 40960,
                pv: 0,
            },
            Piece {
                lv_start: 8192,
                len: 4096,
                disk_start: 4096,
                pv: 0,
            },
        ];
        let f = LvFile::open(&p, "vg/lv", &map, false).unwrap();
        assert_eq!(f.size(), 12288);
        let mut got = vec![0u8; 12288];
        f.read_at(&mut got, 0).unwrap();
        let mut want = base[40960..49152].to_vec();
        want.extend_from_slice(&base[4096..8192]);
        assert_eq!(got, want);
        // A write across the seam lands in both pieces.
        f.write_at(&[0xAA; 100], 8142).unwrap();
        let disk = std::fs::read(&p).unwrap();
        assert_eq!(disk[49102..49152], [0xAA; 50]);
        assert_eq!(disk[4096..4146], [0xAA; 50]);
        assert_eq!(disk[4146], base[4146]);
        f.punch(4096, 8192).unwrap();
        let disk = std::fs::read(&p).unwrap();
        assert!(disk[45056..49152].iter().all(|&b| b == 0));
        assert!(disk[4096..8192].iter().all(|&b| b == 0));
        assert_eq!(disk[45055], base[45055]);
        let e = f.write_at(&[1], 12288).unwrap_err();
        assert!(
            matches!(e, ImageError::Io { ref source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
        );
        f.record_error("x");
        f.record_error("y");
        assert_eq!(f.error().as_deref(), Some("x"));
    }
}
