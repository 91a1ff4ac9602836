//! Installed packages by installed size, read from the guest's own package
//! database files; no guest binary runs. dpkg: `var/lib/dpkg/status`
//! (`Installed-Size`, KiB); apk: `lib/apk/db/installed` (`I:`, bytes); rpm:
//! `rpmdb.sqlite` (rpm 4.16 and later), each row an rpm header blob whose
//! NAME, VERSION, RELEASE, ARCH and SIZE/LONGSIZE tags we decode. The older
//! BerkeleyDB (`Packages`) and SUSE's ndb (`Packages.db`) are reported as
//! unreadable, with why.

use std::os::fd::AsRawFd;

use serde::Serialize;

use crate::guest::root::{GuestRoot, lstat_at};

/// Largest database file read.
const MAX_DB: u64 = 1 << 30;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// Installed size in bytes, as the database records it.
    pub installed_bytes: u64,
}

/// One package database of the guest.
#[derive(Debug, Clone, Serialize)]
pub struct PackageDb {
    /// dpkg, rpm or apk.
    pub manager: &'static str,
    /// The guest path read.
    pub database: String,
    pub readable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub total_installed_bytes: u64,
    /// Largest first (ties by name).
    pub packages: Vec<Package>,
}

impl PackageDb {
    fn new(manager: &'static str, database: &str, packages: Vec<Package>) -> Self {
        let mut packages = packages;
        packages.sort_by(|a, b| {
            b.installed_bytes
                .cmp(&a.installed_bytes)
                .then_with(|| a.name.cmp(&b.name))
                .then_with(|| a.arch.cmp(&b.arch))
        });
        Self {
            manager,
            database: database.to_string(),
            readable: true,
            reason: None,
            total_installed_bytes: packages.iter().map(|p| p.installed_bytes).sum(),
            packages,
        }
    }
    fn unreadable(manager: &'static str, database: &str, reason: String) -> Self {
        Self {
            manager,
            database: database.to_string(),
            readable: false,
            reason: Some(reason),
            total_installed_bytes: 0,
            packages: Vec::new(),
        }
    }
}

/// Every package database found in the guest.
pub fn read_all(root: &GuestRoot) -> Vec<PackageDb> {
    let mut out = Vec::new();
    let dpkg = "/var/lib/dpkg/status";
    if root.exists(dpkg) {
        out.push(match root.read(dpkg, MAX_DB) {
            Ok(b) => PackageDb::new(
                "dpkg",
                dpkg,
                parse_dpkg_status(&String::from_utf8_lossy(&b)),
            ),
            Err(e) => PackageDb::unreadable("dpkg", dpkg, e.to_string()),
        });
    }
    for apk in ["/lib/apk/db/installed", "/usr/lib/apk/db/installed"] {
        if root.exists(apk) {
            out.push(match root.read(apk, MAX_DB) {
                Ok(b) => PackageDb::new(
                    "apk",
                    apk,
                    parse_apk_installed(&String::from_utf8_lossy(&b)),
                ),
                Err(e) => PackageDb::unreadable("apk", apk, e.to_string()),
            });
            break;
        }
    }
    out.extend(read_rpm(root));
    out
}

/// dpkg's status file: packages whose files are on disk (every state but
/// not-installed and config-files), as `dpkg-query -W` lists them.
pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut name = "";
        let mut version = "";
        let mut arch = "";
        let mut status = "";
        let mut size: Option<u64> = None;
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k {
                "Package" => name = v,
                "Version" => version = v,
                "Architecture" => arch = v,
                "Status" => status = v,
                "Installed-Size" => size = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        let state = status.split_whitespace().nth(2).unwrap_or("");
        if name.is_empty() || matches!(state, "not-installed" | "config-files" | "") {
            continue;
        }
        out.push(Package {
            name: name.to_string(),
            version: version.to_string(),
            arch: arch.to_string(),
            installed_bytes: size.unwrap_or(0).saturating_mul(1024),
        });
    }
    out
}

