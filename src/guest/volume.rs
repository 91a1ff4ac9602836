//! The guest's block volumes: the partitions, and the logical volumes of
//! LVM2 volume groups on them (read by `disk::lvm`, never through the
//! host's LVM). Each volume is one contiguous byte range of the disk that a
//! single loop device can map, a linear LV's scattered pieces (served as one
//! file through vmfinal's FUSE server, `lvfile`, for a loop device to map),
//! or the reason it cannot be mapped.
//!
//! An LV maps to a loop device at an offset when its pieces lie back to
//! back on the disk (one segment, or segments LVM happened to allocate
//! contiguously). An LV whose pieces are scattered maps to a loop device
//! over its FUSE view (device-mapper, the usual way, is absent from this
//! kind of host kernel; see docs/ARCHITECTURE.md for why vmfinal does not
//! build dm tables where it exists). Thin, RAID, mirror, cache, snapshot
//! and striped LVs are refused by name. Hidden sub-LVs are not volumes.

use serde::Serialize;

use super::{FsId, PartInfo, identify};
use crate::disk::lvm::{self, DiskRange, LvKind, LvView, Piece};
use crate::fs::Region;
use crate::image::BlockSource;

/// Where a volume's bytes are, or why vmfinal cannot map them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mapping {
    /// `size` bytes at disk byte `start`: one loop device.
    Loop { start: u64, size: u64 },
    /// A linear LV of `size` bytes in scattered `pieces` (LV order): a loop
    /// device over its FUSE view (`lvfile`).
    Segments { size: u64, pieces: Vec<Piece> },
    /// Not mappable here; the text completes "LVM logical volume vg/lv, which ...".
    Refused(String),
}

/// A logical volume's names.
#[derive(Debug, Clone, Serialize)]
pub struct LvName {
    pub vg: String,
    pub lv: String,
    /// `/dev/mapper` name (`vg-lv`, dashes doubled).
    pub mapper: String,
}

/// A partition or a logical volume.
#[derive(Debug, Clone, Serialize)]
pub struct Volume {
    /// Name of its block node in vmfinal's private /dev (`part2`, `lv-vg-root`).
    pub key: String,
    /// Human name: `partition 2`, `LVM logical volume vg/root`.
    pub name: String,
    /// Its partition (for an LV: the partition of its first piece's PV).
    pub partition: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lv: Option<LvName>,
    pub fs: Option<FsId>,
    pub mapping: Mapping,
}

impl Volume {
    /// ext2/3/4, xfs or btrfs, mappable: what the root probe and fstab mount.
    pub fn mountable_kind(&self) -> Option<&str> {
        let k = self.fs.as_ref()?.kind.as_str();
        (matches!(k, "ext4" | "xfs" | "btrfs") && self.mapped()).then_some(k)
    }
    /// `vg/lv` for a logical volume, else its human name.
    pub fn short_name(&self) -> String {
        match &self.lv {
            Some(l) => format!("{}/{}", l.vg, l.lv),
            None => self.name.clone(),
        }
    }
    /// Whether vmfinal can map it (a loop device, maybe over a FUSE view).
    pub fn mapped(&self) -> bool {
        !matches!(self.mapping, Mapping::Refused(_))
    }
    /// Its one contiguous disk range, if it has one.
    pub fn range(&self) -> Option<(u64, u64)> {
        match self.mapping {
            Mapping::Loop { start, size } => Some((start, size)),
            Mapping::Segments { .. } | Mapping::Refused(_) => None,
        }
    }
    /// Its disk pieces in volume order, and its size (a contiguous volume
    /// is one piece).
    pub fn pieces(&self) -> Option<(Vec<Piece>, u64)> {
        match &self.mapping {
            &Mapping::Loop { start, size } => Some((
                vec![Piece {
                    lv_start: 0,
                    len: size,
                    disk_start: start,
                    pv: 0,
                }],
                size,
            )),
            Mapping::Segments { size, pieces } => Some((pieces.clone(), *size)),
            Mapping::Refused(_) => None,
        }
    }
}

/// All volumes of a disk, and what could not be read (warnings).
#[derive(Debug, Clone, Default)]
pub struct Volumes {
    pub list: Vec<Volume>,
    pub warnings: Vec<String>,
}

