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
    for db in RPM_SQLITE {
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
        for (db, why) in older_rpm_dbs(root) {
            out.push(PackageDb::unreadable("rpm", db, why));
        }
    }
    out
}

/// Reads every package header of an rpmdb.sqlite open on `fd`. SQLite
/// opens it immutable and read-only (no journal, no -wal/-shm files made),
/// with the schema untrusted.
fn read_rpm_rows<T>(fd: i32, decode: fn(&[u8]) -> Result<T, String>) -> Result<Vec<T>, String> {
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
        out.push(decode(&blob).map_err(|e| format!("package row {}: {e}", i + 1))?);
    }
    Ok(out)
}

fn read_rpm_sqlite(fd: i32) -> Result<Vec<Package>, String> {
    read_rpm_rows(fd, decode_header)
}

/// The guest's rpm database read as headers, for planning without rpm.
pub enum RpmDb {
    /// No rpmdb.sqlite, no BerkeleyDB or ndb database either.
    Missing,
    /// A database vmfinal does not read (BerkeleyDB, ndb, damaged sqlite,
    /// or changes pending in the -wal file): (guest path, why).
    Unreadable(String, String),
    /// (guest path, every package header).
    Read(String, Vec<RpmHeader>),
}

/// Reads the guest's rpmdb.sqlite whole, as headers (no guest binary runs).
pub fn rpm_headers(root: &GuestRoot) -> RpmDb {
    for db in RPM_SQLITE {
        let Ok(fd) = root.open_at(
            db.as_bytes(),
            libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK,
        ) else {
            continue;
        };
        let Ok(st) = lstat_at(fd.as_raw_fd(), b"") else {
            continue;
        };
        if !st.is_file() {
            return RpmDb::Unreadable(db.into(), "not a regular file".into());
        }
        let wal = format!("{db}-wal");
        if root.lstat(wal.as_bytes()).is_ok_and(|w| w.size > 0) {
            return RpmDb::Unreadable(
                db.into(),
                format!("{wal} holds changes not yet checkpointed"),
            );
        }
        return match read_rpm_rows(fd.as_raw_fd(), RpmHeader::parse) {
            Ok(h) => RpmDb::Read(db.into(), h),
            Err(e) => RpmDb::Unreadable(db.into(), e),
        };
    }
    match older_rpm_dbs(root).next() {
        Some((db, why)) => RpmDb::Unreadable(db.into(), why),
        None => RpmDb::Missing,
    }
}

/// Where rpm 4.16 and later keeps its database, in the order rpm looks.
const RPM_SQLITE: [&str; 2] = [
    "/usr/lib/sysimage/rpm/rpmdb.sqlite",
    "/var/lib/rpm/rpmdb.sqlite",
];

