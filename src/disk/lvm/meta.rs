//! What LVM2's text metadata says about one volume group: its PVs (extent
//! area), its LVs and their segments, and what kind each LV is. Pure
//! functions over the parsed tree (`text.rs`); every number is checked
//! (extents inside their PV, no extent claimed twice, segments contiguous).
//!
//! Not here: where the PVs are on a disk (`mod.rs` assembles that).

use std::collections::HashMap;

use super::LvmError;
use super::text::{Section, Value};
use crate::extent::{self, Extent};

const SECTOR: u64 = 512;
/// LVs, PVs and segments accepted at most per VG.
const MAX_ITEMS: usize = 1 << 16;

/// One segment of an LV, as the metadata states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub start_extent: u64,
    pub extent_count: u64,
    /// `striped` (linear when one stripe), `thin`, `raid1`, `mirror`, ...
    pub seg_type: String,
    /// `(pv or lv name, first extent)` of each stripe (striped segments).
    pub stripes: Vec<(String, u64)>,
    /// Every other string the segment names (pools, origins, sub-LVs).
    pub names: Vec<(String, String)>,
    /// `(name, first extent)` pairs found in other lists (e.g. `mirrors`).
    pub areas: Vec<(String, u64)>,
}

/// What an LV is, for vmfinal: only `Linear` is read through.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LvKind {
    /// Every segment is one stripe on a PV.
    Linear,
    /// Striped over several PV areas.
    Striped { stripes: u64 },
    /// A segment type vmfinal does not map: `thin`, `thin-pool`, `raid1`,
    /// `mirror`, `cache`, `vdo`, `integrity`, `writecache`, `error`, ...
    Segment { seg_type: String },
    /// The origin of a (classic) snapshot: its blocks are shared with it.
    Origin { snapshot: String },
    /// A snapshot's exception store.
    Snapshot { origin: String },
    /// A sub-LV of another LV (thin-pool data, RAID image, cache pool, ...).
    Part { of: String, seg_type: String },
    /// Stacked on another LV (e.g. a pvmove in progress).
    OnLv { lv: String },
    /// Flagged by LVM as being changed (`LOCKED`, `PVMOVE`).
    Locked { status: String },
}

impl std::fmt::Display for LvKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LvKind::Linear => write!(f, "linear"),
            LvKind::Striped { stripes } => write!(f, "striped ({stripes} stripes)"),
            LvKind::Segment { seg_type } => write!(f, "{seg_type}"),
            LvKind::Origin { snapshot } => write!(f, "snapshot origin (of snapshot {snapshot})"),
            LvKind::Snapshot { origin } => write!(f, "snapshot (of {origin})"),
            LvKind::Part { of, seg_type } => write!(f, "part of {seg_type} LV {of}"),
            LvKind::OnLv { lv } => write!(f, "stacked on LV {lv}"),
            LvKind::Locked { status } => write!(f, "{status} (being changed by LVM)"),
        }
    }
}

/// A PV as the VG's metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvMeta {
    /// The metadata's key (`pv0`).
    pub name: String,
    /// UUID with dashes, as LVM prints it.
    pub id: String,
    /// First byte of the extent area, from the PV's start.
    pub pe_start: u64,
    pub pe_count: u64,
    /// Device size in bytes, if stated.
    pub dev_size: Option<u64>,
    pub missing: bool,
}

/// An LV as the VG's metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvMeta {
    pub name: String,
    pub id: String,
    pub visible: bool,
    pub kind: LvKind,
    /// Size in extents.
    pub extents: u64,
    pub segments: Vec<Segment>,
}

/// One volume group's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgMeta {
    pub name: String,
    pub id: String,
    pub seqno: u64,
    /// Extent size in bytes.
    pub extent_size: u64,
    pub pvs: Vec<PvMeta>,
    pub lvs: Vec<LvMeta>,
}

impl VgMeta {
    /// The PV named `name` in the metadata (`pv0`).
    pub fn pv_index(&self, name: &str) -> Option<usize> {
        self.pvs.iter().position(|p| p.name == name)
    }

    /// Byte ranges of each PV (from the PV's start) that any LV's segment
    /// claims, whatever its kind: `used[i]` for `pvs[i]`, normalized.
    pub fn pv_used(&self) -> Vec<Vec<Extent>> {
        let es = self.extent_size;
        let mut used = vec![Vec::new(); self.pvs.len()];
        for lv in &self.lvs {
            for s in &lv.segments {
                for (pv, first, count) in segment_areas(s) {
                    if let Some(i) = self.pv_index(pv) {
                        let p = &self.pvs[i];
                        used[i].push(Extent::new(p.pe_start + first * es, count * es));
                    }
                }
            }
        }
        used.into_iter().map(extent::normalize).collect()
    }
}

