//! One file served through FUSE, for a loop device to mount the guest
//! from: the copy-on-write view of the input, or a logical volume's
//! segments concatenated (`guest::lvfile`); anything that implements
//! [`FuseFile`]. The small part of the FUSE protocol a single
//! regular file needs (INIT, GETATTR, OPEN, READ, WRITE, FALLOCATE, FLUSH,
//! FSYNC, RELEASE, STATFS) is spoken here over `/dev/fuse`, mounted with
//! mount(2) as root (no libfuse, no fusermount). The mount's root is the
//! file itself (`rootmode=100000`), mounted on a regular file under
//! `/run/vmfinal`, inside vmfinal's private mount namespace.
//!
//! Deadlocks: the loop device's I/O comes back to these server threads, so
//! they touch nothing but what they serve from (the input and the overlay;
//! for an LV, the disk file: the raw workspace or the view's FUSE file;
//! never the guest mount), and each runs with PR_SET_IO_FLUSHER (memory
//! reclaim from them does not wait on the loop's writeback). Each also leaves the shared
//! descriptor table, working directory and mount namespace
//! (unshare(CLONE_FILES|CLONE_FS|CLONE_NEWNS), before anything is mounted)
//! and the main thread closes its `/dev/fuse` descriptor: if vmfinal is
//! killed, the server threads' exit closes the last `/dev/fuse` descriptor
//! (the kernel then aborts the connection, and I/O waiting on it fails
//! instead of hanging), and never has to tear down the guest's mounts
//! itself (their final sync would wait on the very thread doing it: a
//! deadlock seen when a server thread was the last to exit). Unmount order: the guest's mounts,
//! then the loop devices, then this mount (`FuseView::unmount`).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::CowView;
use crate::image::{BlockSource, Result as ImageResult};

/// What a FUSE file serves: a fixed number of bytes that can be read,
/// written and zeroed (a discard).
pub trait FuseFile: Send + Sync {
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], off: u64) -> ImageResult<()>;
    fn write_at(&self, data: &[u8], off: u64) -> ImageResult<()>;
    /// Makes `[off, off+len)` read as zeros.
    fn punch(&self, off: u64, len: u64) -> ImageResult<()>;
    /// Bytes it occupies on the host (what `stat` shows as blocks).
    fn allocated(&self) -> u64;
    /// Keeps the first error met serving the kernel (which sees only an
    /// errno): the run must not trust what it wrote.
    fn record_error(&self, e: &str);
}

impl FuseFile for CowView {
    fn size(&self) -> u64 {
        self.virtual_size()
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> ImageResult<()> {
        BlockSource::read_at(self, buf, off)
    }
    fn write_at(&self, data: &[u8], off: u64) -> ImageResult<()> {
        CowView::write_at(self, data, off)
    }
    fn punch(&self, off: u64, len: u64) -> ImageResult<()> {
        CowView::punch(self, off, len)
    }
    fn allocated(&self) -> u64 {
        self.overlay_allocated()
    }
    fn record_error(&self, e: &str) {
        CowView::record_error(self, e)
    }
}

/// The mount's source name: `vmfinal:PID` (what `sweep_stale` looks for).
pub const FSNAME_PREFIX: &str = "vmfinal:";
/// The filesystem type as /proc/self/mountinfo shows it.
pub const FSTYPE: &str = "fuse.vmfinal";

const ROOT_ID: u64 = 1;
const MAX_WRITE: u32 = 1 << 20;
const MAX_PAGES: u16 = 256;
const BUF: usize = MAX_WRITE as usize + 8192;
const THREADS: usize = 3;

const FUSE_GETATTR: u32 = 3;
const FUSE_SETATTR: u32 = 4;
const FUSE_FORGET: u32 = 2;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_STATFS: u32 = 17;
const FUSE_RELEASE: u32 = 18;
const FUSE_FSYNC: u32 = 20;
const FUSE_FLUSH: u32 = 25;
const FUSE_INIT: u32 = 26;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_BATCH_FORGET: u32 = 42;
const FUSE_FALLOCATE: u32 = 43;

const FUSE_ASYNC_READ: u32 = 1 << 0;
const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_MAX_PAGES: u32 = 1 << 22;
const FOPEN_DIRECT_IO: u32 = 1 << 0;

const IN_HEADER: usize = 40;
const PR_SET_IO_FLUSHER: libc::c_int = 57;

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}
fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// The served view, mounted; `unmount` (or drop) takes it down.
pub struct FuseView {
    path: PathBuf,
    mounted: bool,
    threads: Vec<std::thread::JoinHandle<()>>,
    done: crossbeam_channel::Receiver<()>,
}

