//! Linux swap: pages 1..=last_page of a version-1 swap area with 4 KiB
//! pages are free; the header page (signature, UUID, label) and anything
//! past `last_page` are kept. A swap signature proves little (mkswap leaves
//! most of a device alone, and other tools leave swap signatures behind),
//! so a region is swap only when no other signature is there: another
//! filesystem, a volume manager or RAID member, an encrypted volume, a boot
//! sector, or a hibernation image (swsusp, uswsusp, TuxOnIce). A
//! hibernation image, a swap area for another page size, another header
//! version or byte order is never free.
//!
//! Not here: clearing swap (reclaim), which uses `detect`.

use super::{FsError, FsFree, Region};
use crate::bytes::le32;
use crate::extent::Extent;

const PAGE: u64 = 4096;
/// Page sizes whose swap signatures exist (4 KiB to 64 KiB).
const PAGE_SIZES: [u64; 5] = [4096, 8192, 16384, 32768, 65536];
const SIG_LEN: u64 = 10;
const SWAP_V1: &[u8] = b"SWAPSPACE2";
const SWAP_V0: &[u8] = b"SWAP-SPACE";
/// Hibernation signatures at the end of the header page (libblkid swsuspend).
const HIBERNATION: [&[u8]; 4] = [b"S1SUSPEND", b"S2SUSPEND", b"ULSUSPEND", b"LINHIB0001"];
/// TuxOnIce writes this at offset 0 and keeps a valid swap signature.
const TUXONICE: &[u8] = b"\xed\xc3\x02\xe9\x98\x56\xe5\x0c";
const HDR_VERSION: u64 = 1024;
const HDR_LAST_PAGE: u64 = 1028;
const HDR_NR_BADPAGES: u64 = 1032;
const HDR_LABEL: u64 = 1052;
/// (PAGE - 1024 - 512 - 10) / 4: what fits in the header page.
const MAX_BADPAGES: u32 = 637;

/// What a region's swap-family signatures say.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A version-1, 4 KiB-page, little-endian swap area and nothing else,
    /// ending at byte `end` (after `last_page`).
    Swap { end: u64 },
    /// A swap-family signature that must not be treated as free: why.
    Keep(String),
}

fn at(r: &Region, off: u64, magic: &[u8]) -> bool {
    r.read(off, magic.len()).is_ok_and(|b| b == magic)
}

/// Names another filesystem's or container's signature in `r`, if any.
/// Probed before a swap signature is believed.
fn foreign(r: &Region) -> Option<&'static str> {
    let le32_at = |off: u64| r.read(off, 4).ok().map(|b| le32(&b, 0));
    let md_magic = 0xA92B_4EFC;
    let md_end = |back: u64, align: u64| {
        r.len
            .checked_sub(back)
            .map(|o| o & !(align - 1))
            .and_then(le32_at)
            == Some(md_magic)
    };
    let checks: [(bool, &'static str); 18] = [
        (at(r, 1080, &[0x53, 0xEF]), "ext2/3/4"),
        (at(r, 0, b"XFSB"), "xfs"),
        (at(r, 0x10040, b"_BHRfS_M"), "btrfs"),
        ((0..4).any(|s| at(r, s * 512, b"LABELONE")), "LVM2 PV"),
        (at(r, 0, b"LUKS\xba\xbe"), "LUKS"),
        (
            [
                0x4000u64, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
            ]
            .iter()
            .any(|&o| at(r, o, b"SKUL\xba\xbe")),
            "LUKS2",
        ),
        (
            le32_at(0) == Some(md_magic) || le32_at(4096) == Some(md_magic),
            "Linux RAID member",
        ),
        (
            md_end(8192, 4096) || md_end(65536, 65536),
            "Linux RAID member",
        ),
        (
            at(
                r,
                4096 + 24,
                b"\xc6\x85\x73\xf6\x4e\x1a\x45\xca\x82\x65\xf5\x7f\x48\xba\x6d\x81",
            ),
            "bcache",
        ),
        (le32_at(1024) == Some(0xF2F5_2010), "f2fs"),
        (
            at(r, 0x10034, b"ReIsErFs")
                || at(r, 0x10034, b"ReIsEr2Fs")
                || at(r, 0x10034, b"ReIsEr3Fs"),
            "reiserfs",
        ),
        (at(r, 32768, b"JFS1"), "jfs"),
        (at(r, 32769, b"CD001"), "iso9660"),
        (at(r, 0, b"hsqs"), "squashfs"),
        (at(r, 3, b"NTFS    "), "NTFS"),
        (at(r, 3, b"EXFAT   "), "exFAT"),
        (at(r, 54, b"FAT1") || at(r, 82, b"FAT32   "), "FAT"),
        (
            at(r, 510, &[0x55, 0xAA]),
            "a boot sector or partition table",
        ),
    ];
    checks.iter().find(|c| c.0).map(|c| c.1)
}

