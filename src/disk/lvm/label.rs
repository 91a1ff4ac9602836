//! LVM2's binary on-disk structures: the label (`LABELONE`, one of the
//! first four sectors, CRC-checked), the PV header that follows it (UUID,
//! device size, data areas, metadata areas, bootloader areas), and the
//! metadata area header (`mda_header`, CRC-checked) with its `raw_locn`
//! slots pointing at the text metadata in a circular buffer.
//!
//! Pure functions over byte slices; no I/O. Not here: the text itself.

use super::LvmError;
use crate::bytes::{le32, le64};

pub const SECTOR: u64 = 512;
/// Sectors searched for the label (LVM's LABEL_SCAN_SECTORS).
pub const LABEL_SCAN_SECTORS: u64 = 4;
const LABEL_ID: &[u8; 8] = b"LABELONE";
const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
/// Offset in the label header where its CRC coverage starts.
const LABEL_CRC_FROM: usize = 20;
const ID_LEN: usize = 32;
pub const MDA_HEADER_SIZE: u64 = 512;
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
const MDA_VERSION: u32 = 1;
const RAW_LOCN_IGNORED: u32 = 1;
/// Areas per list accepted at most (a sector holds fewer anyway).
const MAX_AREAS: usize = 8;
/// LVM's CRC seed.
pub const INITIAL_CRC: u32 = 0xf597_a6cf;

/// LVM's CRC: reflected CRC-32 (IEEE polynomial), seed `INITIAL_CRC`, no
/// final inversion.
pub fn crc(data: &[u8]) -> u32 {
    crate::crc::crc32_ieee_raw(INITIAL_CRC, data)
}

/// A byte range on the PV (offset from the PV's first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Area {
    pub offset: u64,
    /// 0 for a data area means "to the end of the device".
    pub size: u64,
}

/// What the label and PV header say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvLabel {
    /// Sector (0-3) holding the label.
    pub sector: u64,
    /// The PV UUID as stored: 32 characters, no dashes.
    pub uuid: String,
    pub device_size: u64,
    pub data_areas: Vec<Area>,
    pub metadata_areas: Vec<Area>,
    pub bootloader_areas: Vec<Area>,
}

/// Finds and parses the label in the first four sectors of a PV. `head`
/// holds at least those sectors (shorter input: only what it holds is
/// searched). `Ok(None)`: no label at all; an error: a label that is
/// damaged.
pub fn parse_label(head: &[u8]) -> Result<Option<PvLabel>, LvmError> {
    for s in 0..LABEL_SCAN_SECTORS {
        let at = (s * SECTOR) as usize;
        let Some(sec) = head.get(at..at + SECTOR as usize) else {
            break;
        };
        if &sec[0..8] != LABEL_ID {
            continue;
        }
        let bad = |what: String| LvmError::Label { sector: s, what };
        if le64(sec, 8) != s {
            return Err(bad(format!("says it is in sector {}", le64(sec, 8))));
        }
        if crc(&sec[LABEL_CRC_FROM..]) != le32(sec, 16) {
            return Err(bad("checksum mismatch".into()));
        }
        if &sec[24..32] != LABEL_TYPE {
            return Err(bad(format!(
                "unknown label type {:?}",
                String::from_utf8_lossy(&sec[24..32])
            )));
        }
        let off = le32(sec, 20) as usize;
        if !(32..=SECTOR as usize - (ID_LEN + 8 + 32)).contains(&off) {
            return Err(bad(format!("PV header at implausible offset {off}")));
        }
        let mut l = parse_pv_header(&sec[off..]).map_err(bad)?;
        l.sector = s;
        return Ok(Some(l));
    }
    Ok(None)
}

/// Reads a zero-terminated list of (offset, size) pairs at `*at`.
fn areas(b: &[u8], at: &mut usize, what: &str) -> Result<Vec<Area>, String> {
    let mut out = Vec::new();
    loop {
        if *at + 16 > b.len() {
            return Err(format!("{what} list runs past the label sector"));
        }
        let (offset, size) = (le64(b, *at), le64(b, *at + 8));
        *at += 16;
        if offset == 0 {
            return Ok(out);
        }
        if out.len() == MAX_AREAS {
            return Err(format!("more than {MAX_AREAS} {what}s"));
        }
        out.push(Area { offset, size });
    }
}

