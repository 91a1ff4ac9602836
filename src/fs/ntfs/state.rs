//! Whether an NTFS volume is at rest, as ntfs-3g decides before it mounts
//! read-write: the `$Volume` flags (dirty, chkdsk under way), the
//! `$LogFile` restart area (clean, or empty; version 2.0 means Windows kept
//! metadata cached for a fast restart), and `hiberfil.sys` (a `hibr` or
//! `wake` header, or a file too short to hold a header, means Windows is
//! hibernated or used hibernation / fast startup). Pure functions.

use super::record::apply_fixups;
use crate::bytes::{le16, le32, le64};

const VOLUME_IS_DIRTY: u16 = 0x0001;
const VOLUME_CHKDSK_UNDERWAY: u16 = 0x4000;
const RESTART_VOLUME_IS_CLEAN: u16 = 0x0002;
const LOGFILE_NO_CLIENT: u16 = 0xFFFF;
/// Bytes of hiberfil.sys ntfs-3g reads as its header.
pub const HIBERFILE_HEADER: usize = 4096;
/// Bytes at the start of $LogFile searched for restart pages.
pub const LOGFILE_HEAD: usize = 64 << 10;

/// Refuses a volume whose `$VOLUME_INFORMATION` flags say it is not at rest.
pub fn check_volume_flags(info: &[u8]) -> Result<(), String> {
    if info.len() < 12 {
        return Err("$VOLUME_INFORMATION is truncated".into());
    }
    let flags = le16(info, 10);
    if flags & VOLUME_IS_DIRTY != 0 {
        return Err("is marked dirty (scheduled for chkdsk): copied whole; run chkdsk /f in Windows or `ntfsfix -d`".into());
    }
    if flags & VOLUME_CHKDSK_UNDERWAY != 0 {
        return Err("has a chkdsk under way: copied whole; let chkdsk finish in Windows".into());
    }
    Ok(())
}

/// Judges the first `LOGFILE_HEAD` bytes of `$LogFile` (shorter if the
/// file is): empty (all records unused, as ntfs-3g leaves it) or a valid
/// restart page whose newest restart area is clean.
pub fn check_logfile(head: &[u8]) -> Result<(), String> {
    let mut pages: Vec<(u64, u16, u16, u16, u16)> = Vec::new(); // (lsn, major, minor, in_use, flags)
    let mut empty = true;
    let mut pos = 0usize;
    while pos + 512 <= head.len() {
        let magic = &head[pos..pos + 4];
        if magic != [0xFF; 4] {
            empty = false;
        } else if !empty {
            break;
        }
        if magic == b"RCRD" {
            break;
        }
        if magic == b"RSTR" || magic == b"CHKD" {
            let sys_page = le32(head, pos + 16) as usize;
            if !(512..=65536).contains(&sys_page)
                || !sys_page.is_power_of_two()
                || pos + sys_page > head.len()
            {
                return Err(format!(
                    "$LogFile restart page at {pos} has an implausible size"
                ));
            }
            let mut page = head[pos..pos + sys_page].to_vec();
            let m: [u8; 4] = [magic[0], magic[1], magic[2], magic[3]];
            apply_fixups(&mut page, &m).map_err(|e| format!("$LogFile restart page: {e}"))?;
            let ra = le16(&page, 24) as usize;
            if ra + 16 > page.len() {
                return Err("$LogFile restart area lies outside its page".into());
            }
            pages.push((
                le64(&page, ra),
                le16(&page, 28),
                le16(&page, 26),
                le16(&page, ra + 12),
                le16(&page, ra + 14),
            ));
            if pages.len() == 2 {
                break;
            }
        }
        pos = if pos == 0 { 512 } else { pos * 2 };
    }
    if empty {
        return Ok(());
    }
    let Some(&(_, major, minor, in_use, flags)) = pages.iter().max_by_key(|p| p.0) else {
        return Err("$LogFile holds no restart page but is not empty: copied whole; mount it once in Windows".into());
    };
    if major == 2 && minor == 0 {
        return Err("Windows kept its metadata cached (fast startup / hibernation, $LogFile 2.0): copied whole; shut Windows down fully (fast startup off)".into());
    }
    if in_use != LOGFILE_NO_CLIENT && flags & RESTART_VOLUME_IS_CLEAN == 0 {
        return Err("was not cleanly unmounted ($LogFile has active clients): copied whole; mount it once in Windows, or `ntfsfix`".into());
    }
    Ok(())
}

