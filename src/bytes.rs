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
