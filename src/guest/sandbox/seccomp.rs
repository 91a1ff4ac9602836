//! The seccomp filter the guest's package manager runs under: a small
//! classic-BPF program of our own (no dependency), installed with
//! `seccomp(SECCOMP_SET_MODE_FILTER)` after `no_new_privs`. It denies with
//! EPERM what a package manager never needs and an escape would: mounting,
//! namespaces, modules, kexec, reboot, swap, ptrace and cross-process memory
//! access, BPF, keyrings, handle-based opens, io_uring, perf, clock and
//! host-name changes, terminal input injection (TIOCSTI/TIOCLINUX); `clone`
//! with a namespace flag is denied, `clone3` (whose flags seccomp cannot
//! read) answers ENOSYS so libc falls back to `clone`. Syscalls of another
//! ABI (i386 through int 0x80, x32) are denied whole.
//!
//! Not for: an allow-list. dpkg, rpm and maintainer scripts run arbitrary
//! programs; the capability set (see `caps`) is what limits file access.

use std::io;

/// `struct seccomp_data` offsets.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of args[0] and args[1] (little endian).
const OFF_ARG0_LO: u32 = 16;
const OFF_ARG1_LO: u32 = 24;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
/// x32 syscalls carry this bit in their number on x86_64.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const CLONE_NS_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWTIME) as u32;

/// Denied with EPERM (the syscalls both architectures have).
const DENY_COMMON: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_bpf,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_process_madvise,
    libc::SYS_kcmp,
    libc::SYS_pidfd_getfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_perf_event_open,
    libc::SYS_fanotify_init,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_vhangup,
];

#[cfg(target_arch = "x86_64")]
const DENY_ARCH: &[libc::c_long] = &[
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_uselib,
    libc::SYS_sysfs,
    libc::SYS__sysctl,
    libc::SYS_lookup_dcookie,
];
#[cfg(target_arch = "aarch64")]
const DENY_ARCH: &[libc::c_long] = &[libc::SYS_lookup_dcookie];

#[derive(Clone, Copy)]
enum Insn {
    /// Load the 32-bit word at this offset of seccomp_data.
    Load(u32),
    /// If A == k go to label, else fall through.
    JeqTo(u32, Label),
    /// If A & k != 0 go to label, else fall through.
    JsetTo(u32, Label),
    /// If A >= k go to label, else fall through.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    JgeTo(u32, Label),
    /// If A != k go to label, else fall through.
    JneTo(u32, Label),
    Ret(u32),
    Mark(Label),
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Label {
    Deny,
    NoSys,
    Clone,
    Ioctl,
}

const EPERM_RET: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const ENOSYS_RET: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

fn program() -> Vec<Insn> {
    use Insn::*;
    let mut p = vec![Load(OFF_ARCH), JneTo(AUDIT_ARCH, Label::Deny), Load(OFF_NR)];
    #[cfg(target_arch = "x86_64")]
    p.push(JgeTo(X32_SYSCALL_BIT, Label::Deny));
    let mut deny: Vec<libc::c_long> = DENY_COMMON.iter().chain(DENY_ARCH).copied().collect();
    deny.sort_unstable();
    deny.dedup();
    p.extend(deny.into_iter().map(|nr| JeqTo(nr as u32, Label::Deny)));
    p.extend([
        JeqTo(libc::SYS_clone as u32, Label::Clone),
        JeqTo(libc::SYS_clone3 as u32, Label::NoSys),
        JeqTo(libc::SYS_ioctl as u32, Label::Ioctl),
        Ret(libc::SECCOMP_RET_ALLOW),
        Mark(Label::Clone),
        Load(OFF_ARG0_LO),
        JsetTo(CLONE_NS_FLAGS, Label::Deny),
        Ret(libc::SECCOMP_RET_ALLOW),
        Mark(Label::Ioctl),
        Load(OFF_ARG1_LO),
        JeqTo(libc::TIOCSTI as u32, Label::Deny),
        JeqTo(libc::TIOCLINUX as u32, Label::Deny),
        Ret(libc::SECCOMP_RET_ALLOW),
        Mark(Label::NoSys),
        Ret(ENOSYS_RET),
        Mark(Label::Deny),
        Ret(EPERM_RET),
    ]);
    p
}

/// Assembles the program: labels become forward jump offsets (each must fit
/// in the 8-bit jt/jf fields).
fn assemble(p: &[Insn]) -> io::Result<Vec<libc::sock_filter>> {
    let mut at = std::collections::HashMap::new();
    let mut n = 0usize;
    for i in p {
        match i {
            Insn::Mark(l) => {
                at.insert(*l, n);
            }
            _ => n += 1,
        }
    }
    let jump = |from: usize, l: &Label| -> io::Result<u8> {
        let to = *at
            .get(l)
            .ok_or_else(|| io::Error::other(format!("seccomp: label {l:?} missing")))?;
        to.checked_sub(from + 1)
            .and_then(|d| u8::try_from(d).ok())
            .ok_or_else(|| io::Error::other("seccomp: jump out of range"))
    };
    let f = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let (ld, jmp, ret) = (
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        libc::BPF_JMP | libc::BPF_K,
        libc::BPF_RET | libc::BPF_K,
    );
    let mut out = Vec::with_capacity(n);
    for i in p {
        let pc = out.len();
        let insn = match i {
            Insn::Mark(_) => continue,
            Insn::Load(off) => f(ld, 0, 0, *off),
            Insn::JeqTo(k, l) => f(jmp | libc::BPF_JEQ, jump(pc, l)?, 0, *k),
            Insn::JneTo(k, l) => f(jmp | libc::BPF_JEQ, 0, jump(pc, l)?, *k),
            Insn::JsetTo(k, l) => f(jmp | libc::BPF_JSET, jump(pc, l)?, 0, *k),
            Insn::JgeTo(k, l) => f(jmp | libc::BPF_JGE, jump(pc, l)?, 0, *k),
            Insn::Ret(k) => f(ret, 0, 0, *k),
        };
        out.push(insn);
    }
    Ok(out)
}

/// Installs the filter on the calling thread (inherited across fork and
/// exec). `no_new_privs` must be set first.
pub fn install() -> io::Result<()> {
    let prog = assemble(&program())?;
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len())
            .map_err(|_| io::Error::other("seccomp: program too long"))?,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at `prog`, which outlives the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("seccomp filter: {e}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_with_jumps_in_range() {
        let p = assemble(&program()).unwrap();
        assert!(p.len() > DENY_COMMON.len());
        // The last two instructions are the ENOSYS and EPERM returns.
        assert_eq!(p[p.len() - 1].k, EPERM_RET);
        assert_eq!(p[p.len() - 2].k, ENOSYS_RET);
    }
}
