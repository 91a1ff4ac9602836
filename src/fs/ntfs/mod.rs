//! NTFS: free clusters from `$Bitmap`, found through the MFT (boot sector
//! -> `$MFT` record 0's `$DATA` runlist -> record 6's `$DATA` runlist),
//! every MFT record's update sequence array verified. The volume must be at
//! rest as ntfs-3g requires before a read-write mount (`state.rs`: `$Volume`
//! flags, `$LogFile`, `hiberfil.sys`), or it is copied whole.
//!
//! Second source: every in-use MFT record (base and extension records) is
//! read, and every cluster its non-resident attributes' runlists name must
//! be marked used in `$Bitmap`, and named only once. That covers the boot sector (`$Boot`),
//! `$MFT`, `$MFTMirr`, `$LogFile`, `$Bitmap` itself and every file's data;
//! one cluster named by a record but marked free, or one unreadable in-use
//! record, and nothing of the volume is skipped.
//!
//! Not here: mounting (ntfs-3g, in tests only).

mod record;
mod state;

use super::{FsError, FsFree, Region};
use crate::bytes::{le16, le64};
use crate::extent::Extent;
use record::{AT_DATA, AT_FILE_NAME, AT_VOLUME_INFORMATION, AT_VOLUME_NAME, Body, Run};

const NAME: &str = "ntfs";
const OEM: &[u8; 8] = b"NTFS    ";
const MFT_RECORD_VOLUME: u64 = 3;
const MFT_RECORD_LOGFILE: u64 = 2;
const MFT_RECORD_ROOT: u64 = 5;
const MFT_RECORD_BITMAP: u64 = 6;
/// MFT records read at most (16 M files).
const MAX_RECORDS: u64 = 1 << 24;
/// Bytes of the MFT or bitmap read at once.
const CHUNK: u64 = 4 << 20;

struct Boot {
    cluster: u64,
    clusters: u64,
    mft_lcn: u64,
    record: u64,
}

fn parse_boot(b: &[u8]) -> Option<Boot> {
    if b.len() < 512 || &b[3..11] != OEM || b[510..512] != [0x55, 0xAA] {
        return None;
    }
    let bps = le16(b, 11) as u64;
    let spc = match b[13] {
        0 => return None,
        n @ 1..=0x80 => n as u64,
        n => 1u64.checked_shl(256 - n as u32)?,
    };
    let cluster = bps.checked_mul(spc)?;
    let record = match b[0x40] as i8 {
        n @ 1.. => cluster.checked_mul(n as u64)?,
        n => 1u64.checked_shl((-(n as i32)) as u32)?,
    };
    let plausible = bps.is_power_of_two()
        && (256..=4096).contains(&bps)
        && spc.is_power_of_two()
        && cluster <= 2 << 20
        && record.is_power_of_two()
        && (512..=65536).contains(&record);
    plausible.then(|| Boot {
        cluster,
        clusters: le64(b, 0x28) / spc,
        mft_lcn: le64(b, 0x30),
        record,
    })
}

/// True if the region starts with an NTFS boot sector.
pub fn detect(r: &Region) -> bool {
    r.read(0, 512).is_ok_and(|b| parse_boot(&b).is_some())
}

fn corrupt(msg: impl Into<String>) -> FsError {
    FsError::corrupt(msg)
}

/// Reads `len` bytes at byte `off` of a non-resident attribute's data.
fn read_runs(
    r: &Region,
    boot: &Boot,
    runs: &[Run],
    off: u64,
    len: u64,
) -> Result<Vec<u8>, FsError> {
    let mut out = vec![0u8; len as usize];
    let end = off + len;
    for run in runs {
        let rs = run.vcn.saturating_mul(boot.cluster);
        let re = run.vcn.saturating_add(run.len).saturating_mul(boot.cluster);
        let (s, e) = (off.max(rs), end.min(re));
        if s >= e {
            continue;
        }
        if let Some(lcn) = run.lcn {
            let b = r.read(lcn * boot.cluster + (s - rs), (e - s) as usize)?;
            out[(s - off) as usize..(e - off) as usize].copy_from_slice(&b);
        }
    }
    Ok(out)
}

