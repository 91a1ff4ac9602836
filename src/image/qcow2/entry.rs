//! qcow2 table entries, decoded and encoded side by side: L1 entries,
//! standard and extended L2 entries, compressed-cluster descriptors,
//! refcount-table entries, refcounts of any `refcount_bits` (1 to 64) and
//! bitmap-table entries. Pure functions over the named masks below; no I/O.
//! The reader, the checker (`image::qcow2`) and the writer (`output::qcow2`)
//! spell no bit of an entry themselves: they call these.
//!
//! The layout is QEMU's `docs/interop/qcow2.txt`; `tests/qemu_agree.rs`
//! decodes and re-encodes entries and refcounts of images `qemu-img` wrote.

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
/// Extended L2 bitmap: allocation bits 0..32 ...
pub const SUBCLUSTER_ALLOC_MASK: u64 = 0xffff_ffff;
/// ... and zero bits 32..64.
pub const SUBCLUSTER_ZERO_SHIFT: u32 = 32;
/// Reftable entries: refcount block offset bits 9..=63.
pub const REFTABLE_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Bitmap table entries: data cluster offset bits 9..=55.
pub const BITMAP_TABLE_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Compressed descriptors count 512-byte sectors.
const SECTOR: u64 = 512;

/// The L2 table offset an L1 entry names (0: no table).
pub fn l1_offset(entry: u64) -> u64 {
    entry & ENTRY_OFFSET_MASK
}

/// The L1 entry for an L2 table at `l2_offset` referenced once.
pub fn encode_l1(l2_offset: u64) -> u64 {
    l2_offset | ENTRY_COPIED
}

/// The copied flag (refcount exactly one) of an L1 or L2 entry.
pub fn is_copied(entry: u64) -> bool {
    entry & ENTRY_COPIED != 0
}

/// The host offset bits of a standard L2 entry (also set on a zero cluster
/// that keeps its allocation).
pub fn standard_offset(entry: u64) -> u64 {
    entry & ENTRY_OFFSET_MASK
}

/// The standard L2 entry for a plain cluster at `host` referenced once.
pub fn encode_standard(host: u64) -> u64 {
    host | ENTRY_COPIED
}

/// Entry `i` of an L2 table read as big-endian words: the entry, and for
/// extended L2 the subcluster bitmap that follows it.
pub fn l2_entry(table: &[u64], i: usize, extended: bool) -> (u64, Option<u64>) {
    if extended {
        (table[i * 2], Some(table[i * 2 + 1]))
    } else {
        (table[i], None)
    }
}

/// Subcluster `i` of an extended L2 bitmap is allocated.
pub fn subcluster_allocated(bitmap: u64, i: u64) -> bool {
    bitmap & (1 << i) != 0
}

/// An L2 entry that is a compressed-cluster descriptor.
pub fn is_compressed(entry: u64) -> bool {
    entry & L2_COMPRESSED != 0
}

/// First bit of the additional-sectors field of a compressed descriptor:
/// `x = 62 - (cluster_bits - 8)`; the host offset is bits `0..x`.
fn compressed_offset_bits(cluster_bits: u32) -> u32 {
    62 - (cluster_bits - 8)
}

/// Compressed-cluster descriptor for `len` bytes at host byte `off`
/// (`len` at least 1): the compressed flag, the additional 512-byte sectors
/// the data touches in bits `x..62`, the offset in bits `0..x`.
pub fn encode_compressed(off: u64, len: u64, cluster_bits: u32) -> u64 {
    let x = compressed_offset_bits(cluster_bits);
    let extra_sectors = ((off + len - 1) / SECTOR) - (off / SECTOR);
    L2_COMPRESSED | (extra_sectors << x) | off
}

/// Host byte offset and byte count of a compressed descriptor (with or
/// without its compressed flag): the data runs
/// `(sectors + 1) * 512 - (offset % 512)` bytes, which covers what
/// `encode_compressed` was given and at most 511 bytes more.
pub fn compressed_layout(entry: u64, cluster_bits: u32) -> (u64, u64) {
    let x = compressed_offset_bits(cluster_bits);
    let entry = entry & !L2_COMPRESSED;
    let offset = entry & ((1u64 << x) - 1);
    let sectors = (entry >> x) & ((1u64 << (cluster_bits - 8)) - 1);
    (offset, (sectors + 1) * SECTOR - (offset % SECTOR))
}

/// The refcount block offset a refcount-table entry names (0: none).
pub fn reftable_offset(entry: u64) -> u64 {
    entry & REFTABLE_OFFSET_MASK
}

/// The refcount-table entry for a refcount block at `block_offset`.
pub fn encode_reftable(block_offset: u64) -> u64 {
    block_offset & REFTABLE_OFFSET_MASK
}

