//! One file per subcommand: each ties the library together for one job and
//! holds no format logic of its own.

pub mod analyze;
pub mod check;
pub mod clean;
pub mod cleanup;
pub mod compact;
pub mod completions;
pub mod expand;
pub mod finalize;
pub mod guest_args;
pub mod info;
pub mod man;
pub mod output_args;
pub mod profiles;
pub mod value_enums;

/// Outcome of a command: the process exit code.
pub type ExitCode = i32;

/// Number of worker threads: `--threads`, or every core.
pub fn threads_or_default(threads: Option<usize>) -> usize {
    threads.filter(|&n| n > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}
