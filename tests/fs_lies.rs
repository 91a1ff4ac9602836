//! Filesystem-aware compaction never loses what a repair would keep, even
//! when one free-space source lies while staying self-consistent.
//! scripts/make-fs-lies.sh builds every class of lie (ext2/3/4 bitmaps with
//! counts and checksums fixed up, a stale bitmap checksum, an unknown
//! feature bit; xfs free-space trees edited with xfs_db; stale swap
//! signatures and hibernation images; overlapping partitions, partitions
//! over the GPT or past the end of the disk). Each image is compacted to
//! qcow2 (`qemu-img check`ed), expanded by `qemu-img convert`, and judged
//! partition by partition by tools vmfinal did not write: the input's and
//! the output's filesystems are repaired (`e2fsck -fy`, `xfs_repair`;
//! `btrfs check --readonly` for btrfs) and their file trees compared
//! (`rsync -naHAXc --delete`); regions no repair tool reads (hibernation
//! images, the area past a swap header's last page, the backup GPT) are
//! compared byte for byte. Control partitions without a lie must still be
//! skipped.
//!
//! `VMFINAL_LIES_BIN=/path/to/vmfinal` runs the same judgement on another
//! build (e.g. the one before the cross-checks, which fails it).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The vmfinal under test.
fn bin() -> Command {
    match std::env::var_os("VMFINAL_LIES_BIN") {
        Some(b) => Command::new(b),
        None => vmfinal(),
    }
}

/// Builds the lies once per test binary; None (skip) only outside CI.
fn lies() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let tools = [
        "mkfs.ext4",
        "mkfs.xfs",
        "mkfs.btrfs",
        "btrfs",
        "debugfs",
        "xfs_db",
        "xfs_repair",
        "e2fsck",
        "mkswap",
        "losetup",
        "sfdisk",
        "rsync",
        "setfattr",
        "python3",
        "qemu-img",
    ];
    fixture_dir(
        &DIR,
        "vmfinal-lies",
        "make-fs-lies.sh",
        &tools,
        "filesystem",
    )
}

/// One filesystem of a lie image, from NAME.layout.
struct Part {
    index: u64,
    off: u64,
    size: u64,
    kind: String,
    /// vmfinal must still skip free space here (a control).
    skip: bool,
}

fn layout(dir: &Path, name: &str) -> Vec<Part> {
    let text = std::fs::read_to_string(dir.join(format!("{name}.layout"))).unwrap();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Part {
                index: f[0].parse().unwrap(),
                off: f[1].parse().unwrap(),
                size: f[2].parse().unwrap(),
                kind: f[3].to_string(),
                skip: f[4] == "skip",
            }
        })
        .collect()
}

/// A read-only mount of part of an image (its own loop device); undone on drop.
struct Mount(tempfile::TempDir);
impl Mount {
    fn new(img: &Path, p: &Part) -> Mount {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let extra = match p.kind.as_str() {
            "xfs" => ",norecovery,nouuid",
            "ext4" => ",noload",
            _ => "",
        };
        ok(Command::new("mount")
            .args(["-t", &p.kind, "-o"])
            .arg(format!(
                "ro,loop,offset={},sizelimit={}{extra}",
                p.off, p.size
            ))
            .arg(img)
            .arg(dir.path()));
        Mount(dir)
    }
}
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

fn read_range(img: &Path, off: u64, len: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(img).unwrap();
    let mut b = vec![0u8; len as usize];
    f.read_exact_at(&mut b, off).unwrap();
    b
}

