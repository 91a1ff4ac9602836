//! The command-line spelling of library option structs that several
//! commands flatten: `GuestArgs` (the guest stage of `clean` and `finalize`)
//! becomes `session::GuestOptions`, and `SandboxArgs` (the hidden
//! `__sandbox` command vmfinal re-executes itself with) becomes
//! `guest::sandbox::SandboxRequest`. The library below takes the plain
//! structs and knows no clap.

use std::path::PathBuf;

use crate::profile::Profile;
use crate::reclaim::ReclaimMode;
use crate::session::GuestOptions;

/// Options for the guest stage, shared by `clean` and `finalize`.
#[derive(Debug, Clone, clap::Args)]
pub struct GuestArgs {
    /// Profiles to run: defaults, all, none, NAME, +NAME, -NAME (comma-separated, left to right)
    #[arg(long, default_value = "defaults", value_name = "LIST")]
    pub profiles: String,
    /// Also run this profile file (repeatable)
    #[arg(long = "profile-file", value_name = "FILE")]
    pub profile_files: Vec<PathBuf>,
    /// Add the profiles in this directory (*.yaml), selectable by name (repeatable)
    #[arg(long = "profile-dir", value_name = "DIR")]
    pub profile_dirs: Vec<PathBuf>,
    /// Set a profile variable, e.g. kernels.keep=2 or locales.keep=C,en* (repeatable)
    #[arg(long = "set", value_name = "PROFILE.VAR=VALUE")]
    pub sets: Vec<String>,
    /// List what would be removed and how many bytes it frees; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Allow profiles' `run` steps (commands chrooted in the guest)
    #[arg(long)]
    pub allow_run: bool,
    /// Free-space reclaim after cleaning. auto: discard, else zero-fill; in
    /// finalize only where compaction cannot map free space itself (btrfs, vfat)
    #[arg(long, value_enum, default_value = "auto")]
    pub reclaim: ReclaimMode,
    /// Go on when a filesystem the guest's fstab mounts (without nofail or
    /// noauto) cannot be mounted here, cleaning without it (else an error)
    #[arg(long)]
    pub skip_unmountable: bool,
}

impl From<&GuestArgs> for GuestOptions {
    fn from(a: &GuestArgs) -> Self {
        GuestOptions {
            profiles: a.profiles.clone(),
            profile_files: a.profile_files.clone(),
            profile_dirs: a.profile_dirs.clone(),
            sets: a.sets.clone(),
            dry_run: a.dry_run,
            allow_run: a.allow_run,
            reclaim: a.reclaim,
            skip_unmountable: a.skip_unmountable,
        }
    }
}

impl GuestArgs {
    /// Loads and selects the profiles (errors before any work starts).
    pub fn selected(&self) -> anyhow::Result<Vec<Profile>> {
        GuestOptions::from(self).selected()
    }
}

/// `vmfinal __sandbox ROOT [--dev SPEC]... -- ARGV...` (hidden).
#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    pub root: PathBuf,
    /// PATH:MAJOR:MINOR:UUID of a (read-only) block device to offer
    #[arg(long = "dev")]
    pub devs: Vec<String>,
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

/// Runs the sandbox's init with the parsed request.
pub fn sandbox(a: &SandboxArgs) -> anyhow::Result<super::ExitCode> {
    crate::guest::sandbox::init(&crate::guest::sandbox::SandboxRequest {
        root: a.root.clone(),
        devs: a.devs.clone(),
        argv: a.argv.clone(),
    })
}
