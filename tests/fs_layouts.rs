//! Filesystem-aware compaction of the layouts guests use beyond plain
//! partitions: LVM2 (linear LVs with ext4, xfs and swap, a two-segment LV,
//! unused extents), NTFS, btrfs and vfat, on fixtures that real tools
//! built (scripts/make-layout-fixtures.sh: LVM's metadata tools without
//! activation, mkntfs + ntfs-3g, mkfs.btrfs, mkfs.vfat + mtools). Outputs
//! pass qemu-img check; expanded outputs pass the filesystem's own checker
//! and hold the same file trees as the inputs.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const MIB: u64 = 1 << 20;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Builds the fixtures once per test binary; None (skip) only outside CI.
fn fixtures() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    extern "C" fn remove_fixtures() {
        if let Some(Some(d)) = DIR.get() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    DIR.get_or_init(|| {
        if !is_root() {
            assert!(!in_ci(), "CI must run the layout tests as root");
            return None;
        }
        for t in [
            "pvcreate",
            "lvcreate",
            "mkfs.ext4",
            "mkfs.xfs",
            "sfdisk",
            "losetup",
            "rsync",
            "python3",
            "qemu-img",
            "e2fsck",
            "xfs_repair",
        ] {
            if !have(t) {
                return None;
            }
        }
        let d = tempfile::Builder::new()
            .prefix("vmfinal-layouts")
            .tempdir_in("/var/tmp")
            .unwrap()
            .keep();
        // SAFETY: registers a plain extern "C" fn with no captured state.
        unsafe { libc::atexit(remove_fixtures) };
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-layout-fixtures.sh");
        ok(Command::new("bash").arg(script).arg(&d));
        Some(d)
    })
    .as_deref()
}

/// A read-only mount; unmounted on drop.
struct Mount(PathBuf);
impl Mount {
    fn new(dev: &str, dir: &Path, fs: &str, opts: &str) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        ok(Command::new("mount")
            .args(["-t", fs, "-o", opts, dev])
            .arg(dir));
        Mount(dir.to_owned())
    }
}
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn compact_json(input: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let o = ok(vmfinal()
        .args(["compact", "--json", "--force", "--compression", "zstd"])
        .args(extra)
        .arg(input)
        .arg("-o")
        .arg(out));
    ok(Command::new("qemu-img").args(["check", "-q"]).arg(out));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn expand(q: &Path, out: &Path) {
    ok(vmfinal()
        .args(["expand", "-q", "--force"])
        .arg(q)
        .arg("-o")
        .arg(out));
}

/// Copies the disk ranges `pieces` of `img`, in order, into the file `out`.
fn extract(img: &Path, pieces: &[(u64, u64)], out: &Path) {
    use std::os::unix::fs::FileExt;
    let src = std::fs::File::open(img).unwrap();
    let dst = std::fs::File::create(out).unwrap();
    let mut at = 0u64;
    for &(start, len) in pieces {
        let mut buf = vec![0u8; len as usize];
        src.read_exact_at(&mut buf, start).unwrap();
        dst.write_all_at(&buf, at).unwrap();
        at += len;
    }
}

/// rsync -naHAXc finds no difference between two mounted trees.
fn assert_same_tree(a: &Path, b: &Path, what: &str) {
    let r = ok(Command::new("rsync")
        .args(["-naHAXc", "--delete", "--itemize-changes"])
        .arg(format!("{}/", a.display()))
        .arg(format!("{}/", b.display())));
    assert!(
        r.stdout.is_empty(),
        "{what}: trees differ:\n{}",
        String::from_utf8_lossy(&r.stdout)
    );
}

fn lvm_pieces(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("lvm.json")).unwrap()).unwrap()
}

fn pieces_of(v: &serde_json::Value, lv: &str) -> Vec<(u64, u64)> {
    v[lv]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_u64().unwrap()))
        .collect()
}

