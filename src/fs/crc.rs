//! Table-driven checksums the filesystem probes verify: CRC-32C
//! (Castagnoli; ext4 metadata_csum and xfs v5) and the CRC-16 that ext4's
//! gdt_csum uses. Pure functions over byte slices.
//!
//! Not here: GPT's CRC-32 (IEEE), which `disk::partition` computes with the
//! bitwise `bytes::crc32_reflected`.

/// Reflected CRC-32C polynomial.
const CRC32C_POLY: u32 = 0x82F6_3B78;
/// Reflected CRC-16 (ANSI, 0x8005) polynomial.
const CRC16_POLY: u16 = 0xA001;

const fn crc32c_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CRC32C_POLY
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

const fn crc16_table() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u16;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CRC16_POLY
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC32C: [[u32; 256]; 8] = crc32c_tables();
static CRC16: [u16; 256] = crc16_table();

/// Continues a raw CRC-32C over `data`: no inversion on entry or exit, as
/// the kernel's `crc32c()` and e2fsprogs' `ext2fs_crc32c_le()` do.
pub fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = CRC32C[7][(lo & 0xFF) as usize]
            ^ CRC32C[6][((lo >> 8) & 0xFF) as usize]
            ^ CRC32C[5][((lo >> 16) & 0xFF) as usize]
            ^ CRC32C[4][(lo >> 24) as usize]
            ^ CRC32C[3][(hi & 0xFF) as usize]
            ^ CRC32C[2][((hi >> 8) & 0xFF) as usize]
            ^ CRC32C[1][((hi >> 16) & 0xFF) as usize]
            ^ CRC32C[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ CRC32C[0][((crc ^ b as u32) & 0xFF) as usize];
    }
    crc
}

/// The standard CRC-32C of `data` (initial and final inversion), as xfs
/// stores it.
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

/// Continues ext4's CRC-16 over `data` (no inversions; callers start at !0).
pub fn crc16_update(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc = (crc >> 8) ^ CRC16[((crc ^ b as u16) & 0xFF) as usize];
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(
            crc32c(b"123456789"),
            crate::bytes::crc32_reflected(CRC32C_POLY, b"123456789")
        );
        // CRC-16/ARC check value (init 0): 0xBB3D.
        assert_eq!(crc16_update(0, b"123456789"), 0xBB3D);
    }

    #[test]
    fn table_matches_bitwise_on_every_length() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in 0..data.len() {
            assert_eq!(
                crc32c(&data[..n]),
                crate::bytes::crc32_reflected(CRC32C_POLY, &data[..n]),
                "length {n}"
            );
        }
    }
}