/// (pv-or-lv name, first extent, extents) of every area a segment uses.
fn segment_areas(s: &Segment) -> Vec<(&str, u64, u64)> {
    let n = s.stripes.len() as u64;
    let mut v: Vec<(&str, u64, u64)> = s
        .stripes
        .iter()
        .map(|(pv, first)| (pv.as_str(), *first, s.extent_count / n.max(1)))
        .collect();
    // Other area lists (mirror legs of a pvmove): a whole segment each,
    // the most any of them can use.
    v.extend(
        s.areas
            .iter()
            .map(|(pv, first)| (pv.as_str(), *first, s.extent_count)),
    );
    v
}

fn vg_err(vg: &str, what: impl Into<String>) -> LvmError {
    LvmError::Vg {
        vg: vg.into(),
        what: what.into(),
    }
}

fn uint(s: &Section, key: &str, vg: &str, ctx: &str) -> Result<u64, LvmError> {
    s.int(key)
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| vg_err(vg, format!("{ctx}: missing or negative {key}")))
}

/// Reads the VG out of a metadata document's top-level section.
pub fn vg_from_text(top: &Section) -> Result<VgMeta, LvmError> {
    if top.str("contents") != Some("Text Format Volume Group") || top.int("version") != Some(1) {
        return Err(LvmError::Text {
            line: 0,
            what: "not LVM2 text metadata version 1".into(),
        });
    }
    let mut vgs = top.sections();
    let Some((name, vg)) = vgs.next() else {
        return Err(LvmError::Text {
            line: 0,
            what: "no volume group section".into(),
        });
    };
    if vgs.next().is_some() {
        return Err(vg_err(name, "metadata holds more than one volume group"));
    }
    let es_sectors = uint(vg, "extent_size", name, "VG")?;
    let extent_size = es_sectors
        .checked_mul(SECTOR)
        .filter(|&b| b > 0 && b <= 1 << 40)
        .ok_or_else(|| vg_err(name, format!("implausible extent size {es_sectors}")))?;
    let mut pvs = Vec::new();
    for (pname, p) in vg
        .section("physical_volumes")
        .ok_or_else(|| vg_err(name, "no physical_volumes"))?
        .sections()
    {
        let ctx = format!("PV {pname}");
        let pe_start = uint(p, "pe_start", name, &ctx)?
            .checked_mul(SECTOR)
            .ok_or_else(|| vg_err(name, format!("{ctx}: pe_start overflows")))?;
        let pe_count = uint(p, "pe_count", name, &ctx)?;
        let end = pe_count
            .checked_mul(extent_size)
            .and_then(|b| b.checked_add(pe_start));
        let dev_size = match p.int("dev_size") {
            Some(d) => Some(
                u64::try_from(d)
                    .ok()
                    .and_then(|d| d.checked_mul(SECTOR))
                    .ok_or_else(|| vg_err(name, format!("{ctx}: bad dev_size")))?,
            ),
            None => None,
        };
        match (end, dev_size) {
            (None, _) => return Err(vg_err(name, format!("{ctx}: extent area overflows"))),
            (Some(e), Some(d)) if e > d => {
                return Err(vg_err(
                    name,
                    format!("{ctx}: {pe_count} extents end at byte {e}, past the device's {d}"),
                ));
            }
            _ => {}
        }
        pvs.push(PvMeta {
            name: pname.into(),
            id: p.str("id").unwrap_or_default().into(),
            pe_start,
            pe_count,
            dev_size,
            missing: p.strings("flags").contains(&"MISSING")
                || p.strings("status").contains(&"MISSING"),
        });
        if pvs.len() > MAX_ITEMS {
            return Err(vg_err(name, "too many PVs"));
        }
    }
    if pvs.is_empty() {
        return Err(vg_err(name, "no PVs"));
    }
    let mut lvs = Vec::new();
    if let Some(lsec) = vg.section("logical_volumes") {
        for (lname, l) in lsec.sections() {
            let lv = lv_from_text(name, lname, l)?;
            if lv.extents.checked_mul(extent_size).is_none() {
                return Err(vg_err(name, format!("LV {lname}: size overflows")));
            }
            lvs.push(lv);
            if lvs.len() > MAX_ITEMS {
                return Err(vg_err(name, "too many LVs"));
            }
        }
    }
    let mut meta = VgMeta {
        name: name.into(),
        id: vg.str("id").unwrap_or_default().into(),
        seqno: uint(vg, "seqno", name, "VG")?,
        extent_size,
        pvs,
        lvs,
    };
    check_areas(&meta)?;
    classify(&mut meta);
    Ok(meta)
}