/// The data cluster offset a bitmap-table entry names (0: all zeros or all
/// ones, by bit 0; vmfinal only counts the references).
pub fn bitmap_table_offset(entry: u64) -> u64 {
    entry & BITMAP_TABLE_OFFSET_MASK
}

/// Refcounts of `bits` width one refcount block of `cluster_size` holds.
pub fn refcounts_per_block(cluster_size: u64, bits: u64) -> u64 {
    cluster_size * 8 / bits
}

/// The `i`th refcount of `bits` width (a power of two, 1 to 64) in a
/// refcount block: big-endian for 8 bits and more; narrower ones packed
/// from the least significant bit of each byte, as QEMU stores them.
pub fn refcount_get(block: &[u8], i: u64, bits: u64) -> u64 {
    if bits >= 8 {
        let w = (bits / 8) as usize;
        let at = i as usize * w;
        block[at..at + w]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64)
    } else {
        let bit = i * bits;
        let byte = block[(bit / 8) as usize];
        ((byte >> (bit % 8)) as u64) & ((1 << bits) - 1)
    }
}

/// Stores `value` (which must fit in `bits`) as the `i`th refcount of `bits`
/// width in a refcount block; the inverse of `refcount_get`.
pub fn refcount_set(block: &mut [u8], i: u64, bits: u64, value: u64) {
    if bits >= 8 {
        let w = (bits / 8) as usize;
        let at = i as usize * w;
        block[at..at + w].copy_from_slice(&value.to_be_bytes()[8 - w..]);
    } else {
        let bit = i * bits;
        let mask = ((1u64 << bits) - 1) as u8;
        let shift = (bit % 8) as u32;
        let byte = &mut block[(bit / 8) as usize];
        *byte = (*byte & !(mask << shift)) | ((value as u8 & mask) << shift);
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
    /// Extended L2: data at this host offset, per subcluster as the bitmap says.
    Subclusters { host: u64, bitmap: u64 },
}

/// Why QEMU refuses to read an L2 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("zero flag in a version 2 image")]
    ZeroInV2,
    #[error("host offset {0:#x} is not cluster aligned")]
    Unaligned(u64),
    #[error("a subcluster is marked both allocated and zero (bitmap {0:#018x})")]
    AllocatedAndZero(u64),
    #[error("allocated subclusters without a host cluster (bitmap {0:#018x})")]
    AllocatedWithoutHost(u64),
}

