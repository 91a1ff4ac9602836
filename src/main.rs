//! The `vmfinal` binary: parse, dispatch, map errors to exit codes.

use clap::{CommandFactory, Parser};
use vmfinal::cli::{Cli, Command};
use vmfinal::commands;

/// Exit code after SIGINT/SIGTERM, as shells report it.
const EXIT_INTERRUPTED: i32 = 130;
/// Exit code when stdout was closed early (`| head`), as after SIGPIPE.
const EXIT_BROKEN_PIPE: i32 = 141;

/// True if some cause of `e` is a closed pipe.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() {
    let cli = Cli::parse();
    // Commands that create files catch SIGINT/SIGTERM so their guards
    // unwind; the read-only ones (info, check, analyze, profiles) keep the
    // default action and stop at once.
    // `analyze --guest` mounts the guest: it unwinds like the writers.
    let writes = !matches!(
        cli.command,
        Command::Info(_) | Command::Check(_) | Command::Analyze(_) | Command::Profiles(_)
    ) || matches!(&cli.command, Command::Analyze(a) if a.guest || a.html.is_some());
    if writes && let Err(e) = vmfinal::interrupt::install() {
        eprintln!("vmfinal: cannot install signal handlers: {e}");
        std::process::exit(1);
    }
    if cli.command.prints_only() {
        // SAFETY: restoring the default disposition of one signal; no handler runs.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = cli
        .command
        .refuse_stdin()
        .and_then(|()| match &cli.command {
            Command::Compact(a) => commands::compact::run(a),
            Command::Expand(a) => commands::expand::run(a),
            Command::Check(a) => commands::check::run(a),
            Command::Info(a) => commands::info::run(a),
            Command::Analyze(a) => commands::analyze::run(a),
            Command::Clean(a) => commands::clean::run(a),
            Command::Finalize(a) => commands::finalize::run(a),
            Command::Profiles(a) => commands::profiles::run(a),
            Command::Cleanup(a) => commands::cleanup::run(a),
            Command::Completions(a) => commands::completions::run(a, &Cli::command()),
            Command::Sandbox(a) => commands::guest_args::sandbox(a),
            Command::Man(a) => commands::man::run(a, Cli::command()),
        });
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            if broken_pipe(&e) {
                std::process::exit(EXIT_BROKEN_PIPE);
            }
            let staged = matches!(cli.command, Command::Finalize(_) | Command::Clean(_));
            if staged
                && !vmfinal::progress::quiet()
                && let Some(done) = vmfinal::progress::journal_line()
            {
                eprintln!("vmfinal: done before the error: {done}");
            }
            let stream = vmfinal::output::dest::streaming();
            if vmfinal::pipeline::is_interrupted(&e) {
                if stream {
                    eprintln!("vmfinal: interrupted; the stream on stdout is incomplete");
                } else {
                    eprintln!("vmfinal: interrupted; no output was left behind");
                }
                std::process::exit(EXIT_INTERRUPTED);
            }
            // One line: the error and its causes, joined.
            let msg = e.chain().map(|c| c.to_string()).collect::<Vec<_>>();
            let mut line = String::new();
            for m in msg {
                if !line.contains(&m) {
                    if !line.is_empty() {
                        line.push_str(": ");
                    }
                    line.push_str(&m);
                }
            }
            if stream {
                line.push_str(" (the stream on stdout is incomplete)");
            }
            // Never more than one line, and no control characters, whatever
            // a cause contained.
            let line = vmfinal::text::one_safe_line(&line);
            eprintln!("vmfinal: error: {line}");
            std::process::exit(1);
        }
    }
}