fn cstr(p: &[u8]) -> io::Result<CString> {
    CString::new(p).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

impl FuseView {
    /// Mounts `view` as the regular file `path` (created here) and starts
    /// the server threads. `read_only` refuses writes (a dry run).
    pub fn serve(view: Arc<dyn FuseFile>, path: &Path, read_only: bool) -> io::Result<Self> {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(|e| io::Error::new(e.kind(), format!("/dev/fuse: {e}")))?;
        let mut me = Self {
            path: path.to_owned(),
            mounted: false,
            threads: Vec::new(),
            done: crossbeam_channel::never(),
        };
        // The server threads first: each leaves the shared descriptor
        // table, working directory and mount namespace before anything is
        // mounted, so that (1) its copy of the /dev/fuse descriptor is what
        // keeps the connection alive, and (2) its exit never has to tear
        // down the guest's mounts (whose final sync would wait on itself).
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<io::Result<()>>(THREADS);
        let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(THREADS);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(THREADS);
        me.done = done_rx;
        let fd = dev.as_raw_fd();
        for i in 0..THREADS {
            let view = view.clone();
            let ready = ready_tx.clone();
            let go = go_rx.clone();
            let done = done_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("vmfinal-fuse{i}"))
                .spawn(move || {
                    // SAFETY: plain syscalls on the calling thread.
                    let r = unsafe {
                        libc::unshare(libc::CLONE_FILES | libc::CLONE_FS | libc::CLONE_NEWNS)
                    };
                    if r != 0 {
                        let _ = ready.send(Err(io::Error::last_os_error()));
                        return;
                    }
                    // SAFETY: as above; failure only loses the protection.
                    unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) };
                    // SAFETY: `fd` is open in this thread's own table now
                    // and nothing else in this table closes it.
                    let dev = unsafe { File::from_raw_fd(fd) };
                    let _ = ready.send(Ok(()));
                    if go.recv().is_ok() {
                        serve_loop(&dev, view.as_ref(), read_only);
                    }
                    drop(dev);
                    let _ = done.send(());
                })?;
            me.threads.push(t);
        }
        drop(go_rx);
        for _ in 0..THREADS {
            match ready_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(io::Error::new(e.kind(), format!("FUSE server: {e}"))),
                Err(_) => return Err(io::Error::other("FUSE server threads did not start")),
            }
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let src = cstr(format!("{FSNAME_PREFIX}{}", crate::owner::me()).as_bytes())?;
        let target = cstr(path.as_os_str().as_bytes())?;
        let fstype = cstr(FSTYPE.as_bytes())?;
        let data = cstr(
            format!(
                "fd={},rootmode=100000,user_id=0,group_id=0,allow_other",
                dev.as_raw_fd()
            )
            .as_bytes(),
        )?;
        // SAFETY: valid C strings for the call.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data.as_ptr().cast(),
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            let _ = std::fs::remove_file(path);
            return Err(io::Error::new(
                e.kind(),
                format!("mount of a FUSE file: {e}"),
            ));
        }
        me.mounted = true;
        for _ in 0..THREADS {
            let _ = go_tx.send(());
        }
        // Only the server threads hold the connection from now on.
        drop(dev);
        // The first access waits for INIT; make sure the file answers.
        std::fs::metadata(path)
            .map_err(|e| io::Error::new(e.kind(), format!("the FUSE file does not answer: {e}")))?;
        Ok(me)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts (the loop devices over the file must be gone) and waits for
    /// the server threads to end. Errors are warnings: the view itself
    /// stays readable in-process.
    pub fn unmount(&mut self) -> Option<String> {
        if !self.mounted {
            // Never mounted: the threads ended when `serve` gave up.
            return None;
        }
        self.mounted = false;
        let mut warn = None;
        if let Ok(t) = cstr(self.path.as_os_str().as_bytes()) {
            let mut ok = false;
            for _ in 0..50 {
                // SAFETY: valid C string.
                if unsafe { libc::umount2(t.as_ptr(), libc::UMOUNT_NOFOLLOW) } == 0 {
                    ok = true;
                    break;
                }
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EBUSY) {
                    warn = Some(format!("unmount {}: {e}", self.path.display()));
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !ok {
                // SAFETY: as above.
                unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
                warn.get_or_insert_with(|| {
                    format!("{} stayed busy; detached lazily", self.path.display())
                });
            }
        }
        // The threads end when the kernel ends the connection.
        let n = self.threads.len();
        let mut ended = 0;
        while ended < n && self.done.recv_timeout(Duration::from_secs(20)).is_ok() {
            ended += 1;
        }
        if ended == n {
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        } else {
            self.threads.clear();
            warn.get_or_insert_with(|| "the FUSE server threads did not end".into());
        }
        let _ = std::fs::remove_file(&self.path);
        warn
    }
}

