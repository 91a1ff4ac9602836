//! NTFS MFT records: the update sequence array (fixups) verified and
//! undone, the attribute list walked with every offset bounds-checked, and
//! non-resident runlists decoded. Pure functions over byte slices.

use crate::bytes::{le16, le32, le64};

/// The stride of NTFS's multi-sector protection.
pub const FIXUP_STRIDE: usize = 512;
pub const AT_VOLUME_NAME: u32 = 0x60;
pub const AT_VOLUME_INFORMATION: u32 = 0x70;
pub const AT_FILE_NAME: u32 = 0x30;
pub const AT_DATA: u32 = 0x80;
const AT_END: u32 = 0xFFFF_FFFF;
const RECORD_IN_USE: u16 = 0x1;
/// Runs decoded per attribute at most.
const MAX_RUNS: usize = 1 << 20;

/// Undoes the fixups of a multi-sector record (`FILE`, `INDX`, `RSTR`, ...)
/// in place. `magic` is the expected signature.
pub fn apply_fixups(b: &mut [u8], magic: &[u8; 4]) -> Result<(), String> {
    if b.len() < FIXUP_STRIDE || b.len() % FIXUP_STRIDE != 0 {
        return Err(format!("record of {} bytes", b.len()));
    }
    if &b[0..4] != magic {
        return Err(format!(
            "bad signature {:?} (want {:?})",
            String::from_utf8_lossy(&b[0..4]),
            String::from_utf8_lossy(magic)
        ));
    }
    let ofs = le16(b, 4) as usize;
    let count = le16(b, 6) as usize;
    let sectors = b.len() / FIXUP_STRIDE;
    if count != sectors + 1 || ofs % 2 != 0 || ofs < 8 || ofs + count * 2 > FIXUP_STRIDE - 2 {
        return Err(format!(
            "implausible update sequence array ({count} at {ofs})"
        ));
    }
    let usn = [b[ofs], b[ofs + 1]];
    for i in 1..count {
        let end = i * FIXUP_STRIDE - 2;
        if b[end..end + 2] != usn {
            return Err(format!("update sequence mismatch in sector {}", i - 1));
        }
        b[end] = b[ofs + 2 * i];
        b[end + 1] = b[ofs + 2 * i + 1];
    }
    Ok(())
}

/// One attribute of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr<'a> {
    pub kind: u32,
    /// UTF-16LE name bytes (empty for the unnamed attribute).
    pub name: &'a [u8],
    pub body: Body<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    Resident(&'a [u8]),
    NonResident {
        lowest_vcn: u64,
        highest_vcn: u64,
        data_size: u64,
        /// Bytes written; past them the attribute reads as zeros.
        init_size: u64,
        runs: &'a [u8],
    },
}

/// An MFT record after its fixups.
pub struct Record<'a> {
    pub in_use: bool,
    /// The base record's number (0: this is a base record).
    pub base: u64,
    pub attrs: Vec<Attr<'a>>,
}

/// Parses a fixed-up `FILE` record.
pub fn parse_record(b: &[u8]) -> Result<Record<'_>, String> {
    if b.len() < 48 {
        return Err("record too short".into());
    }
    let flags = le16(b, 22);
    let used = (le32(b, 24) as usize).min(b.len());
    let mut at = le16(b, 20) as usize;
    let mut attrs = Vec::new();
    loop {
        if at + 8 > used {
            return Err("attributes run past the record's used bytes".into());
        }
        let kind = le32(b, at);
        if kind == AT_END {
            break;
        }
        let len = le32(b, at + 4) as usize;
        if len < 24 || len % 8 != 0 || at + len > used {
            return Err(format!("attribute at {at} has implausible length {len}"));
        }
        let a = &b[at..at + len];
        let (name_len, name_off) = (a[9] as usize * 2, le16(a, 10) as usize);
        let name = a
            .get(name_off..name_off + name_len)
            .ok_or("attribute name outside the attribute")?;
        let body = if a[8] == 0 {
            let (vlen, voff) = (le32(a, 16) as usize, le16(a, 20) as usize);
            Body::Resident(
                a.get(voff..voff.saturating_add(vlen))
                    .ok_or("resident value outside the attribute")?,
            )
        } else {
            if len < 64 {
                return Err("non-resident attribute too short".into());
            }
            let roff = le16(a, 32) as usize;
            Body::NonResident {
                lowest_vcn: le64(a, 16),
                highest_vcn: le64(a, 24),
                data_size: le64(a, 48),
                init_size: le64(a, 56),
                runs: a.get(roff..).ok_or("runlist outside the attribute")?,
            }
        };
        attrs.push(Attr { kind, name, body });
        at += len;
    }
    Ok(Record {
        in_use: flags & RECORD_IN_USE != 0,
        base: le64(b, 32) & 0xFFFF_FFFF_FFFF,
        attrs,
    })
}