/// The runs of record `rec`'s unnamed `$DATA` (it must start at VCN 0 and
/// be whole in this record) and its data size.
fn data_runs(rec: &record::Record, boot: &Boot, what: &str) -> Result<(Vec<Run>, u64), FsError> {
    match rec.unnamed(AT_DATA).map(|a| &a.body) {
        Some(Body::NonResident {
            lowest_vcn: 0,
            highest_vcn,
            data_size,
            runs,
            ..
        }) => {
            let runs = record::decode_runs(runs, 0, boot.clusters)
                .map_err(|e| corrupt(format!("{what}: {e}")))?;
            let mapped = runs.last().map(|r| r.vcn + r.len).unwrap_or(0);
            if mapped != highest_vcn.saturating_add(1) || data_size.div_ceil(boot.cluster) > mapped
            {
                return Err(FsError::unclean(
                    NAME,
                    format!(
                        "{what} is continued in other MFT records (attribute list): not read; copied whole"
                    ),
                ));
            }
            Ok((runs, *data_size))
        }
        _ => Err(corrupt(format!("{what} has no non-resident $DATA"))),
    }
}

/// The whole MFT, read through `$MFT`'s runlist record by record.
struct Mft<'a> {
    r: &'a Region<'a>,
    boot: &'a Boot,
    runs: Vec<Run>,
    records: u64,
}

impl Mft<'_> {
    /// Record `n`, fixed up; None if the slot was never used.
    fn record(&self, n: u64) -> Result<Option<Vec<u8>>, FsError> {
        let mut b = read_runs(
            self.r,
            self.boot,
            &self.runs,
            n * self.boot.record,
            self.boot.record,
        )?;
        fixed(&mut b, n)
    }
}

fn fixed(b: &mut [u8], n: u64) -> Result<Option<Vec<u8>>, FsError> {
    if b[0..4] != *b"FILE" {
        // Never-used slots are zeros; anything else ("BAAD") is damage.
        if b.iter().take(64).all(|&x| x == 0) {
            return Ok(None);
        }
        return Err(corrupt(format!("MFT record {n} is damaged")));
    }
    record::apply_fixups(b, b"FILE").map_err(|e| corrupt(format!("MFT record {n}: {e}")))?;
    Ok(Some(b.to_vec()))
}

/// A system file's record: parsed and in use.
fn parse_in_use<'a>(b: &'a [u8], what: &str) -> Result<record::Record<'a>, FsError> {
    let rec = record::parse_record(b).map_err(|e| corrupt(format!("{what}: {e}")))?;
    if !rec.in_use {
        return Err(corrupt(format!("{what}'s MFT record is not in use")));
    }
    Ok(rec)
}

fn utf16(b: &[u8]) -> String {
    let u: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&u)
}

fn is_marked(bitmap: &[u8], c: u64) -> bool {
    bitmap
        .get((c / 8) as usize)
        .is_some_and(|b| b & (1 << (c % 8)) != 0)
}

