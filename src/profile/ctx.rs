//! What planning and running a profile share with its step kinds (`plan`
//! for files, `kernels` for kernel packages): the context (`Ctx`), the walk
//! limit, and how guest output is shown. A module of its own so that
//! `plan` (which calls `kernels`) and `kernels` do not import each other.

use crate::guest::root::GuestRoot;
use crate::guest::sandbox::Sandbox;

/// What planning and running need.
pub struct Ctx<'a> {
    pub root: &'a GuestRoot,
    /// `run` steps allowed (--allow-run).
    pub allow_run: bool,
    /// Runs commands chrooted in the guest (None: no privileged sandbox).
    pub sandbox: Option<&'a dyn Sandbox>,
    /// The guest's ext4 filesystems with `inline_data`: (st_dev, largest
    /// file kept inline) (`alloc::inline_data_devs`); small files and new
    /// directories take no block there.
    pub inline_data: Vec<(u64, u64)>,
}

/// The last `n` lines of guest output as one line, with control characters
/// escaped (guest output must not drive the user's terminal).
pub fn output_tail(out: &str, n: usize) -> String {
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(n)..];
    tail.iter()
        .map(|l| printable(l))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// `s` with control characters escaped.
pub fn printable(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            o.extend(c.escape_default());
        } else {
            o.push(c);
        }
    }
    o
}

/// Deepest directory level below a glob's literal prefix that planning
/// descends to (a guest's nesting must not exhaust the stack or the
/// descriptor table); deeper entries are left alone, and their ancestors
/// stay.
pub const MAX_DEPTH: usize = 256;
