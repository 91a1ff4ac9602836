//! Progress while a run works, on a terminal only (stderr), and the journal
//! of the stages that finished, so that when a later stage fails the user
//! still learns what was done before it.
//!
//! * [`stage`] starts a named stage (workspace, mount, plan, clean, reclaim,
//!   unmount, compact, ...): a spinner with the elapsed time, or a bar of
//!   items once [`Stage::items`] gives a count; [`Stage::done`] leaves one
//!   line with its time and note. A stage dropped without `done` failed.
//! * [`Transfer`] is a conversion's byte bar. Inside a stage it takes over
//!   that stage's line. It counts the bytes the converter reads (not holes or
//!   free space, which cost nothing), and its ETA is smoothed ([`Eta`]) so it
//!   does not climb while work goes steadily.
//! * [`journal_line`]: the stages finished so far, for the error path.
//!
//! `--quiet` ([`set_quiet`]) or a stderr that is not a terminal hides every
//! bar; the journal is kept either way.
//!
//! Not here: the reports printed at the end (`report`, `session::print_human`).

use std::borrow::Cow;
use std::io::IsTerminal;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::extent::Extent;
use crate::text::human_bytes;

/// A finished (or failed) stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StageRecord {
    pub name: String,
    pub seconds: f64,
    /// What it did, in a few words (`9 profiles, 120.3 MiB freed`).
    pub note: Option<String>,
    pub failed: bool,
}

struct Shared {
    quiet: bool,
    /// The running stage's line, which a `Transfer` takes over.
    current: Option<ProgressBar>,
    journal: Vec<StageRecord>,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared {
    quiet: false,
    current: None,
    journal: Vec::new(),
});

fn shared() -> MutexGuard<'static, Shared> {
    SHARED.lock().unwrap_or_else(|e| e.into_inner())
}

/// `--quiet`: no bars at all.
pub fn set_quiet(quiet: bool) {
    shared().quiet = quiet;
}

