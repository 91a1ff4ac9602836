//! The converter's engine: a dispatcher walking the guest in fixed-size jobs,
//! N workers that read and encode each job (one encoder per worker), and the
//! calling thread writing results back in guest order to a `Sink`.
//!
//! Memory is bounded by the number of jobs in flight (`queue_depth` tokens,
//! returned by the writer), never by image size. Zero ranges (holes, free
//! space) travel as empty "zero jobs": they are never read or encoded.
//!
//! Not here: what the bytes are encoded into (`output`), where the data lives
//! (`image`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{bounded, unbounded};

use crate::extent::Extent;
use crate::image::{BlockSource, ImageError};
use crate::interrupt;

/// What an encoder made of one unit.
#[derive(Debug)]
pub enum UnitOut {
    /// Every byte is zero: nothing was encoded.
    Zero,
    /// Store the unit's bytes as they are (no encoder, or it did not shrink).
    Plain,
    /// The encoded bytes.
    Compressed(Vec<u8>),
}

/// Encodes one unit (a qcow2 cluster, a zstd frame). One per worker thread.
pub trait UnitEncoder: Send {
    /// Encodes `unit`. Returns `None` to store it plain.
    fn encode(&mut self, unit: &[u8]) -> std::io::Result<Option<Vec<u8>>>;
}

/// Builds one encoder per worker.
pub type EncoderFactory<'a> = dyn Fn() -> std::io::Result<Box<dyn UnitEncoder>> + Sync + 'a;

/// A finished job, handed to the sink in guest order.
#[derive(Debug)]
pub struct JobOut {
    /// Guest offset of the job; a multiple of the unit size.
    pub start: u64,
    /// Guest bytes covered. A multiple of the unit size except at the end of
    /// the disk.
    pub len: u64,
    /// The job's guest bytes (`len` long), or empty for a zero job.
    pub data: Vec<u8>,
    /// One entry per unit, or empty for a zero job (all units zero).
    pub units: Vec<UnitOut>,
}

impl JobOut {
    pub fn is_zero_job(&self) -> bool {
        self.units.is_empty()
    }
    /// The bytes of unit `i` (for `UnitOut::Plain`).
    pub fn unit_bytes(&self, i: usize, unit: u64) -> &[u8] {
        let s = (i as u64 * unit) as usize;
        let e = ((i as u64 + 1) * unit).min(self.len) as usize;
        &self.data[s..e]
    }
}

/// Receives jobs in guest order, exactly covering `[0, virtual_size)`.
pub trait Sink {
    fn write_job(&mut self, job: JobOut) -> Result<(), PipelineError>;
}

/// Output written at guest offsets, so in any order (a sparse raw file):
/// the workers write their own jobs, in parallel, instead of the one
/// writer thread copying every byte (measured: that thread was `expand`'s
/// bottleneck). The `Sink` then only sees the jobs, in order, for
/// accounting.
pub trait PositionalWrite: Sync {
    fn write_job_at(&self, job: &JobOut) -> Result<(), PipelineError>;
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Read(#[from] ImageError),
    #[error("compression failed: {0}")]
    Encode(std::io::Error),
    #[error("{path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Other(String),
}

impl From<crate::interrupt::Interrupted> for PipelineError {
    fn from(_: crate::interrupt::Interrupted) -> Self {
        PipelineError::Interrupted
    }
}

/// True if `e` is a stop by SIGINT/SIGTERM, in either spelling.
pub fn is_interrupted(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::interrupt::Interrupted>().is_some()
        || matches!(
            e.downcast_ref::<PipelineError>(),
            Some(PipelineError::Interrupted)
        )
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Unit of encoding and of zero detection (cluster size, frame size).
    pub unit: u64,
    /// Bytes per job; a multiple of `unit`.
    pub job_bytes: u64,
    pub threads: usize,
    /// Jobs in flight at most (queued, being encoded, waiting to be written).
    pub queue_depth: usize,
}

/// Counters the report shows.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PipelineStats {
    /// Guest bytes read from the input.
    pub bytes_read: u64,
    /// Units found all-zero after reading.
    pub zero_units: u64,
    /// Units stored compressed / plain.
    pub compressed_units: u64,
    pub plain_units: u64,
    /// Guest bytes never read (holes, free space).
    pub bytes_skipped: u64,
}

