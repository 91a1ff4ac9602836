//! What was cleaned is what gets compacted: after the guest is unmounted,
//! each filesystem vmfinal mounted read-write is stamped (its UUID, its
//! generation or mount count, and the bytes of its primary superblock) and
//! checked read-only by its own tool where one is installed
//! (`e2fsck -fn`, `xfs_repair -n`, `btrfs check --readonly`,
//! `fsck.fat -n`) on a read-only loop device over exactly its volume (for
//! an LV in scattered segments: over its read-only FUSE view, `lvfile`).
//! `finalize` reads the stamps again right before compaction and right
//! after it: any change means the bytes compacted are not the ones vmfinal
//! cleaned and checked, and no artifact is published.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Serialize;

use super::loopdev::LoopDevice;
use super::volume::{Mapping, Volume};
use crate::disk::lvm::{LvView, Piece};
use crate::image::BlockSource;
use crate::image::raw::RawImage;

/// A filesystem's identity and state as its superblock says.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stamp {
    pub uuid: String,
    /// `mount count 3, 1204 KiB written`, `generation 17`, ...
    pub state: String,
    /// The primary superblock's bytes.
    #[serde(skip)]
    pub superblock: Vec<u8>,
}

fn le(b: &[u8], at: usize, n: usize) -> u64 {
    b[at..at + n]
        .iter()
        .rev()
        .fold(0u64, |a, &c| (a << 8) | u64::from(c))
}
fn be(b: &[u8], at: usize, n: usize) -> u64 {
    b[at..at + n]
        .iter()
        .fold(0u64, |a, &c| (a << 8) | u64::from(c))
}

/// Reads the stamp of the `kind` filesystem in `[start, start + size)`.
pub fn stamp(src: &dyn BlockSource, start: u64, size: u64, kind: &str) -> anyhow::Result<Stamp> {
    let (at, len) = match kind {
        "ext4" => (1024u64, 1024usize),
        "xfs" => (0, 512),
        "btrfs" => (0x10000, 4096),
        "vfat" => (0, 512),
        other => anyhow::bail!("internal: no stamp for {other}"),
    };
    if at + len as u64 > size {
        anyhow::bail!("its superblock lies past the end of the volume");
    }
    let mut sb = vec![0u8; len];
    src.read_at(&mut sb, start + at)?;
    let hex = |r: std::ops::Range<usize>| hex::encode(&sb[r]);
    let (uuid, state) = match kind {
        "ext4" => (
            hex(0x68..0x78),
            format!(
                "mount count {}, last written at {}, {} KiB written",
                le(&sb, 0x34, 2),
                le(&sb, 0x30, 4),
                le(&sb, 0x178, 8)
            ),
        ),
        "xfs" => (
            hex(32..48),
            format!(
                "{} inodes, {} free, {} free blocks",
                be(&sb, 128, 8),
                be(&sb, 136, 8),
                be(&sb, 144, 8)
            ),
        ),
        "btrfs" => (hex(0x20..0x30), format!("generation {}", le(&sb, 0x48, 8))),
        _ => (hex(39..43), String::new()),
    };
    Ok(Stamp {
        uuid,
        state,
        superblock: sb,
    })
}

/// [`stamp`] of a volume: `[start, start + size)` of `src`, or when
/// `pieces` are given, the LV they make up (read through its segment map).
fn stamp_of(
    src: &dyn BlockSource,
    start: u64,
    size: u64,
    pieces: &[Piece],
    name: &str,
    kind: &str,
) -> anyhow::Result<Stamp> {
    if pieces.is_empty() {
        stamp(src, start, size, kind)
    } else {
        stamp(&LvView::of_pieces(src, name, pieces), 0, size, kind)
    }
}

/// One cleaned filesystem, stamped and checked after unmount.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub volume: String,
    pub fstype: String,
    #[serde(skip)]
    pub start: u64,
    #[serde(skip)]
    pub size: u64,
    /// An LV in scattered segments: its pieces on the disk (`start` is 0,
    /// `size` the LV's: offsets are the LV's own); else empty.
    #[serde(skip)]
    pub pieces: Vec<Piece>,
    pub stamp: Stamp,
    /// The check that ran (`e2fsck -fn`), or none.
    pub check: Option<String>,
    /// Why no check ran (its tool is not installed).
    pub note: Option<String>,
}

