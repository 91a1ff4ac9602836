//! Crafted seekable `.zst` files, judged against `zstd -d`: vmfinal gives
//! exactly the bytes `zstd -d` gives, or refuses the file; claims are
//! checked before memory is spent on them; `check` says which checksums
//! it really verified.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use vmfinal::image::zst::encode_seek_table;

fn frames_file(path: &Path, frames: &[Vec<u8>], table: &[(u32, u32)]) {
    let mut b = Vec::new();
    for f in frames {
        b.extend_from_slice(f);
    }
    b.extend(encode_seek_table(table));
    std::fs::write(path, b).unwrap();
}

/// vmfinal's expand equals `zstd -d`, or vmfinal refuses.
fn agrees_with_zstd(z: &Path, dir: &Path) -> bool {
    let a = dir.join("zstd.raw");
    let b = dir.join("vmfinal.raw");
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    let zr = run(Command::new("zstd")
        .args(["-q", "-d", "-f"])
        .arg(z)
        .arg("-o")
        .arg(&a));
    let vr = run(vmfinal()
        .args(["expand", "-q", "--format", "zst"])
        .arg(z)
        .arg("-o")
        .arg(&b));
    let err = String::from_utf8_lossy(&vr.stderr);
    assert!(
        vr.status.code().is_some_and(|c| c != 101) && !err.contains("panicked"),
        "{err}"
    );
    if vr.status.success() {
        assert!(zr.status.success(), "vmfinal read what zstd -d refuses");
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "bytes differ from zstd -d"
        );
        true
    } else {
        assert!(!b.exists());
        false
    }
}

#[test]
fn a_frame_the_table_calls_empty_is_refused() {
    assert!(have("zstd"));
    let d = tempfile::tempdir().unwrap();
    let one = zstd::bulk::compress(&[7u8; 100_000], 3).unwrap();
    let two = zstd::bulk::compress(&[9u8; 100_000], 3).unwrap();
    let z = d.path().join("e.zst");
    frames_file(
        &z,
        &[one.clone(), two.clone()],
        &[(one.len() as u32, 0), (two.len() as u32, 100_000)],
    );
    assert!(!agrees_with_zstd(&z, d.path()), "must be refused");
    // Sizes that match the frames are read.
    frames_file(
        &z,
        &[one.clone(), two.clone()],
        &[(one.len() as u32, 100_000), (two.len() as u32, 100_000)],
    );
    assert!(agrees_with_zstd(&z, d.path()));
}

fn bounded(args: &[&str], mem_mb: u64, secs: u64) -> Output {
    let start = Instant::now();
    let mut c = Command::new("prlimit");
    c.arg(format!("--as={}", mem_mb << 20))
        .arg(env!("CARGO_BIN_EXE_vmfinal"))
        .args(args);
    let out = run(&mut c);
    assert!(
        start.elapsed() < Duration::from_secs(secs),
        "took too long: {args:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some_and(|c| c != 101) && !err.contains("panicked"),
        "{args:?}: {err}"
    );
    out
}

#[test]
fn a_claimed_4_gib_frame_is_refused_before_allocating() {
    let d = tempfile::tempdir().unwrap();
    // One RLE frame of 64 MiB content...
    let f = zstd::bulk::compress(&vec![0x5au8; 64 << 20], 19).unwrap();
    let z = d.path().join("big.zst");
    // ...that the seek table says holds 4 GiB - 1.
    frames_file(&z, std::slice::from_ref(&f), &[(f.len() as u32, u32::MAX)]);
    let out = d.path().join("o.raw");
    let o = bounded(
        &[
            "expand",
            "-q",
            z.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        1024,
        20,
    );
    let e = assert_clean_failure(&o);
    assert!(e.contains("limit"), "{e}");
    assert_only(d.path(), &["big.zst"]);
}

#[test]
fn the_largest_frames_vmfinal_writes_read_back_in_bounded_memory() {
    let d = tempfile::tempdir().unwrap();
    let raw = mixed_raw(&d.path().join("in.raw"), 160 << 20, 77);
    let z = d.path().join("o.zst");
    ok(vmfinal()
        .args(["compact", "-q", "--frame-size", "64M"])
        .arg(&raw)
        .arg("-o")
        .arg(&z));
    let back = d.path().join("back.raw");
    let o = bounded(
        &[
            "expand",
            "-q",
            "--threads",
            "2",
            z.to_str().unwrap(),
            "-o",
            back.to_str().unwrap(),
        ],
        2048,
        120,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&raw).unwrap() == std::fs::read(&back).unwrap());
}

