//! What vmfinal tells the user at the end: the one-line human summary
//! (stderr) and the documented `--json` reports (stdout, schema in
//! `docs/json.md`). Progress while it works is `progress`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::image::ImageFormat;
use crate::pipeline::PipelineStats;

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

/// `1536` -> `1.50 KiB`: indicatif's binary units, the same text the
/// progress bars show.
pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Quotes text that came from an image or a guest so that printing it
/// cannot move the cursor, change colours or hide what follows: control
/// characters, bidirectional overrides, quotes and backslashes are escaped,
/// invalid UTF-8 bytes shown as `\xNN`, and the result is in single quotes.
pub fn escape_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() + 2);
    out.push('\'');
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\'' => out.push_str("\\'"),
                '\\' => out.push_str("\\\\"),
                c if c.is_control()
                    || ('\u{202a}'..='\u{202e}').contains(&c)
                    || ('\u{2066}'..='\u{2069}').contains(&c)
                    || c == '\u{200e}'
                    || c == '\u{200f}' =>
                {
                    if (c as u32) < 0x100 {
                        out.push_str(&format!("\\x{:02x}", c as u32));
                    } else {
                        out.push_str(&format!("\\u{{{:x}}}", c as u32));
                    }
                }
                c => out.push(c),
            }
        }
        for &x in chunk.invalid() {
            out.push_str(&format!("\\x{x:02x}"));
        }
    }
    out.push('\'');
    out
}

/// `escape_bytes` for text.
pub fn escape(s: &str) -> String {
    escape_bytes(s.as_bytes())
}

/// A note on stderr: something vmfinal decided that the user should know.
pub fn note(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "vmfinal: note: {msg}");
}

/// Writes `text` and a newline to stdout. A closed pipe (`| head`) is an
/// error the caller returns, never a panic.
pub fn print_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// `print_stdout` of a pretty JSON document.
pub fn print_json(v: &serde_json::Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(std::io::Error::other)?;
    print_stdout(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn escaping() {
        assert_eq!(escape("disk.raw"), "'disk.raw'");
        assert_eq!(escape("a\x1b[2Jb"), "'a\\x1b[2Jb'");
        assert_eq!(escape("it's"), "'it\\'s'");
        assert_eq!(escape_bytes(b"x\0\xff\n"), "'x\\x00\\xff\\x0a'");
        assert_eq!(escape("\u{202e}gpj"), "'\\u{202e}gpj'");
        assert_eq!(escape("caf\u{e9}"), "'caf\u{e9}'");
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    }
}
