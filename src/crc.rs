//! The checksums the on-disk probes verify, behind one small API:
//! CRC-32C (Castagnoli; ext4 metadata_csum, xfs v5, btrfs, jbd2) via the
//! `crc32c` crate (SSE4.2 / ARMv8 CRC instructions where the CPU has them),
//! CRC-32 (IEEE; GPT, LVM2) via `crc32fast`, and the CRC-16 that ext4's
//! gdt_csum uses.
//!
//! The CRC-16 stays hand-written (one 256-entry table): it checks one
//! 64-byte group descriptor at a time on old ext4 filesystems only, and no
//! crate the project already depends on provides it.

/// Reflected CRC-16 (ANSI, 0x8005) polynomial.
const CRC16_POLY: u16 = 0xA001;

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

static CRC16: [u16; 256] = crc16_table();

/// Continues a raw CRC-32C over `data`: no inversion on entry or exit, as
/// the kernel's `crc32c()` and e2fsprogs' `ext2fs_crc32c_le()` do.
pub fn crc32c_update(crc: u32, data: &[u8]) -> u32 {
    // The crate inverts on entry and exit; undo both.
    !crc32c::crc32c_append(!crc, data)
}

/// The standard CRC-32C of `data` (initial and final inversion), as xfs
/// and btrfs store it.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// The standard CRC-32 (IEEE, reflected; initial and final inversion), as
/// GPT stores it.
pub fn crc32_ieee(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Raw CRC-32 (IEEE, reflected) from `init`, without inversions (LVM2's
/// `calc_crc` with its own seed).
pub fn crc32_ieee_raw(init: u32, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(!init);
    h.update(data);
    !h.finalize()
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

    /// Bitwise reflected CRC-32 with polynomial `poly` from `init`, no
    /// final inversion: the definition the crates are checked against.
    fn bitwise(poly: u32, init: u32, data: &[u8]) -> u32 {
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

    #[test]
    fn known_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32_ieee(b"123456789"), 0xCBF4_3926);
        // CRC-16/ARC check value (init 0): 0xBB3D.
        assert_eq!(crc16_update(0, b"123456789"), 0xBB3D);
    }

    #[test]
    fn crates_match_bitwise_on_every_length() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in 0..data.len() {
            let d = &data[..n];
            assert_eq!(crc32c(d), !bitwise(0x82F6_3B78, !0, d), "length {n}");
            assert_eq!(
                crc32c_update(0x1234_5678, d),
                bitwise(0x82F6_3B78, 0x1234_5678, d),
                "length {n}"
            );
            assert_eq!(crc32_ieee(d), !bitwise(0xEDB8_8320, !0, d), "length {n}");
            assert_eq!(
                crc32_ieee_raw(0xf597_a6cf, d),
                bitwise(0xEDB8_8320, 0xf597_a6cf, d),
                "length {n}"
            );
        }
    }
}
