//! The `--json` reports are a documented interface (docs/json.md): pin their keys.

mod common;

use common::*;

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn compact_json_schema() {
    let d = tempfile::tempdir().unwrap();
    let input = mixed_raw(&d.path().join("in.raw"), 6 << 20, 21);
    let out = ok(vmfinal()
        .args(["compact", "--json"])
        .arg(&input)
        .arg("-o")
        .arg(d.path().join("o.raw")));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(
        keys(&v),
        [
            "command",
            "filesystems",
            "fs_free_skipped",
            "input",
            "output",
            "schema_version",
            "seconds",
            "stats",
            "throughput_bytes_per_second",
            "warnings"
        ]
    );
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["command"], "compact");
    assert_eq!(
        keys(&v["input"]),
        [
            "allocated_bytes",
            "format",
            "host_bytes",
            "path",
            "virtual_size"
        ]
    );
    assert_eq!(
        keys(&v["output"]),
        [
            "bytes",
            "compression",
            "format",
            "level",
            "path",
            "unit_size"
        ]
    );
    assert_eq!(
        keys(&v["stats"]),
        [
            "bytes_read",
            "bytes_skipped",
            "compressed_units",
            "plain_units",
            "zero_units"
        ]
    );
    assert_eq!(v["input"]["virtual_size"], 6 << 20);
    assert_eq!(v["input"]["format"], "raw");
    assert!(
        out.stderr.is_empty(),
        "nothing on stderr with --json: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn info_json_schema() {
    let d = tempfile::tempdir().unwrap();
    let input = mixed_raw(&d.path().join("in.raw"), 6 << 20, 22);
    let out = ok(vmfinal().args(["info", "--json"]).arg(&input));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        keys(&v),
        [
            "allocated_bytes",
            "compact_refuses",
            "details",
            "format",
            "host_bytes",
            "path",
            "schema_version",
            "virtual_size"
        ]
    );
    let a = v["allocated_bytes"].as_u64().unwrap();
    assert!(a > 0 && a < 6 << 20, "the fixture has holes: {a}");
}
