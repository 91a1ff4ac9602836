//! qcow2 on-disk layout: header fields, feature bits, L1/L2/refcount entry
//! encoding. Small pure functions over named constants; no I/O.

use crate::bytes::{be32, be64};
use std::fmt;

/// "QFI\xfb", big-endian.
pub const QCOW2_MAGIC: u32 = 0x5146_49fb;
/// Header length of a version 2 image (v3 images state theirs).
pub const V2_HEADER_LENGTH: u32 = 72;
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;

/// L1 and standard L2 entries: host offset bits 9..=55.
pub const ENTRY_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1/L2 bit 63: refcount is exactly one.
pub const ENTRY_COPIED: u64 = 1 << 63;
/// L2 bit 62: compressed cluster.
pub const L2_COMPRESSED: u64 = 1 << 62;
/// Standard L2 bit 0: the cluster reads as zeros (v3).
pub const L2_ZERO: u64 = 1;
/// Extended L2: subclusters per cluster.
pub const SUBCLUSTERS: u64 = 32;
/// Reftable entries: refcount block offset bits 9..=63.
pub const REFTABLE_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;

/// Header extension types.
pub const EXT_END: u32 = 0;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

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
    pub fn parse(b: &[u8]) -> Result<Header, String> {
        if b.len() < 104 {
            return Err("file is too short for a qcow2 header".into());
        }
        if be32(b, 0) != QCOW2_MAGIC {
            return Err("not a qcow2 file (bad magic)".into());
        }
        let version = be32(b, 4);
        if version != 2 && version != 3 {
            return Err(format!(
                "qcow2 version {version} is not supported (only 2 and 3)"
            ));
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
            if h.header_length < 104 || h.header_length % 8 != 0 {
                return Err(format!("invalid header length {}", h.header_length));
            }
            if h.header_length > 104 && b.len() > 104 {
                h.compression_type = b[104];
            }
        }
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits) {
            return Err(format!("cluster_bits {} is outside 9..=21", h.cluster_bits));
        }
        if h.refcount_order > 6 {
            return Err(format!("refcount_order {} is above 6", h.refcount_order));
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
}

/// Where a guest cluster's data lives: lookup, apart from I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMapping {
    /// Never written: reads as zeros (no backing file).
    Unallocated,
    /// Marked as reading zeros.
    Zero,
    /// Plain data at this host offset.
    Standard(u64),
    /// Compressed: `len` bytes at host byte `offset` hold the stream.
    Compressed { offset: u64, len: u64 },
}

/// Host byte offset and byte count of a compressed L2 entry:
/// `x = 62 - (cluster_bits - 8)`, offset in bits `0..x`, additional sectors in
/// bits `x..62`; the data runs `(sectors + 1) * 512 - (offset % 512)` bytes.
pub fn compressed_layout(entry: u64, cluster_bits: u32) -> (u64, u64) {
    let x = 62 - (cluster_bits - 8);
    let offset = entry & ((1u64 << x) - 1);
    let sectors = (entry >> x) & ((1u64 << (cluster_bits - 8)) - 1);
    (offset, (sectors + 1) * 512 - (offset & 511))
}

/// Decodes a (non-extended) L2 entry.
pub fn decode_l2(entry: u64, cluster_bits: u32, version: u32) -> ClusterMapping {
    if entry & L2_COMPRESSED != 0 {
        let (offset, len) = compressed_layout(entry, cluster_bits);
        return ClusterMapping::Compressed { offset, len };
    }
    if version >= 3 && entry & L2_ZERO != 0 {
        return ClusterMapping::Zero;
    }
    match entry & ENTRY_OFFSET_MASK {
        0 => ClusterMapping::Unallocated,
        off => ClusterMapping::Standard(off),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_layout_matches_qemu_example() {
        assert_eq!(
            compressed_layout(0x4400_0000_0105_0000 & !L2_COMPRESSED, 16),
            (0x105_0000, 8704)
        );
        assert!(matches!(
            decode_l2(0x4400_0000_0105_0000, 16, 3),
            ClusterMapping::Compressed {
                offset: 0x105_0000,
                len: 8704
            }
        ));
    }

    #[test]
    fn l2_decoding() {
        assert_eq!(decode_l2(0, 16, 3), ClusterMapping::Unallocated);
        assert_eq!(decode_l2(1, 16, 3), ClusterMapping::Zero);
        assert_eq!(
            decode_l2(ENTRY_COPIED | 0x5_0000, 16, 3),
            ClusterMapping::Standard(0x5_0000)
        );
        assert_eq!(
            decode_l2(ENTRY_COPIED | 0x5_0001, 16, 3),
            ClusterMapping::Zero
        );
    }

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
        assert!(Header::parse(&[0u8; 50]).is_err());
        let mut b = vec![0u8; 112];
        b[..4].copy_from_slice(&QCOW2_MAGIC.to_be_bytes());
        b[7] = 3;
        b[23] = 16;
        b[103] = 112;
        assert!(Header::parse(&b).is_ok());
        b[23] = 30;
        assert!(Header::parse(&b).is_err());
    }
}