fn parse_pv_header(b: &[u8]) -> Result<PvLabel, String> {
    let uuid = &b[..ID_LEN];
    if !uuid.iter().all(|c| c.is_ascii_alphanumeric()) {
        return Err("PV UUID is not text".into());
    }
    let mut at = ID_LEN + 8;
    let data_areas = areas(b, &mut at, "data area")?;
    let metadata_areas = areas(b, &mut at, "metadata area")?;
    // Extension (version >= 1): flags and bootloader areas.
    let mut bootloader_areas = Vec::new();
    if at + 8 <= b.len() && le32(b, at) >= 1 {
        at += 8;
        bootloader_areas = areas(b, &mut at, "bootloader area")?;
    }
    Ok(PvLabel {
        sector: 0,
        uuid: String::from_utf8_lossy(uuid).into_owned(),
        device_size: le64(b, ID_LEN),
        data_areas,
        metadata_areas,
        bootloader_areas,
    })
}

/// One `raw_locn` slot: where a copy of the text metadata lies inside its
/// metadata area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawLocn {
    /// From the start of the metadata area (the header included).
    pub offset: u64,
    pub size: u64,
    pub checksum: u32,
    pub ignored: bool,
}

/// A parsed, checksum-verified metadata area header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdaHeader {
    pub start: u64,
    pub size: u64,
    /// The committed metadata (slot 0); None when the area holds none.
    pub committed: Option<RawLocn>,
    /// A precommitted location (slot 1) left by an interrupted update.
    pub precommitted: Option<RawLocn>,
}

/// Parses the 512-byte header of the metadata area that the PV header
/// places at `expected_start` with `expected_size` bytes.
pub fn parse_mda_header(
    b: &[u8],
    expected_start: u64,
    expected_size: u64,
) -> Result<MdaHeader, LvmError> {
    let bad = |what: String| LvmError::Mda {
        offset: expected_start,
        what,
    };
    let Some(b) = b.get(..MDA_HEADER_SIZE as usize) else {
        return Err(bad("header is truncated".into()));
    };
    if crc(&b[4..]) != le32(b, 0) {
        return Err(bad("header checksum mismatch".into()));
    }
    if &b[4..20] != MDA_MAGIC {
        return Err(bad("bad magic".into()));
    }
    if le32(b, 20) != MDA_VERSION {
        return Err(bad(format!("unknown version {}", le32(b, 20))));
    }
    let (start, size) = (le64(b, 24), le64(b, 32));
    if start != expected_start || size != expected_size || size <= MDA_HEADER_SIZE {
        return Err(bad(format!(
            "header describes {size} bytes at {start}, the PV header {expected_size} at {expected_start}"
        )));
    }
    let slot = |i: usize| {
        let at = 40 + i * 24;
        let l = RawLocn {
            offset: le64(b, at),
            size: le64(b, at + 8),
            checksum: le32(b, at + 16),
            ignored: le32(b, at + 20) & RAW_LOCN_IGNORED != 0,
        };
        (l.offset != 0 || l.size != 0).then_some(l)
    };
    let committed = slot(0);
    if let Some(l) = committed {
        check_locn(&l, size).map_err(bad)?;
    }
    let precommitted = slot(1).filter(|p| committed.is_none_or(|c| c.offset != p.offset));
    Ok(MdaHeader {
        start,
        size,
        committed,
        precommitted,
    })
}

fn check_locn(l: &RawLocn, mda_size: u64) -> Result<(), String> {
    if l.offset < MDA_HEADER_SIZE || l.offset >= mda_size {
        return Err(format!("metadata at implausible offset {}", l.offset));
    }
    if l.size == 0 || l.size > mda_size - MDA_HEADER_SIZE {
        return Err(format!("metadata of implausible size {}", l.size));
    }
    Ok(())
}

/// The two pieces (offset within the area, length) the text occupies in
/// the circular buffer: from `offset` to the end, then after the header.
pub fn text_pieces(l: &RawLocn, mda_size: u64) -> [(u64, u64); 2] {
    let first = l.size.min(mda_size.saturating_sub(l.offset));
    [(l.offset, first), (MDA_HEADER_SIZE, l.size - first)]
}