/// Reads the free-space map of the NTFS volume in `r`.
pub fn free_space(r: &Region) -> Result<FsFree, FsError> {
    let boot =
        parse_boot(&r.read(0, 512)?).ok_or_else(|| corrupt("implausible NTFS boot sector"))?;
    if boot
        .clusters
        .checked_mul(boot.cluster)
        .is_none_or(|s| s > r.len)
        || boot.mft_lcn >= boot.clusters
    {
        return Err(corrupt("the volume does not fit in its partition"));
    }
    // $MFT: record 0, at the boot sector's MFT cluster.
    let mut b0 = r.read(boot.mft_lcn * boot.cluster, boot.record as usize)?;
    let b0 = fixed(&mut b0, 0)?.ok_or_else(|| corrupt("MFT record 0 is empty"))?;
    let rec0 = record::parse_record(&b0).map_err(|e| corrupt(format!("$MFT: {e}")))?;
    let (runs, mft_size) = data_runs(&rec0, &boot, "$MFT")?;
    let mft = Mft {
        r,
        boot: &boot,
        runs,
        records: (mft_size / boot.record).min(MAX_RECORDS),
    };
    if mft.records <= MFT_RECORD_BITMAP || mft_size / boot.record > MAX_RECORDS {
        return Err(corrupt(format!(
            "implausible MFT of {} records",
            mft_size / boot.record
        )));
    }
    let rec = |n: u64, what: &str| -> Result<Vec<u8>, FsError> {
        mft.record(n)?
            .ok_or_else(|| corrupt(format!("{what} (MFT record {n}) is empty")))
    };
    // $Volume: flags and label.
    let vb = rec(MFT_RECORD_VOLUME, "$Volume")?;
    let vol = parse_in_use(&vb, "$Volume")?;
    let label = match vol.unnamed(AT_VOLUME_NAME).map(|a| &a.body) {
        Some(Body::Resident(v)) => utf16(v),
        _ => String::new(),
    };
    match vol.unnamed(AT_VOLUME_INFORMATION).map(|a| &a.body) {
        Some(Body::Resident(v)) => {
            state::check_volume_flags(v).map_err(|e| FsError::unclean(NAME, e))?
        }
        _ => return Err(corrupt("$Volume has no volume information")),
    }
    // $LogFile.
    let lb = rec(MFT_RECORD_LOGFILE, "$LogFile")?;
    let log = parse_in_use(&lb, "$LogFile")?;
    let (log_runs, log_size) = data_runs(&log, &boot, "$LogFile")?;
    let head = read_runs(
        r,
        &boot,
        &log_runs,
        0,
        log_size.min(state::LOGFILE_HEAD as u64),
    )?;
    state::check_logfile(&head).map_err(|e| FsError::unclean(NAME, e))?;
    // $Bitmap.
    let bb = rec(MFT_RECORD_BITMAP, "$Bitmap")?;
    let bm = parse_in_use(&bb, "$Bitmap")?;
    let (bm_runs, bm_size) = data_runs(&bm, &boot, "$Bitmap")?;
    let need = boot.clusters.div_ceil(8);
    // Bytes past the initialized size are not the bitmap's (they read as
    // zeros: "free"), so the bitmap must be written in full.
    let bm_init = match bm.unnamed(AT_DATA).map(|a| &a.body) {
        Some(Body::NonResident { init_size, .. }) => *init_size,
        _ => 0,
    };
    if bm_size < need || bm_init < need {
        return Err(corrupt(format!(
            "$Bitmap holds {bm_size} bytes, the volume needs {need}"
        )));
    }
    let mut bitmap = Vec::with_capacity(need as usize);
    let mut off = 0;
    while off < need {
        let n = CHUNK.min(need - off);
        bitmap.extend(read_runs(r, &boot, &bm_runs, off, n)?);
        off += n;
    }
    // Second source: every in-use record's clusters are marked used.
    let hiber = cross_check(&mft, &bitmap)?;
    if let Some(n) = hiber {
        let hb = rec(n, "hiberfil.sys")?;
        let h = parse_in_use(&hb, "hiberfil.sys")?;
        let head = match h.unnamed(AT_DATA).map(|a| &a.body) {
            Some(Body::Resident(v)) => v.to_vec(),
            Some(Body::NonResident { .. }) => {
                let (runs, size) = data_runs(&h, &boot, "hiberfil.sys")?;
                read_runs(r, &boot, &runs, 0, size.min(state::HIBERFILE_HEADER as u64))?
            }
            None => Vec::new(),
        };
        state::check_hiberfile(&head).map_err(|e| FsError::unclean(NAME, e))?;
    }
    let mut out = FsFree::new(NAME, &label, boot.clusters * boot.cluster);
    let mut run: Option<u64> = None;
    let mut free = 0u64;
    for c in 0..=boot.clusters {
        let is_free = c < boot.clusters && !is_marked(&bitmap, c);
        match (is_free, run) {
            (true, None) => run = Some(c),
            (false, Some(s)) => {
                out.free
                    .push(Extent::new(s * boot.cluster, (c - s) * boot.cluster));
                run = None;
            }
            _ => {}
        }
        free += is_free as u64;
    }
    out.free_bytes = free * boot.cluster;
    Ok(out)
}