/// Decodes an L2 entry (and for extended L2 its bitmap) as QEMU does
/// (`qcow2_get_subcluster_type`), refusing what QEMU refuses to read.
pub fn decode_entry(
    entry: u64,
    bitmap: Option<u64>,
    cluster_bits: u32,
    version: u32,
) -> Result<ClusterMapping, EntryError> {
    if is_compressed(entry) {
        let (offset, len) = compressed_layout(entry, cluster_bits);
        return Ok(ClusterMapping::Compressed { offset, len });
    }
    let host = standard_offset(entry);
    if host & ((1u64 << cluster_bits) - 1) != 0 {
        return Err(EntryError::Unaligned(host));
    }
    if let Some(bitmap) = bitmap {
        let alloc = bitmap & SUBCLUSTER_ALLOC_MASK;
        if host == 0 {
            if alloc != 0 {
                return Err(EntryError::AllocatedWithoutHost(bitmap));
            }
            return Ok(if bitmap == 0 {
                ClusterMapping::Unallocated
            } else {
                ClusterMapping::Subclusters { host: 0, bitmap }
            });
        }
        if (bitmap >> SUBCLUSTER_ZERO_SHIFT) & alloc != 0 {
            return Err(EntryError::AllocatedAndZero(bitmap));
        }
        return Ok(ClusterMapping::Subclusters { host, bitmap });
    }
    if entry & L2_ZERO != 0 {
        if version < 3 {
            return Err(EntryError::ZeroInV2);
        }
        return Ok(ClusterMapping::Zero);
    }
    Ok(match host {
        0 => ClusterMapping::Unallocated,
        off => ClusterMapping::Standard(off),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_l2(e: u64, bits: u32, v: u32) -> ClusterMapping {
        decode_entry(e, None, bits, v).unwrap()
    }

    #[test]
    fn compressed_descriptor_matches_qemu_example() {
        // 0x4400000001050000 = offset 0x1050000, 16 additional sectors.
        assert_eq!(
            encode_compressed(0x105_0000, 16 * 512 + 512, 16),
            0x4400_0000_0105_0000
        );
        assert_eq!(
            compressed_layout(0x4400_0000_0105_0000, 16),
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
    fn compressed_descriptors_round_trip() {
        for bits in 9..=21u32 {
            let cs = 1u64 << bits;
            for off in [0u64, 1, 511, 512, 4097, 0x105_0000, (1 << 40) + 77] {
                for len in [1u64, 2, 511, 512, 513, cs - 1] {
                    let e = encode_compressed(off, len, bits);
                    let (o, l) = compressed_layout(e, bits);
                    assert_eq!(o, off, "bits {bits} off {off} len {len}");
                    assert!(l >= len && l < len + 512, "bits {bits} off {off} len {len}");
                    // Decoding then encoding gives the entry back.
                    assert_eq!(encode_compressed(o, l, bits), e);
                    assert!(is_compressed(e));
                    assert_eq!(
                        decode_entry(e, None, bits, 3),
                        Ok(ClusterMapping::Compressed { offset: o, len: l })
                    );
                }
            }
        }
    }

    #[test]
    fn l1_l2_and_reftable_entries_round_trip() {
        for off in [0x1_0000u64, 0x5_0000, MAX_OFFSET & !0xffff] {
            assert_eq!(l1_offset(encode_l1(off)), off);
            assert!(is_copied(encode_l1(off)));
            assert_eq!(standard_offset(encode_standard(off)), off);
            assert_eq!(
                decode_l2(encode_standard(off), 16, 3),
                ClusterMapping::Standard(off)
            );
            assert_eq!(reftable_offset(encode_reftable(off)), off);
        }
        // Reserved bits are not part of an offset.
        assert_eq!(l1_offset(ENTRY_COPIED | 0x1_0000 | 0x1ff), 0x1_0000);
        assert_eq!(reftable_offset(0x1_0000 | 0x1ff), 0x1_0000);
        assert_eq!(bitmap_table_offset(0x1_0000 | 1), 0x1_0000);
        let t = [1u64, 2, 3, 4];
        assert_eq!(l2_entry(&t, 1, false), (2, None));
        assert_eq!(l2_entry(&t, 1, true), (3, Some(4)));
    }
    const MAX_OFFSET: u64 = (1 << 56) - 1;

    #[test]
    fn refcounts_of_every_width_round_trip() {
        for order in 0..=6u32 {
            let bits = 1u64 << order;
            let n = refcounts_per_block(512, bits);
            assert_eq!(n * bits, 4096);
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1 << bits) - 1
            };
            let value = |i: u64| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7) & max;
            let mut block = vec![0u8; 512];
            for i in 0..n {
                refcount_set(&mut block, i, bits, value(i));
            }
            for i in 0..n {
                assert_eq!(refcount_get(&block, i, bits), value(i), "bits {bits} i {i}");
            }
            // Overwriting one leaves its neighbours.
            refcount_set(&mut block, 3, bits, max);
            assert_eq!(refcount_get(&block, 3, bits), max);
            assert_eq!(refcount_get(&block, 2, bits), value(2));
            assert_eq!(refcount_get(&block, 4, bits), value(4));
        }
    }

    #[test]
    fn refcount_widths() {
        let b = [0x12u8, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0];
        assert_eq!(refcount_get(&b, 0, 16), 0x1234);
        assert_eq!(refcount_get(&b, 1, 32), 0x9abc_def0);
        assert_eq!(refcount_get(&b, 0, 64), 0x1234_5678_9abc_def0);
        assert_eq!(refcount_get(&b, 1, 8), 0x34);
        assert_eq!(refcount_get(&b, 1, 4), 0x1);
        assert_eq!(refcount_get(&b, 0, 4), 0x2);
        let mut w = [0u8; 2];
        refcount_set(&mut w, 0, 16, 0x1234);
        assert_eq!(w, [0x12, 0x34]);
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
        assert_eq!(
            decode_entry(0x5_0001, None, 16, 2),
            Err(EntryError::ZeroInV2)
        );
        assert_eq!(
            decode_entry(0x5_0200, None, 16, 3),
            Err(EntryError::Unaligned(0x5_0200))
        );
    }

    #[test]
    fn extended_l2_decoding_follows_qemu() {
        let both = 1u64 | 1 << 32;
        assert_eq!(
            decode_entry(0x5_0000, Some(both), 16, 3),
            Err(EntryError::AllocatedAndZero(both))
        );
        assert_eq!(
            decode_entry(0, Some(1), 16, 3),
            Err(EntryError::AllocatedWithoutHost(1))
        );
        assert_eq!(
            decode_entry(0, Some(1 << 40), 16, 3),
            Ok(ClusterMapping::Subclusters {
                host: 0,
                bitmap: 1 << 40
            })
        );
        assert_eq!(
            decode_entry(0, Some(0), 16, 3),
            Ok(ClusterMapping::Unallocated)
        );
        assert!(subcluster_allocated(1 << 5, 5));
        assert!(!subcluster_allocated(1 << 5, 4));
    }
}
