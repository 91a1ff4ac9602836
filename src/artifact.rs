//! What a pipeline needs next to the artifact: a `sha256sum -c` checksum file
//! and an entry in a Packer-style build manifest.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Checksum algorithms for `--checksum`.
/// (Command-line spelling: `commands::value_enums`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumKind {
    Sha256,
}

/// Hashes `path` and writes `PATH.sha256` as `HASH  NAME` (the name relative
/// to the checksum file's directory, as `sha256sum -c` expects when run
/// there). Returns the hex digest and the checksum file's path.
pub fn write_checksum(path: &Path) -> anyhow::Result<(String, PathBuf)> {
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("{}: cannot open to checksum", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("{}: read failed", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let digest = hex::encode(h.finalize());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sum_path = PathBuf::from(format!("{}.sha256", path.display()));
    write_atomic(&sum_path, format!("{digest}  {name}\n").as_bytes())?;
    Ok((digest, sum_path))
}

/// Appends a build entry to a Packer-manifest-shaped JSON file (created if
/// missing): `builds[]` with `name`, `builder_type`, `build_time`, `files`,
/// `artifact_id`, `packer_run_uuid` (when `PACKER_RUN_UUID` is set) and
/// `custom_data`; `last_run_uuid` as Packer writes it.
pub fn append_manifest(
    manifest: &Path,
    files: &[PathBuf],
    artifact: &Path,
    custom: Value,
) -> anyhow::Result<()> {
    // Parallel builds append to one manifest: read, add and replace it
    // under an exclusive lock, or entries are lost.
    let _lock = ManifestLock::take(manifest)?;
    let mut doc: Value = match std::fs::read(manifest) {
        Ok(bytes) if !bytes.is_empty() => serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a JSON manifest", manifest.display()))?,
        Ok(_) => json!({}),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({}),
        Err(e) => {
            return Err(e).with_context(|| format!("{}: cannot read manifest", manifest.display()));
        }
    };
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("{}: manifest is not a JSON object", manifest.display()))?;
    let run_uuid = std::env::var("PACKER_RUN_UUID")
        .ok()
        .filter(|s| !s.is_empty());
    let mut entry = json!({
        "name": std::env::var("PACKER_BUILD_NAME").unwrap_or_else(|_| "vmfinal".into()),
        "builder_type": std::env::var("PACKER_BUILDER_TYPE").unwrap_or_else(|_| "vmfinal".into()),
        "build_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "files": files.iter().map(|f| json!({
            "name": f.display().to_string(),
            "size": std::fs::metadata(f).map(|m| m.len()).unwrap_or(0),
        })).collect::<Vec<_>>(),
        "artifact_id": artifact.display().to_string(),
        "custom_data": custom,
    });
    if let (Some(u), Some(e)) = (&run_uuid, entry.as_object_mut()) {
        e.insert("packer_run_uuid".into(), Value::String(u.clone()));
    }
    let builds = obj.entry("builds").or_insert_with(|| json!([]));
    builds
        .as_array_mut()
        .ok_or_else(|| anyhow::anyhow!("{}: \"builds\" is not an array", manifest.display()))?
        .push(entry);
    if let Some(u) = run_uuid {
        obj.insert("last_run_uuid".into(), Value::String(u));
    }
    write_atomic(manifest, serde_json::to_string_pretty(&doc)?.as_bytes())
}

/// `flock` on the manifest's directory (the manifest itself is replaced by
/// rename, so it cannot carry the lock, and a lock file would be left
/// behind). Released on drop.
struct ManifestLock {
    _dir: std::fs::File,
}

impl ManifestLock {
    fn take(manifest: &Path) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd;
        let dir = match manifest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let f = std::fs::File::open(&dir)
            .with_context(|| format!("{}: cannot open to lock the manifest", dir.display()))?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Self { _dir: f });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).with_context(|| format!("{}: cannot lock", dir.display()));
            }
            if crate::interrupt::requested() {
                anyhow::bail!(crate::interrupt::Interrupted);
            }
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let out = crate::output::TempOutput::create(path, true)?;
    std::io::Write::write_all(&mut out.file(), bytes)
        .with_context(|| format!("{}: write failed", path.display()))?;
    out.commit()?;
    Ok(())
}
