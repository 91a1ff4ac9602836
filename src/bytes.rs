//! Fixed-width integers read from on-disk structures. Callers have already
//! checked that `at + width` lies inside the buffer.

pub fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn le64(b: &[u8], at: usize) -> u64 {
    le32(b, at) as u64 | (le32(b, at + 4) as u64) << 32
}

pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn be64(b: &[u8], at: usize) -> u64 {
    (be32(b, at) as u64) << 32 | be32(b, at + 4) as u64
}

/// True if every byte is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    // SAFETY: any bit pattern is a valid u64; align_to only reinterprets.
    let (pre, mid, post) = unsafe { buf.align_to::<u64>() };
    if !pre.iter().all(|&b| b == 0) || !post.iter().all(|&b| b == 0) {
        return false;
    }
    // OR 32 words at a time: vectorizes, and exits early on data.
    mid.chunks(32)
        .all(|c| c.iter().fold(0u64, |acc, &w| acc | w) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn widths_and_orders() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(le16(&b, 0), 0x0201);
        assert_eq!(be16(&b, 0), 0x0102);
        assert_eq!(le32(&b, 4), 0x0807_0605);
        assert_eq!(be32(&b, 4), 0x0506_0708);
        assert_eq!(le64(&b, 0), 0x0807_0605_0403_0201);
        assert_eq!(be64(&b, 0), 0x0102_0304_0506_0708);
    }
}
