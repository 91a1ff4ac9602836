//! Loop devices with an offset and size limit per partition (this kind of
//! kernel may have no partition parser), set up with `LOOP_CONFIGURE` and
//! `LO_FLAGS_AUTOCLEAR`: the kernel detaches a device by itself once its
//! last user (our descriptor, the mount) is gone, so even a SIGKILL leaves
//! none behind. Each device is tagged `vmfinal:PID@PIDNS` in its
//! `lo_file_name` (see `crate::owner`), which `vmfinal cleanup` looks for.
//!
//! Hand-written rather than the `loopdev` crate: that one binds the kernel
//! headers at build time (bindgen, libclang) for the three ioctls and one
//! struct used here, and vmfinal needs `LOOP_CONFIGURE` with autoclear,
//! read-only devices and its own tag in one call.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

/// Tag prefix in `lo_file_name`.
pub const TAG: &str = "vmfinal:";

#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn zero_info() -> LoopInfo64 {
    // SAFETY: plain old data; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// An attached loop device; dropping it detaches it (or leaves that to the
/// kernel's autoclear while a mount still uses it).
pub struct LoopDevice {
    path: PathBuf,
    file: File,
}

impl LoopDevice {
    /// Attaches `backing[offset .. offset+size]`.
    pub fn attach(backing: &Path, offset: u64, size: u64, read_only: bool) -> io::Result<Self> {
        let bf = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(backing)?;
        let ctl = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .map_err(|e| io::Error::new(e.kind(), format!("/dev/loop-control: {e}")))?;
        let mut info = zero_info();
        info.lo_offset = offset;
        info.lo_sizelimit = size;
        info.lo_flags = LO_FLAGS_AUTOCLEAR | if read_only { LO_FLAGS_READ_ONLY } else { 0 };
        let tag = format!("{TAG}{}", crate::owner::me());
        info.lo_file_name[..tag.len()].copy_from_slice(tag.as_bytes());
        for _ in 0..64 {
            // SAFETY: ioctl on our descriptor without arguments.
            let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let dev = match OpenOptions::new().read(true).write(!read_only).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            };
            let cfg = LoopConfig {
                fd: bf.as_raw_fd() as u32,
                block_size: 0,
                info,
                reserved: [0; 8],
            };
            // SAFETY: cfg is a valid loop_config for the call's duration.
            let r =
                unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
            if r == 0 {
                return Ok(Self { path, file: dev });
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // Someone took it between GET_FREE and CONFIGURE: next one.
                Some(libc::EBUSY) => continue,
                // Kernels before 5.8: SET_FD + SET_STATUS64.
                Some(libc::EINVAL) | Some(libc::ENOTTY) => {
                    // SAFETY: plain ioctls with a descriptor / struct pointer.
                    if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD, bf.as_raw_fd()) } != 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() == Some(libc::EBUSY) {
                            continue;
                        }
                        return Err(e);
                    }
                    // SAFETY: `info` is a live LoopInfo64 the kernel only reads; `dev` is an open loop device.
                    if unsafe {
                        libc::ioctl(
                            dev.as_raw_fd(),
                            LOOP_SET_STATUS64,
                            &info as *const LoopInfo64,
                        )
                    } != 0
                    {
                        let e = io::Error::last_os_error();
                        // SAFETY: plain ioctl on our own loop device with an integer argument.
                        unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD, 0) };
                        return Err(e);
                    }
                    return Ok(Self { path, file: dev });
                }
                _ => return Err(e),
            }
        }
        Err(io::Error::other("no free loop device"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Device number (major, minor).
    pub fn rdev(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.rdev())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // With autoclear set this is a formality while a mount holds the
        // device; it detaches at once when nothing does.
        // SAFETY: ioctl on our own descriptor.
        unsafe { libc::ioctl(self.file.as_raw_fd(), LOOP_CLR_FD, 0) };
    }
}

/// A loop device tagged by vmfinal, held open. Holding the descriptor keeps
/// the kernel from freeing (autoclear) and re-binding the device to someone
/// else between the moment its tag is read and the moment it is detached:
/// both happen on this same descriptor, so a device another program attached
/// meanwhile is never touched.
#[derive(Debug)]
pub struct TaggedLoop {
    pub path: PathBuf,
    pub owner: crate::owner::Owner,
    file: File,
}

/// The `vmfinal:PID@PIDNS` tag of the device open on `f`, if it is attached and tagged.
fn tag_of(f: &File) -> Option<crate::owner::Owner> {
    let mut info = zero_info();
    // SAFETY: `f` is an open loop device; `info` is a valid out-buffer of the
    // size LOOP_GET_STATUS64 writes.
    if unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            LOOP_GET_STATUS64,
            &mut info as *mut LoopInfo64,
        )
    } != 0
    {
        return None;
    }
    let nul = info
        .lo_file_name
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(LO_NAME_SIZE);
    let s = String::from_utf8_lossy(&info.lo_file_name[..nul]).into_owned();
    s.strip_prefix(TAG).and_then(crate::owner::parse)
}

/// Loop devices tagged by vmfinal (any process), each held open.
pub fn tagged() -> Vec<TaggedLoop> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        // Only attached devices have a backing file.
        if !e.path().join("loop/backing_file").exists() {
            continue;
        }
        let path = PathBuf::from(format!("/dev/{name}"));
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if let Some(owner) = tag_of(&file) {
            out.push(TaggedLoop { path, owner, file });
        }
    }
    out
}

impl TaggedLoop {
    /// Detaches the device if it still carries the same tag (checked again
    /// on the held descriptor, right before the detach).
    pub fn detach(self) -> io::Result<()> {
        if tag_of(&self.file) != Some(self.owner) {
            return Err(io::Error::other("no longer attached by that run"));
        }
        // SAFETY: ioctl on our own open descriptor of the device.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), LOOP_CLR_FD, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