fn lv_from_text(vg: &str, name: &str, l: &Section) -> Result<LvMeta, LvmError> {
    let ctx = format!("LV {name}");
    let mut segments = Vec::new();
    for (_, s) in l.sections().filter(|(k, _)| k.starts_with("segment")) {
        segments.push(segment_from_text(vg, &ctx, s)?);
        if segments.len() > MAX_ITEMS {
            return Err(vg_err(vg, format!("{ctx}: too many segments")));
        }
    }
    if l.int("segment_count")
        .is_some_and(|n| n != segments.len() as i64)
    {
        return Err(vg_err(
            vg,
            format!(
                "{ctx}: segment_count does not match its {} segments",
                segments.len()
            ),
        ));
    }
    segments.sort_by_key(|s| s.start_extent);
    let mut next = 0u64;
    for s in &segments {
        if s.start_extent != next {
            return Err(vg_err(
                vg,
                format!("{ctx}: segments are not contiguous at extent {next}"),
            ));
        }
        next = s
            .start_extent
            .checked_add(s.extent_count)
            .ok_or_else(|| vg_err(vg, format!("{ctx}: extents overflow")))?;
    }
    let status = l.strings("status");
    Ok(LvMeta {
        name: name.into(),
        id: l.str("id").unwrap_or_default().into(),
        visible: status.contains(&"VISIBLE"),
        kind: match status.iter().find(|s| **s == "LOCKED" || **s == "PVMOVE") {
            Some(s) => LvKind::Locked {
                status: s.to_string(),
            },
            None => LvKind::Linear, // refined by `classify`
        },
        extents: next,
        segments,
    })
}

/// `["pv0", 0, "pv1", 10]` as pairs; None if it is not such a list.
fn pairs(v: &[Value]) -> Option<Vec<(String, u64)>> {
    if v.is_empty() || v.len() % 2 != 0 {
        return None;
    }
    v.chunks(2)
        .map(|c| match (&c[0], &c[1]) {
            (Value::Str(s), Value::Int(i)) => u64::try_from(*i).ok().map(|i| (s.clone(), i)),
            _ => None,
        })
        .collect()
}

fn segment_from_text(vg: &str, ctx: &str, s: &Section) -> Result<Segment, LvmError> {
    let start_extent = uint(s, "start_extent", vg, ctx)?;
    let extent_count = uint(s, "extent_count", vg, ctx)?;
    let seg_type = s
        .str("type")
        .ok_or_else(|| vg_err(vg, format!("{ctx}: a segment has no type")))?
        .to_string();
    if extent_count == 0 {
        return Err(vg_err(vg, format!("{ctx}: empty segment")));
    }
    let mut stripes = Vec::new();
    let mut names = Vec::new();
    let mut areas = Vec::new();
    for (k, v) in &s.0 {
        match v {
            Value::List(l) if k == "stripes" => {
                stripes =
                    pairs(l).ok_or_else(|| vg_err(vg, format!("{ctx}: malformed stripes list")))?;
            }
            Value::List(l) => match pairs(l) {
                Some(p) => areas.extend(p),
                None => names.extend(l.iter().filter_map(|x| match x {
                    Value::Str(t) => Some((k.clone(), t.clone())),
                    _ => None,
                })),
            },
            Value::Str(t) if k != "type" => names.push((k.clone(), t.clone())),
            _ => {}
        }
    }
    if seg_type == "striped" || seg_type == "linear" {
        let n = stripes.len() as u64;
        let sc = s.int("stripe_count").unwrap_or(1);
        if n == 0 || sc != n as i64 || extent_count % n != 0 {
            return Err(vg_err(
                vg,
                format!(
                    "{ctx}: striped segment with {n} stripes, stripe_count {sc}, {extent_count} extents"
                ),
            ));
        }
    }
    Ok(Segment {
        start_extent,
        extent_count,
        seg_type,
        stripes,
        names,
        areas,
    })
}

