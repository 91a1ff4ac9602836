//! Criteria 1 and 3 of the converter: every qcow2 we write passes
//! `qemu-img check` and `qemu-img compare` against its source (both codecs,
//! 4K/64K/2M clusters, raw and qcow2 inputs); `compact` then `expand` gives
//! the input back byte for byte as a sparse file; every `.zst` passes
//! `zstd -t` and `zstd -d` restores the input.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn qemu_img_ok(args: &[&str], paths: &[&Path]) {
    let mut c = Command::new("qemu-img");
    c.args(args).args(paths);
    ok(&mut c);
}

fn assert_same_file(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(
        x.len(),
        y.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    assert!(x == y, "{} and {} differ", a.display(), b.display());
}

/// A raw input whose size is not a multiple of 64K (but is of 512).
fn raw_input(dir: &Path) -> PathBuf {
    mixed_raw(&dir.join("in.raw"), (24 << 20) + 3 * 512, 7)
}

fn compact_qcow2_and_judge(input: &Path, dir: &Path, tag: &str) {
    for codec in ["zlib", "zstd"] {
        for cs in ["4K", "64K", "2M"] {
            let out = dir.join(format!("{tag}-{codec}-{cs}.qcow2"));
            ok(vmfinal()
                .args([
                    "compact",
                    "-q",
                    "--compression",
                    codec,
                    "--cluster-size",
                    cs,
                ])
                .arg(input)
                .arg("-o")
                .arg(&out));
            qemu_img_ok(&["check", "-q"], &[&out]);
            qemu_img_ok(&["compare", "-q"], &[input, &out]);
            ok(vmfinal().arg("check").arg(&out));
            let info = ok(Command::new("qemu-img")
                .args(["info", "--output=json"])
                .arg(&out));
            let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
            assert_eq!(
                v["format-specific"]["data"]["compression-type"],
                codec,
                "{}",
                out.display()
            );
            std::fs::remove_file(&out).unwrap();
        }
    }
}

#[test]
fn qcow2_from_raw_passes_qemu_check_and_compare() {
    assert!(have("qemu-img"));
    let d = tempfile::tempdir().unwrap();
    let input = raw_input(d.path());
    compact_qcow2_and_judge(&input, d.path(), "raw");
}

#[test]
fn qcow2_from_qcow2_passes_qemu_check_and_compare() {
    assert!(have("qemu-img"));
    let d = tempfile::tempdir().unwrap();
    let raw = raw_input(d.path());
    for (name, opts) in [
        ("plain.qcow2", vec!["-O", "qcow2"]),
        ("zlib.qcow2", vec!["-c", "-O", "qcow2"]),
        (
            "zstd.qcow2",
            vec![
                "-c",
                "-O",
                "qcow2",
                "-o",
                "compression_type=zstd,cluster_size=16k",
            ],
        ),
    ] {
        let q = d.path().join(name);
        let mut c = Command::new("qemu-img");
        c.arg("convert").args(&opts).arg(&raw).arg(&q);
        ok(&mut c);
        compact_qcow2_and_judge(&q, d.path(), name);
    }
}

#[test]
fn compact_expand_round_trip_is_exact_and_sparse() {
    let d = tempfile::tempdir().unwrap();
    let input = raw_input(d.path());
    // --compression chooses the qcow2 codec; a .zst is always zstd.
    for (out, codecs) in [("o.qcow2", &["zlib", "zstd"][..]), ("o.zst", &[""][..])] {
        for codec in codecs {
            let o = d.path().join(out);
            let mut args = vec!["compact", "-q", "--force"];
            if !codec.is_empty() {
                args.extend(["--compression", codec]);
            }
            ok(vmfinal().args(&args).arg(&input).arg("-o").arg(&o));
            let back = d.path().join("back.raw");
            ok(vmfinal()
                .args(["expand", "-q", "--force"])
                .arg(&o)
                .arg("-o")
                .arg(&back));
            assert_same_file(&input, &back);
            assert!(
                allocated(&back) <= allocated(&input),
                "{out}: expanded raw is not sparse: {} > {}",
                allocated(&back),
                allocated(&input)
            );
        }
    }
}

#[test]
fn zst_passes_zstd_test_and_decompresses_to_input() {
    assert!(have("zstd"));
    let d = tempfile::tempdir().unwrap();
    let input = raw_input(d.path());
    for fs in ["64K", "1M", "8M"] {
        let o = d.path().join(format!("o-{fs}.zst"));
        ok(vmfinal()
            .args(["compact", "-q", "--frame-size", fs])
            .arg(&input)
            .arg("-o")
            .arg(&o));
        ok(Command::new("zstd").args(["-q", "-t"]).arg(&o));
        let plain = d.path().join("plain.raw");
        ok(Command::new("zstd")
            .args(["-q", "-d", "-f"])
            .arg(&o)
            .arg("-o")
            .arg(&plain));
        assert_same_file(&input, &plain);
        ok(vmfinal().arg("check").arg(&o));
    }
}

#[test]
fn empty_and_all_hole_disks() {
    assert!(have("qemu-img") && have("zstd"));
    let d = tempfile::tempdir().unwrap();
    let empty = d.path().join("empty.raw");
    std::fs::File::create(&empty).unwrap();
    let holes = d.path().join("holes.raw");
    std::fs::File::create(&holes)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    for input in [&empty, &holes] {
        let q = d.path().join("o.qcow2");
        // An empty file is a disk only when --format raw says so.
        ok(vmfinal()
            .args(["compact", "-q", "--force", "--format", "raw"])
            .arg(input)
            .arg("-o")
            .arg(&q));
        qemu_img_ok(&["check", "-q"], &[&q]);
        qemu_img_ok(&["compare", "-q"], &[input, &q]);
        let z = d.path().join("o.zst");
        ok(vmfinal()
            .args(["compact", "-q", "--force", "--format", "raw"])
            .arg(input)
            .arg("-o")
            .arg(&z));
        ok(Command::new("zstd").args(["-q", "-t"]).arg(&z));
        let back = d.path().join("back.raw");
        ok(vmfinal()
            .args(["expand", "-q", "--force"])
            .arg(&z)
            .arg("-o")
            .arg(&back));
        assert_same_file(input, &back);
        assert_eq!(allocated(&back), 0);
    }
}