/// The read-only check of a filesystem type: program and arguments.
fn checker(kind: &str) -> Option<(&'static str, &'static [&'static str])> {
    Some(match kind {
        "ext4" => ("e2fsck", &["-fn"]),
        "xfs" => ("xfs_repair", &["-n"]),
        "btrfs" => ("btrfs", &["check", "--readonly"]),
        "vfat" => ("fsck.fat", &["-n"]),
        _ => return None,
    })
}

fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(prog);
            f.is_file()
        })
    }) || ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(prog).is_file())
}

fn full_path(prog: &str) -> std::path::PathBuf {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join(prog);
        if p.is_file() {
            return p;
        }
    }
    prog.into()
}

/// Stamps and checks the filesystem of `v` (type `kind`) in `image`.
/// An error names the volume and what its tool said.
pub fn verify(image: &Path, v: &Volume, kind: &str) -> anyhow::Result<Verified> {
    let (start, size, pieces) = match (&v.mapping, v.range()) {
        (_, Some((start, size))) => (start, size, Vec::new()),
        (Mapping::Segments { size, pieces }, None) => (0, *size, pieces.clone()),
        _ => anyhow::bail!("internal: {} has no mapping", v.name),
    };
    let src = RawImage::open(File::open(image)?, image)?;
    let stamp = stamp_of(&src, start, size, &pieces, &v.name, kind)
        .map_err(|e| anyhow::anyhow!("{} ({kind}) after cleaning: {e}", v.name))?;
    let mut out = Verified {
        volume: v.name.clone(),
        fstype: kind.into(),
        start,
        size,
        pieces,
        stamp,
        check: None,
        note: None,
    };
    let Some((prog, args)) = checker(kind) else {
        return Ok(out);
    };
    if !on_path(prog) {
        out.note = Some(format!("not checked: {prog} is not installed"));
        return Ok(out);
    }
    let shown = format!("{prog} {}", args.join(" "));
    // A scattered LV is checked through its read-only FUSE view.
    let view = if out.pieces.is_empty() {
        None
    } else {
        Some(super::lvfile::Served::serve(
            image,
            &v.short_name(),
            &out.pieces,
            true,
        )?)
    };
    let (backing, lo_start) = match &view {
        Some(sv) => (sv.path().to_path_buf(), 0),
        None => (image.to_path_buf(), start),
    };
    let lo = LoopDevice::attach(&backing, lo_start, size, true)
        .map_err(|e| anyhow::anyhow!("cannot attach a loop device to check {}: {e}", v.name))?;
    let o = Command::new(full_path(prog))
        .args(args)
        .arg(lo.path())
        .stdin(Stdio::null())
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {prog}: {e}"))?;
    drop(lo);
    if let Some(mut sv) = view {
        if let Some(e) = sv.unmount().first() {
            anyhow::bail!("checking {}: {e}", v.name);
        }
    }
    if !o.status.success() {
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
        anyhow::bail!(
            "{} ({kind}) is damaged after cleaning: `{shown}` failed ({}): {tail}; no artifact written",
            v.name,
            o.status
        );
    }
    out.check = Some(shown);
    Ok(out)
}

/// Reads every stamp again from `image`; an error if any changed since
/// `verified` was taken.
pub fn recheck(image: &Path, verified: &[Verified], when: &str) -> anyhow::Result<()> {
    let src = RawImage::open(File::open(image)?, image)?;
    recheck_source(&src, verified, when)
}

/// [`recheck`] over any block source (the copy-on-write view that
/// compaction reads in-process).
pub fn recheck_source(
    src: &dyn BlockSource,
    verified: &[Verified],
    when: &str,
) -> anyhow::Result<()> {
    for v in verified {
        let now = stamp_of(src, v.start, v.size, &v.pieces, &v.volume, &v.fstype)?;
        if now != v.stamp {
            let what = if now.uuid != v.stamp.uuid {
                format!("UUID {} became {}", v.stamp.uuid, now.uuid)
            } else if now.state != v.stamp.state {
                format!("{} became {}", v.stamp.state, now.state)
            } else {
                "its superblock was rewritten".into()
            };
            anyhow::bail!(
                "{} ({}) changed {when} ({what}): the bytes compacted are not the ones cleaned and checked; no artifact written",
                v.volume,
                v.fstype
            );
        }
    }
    Ok(())
}
