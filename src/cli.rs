//! Command-line definitions (clap). Each subcommand's arguments live beside
//! its implementation in `commands/`.

use clap::{Parser, Subcommand};

use crate::commands;

#[derive(Debug, Parser)]
#[command(
    name = "vmfinal",
    version,
    about = "Finalize and compact VM disk images",
    long_about = "Finalize and compact VM disk images.\n\n\
        vmfinal compact converts a raw, qcow2 or .zst image into a compressed qcow2, a seekable \
        .zst or a sparse raw file on all cores, skipping holes and the free space of ext2/3/4, \
        xfs and swap (no root needed). vmfinal finalize cleans a copy of the guest with cleanup \
        profiles (old kernels, package caches, logs, machine-id, ssh host keys), reclaims free \
        space and compacts it (root).\n\n\
        Examples:\n  \
        vmfinal compact disk.raw -o golden.qcow2 --compression zstd\n  \
        vmfinal compact disk.raw -o - | aws s3 cp - s3://bucket/golden.zst\n  \
        vmfinal finalize disk.qcow2 -o golden.qcow2 --dry-run\n  \
        vmfinal finalize disk.qcow2 -o golden.qcow2 --checksum sha256"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert an image (raw, qcow2, .zst) into a compressed qcow2, a seekable .zst, or a sparse raw file
    Compact(commands::compact::CompactArgs),
    /// Expand a qcow2 or .zst image back into a sparse raw file (always raw)
    Expand(commands::expand::ExpandArgs),
    /// Check the consistency of a qcow2 or .zst file (exit 0 clean, 2 corrupt, 3 leaks only, 1 could not check)
    Check(commands::check::CheckArgs),
    /// Show an image's format, sizes and compression
    Info(commands::info::InfoArgs),
    /// Report partitions, filesystems, free space and estimated output sizes
    Analyze(commands::analyze::AnalyzeArgs),
    /// Clean the guest of a raw image in place with cleanup profiles, then reclaim free space (root)
    Clean(commands::clean::CleanArgs),
    /// Clean a copy of the guest with profiles, reclaim, and compact it into OUT (root)
    Finalize(Box<commands::finalize::FinalizeArgs>),
    /// List, show and check cleanup profiles
    Profiles(commands::profiles::ProfilesArgs),
    /// Remove loop devices and files that killed vmfinal runs left behind (root)
    Cleanup(commands::cleanup::CleanupArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(commands::completions::CompletionsArgs),
    #[command(name = "__sandbox", hide = true)]
    Sandbox(crate::commands::guest_args::SandboxArgs),
    #[command(name = "__man", hide = true)]
    Man(commands::man::ManArgs),
}

impl Command {
    /// The image a command reads, for those that cannot read it from stdin.
    fn file_input(&self) -> Option<(&'static str, &std::path::Path)> {
        match self {
            Command::Check(a) => Some(("check", &a.image)),
            Command::Info(a) => Some(("info", &a.image)),
            Command::Analyze(a) => Some(("analyze", &a.image)),
            Command::Clean(a) => Some(("clean", &a.image)),
            Command::Finalize(a) => Some(("finalize", &a.input)),
            _ => None,
        }
    }

    /// `-` as the input of a command that needs a file: one clear refusal.
    pub fn refuse_stdin(&self) -> anyhow::Result<()> {
        if let Some((name, p)) = self.file_input()
            && crate::output::is_stdio(p)
        {
            anyhow::bail!(
                "{name} needs an image file, not stdin (-): only compact and expand read a stream; save it to a file first"
            );
        }
        Ok(())
    }

    /// Commands that only print: a closed pipe (`| head`) ends them quietly,
    /// as it does `cat`. Commands that write files keep SIGPIPE ignored so
    /// that their guards clean up.
    pub fn prints_only(&self) -> bool {
        // info, check and analyze write through `report::print_stdout`,
        // which turns a closed pipe into exit 141 without a signal.
        matches!(
            self,
            Command::Profiles(_) | Command::Completions(_) | Command::Man(_)
        )
    }
}

/// Sizes on the command line; lives beside the options that take them.
pub use crate::commands::output_args::parse_size;

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("x").is_err());
        assert!(parse_size("5Q").is_err());
    }
}
