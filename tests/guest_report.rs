//! `analyze --guest` and `finalize --report` on real images (root), judged
//! by tools we did not write: the package list against `dpkg-query
//! --admindir` and `rpm --dbpath` on a read-only mount, directory sizes
//! against `du`, per-profile savings against what `finalize` then frees
//! (statvfs), and the HTML page in headless Chromium (no console message,
//! no request: a CSP forbids every load and Chromium runs in an empty
//! network namespace). Images: scripts/make-guest-image.sh from
//! vm-fixtures/{debian-report,rpm-sqlite,rpm,rpm-bdb,alpine}.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

const MIB: u64 = 1 << 20;
const BOOT: (u64, u64) = (MIB, 48 * MIB);
const ROOT: (u64, u64) = (65 * MIB, 160 * MIB);

fn root_ok() -> bool {
    // SAFETY: no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && in_ci() {
        panic!("guest tests need root in CI");
    }
    root && have("mkfs.ext4") && have("sfdisk") && have("python3") && have("du")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the image of a recipe once per test binary; tests only read it
/// (or copy it).
static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

/// Statics are never dropped: the shared images go when the process exits.
extern "C" fn remove_images() {
    if let Some(d) = DIR.get() {
        let _ = std::fs::remove_dir_all(d.path());
    }
}

fn image(recipe: &'static str) -> PathBuf {
    static IMAGES: OnceLock<std::sync::Mutex<Vec<(&'static str, PathBuf)>>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        // SAFETY: registers a plain function without captured state.
        unsafe { libc::atexit(remove_images) };
        tempfile::tempdir().expect("tempdir")
    });
    let m = IMAGES.get_or_init(Default::default);
    let mut v = m.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = v.iter().find(|(r, _)| *r == recipe) {
        return p.clone();
    }
    let out = dir.path().join(format!("{recipe}.raw"));
    ok(Command::new(repo().join("scripts/make-guest-image.sh"))
        .arg(repo().join("vm-fixtures").join(recipe).join("tree.txt"))
        .arg(&out));
    v.push((recipe, out.clone()));
    out
}

/// The guest's / and /boot mounted read-only (by mount(8), not vmfinal);
/// undone on drop.
struct RoGuest {
    dir: tempfile::TempDir,
}

