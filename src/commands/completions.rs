//! `vmfinal completions SHELL`: the shell completion script, generated from
//! the same clap definitions as the parser (clap_complete).
//!
//! Install: bash `vmfinal completions bash > /usr/share/bash-completion/completions/vmfinal`,
//! zsh `... zsh > /usr/share/zsh/vendor-completions/_vmfinal`,
//! fish `... fish > /usr/share/fish/vendor_completions.d/vmfinal.fish`
//! (the .deb installs all three).

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    pub shell: clap_complete::Shell,
}

/// `full` is the whole command line (`cli::Cli::command()`); the CLI layer
/// hands it down, so this module does not import the layer above it.
pub fn run(a: &CompletionsArgs, full: &clap::Command) -> anyhow::Result<super::ExitCode> {
    let mut cmd = visible_command(full);
    clap_complete::generate(a.shell, &mut cmd, "vmfinal", &mut std::io::stdout());
    Ok(0)
}

/// The command line without its hidden, internal subcommands (`__sandbox`,
/// `__man`), which completion must not offer.
pub fn visible_command(full: &clap::Command) -> clap::Command {
    let subs: Vec<clap::Command> = full
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    clap::Command::new("vmfinal")
        .version(full.get_version().unwrap_or_default().to_string())
        .about(full.get_about().map(|a| a.to_string()).unwrap_or_default())
        .subcommand_required(true)
        .subcommands(subs)
}