/// Every PV area lies inside its PV's extents and none is claimed twice.
fn check_areas(m: &VgMeta) -> Result<(), LvmError> {
    let mut claimed: HashMap<usize, Vec<(u64, u64, &str)>> = HashMap::new();
    // Each claim: (first extent, extents, LV).
    for lv in &m.lvs {
        for s in &lv.segments {
            for (pv, first, count) in segment_areas(s) {
                let Some(i) = m.pv_index(pv) else { continue };
                if first
                    .checked_add(count)
                    .is_none_or(|e| e > m.pvs[i].pe_count)
                {
                    return Err(vg_err(
                        &m.name,
                        format!(
                            "LV {}: extents {first}+{count} lie outside PV {pv} ({} extents)",
                            lv.name, m.pvs[i].pe_count
                        ),
                    ));
                }
                claimed.entry(i).or_default().push((first, count, &lv.name));
            }
        }
    }
    for (i, mut v) in claimed {
        v.sort();
        for w in v.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                return Err(vg_err(
                    &m.name,
                    format!(
                        "LVs {} and {} both claim extent {} of PV {}",
                        w[0].2, w[1].2, w[1].0, m.pvs[i].name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Sets each LV's kind: linear, or the reason it is not read through.
fn classify(m: &mut VgMeta) {
    let lv_names: Vec<String> = m.lvs.iter().map(|l| l.name.clone()).collect();
    let is_lv = |n: &str| lv_names.iter().any(|l| l == n);
    let mut kinds: Vec<LvKind> = Vec::with_capacity(m.lvs.len());
    let mut refs: Vec<(String, LvKind)> = Vec::new();
    for lv in &m.lvs {
        let mut kind = lv.kind.clone();
        for s in &lv.segments {
            if kind != LvKind::Linear {
                break;
            }
            let striped = s.seg_type == "striped" || s.seg_type == "linear";
            if striped && s.stripes.len() > 1 {
                kind = LvKind::Striped {
                    stripes: s.stripes.len() as u64,
                };
            } else if striped {
                if let Some((on, _)) = s.stripes.iter().find(|(n, _)| m.pv_index(n).is_none()) {
                    kind = LvKind::OnLv { lv: on.clone() };
                }
            } else {
                kind = LvKind::Segment {
                    seg_type: s.seg_type.clone(),
                };
            }
        }
        for s in &lv.segments {
            let striped = s.seg_type == "striped" || s.seg_type == "linear";
            let named = s
                .names
                .iter()
                .map(|(k, n)| (k.as_str(), n.as_str()))
                .chain(s.areas.iter().map(|(n, _)| ("area", n.as_str())))
                .chain(s.stripes.iter().map(|(n, _)| ("stripe", n.as_str())));
            for (key, other) in named {
                if other == lv.name || !is_lv(other) || (striped && key != "stripe") {
                    continue;
                }
                let k = match (s.seg_type.as_str(), key) {
                    ("snapshot", "origin") => LvKind::Origin {
                        snapshot: lv.name.clone(),
                    },
                    ("snapshot", "cow_store") => LvKind::Snapshot {
                        origin: s
                            .names
                            .iter()
                            .find(|(k, _)| k == "origin")
                            .map(|(_, o)| o.clone())
                            .unwrap_or_default(),
                    },
                    _ => LvKind::Part {
                        of: lv.name.clone(),
                        seg_type: s.seg_type.clone(),
                    },
                };
                refs.push((other.to_string(), k));
            }
        }
        kinds.push(kind);
    }
    for (lv, k) in m.lvs.iter_mut().zip(kinds) {
        lv.kind = k;
    }
    for (name, k) in refs {
        if let Some(lv) = m.lvs.iter_mut().find(|l| l.name == name) {
            if lv.kind == LvKind::Linear || matches!(lv.kind, LvKind::Part { .. }) {
                lv.kind = k;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::lvm::text::parse;

    const META: &str = r#"
tvg {
	id = "dXGsbb-hq11-GOfD-fjFa-Iquc-230T-x5mguJ"
	seqno = 4
	status = ["RESIZEABLE", "READ", "WRITE"]
	extent_size = 8192
	physical_volumes {
		pv0 {
			id = "7jsnC3-27Om-QW3n-fKhY-72RY-mpoi-ohrf2Q"
			dev_size = 131072
			pe_start = 2048
			pe_count = 15
		}
	}
	logical_volumes {
		root {
			id = "g9qRiB-VA9c-7vxK-19j8-A90v-eHki-ywbtvB"
			status = ["READ", "WRITE", "VISIBLE"]
			segment_count = 2
			segment1 {
				start_extent = 0
				extent_count = 2
				type = "striped"
				stripe_count = 1
				stripes = ["pv0", 0]
			}
			segment2 {
				start_extent = 2
				extent_count = 2
				type = "striped"
				stripe_count = 1
				stripes = ["pv0", 3]
			}
		}
		swap {
			id = "B3bsPn-eI8Q-f2S1-ewQ9-FjN4-FN0l-8RcIP5"
			status = ["READ", "WRITE", "VISIBLE"]
			segment_count = 1
			segment1 {
				start_extent = 0
				extent_count = 1
				type = "striped"
				stripe_count = 1
				stripes = ["pv0", 2]
			}
		}
	}
}
contents = "Text Format Volume Group"
version = 1
"#;

    pub(crate) fn meta(text: &str) -> Result<VgMeta, LvmError> {
        vg_from_text(&parse(text.as_bytes())?)
    }

    #[test]
    fn two_segment_linear_lv() {
        let m = meta(META).unwrap();
        assert_eq!(
            (m.name.as_str(), m.seqno, m.extent_size),
            ("tvg", 4, 4 << 20)
        );
        assert_eq!(m.pvs[0].pe_start, 1 << 20);
        assert_eq!(m.pvs[0].pe_count, 15);
        assert_eq!(m.lvs.len(), 2);
        assert_eq!(m.lvs[0].kind, LvKind::Linear);
        assert_eq!(m.lvs[0].extents, 4);
        assert_eq!(
            m.pv_used()[0],
            vec![Extent::new(1 << 20, 20 << 20)] // extents 0..5 of pv0
        );
    }

    #[test]
    fn overlapping_and_out_of_range_areas_are_errors() {
        let e = meta(&META.replace("\"pv0\", 3", "\"pv0\", 1")).unwrap_err();
        assert!(e.to_string().contains("both claim"), "{e}");
        let e = meta(&META.replace("\"pv0\", 3", "\"pv0\", 14")).unwrap_err();
        assert!(e.to_string().contains("outside PV"), "{e}");
        assert!(meta(&META.replace("start_extent = 2", "start_extent = 3")).is_err());
        assert!(meta(&META.replace("segment_count = 2", "segment_count = 3")).is_err());
        assert!(meta(&META.replace("extent_size = 8192", "extent_size = 0")).is_err());
        assert!(meta(&META.replace("pe_count = 15", "pe_count = 16")).is_err());
        assert!(meta(&META.replace("version = 1", "version = 2")).is_err());
    }

    #[test]
    fn kinds_are_named() {
        let striped = META.replace(
            "stripe_count = 1\n\t\t\t\tstripes = [\"pv0\", 2]",
            "stripe_count = 2\n\t\t\t\tstripe_size = 128\n\t\t\t\tstripes = [\"pv0\", 5, \"pv0\", 7]",
        );
        let striped = striped.replace("extent_count = 1", "extent_count = 2");
        let m = meta(&striped).unwrap();
        assert_eq!(m.lvs[1].kind, LvKind::Striped { stripes: 2 });
        assert_eq!(m.lvs[1].kind.to_string(), "striped (2 stripes)");
        let thin = r#"
vg { id = "x" seqno = 1 extent_size = 8192
  physical_volumes { pv0 { id = "p" pe_start = 2048 pe_count = 10 } }
  logical_volumes {
    pool { status = ["VISIBLE"] segment_count = 1
      segment1 { start_extent = 0 extent_count = 2 type = "thin-pool" metadata = "pool_tmeta" pool = "pool_tdata" } }
    pool_tdata { status = [] segment_count = 1
      segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 0] } }
    pool_tmeta { status = [] segment_count = 1
      segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv0", 2] } }
    thin1 { status = ["VISIBLE"] segment_count = 1
      segment1 { start_extent = 0 extent_count = 5 type = "thin" thin_pool = "pool" device_id = 1 } }
    lin { status = ["VISIBLE"] segment_count = 1
      segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv0", 3] } }
    snap { status = ["VISIBLE"] segment_count = 1
      segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv0", 4] } }
    snapshot0 { status = [] segment_count = 1
      segment1 { start_extent = 0 extent_count = 1 type = "snapshot" chunk_size = 8 origin = "lin" cow_store = "snap" } }
  }
}
contents = "Text Format Volume Group"
version = 1
"#;
        let m = meta(thin).unwrap();
        let k = |n: &str| m.lvs.iter().find(|l| l.name == n).unwrap().kind.to_string();
        assert_eq!(k("pool"), "thin-pool");
        assert_eq!(k("pool_tdata"), "part of thin-pool LV pool");
        assert_eq!(k("pool_tmeta"), "part of thin-pool LV pool");
        assert_eq!(k("thin1"), "thin");
        assert_eq!(k("lin"), "snapshot origin (of snapshot snapshot0)");
        assert_eq!(k("snap"), "snapshot (of lin)");
        // Unused extents: only 5..10 of pv0 are claimed by nothing.
        assert_eq!(m.pv_used()[0], vec![Extent::new(1 << 20, 5 * (4 << 20))]);
    }
}
