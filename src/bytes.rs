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

/// Bitwise reflected CRC-32 with polynomial `poly` (init and final xor !0):
/// `0xEDB8_8320` is IEEE (GPT), `0x82F6_3B78` is Castagnoli (xfs).
pub fn crc32_reflected(poly: u32, data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ poly
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Bitwise reflected CRC-32 with polynomial `poly`, starting from `init`
/// and without final inversion (LVM2's `calc_crc` with its own seed).
pub fn crc32_reflected_raw(poly: u32, init: u32, data: &[u8]) -> u32 {
    let mut crc = init;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ poly
            } else {
                crc >> 1
            };
        }
    }
    crc
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
