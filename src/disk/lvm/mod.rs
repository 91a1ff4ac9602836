//! LVM2 read without the host's LVM: PV labels, metadata areas and the text
//! metadata are parsed here, so a guest's volume groups are never activated
//! (a guest VG may share a name with the host's) and no device-mapper is
//! needed to see what lies where.
//!
//! # API
//!
//! * [`scan`]`(src, &[DiskRange])` reads every partition that carries a PV
//!   label and assembles the volume groups: an [`LvmScan`] with one
//!   [`FoundPv`] per labelled partition (or the error that made it
//!   unreadable) and one [`VgOutcome`] per VG, holding `Ok(`[`Vg`]`)` or the
//!   [`LvmError`] that refused it (copies disagree, a PV not on this disk,
//!   an interrupted update, corrupt metadata, ...).
//! * A [`Vg`] has its [`PvOnDisk`]s (where each PV's extents are, which
//!   disk bytes no LV uses: `unused`) and its [`Lv`]s. `Lv::kind` is
//!   [`LvKind::Linear`] for the LVs vmfinal can read through; every other
//!   kind (striped over several areas, thin, thin-pool, raid*, mirror,
//!   cache, snapshot and origin, vdo, integrity, sub-LVs) is named by its
//!   `Display` text ("thin-pool", "snapshot origin (of snapshot s0)").
//! * `Lv::map` is the segment map of a linear LV: [`Piece`]s, each an LV
//!   byte range and where it lies on the disk (absolute byte offset).
//!   [`lv_to_disk`] and [`disk_to_lv`] translate ranges with it;
//!   [`LvView`] is a [`BlockSource`] reading the LV through it (what the
//!   filesystem probes take, and what a user-space block device can serve).
//! * `Lv::full_name()` is `vg/lv`, `Lv::mapper_name()` is the
//!   `/dev/mapper` name (`vg-lv`, dashes doubled).
//! * Pure parsers, for fuzzing: [`label::parse_label`],
//!   [`label::parse_mda_header`], [`text::parse`], [`meta::vg_from_text`].
//!
//! Every copy of the metadata (all metadata areas of all PVs of the VG on
//! this disk) is read and checksummed; the copies must agree (same seqno,
//! same text) and no update may be half done (a precommitted slot), or the
//! VG is refused. Only VGs whose PVs are all on this disk are assembled.
//!
//! Not here: mounting LVs (the guest module), filesystems inside LVs (`fs`).

pub mod label;
pub mod meta;
pub mod text;
mod view;

pub use label::{Area, PvLabel};
pub use meta::{LvKind, LvMeta, PvMeta, Segment, VgMeta};
pub use view::LvView;

use crate::extent::{self, Extent};
use crate::image::BlockSource;

/// Bytes of text metadata read per copy at most.
const MAX_TEXT: u64 = 64 << 20;
/// Metadata areas read per PV at most.
const MAX_MDAS: usize = 4;

/// Why LVM metadata could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LvmError {
    #[error("PV label in sector {sector}: {what}")]
    Label { sector: u64, what: String },
    #[error("metadata area at PV byte {offset}: {what}")]
    Mda { offset: u64, what: String },
    #[error("metadata text, line {line}: {what}")]
    Text { line: usize, what: String },
    #[error("volume group {vg}: {what}")]
    Vg { vg: String, what: String },
    #[error("volume group {vg}: PV {pv} (UUID {id}) is not on this disk")]
    PvNotOnDisk { vg: String, pv: String, id: String },
    #[error("volume group {vg}: its metadata copies disagree ({what}); run `vgck` on it")]
    Inconsistent { vg: String, what: String },
    #[error(
        "volume group {vg}: an LVM metadata update was interrupted (precommitted metadata on the PV in partition {partition}); activate the VG once with LVM to finish or revert it"
    )]
    Interrupted { vg: String, partition: u32 },
    #[error("PV in partition {partition} holds no metadata: its volume group is unknown")]
    NoMetadata { partition: u32 },
    #[error("PV byte {offset}: {what}")]
    Read { offset: u64, what: String },
}

/// A partition (or the whole disk) that may hold a PV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DiskRange {
    /// Partition number as `disk::Partition::index` gives it.
    pub index: u32,
    pub start: u64,
    pub len: u64,
}

/// One checksum-verified copy of the VG metadata.
#[derive(Debug, Clone)]
pub struct MetadataCopy {
    /// Disk byte offset of its metadata area.
    pub mda_start: u64,
    pub text_crc: u32,
    pub text_len: u64,
    pub vg: VgMeta,
}

