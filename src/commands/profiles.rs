//! `vmfinal profiles list | show NAME | check FILE...`.

use std::path::PathBuf;

use crate::profile::{self, Registry};

#[derive(Debug, clap::Args)]
pub struct ProfilesArgs {
    #[command(subcommand)]
    pub cmd: ProfilesCmd,
    /// Include the profiles in this directory (repeatable)
    #[arg(long = "profile-dir", value_name = "DIR", global = true)]
    pub profile_dirs: Vec<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ProfilesCmd {
    /// List profiles: name, whether `defaults` includes it, description
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print a profile's YAML
    Show { name: String },
    /// Validate profile files (exit 1 on the first error, with file:line:column)
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(a: &ProfilesArgs) -> anyhow::Result<super::ExitCode> {
    let mut r = Registry::builtin();
    for d in &a.profile_dirs {
        r.add_dir(d)?;
    }
    match &a.cmd {
        ProfilesCmd::List { json } => {
            if *json {
                let v: Vec<_> = r
                    .profiles
                    .iter()
                    .map(|p| serde_json::json!({"name": p.name, "default": p.default, "description": p.description, "origin": p.origin}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<14} {:<8} description", "name", "defaults");
                for p in &r.profiles {
                    println!(
                        "{:<14} {:<8} {}",
                        p.name,
                        if p.default { "yes" } else { "-" },
                        p.description
                    );
                }
            }
        }
        ProfilesCmd::Show { name } => {
            let p = r.get(name).ok_or_else(|| {
                anyhow::anyhow!("no profile named '{name}' (see `vmfinal profiles list`)")
            })?;
            print!("{}", p.source);
        }
        ProfilesCmd::Check { files } => {
            for f in files {
                let p = profile::load_file(f)?;
                println!(
                    "{}: ok (profile '{}', {} steps)",
                    f.display(),
                    p.name,
                    p.steps.len()
                );
            }
        }
    }
    Ok(0)
}
