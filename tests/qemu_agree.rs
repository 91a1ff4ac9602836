//! Crafted qcow2 images (ports of qemu-iotests' corruption cases and the
//! audit's traps), judged against QEMU itself: `qemu-img convert -O raw`
//! for reads and `qemu-img check` for checks. vmfinal reads what QEMU reads,
//! refuses what QEMU refuses, and stays within time and memory bounds on
//! tables built to exhaust them.

mod common;

use common::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use vmfinal::image::qcow2::entry::{self, ClusterMapping};

fn rd64(p: &Path, at: u64) -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open(p)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    u64::from_be_bytes(b)
}
fn patch(p: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(bytes, at).unwrap();
}
fn l2_of(p: &Path, l1_index: u64) -> u64 {
    entry::l1_offset(rd64(p, rd64(p, 40) + 8 * l1_index))
}

fn qemu_img(args: &[&str], img: &Path) -> Output {
    run(Command::new("qemu-img").args(args).arg(img))
}

fn create(dir: &Path, name: &str, opts: &str, size: &str, writes: &[&str]) -> PathBuf {
    assert!(have("qemu-img") && have("qemu-io"));
    let p = dir.join(name);
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", opts])
        .arg(&p)
        .arg(size));
    for w in writes {
        ok(Command::new("qemu-io").args(["-c", w]).arg(&p));
    }
    p
}

/// Both read it the same, or both refuse it.
fn reads_agree(img: &Path, dir: &Path) -> bool {
    let q = dir.join("qemu.raw");
    let v = dir.join("vmfinal.raw");
    let _ = std::fs::remove_file(&q);
    let _ = std::fs::remove_file(&v);
    let qr = run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(img)
        .arg(&q));
    let vr = run(vmfinal()
        .args(["expand", "-q", "--format", "qcow2"])
        .arg(img)
        .arg("-o")
        .arg(&v));
    assert!(
        vr.status.code().is_some_and(|c| c != 101),
        "vmfinal crashed: {:?}",
        vr
    );
    match (qr.status.success(), vr.status.success()) {
        (true, true) => {
            let (a, b) = (std::fs::read(&q).unwrap(), std::fs::read(&v).unwrap());
            assert_eq!(a.len(), b.len(), "{}: sizes differ", img.display());
            assert!(
                a == b,
                "{}: content differs from qemu-img convert",
                img.display()
            );
            true
        }
        (false, false) => {
            assert!(!v.exists());
            false
        }
        (q_ok, v_ok) => panic!(
            "{}: qemu-img convert {} but vmfinal {}: {}{}",
            img.display(),
            if q_ok { "reads it" } else { "refuses it" },
            if v_ok { "reads it" } else { "refuses it" },
            String::from_utf8_lossy(&qr.stderr),
            String::from_utf8_lossy(&vr.stderr)
        ),
    }
}

fn check_code(img: &Path) -> (Option<i32>, Option<i32>) {
    let q = qemu_img(&["check", "-q"], img).status.code();
    let v = run(vmfinal().args(["check", "--format", "qcow2"]).arg(img))
        .status
        .code();
    (q, v)
}

