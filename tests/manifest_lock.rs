//! Parallel builds appending to one Packer manifest lose no entries.

mod common;

use common::*;

#[test]
fn parallel_runs_keep_every_manifest_entry() {
    let d = tempfile::tempdir().unwrap();
    let input = mixed_raw(&d.path().join("in.raw"), 1 << 20, 12);
    let manifest = d.path().join("manifest.json");
    let n = 12;
    let children: Vec<_> = (0..n)
        .map(|i| {
            vmfinal()
                .env("PACKER_BUILD_NAME", format!("b{i}"))
                .args(["compact", "-q", "--threads", "1", "--manifest"])
                .arg(&manifest)
                .arg(&input)
                .arg("-o")
                .arg(d.path().join(format!("o{i}.zst")))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let mut names: Vec<String> = v["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
    want.sort();
    assert_eq!(names, want, "every parallel build's entry is there");
    let mut keep: Vec<String> = (0..n).map(|i| format!("o{i}.zst")).collect();
    keep.extend(["in.raw".to_string(), "manifest.json".to_string()]);
    assert_only(
        d.path(),
        &keep.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
}