/// Repairs the filesystem of `p` in `img` (a copy) in place; returns the
/// tool's report for the failure message.
fn repair(img: &Path, p: &Part) -> Result<String, String> {
    let lo = Loop::rw(img, p.off, p.size);
    let (out, good) = match p.kind.as_str() {
        "ext4" => {
            let o = run(Command::new("e2fsck").args(["-fy", &lo.0]));
            // 0: clean, 1/2: errors fixed; 4 and up: left uncorrected.
            let good = o.status.code().is_some_and(|c| c < 4);
            (o, good)
        }
        "xfs" => {
            let o = run(Command::new("xfs_repair").arg(&lo.0));
            let good = o.status.success();
            (o, good)
        }
        "btrfs" => {
            let o = run(Command::new("btrfs").args(["check", "--readonly", &lo.0]));
            let good = o.status.success();
            (o, good)
        }
        k => unreachable!("{k}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if good { Ok(text) } else { Err(text) }
}

/// The file trees of `p` in `a` and `b` are the same (content, modes,
/// owners, times, links, xattrs, ACLs). The input's tree is copied out
/// first, so the two never need mounting at once (btrfs copies share a
/// UUID the kernel will not mount twice).
fn same_tree(a: &Path, b: &Path, p: &Part, scratch: &Path) -> Result<(), String> {
    let copy = scratch.join(format!("tree{}", p.index));
    {
        let ma = Mount::new(a, p);
        ok(Command::new("cp").arg("-a").arg(ma.0.path()).arg(&copy));
    }
    let mb = Mount::new(b, p);
    let r = ok(Command::new("rsync")
        .args(["-naHAXc", "--delete", "--itemize-changes"])
        .arg(format!("{}/", mb.0.path().display()))
        .arg(format!("{}/", copy.display())));
    let _ = std::fs::remove_dir_all(&copy);
    if r.stdout.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "file trees differ after repair:\n{}",
            String::from_utf8_lossy(&r.stdout)
        ))
    }
}

/// Judges one partition; Err says what was lost.
fn judge(input: &Path, output: &Path, p: &Part, scratch: &Path) -> Result<(), String> {
    match p.kind.as_str() {
        "bytes" => {
            if read_range(input, p.off, p.size) != read_range(output, p.off, p.size) {
                return Err("bytes differ".into());
            }
            Ok(())
        }
        "swap" => {
            let hdr = read_range(input, p.off, 4096);
            let pages = u32::from_le_bytes([hdr[1028], hdr[1029], hdr[1030], hdr[1031]]) as u64 + 1;
            let tail = (pages * 4096).min(p.size);
            let same = |off: u64, len: u64| {
                read_range(input, p.off + off, len) == read_range(output, p.off + off, len)
            };
            if !same(0, 4096) {
                return Err("the swap header changed".into());
            }
            if !same(tail, p.size - tail) {
                return Err(format!(
                    "bytes after the swap area's last page ({tail}..{}) changed",
                    p.size
                ));
            }
            Ok(())
        }
        _ => {
            let ri = repair(input, p).map_err(|e| format!("repairing the input failed: {e}"))?;
            let ro = repair(output, p).map_err(|e| format!("repairing the output failed: {e}"))?;
            if p.kind == "btrfs" && ri != ro {
                return Err(format!(
                    "btrfs check disagrees:\ninput:\n{ri}\noutput:\n{ro}"
                ));
            }
            same_tree(input, output, p, scratch)
        }
    }
}