/// A partition carrying a PV label.
#[derive(Debug, Clone)]
pub struct FoundPv {
    pub part: DiskRange,
    pub label: PvLabel,
    /// Every committed, non-ignored copy in the PV's metadata areas.
    pub copies: Vec<MetadataCopy>,
    /// A metadata area with a precommitted slot (interrupted update).
    pub interrupted: bool,
}

fn read(src: &dyn BlockSource, part: &DiskRange, off: u64, len: u64) -> Result<Vec<u8>, LvmError> {
    let bad = |what: String| LvmError::Read { offset: off, what };
    if off.checked_add(len).is_none_or(|e| e > part.len) || len > MAX_TEXT {
        return Err(bad(format!(
            "{len} bytes lie outside the {}-byte PV",
            part.len
        )));
    }
    let mut b = vec![0u8; len as usize];
    src.read_at(&mut b, part.start + off)
        .map_err(|e| bad(e.to_string()))?;
    Ok(b)
}

/// Reads the label and every metadata copy of the PV in `part`.
/// `Ok(None)`: no PV label there.
pub fn read_pv(src: &dyn BlockSource, part: DiskRange) -> Result<Option<FoundPv>, LvmError> {
    let head_len = (label::LABEL_SCAN_SECTORS * label::SECTOR).min(part.len);
    let head = read(src, &part, 0, head_len)?;
    let Some(lab) = label::parse_label(&head)? else {
        return Ok(None);
    };
    let mut pv = FoundPv {
        part,
        label: lab,
        copies: Vec::new(),
        interrupted: false,
    };
    for a in pv.label.metadata_areas.iter().take(MAX_MDAS) {
        if a.offset.checked_add(a.size).is_none_or(|e| e > part.len) {
            return Err(LvmError::Mda {
                offset: a.offset,
                what: format!(
                    "{} bytes lie outside the {}-byte partition",
                    a.size, part.len
                ),
            });
        }
        let h = read(src, &part, a.offset, label::MDA_HEADER_SIZE)?;
        let mh = label::parse_mda_header(&h, a.offset, a.size)?;
        pv.interrupted |= mh.precommitted.is_some();
        let Some(l) = mh.committed.filter(|l| !l.ignored) else {
            continue;
        };
        let mut text = Vec::new();
        for (off, len) in label::text_pieces(&l, mh.size) {
            text.extend(read(src, &part, a.offset + off, len)?);
        }
        let body = label::check_text(&l, &text, a.offset)?;
        let vg = meta::vg_from_text(&text::parse(body)?)?;
        pv.copies.push(MetadataCopy {
            mda_start: part.start + a.offset,
            text_crc: l.checksum,
            text_len: l.size,
            vg,
        });
    }
    Ok(Some(pv))
}

/// A PV of an assembled VG, located on this disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PvOnDisk {
    pub name: String,
    pub id: String,
    pub part: DiskRange,
    /// Disk bytes of the extent area.
    pub extents: Extent,
    /// Disk bytes some LV's segment claims (any kind of LV).
    pub used: Vec<Extent>,
    /// Disk bytes of the partition that hold nothing: extents no LV
    /// claims and the partition's tail after the last extent. The label,
    /// metadata areas, bootloader areas and everything before the first
    /// extent are never in it.
    pub unused: Vec<Extent>,
}

/// A piece of a linear LV: `len` bytes at LV offset `lv_start` lie at disk
/// byte `disk_start` (on the VG's PV number `pv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Piece {
    pub lv_start: u64,
    pub len: u64,
    pub disk_start: u64,
    pub pv: usize,
}

/// A logical volume.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Lv {
    pub vg: String,
    pub name: String,
    pub id: String,
    pub visible: bool,
    pub kind: LvKind,
    /// Bytes.
    pub size: u64,
    pub segments: usize,
    /// Segment map, sorted by `lv_start` (linear LVs only; else empty).
    pub map: Vec<Piece>,
}

impl Lv {
    /// `vg/lv`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.vg, self.name)
    }
    /// The name under /dev/mapper: `vg-lv`, with dashes in either doubled.
    pub fn mapper_name(&self) -> String {
        format!(
            "{}-{}",
            self.vg.replace('-', "--"),
            self.name.replace('-', "--")
        )
    }
}

/// An assembled volume group.
#[derive(Debug, Clone)]
pub struct Vg {
    pub meta: VgMeta,
    pub pvs: Vec<PvOnDisk>,
    pub lvs: Vec<Lv>,
}

