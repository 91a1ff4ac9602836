//! What a partition table reader produces (`PartitionTable`, `Partition`,
//! `LayoutError`) and the layout check MBR and GPT share, with the small
//! helpers both parse with. Read by `partition` (MBR) and `gpt`; imports
//! neither.

use crate::bytes::le32;
use crate::image::BlockSource;

pub const SECTOR: u64 = 512;
/// Logical partitions followed at most (guards against EBR loops).
pub const MAX_LOGICAL: usize = 128;

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
    /// Why the partitions cannot be trusted to describe separate regions
    /// (overlap, past the end, over the table): nothing may be skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout_error: Option<LayoutError>,
}

/// A byte range the partition table itself occupies.
#[derive(Debug, Clone, Copy)]
pub struct Reserved {
    pub start: u64,
    pub len: u64,
    pub what: &'static str,
}

/// Why a partition table's layout cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("partition {0} has an impossible size")]
    ImpossibleSize(u32),
    #[error("partition {0} has an impossible range (LBA {1}..{2})")]
    ImpossibleRange(u32, u64, u64),
    #[error("partition {index} ends at byte {end}, past the end of the {size}-byte disk")]
    PastDiskEnd { index: u32, end: u64, size: u64 },
    #[error(
        "partition {index} ({start}..{end}) lies outside the area the partition table allows ({lo}..{hi})"
    )]
    OutsideTableArea {
        index: u32,
        start: u64,
        end: u64,
        lo: u64,
        hi: u64,
    },
    #[error("partition {0} lies over {1}")]
    OverTable(u32, &'static str),
    #[error("partitions {0} and {1} overlap")]
    Overlap(u32, u32),
    #[error("logical partition {0} lies outside its extended partition {1}")]
    OutsideExtended(u32, u32),
    #[error("logical partition {0} lies past the end of the disk")]
    LogicalPastEnd(u32),
    #[error("extended boot record at {0} is unreadable")]
    EbrUnreadable(u64),
    #[error("extended boot record at {0} has no signature")]
    EbrNoSignature(u64),
    #[error("extended boot records loop")]
    EbrLoop,
    #[error("more than {MAX_LOGICAL} logical partitions: the rest are ignored")]
    TooManyLogical,
}

/// In JSON a layout error is its message.
impl serde::Serialize for LayoutError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Checks that the partitions lie inside `[lo, hi)`, inside the disk, apart
/// from each other and apart from the table's own structures.
pub fn check_layout(
    parts: &[Partition],
    size: u64,
    lo: u64,
    hi: u64,
    reserved: &[Reserved],
) -> Option<LayoutError> {
    for p in parts {
        let Some(end) = p.start.checked_add(p.size) else {
            return Some(LayoutError::ImpossibleSize(p.index));
        };
        if end > size {
            return Some(LayoutError::PastDiskEnd {
                index: p.index,
                end,
                size,
            });
        }
        if p.start < lo || end > hi {
            return Some(LayoutError::OutsideTableArea {
                index: p.index,
                start: p.start,
                end,
                lo,
                hi,
            });
        }
        if let Some(r) = reserved
            .iter()
            .find(|r| r.start < end && p.start < r.start + r.len)
        {
            return Some(LayoutError::OverTable(p.index, r.what));
        }
    }
    let mut v: Vec<&Partition> = parts.iter().collect();
    v.sort_by_key(|p| (p.start, p.index));
    for w in v.windows(2) {
        if w[1].start < w[0].start + w[0].size {
            return Some(LayoutError::Overlap(w[0].index, w[1].index));
        }
    }
    None
}

pub fn read(src: &dyn BlockSource, off: u64, len: usize) -> Option<Vec<u8>> {
    if off.checked_add(len as u64)? > src.virtual_size() {
        return None;
    }
    let mut b = vec![0u8; len];
    src.read_at(&mut b, off).ok()?;
    Some(b)
}

/// CRC-32 (IEEE, reflected), as GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    crate::crc::crc32_ieee(data)
}

/// Mixed-endian GUID text, as tools print it.
pub fn guid(b: &[u8]) -> String {
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
