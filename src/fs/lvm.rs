//! Filesystems inside LVM2: a PV partition's free space is the PV extents
//! no LV claims (and the partition's tail after the last extent), plus the
//! free space of the filesystem in each linear LV, read through the LV's
//! segment map (`disk::lvm::LvView`) and mapped back to disk ranges. LVs
//! of other kinds, and every PV of a VG that cannot be assembled, are
//! copied whole with a warning naming the reason.
//!
//! Not here: parsing LVM (`disk::lvm`), mounting LVs (the guest module).

use super::{PartitionReport, Region, examine};
use crate::disk::lvm::{Lv, LvKind, LvView, LvmScan, lv_to_disk};
use crate::extent::{self, Extent};
use crate::image::BlockSource;

/// One logical volume's findings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LvReport {
    /// `vg/lv`.
    pub name: String,
    /// `linear`, or why it is not read (`thin-pool`, `striped (2 stripes)`, ...).
    pub kind: String,
    pub visible: bool,
    pub size: u64,
    pub segments: usize,
    pub filesystem: String,
    pub label: String,
    pub used_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    /// Allocated image bytes inside the LV's free space: what compact skips.
    pub skipped_bytes: u64,
    pub fs_aware: bool,
    pub warning: Option<String>,
    /// Disk ranges of the LV's free space (normalized).
    #[serde(skip)]
    pub disk_free: Vec<Extent>,
}

/// Fills `rep` for the PV in its partition and returns the disk ranges it
/// proves free. The LVs of a VG are reported on its first PV's partition.
pub(crate) fn pv_partition(
    src: &dyn BlockSource,
    allocated: &[Extent],
    lvm: &LvmScan,
    rep: &mut PartitionReport,
    warnings: &mut Vec<String>,
) -> Vec<Extent> {
    rep.filesystem = "LVM2 PV".into();
    let what = format!("partition {} (LVM2 PV)", rep.index);
    let mut refuse = |rep: &mut PartitionReport, why: String| {
        let msg = format!("{what}: {why}: copied whole");
        rep.warning = Some(msg.clone());
        warnings.push(msg);
        Vec::new()
    };
    if let Some((_, Err(e))) = lvm.pvs.iter().find(|(p, _)| p.index == rep.index) {
        return refuse(rep, e.to_string());
    }
    let Some(vo) = lvm.vg_of(rep.index) else {
        return refuse(
            rep,
            "no metadata on this disk names this PV, so its volume group is unknown".into(),
        );
    };
    rep.label = vo.name.clone();
    let vg = match &vo.vg {
        Ok(v) => v,
        Err(e) => return refuse(rep, e.to_string()),
    };
    let mut free: Vec<Extent> = vg
        .pvs
        .iter()
        .filter(|p| p.part.index == rep.index)
        .flat_map(|p| p.unused.iter().copied())
        .collect();
    // Every PV's figures count the LV free space lying on it; the LVs are
    // listed (and warned about) once, on the VG's first PV.
    let first = vo.parts.first() == Some(&rep.index);
    let mut quiet = Vec::new();
    for lv in &vg.lvs {
        let lr = lv_report(
            src,
            allocated,
            lv,
            if first { &mut *warnings } else { &mut quiet },
        );
        free.extend(lr.disk_free.iter().copied());
        if first {
            rep.logical_volumes.push(lr);
        }
    }
    let free = extent::normalize(free);
    let mine = extent::clip(&free, rep.start, rep.start + rep.size);
    let skipped = extent::subtract(allocated, &extent::subtract(allocated, &mine));
    rep.free_bytes = Some(extent::total(&mine));
    rep.used_bytes = Some(rep.size - extent::total(&mine).min(rep.size));
    rep.skipped_bytes = extent::total(&skipped);
    rep.fs_aware = !mine.is_empty();
    free
}

fn lv_report(
    src: &dyn BlockSource,
    allocated: &[Extent],
    lv: &Lv,
    warnings: &mut Vec<String>,
) -> LvReport {
    let name = lv.full_name();
    let mut r = LvReport {
        name: name.clone(),
        kind: lv.kind.to_string(),
        visible: lv.visible,
        size: lv.size,
        segments: lv.segments,
        filesystem: String::new(),
        label: String::new(),
        used_bytes: None,
        free_bytes: None,
        skipped_bytes: 0,
        fs_aware: false,
        warning: None,
        disk_free: Vec::new(),
    };
    if lv.kind != LvKind::Linear || lv.map.is_empty() {
        let msg = format!("LV {name} ({}): not read; copied whole", lv.kind);
        if lv.visible {
            warnings.push(msg.clone());
        }
        r.warning = Some(msg);
        return r;
    }
    let view = LvView::new(src, lv);
    let region = Region {
        src: &view,
        start: 0,
        len: lv.size,
    };
    let to_disk = |v: &[Extent]| -> Vec<Extent> {
        v.iter()
            .flat_map(|e| lv_to_disk(&lv.map, e.start, e.len).unwrap_or_default())
            .collect()
    };
    let f = examine(
        &region,
        &format!("LV {name}"),
        allocated,
        &to_disk,
        warnings,
    );
    r.filesystem = f.filesystem;
    r.label = f.label;
    r.used_bytes = f.used_bytes;
    r.free_bytes = f.free_bytes;
    r.skipped_bytes = f.skipped_bytes;
    r.fs_aware = f.fs_aware;
    r.warning = f.warning;
    r.disk_free = f.disk_free;
    r
}