#[test]
fn lvm_linear_lvs_are_compacted_through_their_segment_maps() {
    let Some(dir) = fixtures() else { return };
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let w = work.path();
    let input = dir.join("lvm.raw");
    let q = w.join("lvm.qcow2");
    let r = compact_json(&input, &q, &[]);
    assert!(r["warnings"].as_array().unwrap().is_empty(), "{r}");
    let pv = &r["filesystems"][1];
    assert_eq!(pv["filesystem"], "LVM2 PV", "{pv}");
    assert_eq!(pv["label"], "vmfixvg");
    let lvs = pv["logical_volumes"].as_array().unwrap();
    let names: Vec<&str> = lvs.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["vmfixvg/root", "vmfixvg/swap", "vmfixvg/data"]);
    let fss: Vec<&str> = lvs
        .iter()
        .map(|l| l["filesystem"].as_str().unwrap())
        .collect();
    assert_eq!(fss, ["ext4", "swap", "xfs"]);
    assert_eq!(lvs[0]["segments"], 2);
    let lv_skipped: u64 = lvs
        .iter()
        .map(|l| l["skipped_bytes"].as_u64().unwrap())
        .sum();
    assert!(
        lvs.iter().all(|l| l["skipped_bytes"].as_u64().unwrap() > 0),
        "{pv}"
    );
    // The unused extents after the data LV (about 22 MiB of random bytes) too.
    let pv_skipped = pv["skipped_bytes"].as_u64().unwrap();
    assert!(
        pv_skipped >= lv_skipped + 20 * MIB,
        "{pv_skipped} vs {lv_skipped}"
    );

    let back = w.join("back.raw");
    expand(&q, &back);
    let pieces = lvm_pieces(dir);
    // Unused extents came back as zeros; the data LV ends at 462 MiB.
    let data_end = pieces_of(&pieces, "data")
        .last()
        .map(|p| p.0 + p.1)
        .unwrap();
    let tail = std::fs::read(&back).unwrap()[data_end as usize..(485 * MIB) as usize].to_vec();
    assert!(tail.iter().all(|&b| b == 0));
    // Each LV, reassembled from the ranges LVM's own tools report, passes
    // its checker and holds the same tree as the filesystem written into it.
    for (lv, fs, img) in [("root", "ext4", "root.img"), ("data", "xfs", "data.img")] {
        let got = w.join(format!("{lv}.img"));
        extract(&back, &pieces_of(&pieces, lv), &got);
        let check = if fs == "xfs" {
            run(Command::new("xfs_repair").args(["-n", "-f"]).arg(&got))
        } else {
            run(Command::new("e2fsck").arg("-fn").arg(&got))
        };
        assert!(
            check.status.success(),
            "{lv}: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        let opts = if fs == "xfs" {
            "ro,loop,norecovery,nouuid"
        } else {
            "ro,loop,noload"
        };
        let a = Mount::new(
            &dir.join(img).to_string_lossy(),
            &w.join(format!("a-{lv}")),
            fs,
            opts,
        );
        let b = Mount::new(&got.to_string_lossy(), &w.join(format!("b-{lv}")), fs, opts);
        assert_same_tree(&a.0, &b.0, lv);
    }
    // The swap LV kept its header.
    let swap = pieces_of(&pieces, "swap")[0].0 as usize;
    let (a, b) = (
        std::fs::read(&input).unwrap(),
        std::fs::read(&back).unwrap(),
    );
    assert_eq!(a[swap..swap + 4096], b[swap..swap + 4096]);
    // The partitions before the PV are untouched in layout.
    assert_eq!(a[..512], b[..512]);
}

#[test]
fn lvm_guest_compacts_within_5_percent_of_the_same_guest_without_lvm() {
    let Some(dir) = fixtures() else { return };
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let (ql, qp, qn) = (
        work.path().join("lvm.qcow2"),
        work.path().join("plain.qcow2"),
        work.path().join("nofs.qcow2"),
    );
    let l = compact_json(&dir.join("lvm.raw"), &ql, &[])["output"]["bytes"]
        .as_u64()
        .unwrap();
    let p = compact_json(&dir.join("plain.raw"), &qp, &[])["output"]["bytes"]
        .as_u64()
        .unwrap();
    let n = compact_json(&dir.join("lvm.raw"), &qn, &["--no-fs-aware"])["output"]["bytes"]
        .as_u64()
        .unwrap();
    eprintln!("lvm {l} bytes, plain {p} bytes, lvm without fs-awareness {n} bytes");
    assert!((l as f64) <= p as f64 * 1.05, "lvm {l} vs plain {p}");
    assert!(l * 3 < n, "{l} vs {n}");
}