/// `image::qcow2::entry` against images `qemu-img` wrote, for every
/// `refcount_bits`: each L1, L2 (plain and compressed) and refcount-table
/// entry decodes to what is there (compressed data inflates to what qemu-io
/// wrote) and encodes back to QEMU's bits; the refcounts decode to one per
/// reference (their sum) and encode back to QEMU's block, byte for byte.
#[test]
fn entry_and_refcount_encodings_agree_with_qemu() {
    let d = tempfile::tempdir().unwrap();
    let cs = 65536u64;
    for order in 0..=6u32 {
        let bits = 1u64 << order;
        let img = create(
            d.path(),
            &format!("r{bits}.qcow2"),
            &format!("refcount_bits={bits},cluster_size=64k"),
            "4M",
            &[
                "write -P 0x11 0 64k",
                "write -c -P 0x22 128k 64k",
                "write -c -P 0x33 1M 64k",
                "write -P 0x44 2M 64k",
            ],
        );
        assert!(qemu_img(&["check", "-q"], &img).status.success());
        let f = std::fs::read(&img).unwrap();
        let be = |at: u64| rd64(&img, at);
        // L1: one table, referenced once.
        let l1e = be(be(40));
        let l2 = entry::l1_offset(l1e);
        assert_eq!(entry::encode_l1(l2), l1e, "refcount_bits {bits}: L1 entry");
        for (gc, byte) in [(0u64, 0x11u8), (2, 0x22), (16, 0x33), (32, 0x44)] {
            let e = be(l2 + 8 * gc);
            let what = format!("refcount_bits {bits}: guest cluster {gc}, entry {e:#x}");
            match entry::decode_entry(e, None, 16, 3).unwrap() {
                ClusterMapping::Standard(off) => {
                    assert!(byte == 0x11 || byte == 0x44, "{what}");
                    assert_eq!(entry::encode_standard(off), e, "{what}");
                    assert!(
                        f[off as usize..(off + cs) as usize]
                            .iter()
                            .all(|&b| b == byte)
                    );
                }
                ClusterMapping::Compressed { offset, len } => {
                    assert!(byte == 0x22 || byte == 0x33, "{what}");
                    assert_eq!(entry::encode_compressed(offset, len, 16), e, "{what}");
                    let end = (offset + len).min(f.len() as u64) as usize;
                    let data = vmfinal::image::qcow2::reader::inflate_cluster(
                        &f[offset as usize..end],
                        cs as usize,
                    )
                    .expect(&what);
                    assert!(data.iter().all(|&b| b == byte), "{what}");
                }
                m => panic!("{what}: {m:?}"),
            }
        }
        // Refcounts: header, L1, refcount table, refcount block, L2 table,
        // two plain and two compressed clusters: 9 references.
        let rte = be(be(48));
        let block = entry::reftable_offset(rte);
        assert_eq!(entry::encode_reftable(block), rte);
        let raw = &f[block as usize..(block + cs) as usize];
        let n = entry::refcounts_per_block(cs, bits);
        let counts: Vec<u64> = (0..n).map(|i| entry::refcount_get(raw, i, bits)).collect();
        assert_eq!(counts[0], 1, "refcount_bits {bits}: the header cluster");
        assert_eq!(counts.iter().sum::<u64>(), 9, "refcount_bits {bits}");
        let mut again = vec![0u8; cs as usize];
        for (i, &c) in counts.iter().enumerate() {
            entry::refcount_set(&mut again, i as u64, bits, c);
        }
        assert!(
            again == raw,
            "refcount_bits {bits}: re-encoded block differs"
        );
    }
}

#[test]
fn extended_l2_subcluster_allocated_and_zero_is_refused_as_qemu_does() {
    let d = tempfile::tempdir().unwrap();
    let img = create(
        d.path(),
        "e.qcow2",
        "extended_l2=on,cluster_size=64k",
        "1M",
        &["write -P 1 0 64k"],
    );
    let l2 = l2_of(&img, 0);
    let bitmap = rd64(&img, l2 + 8);
    patch(&img, l2 + 8, &(bitmap | 1 << 32).to_be_bytes());
    assert!(!reads_agree(&img, d.path()), "both must refuse");
}

#[test]
fn zero_flag_in_a_v2_image_is_refused_as_qemu_does() {
    let d = tempfile::tempdir().unwrap();
    let img = create(
        d.path(),
        "v2.qcow2",
        "compat=0.10",
        "1M",
        &["write -P 1 0 64k"],
    );
    let l2 = l2_of(&img, 0);
    let e = rd64(&img, l2);
    patch(&img, l2, &(e | 1).to_be_bytes());
    assert!(!reads_agree(&img, d.path()), "both must refuse");
}

