//! What a running `clean`/`finalize` holds, written to
//! `/run/vmfinal/PID.json` so that a later run (or `vmfinal cleanup`) can
//! undo it after a SIGKILL: workspace files, temporary outputs, the mount
//! directory, the loop devices tagged `vmfinal:PID`, and FUSE mounts named
//! `vmfinal:PID` with the files they were mounted on. (Mounts themselves
//! live in the run's private mount namespace and die with it.)

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::loopdev;

pub const STATE_DIR: &str = "/run/vmfinal";

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateData {
    pid: u32,
    /// `crate::owner` tag (`PID@PIDNS`); absent in files of older runs.
    #[serde(default)]
    owner: Option<String>,
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

/// This run's state file; dropping it removes the file.
pub struct State {
    path: PathBuf,
    data: StateData,
}

impl State {
    pub fn create() -> anyhow::Result<Self> {
        std::fs::create_dir_all(STATE_DIR)
            .map_err(|e| anyhow::anyhow!("cannot create {STATE_DIR}: {e}"))?;
        let pid = std::process::id();
        let path = Path::new(STATE_DIR).join(format!("{pid}.json"));
        // Names here are by PID: a live run with our PID in another PID
        // namespace that shares this /run owns them; never take them over.
        if let Some(other) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<StateData>(&b).ok())
            .and_then(|d| d.owner)
            .and_then(|t| crate::owner::parse(&t))
        {
            let me = crate::owner::parse(&crate::owner::me());
            if Some(other) != me && crate::owner::alive(other) {
                anyhow::bail!(
                    "{} belongs to a live vmfinal with the same PID in another PID namespace; give each namespace its own {STATE_DIR}",
                    path.display()
                );
            }
        }
        let s = Self {
            path,
            data: StateData {
                pid,
                owner: Some(crate::owner::me()),
                ..Default::default()
            },
        };
        s.save()?;
        Ok(s)
    }

    fn save(&self) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("json.new");
        std::fs::write(&tmp, serde_json::to_vec(&self.data)?)?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }

    /// A file this run creates and removes (workspace, temporary output).
    pub fn add_file(&mut self, p: &Path) -> anyhow::Result<()> {
        self.data.files.push(absolute(p));
        self.save()
    }

    /// A directory this run creates and removes (the mount directory).
    pub fn add_dir(&mut self, p: &Path) -> anyhow::Result<()> {
        self.data.dirs.push(absolute(p));
        self.save()
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Undoes what dead vmfinal runs left: detaches their tagged loop devices,
/// removes their workspace and temporary files and empty mount directories.
/// Returns one line per thing removed.
pub fn sweep_stale() -> Vec<String> {
    let mut done = Vec::new();
    for l in loopdev::tagged() {
        if !crate::owner::alive(l.owner) {
            let (path, pid) = (l.path.display().to_string(), l.owner);
            match l.detach() {
                Ok(()) => done.push(format!("detached {path} (left by vmfinal pid {pid})")),
                Err(e) => done.push(format!("could not detach {path} (left by pid {pid}): {e}")),
            }
        }
    }
    // Then the FUSE files such loops were over (only visible here if a
    // run mounted one outside its private namespace).
    for (mp, pid) in crate::view::fuse::stale_mounts(crate::owner::alive) {
        if let Ok(c) = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid C string; a lazy unmount of vmfinal's own mount.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } == 0 {
                done.push(format!(
                    "unmounted {} (left by vmfinal pid {pid})",
                    mp.display()
                ));
            }
        }
    }
    let Ok(rd) = std::fs::read_dir(STATE_DIR) else {
        return done;
    };
    let entries: Vec<(PathBuf, u32)> = rd
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let pid = p
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.split('.').next())
                .and_then(|s| s.parse::<u32>().ok())?;
            Some((p, pid))
        })
        .collect();
    // Who made each PID's entries: the tag in its state file (with its PID
    // namespace), or the bare PID for entries of older runs.
    let owner_of = |pid: u32| -> crate::owner::Owner {
        std::fs::read(Path::new(STATE_DIR).join(format!("{pid}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice::<StateData>(&b).ok())
            .and_then(|d| d.owner)
            .and_then(|t| crate::owner::parse(&t))
            .unwrap_or(crate::owner::Owner { pid, ns: None })
    };
    let owners: std::collections::BTreeMap<u32, crate::owner::Owner> = entries
        .iter()
        .map(|&(_, pid)| (pid, owner_of(pid)))
        .collect();
    for (p, pid) in entries {
        if owners.get(&pid).is_none_or(|&o| crate::owner::alive(o)) {
            continue;
        }
        if p.extension().is_some_and(|x| x == "json") {
            if let Ok(b) = std::fs::read(&p) {
                if let Ok(d) = serde_json::from_slice::<StateData>(&b) {
                    for f in d.files {
                        // Only names vmfinal makes.
                        let ours = f
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().contains(".vmfinal-"));
                        if ours && !crate::owner::in_use(&f) && std::fs::remove_file(&f).is_ok() {
                            done.push(format!(
                                "removed {} (left by vmfinal pid {pid})",
                                f.display()
                            ));
                        }
                    }
                    for d in d.dirs.iter().rev() {
                        // rmdir only: never a recursive delete.
                        if std::fs::remove_dir(d).is_ok() {
                            done.push(format!(
                                "removed directory {} (left by vmfinal pid {pid})",
                                d.display()
                            ));
                        }
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&p);
    }
    done
}