impl<'a> Record<'a> {
    /// The unnamed attribute of `kind`.
    pub fn unnamed(&self, kind: u32) -> Option<&Attr<'a>> {
        self.attrs
            .iter()
            .find(|a| a.kind == kind && a.name.is_empty())
    }
}

/// A run of a non-resident attribute: `len` clusters from `vcn`, at `lcn`
/// (None: sparse, reads as zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub vcn: u64,
    pub lcn: Option<u64>,
    pub len: u64,
}

fn le_signed(b: &[u8]) -> i64 {
    let mut v: i64 = if b.last().is_some_and(|&x| x & 0x80 != 0) {
        -1
    } else {
        0
    };
    for &x in b.iter().rev() {
        v = (v << 8) | x as i64;
    }
    v
}

/// Decodes a runlist starting at `vcn`; every run must lie inside the
/// volume's `clusters`.
pub fn decode_runs(b: &[u8], vcn: u64, clusters: u64) -> Result<Vec<Run>, String> {
    let mut out = Vec::new();
    let (mut at, mut vcn, mut lcn) = (0usize, vcn, 0i64);
    loop {
        let h = *b.get(at).ok_or("runlist is not terminated")?;
        if h == 0 {
            return Ok(out);
        }
        let (ls, os) = ((h & 0xF) as usize, (h >> 4) as usize);
        if ls == 0 || ls > 8 || os > 8 {
            return Err(format!("bad run header {h:#04x}"));
        }
        let f = b
            .get(at + 1..at + 1 + ls + os)
            .ok_or("run runs past its attribute")?;
        let len = le_signed(&f[..ls]);
        if len <= 0 {
            return Err("run of non-positive length".into());
        }
        let len = len as u64;
        let run_lcn = if os == 0 {
            None
        } else {
            lcn = lcn
                .checked_add(le_signed(&f[ls..]))
                .filter(|&l| l >= 0)
                .ok_or("run starts before the volume")?;
            let l = lcn as u64;
            if l.checked_add(len).is_none_or(|e| e > clusters) {
                return Err(format!(
                    "run at cluster {l} (+{len}) lies past the volume's end"
                ));
            }
            Some(l)
        };
        out.push(Run {
            vcn,
            lcn: run_lcn,
            len,
        });
        if out.len() > MAX_RUNS {
            return Err("too many runs".into());
        }
        vcn = vcn.checked_add(len).ok_or("runlist overflows")?;
        at += 1 + ls + os;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runlists() {
        // 0x21: 1-byte length 0x18, 2-byte offset 0x5634; then 0x11: len 5,
        // offset -2; then sparse 0x01: len 3.
        let b = [0x21, 0x18, 0x34, 0x56, 0x11, 0x05, 0xFE, 0x01, 0x03, 0x00];
        let r = decode_runs(&b, 0, 1 << 20).unwrap();
        assert_eq!(
            r,
            vec![
                Run {
                    vcn: 0,
                    lcn: Some(0x5634),
                    len: 0x18
                },
                Run {
                    vcn: 0x18,
                    lcn: Some(0x5632),
                    len: 5
                },
                Run {
                    vcn: 0x1d,
                    lcn: None,
                    len: 3
                },
            ]
        );
        assert!(decode_runs(&b, 0, 0x5000).is_err()); // past the end
        assert!(decode_runs(&b[..4], 0, 1 << 20).is_err()); // unterminated
        assert!(decode_runs(&[0x11, 0x05, 0x80, 0], 0, 1 << 20).is_err()); // negative lcn
        assert!(decode_runs(&[0x09, 0], 0, 1 << 20).is_err());
    }

    #[test]
    fn fixups() {
        let mut r = vec![0u8; 1024];
        r[0..4].copy_from_slice(b"FILE");
        r[4..6].copy_from_slice(&48u16.to_le_bytes());
        r[6..8].copy_from_slice(&3u16.to_le_bytes());
        r[48..50].copy_from_slice(&[7, 0]); // usn
        r[50..52].copy_from_slice(&[0xAA, 0xBB]);
        r[52..54].copy_from_slice(&[0xCC, 0xDD]);
        r[510..512].copy_from_slice(&[7, 0]);
        r[1022..1024].copy_from_slice(&[7, 0]);
        let mut ok = r.clone();
        apply_fixups(&mut ok, b"FILE").unwrap();
        assert_eq!(&ok[510..512], &[0xAA, 0xBB]);
        assert_eq!(&ok[1022..1024], &[0xCC, 0xDD]);
        let mut torn = r.clone();
        torn[1022] = 8;
        assert!(apply_fixups(&mut torn, b"FILE").is_err());
        assert!(apply_fixups(&mut r.clone(), b"INDX").is_err());
        let mut bad = r;
        bad[6] = 9;
        assert!(apply_fixups(&mut bad, b"FILE").is_err());
    }
}