/// Judges hiberfil.sys's first bytes (`head`, at most `HIBERFILE_HEADER`).
pub fn check_hiberfile(head: &[u8]) -> Result<(), String> {
    if head.len() < HIBERFILE_HEADER {
        return Err(
            "hiberfil.sys is shorter than its header: Windows is hibernated; copied whole".into(),
        );
    }
    let m = head[0..4].to_ascii_lowercase();
    if m == b"hibr" || m == b"wake" {
        return Err(format!(
            "hiberfil.sys has a {:?} header: Windows is hibernated or uses fast startup; copied whole; shut Windows down fully (powercfg /h off)",
            String::from_utf8_lossy(&head[0..4])
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restart_page(major: u16, in_use: u16, flags: u16) -> Vec<u8> {
        let mut p = vec![0u8; 4096];
        p[0..4].copy_from_slice(b"RSTR");
        p[4..6].copy_from_slice(&30u16.to_le_bytes());
        p[6..8].copy_from_slice(&9u16.to_le_bytes());
        p[16..20].copy_from_slice(&4096u32.to_le_bytes());
        p[24..26].copy_from_slice(&64u16.to_le_bytes());
        p[28..30].copy_from_slice(&major.to_le_bytes());
        p[26..28].copy_from_slice(&(if major == 2 { 0u16 } else { 1 }).to_le_bytes());
        p[64 + 12..64 + 14].copy_from_slice(&in_use.to_le_bytes());
        p[64 + 14..64 + 16].copy_from_slice(&flags.to_le_bytes());
        p[30..32].copy_from_slice(&[1, 0]);
        for i in 1..9 {
            let end = i * 512 - 2;
            p[30 + 2 * i] = p[end];
            p[31 + 2 * i] = p[end + 1];
            p[end..end + 2].copy_from_slice(&[1, 0]);
        }
        p
    }

    #[test]
    fn logfile_states() {
        assert!(check_logfile(&vec![0xFF; LOGFILE_HEAD]).is_ok());
        let mut log = vec![0xFF; LOGFILE_HEAD];
        log[..4096].copy_from_slice(&restart_page(1, LOGFILE_NO_CLIENT, 0));
        assert!(check_logfile(&log).is_ok());
        log[..4096].copy_from_slice(&restart_page(1, 0, RESTART_VOLUME_IS_CLEAN));
        assert!(check_logfile(&log).is_ok());
        log[..4096].copy_from_slice(&restart_page(1, 0, 0));
        assert!(check_logfile(&log).unwrap_err().contains("active clients"));
        log[..4096].copy_from_slice(&restart_page(2, LOGFILE_NO_CLIENT, 0));
        assert!(check_logfile(&log).unwrap_err().contains("fast startup"));
        log[..4096].copy_from_slice(&restart_page(1, LOGFILE_NO_CLIENT, 0));
        log[1022] ^= 1; // torn
        assert!(check_logfile(&log).is_err());
        assert!(check_logfile(&[0u8; 8192]).is_err()); // neither empty nor a restart page
    }

    #[test]
    fn hiberfile_and_volume_states() {
        let mut h = vec![0u8; 4096];
        assert!(check_hiberfile(&h).is_ok());
        h[0..4].copy_from_slice(b"HIBR");
        assert!(check_hiberfile(&h).is_err());
        h[0..4].copy_from_slice(b"wake");
        assert!(check_hiberfile(&h).is_err());
        assert!(check_hiberfile(&[0u8; 100]).is_err());
        let mut v = [0u8; 12];
        v[8] = 3;
        v[9] = 1;
        assert!(check_volume_flags(&v).is_ok());
        v[10] = 1;
        assert!(check_volume_flags(&v).unwrap_err().contains("dirty"));
    }
}