impl RoGuest {
    fn new(img: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = |(off, size): (u64, u64), at: &Path| {
            ok(Command::new("mount")
                .arg("-o")
                .arg(format!("ro,noload,loop,offset={off},sizelimit={size}"))
                .arg(img)
                .arg(at));
        };
        m(ROOT, dir.path());
        let g = Self { dir };
        m(BOOT, &g.path().join("boot"));
        g
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RoGuest {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(self.dir.path().join("boot"))
            .status();
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn analyze_json(img: &Path, extra: &[&str]) -> serde_json::Value {
    json(&ok(vmfinal()
        .args(["analyze", "--guest", "--json", "--top", "1000"])
        .args(extra)
        .arg(img)))
}

/// (installed bytes, name) of one package database in the report, largest first.
fn reported(v: &serde_json::Value, manager: &str) -> Vec<(u64, String)> {
    let db = v["guest"]["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|d| d["manager"] == manager)
        .unwrap_or_else(|| panic!("no {manager} database in {}", v["guest"]["packages"]));
    assert_eq!(db["readable"], true, "{db}");
    db["packages"]
        .as_array()
        .expect("list")
        .iter()
        .map(|p| {
            (
                p["installed_bytes"].as_u64().unwrap_or(u64::MAX),
                p["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn sorted(mut v: Vec<(u64, String)>) -> Vec<(u64, String)> {
    v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    v
}

fn du(path: &Path, apparent: bool) -> u64 {
    let o = ok(Command::new("du")
        .arg("-s")
        .arg(if apparent { "-b" } else { "-B1" })
        .arg(path));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du output")
}

fn nodes<'a>(n: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    out.push(n);
    for c in n["children"].as_array().into_iter().flatten() {
        nodes(c, out);
    }
}

fn rel_diff(a: u64, b: u64) -> f64 {
    (a as f64 - b as f64).abs() / (b.max(1) as f64)
}

#[test]
fn debian_report_matches_dpkg_query_du_and_finalize() {
    if !root_ok() || !have("dpkg-query") {
        return;
    }
    let img = image("debian-report");
    let v = analyze_json(&img, &["--depth", "3"]);
    {
        let g = RoGuest::new(&img);
        // Packages: dpkg-query on the mounted guest's database.
        let o = ok(Command::new("dpkg-query")
            .arg(format!("--admindir={}/var/lib/dpkg", g.path().display()))
            .args([
                "-W",
                "-f=${db:Status-Status} ${Installed-Size} ${Package}\n",
            ]));
        let want: Vec<(u64, String)> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.len() == 3 && !matches!(f[0], "not-installed" | "config-files"))
                    .then(|| (f[1].parse::<u64>().unwrap_or(0) * 1024, f[2].to_string()))
            })
            .collect();
        assert!(want.len() >= 10, "dpkg-query listed {want:?}");
        assert_eq!(sorted(reported(&v, "dpkg")), sorted(want.clone()));
        assert_eq!(reported(&v, "dpkg"), sorted(want), "reported largest first");

        // Directory sizes: du of the read-only mount.
        let mut all = Vec::new();
        nodes(&v["guest"]["tree"], &mut all);
        assert!(all.len() > 40, "only {} directories", all.len());
        let (mut worst_alloc, mut worst_app) = (0f64, 0f64);
        for n in all {
            let p = n["path"].as_str().expect("path");
            let host = g.path().join(p.trim_start_matches('/'));
            let (a, b) = (
                n["allocated_bytes"].as_u64().unwrap_or(0),
                n["apparent_bytes"].as_u64().unwrap_or(0),
            );
            let (da, db) = (du(&host, false), du(&host, true));
            let (ea, eb) = (rel_diff(a, da), rel_diff(b, db));
            assert!(ea <= 0.01, "{p}: allocated {a}, du -s says {da}");
            assert!(eb <= 0.01, "{p}: apparent {b}, du -sb says {db}");
            worst_alloc = worst_alloc.max(ea);
            worst_app = worst_app.max(eb);
        }
        eprintln!(
            "du: worst difference {:.4}% allocated, {:.4}% apparent",
            worst_alloc * 100.0,
            worst_app * 100.0
        );
        // Hard links once: the two names of one file count once in /opt/app/share.
        let share = g.path().join("opt/app/share");
        let d = v["guest"]["largest_directories"]
            .as_array()
            .expect("dirs")
            .iter()
            .find(|n| n["path"] == "/opt/app/share")
            .expect("/opt/app/share listed");
        assert_eq!(d["allocated_bytes"].as_u64(), Some(du(&share, false)));
    }

    // Duplicates: libbig.so three times, data.bin twice (the hard link is not a duplicate).
    let dups = &v["guest"]["duplicates"];
    let groups = dups["largest"].as_array().expect("groups");
    let big = groups
        .iter()
        .find(|g| g["paths"].to_string().contains("/opt/app/lib/libbig.so"))
        .expect("libbig group");
    assert_eq!(big["paths"].as_array().map(Vec::len), Some(3));
    assert_eq!(big["saved_bytes"].as_u64(), Some(2 * 1500 * 1024));
    assert!(!dups.to_string().contains("linked-again.bin"), "{dups}");

    // Per-profile savings: one finalize run measures each profile (syncfs,
    // statvfs before and after it on the filesystems it touches); each
    // profile's measured drop equals analyze's plan, net of the blocks its
    // writes take (ssh-hostkeys writes a first-boot unit). ext4 makes it
    // exact; 1% is the bound.
    let plans: Vec<(String, i64, u64)> = v["guest"]["profiles"]
        .as_array()
        .expect("profiles")
        .iter()
        .filter(|p| p["applicable"] == true)
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["freed_bytes"].as_i64().expect("freed_bytes"),
                p["allocated_bytes"].as_u64().expect("allocated_bytes"),
            )
        })
        .collect();
    assert!(plans.iter().filter(|p| p.1 > 0).count() >= 5, "{plans:?}");
    assert!(
        plans.iter().any(|p| p.0 == "ssh-hostkeys" && p.2 > 0),
        "ssh-hostkeys's unit is not priced: {plans:?}"
    );
    let d = tempfile::tempdir().expect("tempdir");
    let copy = d.path().join("copy.raw");
    ok(Command::new("cp")
        .arg("--sparse=always")
        .arg(&img)
        .arg(&copy));
    let html = d.path().join("finalize.html");
    let out = d.path().join("out.qcow2");
    let names: Vec<&str> = plans.iter().map(|p| p.0.as_str()).collect();
    let f = json(&ok(vmfinal()
        .args([
            "finalize",
            "--json",
            "--force",
            "--profiles",
            &names.join(","),
        ])
        .arg(&copy)
        .arg("-o")
        .arg(&out)
        .arg("--report")
        .arg(&html)));
    let mut worst = 0f64;
    let mut exact = 0;
    for (name, planned, allocated) in &plans {
        let p = f["guest"]["profiles"]
            .as_array()
            .expect("profiles")
            .iter()
            .find(|p| p["name"] == name.as_str())
            .unwrap_or_else(|| panic!("finalize ran no {name}"));
        assert_eq!(
            p["freed_bytes"].as_i64(),
            Some(*planned),
            "{name}: finalize planned otherwise than analyze"
        );
        let measured = p["measured_freed_bytes"]
            .as_i64()
            .unwrap_or_else(|| panic!("{name}: no measured_freed_bytes: {p}"));
        let e = (measured - planned).unsigned_abs() as f64 / (planned.unsigned_abs().max(1) as f64);
        eprintln!(
            "{name}: planned {planned} B (writes take {allocated} B), finalize measured {measured} B ({:.4}%) on {}",
            e * 100.0,
            p["measured_filesystems"]
        );
        assert!(
            e <= 0.01,
            "{name}: analyze planned {planned} B, finalize freed {measured} B"
        );
        worst = worst.max(e);
        exact += usize::from(measured == *planned);
    }
    let total = f["guest"]["measured_freed_bytes"]
        .as_i64()
        .expect("measured");
    let planned: i64 = plans.iter().map(|p| p.1).sum();
    assert!(
        rel_diff(total.unsigned_abs(), planned.unsigned_abs()) <= 0.01,
        "analyze planned {planned} B in all, finalize freed {total} B"
    );
    eprintln!(
        "per-profile: worst difference {:.4}% over {} profiles, {exact} exact; total planned {planned}, freed {total}",
        worst * 100.0,
        plans.len()
    );
    // The after-cleaning estimate: a fresh sample of what stays, against
    // the artifact finalize wrote (qcow2, zlib).
    let est = &v["estimate_after_cleaning"];
    assert_eq!(est["method"], "resampled", "{est}");
    let real = std::fs::metadata(&out).expect("artifact").len();
    let guess = est["qcow2_zlib_bytes"].as_u64().expect("estimate");
    eprintln!(
        "estimate after cleaning: zlib {guess} B, finalize wrote {real} B ({:+.2}%)",
        (guess as f64 - real as f64) * 100.0 / real as f64
    );
    assert!(
        rel_diff(guess, real) <= 0.05,
        "estimated {guess} B after cleaning, the artifact is {real} B"
    );
    let page = std::fs::read_to_string(&html).expect("finalize --report page");
    for s in ["before cleaning", "after cleaning", "(actual)"] {
        assert!(page.contains(s), "finalize report lacks {s:?}");
    }
    assert_clean_page(&page);
}

#[test]
fn rpm_and_alpine_package_lists_come_from_their_databases() {
    if !root_ok() || !have("rpm") || !have("rpmbuild") {
        return;
    }
    // A real rpmdb.sqlite, checked against rpm itself.
    let img = image("rpm-sqlite");
    let v = analyze_json(&img, &[]);
    let db = {
        let g = RoGuest::new(&img);
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::copy(
            g.path().join("usr/lib/sysimage/rpm/rpmdb.sqlite"),
            d.path().join("rpmdb.sqlite"),
        )
        .expect("copy rpmdb");
        d
    };
    let o = ok(Command::new("rpm").arg("--dbpath").arg(db.path()).args([
        "-qa",
        "--qf",
        "%{SIZE} %{NAME}\n",
    ]));
    let want: Vec<(u64, String)> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(s, n)| (s.parse().unwrap_or(0), n.to_string()))
        .collect();
    assert_eq!(want.len(), 5, "rpm -qa: {want:?}");
    assert_eq!(reported(&v, "rpm"), sorted(want));
    let text =
        String::from_utf8_lossy(&ok(vmfinal().args(["analyze", "--guest"]).arg(&img)).stdout)
            .into_owned();
    assert!(text.contains("packages (rpm, /usr/lib/sysimage/rpm/rpmdb.sqlite): 5 installed"));
    assert!(text.contains("glibc 2.39-22.fc40"), "{text}");

