//! `vmfinal __man DIR` (hidden): writes the man pages, `vmfinal.1` and one
//! `vmfinal-SUBCOMMAND.1` per subcommand, generated from the clap
//! definitions (clap_mangen). `scripts/build-deb.sh` runs it.

use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing)
    pub dir: PathBuf,
}

/// `top` is the whole command line (`cli::Cli::command()`), handed down by
/// the CLI layer.
pub fn run(a: &ManArgs, top: clap::Command) -> anyhow::Result<super::ExitCode> {
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let mut top = top;
    top.build();
    let mut pages = vec![("vmfinal".to_string(), top.clone())];
    for sub in top
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("vmfinal-{}", sub.get_name());
        let version = top.get_version().unwrap_or_default().to_string();
        pages.push((name.clone(), sub.clone().name(name).version(version)));
    }
    for (name, cmd) in pages {
        let path = a.dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut buf)
            .with_context(|| format!("cannot render {name}"))?;
        std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(0)
}