/// The older rpm databases present in the guest, each with why vmfinal
/// does not read it.
fn older_rpm_dbs(root: &GuestRoot) -> impl Iterator<Item = (&'static str, String)> + '_ {
    [
        (
            "/var/lib/rpm/Packages",
            "a BerkeleyDB rpm database (rpm before 4.16)",
        ),
        ("/var/lib/rpm/Packages.db", "an ndb rpm database (SUSE)"),
    ]
    .into_iter()
    .filter(|(db, _)| root.exists(db))
    .map(|(db, kind)| {
        (
            db,
            format!("{kind}: vmfinal reads only rpmdb.sqlite (rpm 4.16 and later)"),
        )
    })
}

/// One rpm header, its index entries checked against its data store.
#[derive(Debug, Clone)]
pub struct RpmHeader {
    /// (tag, type, offset, count)
    entries: Vec<(u32, u32, usize, usize)>,
    data: Vec<u8>,
}

pub const TAG_EPOCH: u32 = 1003;
pub const TAG_OLDFILENAMES: u32 = 1027;
pub const TAG_PROVIDENAME: u32 = 1047;
pub const TAG_REQUIREFLAGS: u32 = 1048;
pub const TAG_REQUIRENAME: u32 = 1049;
pub const TAG_REQUIREVERSION: u32 = 1050;
pub const TAG_PROVIDEVERSION: u32 = 1113;
pub const TAG_DIRINDEXES: u32 = 1116;
pub const TAG_BASENAMES: u32 = 1117;
pub const TAG_DIRNAMES: u32 = 1118;
const TYPE_STRING_ARRAY: u32 = 8;
const TYPE_I18NSTRING: u32 = 9;

impl RpmHeader {
    /// Parses a header blob as rpmdb stores it (see `decode_header`).
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        let il = be32(b, 0).ok_or("shorter than a header")? as usize;
        let dl = be32(b, 4).ok_or("shorter than a header")? as usize;
        if il == 0 || il > 0xffff || dl > 256 << 20 {
            return Err(format!(
                "implausible header ({il} entries, {dl} data bytes)"
            ));
        }
        let data_at = 8 + il * 16;
        let data = b
            .get(data_at..data_at + dl)
            .ok_or("header longer than its blob")?
            .to_vec();
        let mut entries = Vec::with_capacity(il);
        for i in 0..il {
            let e = 8 + i * 16;
            let (tag, ty, off, count) = (
                be32(b, e).unwrap_or(0),
                be32(b, e + 4).unwrap_or(0),
                be32(b, e + 8).unwrap_or(u32::MAX) as usize,
                be32(b, e + 12).unwrap_or(0) as usize,
            );
            // No entry claims more items than its data could hold.
            // An entry that claims more items than its data could hold
            // is left out (its accessors answer empty).
            if off <= dl && count <= dl - off + 1 {
                entries.push((tag, ty, off, count));
            }
        }
        Ok(Self { entries, data })
    }

    fn entry(&self, tag: u32) -> Option<(u32, usize, usize)> {
        self.entries
            .iter()
            .find(|e| e.0 == tag)
            .map(|e| (e.1, e.2, e.3))
    }

    /// The NUL-terminated strings of a string, string-array or i18n tag
    /// (empty when absent or malformed).
    pub fn strings(&self, tag: u32) -> Vec<String> {
        let Some((ty, off, count)) = self.entry(tag) else {
            return Vec::new();
        };
        let n = match ty {
            TYPE_STRING => 1,
            TYPE_STRING_ARRAY | TYPE_I18NSTRING => count,
            _ => return Vec::new(),
        };
        let mut out = Vec::new();
        let mut at = off;
        for _ in 0..n {
            let Some(s) = self.data.get(at..) else {
                return Vec::new();
            };
            let Some(end) = s.iter().position(|&c| c == 0) else {
                return Vec::new();
            };
            out.push(String::from_utf8_lossy(&s[..end]).into_owned());
            at += end + 1;
        }
        out
    }

    pub fn string(&self, tag: u32) -> String {
        self.strings(tag).into_iter().next().unwrap_or_default()
    }

    /// The values of an int32 array tag (empty when absent or malformed).
    pub fn ints(&self, tag: u32) -> Vec<u32> {
        match self.entry(tag) {
            Some((TYPE_INT32, off, count)) => (0..count)
                .map_while(|i| be32(&self.data, off.checked_add(i.checked_mul(4)?)?))
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn name(&self) -> String {
        self.string(TAG_NAME)
    }

    /// EPOCHNUM:VERSION-RELEASE, as `rpm -q --qf %{EPOCHNUM}:%{VERSION}-%{RELEASE}`.
    pub fn evr(&self) -> String {
        format!(
            "{}:{}-{}",
            self.ints(TAG_EPOCH).first().copied().unwrap_or(0),
            self.string(TAG_VERSION),
            self.string(TAG_RELEASE)
        )
    }

    /// VERSION-RELEASE.ARCH (a kernel's KVER).
    pub fn vra(&self) -> String {
        format!(
            "{}-{}.{}",
            self.string(TAG_VERSION),
            self.string(TAG_RELEASE),
            self.string(TAG_ARCH)
        )
    }

    /// Every path the package owns, as `rpm -ql` lists them.
    pub fn files(&self) -> Vec<String> {
        let base = self.strings(TAG_BASENAMES);
        if base.is_empty() {
            return self.strings(TAG_OLDFILENAMES);
        }
        let dirs = self.strings(TAG_DIRNAMES);
        let idx = self.ints(TAG_DIRINDEXES);
        base.iter()
            .zip(idx.iter())
            .filter_map(|(b, &i)| Some(format!("{}{b}", dirs.get(i as usize)?)))
            .collect()
    }
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

    #[test]
    fn rpm_header_files() {
        // BASENAMES ["a", "b"], DIRNAMES ["/x/", "/y/"], DIRINDEXES [1, 0].
        let data: Vec<u8> = [
            &b"a\0b\0/x/\0/y/\0"[..],
            &1u32.to_be_bytes(),
            &0u32.to_be_bytes(),
        ]
        .concat();
        let mut b = Vec::new();
        b.extend(4u32.to_be_bytes());
        b.extend((data.len() as u32).to_be_bytes());
        for (tag, ty, off, n) in [
            (TAG_NAME, TYPE_STRING, 0u32, 1u32),
            (TAG_BASENAMES, TYPE_STRING_ARRAY, 0, 2),
            (TAG_DIRNAMES, TYPE_STRING_ARRAY, 4, 2),
            (TAG_DIRINDEXES, TYPE_INT32, 12, 2),
        ] {
            for v in [tag, ty, off, n] {
                b.extend(v.to_be_bytes());
            }
        }
        b.extend(&data);
        let h = RpmHeader::parse(&b).unwrap();
        assert_eq!(h.files(), vec!["/y/a".to_string(), "/x/b".to_string()]);
        // A count larger than the data could hold: the entry is left out.
        let mut bad = b.clone();
        bad[8 + 16 + 12..8 + 16 + 16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(RpmHeader::parse(&bad).unwrap().files().is_empty());
    }
}