/// A zstd cluster stored as two frames, and one behind a skippable frame.
#[test]
fn zstd_clusters_of_several_frames_read_as_qemu_reads_them() {
    let d = tempfile::tempdir().unwrap();
    let img = create(
        d.path(),
        "z.qcow2",
        "compression_type=zstd",
        "1M",
        &["write -c -P 0x33 0 64k", "write -c -P 0x44 64k 64k"],
    );
    let l2 = l2_of(&img, 0);
    let mut data = vec![0u8; 65536];
    Rng::new(3).fill(&mut data[..20000]);
    for (i, variant) in [0u64, 1].iter().enumerate() {
        let body: Vec<u8> = if *variant == 0 {
            let mut b = zstd::bulk::compress(&data[..32768], 3).unwrap();
            b.extend(zstd::bulk::compress(&data[32768..], 3).unwrap());
            b
        } else {
            let mut b = vec![0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 9, 9, 9, 9];
            b.extend(zstd::bulk::compress(&data, 3).unwrap());
            b
        };
        let off = std::fs::metadata(&img).unwrap().len();
        patch(&img, off, &body);
        let e = entry::encode_compressed(off, body.len() as u64, 16);
        patch(&img, l2 + 8 * i as u64, &e.to_be_bytes());
    }
    assert!(reads_agree(&img, d.path()), "both must read it");
}

#[test]
fn backing_offset_with_size_zero_is_no_backing_file() {
    let d = tempfile::tempdir().unwrap();
    let img = create(
        d.path(),
        "b.qcow2",
        "cluster_size=64k",
        "1M",
        &["write -P 7 0 128k"],
    );
    patch(&img, 8, &0xff00u64.to_be_bytes());
    patch(&img, 16, &0u32.to_be_bytes());
    assert!(reads_agree(&img, d.path()), "both must read it");
}

#[test]
fn virtual_size_not_a_multiple_of_512_reads_as_qemu_reads_it() {
    let d = tempfile::tempdir().unwrap();
    let img = create(
        d.path(),
        "s.qcow2",
        "cluster_size=64k",
        "1M",
        &["write -P 7 0 1M"],
    );
    patch(&img, 24, &((1u64 << 20) - 100).to_be_bytes());
    assert!(reads_agree(&img, d.path()), "both must read it");
}

#[test]
fn check_sees_a_zero_refcount_under_a_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let img = create(
        d.path(),
        "snap.qcow2",
        "cluster_size=64k",
        "1M",
        &["write -P 1 0 64k"],
    );
    ok(Command::new("qemu-img")
        .args(["snapshot", "-c", "s1"])
        .arg(&img));
    ok(Command::new("qemu-io")
        .args(["-c", "write -P 2 0 64k"])
        .arg(&img));
    assert_eq!(check_code(&img), (Some(0), Some(0)));
    // The active cluster 0 now has its own copy: zero its refcount.
    let host = entry::standard_offset(rd64(&img, l2_of(&img, 0)));
    let block = rd64(&img, rd64(&img, 48));
    patch(&img, block + 2 * (host >> 16), &0u16.to_be_bytes());
    assert_eq!(check_code(&img), (Some(2), Some(2)));
}

#[test]
fn check_walks_persistent_bitmaps() {
    let d = tempfile::tempdir().unwrap();
    let img = create(
        d.path(),
        "bm.qcow2",
        "cluster_size=64k",
        "4M",
        &["write -P 1 0 1M"],
    );
    ok(Command::new("qemu-img")
        .args(["bitmap", "--add"])
        .arg(&img)
        .arg("b0"));
    ok(Command::new("qemu-img")
        .args(["bitmap", "--add", "-g", "512k"])
        .arg(&img)
        .arg("b1"));
    assert_eq!(check_code(&img), (Some(0), Some(0)));
}

