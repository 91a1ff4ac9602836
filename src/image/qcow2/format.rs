//! qcow2 on-disk layout: header fields, feature bits, header extensions,
//! snapshot and bitmap directories and QEMU's size limits. Small pure
//! functions over named constants; no I/O. The table entries (L1, L2,
//! compressed descriptors, refcounts) are `entry.rs`.

use crate::bytes::{be16, be32, be64};
use std::fmt;

/// "QFI\xfb", big-endian.
pub const QCOW2_MAGIC: u32 = 0x5146_49fb;
/// Header length of a version 2 image (v3 images state theirs).
pub const V2_HEADER_LENGTH: u32 = 72;
/// Bytes of the v3 header proper (the compression type byte follows).
pub const V3_MIN_HEADER_LENGTH: u32 = 104;
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's caps (block/qcow2.h): an L1 table of at most 32 MiB, a refcount
/// table of at most 8 MiB, 65536 snapshots, 65535 bitmaps.
pub const MAX_L1_BYTES: u64 = 32 << 20;
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
pub const MAX_SNAPSHOTS: u32 = 65536;
pub const MAX_BITMAPS: u32 = 65535;
pub const MAX_BITMAP_DIRECTORY_BYTES: u64 = 1024 * MAX_BITMAPS as u64;
/// Longest backing file name QEMU accepts.
pub const MAX_BACKING_NAME: u64 = 1023;
/// Host offsets are below 2^56.
pub const MAX_HOST_OFFSET: u64 = (1 << 56) - 1;

/// Header extension types.
pub const EXT_END: u32 = 0;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Autoclear bit 0: the bitmaps extension is valid.
pub const AUTOCLEAR_BITMAPS: u64 = 1;

/// Why a header cannot be parsed. `unsupported` variants name a version or
/// layout vmfinal does not read; the others are damage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("file is too short for a qcow2 header")]
    TooShort,
    #[error("not a qcow2 file (bad magic)")]
    BadMagic,
    #[error("qcow2 version {0} is not supported (only 2 and 3)")]
    Version(u32),
    #[error("invalid header length {0}")]
    HeaderLength(u32),
    #[error("cluster_bits {0} is outside 9..=21")]
    ClusterBits(u32),
    #[error("refcount_order {0} is above 6")]
    RefcountOrder(u32),
}

impl HeaderError {
    /// A valid image of a kind vmfinal does not read (rather than damage).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, HeaderError::Version(_) | HeaderError::ClusterBits(_))
    }
}

/// Incompatible feature bits, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncompatFeatures(pub u64);

impl IncompatFeatures {
    pub const DIRTY: u64 = 1 << 0;
    pub const CORRUPT: u64 = 1 << 1;
    pub const EXTERNAL_DATA_FILE: u64 = 1 << 2;
    pub const COMPRESSION_TYPE: u64 = 1 << 3;
    pub const EXTENDED_L2: u64 = 1 << 4;
    /// Bits the reader handles (dirty only means refcounts may be stale,
    /// which reading does not use).
    pub const SUPPORTED: u64 = Self::DIRTY | Self::COMPRESSION_TYPE | Self::EXTENDED_L2;

    pub fn has(&self, bit: u64) -> bool {
        self.0 & bit != 0
    }

    /// Names of the set bits the reader does not support.
    pub fn unsupported(&self) -> Vec<String> {
        (0..64)
            .filter(|b| self.0 & (1 << b) != 0 && Self::SUPPORTED & (1 << b) == 0)
            .map(|b| match 1u64 << b {
                Self::CORRUPT => {
                    "corrupt bit set (repair it with qemu-img check -r all)".to_string()
                }
                Self::EXTERNAL_DATA_FILE => "an external data file".to_string(),
                _ => format!("unknown incompatible feature bit {b}"),
            })
            .collect()
    }
}

impl fmt::Display for IncompatFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// The fields of the qcow2 header vmfinal uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: IncompatFeatures,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    /// 0 = deflate, 1 = zstd.
    pub compression_type: u8,
}

/// Reads the u64 at `i` of a big-endian table.
pub fn table_entry(b: &[u8], i: usize) -> u64 {
    be64(b, i * 8)
}

impl Header {
    /// Parses the header from the first bytes of the file (at least 104).
    /// Checks only the structure; policy (what is supported) is the reader's.
    pub fn parse(b: &[u8]) -> Result<Header, HeaderError> {
        if b.len() < 104 {
            return Err(HeaderError::TooShort);
        }
        if be32(b, 0) != QCOW2_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = be32(b, 4);
        if version != 2 && version != 3 {
            return Err(HeaderError::Version(version));
        }
        let mut h = Header {
            version,
            backing_file_offset: be64(b, 8),
            backing_file_size: be32(b, 16),
            cluster_bits: be32(b, 20),
            size: be64(b, 24),
            crypt_method: be32(b, 32),
            l1_size: be32(b, 36),
            l1_table_offset: be64(b, 40),
            refcount_table_offset: be64(b, 48),
            refcount_table_clusters: be32(b, 56),
            nb_snapshots: be32(b, 60),
            snapshots_offset: be64(b, 64),
            incompatible: IncompatFeatures(0),
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LENGTH,
            compression_type: 0,
        };
        if version == 3 {
            h.incompatible = IncompatFeatures(be64(b, 72));
            h.compatible = be64(b, 80);
            h.autoclear = be64(b, 88);
            h.refcount_order = be32(b, 96);
            h.header_length = be32(b, 100);
            if h.header_length < V3_MIN_HEADER_LENGTH || h.header_length % 8 != 0 {
                return Err(HeaderError::HeaderLength(h.header_length));
            }
            if h.header_length > V3_MIN_HEADER_LENGTH && b.len() > 104 {
                h.compression_type = b[104];
            }
        }
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits) {
            return Err(HeaderError::ClusterBits(h.cluster_bits));
        }
        if h.refcount_order > 6 {
            return Err(HeaderError::RefcountOrder(h.refcount_order));
        }
        Ok(h)
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn extended_l2(&self) -> bool {
        self.incompatible.has(IncompatFeatures::EXTENDED_L2)
    }