/// A swap-family signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sig {
    SwapV1,
    SwapV0,
    Hibernation,
    TuxOnIce,
}

impl std::fmt::Display for Sig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sig::SwapV1 => "swap v1",
            Sig::SwapV0 => "swap v0",
            Sig::Hibernation => "hibernation image",
            Sig::TuxOnIce => "TuxOnIce hibernation image",
        })
    }
}

/// Any swap-family signature: (offset of the signature's page size, which).
fn swap_family(r: &Region) -> Vec<(u64, Sig)> {
    let mut out = Vec::new();
    for &p in &PAGE_SIZES {
        let off = p - SIG_LEN;
        if at(r, off, SWAP_V1) {
            out.push((p, Sig::SwapV1));
        } else if at(r, off, SWAP_V0) {
            out.push((p, Sig::SwapV0));
        } else if HIBERNATION.iter().any(|h| at(r, off, h)) {
            out.push((p, Sig::Hibernation));
        }
    }
    if at(r, 0, TUXONICE) {
        out.push((0, Sig::TuxOnIce));
    }
    out
}

/// Classifies `r`; None when it carries no swap-family signature or
/// another filesystem's signature (then it is not swap at all).
fn classify(r: &Region) -> Option<Kind> {
    let sigs = swap_family(r);
    if sigs.is_empty() || foreign(r).is_some() {
        // Nothing, or a stale swap signature over something else.
        return None;
    }
    if let Some((_, what)) = sigs
        .iter()
        .find(|s| matches!(s.1, Sig::Hibernation | Sig::TuxOnIce))
    {
        return Some(Kind::Keep(format!(
            "holds a {what} (resume would read it): copied whole"
        )));
    }
    if sigs.len() > 1 || sigs[0] != (PAGE, Sig::SwapV1) {
        let list: Vec<String> = sigs
            .iter()
            .map(|(p, w)| format!("{w} for {} KiB pages", p / 1024))
            .collect();
        return Some(Kind::Keep(format!(
            "has {}; vmfinal treats only a version-1 swap area with 4 KiB pages as free: copied whole",
            list.join(", ")
        )));
    }
    Some(header(r).unwrap_or_else(Kind::Keep))
}

/// The version-1 header's page count, checked against the region.
fn header(r: &Region) -> Result<Kind, String> {
    let field = |off: u64| r.read(off, 4).map(|b| le32(&b, 0)).map_err(|e| e.msg);
    let (version, last_page, bad) = (
        field(HDR_VERSION)?,
        field(HDR_LAST_PAGE)? as u64,
        field(HDR_NR_BADPAGES)?,
    );
    if version != 1 {
        return Err(format!(
            "header version {version:#x} (not 1, or another byte order): copied whole"
        ));
    }
    let end = (last_page + 1) * PAGE;
    if last_page == 0 || end > r.len || bad > MAX_BADPAGES {
        return Err(format!(
            "header says {} pages ({bad} bad) in a {}-byte partition: copied whole",
            last_page + 1,
            r.len
        ));
    }
    Ok(Kind::Swap { end })
}

/// True if `r` is a plain Linux swap area vmfinal may clear or skip.
pub fn detect(r: &Region) -> bool {
    matches!(classify(r), Some(Kind::Swap { .. }))
}

/// True if `r` carries a swap or hibernation signature and nothing else:
/// `free_space` then says what of it is free, or why nothing is.
pub fn present(r: &Region) -> bool {
    classify(r).is_some()
}

