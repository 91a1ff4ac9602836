//! MBR and GPT parsing. A disk with neither is one "partition" covering the
//! whole disk (a bare filesystem). Every entry is checked against the disk
//! size; an entry that does not fit is dropped with a warning.

use crate::bytes::{le32, le64};
use crate::image::BlockSource;

pub const SECTOR: u64 = 512;
const MBR_SIGNATURE: [u8; 2] = [0x55, 0xAA];
const MBR_TABLE: usize = 446;
const MBR_TYPE_GPT_PROTECTIVE: u8 = 0xEE;
const MBR_EXTENDED: [u8; 3] = [0x05, 0x0F, 0x85];
/// Logical partitions followed at most (guards against EBR loops).
const MAX_LOGICAL: usize = 128;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// GPT entries read at most.
const MAX_GPT_ENTRIES: u64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
    /// No partition table: a filesystem on the whole disk.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// 1-based partition number (0 for a whole-disk filesystem).
    pub index: u32,
    /// Byte offset and size on the disk.
    pub start: u64,
    pub size: u64,
    /// `mbr:0x83`, `gpt:0FC63DAF-...`, or `disk`.
    pub type_id: String,
    /// PARTUUID as fstab names it: the GPT unique GUID (lowercase), or the
    /// MBR disk signature and number (`1234abcd-01`); empty for a bare disk.
    #[serde(skip)]
    pub part_uuid: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionTable {
    pub kind: TableKind,
    pub partitions: Vec<Partition>,
    pub warnings: Vec<String>,
}

fn read(src: &dyn BlockSource, off: u64, len: usize) -> Option<Vec<u8>> {
    if off.checked_add(len as u64)? > src.virtual_size() {
        return None;
    }
    let mut b = vec![0u8; len];
    src.read_at(&mut b, off).ok()?;
    Some(b)
}

/// CRC-32 (IEEE, reflected), as GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    crate::bytes::crc32_reflected(0xEDB8_8320, data)
}

/// Mixed-endian GUID text, as tools print it.
fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

/// Reads the partition table of `src`.
pub fn read_partitions(src: &dyn BlockSource) -> PartitionTable {
    let size = src.virtual_size();
    let whole = || PartitionTable {
        kind: TableKind::None,
        partitions: vec![Partition {
            index: 0,
            start: 0,
            size,
            type_id: "disk".into(),
            part_uuid: String::new(),
        }],
        warnings: Vec::new(),
    };
    let Some(mbr) = read(src, 0, SECTOR as usize) else {
        return whole();
    };
    if mbr[510..512] != MBR_SIGNATURE {
        return whole();
    }
    let entries: Vec<(u8, u64, u64)> = (0..4)
        .map(|i| {
            let e = &mbr[MBR_TABLE + i * 16..MBR_TABLE + (i + 1) * 16];
            (e[4], le32(e, 8) as u64, le32(e, 12) as u64)
        })
        .collect();
    if entries.iter().any(|e| e.0 == MBR_TYPE_GPT_PROTECTIVE) {
        if let Some(t) = read_gpt(src) {
            return t;
        }
        return PartitionTable {
            kind: TableKind::Gpt,
            partitions: Vec::new(),
            warnings: vec![
                "protective MBR, but neither GPT header is valid: the disk is copied whole".into(),
            ],
        };
    }
    // A bare filesystem's boot sector can carry 0x55AA (FAT): require every
    // used entry to be a plausible partition inside the disk.
    let used: Vec<_> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.0 != 0 && e.2 != 0)
        .collect();
    let plausible = !used.is_empty()
        && used
            .iter()
            .all(|(_, e)| e.1 >= 1 && (e.1 + e.2) * SECTOR <= size)
        && used
            .iter()
            .all(|(i, _)| mbr[MBR_TABLE + i * 16] & 0x7F == 0);
    if !plausible {
        return whole();
    }
    let mut t = PartitionTable {
        kind: TableKind::Mbr,
        partitions: Vec::new(),
        warnings: Vec::new(),
    };
    for (i, e) in used {
        if MBR_EXTENDED.contains(&e.0) {
            read_logical(src, e.1 * SECTOR, &mut t);
        } else {
            t.partitions.push(Partition {
                index: i as u32 + 1,
                start: e.1 * SECTOR,
                size: e.2 * SECTOR,
                type_id: format!("mbr:{:#04x}", e.0),
                part_uuid: String::new(),
            });
        }
    }
    t.partitions.sort_by_key(|p| p.start);
    let sig = le32(&mbr, 440);
    for p in &mut t.partitions {
        p.part_uuid = format!("{sig:08x}-{:02x}", p.index);
    }
    t
}

