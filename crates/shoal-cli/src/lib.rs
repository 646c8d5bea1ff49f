//! shoal's client: the clap command tree for every verb except `shoal daemon`, the requests
//! each verb sends to the local daemon over its unix socket, and the output formatting.
//!
//! The binary flattens [`GlobalArgs`] and [`Command`] into its parser, calls [`run`], and on
//! error prints `Error: {err}` and exits with [`CliError::exit_code`].

pub mod commands;
mod connect;
mod daemon;
mod error;
mod format;
mod parse;

#[cfg(test)]
mod e2e_tests;

use std::io::Write;

pub use commands::Command;
pub use connect::{DEFAULT_HOST, GlobalArgs, connect, socket_path};
pub use error::CliError;

/// Runs one client verb, writing its output to stdout.
pub async fn run(global: &GlobalArgs, command: Command) -> Result<(), CliError> {
    let mut stdout = std::io::stdout();
    let result = commands::run_to(global, command, &mut stdout).await;
    let flushed = stdout.flush().map_err(CliError::from);
    match result.and(flushed) {
        // The reader went away (`shoal node ls | head -1`): nothing is left to tell anyone.
        Err(CliError::Output(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
