//! qcow2 on-disk layout: header fields, feature bits, L1/L2/refcount entry
//! encoding. Small pure functions over named constants.

/// "QFI\xfb", big-endian.
pub const QCOW2_MAGIC: u32 = 0x5146_49fb;