fn check_lies(name: &str) {
    let Some(dir) = lies() else { return };
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let w = work.path();
    // Repairs change what they check: work on copies.
    let input = w.join("in.raw");
    ok(Command::new("cp")
        .args(["--sparse=always"])
        .arg(dir.join(format!("{name}.raw")))
        .arg(&input));
    let q = w.join("out.qcow2");
    let o = ok(bin()
        .args(["compact", "--json", "--force", "--compression", "zstd"])
        .arg(&input)
        .arg("-o")
        .arg(&q));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    ok(Command::new("qemu-img").args(["check", "-q"]).arg(&q));
    let output = w.join("out.raw");
    ok(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&q)
        .arg(&output));
    let mut failures = Vec::new();
    for p in layout(dir, name) {
        if let Err(e) = judge(&input, &output, &p, w) {
            failures.push(format!("partition {} ({}): {e}", p.index, p.kind));
        }
        if p.skip {
            let fs_aware = report["filesystems"]
                .as_array()
                .and_then(|v| v.iter().find(|f| f["index"] == p.index))
                .is_some_and(|f| f["fs_aware"] == true);
            if !fs_aware {
                failures.push(format!(
                    "partition {} ({}): a control without a lie was not skipped: {report}",
                    p.index, p.kind
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: what a repair would keep was lost:\n{}\nwarnings: {}",
        failures.join("\n"),
        report["warnings"]
    );
}

#[test]
fn ext_bitmap_lies_lose_nothing() {
    check_lies("ext-lies");
}

#[test]
fn xfs_free_space_lies_lose_nothing() {
    check_lies("xfs-lies");
}

#[test]
fn stale_swap_signatures_and_hibernation_images_lose_nothing() {
    check_lies("swap-lies");
}

#[test]
fn overlapping_partitions_lose_nothing() {
    check_lies("overlap");
}

#[test]
fn a_partition_over_the_gpt_loses_nothing() {
    check_lies("over-gpt");
}

#[test]
fn a_partition_past_the_end_loses_nothing() {
    check_lies("past-end");
}

/// mtools on `img` (no vfat mount on this kernel).
fn mtools(tool: &str, img: &Path) -> Command {
    let mut c = Command::new(tool);
    c.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(img);
    c
}

/// A FAT image made by mkfs.vfat with files copied in by mcopy: `/SUB/` holds
/// `victim.bin` (random bytes, long name), the root holds `KEEP.BIN`, and a
/// deleted file leaves non-zero free clusters. Returns the file bytes.
fn fat_image(img: &Path, fat: &str, mib: u64, scratch: &Path) -> Vec<u8> {
    let f = std::fs::File::create(img).unwrap();
    f.set_len(mib << 20).unwrap();
    ok(Command::new("mkfs.vfat").args(["-F", fat]).arg(img));
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ mib;
    let data: Vec<u8> = (0..(mib << 20) / 8)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let src = scratch.join("data.bin");
    std::fs::write(&src, &data).unwrap();
    ok(mtools("mcopy", img).arg(&src).arg("::/GONE.BIN"));
    ok(mtools("mmd", img).arg("::/SUB"));
    ok(mtools("mcopy", img).arg(&src).arg("::/SUB/victim.bin"));
    ok(mtools("mcopy", img).arg(&src).arg("::/KEEP.BIN"));
    ok(mtools("mdel", img).arg("::/GONE.BIN"));
    data
}

/// Compacts `img` to qcow2 and expands it with qemu-img; returns the JSON
/// report and the expanded image.
fn compact_expand(img: &Path, w: &Path) -> (serde_json::Value, PathBuf) {
    let q = w.join("out.qcow2");
    let o = ok(bin()
        .args(["compact", "--json", "--force", "--format", "raw"])
        .arg(img)
        .arg("-o")
        .arg(&q));
    ok(Command::new("qemu-img").args(["check", "-q"]).arg(&q));
    let out = w.join("out.raw");
    ok(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&q)
        .arg(&out));
    (serde_json::from_slice(&o.stdout).unwrap(), out)
}

/// Where the image's state before the lie is kept.
fn orig_of(img: &Path) -> PathBuf {
    img.with_extension("orig")
}

/// vfat: both FATs edited alike so a file's clusters read free (or its
/// chain is cut short) while the directory still points at them. The FATs
/// agree with each other; only the directory walk shows the lie. mtools
/// reading the expanded output must give the file's bytes back, and the
/// warning must name fsck.fat; the honest image must still be skipped.
#[test]
fn fat_chain_lies_lose_nothing() {
    let tools = [
        "mkfs.vfat",
        "fsck.fat",
        "mcopy",
        "mmd",
        "mdel",
        "mshowfat",
        "python3",
        "qemu-img",
    ];
    if let Some(t) = tools.iter().find(|t| !have(t)) {
        assert!(!in_ci(), "{t} is missing");
        eprintln!("skipped: {t} is missing");
        return;
    }
    let lie = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fat-free-lie.py");
    let mut failures = Vec::new();
    for (fat, mib, path, extra) in [
        ("12", 8, "::/SUB/victim.bin", None),
        ("16", 64, "::/SUB/victim.bin", None),
        ("32", 64, "::/SUB/victim.bin", None),
        ("32", 64, "::/KEEP.BIN", Some("--keep-first")),
        ("16", 64, "::/SUB", None),
        ("32", 64, "", None),
    ] {
        let case = format!("FAT{fat} {mib} MiB, {path} {extra:?}");
        let work = tempfile::tempdir_in("/var/tmp").unwrap();
        let w = work.path();
        let img = w.join("in.raw");
        let data = fat_image(&img, fat, mib, w);
        std::fs::copy(&img, orig_of(&img)).unwrap();
        if !path.is_empty() {
            ok(Command::new("python3")
                .arg(&lie)
                .arg(&img)
                .arg(path)
                .args(extra));
        }
        let (report, out) = compact_expand(&img, w);
        let fs = &report["filesystems"][0];
        let warning = fs["warning"].as_str().unwrap_or("").to_string();
        if path.is_empty() {
            // The honest control: its deleted file's clusters are skipped.
            if fs["fs_aware"] != true || fs["skipped_bytes"].as_u64().unwrap_or(0) == 0 {
                failures.push(format!("{case}: the honest FAT was not skipped: {fs}"));
            }
            let o = run(Command::new("fsck.fat").arg("-n").arg(&out));
            if !o.status.success() {
                failures.push(format!("{case}: fsck.fat -n on the output failed"));
            }
        } else if !warning.contains("fsck.fat") || fs["skipped_bytes"] != 0 {
            failures.push(format!(
                "{case}: no copy-whole warning naming fsck.fat: {fs}"
            ));
        }
        // Undo the lie in the output (every byte the edit changed gets its
        // value from before the edit): if vmfinal kept the clusters, fsck.fat
        // finds the output clean and mtools reads the files back whole.
        let before = std::fs::read(orig_of(&img)).unwrap();
        let lied = std::fs::read(&img).unwrap();
        let mut fixed = std::fs::read(&out).unwrap();
        for (k, b) in fixed.iter_mut().enumerate() {
            if lied[k] != before[k] {
                *b = before[k];
            }
        }
        std::fs::write(&out, &fixed).unwrap();
        let o = run(Command::new("fsck.fat").arg("-n").arg(&out));
        if !o.status.success() {
            failures.push(format!(
                "{case}: fsck.fat -n on the output with the lie undone: {}",
                String::from_utf8_lossy(&o.stdout)
            ));
        }
        for file in ["::/SUB/victim.bin", "::/KEEP.BIN"] {
            let dst = w.join("got.bin");
            let _ = std::fs::remove_file(&dst);
            let o = run(mtools("mcopy", &out).arg(file).arg(&dst));
            if !o.status.success() || std::fs::read(&dst).ok().as_ref() != Some(&data) {
                failures.push(format!("{case}: {file} lost in the output"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// btrfs inside a data chunk: a data extent's EXTENT_ITEM shrunk and its
/// block group's `used` lowered to match (scripts/btrfs-extent-lie.py, CRC
/// fixed), so the extent tree adds up but calls the extent's tail free; the
/// checksum tree still covers it. Built by `mkfs.btrfs --rootdir` (no
/// mount), judged by `btrfs restore` of the expanded output (no mount) and
/// `cmp`; the honest image must stay clean (`btrfs check --readonly`) and
/// skipped.
#[test]
fn btrfs_extent_tree_lie_loses_nothing() {
    let tools = ["mkfs.btrfs", "btrfs", "python3", "qemu-img"];
    if let Some(t) = tools.iter().find(|t| !have(t)) {
        assert!(!in_ci(), "{t} is missing");
        eprintln!("skipped: {t} is missing");
        return;
    }
    let lie = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/btrfs-extent-lie.py");
    let mut failures = Vec::new();
    for lying in [true, false] {
        let work = tempfile::tempdir_in("/var/tmp").unwrap();
        let w = work.path();
        let root = w.join("root");
        std::fs::create_dir(&root).unwrap();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..3_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        std::fs::write(root.join("victim.bin"), &data).unwrap();
        let img = w.join("in.raw");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        ok(Command::new("mkfs.btrfs")
            .args(["-q", "-f", "-r"])
            .arg(&root)
            .arg(&img));
        if lying {
            ok(Command::new("python3").arg(&lie).arg(&img));
        }
        let (report, out) = compact_expand(&img, w);
        let fs = &report["filesystems"][0];
        let warning = fs["warning"].as_str().unwrap_or("");
        if lying && !(warning.contains("checksum") && fs["skipped_bytes"] == 0) {
            failures.push(format!("lie: not copied whole with a warning: {fs}"));
        }
        if !lying {
            if !warning.is_empty() || fs["skipped_bytes"].as_u64().unwrap_or(0) == 0 {
                failures.push(format!("honest: not skipped: {fs}"));
            }
            let o = run(Command::new("btrfs")
                .args(["check", "--readonly"])
                .arg(&out));
            if !o.status.success() {
                failures.push("honest: btrfs check --readonly of the output failed".into());
            }
        }
        let rest = w.join("restored");
        std::fs::create_dir(&rest).unwrap();
        run(Command::new("btrfs").arg("restore").arg(&out).arg(&rest));
        if std::fs::read(rest.join("victim.bin")).ok() != Some(data) {
            failures.push(format!(
                "{}: victim.bin restored from the output differs",
                if lying { "lie" } else { "honest" }
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