#[test]
fn truncated_and_broken_images_are_corrupt_in_check_and_json_says_so() {
    let d = tempfile::tempdir().unwrap();
    let src = mixed_raw(&d.path().join("src.raw"), 8 << 20, 5);
    let img = d.path().join("t.qcow2");
    ok(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&src)
        .arg(&img));
    let len = std::fs::metadata(&img).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let r = run(vmfinal().args(["check", "--json"]).arg(&img));
    assert_eq!(
        r.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).expect("JSON on stdout");
    assert_eq!(v["clean"], false);
    assert!(v["corruptions"].as_u64().unwrap() >= 1);
    // Too short for a header at all.
    std::fs::write(&img, b"QFI\xfb\0\0\0\x03").unwrap();
    let r = run(vmfinal().args(["check", "--json"]).arg(&img));
    assert_eq!(r.status.code(), Some(2));
    serde_json::from_slice::<serde_json::Value>(&r.stdout).expect("JSON on stdout");
    // Not checkable at all: still JSON, exit 1.
    let r = run(vmfinal().args(["check", "--json"]).arg(&src));
    assert_eq!(r.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).expect("JSON on stdout");
    assert!(v["check_error"].as_str().unwrap().contains("raw"), "{v}");
}

/// Runs vmfinal with an address-space limit and a deadline.
fn bounded(args: &[&str], img: &Path, mem_mb: u64, secs: u64) -> Output {
    let start = Instant::now();
    let mut c = Command::new("prlimit");
    c.arg(format!("--as={}", mem_mb << 20))
        .arg("timeout")
        .arg(secs.to_string())
        .arg(env!("CARGO_BIN_EXE_vmfinal"))
        .args(args)
        .arg(img);
    let out = run(&mut c);
    assert!(
        start.elapsed() < Duration::from_secs(secs),
        "took too long: {args:?}"
    );
    assert_ne!(out.status.code(), Some(124), "timed out: {args:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some_and(|c| c != 101) && !err.contains("panicked"),
        "{args:?}: {err}"
    );
    assert!(!err.contains("memory allocation"), "{args:?}: {err}");
    out
}

