//! Commands run inside the guest: chrooted, in fresh mount, PID and network
//! namespaces (util-linux `unshare`), with a fresh /proc, a read-only /sys,
//! a private /dev holding only the basic nodes and the guest's own loop
//! devices (and /dev/disk/by-uuid links to them, so that update-grub writes
//! `root=UUID=`), and tmpfs /run and /tmp so nothing they leave there lands
//! in the image. The setup inside the namespaces is vmfinal's hidden
//! `__sandbox` command, which resolves every mount point inside the guest
//! root (no guest symlink can redirect a mount to a host path).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::root::openat2;
use crate::profile::plan::Sandbox;

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

pub struct GuestSandbox {
    pub root: PathBuf,
    /// (loop device, rdev, filesystem UUID)
    pub devices: Vec<(PathBuf, u64, String)>,
}

impl Sandbox for GuestSandbox {
    fn run(&self, argv: &[&str]) -> io::Result<(bool, String)> {
        let exe = std::env::current_exe()?;
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--pid",
            "--net",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
        ])
        .arg(exe)
        .arg("__sandbox")
        .arg(&self.root);
        for (dev, rdev, uuid) in &self.devices {
            c.arg("--dev").arg(format!(
                "{}:{}:{}:{}",
                dev.display(),
                libc::major(*rdev),
                libc::minor(*rdev),
                uuid
            ));
        }
        c.arg("--").args(argv);
        c.env_clear().envs(ENV.iter().copied());
        c.stdin(Stdio::null());
        let out = c
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("unshare: {e}")))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }
}

#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    pub root: PathBuf,
    /// NAME:MAJOR:MINOR:UUID of a block device to offer
    #[arg(long = "dev")]
    pub devs: Vec<String>,
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

fn c(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL"))
}

