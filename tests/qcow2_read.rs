//! Criterion 2: vmfinal reads qemu-made qcow2 files exactly as
//! `qemu-img convert -O raw` does: zlib, zstd, v2, 4K and 2M clusters,
//! zero-flag clusters, extended L2, an empty image.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

fn qemu(args: &[&str], dir: &Path) {
    ok(Command::new("qemu-img").current_dir(dir).args(args));
}

fn qemu_io(img: &str, cmds: &[&str], dir: &Path) {
    let mut c = Command::new("qemu-io");
    c.current_dir(dir);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(img);
    ok(&mut c);
}

#[test]
fn reads_match_qemu_img_convert() {
    assert!(have("qemu-img") && have("qemu-io"));
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // Not a multiple of 64K: exercises the partial last cluster.
    mixed_raw(&dir.join("src.raw"), (20 << 20) + 7 * 512, 9);
    let images: Vec<(&str, Vec<&str>)> = vec![
        (
            "zlib.qcow2",
            vec!["convert", "-c", "-O", "qcow2", "src.raw", "zlib.qcow2"],
        ),
        (
            "zstd.qcow2",
            vec![
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                "compression_type=zstd",
                "src.raw",
                "zstd.qcow2",
            ],
        ),
        (
            "v2.qcow2",
            vec![
                "convert",
                "-O",
                "qcow2",
                "-o",
                "compat=0.10",
                "src.raw",
                "v2.qcow2",
            ],
        ),
        (
            "v2c.qcow2",
            vec![
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                "compat=0.10",
                "src.raw",
                "v2c.qcow2",
            ],
        ),
        (
            "c4k.qcow2",
            vec![
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                "cluster_size=4k",
                "src.raw",
                "c4k.qcow2",
            ],
        ),
        (
            "c2m.qcow2",
            vec![
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                "cluster_size=2M",
                "src.raw",
                "c2m.qcow2",
            ],
        ),
        (
            "c2mp.qcow2",
            vec![
                "convert",
                "-O",
                "qcow2",
                "-o",
                "cluster_size=2M",
                "src.raw",
                "c2mp.qcow2",
            ],
        ),
        (
            "ext.qcow2",
            vec![
                "convert",
                "-O",
                "qcow2",
                "-o",
                "extended_l2=on,cluster_size=128k",
                "src.raw",
                "ext.qcow2",
            ],
        ),
        (
            "zero.qcow2",
            vec!["convert", "-O", "qcow2", "src.raw", "zero.qcow2"],
        ),
        (
            "empty.qcow2",
            vec!["create", "-q", "-f", "qcow2", "empty.qcow2", "10M"],
        ),
    ];
    for (_, args) in &images {
        qemu(args, dir);
    }
    // Subclusters written and zeroed inside allocated extended-L2 clusters.
    qemu_io(
        "ext.qcow2",
        &[
            "write -P 0x5a 4k 8k",
            "write -z 256k 64k",
            "write -P 0x11 1M 4k",
        ],
        dir,
    );
    // Zero-flag clusters over allocated data.
    qemu_io("zero.qcow2", &["write -z 0 1M", "write -z 3M 128k"], dir);
    let zmap =
        ok(Command::new("qemu-img")
            .current_dir(dir)
            .args(["map", "--output=json", "zero.qcow2"]));
    assert!(
        String::from_utf8_lossy(&zmap.stdout).contains("\"zero\": true"),
        "fixture has zero clusters"
    );

    for (name, _) in &images {
        let reference = dir.join(format!("{name}.ref.raw"));
        qemu(
            &["convert", "-O", "raw", name, reference.to_str().unwrap()],
            dir,
        );
        let ours = dir.join(format!("{name}.ours.raw"));
        ok(vmfinal()
            .current_dir(dir)
            .args(["expand", "-q", name, "-o"])
            .arg(&ours));
        let (a, b) = (
            std::fs::read(&reference).unwrap(),
            std::fs::read(&ours).unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{name}: size differs");
        assert!(
            a == b,
            "{name}: content differs from qemu-img convert -O raw"
        );
        ok(vmfinal().current_dir(dir).args(["check", name]));
        std::fs::remove_file(&reference).unwrap();
        std::fs::remove_file(&ours).unwrap();
    }

    let info = ok(vmfinal()
        .current_dir(dir)
        .args(["info", "--json", "c4k.qcow2"]));
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["format"], "qcow2");
    assert_eq!(v["details"]["cluster_size"], 4096);
    let info = ok(vmfinal()
        .current_dir(dir)
        .args(["info", "--json", "zstd.qcow2"]));
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["details"]["compression_type"], "zstd");
    let info = ok(vmfinal()
        .current_dir(dir)
        .args(["info", "--json", "v2.qcow2"]));
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["details"]["version"], 2);
}