/// A planned job: a grid cell of the guest and the data ranges inside it.
#[derive(Debug)]
struct Job {
    start: u64,
    len: u64,
    /// Ranges to read, in guest offsets; empty for a zero job.
    reads: Vec<Extent>,
}

/// Walks the guest in grid cells of `job_bytes`, yielding data jobs for cells
/// that touch `extents` and merged zero jobs (on unit boundaries) between.
struct Planner<'a> {
    extents: &'a [Extent],
    idx: usize,
    pos: u64,
    size: u64,
    job_bytes: u64,
}

impl Iterator for Planner<'_> {
    type Item = Job;
    fn next(&mut self) -> Option<Job> {
        if self.pos >= self.size {
            return None;
        }
        while self.idx < self.extents.len() && self.extents[self.idx].end() <= self.pos {
            self.idx += 1;
        }
        let cell_end = (self.pos + self.job_bytes).min(self.size);
        match self.extents.get(self.idx) {
            Some(e) if e.start < cell_end => {
                let mut reads = Vec::new();
                let mut i = self.idx;
                while i < self.extents.len() && self.extents[i].start < cell_end {
                    let s = self.extents[i].start.max(self.pos);
                    let en = self.extents[i].end().min(cell_end);
                    reads.push(Extent::new(s, en - s));
                    i += 1;
                }
                let job = Job {
                    start: self.pos,
                    len: cell_end - self.pos,
                    reads,
                };
                self.pos = cell_end;
                Some(job)
            }
            next => {
                // Zero run up to the cell holding the next extent, or the end.
                let end = match next {
                    Some(e) => (e.start / self.job_bytes * self.job_bytes).max(cell_end),
                    None => self.size,
                };
                let job = Job {
                    start: self.pos,
                    len: end - self.pos,
                    reads: Vec::new(),
                };
                self.pos = end;
                Some(job)
            }
        }
    }
}

/// Re-exported for the callers written against this path (`view`).
pub use crate::bytes::is_zero;

/// Runs the conversion. `extents` are the guest ranges to read (normalized);
/// everything else is treated as zeros.
pub fn run(
    source: &dyn BlockSource,
    extents: &[Extent],
    cfg: &PipelineConfig,
    make_encoder: Option<&EncoderFactory<'_>>,
    sink: &mut dyn Sink,
    on_progress: &(dyn Fn(u64) + Sync),
) -> Result<PipelineStats, PipelineError> {
    run_with(source, extents, cfg, make_encoder, sink, on_progress, None)
}

/// As `run`; with `positional`, each worker writes its job itself.
pub fn run_with(
    source: &dyn BlockSource,
    extents: &[Extent],
    cfg: &PipelineConfig,
    make_encoder: Option<&EncoderFactory<'_>>,
    sink: &mut dyn Sink,
    on_progress: &(dyn Fn(u64) + Sync),
    positional: Option<&dyn PositionalWrite>,
) -> Result<PipelineStats, PipelineError> {
    assert!(cfg.unit > 0 && cfg.job_bytes % cfg.unit == 0);
    let size = source.virtual_size();
    let threads = cfg.threads.max(1);
    let depth = cfg.queue_depth.max(threads + 1);
    let abort = AtomicBool::new(false);

    let (job_tx, job_rx) = bounded::<(u64, Job)>(depth);
    let (res_tx, res_rx) = unbounded::<(u64, Result<JobOut, PipelineError>)>();
    let (token_tx, token_rx) = bounded::<()>(depth);
    for _ in 0..depth {
        let _ = token_tx.send(());
    }
    let mut stats = PipelineStats::default();

    std::thread::scope(|scope| -> Result<(), PipelineError> {
        // Dispatcher.
        let abort_ref = &abort;
        scope.spawn(move || {
            let planner = Planner {
                extents,
                idx: 0,
                pos: 0,
                size,
                job_bytes: cfg.job_bytes,
            };
            for (seq, job) in planner.enumerate() {
                if token_rx.recv().is_err() || abort_ref.load(Ordering::Relaxed) {
                    return;
                }
                if job_tx.send((seq as u64, job)).is_err() {
                    return;
                }
            }
        });
        // Workers.
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            let res_tx = res_tx.clone();
            scope.spawn(move || {
                let mut encoder = match make_encoder.map(|f| f()).transpose() {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = res_tx.send((0, Err(PipelineError::Encode(e))));
                        return;
                    }
                };
                for (seq, job) in job_rx.iter() {
                    if abort_ref.load(Ordering::Relaxed) {
                        return;
                    }
                    // A panic in a worker becomes this job's error.
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let out = work(source, job, cfg.unit, encoder.as_deref_mut())?;
                        if let Some(p) = positional {
                            p.write_job_at(&out)?;
                        }
                        Ok(out)
                    }))
                    .unwrap_or_else(|p| Err(PipelineError::Other(panic_message(p.as_ref()))));
                    if res_tx.send((seq, out)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(job_rx);
        drop(res_tx);

        // Writer: restore guest order.
        let result = (|| {
            let mut pending: BTreeMap<u64, JobOut> = BTreeMap::new();
            let mut next = 0u64;
            for (seq, out) in res_rx.iter() {
                if interrupt::requested() {
                    return Err(PipelineError::Interrupted);
                }
                pending.insert(seq, out?);
                while let Some(job) = pending.remove(&next) {
                    account(&mut stats, &job);
                    let len = job.len;
                    sink.write_job(job)?;
                    on_progress(len);
                    next += 1;
                    let _ = token_tx.send(());
                }
            }
            if interrupt::requested() {
                return Err(PipelineError::Interrupted);
            }
            if !pending.is_empty() {
                return Err(PipelineError::Other(
                    "internal: jobs lost in the pipeline".into(),
                ));
            }
            Ok(())
        })();
        if result.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        drop(token_tx);
        drop(res_rx);
        result
    })?;
    Ok(stats)
}