/// Verifies a copy of the text (as read from `text_pieces`) against its
/// slot's checksum and returns it without its terminating NULs.
pub fn check_text<'a>(l: &RawLocn, text: &'a [u8], mda_offset: u64) -> Result<&'a [u8], LvmError> {
    if crc(text) != l.checksum {
        return Err(LvmError::Mda {
            offset: mda_offset,
            what: "metadata text checksum mismatch".into(),
        });
    }
    let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
    Ok(&text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label_sector(sector: u64, uuid: &[u8; 32]) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        s[0..8].copy_from_slice(LABEL_ID);
        s[8..16].copy_from_slice(&sector.to_le_bytes());
        s[20..24].copy_from_slice(&32u32.to_le_bytes());
        s[24..32].copy_from_slice(LABEL_TYPE);
        s[32..64].copy_from_slice(uuid);
        s[64..72].copy_from_slice(&(64u64 << 20).to_le_bytes());
        s[72..80].copy_from_slice(&(1u64 << 20).to_le_bytes()); // data area
        s[104..112].copy_from_slice(&4096u64.to_le_bytes()); // mda
        s[112..120].copy_from_slice(&0xff000u64.to_le_bytes());
        s[136..140].copy_from_slice(&2u32.to_le_bytes()); // extension v2
        let c = crc(&s[20..]);
        s[16..20].copy_from_slice(&c.to_le_bytes());
        s
    }

    #[test]
    fn crc_matches_lvm() {
        // calc_crc(INITIAL_CRC, "") is the seed itself.
        assert_eq!(crc(b""), INITIAL_CRC);
    }

    #[test]
    fn label_in_sector_one() {
        let mut head = vec![0u8; 2048];
        head[512..1024].copy_from_slice(&label_sector(1, b"7jsnC327OmQW3nfKhY72RYmpoiohrf2Q"));
        let l = parse_label(&head).unwrap().unwrap();
        assert_eq!(l.uuid, "7jsnC327OmQW3nfKhY72RYmpoiohrf2Q");
        assert_eq!(l.device_size, 64 << 20);
        assert_eq!(
            l.data_areas,
            vec![Area {
                offset: 1 << 20,
                size: 0
            }]
        );
        assert_eq!(
            l.metadata_areas,
            vec![Area {
                offset: 4096,
                size: 0xff000
            }]
        );
        assert!(l.bootloader_areas.is_empty());
    }

    #[test]
    fn damaged_labels() {
        assert_eq!(parse_label(&[0u8; 2048]).unwrap(), None);
        assert_eq!(parse_label(&[0u8; 10]).unwrap(), None);
        let good = label_sector(1, b"7jsnC327OmQW3nfKhY72RYmpoiohrf2Q");
        for (at, v) in [(100usize, 1u8), (8, 2), (20, 0xff), (24, b'X')] {
            let mut head = vec![0u8; 2048];
            head[512..1024].copy_from_slice(&good);
            head[512 + at] ^= v;
            assert!(parse_label(&head).is_err(), "byte {at}");
        }
    }

    #[test]
    fn mda_header_checks() {
        let mut h = vec![0u8; 512];
        h[4..20].copy_from_slice(MDA_MAGIC);
        h[20..24].copy_from_slice(&1u32.to_le_bytes());
        h[24..32].copy_from_slice(&4096u64.to_le_bytes());
        h[32..40].copy_from_slice(&0xff000u64.to_le_bytes());
        h[40..48].copy_from_slice(&0x1200u64.to_le_bytes());
        h[48..56].copy_from_slice(&0x577u64.to_le_bytes());
        let c = crc(&h[4..]);
        h[0..4].copy_from_slice(&c.to_le_bytes());
        let m = parse_mda_header(&h, 4096, 0xff000).unwrap();
        let l = m.committed.unwrap();
        assert_eq!((l.offset, l.size, l.ignored), (0x1200, 0x577, false));
        assert_eq!(m.precommitted, None);
        assert!(parse_mda_header(&h, 8192, 0xff000).is_err());
        let mut bad = h.clone();
        bad[50] ^= 1;
        assert!(parse_mda_header(&bad, 4096, 0xff000).is_err());
        // Wrapping: the text continues right after the header.
        let w = RawLocn {
            offset: 0xfe000,
            size: 0x2000,
            checksum: 0,
            ignored: false,
        };
        assert_eq!(text_pieces(&w, 0xff000), [(0xfe000, 0x1000), (512, 0x1000)]);
    }
}