impl Drop for FuseView {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

fn errno_of(e: &crate::image::ImageError) -> i32 {
    match e {
        crate::image::ImageError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        _ => libc::EIO,
    }
}

fn serve_loop(dev: &File, view: &dyn FuseFile, read_only: bool) {
    let mut buf = vec![0u8; BUF];
    let mut out: Vec<u8> = Vec::with_capacity(BUF);
    loop {
        // SAFETY: reading into our own buffer.
        let n = unsafe { libc::read(dev.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
                // ENODEV: unmounted or aborted.
                _ => return,
            }
        }
        let req = &buf[..n as usize];
        if req.len() < IN_HEADER {
            continue;
        }
        let opcode = le32(req, 4);
        let unique = le64(req, 8);
        let body = &req[IN_HEADER..];
        out.clear();
        out.resize(16, 0);
        let err = handle(opcode, body, view, read_only, &mut out);
        let Some(err) = err else {
            continue; // no reply (FORGET, INTERRUPT)
        };
        if err != 0 {
            out.truncate(16);
        }
        let len = out.len() as u32;
        out[0..4].copy_from_slice(&len.to_le_bytes());
        out[4..8].copy_from_slice(&(-err).to_le_bytes());
        out[8..16].copy_from_slice(&unique.to_le_bytes());
        // SAFETY: writing our own buffer.
        let w = unsafe { libc::write(dev.as_raw_fd(), out.as_ptr().cast(), out.len()) };
        if w < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENODEV) {
            return;
        }
    }
}

fn push32(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_le_bytes());
}
fn push64(o: &mut Vec<u8>, v: u64) {
    o.extend_from_slice(&v.to_le_bytes());
}

fn attr_out(o: &mut Vec<u8>, view: &dyn FuseFile, read_only: bool) {
    push64(o, 3600); // attr_valid
    push32(o, 0);
    push32(o, 0);
    let size = view.size();
    push64(o, ROOT_ID);
    push64(o, size);
    push64(o, view.allocated() / 512);
    for _ in 0..3 {
        push64(o, 0); // atime, mtime, ctime
    }
    for _ in 0..3 {
        push32(o, 0);
    }
    push32(o, libc::S_IFREG | if read_only { 0o400 } else { 0o600 });
    push32(o, 1); // nlink
    push32(o, 0); // uid
    push32(o, 0); // gid
    push32(o, 0); // rdev
    push32(o, 4096); // blksize
    push32(o, 0); // flags
}