/// Reads every MFT record; every cluster an in-use record's runlists name
/// must be marked in `bitmap`, and be named only once. Returns the record of `\hiberfil.sys`.
fn cross_check(mft: &Mft, bitmap: &[u8]) -> Result<Option<u64>, FsError> {
    let per_chunk = (CHUNK / mft.boot.record).max(1);
    let mut claimed = vec![0u8; bitmap.len()];
    let mut hiber = None;
    let mut n = 0;
    while n < mft.records {
        let count = per_chunk.min(mft.records - n);
        let chunk = read_runs(
            mft.r,
            mft.boot,
            &mft.runs,
            n * mft.boot.record,
            count * mft.boot.record,
        )?;
        for (i, raw) in chunk.chunks(mft.boot.record as usize).enumerate() {
            let num = n + i as u64;
            let mut b = raw.to_vec();
            if b[0..4] != *b"FILE" || b[22] & 1 == 0 {
                continue; // unused slot: its runs may name freed clusters
            }
            let Some(b) = fixed(&mut b, num)? else {
                continue;
            };
            let rec =
                record::parse_record(&b).map_err(|e| corrupt(format!("MFT record {num}: {e}")))?;
            for a in &rec.attrs {
                match &a.body {
                    Body::NonResident {
                        lowest_vcn, runs, ..
                    } => {
                        let runs = record::decode_runs(runs, *lowest_vcn, mft.boot.clusters)
                            .map_err(|e| corrupt(format!("MFT record {num}: {e}")))?;
                        for run in runs {
                            let Some(lcn) = run.lcn else { continue };
                            for c in lcn..lcn + run.len {
                                if !is_marked(bitmap, c) {
                                    return Err(corrupt(format!(
                                        "cluster {c} of MFT record {num} is marked free in $Bitmap"
                                    )));
                                }
                                // Each cluster belongs to one attribute: a
                                // second claim is damage (and bounds the work).
                                if is_marked(&claimed, c) {
                                    return Err(corrupt(format!(
                                        "cluster {c} is claimed twice (MFT record {num})"
                                    )));
                                }
                                claimed[(c / 8) as usize] |= 1 << (c % 8);
                            }
                        }
                    }
                    Body::Resident(v)
                        if a.kind == AT_FILE_NAME && rec.base == 0 && v.len() >= 66 =>
                    {
                        let parent = le64(v, 0) & 0xFFFF_FFFF_FFFF;
                        let name = v.get(66..66 + v[64] as usize * 2).map(utf16);
                        if parent == MFT_RECORD_ROOT
                            && name.is_some_and(|s| s.eq_ignore_ascii_case("hiberfil.sys"))
                        {
                            hiber = Some(num);
                        }
                    }
                    _ => {}
                }
            }
        }
        n += count;
    }
    Ok(hiber)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::testdisk::MemDisk;

    /// A fresh 32 MiB NTFS made by mkntfs (None where ntfs-3g's tools are missing).
    fn fresh() -> Option<Vec<u8>> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ntfs.img");
        std::fs::write(&p, vec![0u8; 32 << 20]).unwrap();
        let st = std::process::Command::new("mkntfs")
            .args(["-q", "-F", "-Q", "-L", "vmf"])
            .arg(&p)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        match st {
            Ok(s) if s.success() => Some(std::fs::read(&p).unwrap()),
            _ => {
                assert!(std::env::var("CI").is_err(), "mkntfs is needed in CI");
                None
            }
        }
    }

    fn free_of(img: &[u8]) -> Result<FsFree, FsError> {
        let disk = MemDisk(img.to_vec());
        let r = Region {
            src: &disk,
            start: 0,
            len: img.len() as u64,
        };
        free_space(&r)
    }

    fn mft_at(img: &[u8]) -> usize {
        let b = parse_boot(img).unwrap();
        (b.mft_lcn * b.cluster) as usize
    }

    #[test]
    fn fresh_volume() {
        let Some(img) = fresh() else { return };
        let f = free_of(&img).unwrap();
        assert_eq!(f.label, "vmf");
        assert!(f.free_bytes > 20 << 20, "{}", f.free_bytes);
        assert_eq!(crate::extent::total(&f.free), f.free_bytes);
        assert!(f.free[0].start > 0);
    }

    #[test]
    fn damage_and_unclean_states_refuse() {
        let Some(img) = fresh() else { return };
        let mft = mft_at(&img);
        // A torn $MFT record (update sequence mismatch in its second sector).
        let mut bad = img.clone();
        bad[mft + 1022] ^= 0xFF;
        assert!(free_of(&bad).is_err());
        // $Bitmap says the MFT's first cluster is free: the cross-check catches it.
        let boot = parse_boot(&img).unwrap();
        let mut b6 = img[mft + 6 * boot.record as usize..mft + 7 * boot.record as usize].to_vec();
        let rec6 = fixed(&mut b6, 6).unwrap().unwrap();
        let (runs, _) = data_runs(&record::parse_record(&rec6).unwrap(), &boot, "$Bitmap").unwrap();
        let bm_at = (runs[0].lcn.unwrap() * boot.cluster) as usize;
        let mut bad = img.clone();
        let c = boot.mft_lcn as usize;
        bad[bm_at + c / 8] &= !(1 << (c % 8));
        let e = free_of(&bad).unwrap_err();
        assert!(e.msg.contains("marked free"), "{}", e.msg);
        // A dirty $Volume.
        let mut v = img[mft + 3 * boot.record as usize..mft + 4 * boot.record as usize].to_vec();
        let vr = fixed(&mut v.clone(), 3).unwrap().unwrap();
        let rec = record::parse_record(&vr).unwrap();
        let Some(Body::Resident(info)) = rec.unnamed(AT_VOLUME_INFORMATION).map(|a| &a.body) else {
            panic!("no volume information");
        };
        let at = info.as_ptr() as usize - vr.as_ptr() as usize + 10;
        assert!(at % 512 < 510);
        v[at] |= 1;
        let mut bad = img.clone();
        bad[mft + 3 * boot.record as usize..mft + 4 * boot.record as usize].copy_from_slice(&v);
        let e = free_of(&bad).unwrap_err();
        assert!(e.unclean && e.msg.contains("dirty"), "{}", e.msg);
    }

    #[test]
    fn random_corruption_never_panics() {
        let Some(good) = fresh() else { return };
        let mft = mft_at(&good);
        let mut disk = MemDisk(good);
        let mut x = 0x0123_4567_89ab_cdefu64;
        for _ in 0..300 {
            let mut undo = Vec::new();
            for _ in 0..3 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = if x % 3 == 0 {
                    (x >> 8) as usize % 512
                } else {
                    mft + (x >> 8) as usize % 16384
                };
                undo.push((i, disk.0[i]));
                disk.0[i] ^= (x >> 40) as u8 | 1;
            }
            {
                let r = Region {
                    src: &disk,
                    start: 0,
                    len: disk.0.len() as u64,
                };
                let _ = free_space(&r);
            }
            for (i, b) in undo.into_iter().rev() {
                disk.0[i] = b;
            }
        }
    }
}