/// Follows the EBR chain of an extended partition starting at byte `ext`.
fn read_logical(src: &dyn BlockSource, ext: u64, t: &mut PartitionTable) {
    let size = src.virtual_size();
    let mut ebr = ext;
    for n in 0..MAX_LOGICAL {
        let Some(b) = read(src, ebr, SECTOR as usize) else {
            t.warnings
                .push(format!("extended boot record at {ebr} is unreadable"));
            return;
        };
        if b[510..512] != MBR_SIGNATURE {
            t.warnings
                .push(format!("extended boot record at {ebr} has no signature"));
            return;
        }
        let e0 = &b[MBR_TABLE..MBR_TABLE + 16];
        let e1 = &b[MBR_TABLE + 16..MBR_TABLE + 32];
        let (start, len) = (
            ebr + le32(e0, 8) as u64 * SECTOR,
            le32(e0, 12) as u64 * SECTOR,
        );
        if e0[4] != 0 && len > 0 {
            if start.checked_add(len).is_some_and(|e| e <= size) {
                t.partitions.push(Partition {
                    index: 5 + n as u32,
                    start,
                    size: len,
                    type_id: format!("mbr:{:#04x}", e0[4]),
                    part_uuid: String::new(),
                });
            } else {
                t.warnings.push(format!(
                    "logical partition {} lies past the end of the disk",
                    5 + n
                ));
            }
        }
        let next = le32(e1, 8) as u64 * SECTOR;
        if e1[4] == 0 || next == 0 {
            return;
        }
        let Some(n_ebr) = ext.checked_add(next).filter(|&x| x > ebr) else {
            t.warnings.push("extended boot records loop".into());
            return;
        };
        ebr = n_ebr;
    }
    t.warnings.push(format!(
        "more than {MAX_LOGICAL} logical partitions: the rest are ignored"
    ));
}

fn read_gpt(src: &dyn BlockSource) -> Option<PartitionTable> {
    let last_lba = src.virtual_size() / SECTOR - 1;
    let mut warnings = Vec::new();
    for (lba, name) in [(1, "primary"), (last_lba, "backup")] {
        match gpt_at(src, lba) {
            Ok(parts) => {
                return Some(PartitionTable {
                    kind: TableKind::Gpt,
                    partitions: parts,
                    warnings,
                });
            }
            Err(e) => warnings.push(format!("{name} GPT header: {e}")),
        }
    }
    None
}

fn gpt_at(src: &dyn BlockSource, lba: u64) -> Result<Vec<Partition>, String> {
    let size = src.virtual_size();
    let h = read(src, lba * SECTOR, SECTOR as usize).ok_or("unreadable")?;
    if &h[0..8] != GPT_SIGNATURE {
        return Err("no signature".into());
    }
    let hsize = le32(&h, 12) as usize;
    if !(92..=SECTOR as usize).contains(&hsize) {
        return Err(format!("bad header size {hsize}"));
    }
    let mut hc = h[..hsize].to_vec();
    hc[16..20].fill(0);
    if crc32(&hc) != le32(&h, 16) {
        return Err("header checksum mismatch".into());
    }
    let entries_lba = le64(&h, 72);
    let count = le32(&h, 80) as u64;
    let esize = le32(&h, 84) as u64;
    if !(128..=4096).contains(&esize) || count > MAX_GPT_ENTRIES {
        return Err(format!(
            "implausible entry table ({count} entries of {esize} bytes)"
        ));
    }
    let table = read(
        src,
        entries_lba.checked_mul(SECTOR).ok_or("bad entry LBA")?,
        (count * esize) as usize,
    )
    .ok_or("entry table lies past the end of the disk")?;
    if crc32(&table) != le32(&h, 88) {
        return Err("entry table checksum mismatch".into());
    }
    let mut out = Vec::new();
    for i in 0..count as usize {
        let e = &table[i * esize as usize..(i + 1) * esize as usize];
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        let start = first.checked_mul(SECTOR).ok_or("bad partition start")?;
        let end = last
            .checked_add(1)
            .and_then(|l| l.checked_mul(SECTOR))
            .ok_or("bad partition end")?;
        if last < first || end > size {
            return Err(format!("partition {} lies outside the disk", i + 1));
        }
        out.push(Partition {
            index: i as u32 + 1,
            start,
            size: end - start,
            type_id: format!("gpt:{}", guid(&e[0..16])),
            part_uuid: guid(&e[16..32]).to_ascii_lowercase(),
        });
    }
    out.sort_by_key(|p| p.start);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
