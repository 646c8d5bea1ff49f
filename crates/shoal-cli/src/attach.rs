//! `attach.rs`: one Attach or Exec stream, end to end — the opening message, the terminal in
//! raw mode and its size for `-t`, stdin forwarded for `-i`, signals passed on to the
//! container, and the output copied to our stdout and stderr until the exit code arrives.

use shoal_api::v1::{StdioInput, StdioOutput, stdio_input, stdio_output};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio_stream::wrappers::SignalStream;
use tokio_stream::{StreamExt, StreamMap};

use crate::CliError;
use crate::daemon::{Daemon, Lifecycle};
use crate::stdio::{RawMode, Stdio, forward_stdin, terminal_size};

/// Signals passed on to the container with `--sig-proxy` (Docker forwards these and more).
const PROXIED: [(SignalKind, &str); 6] = [
    (SignalKind::interrupt(), "SIGINT"),
    (SignalKind::terminate(), "SIGTERM"),
    (SignalKind::hangup(), "SIGHUP"),
    (SignalKind::quit(), "SIGQUIT"),
    (SignalKind::user_defined1(), "SIGUSR1"),
    (SignalKind::user_defined2(), "SIGUSR2"),
];

/// What to open and how to behave while attached.
pub(crate) struct Session<'a> {
    /// The opening message: `attach` or `exec`.
    pub(crate) first: stdio_input::Input,
    /// Forward our stdin (`-i`).
    pub(crate) stdin: bool,
    /// The process has a terminal (`-t`): raw mode (with `-i`) and resize messages.
    pub(crate) tty: bool,
    /// Start this container once the stream is open, so no early output is lost.
    pub(crate) start: Option<&'a str>,
    /// Kill this container with the signals we receive (`--sig-proxy`, never with a tty).
    pub(crate) sig_proxy: Option<&'a str>,
}

impl Session<'_> {
    /// Runs the session to its end: `Some(code)` when the daemon sent the exit code, `None`
    /// when the stream ended without one. A stream the daemon ends with an error is that error.
    pub(crate) async fn run(
        self,
        daemon: &mut Daemon,
        io: &mut Stdio<'_>,
    ) -> Result<Option<i32>, CliError> {
        let exec = matches!(self.first, stdio_input::Input::Exec(_));
        let (tx, rx) = mpsc::channel(64);
        let send = |input| StdioInput { input: Some(input) };
        let on_terminal = self.tty && (io.stdout_tty || io.stdin_tty) && io.input.is_process();
        let _ = tx.send(send(self.first)).await;
        if on_terminal && let Some(size) = terminal_size() {
            let _ = tx.send(send(stdio_input::Input::Resize(size))).await;
        }
        let mut output = daemon.stdio(exec, rx).await?;

        // Raw mode only when our stdin goes to the process's terminal, as Docker does.
        let raw = if self.tty && self.stdin && io.stdin_tty && io.input.is_process() {
            Some(RawMode::enable(std::io::stdin()).map_err(|err| {
                CliError::usage(format!(
                    "cannot put the terminal in raw mode: {}",
                    crate::error::io_reason(&err)
                ))
            })?)
        } else {
            None
        };
        if self.stdin {
            forward_stdin(io.input.take_reader(), tx.clone());
        }
        if let Some(container) = self.start {
            daemon.lifecycle(container, &Lifecycle::Start).await?;
        }
        let mut winch = if on_terminal {
            signal(SignalKind::window_change()).ok()
        } else {
            None
        };
        let mut proxied = StreamMap::new();
        if self.sig_proxy.is_some() {
            for (kind, name) in PROXIED {
                if let Ok(s) = signal(kind) {
                    proxied.insert(name, SignalStream::new(s));
                }
            }
        }

        let result = loop {
            tokio::select! {
                message = output.message() => match message {
                    Ok(Some(StdioOutput { output: Some(out) })) => match out {
                        stdio_output::Output::Stdout(bytes) => {
                            io.out.write_all(&bytes)?;
                            io.out.flush()?;
                        }
                        stdio_output::Output::Stderr(bytes) => {
                            io.err.write_all(&bytes)?;
                            io.err.flush()?;
                        }
                        stdio_output::Output::ExitCode(code) => break Ok(Some(code)),
                    },
                    Ok(Some(StdioOutput { output: None })) => {}
                    Ok(None) => break Ok(None),
                    Err(status) => break Err(daemon.fail(status)),
                },
                Some(()) = next_winch(&mut winch) => {
                    if let Some(size) = terminal_size() {
                        let _ = tx.send(send(stdio_input::Input::Resize(size))).await;
                    }
                }
                Some((name, ())) = proxied.next(), if !proxied.is_empty() => {
                    if let Some(container) = self.sig_proxy {
                        let kill = Lifecycle::Kill { signal: name.to_owned() };
                        // A signal the container cannot take is not worth ending the session.
                        let _ = daemon.lifecycle(container, &kill).await;
                    }
                }
            }
        };
        drop(raw);
        drop(tx);
        result
    }
}

async fn next_winch(winch: &mut Option<Signal>) -> Option<()> {
    match winch {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// A container's exit code as our exit status: 0–255 as is, anything else 255 (never a
/// false success).
pub(crate) fn exit_status(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(255)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_map_to_statuses() {
        assert_eq!(exit_status(0), 0);
        assert_eq!(exit_status(137), 137);
        assert_eq!(exit_status(255), 255);
        assert_eq!(exit_status(256), 255);
        assert_eq!(exit_status(-1), 255);
    }
}
