//! GPT: the primary header and entry array (CRC32-checked), the backup
//! header only when the primary is unusable, and the layout rules a GPT
//! adds: partitions inside the usable LBA range, off both headers and both
//! entry arrays.
//!
//! Not here: MBR (`partition`) and the layout check itself (`table`).

use super::table::{
    LayoutError, Partition, PartitionTable, Reserved, SECTOR, TableKind, check_layout, crc32, guid,
    read,
};
use crate::bytes::{le32, le64};
use crate::image::BlockSource;

const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// GPT entries read at most.
const MAX_GPT_ENTRIES: u64 = 1024;

/// Reads the GPT of `src`; None when neither header is valid.
pub(super) fn read_gpt(src: &dyn BlockSource) -> Option<PartitionTable> {
    let size = src.virtual_size();
    let last_lba = size / SECTOR - 1;
    let mut warnings = Vec::new();
    // The backup is used only when the primary header itself is unusable.
    let (used, other) = match gpt_at(src, 1) {
        Ok(h) => {
            let other = gpt_at(src, h.alternate).ok();
            (h, other)
        }
        Err(e) => {
            warnings.push(format!("primary GPT header: {e}"));
            match gpt_at(src, last_lba) {
                Ok(h) => (h, None),
                Err(e) => {
                    warnings.push(format!("backup GPT header: {e}"));
                    return None;
                }
            }
        }
    };
    let mut reserved = vec![Reserved {
        start: 0,
        len: SECTOR,
        what: "the protective MBR",
    }];
    for h in std::iter::once(&used).chain(other.iter()) {
        reserved.push(Reserved {
            start: h.lba * SECTOR,
            len: SECTOR,
            what: "a GPT header",
        });
        reserved.push(Reserved {
            start: h.entries_lba * SECTOR,
            len: h.entries_bytes,
            what: "a GPT entry array",
        });
    }
    let lo = used.first_usable.saturating_mul(SECTOR);
    let hi = used.last_usable.saturating_add(1).saturating_mul(SECTOR);
    let layout_error = used
        .bad_entry
        .clone()
        .or_else(|| check_layout(&used.parts, size, lo, hi, &reserved));
    Some(PartitionTable {
        kind: TableKind::Gpt,
        partitions: used.parts,
        warnings,
        layout_error,
    })
}

/// One CRC-checked GPT header and its entries.
struct GptHeader {
    lba: u64,
    alternate: u64,
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    entries_bytes: u64,
    parts: Vec<Partition>,
    /// An entry that cannot describe a partition (end before start).
    bad_entry: Option<LayoutError>,
}

/// Why one GPT header (primary or backup) is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GptHeaderError {
    #[error("bad LBA")]
    BadLba,
    #[error("unreadable")]
    Unreadable,
    #[error("no signature")]
    NoSignature,
    #[error("bad header size {0}")]
    BadSize(usize),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("header at LBA {0} says it is at LBA {1}")]
    Misplaced(u64, u64),
    #[error("implausible entry table ({0} entries of {1} bytes)")]
    ImplausibleEntries(u64, u64),
    #[error("bad entry LBA")]
    BadEntryLba,
    #[error("entry table lies past the end of the disk")]
    EntriesPastEnd,
    #[error("entry table checksum mismatch")]
    EntriesChecksum,
}

fn gpt_at(src: &dyn BlockSource, lba: u64) -> Result<GptHeader, GptHeaderError> {
    let h = read(
        src,
        lba.checked_mul(SECTOR).ok_or(GptHeaderError::BadLba)?,
        SECTOR as usize,
    )
    .ok_or(GptHeaderError::Unreadable)?;
    if &h[0..8] != GPT_SIGNATURE {
        return Err(GptHeaderError::NoSignature);
    }
    let hsize = le32(&h, 12) as usize;
    if !(92..=SECTOR as usize).contains(&hsize) {
        return Err(GptHeaderError::BadSize(hsize));
    }
    let mut hc = h[..hsize].to_vec();
    hc[16..20].fill(0);
    if crc32(&hc) != le32(&h, 16) {
        return Err(GptHeaderError::HeaderChecksum);
    }
    if le64(&h, 24) != lba {
        return Err(GptHeaderError::Misplaced(lba, le64(&h, 24)));
    }
    let entries_lba = le64(&h, 72);
    let count = le32(&h, 80) as u64;
    let esize = le32(&h, 84) as u64;
    if !(128..=4096).contains(&esize) || count > MAX_GPT_ENTRIES {
        return Err(GptHeaderError::ImplausibleEntries(count, esize));
    }
    let table = read(
        src,
        entries_lba
            .checked_mul(SECTOR)
            .ok_or(GptHeaderError::BadEntryLba)?,
        (count * esize) as usize,
    )
    .ok_or(GptHeaderError::EntriesPastEnd)?;
    if crc32(&table) != le32(&h, 88) {
        return Err(GptHeaderError::EntriesChecksum);
    }
    let mut parts = Vec::new();
    let mut bad_entry = None;
    for i in 0..count as usize {
        let e = &table[i * esize as usize..(i + 1) * esize as usize];
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        let range = first.checked_mul(SECTOR).zip(
            last.checked_add(1)
                .and_then(|l| l.checked_mul(SECTOR))
                .filter(|_| last >= first),
        );
        let Some((start, end)) = range else {
            bad_entry.get_or_insert(LayoutError::ImpossibleRange(i as u32 + 1, first, last));
            continue;
        };
        parts.push(Partition {
            index: i as u32 + 1,
            start,
            size: end - start,
            type_id: format!("gpt:{}", guid(&e[0..16])),
            part_uuid: guid(&e[16..32]).to_ascii_lowercase(),
        });
    }
    parts.sort_by_key(|p| p.start);
    Ok(GptHeader {
        lba,
        alternate: le64(&h, 32),
        first_usable: le64(&h, 40),
        last_usable: le64(&h, 48),
        entries_lba,
        entries_bytes: count * esize,
        parts,
        bad_entry,
    })
}
