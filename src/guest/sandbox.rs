//! Guest code (the guest's dpkg/rpm and their maintainer scripts, profiles'
//! `run` steps) runs here, with what a package manager needs and no more:
//!
//! * fresh mount, PID, network, UTS and IPC namespaces (util-linux
//!   `unshare`), chrooted into the guest, with the guest's own /proc
//!   (read-only), /sys (read-only), /run, /tmp and a read-only /dev of a few
//!   nodes plus the guest's disks as read-only loop devices (see `fs`);
//! * every capability dropped but the file-ownership ones (see `caps`) from
//!   all five sets, `no_new_privs`, and a seccomp filter denying mount,
//!   namespace, module, kexec, reboot, swap, ptrace, BPF, keyring and
//!   handle-open syscalls (see `seccomp`);
//! * no inherited descriptor but stdin (/dev/null) and one output pipe,
//!   whose last 256 KiB vmfinal keeps; no controlling terminal;
//! * a session and process group of its own, so Ctrl-C reaches only
//!   vmfinal, which lets the current command finish and stops between
//!   commands; killed with vmfinal (parent-death signal), and everything in
//!   the PID namespace dies with its init.
//!
//! The setup inside the namespaces is vmfinal's hidden `__sandbox`
//! command: it mounts, creates the nodes, chroots, drops privileges (also
//! for itself) and then stays as the namespace's init, reaping, while the
//! command runs as its child.
//!
//! Not for: protecting the guest's own files from guest code (it runs as
//! root inside the guest tree), nor the host kernel from the guest's
//! filesystems (README, Threat model).

mod caps;
mod fs;
mod seccomp;

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::loopdev::LoopDevice;
use super::root::openat2;
use fs::DevSpec;

/// Runs a command inside the guest in fresh namespaces. Defined beside its
/// one implementation (`GuestSandbox`); profile planning takes it as
/// `&dyn Sandbox`, so a dry run needs none.
pub trait Sandbox {
    /// Runs `argv` chrooted into the guest; returns (status ok, combined
    /// output). Output past a cap keeps its end and starts with `OUTPUT_CUT`.
    fn run(&self, argv: &[&str]) -> io::Result<(bool, String)>;
}

/// The first line of a sandbox output whose beginning was cut.
pub const OUTPUT_CUT: &str = "[vmfinal: output cut]\n";

/// The environment commands get.
const ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
    ("TERM", "dumb"),
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("DEBCONF_NONINTERACTIVE_SEEN", "true"),
];

/// How much of a command's output vmfinal keeps (the end of it): enough for
/// `rpm -ql` of a kernel's modules, bounded against a guest that floods.
const OUTPUT_KEEP: usize = 32 << 20;

pub struct GuestSandbox {
    pub root: PathBuf,
    /// (block node vmfinal mounted from, rdev, filesystem UUID)
    pub devices: Vec<(PathBuf, u64, String)>,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a two-element array for the call.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel gave us two new descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads `r` to the end, keeping the last `OUTPUT_KEEP` bytes (then
/// prefixed by `OUTPUT_CUT`).
fn read_tail(r: OwnedFd) -> String {
    let mut f = std::fs::File::from(r);
    let mut keep: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                keep.extend_from_slice(&buf[..n]);
                if keep.len() > 2 * OUTPUT_KEEP {
                    keep.drain(..keep.len() - OUTPUT_KEEP);
                    cut = true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if keep.len() > OUTPUT_KEEP {
        keep.drain(..keep.len() - OUTPUT_KEEP);
        cut = true;
    }
    let text = String::from_utf8_lossy(&keep);
    if cut {
        format!("{OUTPUT_CUT}{text}")
    } else {
        text.into_owned()
    }
}

impl Sandbox for GuestSandbox {
    fn run(&self, argv: &[&str]) -> io::Result<(bool, String)> {
        let exe = std::env::current_exe()?;
        // The guest sees its disks through read-only loop devices over the
        // ones vmfinal mounted: GRUB can probe them, nothing can write them.
        // They detach when this call returns (autoclear once closed).
        let mut ro = Vec::new();
        let mut specs = Vec::new();
        for (dev, _, uuid) in &self.devices {
            let lo = LoopDevice::attach(dev, 0, 0, true).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("read-only view of {}: {e}", dev.display()),
                )
            })?;
            let rdev = lo.rdev()?;
            specs.push(DevSpec {
                path: dev.display().to_string(),
                major: libc::major(rdev),
                minor: libc::minor(rdev),
                uuid: uuid.clone(),
            });
            ro.push(lo);
        }
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--pid",
            "--net",
            "--uts",
            "--ipc",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
        ])
        .arg(exe)
        .arg("__sandbox")
        .arg(&self.root);
        for s in &specs {
            c.arg("--dev").arg(s.to_arg());
        }
        c.arg("--").args(argv);
        c.env_clear().envs(ENV.iter().copied());
        let (r, w) = pipe()?;
        c.stdin(Stdio::null())
            .stdout(Stdio::from(w.try_clone()?))
            .stderr(Stdio::from(w));
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(move || {
                // Its own session: no controlling terminal (no /dev/tty, no
                // TIOCSTI into the user's shell), and Ctrl-C at the
                // terminal reaches vmfinal only.
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Dies with vmfinal; `--kill-child` takes the namespace's
                // init with it, and the kernel the rest of the namespace.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = c
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("unshare: {e}")))?;
        // Our copies of the write end must be closed for EOF.
        drop(c);
        let text = read_tail(r);
        let status = loop {
            match child.wait() {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        drop(ro);
        Ok((status.success(), text))
    }
}