#[test]
fn check_says_which_checksums_it_verified() {
    let d = tempfile::tempdir().unwrap();
    let data = vec![3u8; 70_000];
    // Frames without content checksums (as zstd --no-check writes them).
    let mut c = zstd::bulk::Compressor::new(3).unwrap();
    c.include_checksum(false).unwrap();
    let f = c.compress(&data).unwrap();
    let z = d.path().join("nock.zst");
    frames_file(
        &z,
        &[f.clone(), f.clone()],
        &[(f.len() as u32, 70_000), (f.len() as u32, 70_000)],
    );
    let r = ok(vmfinal().arg("check").arg(&z));
    let t = String::from_utf8_lossy(&r.stdout);
    assert!(t.contains("no frame carries a content checksum"), "{t}");
    assert!(!t.contains("checksums verified"), "{t}");
    // vmfinal's own frames carry them.
    let raw = mixed_raw(&d.path().join("in.raw"), 2 << 20, 8);
    let own = d.path().join("own.zst");
    ok(vmfinal()
        .args(["compact", "-q"])
        .arg(&raw)
        .arg("-o")
        .arg(&own));
    let r = ok(vmfinal().arg("check").arg(&own));
    assert!(String::from_utf8_lossy(&r.stdout).contains("every frame's content checksum verified"));
    // A seek table with per-frame checksums: a wrong one is corruption.
    let mut b = Vec::new();
    b.extend_from_slice(&f);
    b.extend_from_slice(&0x184D_2A5Eu32.to_le_bytes());
    b.extend_from_slice(&(12u32 + 9).to_le_bytes());
    b.extend_from_slice(&(f.len() as u32).to_le_bytes());
    b.extend_from_slice(&70_000u32.to_le_bytes());
    b.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.push(0x80);
    b.extend_from_slice(&0x8F92_EAB1u32.to_le_bytes());
    let bad = d.path().join("sum.zst");
    std::fs::write(&bad, &b).unwrap();
    let r = run(vmfinal().arg("check").arg(&bad));
    assert_eq!(
        r.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&r.stdout)
    );
    assert!(String::from_utf8_lossy(&r.stdout).contains("checksum"));
}

#[test]
fn info_on_an_empty_terabyte_is_quick() {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("empty.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let z = d.path().join("empty.zst");
    ok(vmfinal()
        .args(["compact", "-q"])
        .arg(&raw)
        .arg("-o")
        .arg(&z));
    let t = Instant::now();
    let r = ok(vmfinal().args(["info", "--json"]).arg(&z));
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "info took {:?}",
        t.elapsed()
    );
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["allocated_bytes"], 0);
    assert_eq!(v["virtual_size"], 1u64 << 40);
}

#[test]
fn a_truncated_zst_is_corrupt_with_a_hint() {
    let d = tempfile::tempdir().unwrap();
    let raw = mixed_raw(&d.path().join("in.raw"), 4 << 20, 9);
    let z = d.path().join("t.zst");
    ok(vmfinal()
        .args(["compact", "-q", "--frame-size", "1M"])
        .arg(&raw)
        .arg("-o")
        .arg(&z));
    let len = std::fs::metadata(&z).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&z)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let r = run(vmfinal().arg("check").arg(&z));
    assert_eq!(r.status.code(), Some(2));
    let e = assert_clean_failure(&run(vmfinal()
        .arg("expand")
        .arg(&z)
        .arg("-o")
        .arg(d.path().join("o.raw"))));
    assert!(e.contains("cut short") && e.contains("zstd -d"), "{e}");
    // A plain (not seekable) .zst is told apart from a truncated one.
    let plain = d.path().join("plain.zst");
    ok(Command::new("zstd")
        .args(["-q", "-f"])
        .arg(&raw)
        .arg("-o")
        .arg(&plain));
    let e = assert_clean_failure(&run(vmfinal().arg("info").arg(&plain)));
    assert!(e.contains("plain .zst") && e.contains("zstd -d"), "{e}");
}

/// Mutations of a small `.zst`: never a crash, and whatever vmfinal reads
/// is exactly what `zstd -d` reads.
#[test]
fn mutated_zst_files_agree_with_zstd_or_are_refused() {
    assert!(have("zstd"));
    let d = tempfile::tempdir().unwrap();
    let raw = mixed_raw(&d.path().join("in.raw"), 512 << 10, 10);
    let z = d.path().join("g.zst");
    ok(vmfinal()
        .args(["compact", "-q", "--frame-size", "64K"])
        .arg(&raw)
        .arg("-o")
        .arg(&z));
    let good = std::fs::read(&z).unwrap();
    let bad = d.path().join("m.zst");
    let mut rng = Rng::new(1234);
    for round in 0..150 {
        let mut b = good.clone();
        let n = 1 + rng.next() % 4;
        for _ in 0..n {
            // Half the mutations hit the seek table, half the frames.
            let i = if round % 2 == 0 {
                b.len() - 1 - (rng.next() % (b.len() as u64).min(200)) as usize
            } else {
                (rng.next() % b.len() as u64) as usize
            };
            b[i] ^= (rng.next() as u8) | 1;
        }
        std::fs::write(&bad, &b).unwrap();
        agrees_with_zstd(&bad, d.path());
        let r = run(vmfinal().arg("check").arg(&bad));
        assert!(r.status.code().is_some_and(|c| c != 101));
    }
}