pub fn free_space(r: &Region) -> Result<FsFree, FsError> {
    let end = match classify(r) {
        None => {
            let what = foreign(r).unwrap_or("no swap area");
            return Err(FsError::unclean(
                "swap",
                format!("a swap signature lies over {what}: copied whole"),
            ));
        }
        Some(Kind::Keep(why)) => return Err(FsError::unclean("swap", why)),
        Some(Kind::Swap { end }) => end,
    };
    let label = r
        .read(HDR_LABEL, 16)
        .map(|b| String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap_or(&[])).into_owned())
        .unwrap_or_default();
    let mut out = FsFree::new("swap", &label, r.len);
    out.free.push(Extent::new(PAGE, end - PAGE));
    out.free_bytes = end - PAGE;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::testdisk::MemDisk;

    /// A 1 MiB swap area made by mkswap (or by hand when it is missing).
    fn mkswap(size: usize) -> Vec<u8> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("swap");
        std::fs::write(&p, vec![0x5Au8; size]).unwrap();
        let ok = std::process::Command::new("mkswap")
            .arg("-q")
            .arg(&p)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok || std::env::var("CI").is_err(), "mkswap is needed in CI");
        let mut b = std::fs::read(&p).unwrap();
        if !ok {
            b[..4096].fill(0);
            b[1024..1028].copy_from_slice(&1u32.to_le_bytes());
            b[1028..1032].copy_from_slice(&((size / 4096 - 1) as u32).to_le_bytes());
            b[4086..4096].copy_from_slice(SWAP_V1);
        }
        b
    }

    fn free_of(b: &[u8]) -> Result<FsFree, FsError> {
        let d = MemDisk(b.to_vec());
        free_space(&Region {
            src: &d,
            start: 0,
            len: b.len() as u64,
        })
    }

    fn region_ok(b: &[u8], f: impl Fn(&Region) -> bool) -> bool {
        let d = MemDisk(b.to_vec());
        f(&Region {
            src: &d,
            start: 0,
            len: b.len() as u64,
        })
    }

    #[test]
    fn plain_swap_is_free_up_to_last_page() {
        let s = mkswap(1 << 20);
        assert!(region_ok(&s, detect));
        let f = free_of(&s).unwrap();
        assert_eq!(f.free, vec![Extent::new(4096, (1 << 20) - 4096)]);
        // A partition larger than the swap area: the tail is kept.
        let mut big = s.clone();
        big.resize(2 << 20, 0x77);
        let f = free_of(&big).unwrap();
        assert_eq!(f.free, vec![Extent::new(4096, (1 << 20) - 4096)]);
    }

    #[test]
    fn anything_else_is_copied_whole() {
        let s = mkswap(1 << 20);
        type Edit = fn(&mut Vec<u8>);
        let cases: Vec<(&str, Edit)> = vec![
            ("btrfs", |b| {
                b[0x10040..0x10048].copy_from_slice(b"_BHRfS_M")
            }),
            ("LVM", |b| b[512..520].copy_from_slice(b"LABELONE")),
            ("LUKS", |b| b[0..6].copy_from_slice(b"LUKS\xba\xbe")),
            ("md 1.2", |b| {
                b[4096..4100].copy_from_slice(&0xA92B_4EFCu32.to_le_bytes())
            }),
            ("xfs", |b| b[0..4].copy_from_slice(b"XFSB")),
            ("ext4", |b| b[1080..1082].copy_from_slice(&[0x53, 0xEF])),
            ("boot sector", |b| {
                b[510..512].copy_from_slice(&[0x55, 0xAA])
            }),
            ("swsusp", |b| b[4086..4096].copy_from_slice(b"S1SUSPEND\0")),
            ("tuxonice", |b| b[0..8].copy_from_slice(TUXONICE)),
            ("64k pages", |b| {
                b[65526..65536].copy_from_slice(b"S1SUSPEND\0")
            }),
            ("64k swap", |b| b[65526..65536].copy_from_slice(SWAP_V1)),
            ("v0", |b| b[4086..4096].copy_from_slice(SWAP_V0)),
            ("version", |b| {
                b[1024..1028].copy_from_slice(&1u32.to_be_bytes())
            }),
            ("last page", |b| {
                b[1028..1032].copy_from_slice(&1000u32.to_le_bytes())
            }),
            ("no pages", |b| b[1028..1032].fill(0)),
        ];
        for (name, edit) in cases {
            let mut b = s.clone();
            edit(&mut b);
            assert!(free_of(&b).is_err(), "{name}");
            assert!(
                !region_ok(&b, detect),
                "{name}: must not be cleared as swap"
            );
        }
    }
}