#[test]
fn lvm_damaged_metadata_copies_the_pv_whole_with_a_warning() {
    let Some(dir) = fixtures() else { return };
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let bad = work.path().join("bad.raw");
    ok(Command::new("cp")
        .args(["--sparse=always"])
        .arg(dir.join("lvm.raw"))
        .arg(&bad));
    // A byte of the current text metadata: the metadata area header (PV
    // byte 4096) says where it is (raw_locn offset, at header byte 40).
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&bad)
            .unwrap();
        let mda = 33 * MIB + 4096;
        let mut o = [0u8; 8];
        f.read_exact_at(&mut o, mda + 40).unwrap();
        let at = mda + u64::from_le_bytes(o) + 10;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
    }
    let q = work.path().join("bad.qcow2");
    let r = compact_json(&bad, &q, &[]);
    let pv = &r["filesystems"][1];
    assert_eq!(pv["skipped_bytes"], 0, "{pv}");
    let w = r["warnings"].to_string();
    assert!(
        w.contains("checksum mismatch") && w.contains("copied whole"),
        "{w}"
    );
    // The PV partition came back byte for byte.
    let back = work.path().join("back.raw");
    expand(&q, &back);
    ok(Command::new("cmp")
        .args([
            "-i",
            &format!("{}:{}", 33 * MIB, 33 * MIB),
            "-n",
            &(452 * MIB).to_string(),
        ])
        .arg(&bad)
        .arg(&back));
}

#[test]
fn analyze_reports_each_lv() {
    let Some(dir) = fixtures() else { return };
    let o = ok(vmfinal()
        .args(["analyze", "--json"])
        .arg(dir.join("lvm.raw")));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let lvs = v["partitions"][1]["logical_volumes"].as_array().unwrap();
    assert_eq!(lvs.len(), 3);
    for l in lvs {
        assert_eq!(l["kind"], "linear");
        assert!(l["free_not_zero_bytes"].as_u64().unwrap() > MIB, "{l}");
    }
    let o = ok(vmfinal().arg("analyze").arg(dir.join("lvm.raw")));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("LV vmfixvg/root") && text.contains("LV vmfixvg/data"),
        "{text}"
    );
}

/// A read-only loop device over `img` at `off` (+`size`), detached on drop.
fn loop_ro(img: &Path, off: u64, size: u64) -> Loop {
    Loop::new(img, off, size)
}

/// An ntfs-3g (FUSE) read-only mount; unmounted on drop.
struct NtfsMount(PathBuf);
impl NtfsMount {
    fn new(dev: &str, dir: &Path) -> NtfsMount {
        std::fs::create_dir_all(dir).unwrap();
        ok(Command::new("ntfs-3g").args(["-o", "ro", dev]).arg(dir));
        NtfsMount(dir.to_owned())
    }
}
impl Drop for NtfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

const NTFS_AT: u64 = 65 * MIB;
const NTFS_LEN: u64 = 256 * MIB;
const ESP_AT: u64 = MIB;

