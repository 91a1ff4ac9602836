//! Command-line definitions (clap). Each subcommand's arguments live beside
//! its implementation in `commands/`.

use clap::{Parser, Subcommand};

use crate::commands;

#[derive(Debug, Parser)]
#[command(name = "vmfinal", version, about = "Finalize and compact VM disk images", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert an image (raw, qcow2, .zst) into a compressed qcow2, a seekable .zst, or a sparse raw file
    Compact(commands::compact::CompactArgs),
    /// Expand a qcow2 or .zst image back into a sparse raw file
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
    #[command(name = "__sandbox", hide = true)]
    Sandbox(crate::guest::sandbox::SandboxArgs),
}

/// Parses sizes such as `65536`, `64K`, `64KiB`, `2M`, `1G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size '{s}'"))?;
    let mult: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("invalid size suffix in '{s}' (use K, M, G or T)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

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