/// Whether `map` covers its LV from byte 0 without a gap or an overlap.
fn gapless(map: &[Piece]) -> bool {
    map.first().is_some_and(|p| p.lv_start == 0)
        && map
            .windows(2)
            .all(|w| w[0].lv_start + w[0].len == w[1].lv_start)
}

/// The volumes on `src`, given its partitions.
pub fn scan(src: &dyn BlockSource, parts: &[PartInfo]) -> Volumes {
    let mut out = Volumes::default();
    let ranges: Vec<DiskRange> = parts
        .iter()
        .map(|p| DiskRange {
            index: p.index,
            start: p.start,
            len: p.size,
        })
        .collect();
    let lvm = lvm::scan(src, &ranges);
    // Where a scattered LV's FUSE view cannot be served, say so up front
    // (the dry run and the preflight then name it).
    let fuse = std::path::Path::new("/dev/fuse").exists();
    for p in parts {
        if lvm.is_pv(p.index) {
            continue;
        }
        out.list.push(Volume {
            key: format!("part{}", p.index),
            name: format!("partition {}", p.index),
            partition: p.index,
            lv: None,
            fs: p.fs.clone(),
            mapping: Mapping::Loop {
                start: p.start,
                size: p.size,
            },
        });
    }
    for (p, r) in &lvm.pvs {
        if let Err(e) = r {
            out.warnings
                .push(format!("partition {} (LVM2 PV): {e}", p.index));
        }
    }
    for vo in &lvm.vgs {
        let vg = match &vo.vg {
            Ok(v) => v,
            Err(e) => {
                out.warnings.push(e.to_string());
                continue;
            }
        };
        for lv in vg.lvs.iter().filter(|l| l.visible) {
            let fs = if lv.map.is_empty() {
                None
            } else {
                let view = LvView::new(src, lv);
                identify(&Region {
                    src: &view,
                    start: 0,
                    len: lv.size,
                })
            };
            let contiguous = !lv.map.is_empty()
                && lv
                    .map
                    .windows(2)
                    .all(|w| w[0].disk_start + w[0].len == w[1].disk_start);
            let mapped: u64 = lv.map.iter().map(|p| p.len).sum();
            let mapping = if lv.kind != LvKind::Linear {
                Mapping::Refused(format!("is a {} LV; vmfinal maps only linear LVs", lv.kind))
            } else if contiguous && mapped == lv.size {
                Mapping::Loop {
                    start: lv.map[0].disk_start,
                    size: lv.size,
                }
            } else if mapped == lv.size && gapless(&lv.map) && fuse {
                Mapping::Segments {
                    size: lv.size,
                    pieces: lv.map.clone(),
                }
            } else if mapped == lv.size && gapless(&lv.map) {
                Mapping::Refused(format!(
                    "is in {} scattered segments, which vmfinal maps through a FUSE view of them, and this host has no /dev/fuse",
                    lv.segments
                ))
            } else {
                Mapping::Refused(format!(
                    "has {} segments that map {mapped} of its {} bytes",
                    lv.segments, lv.size
                ))
            };
            out.list.push(Volume {
                key: format!("lv-{}", lv.mapper_name()),
                name: format!("LVM logical volume {}", lv.full_name()),
                partition: lv
                    .map
                    .first()
                    .and_then(|pc| vg.pvs.get(pc.pv))
                    .or(vg.pvs.first())
                    .map(|p| p.part.index)
                    .unwrap_or(0),
                lv: Some(LvName {
                    vg: lv.vg.clone(),
                    lv: lv.name.clone(),
                    mapper: lv.mapper_name(),
                }),
                fs,
                mapping,
            });
        }
    }
    out
}