/// Handles one request; `None`: no reply. Otherwise the errno (0: the
/// reply body is in `out` after its 16-byte header).
fn handle(
    opcode: u32,
    body: &[u8],
    view: &dyn FuseFile,
    read_only: bool,
    out: &mut Vec<u8>,
) -> Option<i32> {
    match opcode {
        FUSE_INIT => {
            let minor = le32(body, 4);
            let max_readahead = le32(body, 8);
            let flags = le32(body, 12);
            push32(out, 7);
            push32(out, minor.min(31));
            push32(out, max_readahead);
            push32(
                out,
                flags & (FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES),
            );
            out.extend_from_slice(&16u16.to_le_bytes()); // max_background
            out.extend_from_slice(&12u16.to_le_bytes()); // congestion_threshold
            push32(out, MAX_WRITE);
            push32(out, 1); // time_gran
            out.extend_from_slice(&MAX_PAGES.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes()); // map_alignment
            push32(out, 0); // flags2
            push32(out, 0); // max_stack_depth
            out.extend_from_slice(&[0u8; 24]);
            Some(0)
        }
        FUSE_GETATTR | FUSE_SETATTR => {
            // The size never changes; a truncate or chmod is ignored.
            attr_out(out, view, read_only);
            Some(0)
        }
        FUSE_OPEN => {
            let flags = le32(body, 0) as i32;
            if read_only && flags & libc::O_ACCMODE != libc::O_RDONLY {
                return Some(libc::EROFS);
            }
            push64(out, 1);
            push32(out, FOPEN_DIRECT_IO);
            push32(out, 0);
            Some(0)
        }
        FUSE_READ => {
            let off = le64(body, 8);
            let size = le32(body, 16) as u64;
            let vs = view.size();
            let n = size.min(vs.saturating_sub(off)) as usize;
            let at = out.len();
            out.resize(at + n, 0);
            match view.read_at(&mut out[at..], off) {
                Ok(()) => Some(0),
                Err(e) => {
                    view.record_error(&format!("read at {off}: {e}"));
                    Some(errno_of(&e))
                }
            }
        }
        FUSE_WRITE => {
            if read_only {
                return Some(libc::EROFS);
            }
            let off = le64(body, 8);
            let size = le32(body, 16) as usize;
            let Some(data) = body.get(40..40 + size) else {
                return Some(libc::EINVAL);
            };
            if off.saturating_add(size as u64) > view.size() {
                return Some(libc::ENOSPC);
            }
            match view.write_at(data, off) {
                Ok(()) => {
                    push32(out, size as u32);
                    push32(out, 0);
                    Some(0)
                }
                Err(e) => {
                    view.record_error(&format!("{e}"));
                    Some(errno_of(&e))
                }
            }
        }
        FUSE_FALLOCATE => {
            if read_only {
                return Some(libc::EROFS);
            }
            let off = le64(body, 8);
            let len = le64(body, 16);
            let mode = le32(body, 24) as i32;
            let zeroing = [
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_ZERO_RANGE,
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            ];
            if !zeroing.contains(&mode) {
                return Some(libc::EOPNOTSUPP);
            }
            match view.punch(off, len) {
                Ok(()) => Some(0),
                Err(e) => {
                    view.record_error(&format!("{e}"));
                    Some(errno_of(&e))
                }
            }
        }
        FUSE_STATFS => {
            let blocks = view.size() / 4096;
            push64(out, blocks);
            push64(out, 0);
            push64(out, 0);
            push64(out, 1);
            push64(out, 0);
            push32(out, 4096); // bsize
            push32(out, 255); // namelen
            push32(out, 4096); // frsize
            push32(out, 0);
            out.extend_from_slice(&[0u8; 24]);
            Some(0)
        }
        FUSE_FLUSH | FUSE_RELEASE | FUSE_FSYNC | FUSE_DESTROY => Some(0),
        FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT => None,
        _ => Some(libc::ENOSYS),
    }
}

/// FUSE mounts made by vmfinal runs that are no longer alive, visible in
/// this mount namespace: (mount point, pid). They can only be here if a
/// run mounted outside a private namespace; the sweep unmounts them.
pub fn stale_mounts(
    alive: impl Fn(crate::owner::Owner) -> bool,
) -> Vec<(PathBuf, crate::owner::Owner)> {
    let Ok(s) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for l in s.lines() {
        let Some((left, right)) = l.split_once(" - ") else {
            continue;
        };
        let r: Vec<&str> = right.split(' ').collect();
        let f: Vec<&str> = left.split(' ').collect();
        if r.first() != Some(&FSTYPE) || f.len() < 5 {
            continue;
        }
        let Some(pid) = r
            .get(1)
            .and_then(|s| s.strip_prefix(FSNAME_PREFIX))
            .and_then(crate::owner::parse)
        else {
            continue;
        };
        if !alive(pid) {
            out.push((PathBuf::from(f[4].replace("\\040", " ")), pid));
        }
    }
    out
}
