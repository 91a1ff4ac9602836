//! The capabilities guest code keeps. The package manager runs as uid 0
//! (it must own and chmod the files it installs and removes), so what
//! limits it is the bounding set: after `execve` root's capabilities are
//! the bounding set, so dropping a capability there removes it from every
//! program the guest runs. Effective, permitted and inheritable are set to
//! the kept set (inheritable empty), ambient is cleared.
//!
//! Not for: file access control inside the guest tree (guest code may
//! change any guest file; that is what a package manager does).

use std::io;

// Capability numbers (linux/capability.h).
const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_FOWNER: u32 = 3;
const CAP_FSETID: u32 = 4;
const CAP_KILL: u32 = 5;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETFCAP: u32 = 31;

/// Kept capabilities, each with why a package manager needs it.
pub const KEEP: &[(u32, &str, &str)] = &[
    (
        CAP_CHOWN,
        "CHOWN",
        "dpkg/rpm give unpacked files their owners; useradd in maintainer scripts",
    ),
    (
        CAP_DAC_OVERRIDE,
        "DAC_OVERRIDE",
        "root must read and remove files and directories it does not own (apt's _apt-owned partial/, 0000 /etc/shadow on RHEL)",
    ),
    (
        CAP_FOWNER,
        "FOWNER",
        "chmod, utimes and xattrs on files owned by other users (dpkg sets mtimes and modes after chown)",
    ),
    (
        CAP_FSETID,
        "FSETID",
        "keep setuid/setgid bits on files dpkg/rpm install or modify",
    ),
    (
        CAP_SETUID,
        "SETUID",
        "maintainer scripts switch to service users (runuser, su, start-stop-daemon --chuid)",
    ),
    (CAP_SETGID, "SETGID", "the same for groups"),
    (
        CAP_SETFCAP,
        "SETFCAP",
        "rpm and postinst scripts set file capabilities (security.capability, e.g. ping)",
    ),
    (
        CAP_KILL,
        "KILL",
        "maintainer scripts signal processes they started under another uid (only inside the sandbox's PID namespace)",
    ),
];

/// The kept set as a bit mask.
pub fn keep_mask() -> u64 {
    KEEP.iter().fold(0u64, |m, (c, _, _)| m | (1u64 << c))
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Drops every capability but `KEEP` from the bounding, effective,
/// permitted, inheritable and ambient sets of the calling thread.
pub fn drop_all_but_keep() -> io::Result<()> {
    let keep = keep_mask();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the
    // capset below removes.
    for cap in 0..64u32 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: plain prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r != 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break; // past the last capability this kernel knows
            }
            return Err(err("dropping a capability from the bounding set"));
        }
    }
    // SAFETY: plain prctl with integer arguments.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(err("clearing ambient capabilities"));
    }
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: keep as u32,
            permitted: keep as u32,
            inheritable: 0,
        },
        CapData {
            effective: (keep >> 32) as u32,
            permitted: (keep >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: header and a two-element data array, as version 3 requires.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r != 0 {
        return Err(err("capset"));
    }
    Ok(())
}

/// Sets `no_new_privs` (no setuid/file-capability gains across exec; needed
/// for an unprivileged seccomp filter).
pub fn no_new_privs() -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(err("no_new_privs"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_no_admin_capability() {
        let m = keep_mask();
        // DAC_READ_SEARCH 2, SETPCAP 8, NET_ADMIN 12, SYS_MODULE 16,
        // SYS_RAWIO 17, SYS_CHROOT 18, SYS_PTRACE 19, SYS_ADMIN 21,
        // SYS_BOOT 22, SYS_TIME 25, MKNOD 27, BPF 39.
        for c in [2u32, 8, 12, 16, 17, 18, 19, 21, 22, 25, 27, 39] {
            assert_eq!(m & (1 << c), 0, "capability {c} kept");
        }
        assert_eq!(m.count_ones() as usize, KEEP.len());
    }
}