fn check(r: libc::c_int, what: &str) -> io::Result<()> {
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// A directory inside the guest, with no symlink on the way.
fn guest_dir(root: &OwnedFd, rel: &str) -> io::Result<OwnedFd> {
    openat2(
        root.as_raw_fd(),
        rel.as_bytes(),
        libc::O_PATH | libc::O_DIRECTORY,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
}

fn mount_on(
    fd: &OwnedFd,
    src: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let target = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    super::mount::mount(Path::new(src), &target, fstype, flags, data)
        .map_err(|e| io::Error::new(e.kind(), format!("mount {fstype} on {src}: {e}")))
}

/// Inside the namespaces (PID 1 of the new PID namespace): set up the
/// guest's /proc, /sys, /dev, /run, /tmp, chroot, and exec the command.
pub fn init(a: &SandboxArgs) -> anyhow::Result<i32> {
    let root = openat2(
        libc::AT_FDCWD,
        a.root.as_os_str().as_bytes(),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )?;
    let ms = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if let Ok(d) = guest_dir(&root, "proc") {
        mount_on(&d, "proc", "proc", ms, "")?;
    }
    if let Ok(d) = guest_dir(&root, "sys") {
        let _ = mount_on(&d, "sysfs", "sysfs", ms | libc::MS_RDONLY, "");
    }
    for (dir, mode) in [("run", "0755"), ("tmp", "1777")] {
        if let Ok(d) = guest_dir(&root, dir) {
            mount_on(
                &d,
                "tmpfs",
                "tmpfs",
                libc::MS_NOSUID | libc::MS_NODEV,
                &format!("mode={mode},size=256m"),
            )?;
        }
    }
    if let Ok(d) = guest_dir(&root, "dev") {
        mount_on(
            &d,
            "tmpfs",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "mode=0755,size=1m",
        )?;
        let dev = guest_dir(&root, "dev")?;
        let devfd = openat2(
            dev.as_raw_fd(),
            b".",
            libc::O_RDONLY | libc::O_DIRECTORY,
            libc::RESOLVE_BENEATH,
        )?;
        let fd = devfd.as_raw_fd();
        let mk = |name: &str, kind: libc::mode_t, major: u32, minor: u32| -> io::Result<()> {
            let n = c(name.as_bytes())?;
            // SAFETY: valid descriptor and string.
            check(
                unsafe { libc::mknodat(fd, n.as_ptr(), kind | 0o666, libc::makedev(major, minor)) },
                name,
            )
        };
        for (n, mi) in [
            ("null", 3),
            ("zero", 5),
            ("full", 7),
            ("random", 8),
            ("urandom", 9),
        ] {
            mk(n, libc::S_IFCHR, 1, mi)?;
        }
        mk("tty", libc::S_IFCHR, 5, 0)?;
        let link = |target: &str, name: &str| -> io::Result<()> {
            let (t, n) = (c(target.as_bytes())?, c(name.as_bytes())?);
            // SAFETY: valid descriptor and strings.
            check(unsafe { libc::symlinkat(t.as_ptr(), fd, n.as_ptr()) }, name)
        };
        link("/proc/self/fd", "fd")?;
        link("/proc/self/fd/0", "stdin")?;
        link("/proc/self/fd/1", "stdout")?;
        link("/proc/self/fd/2", "stderr")?;
        let mkdir = |name: &str| -> io::Result<()> {
            let n = c(name.as_bytes())?;
            // SAFETY: valid descriptor and string.
            check(unsafe { libc::mkdirat(fd, n.as_ptr(), 0o755) }, name)
        };
        mkdir("pts")?;
        mkdir("shm")?;
        if !a.devs.is_empty() {
            mkdir("disk")?;
            mkdir("disk/by-uuid")?;
        }
        // The guest's block devices, at the same path as vmfinal mounted
        // them from (/run/vmfinal/PID.dev/partN, inside the guest's fresh
        // /run), with /dev/disk/by-uuid links to them.
        let run = openat2(
            root.as_raw_fd(),
            b"run",
            libc::O_RDONLY | libc::O_DIRECTORY,
            libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS,
        )?;
        for (devno, d) in a.devs.iter().enumerate() {
            let f: Vec<&str> = d.rsplitn(4, ':').collect();
            if f.len() != 4 {
                anyhow::bail!("bad --dev {d}");
            }
            let (uuid, minor, major, path) = (f[0], f[2 - 1], f[2], f[3]);
            let (major, minor): (u32, u32) = (major.parse()?, minor.parse()?);
            let rel = path
                .strip_prefix("/run/")
                .filter(|r| r.split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
                .ok_or_else(|| anyhow::anyhow!("bad --dev path {path}"))?;
            let comps: Vec<&str> = rel.split('/').collect();
            let mut dir = openat2(
                run.as_raw_fd(),
                b".",
                libc::O_RDONLY | libc::O_DIRECTORY,
                libc::RESOLVE_BENEATH,
            )?;
            for c0 in &comps[..comps.len() - 1] {
                let n = c(c0.as_bytes())?;
                // SAFETY: valid descriptor and string.
                unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), 0o755) };
                dir = openat2(
                    dir.as_raw_fd(),
                    c0.as_bytes(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
                )?;
            }
            // The node itself lives in /dev under a name GRUB's hostdisk
            // code accepts as a whole disk (no trailing digits); the path
            // vmfinal mounted from is a symlink to it.
            let last = comps[comps.len() - 1];
            let letter = (b'a' + (devno % 26) as u8) as char;
            let devname = format!("vmfinal-disk-{letter}");
            let dn = c(devname.as_bytes())?;
            // SAFETY: valid descriptor and string.
            check(
                unsafe {
                    libc::mknodat(
                        fd,
                        dn.as_ptr(),
                        libc::S_IFBLK | 0o660,
                        libc::makedev(major, minor),
                    )
                },
                &devname,
            )?;
            let (t, n) = (
                c(format!("/dev/{devname}").as_bytes())?,
                c(last.as_bytes())?,
            );
            // SAFETY: valid descriptor and strings.
            check(
                unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) },
                last,
            )?;
            if !uuid.is_empty() && !uuid.contains('/') {
                let _ = link(&format!("../../{devname}"), &format!("disk/by-uuid/{uuid}"));
            }
        }
    }
    // SAFETY: plain syscalls on our descriptor.
    check(unsafe { libc::fchdir(root.as_raw_fd()) }, "fchdir")?;
    let dot = c(b".")?;
    check(unsafe { libc::chroot(dot.as_ptr()) }, "chroot")?;
    std::env::set_current_dir(Path::new("/"))?;
    let err = {
        use std::os::unix::process::CommandExt;
        Command::new(&a.argv[0]).args(&a.argv[1..]).exec()
    };
    anyhow::bail!("cannot run {} in the guest: {err}", a.argv[0])
}
