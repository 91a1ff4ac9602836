//! `--checksum sha256` and `--manifest`: the files pipelines consume.

mod common;

use common::*;

#[test]
fn checksum_and_manifest() {
    let d = tempfile::tempdir().unwrap();
    let input = mixed_raw(&d.path().join("in.raw"), 8 << 20, 11);
    let out = d.path().join("out.raw");
    let manifest = d.path().join("manifest.json");
    for i in 0..2 {
        ok(vmfinal()
            .env("PACKER_BUILD_NAME", "golden")
            .env("PACKER_BUILDER_TYPE", "qemu")
            .env("PACKER_RUN_UUID", "0b5b7c1e-0000-4000-8000-000000000001")
            .args([
                "compact",
                "-q",
                "--force",
                "--checksum",
                "sha256",
                "--manifest",
            ])
            .arg(&manifest)
            .arg(&input)
            .arg("-o")
            .arg(&out));
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        let builds = v["builds"].as_array().unwrap();
        assert_eq!(builds.len(), i + 1, "one entry appended per run");
        let b = &builds[i];
        assert_eq!(b["name"], "golden");
        assert_eq!(b["builder_type"], "qemu");
        assert_eq!(b["packer_run_uuid"], "0b5b7c1e-0000-4000-8000-000000000001");
        assert_eq!(v["last_run_uuid"], "0b5b7c1e-0000-4000-8000-000000000001");
        assert_eq!(
            b["files"][0]["size"].as_u64().unwrap(),
            std::fs::metadata(&out).unwrap().len()
        );
        assert!(b["custom_data"]["output_bytes"].as_u64().is_some());
    }
    // sha256sum -c accepts it, run from the artifact's directory.
    ok(std::process::Command::new("sha256sum")
        .current_dir(d.path())
        .args(["-c", "out.raw.sha256"]));
}