    // The plain RPM recipe's rpmdb.sqlite is random bytes: unreadable, with why.
    let v = analyze_json(&image("rpm"), &[]);
    let dbs = v["guest"]["packages"].as_array().expect("packages");
    assert_eq!(dbs.len(), 1, "{dbs:?}");
    assert_eq!(dbs[0]["readable"], false);
    assert!(
        dbs[0]["reason"].as_str().unwrap_or("").contains("SQLite"),
        "{}",
        dbs[0]
    );

    // A BerkeleyDB rpm database (rpm before 4.16): not read, and said so.
    let v = analyze_json(&image("rpm-bdb"), &[]);
    let dbs = v["guest"]["packages"].as_array().expect("packages");
    assert_eq!(dbs.len(), 1, "{dbs:?}");
    assert_eq!(dbs[0]["database"], "/var/lib/rpm/Packages");
    assert_eq!(dbs[0]["readable"], false);
    assert!(
        dbs[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("BerkeleyDB"),
        "{}",
        dbs[0]
    );

    // Alpine: lib/apk/db/installed, the I: field.
    let v = analyze_json(&image("alpine"), &[]);
    assert_eq!(
        reported(&v, "apk"),
        vec![
            (31412224, "linux-virt".to_string()),
            (1118208, "openssh-server".to_string()),
            (946176, "busybox".to_string()),
            (630784, "musl".to_string()),
        ]
    );
}

/// Static checks of a report page: the CSP, nothing that loads, guest names escaped.
fn assert_clean_page(page: &str) {
    assert!(page.contains(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
    ));
    for bad in [
        "<script", "://", "src=", "href=", "url(", "@import", "<link",
    ] {
        assert!(!page.contains(bad), "the page contains {bad:?}");
    }
}

/// Runs headless Chromium on `page` in an empty network namespace; returns
/// the console lines it logged and the screenshot path.
fn chromium(page: &Path, shot: &Path) -> Vec<String> {
    let o = ok(Command::new("timeout")
        .args([
            "120",
            "unshare",
            "--net",
            "chromium",
            "--headless",
            "--no-sandbox",
        ])
        .args([
            "--disable-gpu",
            "--hide-scrollbars",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--log-level=0",
            "--window-size=1200,900",
        ])
        .arg(format!(
            "--user-data-dir={}",
            shot.with_extension("profile").display()
        ))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display())));
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect()
}

