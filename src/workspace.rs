//! Where the raw workspace copy of an input goes: `--tmp DIR`, else beside
//! `beside` (the output for `finalize`, the image for `analyze --guest`),
//! named `.vmfinal-ws-PID-STEM.raw` so that `vmfinal cleanup` and a reader
//! of the directory see what it is and whose it is.

use std::path::{Path, PathBuf};

/// The workspace path for `input`.
pub fn path(tmp: Option<&Path>, beside: &Path, input: &Path) -> PathBuf {
    let dir = match tmp {
        Some(d) => d.to_owned(),
        None => match beside.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        },
    };
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    dir.join(format!(".vmfinal-ws-{}-{stem}.raw", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beside_or_in_tmp() {
        let pid = std::process::id();
        assert_eq!(
            path(None, Path::new("out/x.qcow2"), Path::new("in/disk.img")),
            PathBuf::from(format!("out/.vmfinal-ws-{pid}-disk.raw"))
        );
        assert_eq!(
            path(None, Path::new("x.qcow2"), Path::new("d.raw")),
            PathBuf::from(format!("./.vmfinal-ws-{pid}-d.raw"))
        );
        assert_eq!(
            path(Some(Path::new("/t")), Path::new("x"), Path::new("d")),
            PathBuf::from(format!("/t/.vmfinal-ws-{pid}-d.raw"))
        );
    }
}