/// The volume an fstab spec names: UUID=, LABEL=, PARTUUID=, /dev/disk/by-*,
/// /dev/mapper/VG-LV, /dev/VG/LV, or a disk partition name (/dev/vda2).
pub fn resolve<'a>(spec: &str, vols: &'a [Volume], parts: &[PartInfo]) -> Option<&'a Volume> {
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let by = |key: &str| -> Option<&str> {
        spec.strip_prefix(&format!("{key}="))
            .map(|v| v.trim_matches('"'))
    };
    let fs_of = |v: &&'a Volume| v.fs.clone();
    if let Some(u) = by("UUID").or_else(|| spec.strip_prefix("/dev/disk/by-uuid/")) {
        return vols
            .iter()
            .find(|v| fs_of(v).is_some_and(|f| eq(&f.uuid, u)));
    }
    if let Some(l) = by("LABEL").or_else(|| spec.strip_prefix("/dev/disk/by-label/")) {
        return vols.iter().find(|v| fs_of(v).is_some_and(|f| f.label == l));
    }
    let part = |n: u32| vols.iter().find(|v| v.lv.is_none() && v.partition == n);
    if let Some(u) = by("PARTUUID").or_else(|| spec.strip_prefix("/dev/disk/by-partuuid/")) {
        return parts
            .iter()
            .find(|p| eq(&p.part_uuid, u))
            .and_then(|p| part(p.index));
    }
    if let Some(m) = spec
        .strip_prefix("/dev/mapper/")
        .or_else(|| spec.strip_prefix("/dev/disk/by-id/dm-name-"))
    {
        return vols
            .iter()
            .find(|v| v.lv.as_ref().is_some_and(|l| l.mapper == m));
    }
    let dev = spec.strip_prefix("/dev/")?;
    if let Some((vg, lv)) = dev.split_once('/') {
        return vols
            .iter()
            .find(|v| v.lv.as_ref().is_some_and(|l| l.vg == vg && l.lv == lv));
    }
    // /dev/sda2, /dev/vda2, /dev/xvda2, /dev/hda2, /dev/nvme0n1p2, /dev/mmcblk0p2
    let digits: String = dev
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let stem = &dev[..dev.len() - digits.len()];
    let plain = ["sd", "vd", "xvd", "hd"]
        .iter()
        .any(|p| stem.starts_with(p) && stem.len() == p.len() + 1);
    let nvme = stem.ends_with('p') && (stem.starts_with("nvme") || stem.starts_with("mmcblk"));
    if !(plain || nvme) || digits.is_empty() {
        return None;
    }
    let n: u32 = digits.chars().rev().collect::<String>().parse().ok()?;
    part(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(key: &str, part: u32, lv: Option<(&str, &str)>, uuid: &str, label: &str) -> Volume {
        Volume {
            key: key.into(),
            name: key.into(),
            partition: part,
            lv: lv.map(|(vg, l)| LvName {
                vg: vg.into(),
                lv: l.into(),
                mapper: format!("{}-{}", vg.replace('-', "--"), l.replace('-', "--")),
            }),
            fs: Some(FsId {
                kind: "ext4".into(),
                uuid: uuid.into(),
                label: label.into(),
            }),
            mapping: Mapping::Loop { start: 0, size: 1 },
        }
    }

    #[test]
    fn fstab_specs() {
        let parts = vec![PartInfo {
            index: 2,
            start: 0,
            size: 1,
            part_uuid: "abcd-02".into(),
            fs: None,
        }];
        let vols = vec![
            vol("part1", 1, None, "1111-aa", "boot"),
            vol("part2", 2, None, "2222-bb", "data"),
            vol(
                "lv-my--vg-root",
                3,
                Some(("my-vg", "root")),
                "3333-cc",
                "root",
            ),
        ];
        let key = |s: &str| resolve(s, &vols, &parts).map(|v| v.key.clone());
        assert_eq!(key("UUID=1111-AA").as_deref(), Some("part1"));
        assert_eq!(key("LABEL=boot").as_deref(), Some("part1"));
        assert_eq!(key("PARTUUID=abcd-02").as_deref(), Some("part2"));
        assert_eq!(key("/dev/vda2").as_deref(), Some("part2"));
        assert_eq!(key("/dev/nvme0n1p1").as_deref(), Some("part1"));
        assert_eq!(
            key("/dev/mapper/my--vg-root").as_deref(),
            Some("lv-my--vg-root")
        );
        assert_eq!(key("/dev/my-vg/root").as_deref(), Some("lv-my--vg-root"));
        assert_eq!(key("UUID=3333-cc").as_deref(), Some("lv-my--vg-root"));
        assert_eq!(key("/dev/mapper/x"), None);
        assert_eq!(key("/dev/vda3"), None);
    }
}