#[test]
fn html_report_renders_in_chromium_without_console_messages_or_requests() {
    if !root_ok() || !have("chromium") || !have("unshare") {
        return;
    }
    let img = image("debian-report");
    let d = tempfile::tempdir().expect("tempdir");
    let page = d.path().join("report.html");
    let out = ok(vmfinal()
        .args(["analyze", "--guest", "--html"])
        .arg(&page)
        .arg(&img));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("largest directories"), "{text}");
    let html = std::fs::read_to_string(&page).expect("page");
    assert_clean_page(&html);
    // Guest names are HTML-escaped (a directory named `<b>bold<`).
    assert!(
        html.contains("/home/alice/&lt;b&gt;bold&lt;"),
        "escaped name missing"
    );
    assert!(!html.contains("<b>bold"));
    for s in [
        "<svg class=\"tm\"",
        "linux-image-6.1.0-28-cloud-amd64",
        "after cleaning (est.)",
    ] {
        assert!(html.contains(s), "the page lacks {s:?}");
    }

    // Text: a name with quotes is escaped (crate::report::escape).
    let t = ok(vmfinal()
        .args(["analyze", "--guest", "--top", "200"])
        .arg(&img));
    let t = String::from_utf8_lossy(&t.stdout);
    assert!(t.contains("'/home/alice/it\\'s-\"quoted\"&<x>.txt'"), "{t}");

    let shot = d.path().join("report.png");
    let console = chromium(&page, &shot);
    assert!(console.is_empty(), "console messages: {console:?}");
    let png = std::fs::read(&shot).expect("screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let be = |o: usize| u32::from_be_bytes([png[o], png[o + 1], png[o + 2], png[o + 3]]);
    assert_eq!((be(16), be(20)), (1200, 900), "screenshot size");
    if let Ok(keep) = std::env::var("VMFINAL_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("copy screenshot");
    }

    // The checker sees what it must: a page that tries a load and logs.
    let bad = d.path().join("bad.html");
    std::fs::write(
        &bad,
        "<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\"></head><body><img src=\"http://192.0.2.1/x.png\"></body></html>",
    )
    .expect("write");
    let console = chromium(&bad, &d.path().join("bad.png"));
    assert!(
        console
            .iter()
            .any(|l| l.contains("Content Security Policy")),
        "the blocked load was not reported: {console:?}"
    );
}

#[test]
fn interrupted_analyze_guest_leaves_no_mount_loop_or_file() {
    if !root_ok() {
        return;
    }
    let img = image("debian-report");
    let d = tempfile::tempdir().expect("tempdir");
    let page = d.path().join("r.html");
    let mut child = vmfinal()
        .args(["analyze", "--guest", "--html"])
        .arg(&page)
        .arg(&img)
        .env("VMFINAL_TEST_PAUSE", "mount")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut err = child.stderr.take().expect("stderr");
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("paused at mount") {
        use std::io::Read;
        let n = err.read(&mut buf).expect("read stderr");
        assert!(n > 0, "analyze ended before the pause: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // The guest is mounted now (in analyze's private namespace).
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    let mut rest = String::new();
    use std::io::Read;
    let _ = err.read_to_string(&mut rest);
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    assert!(!page.exists(), "a page was written");
    let pid = child.id();
    let loops =
        String::from_utf8_lossy(&run(Command::new("losetup").arg("-a")).stdout).into_owned();
    assert!(!loops.contains(&format!("vmfinal:{pid}")), "{loops}");
    for e in std::fs::read_dir("/run/vmfinal")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(
            !n.starts_with(&format!("{pid}.")),
            "left in /run/vmfinal: {n}"
        );
    }
}
