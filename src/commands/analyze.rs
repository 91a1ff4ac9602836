//! `vmfinal analyze IMG`: what the image holds and what compaction would
//! save: partitions and filesystems, used and free space, free space that
//! is not zero (garbage a zero-fill would reclaim), holes, estimated output
//! sizes, and an efficiency figure (live filesystem bytes / allocated bytes).

use std::path::PathBuf;

use crate::extent::{self, Extent};
use crate::image::{self, BlockSource, ImageFormat};
use crate::pipeline::is_zero;
use crate::report::human_bytes;

/// Granularity of the free-but-not-zero count.
const BLOCK: usize = 4096;

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// The image (raw or qcow2)
    pub image: PathBuf,
    /// Input format [default: from the name (.raw, .qcow2, .zst); other names are probed]
    #[arg(long = "format", value_name = "FMT")]
    pub format: Option<ImageFormat>,
    /// Machine-readable report on stdout
    #[arg(long)]
    pub json: bool,
}

/// Bytes of non-zero 4 KiB blocks inside `ranges`.
fn nonzero_bytes(src: &dyn BlockSource, ranges: &[Extent]) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    for r in ranges {
        let mut off = r.start;
        while off < r.end() {
            let len = ((r.end() - off) as usize).min(buf.len());
            src.read_at(&mut buf[..len], off)?;
            n += buf[..len]
                .chunks(BLOCK)
                .filter(|c| !is_zero(c))
                .map(|c| c.len() as u64)
                .sum::<u64>();
            off += len as u64;
        }
    }
    Ok(n)
}

fn bar(part: u64, whole: u64, width: usize) -> String {
    let n = if whole == 0 {
        0
    } else {
        ((part as f64 / whole as f64) * width as f64).round() as usize
    };
    format!(
        "{}{}",
        "#".repeat(n.min(width)),
        ".".repeat(width - n.min(width))
    )
}

/// Writes a line to stdout; a closed pipe becomes an error, not a panic.
macro_rules! out {
    ($w:expr) => { writeln!($w)? };
    ($w:expr, $($t:tt)*) => { writeln!($w, $($t)*)? };
}