/// One VG found on the disk, assembled or refused.
#[derive(Debug, Clone)]
pub struct VgOutcome {
    pub name: String,
    pub id: String,
    /// Partitions holding its PVs (found on this disk).
    pub parts: Vec<u32>,
    pub vg: Result<Vg, LvmError>,
}

/// Everything LVM on one disk.
#[derive(Debug, Clone, Default)]
pub struct LvmScan {
    /// Partitions with a PV label, readable or not.
    pub pvs: Vec<(DiskRange, Result<FoundPv, LvmError>)>,
    pub vgs: Vec<VgOutcome>,
}

impl LvmScan {
    /// The VG whose PV lies in partition `index`, if any.
    pub fn vg_of(&self, index: u32) -> Option<&VgOutcome> {
        self.vgs.iter().find(|v| v.parts.contains(&index))
    }
    /// Whether partition `index` carries a PV label (even a damaged one).
    pub fn is_pv(&self, index: u32) -> bool {
        self.pvs.iter().any(|(p, _)| p.index == index)
    }
}

/// Reads every PV among `parts` and assembles their VGs.
pub fn scan(src: &dyn BlockSource, parts: &[DiskRange]) -> LvmScan {
    let mut out = LvmScan::default();
    for &p in parts {
        match read_pv(src, p) {
            Ok(None) => {}
            Ok(Some(pv)) => out.pvs.push((p, Ok(pv))),
            Err(e) => out.pvs.push((p, Err(e))),
        }
    }
    let found: Vec<&FoundPv> = out
        .pvs
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    // VGs by id, in the order their first copy appears.
    let mut ids: Vec<(String, String)> = Vec::new();
    for c in found.iter().flat_map(|p| &p.copies) {
        if !ids.iter().any(|(i, _)| *i == c.vg.id) {
            ids.push((c.vg.id.clone(), c.vg.name.clone()));
        }
    }
    for (id, name) in ids {
        let holders: Vec<&FoundPv> = found
            .iter()
            .copied()
            .filter(|p| p.copies.iter().any(|c| c.vg.id == id))
            .collect();
        let vg = assemble(&id, &name, &holders, &found);
        let mut parts: Vec<u32> = holders.iter().map(|p| p.part.index).collect();
        if let Ok(v) = &vg {
            parts.extend(v.pvs.iter().map(|p| p.part.index));
        } else {
            // PVs without metadata areas that the metadata names.
            if let Some(c) = holders.first().and_then(|p| p.copies.first()) {
                for pm in &c.vg.pvs {
                    if let Some(f) = found.iter().find(|f| uuid_eq(&f.label.uuid, &pm.id)) {
                        parts.push(f.part.index);
                    }
                }
            }
        }
        parts.sort_unstable();
        parts.dedup();
        out.vgs.push(VgOutcome {
            name,
            id,
            parts,
            vg,
        });
    }
    out
}

/// Whether a label UUID (32 characters) and a metadata id (with dashes) match.
fn uuid_eq(label: &str, id: &str) -> bool {
    let id: String = id.chars().filter(|&c| c != '-').collect();
    !id.is_empty() && id == label
}

fn assemble(
    id: &str,
    name: &str,
    holders: &[&FoundPv],
    found: &[&FoundPv],
) -> Result<Vg, LvmError> {
    let copies: Vec<(&FoundPv, &MetadataCopy)> = holders
        .iter()
        .flat_map(|p| {
            p.copies
                .iter()
                .filter(|c| c.vg.id == id)
                .map(move |c| (*p, c))
        })
        .collect();
    let Some(&(_, first)) = copies.first() else {
        return Err(LvmError::Vg {
            vg: name.into(),
            what: "no metadata copy".into(),
        });
    };
    if let Some(p) = holders.iter().find(|p| p.interrupted) {
        return Err(LvmError::Interrupted {
            vg: name.into(),
            partition: p.part.index,
        });
    }
    for (p, c) in &copies {
        if c.vg.seqno != first.vg.seqno
            || c.text_crc != first.text_crc
            || c.text_len != first.text_len
            || c.vg != first.vg
        {
            return Err(LvmError::Inconsistent {
                vg: name.into(),
                what: format!(
                    "seqno {} at disk byte {}, seqno {} in partition {} at disk byte {}",
                    first.vg.seqno, first.mda_start, c.vg.seqno, p.part.index, c.mda_start
                ),
            });
        }
    }
    let m = &first.vg;
    let mut pvs = Vec::new();
    let used_all = m.pv_used();
    for (pm, used) in m.pvs.iter().zip(used_all) {
        let missing = || LvmError::PvNotOnDisk {
            vg: name.into(),
            pv: pm.name.clone(),
            id: pm.id.clone(),
        };
        if pm.missing {
            return Err(missing());
        }
        let f = found
            .iter()
            .find(|f| uuid_eq(&f.label.uuid, &pm.id))
            .ok_or_else(missing)?;
        // A PV without metadata areas may belong to another VG's copy.
        if f.copies.iter().any(|c| c.vg.id != id) {
            return Err(LvmError::Inconsistent {
                vg: name.into(),
                what: format!("PV {} also holds another VG's metadata", pm.name),
            });
        }
        pvs.push(locate(name, pm, f, used, m.extent_size)?);
    }
    let lvs = m.lvs.iter().map(|l| lv_on_disk(m, &pvs, l)).collect();
    Ok(Vg {
        meta: m.clone(),
        pvs,
        lvs,
    })
}