fn visible() -> bool {
    !shared().quiet && std::io::stderr().is_terminal()
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

const SPINNER: &str = "{spinner} {prefix:<10} {elapsed:>4} {msg}";
const ITEMS: &str = "{spinner} {prefix:<10} {elapsed:>4} [{bar:30}] {pos}/{len} {msg}";
const BYTES: &str = "{spinner} {prefix:<10} {elapsed:>4} [{wide_bar}] {bytes}/{total_bytes} {msg}";
const DONE: &str = "  {prefix:<10} {msg}";
/// A conversion outside any stage (`compact`, `expand`): no name column.
const BYTES_ALONE: &str = "{spinner} {elapsed:>4} [{wide_bar}] {bytes}/{total_bytes} {msg}";

/// A running stage. Call [`Stage::done`] when it finished; dropping it
/// without means it failed.
pub struct Stage {
    name: String,
    started: Instant,
    bar: ProgressBar,
    note: Option<String>,
    finished: bool,
}

/// Starts stage `name`.
pub fn stage(name: &str) -> Stage {
    let bar = if visible() {
        let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        b.set_style(style(SPINNER));
        b.set_prefix(name.to_string());
        b.enable_steady_tick(Duration::from_millis(120));
        b
    } else {
        ProgressBar::hidden()
    };
    shared().current = Some(bar.clone());
    Stage {
        name: name.to_string(),
        started: Instant::now(),
        bar,
        note: None,
        finished: false,
    }
}

impl Stage {
    /// The stage has `total` items (profiles, filesystems): a bar of them.
    pub fn items(&self, total: u64) {
        self.bar.set_length(total);
        self.bar.set_style(style(ITEMS));
    }
    /// One more item done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }
    /// What it works on now (a profile's name, bytes read so far).
    pub fn message(&self, m: impl Into<Cow<'static, str>>) {
        self.bar.set_message(m);
    }
    /// What it did, kept in the journal and shown on its line.
    pub fn note(&mut self, note: impl Into<String>) {
        self.note = Some(note.into());
    }
    /// The stage finished: one line with its time and note; returns seconds.
    pub fn done(mut self) -> f64 {
        self.finished = true;
        let seconds = self.started.elapsed().as_secs_f64();
        let mut msg = format!("{seconds:.1} s");
        if let Some(n) = &self.note {
            msg.push_str(&format!("  {n}"));
        }
        self.bar.set_style(style(DONE));
        self.bar.finish_with_message(msg);
        self.record(seconds, false);
        seconds
    }
    fn record(&self, seconds: f64, failed: bool) {
        let mut s = shared();
        s.current = None;
        s.journal.push(StageRecord {
            name: self.name.clone(),
            seconds,
            note: self.note.clone(),
            failed,
        });
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.finished {
            let seconds = self.started.elapsed().as_secs_f64();
            self.bar.abandon_with_message("failed");
            self.record(seconds, true);
        }
    }
}

/// The stages recorded so far.
pub fn journal() -> Vec<StageRecord> {
    shared().journal.clone()
}

/// `workspace 3.1 s, mount 0.2 s, clean 1.0 s (9 profiles, 120.3 MiB freed), reclaim failed after 0.1 s`,
/// or `None` when no stage finished. Printed before an error.
pub fn journal_line() -> Option<String> {
    let j = journal();
    if !j.iter().any(|r| !r.failed) {
        return None;
    }
    let parts: Vec<String> = j
        .iter()
        .map(|r| {
            let mut s = if r.failed {
                format!("{} failed after {:.1} s", r.name, r.seconds)
            } else {
                format!("{} {:.1} s", r.name, r.seconds)
            };
            if let Some(n) = &r.note {
                s.push_str(&format!(" ({n})"));
            }
            s
        })
        .collect();
    Some(parts.join(", "))
}

/// True if `--quiet` was given.
pub fn quiet() -> bool {
    shared().quiet
}

/// A conversion's byte bar. `advance` gets guest bytes in guest order (the
/// pipeline writes jobs in order); the bar counts the data bytes among them.
pub struct Transfer {
    bar: ProgressBar,
    /// Its own line (not a stage's): cleared at the end.
    own: bool,
    inner: Mutex<TransferState>,
}

struct TransferState {
    extents: Vec<Extent>,
    idx: usize,
    pos: u64,
    done: u64,
    total: u64,
    started: Instant,
    eta: Eta,
}

impl Transfer {
    /// `to_read`: the normalized guest ranges the converter reads.
    pub fn new(to_read: &[Extent], quiet: bool) -> Self {
        let total = crate::extent::total(to_read);
        let show = !quiet && visible();
        let current = shared().current.clone();
        let (bar, own) = match current {
            Some(b) if show && !b.is_hidden() => (b, false),
            _ if show => (
                ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
                true,
            ),
            _ => (ProgressBar::hidden(), true),
        };
        if !bar.is_hidden() {
            bar.set_length(total);
            bar.set_position(0);
            bar.set_style(style(if own { BYTES_ALONE } else { BYTES }));
            if own {
                bar.enable_steady_tick(Duration::from_millis(200));
            }
        }
        Self {
            bar,
            own,
            inner: Mutex::new(TransferState {
                extents: to_read.to_vec(),
                idx: 0,
                pos: 0,
                done: 0,
                total,
                started: Instant::now(),
                eta: Eta::default(),
            }),
        }
    }

    /// `n` more guest bytes were written.
    pub fn advance(&self, n: u64) {
        if self.bar.is_hidden() {
            return;
        }
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let end = s.pos.saturating_add(n);
        let mut data = 0u64;
        while let Some(e) = s.extents.get(s.idx).copied() {
            let lo = e.start.max(s.pos);
            let hi = e.end().min(end);
            if hi > lo {
                data += hi - lo;
            }
            if e.end() <= end {
                s.idx += 1;
            } else {
                break;
            }
        }
        s.pos = end;
        s.done += data;
        let (done, total) = (s.done, s.total);
        let t = s.started.elapsed().as_secs_f64();
        let msg = match s.eta.update(t, done, total) {
            Some(eta) => format!("{}/s, eta {}", human_bytes(s.eta.rate() as u64), clock(eta)),
            None => String::new(),
        };
        drop(s);
        self.bar.set_position(done);
        self.bar.set_message(msg);
    }

    pub fn finish(&self) {
        if self.own {
            self.bar.finish_and_clear();
        } else {
            self.bar.set_message("");
        }
    }
}

/// `75` -> `1:15`, `3725` -> `1:02:05`.
pub fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// The remaining-time estimate. The rate is an exponentially weighted
/// average over about [`Eta::TAU`] seconds (seeded with the average so
/// far); the shown estimate then counts down with the clock and only moves
/// up when the estimate exceeds that countdown by more than
/// [`Eta::SLACK`] (a real slowdown, not the jitter of jobs finishing out
/// of step).
#[derive(Debug, Default, Clone)]
pub struct Eta {
    rate: f64,
    last_t: f64,
    last_done: u64,
    shown: Option<(f64, f64)>,
}

impl Eta {
    /// Averaging time constant, seconds.
    pub const TAU: f64 = 8.0;
    /// No estimate before this much time, seconds.
    pub const WARMUP: f64 = 1.0;
    /// The shown estimate goes up only past countdown × (1 + SLACK) + 2 s.
    pub const SLACK: f64 = 0.3;

    /// Bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// `done` of `total` bytes at `t` seconds; the seconds left, once known.
    pub fn update(&mut self, t: f64, done: u64, total: u64) -> Option<f64> {
        if t < Self::WARMUP || done == 0 {
            return None;
        }
        if self.rate <= 0.0 {
            self.rate = done as f64 / t;
        } else {
            let dt = t - self.last_t;
            if dt > 0.0 {
                let inst = done.saturating_sub(self.last_done) as f64 / dt;
                let a = 1.0 - (-dt / Self::TAU).exp();
                self.rate += a * (inst - self.rate);
            }
        }
        self.last_t = t;
        self.last_done = done;
        if self.rate <= 0.0 {
            return None;
        }
        let raw = total.saturating_sub(done) as f64 / self.rate;
        let shown = match self.shown {
            Some((at, eta)) => {
                let countdown = (eta - (t - at)).max(0.0);
                if raw <= countdown || raw > countdown * (1.0 + Self::SLACK) + 2.0 {
                    raw
                } else {
                    countdown
                }
            }
            None => raw,
        };
        self.shown = Some((t, shown));
        Some(shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steady work with jitter: jobs of 1 MiB whose completion times vary
    /// by ±40% around a steady 10 MiB/s, finishing in bursts as the
    /// ordered writer releases them.
    #[test]
    fn eta_does_not_climb_while_work_is_steady() {
        let total = 600u64 << 20;
        let mut eta = Eta::default();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut t = 0.0f64;
        let mut done = 0u64;
        let mut prev: Option<f64> = None;
        let mut checked = 0;
        while done < total {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let jitter = 0.6 + (x % 1000) as f64 / 1250.0; // 0.6 .. 1.4
            t += 0.1 * jitter;
            // Every fifth step, a burst of three jobs at once.
            let jobs = if x % 5 == 0 { 3 } else { 1 };
            if jobs == 3 {
                t += 0.2;
            }
            done = (done + jobs * (1 << 20)).min(total);
            if let Some(e) = eta.update(t, done, total) {
                if let Some(p) = prev {
                    assert!(
                        e <= p + 1e-9,
                        "ETA climbed from {p:.2} to {e:.2} at t={t:.1}"
                    );
                }
                let truth = (total - done) as f64 / (10.0 * (1 << 20) as f64);
                if t > 10.0 && t < 50.0 {
                    assert!(
                        (e - truth).abs() <= truth * 0.25 + 2.0,
                        "ETA {e:.1} s vs {truth:.1} s at t={t:.1}"
                    );
                    checked += 1;
                }
                prev = Some(e);
            }
        }
        assert!(checked > 100);
        assert!(prev.unwrap_or(1.0) < 1.0);
    }

    #[test]
    fn eta_follows_a_real_slowdown() {
        let total = 400u64 << 20;
        let mut eta = Eta::default();
        let mut t = 0.0;
        let mut done = 0u64;
        let mut last = 0.0;
        // 10 MiB/s for 10 s, then 2 MiB/s.
        while done < total {
            let rate = if t < 10.0 { 10.0 } else { 2.0 };
            t += 0.1;
            done = (done + (rate * 0.1 * (1 << 20) as f64) as u64).min(total);
            if let Some(e) = eta.update(t, done, total) {
                last = e;
            }
            if t > 40.0 {
                break;
            }
        }
        let truth = (total - done) as f64 / (2.0 * (1 << 20) as f64);
        assert!((last - truth).abs() < truth * 0.2, "{last} vs {truth}");
    }

    #[test]
    fn clock_format() {
        assert_eq!(clock(0.4), "0:00");
        assert_eq!(clock(75.0), "1:15");
        assert_eq!(clock(3725.0), "1:02:05");
    }

    #[test]
    fn journal_names_done_and_failed_stages() {
        let mut s = stage("unit-a");
        s.note("3 things");
        s.done();
        drop(stage("unit-b"));
        let line = journal_line().unwrap_or_default();
        assert!(line.contains("unit-a"), "{line}");
        assert!(line.contains("(3 things)"), "{line}");
        assert!(line.contains("unit-b failed after"), "{line}");
    }
}