#[test]
fn ntfs_free_clusters_are_skipped_and_the_volume_comes_back_clean() {
    let Some(dir) = fixtures() else { return };
    for t in ["ntfs-3g", "ntfsfix", "ntfsinfo"] {
        assert!(have(t), "{t} is missing");
    }
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let w = work.path();
    let input = dir.join("win.raw");
    let q = w.join("win.qcow2");
    let r = compact_json(&input, &q, &[]);
    let p = &r["filesystems"][1];
    assert_eq!(p["filesystem"], "ntfs", "{r}");
    assert_eq!(p["label"], "vmfdata");
    assert!(p["skipped_bytes"].as_u64().unwrap() > 200 * MIB, "{p}");
    let whole = compact_json(&input, &w.join("whole.qcow2"), &["--no-fs-aware"]);
    assert!(
        r["output"]["bytes"].as_u64().unwrap() < whole["output"]["bytes"].as_u64().unwrap() / 4,
        "{r} vs {whole}"
    );
    let back = w.join("back.raw");
    expand(&q, &back);
    let lb = loop_ro(&back, NTFS_AT, NTFS_LEN);
    let fix = run(Command::new("ntfsfix").args(["-n", &lb.0]));
    let fix_out = String::from_utf8_lossy(&fix.stdout);
    assert!(
        fix.status.success() && !fix_out.contains("FAILED"),
        "{fix_out}"
    );
    let info = run(Command::new("ntfsinfo").args(["-m", &lb.0]));
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let la = loop_ro(&input, NTFS_AT, NTFS_LEN);
    let a = NtfsMount::new(&la.0, &w.join("a"));
    let b = NtfsMount::new(&lb.0, &w.join("b"));
    let r = ok(Command::new("rsync")
        .args(["-nrlptDc", "--delete", "--itemize-changes"])
        .arg(format!("{}/", a.0.display()))
        .arg(format!("{}/", b.0.display())));
    assert!(
        r.stdout.is_empty(),
        "trees differ:\n{}",
        String::from_utf8_lossy(&r.stdout)
    );
    assert!(a.0.join("random.bin").exists());
}

/// A copy of `src` in `dir` with byte `at` replaced by `f(byte)`.
fn patched(src: &Path, dir: &Path, at: u64, f: impl Fn(u8) -> u8) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let out = dir.join("patched.raw");
    ok(Command::new("cp").arg("--sparse=always").arg(src).arg(&out));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&out)
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[f(b[0])], at).unwrap();
    out
}

#[test]
fn ntfs_with_hibernation_or_a_broken_boot_sector_is_copied_whole() {
    let Some(dir) = fixtures() else { return };
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let w = work.path();
    // Windows hibernated: \hiberfil.sys with a "hibr" header, written by ntfs-3g.
    let hib = w.join("hib.raw");
    ok(Command::new("cp")
        .arg("--sparse=always")
        .arg(dir.join("win.raw"))
        .arg(&hib));
    {
        let l = Loop(
            String::from_utf8_lossy(
                &ok(Command::new("losetup")
                    .args([
                        "-f",
                        "--show",
                        "--offset",
                        &NTFS_AT.to_string(),
                        "--sizelimit",
                        &NTFS_LEN.to_string(),
                    ])
                    .arg(&hib))
                .stdout,
            )
            .trim()
            .to_string(),
        );
        let m = w.join("m");
        std::fs::create_dir_all(&m).unwrap();
        ok(Command::new("ntfs-3g").arg(&l.0).arg(&m));
        let mut h = vec![0u8; 8192];
        h[..4].copy_from_slice(b"hibr");
        let wrote = std::fs::write(m.join("hiberfil.sys"), &h);
        ok(Command::new("umount").arg(&m));
        wrote.unwrap();
    }
    let r = compact_json(&hib, &w.join("hib.qcow2"), &[]);
    assert_eq!(r["filesystems"][1]["skipped_bytes"], 0, "{r}");
    let warn = r["warnings"].to_string();
    assert!(
        warn.contains("hiberfil.sys") && warn.contains("hibernated"),
        "{warn}"
    );
    // ntfs-3g itself refuses it read-write: the same judgement.
    let l = loop_ro(&hib, NTFS_AT, NTFS_LEN);
    let m = w.join("m2");
    std::fs::create_dir_all(&m).unwrap();
    let tried = run(Command::new("ntfs-3g").arg(&l.0).arg(&m));
    if tried.status.success() {
        let _ = Command::new("umount").arg(&m).status();
    }
    let said = String::from_utf8_lossy(&tried.stderr);
    assert!(said.contains("hibernated"), "ntfs-3g: {said}");
    drop(l);
    // The boot sector's NTFS signature broken: no longer NTFS, copied whole.
    let bad = patched(&dir.join("win.raw"), w, NTFS_AT + 3, |b| b ^ 0x20);
    let r = compact_json(&bad, &w.join("bad.qcow2"), &[]);
    assert_eq!(r["filesystems"][1]["skipped_bytes"], 0, "{r}");
}