/// What `vmfinal __sandbox` runs: the guest root, the block devices to
/// offer and the command. (Its command-line spelling:
/// `commands::guest_args::SandboxArgs`.)
#[derive(Debug, Clone)]
pub struct SandboxRequest {
    pub root: PathBuf,
    /// `PATH:MAJOR:MINOR:UUID` of a (read-only) block device to offer.
    pub devs: Vec<String>,
    pub argv: Vec<String>,
}

fn check(r: libc::c_int, what: &str) -> io::Result<()> {
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// Marks every descriptor above stderr close-on-exec.
fn cloexec_from_3() -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Kernels before 5.11: walk our descriptors.
    for e in std::fs::read_dir("/proc/self/fd")?.flatten() {
        if let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            if fd > 2 {
                // SAFETY: fcntl on a descriptor number; a stale one fails harmlessly.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
    Ok(())
}

/// Drops this process's privileges for good: capabilities, no_new_privs,
/// not dumpable (its /proc entries are closed to guest code), seccomp.
fn harden() -> io::Result<()> {
    cloexec_from_3()?;
    check(
        // SAFETY: plain prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) },
        "PR_SET_DUMPABLE",
    )?;
    caps::drop_all_but_keep()?;
    caps::no_new_privs()?;
    seccomp::install()
}

/// Inside the namespaces (PID 1 of the new PID namespace): set up the
/// guest's /proc, /sys, /dev, /run, /tmp, chroot, drop privileges, run the
/// command as a child and reap until it ends. Returns its exit code.
pub fn init(a: &SandboxRequest) -> anyhow::Result<i32> {
    let devs = a
        .devs
        .iter()
        .map(|d| DevSpec::parse(d))
        .collect::<io::Result<Vec<_>>>()?;
    let argv: Vec<CString> = a
        .argv
        .iter()
        .map(|s| CString::new(s.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("NUL in a sandbox argument"))?;
    let root = openat2(
        libc::AT_FDCWD,
        a.root.as_os_str().as_bytes(),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )?;
    fs::prepare(&root, &devs)?;
    // SAFETY: plain syscalls on our descriptor and a static string.
    check(unsafe { libc::fchdir(root.as_raw_fd()) }, "fchdir")?;
    // SAFETY: a static NUL-terminated string.
    check(unsafe { libc::chroot(c".".as_ptr()) }, "chroot")?;
    drop(root);
    std::env::set_current_dir(Path::new("/"))?;
    // Its own session inside the namespace: guest code's kill(0, ...) and
    // process-group signals stay within the sandbox.
    // SAFETY: no arguments.
    unsafe { libc::setsid() };
    harden()?;
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: this process is single-threaded (the sandbox command starts no
    // thread); the child only resets a signal and execs.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        anyhow::bail!("fork: {}", io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: async-signal-safe calls only; ptrs is NUL-terminated and
        // its strings live (the memory is the parent's copy).
        unsafe {
            // Rust ignores SIGPIPE; guest programs expect the default.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::execvp(ptrs[0], ptrs.as_ptr());
            let msg = b"vmfinal sandbox: cannot run the command in the guest\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(127);
        }
    }
    // Reap everything until the command ends; whatever it left running dies
    // with this process (the namespace's init).
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(128 + libc::WTERMSIG(status));
            }
            continue;
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            anyhow::bail!("waitpid: {}", io::Error::last_os_error());
        }
    }
}