    /// Bytes per L2 entry.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() { 16 } else { 8 }
    }

    /// Guest clusters one L2 table maps.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }

    /// L1 entries the virtual size needs.
    pub fn l1_entries_needed(&self) -> u64 {
        self.size.div_ceil(self.cluster_size() * self.l2_entries())
    }

    /// Bits per refcount.
    pub fn refcount_bits(&self) -> u64 {
        1 << self.refcount_order
    }
}

/// Header extensions found in the header cluster (bounded by it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// The external data file's name, raw bytes.
    pub data_file: Option<Vec<u8>>,
    /// Bitmaps extension: (count, directory size, directory offset).
    pub bitmaps: Option<(u32, u64, u64)>,
}

/// Walks the header extensions starting at `start` inside `head` (the
/// header cluster). Stops at the end marker, or at the first extension that
/// would run past `head`.
pub fn parse_extensions(head: &[u8], start: usize) -> Extensions {
    let mut out = Extensions::default();
    let mut at = start;
    // Each extension takes at least 8 bytes: the walk is bounded by `head`.
    while at.checked_add(8).is_some_and(|e| e <= head.len()) {
        let t = be32(head, at);
        let l = be32(head, at + 4) as usize;
        let Some(data) = at
            .checked_add(8)
            .and_then(|s| Some(s..s.checked_add(l)?))
            .and_then(|r| head.get(r))
        else {
            break;
        };
        match t {
            EXT_END => break,
            EXT_DATA_FILE => out.data_file = Some(data.to_vec()),
            EXT_BITMAPS if data.len() >= 24 => {
                out.bitmaps = Some((be32(data, 0), be64(data, 8), be64(data, 16)))
            }
            _ => {}
        }
        match at.checked_add(8 + l.next_multiple_of(8)) {
            Some(n) => at = n,
            None => break,
        }
    }
    out
}

/// One internal snapshot's active tables, from the snapshot table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotL1 {
    pub l1_table_offset: u64,
    pub l1_size: u32,
}

/// Bytes of a snapshot table entry starting at `b[0]`, and its L1, or
/// `None` when the entry runs past `b`.
pub fn parse_snapshot_entry(b: &[u8]) -> Option<(usize, SnapshotL1)> {
    if b.len() < 40 {
        return None;
    }
    let l1 = SnapshotL1 {
        l1_table_offset: be64(b, 0),
        l1_size: be32(b, 8),
    };
    let id_len = be16(b, 12) as usize;
    let name_len = be16(b, 14) as usize;
    let extra = be32(b, 36) as usize;
    let len = 40usize
        .checked_add(extra)?
        .checked_add(id_len)?
        .checked_add(name_len)?
        .next_multiple_of(8);
    (len <= b.len()).then_some((len, l1))
}

/// A persistent dirty bitmap's table, from the bitmap directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapTable {
    pub offset: u64,
    pub entries: u32,
}

/// Bytes of a bitmap directory entry starting at `b[0]`, and its table.
pub fn parse_bitmap_entry(b: &[u8]) -> Option<(usize, BitmapTable)> {
    if b.len() < 24 {
        return None;
    }
    let t = BitmapTable {
        offset: be64(b, 0),
        entries: be32(b, 8),
    };
    let name_len = be16(b, 18) as usize;
    let extra = be32(b, 20) as usize;
    let len = 24usize
        .checked_add(extra)?
        .checked_add(name_len)?
        .next_multiple_of(8);
    (len <= b.len()).then_some((len, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_features_are_named() {
        let f = IncompatFeatures(
            IncompatFeatures::EXTERNAL_DATA_FILE | 1 << 9 | IncompatFeatures::DIRTY,
        );
        let u = f.unsupported();
        assert_eq!(u.len(), 2);
        assert!(u[0].contains("external data file"));
        assert!(u[1].contains("bit 9"));
    }

    #[test]
    fn short_or_bad_headers_are_errors() {
        assert_eq!(Header::parse(&[0u8; 50]), Err(HeaderError::TooShort));
        let mut b = vec![0u8; 112];
        b[..4].copy_from_slice(&QCOW2_MAGIC.to_be_bytes());
        b[7] = 3;
        b[23] = 16;
        b[103] = 112;
        assert!(Header::parse(&b).is_ok());
        b[23] = 30;
        assert_eq!(Header::parse(&b), Err(HeaderError::ClusterBits(30)));
    }

    #[test]
    fn extensions_are_bounded() {
        let mut h = vec![0u8; 64];
        h[0..4].copy_from_slice(&EXT_DATA_FILE.to_be_bytes());
        h[4..8].copy_from_slice(&4u32.to_be_bytes());
        h[8..12].copy_from_slice(b"d.rw");
        assert_eq!(parse_extensions(&h, 0).data_file, Some(b"d.rw".to_vec()));
        h[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_extensions(&h, 0), Extensions::default());
        assert_eq!(parse_extensions(&h, 1000), Extensions::default());
    }
}