#[test]
fn huge_tables_are_refused_or_walked_within_bounds() {
    let d = tempfile::tempdir().unwrap();
    // A refcount table of 64 Ki clusters (4 GiB): refused, as QEMU does.
    let img = create(
        d.path(),
        "rt.qcow2",
        "cluster_size=64k",
        "1M",
        &["write -P 1 0 64k"],
    );
    patch(&img, 56, &0x10000u32.to_be_bytes());
    for cmd in ["check", "info"] {
        let o = bounded(&[cmd, "--format", "qcow2"], &img, 1024, 20);
        assert_ne!(o.status.code(), Some(0));
    }
    assert!(!qemu_img(&["info"], &img).status.success());

    // 512-byte clusters, the file sparse-extended to 1 TiB.
    let img = create(
        d.path(),
        "sparse.qcow2",
        "cluster_size=512",
        "1M",
        &["write -P 1 0 64k"],
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let o = bounded(&["check", "--format", "qcow2"], &img, 1024, 60);
    assert!(matches!(o.status.code(), Some(0) | Some(3)), "{o:?}");
    bounded(&["info", "--format", "qcow2"], &img, 1024, 60);
    std::fs::remove_file(&img).unwrap();

    // An L1 of 4 Mi entries (far more than the size needs), all naming one
    // empty L2 table.
    let img = create(
        d.path(),
        "l1.qcow2",
        "cluster_size=512",
        "64k",
        &["write -P 1 0 16k"],
    );
    let l1_off = std::fs::metadata(&img).unwrap().len().next_multiple_of(512);
    let empty_l2 = l1_off + (32 << 20);
    let mut l1 = vec![0u8; 32 << 20];
    for i in 0..(4usize << 20) {
        let e = if i < 2 {
            rd64(&img, rd64(&img, 40) + 8 * i as u64)
        } else {
            entry::encode_l1(empty_l2)
        };
        l1[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
    }
    patch(&img, l1_off, &l1);
    patch(&img, empty_l2, &[0u8; 512]);
    patch(&img, 40, &l1_off.to_be_bytes());
    patch(&img, 36, &(4u32 << 20).to_be_bytes());
    let o = bounded(&["info", "--format", "qcow2"], &img, 1024, 20);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = bounded(&["check", "--format", "qcow2"], &img, 1024, 30);
    assert_eq!(o.status.code(), Some(2));
    // Now the size needs every entry: 4 Mi active entries aliasing one L2.
    patch(&img, 24, &(128u64 << 30).to_be_bytes());
    let o = bounded(&["info", "--format", "qcow2"], &img, 1024, 20);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("same L2 table"), "{e}");
    let o = bounded(&["check", "--format", "qcow2"], &img, 1024, 30);
    assert_eq!(o.status.code(), Some(2));
    bounded(
        &[
            "compact",
            "-q",
            "-o",
            d.path().join("o.qcow2").to_str().unwrap(),
            "--format",
            "qcow2",
        ],
        &img,
        1024,
        20,
    );
    assert!(!d.path().join("o.qcow2").exists());
}

#[test]
fn virtual_sizes_beyond_what_the_output_can_hold_are_refused_before_anything_is_created() {
    let d = tempfile::tempdir().unwrap();
    let big = d.path().join("big.qcow2");
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", "cluster_size=2M"])
        .arg(&big)
        .arg("1E"));
    let out = d.path().join("o.qcow2");
    for (args, name, expect) in [
        (vec!["compact", "-q"], "o.qcow2", "cluster-size"),
        (vec!["compact", "-q", "-O", "zst"], "o.zst", "frame-size"),
    ] {
        let mut c = Command::new("prlimit");
        c.arg("--as=2147483648")
            .arg(env!("CARGO_BIN_EXE_vmfinal"))
            .args(&args)
            .arg(&big)
            .arg("-o")
            .arg(d.path().join(name));
        let e = assert_clean_failure(&run(&mut c));
        assert!(e.contains(expect), "{e}");
        assert_only(d.path(), &["big.qcow2"]);
    }
    // With 2 MiB clusters the L1 fits QEMU's limit: qemu-img reads it.
    ok(vmfinal()
        .args(["compact", "-q", "--cluster-size", "2M"])
        .arg(&big)
        .arg("-o")
        .arg(&out));
    ok(Command::new("qemu-img").args(["check", "-q"]).arg(&out));
    ok(vmfinal().args(["check"]).arg(&out));
    let e = assert_clean_failure(&run(vmfinal()
        .args(["compact", "-q", "--frame-size", "1G"])
        .arg(&big)
        .arg("-o")
        .arg(d.path().join("o.zst"))));
    assert!(e.contains("--frame-size"), "{e}");
}

#[test]
fn names_from_an_image_cannot_reach_the_terminal_raw() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("evil.qcow2");
    ok(Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-F",
            "raw",
            "-b",
            "base\x1b[2J\x1b]0;owned\x07name",
        ])
        .arg(&img)
        .arg("1M"));
    for args in [
        vec!["info"],
        vec!["info", "--json"],
        vec!["compact"],
        vec!["check"],
    ] {
        let r = run(vmfinal()
            .args(&args)
            .arg(&img)
            .arg("-o")
            .arg(d.path().join("o.qcow2")));
        let r = if args[0] == "compact" {
            r
        } else {
            run(vmfinal().args(&args).arg(&img))
        };
        for out in [&r.stdout, &r.stderr] {
            assert!(
                !out.contains(&0x1b) && !out.contains(&0x07),
                "{args:?}: {}",
                String::from_utf8_lossy(out)
            );
        }
        let text =
            String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr);
        assert!(
            text.contains("\\x1b[2J") || text.contains("\\u001b[2J"),
            "{args:?}: {text}"
        );
    }
}
