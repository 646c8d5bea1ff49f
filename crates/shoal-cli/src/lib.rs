//! shoal's client: the clap command tree for every verb except `shoal daemon`, the requests
//! each verb sends to the local daemon over its unix socket, and the output formatting.
//!
//! The binary flattens [`GlobalArgs`] and [`Command`] into its parser, calls [`run`], exits
//! with the status it returns (a container's exit code for `run`, `start -a`, `attach` and
//! `exec`; 0 otherwise), and on error prints `Error: {err}` and exits with
//! [`CliError::exit_code`].

mod attach;
pub mod commands;
mod connect;
mod credentials;
mod daemon;
mod error;
mod format;
mod parse;
mod stdio;

#[cfg(test)]
mod e2e_tests;

use std::io::{IsTerminal, Write};

pub use commands::Command;
pub use connect::{DEFAULT_HOST, GlobalArgs, connect, socket_path};
pub use error::CliError;

/// Runs one client verb with the process's standard streams, and returns the exit status
/// the process should end with: for `run` (attached), `start -a`, `attach` and `exec` the
/// container's or process's exit code (clamped to 0–255; anything out of range is 255),
/// otherwise 0. Nothing has been printed for a non-zero status: the binary just exits with it.
pub async fn run(global: &GlobalArgs, command: Command) -> Result<u8, CliError> {
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let result = {
        let mut io = stdio::Stdio {
            stdin_tty: std::io::stdin().is_terminal(),
            stdout_tty: stdout.is_terminal(),
            out: &mut stdout,
            err: &mut stderr,
            input: stdio::Input::Process,
        };
        commands::run_to(global, command, &mut io).await
    };
    let flushed = stdout.flush().map_err(CliError::from);
    match result.and_then(|status| flushed.map(|()| status)) {
        // The reader went away (`shoal node ls | head -1`): nothing is left to tell anyone.
        Err(CliError::Output(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        other => other,
    }
}
