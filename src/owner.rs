//! Who made a loop device, a FUSE mount or a state file, and whether that
//! run is still alive: the one judgement behind every sweep of what killed
//! runs left (`guest::state::sweep_stale`, `vmfinal cleanup`).
//!
//! A PID alone does not name a run. Loop devices are global, and `/run` or
//! an output directory may be shared, while PIDs are numbered per PID
//! namespace: a vmfinal in a container (or under `unshare --pid`) records
//! PIDs that mean another process, or none, in the host's namespace, so a
//! sweep there that trusted the PID would detach a live run's loop devices
//! or delete its workspace. Every tag therefore carries the PID namespace
//! it was taken in (`PID@NSINODE`), and a run is judged:
//! - same namespace as ours: alive while `/proc/PID/comm` is `vmfinal`;
//! - another namespace: alive unless this process is in the initial PID
//!   namespace (which sees every process) and no process is left in that
//!   namespace; from inside a container nothing outside it can be judged,
//!   so it is left alone;
//! - a tag without a namespace (older vmfinal): judged by PID, as then.
//!
//! Files a run writes under a name (temporary outputs) also carry a
//! `flock` for as long as the run holds them (`hold`); a sweep removes such
//! a file only when it can take that lock (`in_use`), which no PID
//! namespace or shared directory can fool.

use std::os::unix::fs::MetadataExt;

/// The initial PID namespace's inode number (the kernel's PROC_PID_INIT_INO).
const INIT_PID_NS: u64 = 0xEFFF_FFFC;

/// The PID namespace of process `pid` ("self" for this one), by inode.
fn pidns_of(pid: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

/// This process's tag: `PID@NSINODE` (or `PID` where /proc has no ns).
pub fn me() -> String {
    let pid = std::process::id();
    match pidns_of("self") {
        Some(ns) => format!("{pid}@{ns}"),
        None => pid.to_string(),
    }
}

/// A parsed tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub ns: Option<u64>,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.pid)
    }
}

/// Parses `PID` or `PID@NSINODE`.
pub fn parse(s: &str) -> Option<Owner> {
    let (pid, ns) = match s.split_once('@') {
        Some((p, n)) => (p, Some(n.parse::<u64>().ok()?)),
        None => (s, None),
    };
    Some(Owner {
        pid: pid.parse().ok()?,
        ns,
    })
}

/// Is the run that made this tag possibly still alive? (Never false for a
/// run this process cannot see.)
pub fn alive(o: Owner) -> bool {
    let here = pidns_of("self");
    match (o.ns, here) {
        (Some(ns), Some(here)) if ns != here => {
            if here != INIT_PID_NS {
                return true;
            }
            namespace_has_processes(ns)
        }
        _ => {
            o.pid == std::process::id()
                || std::fs::read_to_string(format!("/proc/{}/comm", o.pid))
                    .is_ok_and(|c| c.trim() == "vmfinal")
        }
    }
}

/// Does any process (as this process sees /proc) live in PID namespace `ns`?
fn namespace_has_processes(ns: u64) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return true;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if n.bytes().all(|b| b.is_ascii_digit()) && pidns_of(n) == Some(ns) {
            return true;
        }
    }
    false
}

/// Marks `f` as held by this run for as long as its open file description
/// lives (an exclusive `flock`; the kernel drops it when the run dies).
pub fn hold(f: &std::fs::File) -> std::io::Result<()> {
    rustix::fs::flock(f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(std::io::Error::from)
}

/// Is the file at `p` held by a live run (see `hold`)? Anything but a
/// regular file, and a file that cannot be opened, counts as in use (it is
/// left alone): a sweep never follows a symlink or waits on a FIFO that
/// someone put where a dead run's file was.
pub fn in_use(p: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    if !std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file()) {
        return true;
    }
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
    else {
        return true;
    };
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        // Ours now, so nobody held it; dropping `f` releases it.
        Ok(()) => false,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_old_tags_parse() {
        let t = me();
        let o = parse(&t).expect("own tag parses");
        assert_eq!(o.pid, std::process::id());
        assert!(alive(o));
        assert_eq!(parse("123"), Some(Owner { pid: 123, ns: None }));
        assert_eq!(parse("12@x"), None);
        assert_eq!(parse("@5"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn a_held_file_is_in_use_until_it_is_closed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        let f = std::fs::File::create(&p).unwrap();
        assert!(!in_use(&p));
        hold(&f).unwrap();
        assert!(in_use(&p));
        drop(f);
        assert!(!in_use(&p));
    }

    #[test]
    fn a_run_in_a_live_foreign_namespace_is_left_alone() {
        // An inode no namespace has: dead when we are in the initial
        // namespace (we see everything), unknowable (alive) otherwise.
        let o = Owner {
            pid: 1,
            ns: Some(1),
        };
        let init = pidns_of("self") == Some(INIT_PID_NS);
        assert_eq!(alive(o), !init);
        // Our own namespace under a foreign-looking tag of a live process.
        if let Some(ns) = pidns_of("1") {
            if Some(ns) != pidns_of("self") {
                assert!(alive(Owner {
                    pid: 1,
                    ns: Some(ns)
                }));
            }
        }
    }
}