fn locate(
    vg: &str,
    pm: &PvMeta,
    f: &FoundPv,
    used: Vec<Extent>,
    es: u64,
) -> Result<PvOnDisk, LvmError> {
    let part = f.part;
    let ea_end = pm.pe_start + pm.pe_count * es; // checked in meta
    if ea_end > part.len {
        return Err(LvmError::Vg {
            vg: vg.into(),
            what: format!(
                "PV {} in partition {}: its extents end at byte {ea_end}, past the partition's {}",
                pm.name, part.index, part.len
            ),
        });
    }
    let area = Extent::new(pm.pe_start, ea_end - pm.pe_start);
    let mut free = extent::subtract(&[area], &used);
    if part.len > ea_end {
        free.push(Extent::new(ea_end, part.len - ea_end));
    }
    let mut keep = vec![Extent::new(
        0,
        pm.pe_start.max(label::LABEL_SCAN_SECTORS * label::SECTOR),
    )];
    keep.extend(
        f.label
            .metadata_areas
            .iter()
            .chain(&f.label.bootloader_areas)
            .map(|a| Extent::new(a.offset, a.size.max(label::MDA_HEADER_SIZE))),
    );
    let free = extent::subtract(&extent::normalize(free), &extent::normalize(keep));
    let abs = |v: &[Extent]| -> Vec<Extent> {
        v.iter()
            .map(|e| Extent::new(part.start + e.start, e.len))
            .collect()
    };
    Ok(PvOnDisk {
        name: pm.name.clone(),
        id: pm.id.clone(),
        part,
        extents: Extent::new(part.start + area.start, area.len),
        used: abs(&used),
        unused: abs(&free),
    })
}

fn lv_on_disk(m: &VgMeta, pvs: &[PvOnDisk], l: &LvMeta) -> Lv {
    let es = m.extent_size;
    let mut map = Vec::new();
    if l.kind == LvKind::Linear {
        for s in &l.segments {
            let (pv_name, first) = &s.stripes[0];
            // Linear means every stripe names a PV (see meta::classify).
            if let Some(i) = m.pv_index(pv_name) {
                map.push(Piece {
                    lv_start: s.start_extent * es,
                    len: s.extent_count * es,
                    disk_start: pvs[i].extents.start + first * es,
                    pv: i,
                });
            }
        }
    }
    Lv {
        vg: m.name.clone(),
        name: l.name.clone(),
        id: l.id.clone(),
        visible: l.visible,
        kind: l.kind.clone(),
        size: l.extents * es,
        segments: l.segments.len(),
        map,
    }
}

/// The disk ranges holding LV bytes `[off, off + len)`, in LV order; None
/// if the range is not inside the LV.
pub fn lv_to_disk(map: &[Piece], off: u64, len: u64) -> Option<Vec<Extent>> {
    let end = off.checked_add(len)?;
    let size = map.last().map(|p| p.lv_start + p.len).unwrap_or(0);
    if end > size {
        return None;
    }
    let mut out = Vec::new();
    for p in map {
        let (s, e) = (off.max(p.lv_start), end.min(p.lv_start + p.len));
        if s < e {
            out.push(Extent::new(p.disk_start + (s - p.lv_start), e - s));
        }
    }
    Some(out)
}

/// The LV ranges stored in the (normalized) disk ranges `disk`, sorted.
pub fn disk_to_lv(map: &[Piece], disk: &[Extent]) -> Vec<Extent> {
    let mut out = Vec::new();
    for p in map {
        for e in extent::clip(disk, p.disk_start, p.disk_start + p.len) {
            out.push(Extent::new(p.lv_start + (e.start - p.disk_start), e.len));
        }
    }
    extent::normalize(out)
}

#[cfg(test)]
mod tests;