#[test]
fn vfat_free_clusters_are_skipped_and_the_esp_comes_back_clean() {
    let Some(dir) = fixtures() else { return };
    for t in ["fsck.vfat", "mdir", "mcopy"] {
        assert!(have(t), "{t} is missing");
    }
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let w = work.path();
    let input = dir.join("win.raw");
    let q = w.join("win.qcow2");
    let r = compact_json(&input, &q, &[]);
    let p = &r["filesystems"][0];
    assert_eq!(
        (p["filesystem"].as_str(), p["label"].as_str()),
        (Some("vfat"), Some("VMFESP")),
        "{r}"
    );
    assert!(p["skipped_bytes"].as_u64().unwrap() > 50 * MIB, "{p}");
    let back = w.join("back.raw");
    expand(&q, &back);
    let esp = w.join("esp.img");
    extract(&back, &[(ESP_AT, 64 * MIB)], &esp);
    let fsck = run(Command::new("fsck.vfat").arg("-n").arg(&esp));
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let listing = |img: &Path| {
        let o = ok(Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-/", "-a", "-i"])
            .arg(format!("{}@@{ESP_AT}", img.display()))
            .arg("::/"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let (la, lb) = (listing(&input), listing(&back));
    assert_eq!(la, lb);
    assert!(la.contains("BOOTX64") && !la.contains("GONE"), "{la}");
    for (img, d) in [(&input, "a"), (&back, "b")] {
        std::fs::create_dir_all(w.join(d)).unwrap();
        ok(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-s", "-n", "-i"])
            .arg(format!("{}@@{ESP_AT}", img.display()))
            .arg("::/EFI")
            .arg(w.join(d)));
    }
    ok(Command::new("diff")
        .arg("-r")
        .arg(w.join("a"))
        .arg(w.join("b")));
    // Copies of the FAT that disagree: copied whole.
    let reserved = {
        let b = std::fs::read(&input).unwrap();
        let at = ESP_AT as usize;
        let reserved = u16::from_le_bytes([b[at + 14], b[at + 15]]) as u64;
        let fat = u32::from_le_bytes([b[at + 36], b[at + 37], b[at + 38], b[at + 39]]) as u64;
        (reserved + fat) * 512 + 4 * 5000
    };
    let bad = patched(&input, w, ESP_AT + reserved, |b| b ^ 1);
    let r = compact_json(&bad, &w.join("bad.qcow2"), &[]);
    assert_eq!(r["filesystems"][0]["skipped_bytes"], 0, "{r}");
    assert!(
        r["warnings"].to_string().contains("FAT copy 2 differs"),
        "{r}"
    );
}

#[test]
fn btrfs_unallocated_device_space_is_skipped() {
    let Some(dir) = fixtures() else { return };
    assert!(have("btrfs"), "btrfs-progs is missing");
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let w = work.path();
    let input = dir.join("btrfs.raw");
    let q = w.join("btrfs.qcow2");
    let r = compact_json(&input, &q, &[]);
    let p = &r["filesystems"][0];
    assert_eq!(
        (p["filesystem"].as_str(), p["label"].as_str()),
        (Some("btrfs"), Some("vmfbtrfs")),
        "{r}"
    );
    assert!(p["skipped_bytes"].as_u64().unwrap() > 200 * MIB, "{p}");
    let back = w.join("back.raw");
    expand(&q, &back);
    // Superblock copies (64 KiB and 64 MiB into the partition) came back.
    let (a, b) = (
        std::fs::read(&input).unwrap(),
        std::fs::read(&back).unwrap(),
    );
    for sb in [MIB + 0x10000, MIB + (64 << 20)] {
        let s = sb as usize;
        assert_eq!(a[s..s + 4096], b[s..s + 4096], "superblock copy at {sb}");
        assert_eq!(&b[s + 0x40..s + 0x48], b"_BHRfS_M");
    }
    drop((a, b));
    let lb = loop_ro(&back, MIB, 512 * MIB);
    let check = run(Command::new("btrfs").args(["check", "--readonly", &lb.0]));
    assert!(
        check.status.success(),
        "btrfs check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // The trees: the input's copied out first (both share one fsid, so
    // they are mounted one after the other).
    let copy = w.join("copy");
    let usage = {
        let la = loop_ro(&input, MIB, 512 * MIB);
        let a = Mount::new(&la.0, &w.join("a"), "btrfs", "ro");
        ok(Command::new("rsync")
            .args(["-aHAX"])
            .arg(format!("{}/", a.0.display()))
            .arg(&copy));
        String::from_utf8_lossy(
            &ok(Command::new("btrfs")
                .args(["filesystem", "usage", "-b"])
                .arg(&a.0))
            .stdout,
        )
        .into_owned()
    };
    // btrfs's own figures: unallocated device space (less the first MiB it
    // never allocates) plus data chunk space not used, within one
    // superblock copy of vmfinal's free bytes.
    let num = |after: &str| -> u64 {
        let at = usage
            .find(after)
            .unwrap_or_else(|| panic!("{after} in {usage}"))
            + after.len();
        usage[at..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let expect = num("Device unallocated:") - MIB + num("Data,single: Size:") - num(", Used:");
    let got = p["free_bytes"].as_u64().unwrap();
    assert!(
        got.abs_diff(expect) <= 4096,
        "vmfinal {got} vs btrfs {expect}: {usage}"
    );
    let m = Mount::new(&lb.0, &w.join("b"), "btrfs", "ro");
    assert_same_tree(&copy, &m.0, "btrfs");
    assert!(m.0.join("@home/random.bin").exists());
}

#[test]
fn lvm_lv_spanning_two_pvs_and_a_second_metadata_area() {
    let Some(dir) = fixtures() else { return };
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let w = work.path();
    let input = dir.join("lvm2.raw");
    let q = w.join("lvm2.qcow2");
    let r = compact_json(&input, &q, &[]);
    assert!(r["warnings"].as_array().unwrap().is_empty(), "{r}");
    let (p1, p2) = (&r["filesystems"][0], &r["filesystems"][1]);
    assert_eq!(
        (p1["label"].as_str(), p2["label"].as_str()),
        (Some("vmfix2"), Some("vmfix2"))
    );
    let lvs = p1["logical_volumes"].as_array().unwrap();
    assert_eq!(lvs.len(), 1, "{p1}");
    assert_eq!(
        (lvs[0]["name"].as_str(), lvs[0]["filesystem"].as_str()),
        (Some("vmfix2/big"), Some("ext4"))
    );
    assert!(p2["logical_volumes"].is_null(), "{p2}");
    assert!(
        p1["skipped_bytes"].as_u64().unwrap() > 0 && p2["skipped_bytes"].as_u64().unwrap() > 0,
        "{r}"
    );
    let back = w.join("back.raw");
    expand(&q, &back);
    // Both metadata areas of the first PV (at its start and its end) and
    // the second PV's came back byte for byte: everything before each
    // PV's first extent and the first PV's last MiB.
    let (a, b) = (
        std::fs::read(&input).unwrap(),
        std::fs::read(&back).unwrap(),
    );
    for (s, e) in [(MIB, 2 * MIB), (96 * MIB, 97 * MIB), (97 * MIB, 98 * MIB)] {
        assert_eq!(
            a[s as usize..e as usize],
            b[s as usize..e as usize],
            "bytes {s}..{e}"
        );
    }
    assert!(
        b[(96 * MIB) as usize..(97 * MIB) as usize]
            .iter()
            .any(|&x| x != 0)
    );
    drop((a, b));
    let pieces =
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(dir.join("lvm2.json")).unwrap())
            .unwrap();
    let got = w.join("big.img");
    extract(&back, &pieces_of(&pieces, "big"), &got);
    let check = run(Command::new("e2fsck").arg("-fn").arg(&got));
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let a = Mount::new(
        &dir.join("big.img").to_string_lossy(),
        &w.join("a"),
        "ext4",
        "ro,loop,noload",
    );
    let b = Mount::new(
        &got.to_string_lossy(),
        &w.join("b"),
        "ext4",
        "ro,loop,noload",
    );
    assert_same_tree(&a.0, &b.0, "big");
}