/// "internal error: ..." from a caught panic's payload.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error in a worker thread: {what}")
}

fn account(stats: &mut PipelineStats, job: &JobOut) {
    if job.is_zero_job() {
        stats.bytes_skipped += job.len;
        return;
    }
    stats.bytes_read += job.data.len() as u64;
    for u in &job.units {
        match u {
            UnitOut::Zero => stats.zero_units += 1,
            UnitOut::Plain => stats.plain_units += 1,
            UnitOut::Compressed(_) => stats.compressed_units += 1,
        }
    }
}

fn work(
    source: &dyn BlockSource,
    job: Job,
    unit: u64,
    mut encoder: Option<&mut (dyn UnitEncoder + '_)>,
) -> Result<JobOut, PipelineError> {
    if job.reads.is_empty() {
        return Ok(JobOut {
            start: job.start,
            len: job.len,
            data: Vec::new(),
            units: Vec::new(),
        });
    }
    let mut data = vec![0u8; job.len as usize];
    for r in &job.reads {
        let off = (r.start - job.start) as usize;
        source.read_at(&mut data[off..off + r.len as usize], r.start)?;
    }
    let mut units = Vec::with_capacity(job.len.div_ceil(unit) as usize);
    for chunk in data.chunks(unit as usize) {
        if is_zero(chunk) {
            units.push(UnitOut::Zero);
            continue;
        }
        match encoder.as_deref_mut() {
            None => units.push(UnitOut::Plain),
            Some(enc) => match enc.encode(chunk).map_err(PipelineError::Encode)? {
                Some(c) => units.push(UnitOut::Compressed(c)),
                None => units.push(UnitOut::Plain),
            },
        }
    }
    Ok(JobOut {
        start: job.start,
        len: job.len,
        data,
        units,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(extents: &[(u64, u64)], size: u64, job: u64) -> Vec<(u64, u64, bool)> {
        let ex: Vec<Extent> = extents.iter().map(|&(s, l)| Extent::new(s, l)).collect();
        Planner {
            extents: &ex,
            idx: 0,
            pos: 0,
            size,
            job_bytes: job,
        }
        .map(|j| (j.start, j.len, !j.reads.is_empty()))
        .collect()
    }

    #[test]
    fn planner_covers_disk_in_order() {
        assert_eq!(plan(&[], 100, 10), vec![(0, 100, false)]);
        assert_eq!(
            plan(&[(15, 3), (55, 20)], 100, 10),
            vec![
                (0, 10, false),
                (10, 10, true),
                (20, 30, false),
                (50, 10, true),
                (60, 10, true),
                (70, 10, true),
                (80, 20, false)
            ]
        );
        assert_eq!(plan(&[(0, 95)], 95, 10).last(), Some(&(90, 5, true)));
    }

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 4099];
        assert!(is_zero(&v));
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[1] = 1;
        assert!(!is_zero(&v[1..]));
        assert!(is_zero(&[]));
    }
}