pub fn run(args: &AnalyzeArgs) -> anyhow::Result<super::ExitCode> {
    use std::io::Write;
    let mut so = std::io::stdout().lock();
    let src = image::open(&args.image, args.format)?;
    let vsize = src.virtual_size();
    let allocated = extent::normalize(src.data_extents()?);
    let alloc_bytes = extent::total(&allocated);
    let scan = crate::fs::scan(src.as_ref(), &allocated);
    let free_alloc = extent::subtract(&allocated, &extent::subtract(&allocated, &scan.free));
    let to_read = extent::subtract(&allocated, &scan.free);

    let mut parts = Vec::new();
    let mut total_fnz = 0u64;
    let mut live = 0u64;
    for p in &scan.partitions {
        let fnz = nonzero_bytes(
            src.as_ref(),
            &extent::clip(&free_alloc, p.start, p.start + p.size),
        )?;
        total_fnz += fnz;
        let part_alloc = extent::total(&extent::clip(&allocated, p.start, p.start + p.size));
        live += p.used_bytes.unwrap_or(0).min(part_alloc);
        let mut v = serde_json::to_value(p)?;
        let mut lv_fnz = Vec::new();
        for lv in &p.logical_volumes {
            let alloc_free =
                extent::subtract(&allocated, &extent::subtract(&allocated, &lv.disk_free));
            lv_fnz.push(nonzero_bytes(src.as_ref(), &alloc_free)?);
        }
        if let Some(o) = v.as_object_mut() {
            o.insert("free_not_zero_bytes".into(), fnz.into());
            if let Some(serde_json::Value::Array(lvs)) = o.get_mut("logical_volumes") {
                for (l, n) in lvs.iter_mut().zip(&lv_fnz) {
                    if let Some(lo) = l.as_object_mut() {
                        lo.insert("free_not_zero_bytes".into(), (*n).into());
                    }
                }
            }
        }
        parts.push((p.clone(), fnz, v, lv_fnz));
    }
    let (sampled, zl, zs) = crate::estimate::sample_ratio(src.as_ref(), &to_read)?;
    let read_bytes = extent::total(&to_read);
    let est = |c: u64| {
        if sampled == 0 {
            0
        } else {
            (read_bytes as f64 * c as f64 / sampled as f64) as u64
        }
    };
    let fs_known = scan.partitions.iter().any(|p| p.used_bytes.is_some());
    let efficiency = (fs_known && alloc_bytes > 0).then(|| live as f64 / alloc_bytes as f64);

    if args.json {
        let v = serde_json::json!({
            "schema_version": crate::report::JSON_SCHEMA_VERSION,
            "path": args.image,
            "format": src.format(),
            "virtual_size": vsize,
            "allocated_bytes": alloc_bytes,
            "holes_bytes": vsize - alloc_bytes.min(vsize),
            "partition_table": scan.table,
            "partitions": parts.iter().map(|p| p.2.clone()).collect::<Vec<_>>(),
            "free_not_zero_bytes": total_fnz,
            "bytes_to_read": read_bytes,
            "estimate": { "sampled_bytes": sampled, "qcow2_zlib_bytes": est(zl), "qcow2_zstd_bytes": est(zs) },
            "efficiency": efficiency,
            "warnings": scan.warnings,
        });
        drop(so);
        crate::report::print_json(&v)?;
        return Ok(0);
    }
    out!(
        so,
        "{}: {} image, {} virtual, {} allocated, {} holes",
        args.image.display(),
        src.format(),
        human_bytes(vsize),
        human_bytes(alloc_bytes),
        human_bytes(vsize - alloc_bytes.min(vsize))
    );
    out!(so, "partition table: {}", table_name(scan.table));
    out!(so);
    out!(
        so,
        "{:>3}  {:<10} {:<12} {:>10} {:>10} {:>10} {:>12}  used",
        "#",
        "filesystem",
        "label",
        "size",
        "used",
        "free",
        "free, dirty"
    );
    for (p, fnz, _, lv_fnz) in &parts {
        let (used, free) = (
            p.used_bytes.map(human_bytes).unwrap_or("-".into()),
            p.free_bytes.map(human_bytes).unwrap_or("-".into()),
        );
        out!(
            so,
            "{:>3}  {:<10} {:<12} {:>10} {:>10} {:>10} {:>12}  [{}]",
            p.index,
            printable(&p.filesystem),
            printable(&p.label),
            human_bytes(p.size),
            used,
            free,
            human_bytes(*fnz),
            bar(p.used_bytes.unwrap_or(p.size), p.size, 30)
        );
        for (lv, fnz) in p.logical_volumes.iter().zip(lv_fnz) {
            let (used, free) = (
                lv.used_bytes.map(human_bytes).unwrap_or("-".into()),
                lv.free_bytes.map(human_bytes).unwrap_or("-".into()),
            );
            let fs = if lv.kind == "linear" {
                lv.filesystem.clone()
            } else {
                lv.kind.clone()
            };
            out!(
                so,
                "     LV {:<20} {:<12} {:<12} {:>10} {:>10} {:>10} {:>12}  [{}]",
                printable(&lv.name),
                fs,
                printable(&lv.label),
                human_bytes(lv.size),
                used,
                free,
                human_bytes(*fnz),
                bar(lv.used_bytes.unwrap_or(lv.size), lv.size, 30)
            );
        }
    }
    out!(so);
    out!(
        so,
        "free but not zero:  {} (what a zero-fill would reclaim; vmfinal compact skips it without one)",
        human_bytes(total_fnz)
    );
    out!(
        so,
        "compact would read: {} of {} allocated",
        human_bytes(read_bytes),
        human_bytes(alloc_bytes)
    );
    out!(
        so,
        "estimated qcow2:    zlib {}, zstd {} (from a {} sample)",
        human_bytes(est(zl)),
        human_bytes(est(zs)),
        human_bytes(sampled)
    );
    if let Some(e) = efficiency {
        out!(
            so,
            "efficiency:         {:.1}% of allocated bytes are live filesystem data  [{}]",
            e * 100.0,
            bar((e * 1000.0) as u64, 1000, 30)
        );
    }
    for w in &scan.warnings {
        out!(so, "warning: {}", printable(w));
    }
    so.flush()?;
    Ok(0)
}

/// Partition tables as people write them.
fn table_name(t: crate::disk::TableKind) -> &'static str {
    match t {
        crate::disk::TableKind::Gpt => "GPT",
        crate::disk::TableKind::Mbr => "MBR",
        crate::disk::TableKind::None => "none (a filesystem on the whole disk, or nothing known)",
    }
}

/// Text from the guest (labels), escaped only where it needs it.
fn printable(s: &str) -> String {
    let e = crate::report::escape(s);
    if e.len() == s.len() + 2 {
        s.to_string()
    } else {
        e
    }
}
