//! What vmfinal tells the user at the end: the one-line human summary
//! (stderr) and the documented `--json` reports (stdout, schema in
//! `docs/json.md`). Progress while it works is `progress`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::image::ImageFormat;
use crate::pipeline::PipelineStats;
pub use crate::text::{escape, escape_bytes, human_bytes, note, print_json, print_stdout};

/// Version of the JSON report schema; bumped on any incompatible change.
pub const JSON_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    pub path: PathBuf,
    pub format: ImageFormat,
    pub virtual_size: u64,
    /// Guest bytes that are allocated (not holes / unallocated clusters).
    pub allocated_bytes: u64,
    /// Bytes the file occupies on the host.
    pub host_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputSummary {
    pub path: PathBuf,
    pub format: ImageFormat,
    /// File length (qcow2, zst) or allocated bytes (sparse raw).
    pub bytes: u64,
    pub compression: Option<String>,
    pub level: Option<i32>,
    /// Cluster size (qcow2), frame size (zst) or zero granularity (raw).
    pub unit_size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConvertReport {
    pub input: ImageSummary,
    pub output: OutputSummary,
    pub stats: PipelineStats,
    /// Allocated guest bytes that filesystem free-space maps let us skip.
    pub fs_free_skipped: u64,
    pub filesystems: Vec<serde_json::Value>,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

impl ConvertReport {
    /// The `--json` document.
    pub fn to_json(&self, command: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("schema_version".into(), JSON_SCHEMA_VERSION.into());
            o.insert("command".into(), command.into());
            o.insert(
                "throughput_bytes_per_second".into(),
                (self.throughput() as u64).into(),
            );
        }
        v
    }

    /// Guest bytes per second over the whole virtual disk.
    pub fn throughput(&self) -> f64 {
        if self.seconds > 0.0 {
            self.input.virtual_size as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// One line for humans.
    pub fn summary_line(&self) -> String {
        let o = &self.output;
        let kind = match &o.compression {
            Some(c) => format!("{}/{}", o.format, c),
            None => o.format.to_string(),
        };
        let base = self.input.allocated_bytes.max(1);
        format!(
            "{} -> {} ({kind}): {} of {} allocated ({:.1}%), {} virtual, {:.1} s, {}/s",
            stdio_name(&self.input.path, "stdin"),
            stdio_name(&o.path, "stdout"),
            human_bytes(o.bytes),
            human_bytes(self.input.allocated_bytes),
            o.bytes as f64 * 100.0 / base as f64,
            human_bytes(self.input.virtual_size),
            self.seconds,
            human_bytes(self.throughput() as u64),
        )
    }
}

/// `-` as the stream it stands for, else the path.
fn stdio_name(p: &Path, stream: &str) -> String {
    if p.as_os_str() == "-" {
        stream.to_string()
    } else {
        p.display().to_string()
    }
}