/// apk's installed database: one stanza per package, `P:` name, `V:`
/// version, `A:` arch, `I:` installed size in bytes.
pub fn parse_apk_installed(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    let mut cur: Option<Package> = None;
    let flush = |cur: &mut Option<Package>, out: &mut Vec<Package>| {
        if let Some(p) = cur.take() {
            if !p.name.is_empty() {
                out.push(p);
            }
        }
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut cur, &mut out);
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let p = cur.get_or_insert_with(|| Package {
            name: String::new(),
            version: String::new(),
            arch: String::new(),
            installed_bytes: 0,
        });
        match k {
            "P" => p.name = v.to_string(),
            "V" => p.version = v.to_string(),
            "A" => p.arch = v.to_string(),
            "I" => p.installed_bytes = v.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    flush(&mut cur, &mut out);
    out
}

fn read_rpm(root: &GuestRoot) -> Vec<PackageDb> {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for db in [
        "/usr/lib/sysimage/rpm/rpmdb.sqlite",
        "/var/lib/rpm/rpmdb.sqlite",
    ] {
        let Ok(fd) = root.open_at(
            db.as_bytes(),
            libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK,
        ) else {
            continue;
        };
        let Ok(st) = lstat_at(fd.as_raw_fd(), b"") else {
            continue;
        };
        if seen.contains(&(st.dev, st.ino)) {
            continue; // /var/lib/rpm -> /usr/lib/sysimage/rpm
        }
        seen.push((st.dev, st.ino));
        if !st.is_file() {
            out.push(PackageDb::unreadable(
                "rpm",
                db,
                "not a regular file".into(),
            ));
            continue;
        }
        let wal = format!("{db}-wal");
        let pending = root.lstat(wal.as_bytes()).is_ok_and(|w| w.size > 0);
        out.push(match read_rpm_sqlite(fd.as_raw_fd()) {
            Ok(pkgs) => {
                let mut d = PackageDb::new("rpm", db, pkgs);
                if pending {
                    d.reason = Some(format!(
                        "{wal} holds changes not yet checkpointed; they are not read"
                    ));
                }
                d
            }
            Err(e) => PackageDb::unreadable("rpm", db, e),
        });
    }
    if out.is_empty() {
        for (db, kind) in [
            (
                "/var/lib/rpm/Packages",
                "a BerkeleyDB rpm database (rpm before 4.16)",
            ),
            ("/var/lib/rpm/Packages.db", "an ndb rpm database (SUSE)"),
        ] {
            if root.exists(db) {
                out.push(PackageDb::unreadable(
                    "rpm",
                    db,
                    format!("{kind}: vmfinal reads only rpmdb.sqlite (rpm 4.16 and later)"),
                ));
            }
        }
    }
    out
}

/// Reads every package header of an rpmdb.sqlite open on `fd`. SQLite
/// opens it immutable and read-only (no journal, no -wal/-shm files made),
/// with the schema untrusted.
fn read_rpm_sqlite(fd: i32) -> Result<Vec<Package>, String> {
    use rusqlite::{Connection, OpenFlags};
    let uri = format!("file:/proc/self/fd/{fd}?immutable=1");
    let c = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open it with SQLite: {e}"))?;
    for (k, v) in [
        ("trusted_schema", "OFF"),
        ("cell_size_check", "ON"),
        ("query_only", "ON"),
    ] {
        c.pragma_update(None, k, v)
            .map_err(|e| format!("not an SQLite database SQLite accepts: {e}"))?;
    }
    let mut stmt = c
        .prepare("SELECT blob FROM Packages")
        .map_err(|e| format!("no Packages table SQLite can read: {e}"))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .map_err(|e| format!("cannot read the Packages table: {e}"))?;
    let mut out = Vec::new();
    for (i, r) in rows.enumerate() {
        let blob = r.map_err(|e| format!("cannot read row {}: {e}", i + 1))?;
        out.push(decode_header(&blob).map_err(|e| format!("package row {}: {e}", i + 1))?);
    }
    Ok(out)
}

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_SIZE: u32 = 1009;
const TAG_ARCH: u32 = 1022;
const TAG_LONGSIZE: u32 = 5009;
const TYPE_INT32: u32 = 4;
const TYPE_INT64: u32 = 5;
const TYPE_STRING: u32 = 6;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Decodes an rpm header blob as rpmdb stores it (no lead, no magic):
/// index count, data length, the index entries (tag, type, offset, count;
/// big-endian) and the data store.
pub fn decode_header(b: &[u8]) -> Result<Package, String> {
    let il = be32(b, 0).ok_or("shorter than a header")? as usize;
    let dl = be32(b, 4).ok_or("shorter than a header")? as usize;
    // rpm's own limits: 0xffff index entries, 256 MiB of data.
    if il == 0 || il > 0xffff || dl > 256 << 20 {
        return Err(format!(
            "implausible header ({il} entries, {dl} data bytes)"
        ));
    }
    let data_at = 8 + il * 16;
    let data = b
        .get(data_at..data_at + dl)
        .ok_or("header longer than its blob")?;
    let mut p = Package {
        name: String::new(),
        version: String::new(),
        arch: String::new(),
        installed_bytes: 0,
    };
    let (mut release, mut size32, mut size64) = (String::new(), None, None);
    for i in 0..il {
        let e = 8 + i * 16;
        let (tag, ty, off, count) = (
            be32(b, e).unwrap_or(0),
            be32(b, e + 4).unwrap_or(0),
            be32(b, e + 8).unwrap_or(u32::MAX) as usize,
            be32(b, e + 12).unwrap_or(0),
        );
        let string = || -> Result<String, String> {
            if ty != TYPE_STRING {
                return Err(format!("tag {tag} is not a string"));
            }
            let s = data
                .get(off..)
                .ok_or(format!("tag {tag} outside the data"))?;
            let end = s
                .iter()
                .position(|&c| c == 0)
                .ok_or(format!("tag {tag} is not terminated"))?;
            Ok(String::from_utf8_lossy(&s[..end]).into_owned())
        };
        match tag {
            TAG_NAME => p.name = string()?,
            TAG_VERSION => p.version = string()?,
            TAG_RELEASE => release = string()?,
            TAG_ARCH => p.arch = string()?,
            TAG_SIZE if ty == TYPE_INT32 && count >= 1 => {
                size32 = Some(be32(data, off).ok_or("SIZE outside the data")? as u64)
            }
            TAG_LONGSIZE if ty == TYPE_INT64 && count >= 1 => {
                let hi = be32(data, off).ok_or("LONGSIZE outside the data")? as u64;
                let lo = be32(data, off + 4).ok_or("LONGSIZE outside the data")? as u64;
                size64 = Some(hi << 32 | lo);
            }
            _ => {}
        }
    }
    if p.name.is_empty() {
        return Err("no NAME tag".into());
    }
    if !release.is_empty() {
        p.version = format!("{}-{release}", p.version);
    }
    p.installed_bytes = size64.or(size32).unwrap_or(0);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_states() {
        let t = "Package: a\nStatus: install ok installed\nInstalled-Size: 10\nDescription: x\n y: z\n\n\
                 Package: b\nStatus: deinstall ok config-files\nInstalled-Size: 99\n\n\
                 Package: c\nStatus: install ok unpacked\nArchitecture: i386\n";
        let p = parse_dpkg_status(t);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].name.as_str(), p[0].installed_bytes), ("a", 10240));
        assert_eq!((p[1].name.as_str(), p[1].installed_bytes), ("c", 0));
    }

    #[test]
    fn apk() {
        let p = parse_apk_installed("C:Q1=\nP:busybox\nV:1.36\nA:x86_64\nI:924\n\nP:musl\nI:5\n");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].installed_bytes, 924);
        assert_eq!(p[1].name, "musl");
    }

    #[test]
    fn rpm_header() {
        // Two entries: NAME (string at 0), SIZE (int32 at 4).
        let mut b = Vec::new();
        b.extend(2u32.to_be_bytes());
        b.extend(8u32.to_be_bytes());
        for (tag, ty, off) in [(TAG_NAME, TYPE_STRING, 0u32), (TAG_SIZE, TYPE_INT32, 4)] {
            b.extend(tag.to_be_bytes());
            b.extend(ty.to_be_bytes());
            b.extend(off.to_be_bytes());
            b.extend(1u32.to_be_bytes());
        }
        b.extend(b"bsh\0");
        b.extend(4242u32.to_be_bytes());
        let p = decode_header(&b).unwrap();
        assert_eq!((p.name.as_str(), p.installed_bytes), ("bsh", 4242));
        assert!(decode_header(&b[..20]).is_err());
        let mut bad = b.clone();
        bad[8 + 8..8 + 12].copy_from_slice(&1000u32.to_be_bytes());
        assert!(decode_header(&bad).is_err());
    }
}
