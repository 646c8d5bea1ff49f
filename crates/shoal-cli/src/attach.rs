//! `attach.rs`: one Attach or Exec stream, end to end — the opening message, the terminal in
//! raw mode and its size for `-t`, stdin forwarded for `-i`, the detach keys, signals passed on
//! to the container, and the output copied to our stdout and stderr until the exit code arrives.

use shoal_api::v1::{StdioInput, StdioOutput, stdio_input, stdio_output};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
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

/// Signals that end a session in raw mode: the terminal must be restored before we go (with a
/// tty nothing is proxied, and the keyboard's ^C is a byte for the container, not a signal).
const ENDING: [(SignalKind, i32); 4] = [
    (SignalKind::interrupt(), 2),
    (SignalKind::terminate(), 15),
    (SignalKind::hangup(), 1),
    (SignalKind::quit(), 3),
];

/// Docker's default `--detach-keys`.
pub(crate) const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

/// Parses Docker's `--detach-keys` syntax: comma-separated `ctrl-<a-z @ [ \ ] ^ _>` or single
/// characters, e.g. `ctrl-p,ctrl-q` or `ctrl-a,d`. Empty means the default.
pub(crate) fn detach_keys(text: &str) -> Result<Vec<u8>, CliError> {
    let text = if text.is_empty() {
        DEFAULT_DETACH_KEYS
    } else {
        text
    };
    let invalid = |part: &str| {
        CliError::usage(format!(
            "invalid detach keys {text:?}: {part:?} is neither ctrl-<a-z, @, [, \\, ], ^ or _> nor a single character"
        ))
    };
    let mut keys = Vec::new();
    for part in text.split(',') {
        let lower = part.to_ascii_lowercase();
        let key = match lower.strip_prefix("ctrl-") {
            Some(rest) => match rest.as_bytes() {
                [c @ b'a'..=b'z'] => c - b'a' + 1,
                [b'@'] => 0,
                [b'['] => 27,
                [b'\\'] => 28,
                [b']'] => 29,
                [b'^'] => 30,
                [b'_'] => 31,
                _ => return Err(invalid(part)),
            },
            None => match part.as_bytes() {
                [c] if c.is_ascii() => *c,
                _ => return Err(invalid(part)),
            },
        };
        keys.push(key);
    }
    Ok(keys)
}

/// Watches typed input for the detach sequence. Bytes that may begin it are held back until
/// the sequence completes (detach: they are never sent) or breaks (they are sent after all),
/// as Docker does.
pub(crate) struct DetachKeys {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachKeys {
    pub(crate) fn new(keys: Vec<u8>) -> Option<DetachKeys> {
        (!keys.is_empty()).then_some(DetachKeys { keys, matched: 0 })
    }

    /// The bytes to pass on, and whether the sequence is now complete.
    pub(crate) fn scan(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &byte in input {
            if byte != self.keys[self.matched] {
                out.extend_from_slice(&self.keys[..self.matched]);
                self.matched = 0;
                if byte != self.keys[0] {
                    out.push(byte);
                    continue;
                }
            }
            self.matched += 1;
            if self.matched == self.keys.len() {
                self.matched = 0;
                return (out, true);
            }
        }
        (out, false)
    }
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The process exited with this code.
    Exited(i32),
    /// The daemon ended the stream without an exit code.
    Closed,
    /// The user typed the detach keys: the process runs on.
    Detached,
    /// We received this signal while the terminal was raw.
    Signal(i32),
}

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
    /// The parsed `--detach-keys`; they apply when our stdin goes to a tty (as in Docker).
    pub(crate) detach_keys: Vec<u8>,
    /// The end of our input closes the process's stdin (`run -i`, `start -ai`, `exec -i`: the
    /// session that owns it). `attach` leaves it open for whoever attaches next, as Docker
    /// does for a container started detached.
    pub(crate) close_stdin: bool,
}

impl Session<'_> {
    /// Runs the session to its end. A stream the daemon ends with an error is that error. The
    /// terminal leaves raw mode on every way out, errors and signals included.
    pub(crate) async fn run(
        self,
        daemon: &mut Daemon,
        io: &mut Stdio<'_>,
    ) -> Result<Ended, CliError> {
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
        let raw_wanted = self.tty && self.stdin && io.stdin_tty && io.input.is_process();
        // Caught before the terminal goes raw, so none of them can leave it raw behind us.
        let mut ending = StreamMap::new();
        if raw_wanted {
            for (kind, number) in ENDING {
                if let Ok(s) = signal(kind) {
                    ending.insert(number, SignalStream::new(s));
                }
            }
        }
        let raw = if raw_wanted {
            Some(RawMode::enable(std::io::stdin()).map_err(|err| {
                CliError::usage(format!(
                    "cannot put the terminal in raw mode: {}",
                    crate::error::io_reason(&err)
                ))
            })?)
        } else {
            None
        };
        let mut detach_rx = None;
        if self.stdin {
            let detach = if self.tty {
                DetachKeys::new(self.detach_keys.clone()).map(|keys| {
                    let (done, rx) = oneshot::channel();
                    detach_rx = Some(rx);
                    (keys, done)
                })
            } else {
                None
            };
            forward_stdin(io.input.take_reader(), tx.clone(), self.close_stdin, detach);
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
                        stdio_output::Output::ExitCode(code) => break Ok(Ended::Exited(code)),
                    },
                    Ok(Some(StdioOutput { output: None })) => {}
                    Ok(None) => break Ok(Ended::Closed),
                    Err(status) => break Err(daemon.fail(status)),
                },
                true = detach_requested(&mut detach_rx) => break Ok(Ended::Detached),
                Some((number, ())) = ending.next(), if !ending.is_empty() => {
                    break Ok(Ended::Signal(number));
                }
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
        if matches!(result, Ok(Ended::Detached)) {
            // Docker's words, on a terminal back in its normal mode.
            writeln!(io.err, "read escape sequence")?;
        }
        result
    }
}

/// True once the stdin thread saw the detach keys; never resolves without them.
async fn detach_requested(rx: &mut Option<oneshot::Receiver<()>>) -> bool {
    let result = match rx.as_mut() {
        Some(rx) => rx.await,
        None => return std::future::pending().await,
    };
    // Either way it has answered: do not poll it again.
    *rx = None;
    result.is_ok()
}

async fn next_winch(winch: &mut Option<Signal>) -> Option<()> {
    match winch {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// Our exit status after an attached session with container `id`: its exit code (asked for
/// if the stream ended without it), 0 after a detach, 128 + the signal that ended us.
pub(crate) async fn status_after(
    ended: Ended,
    daemon: &mut Daemon,
    id: &str,
) -> Result<u8, CliError> {
    Ok(match ended {
        Ended::Exited(code) => exit_status(code),
        Ended::Closed => exit_status(daemon.wait_container(id).await?.exit_code),
        Ended::Detached => 0,
        Ended::Signal(number) => exit_status(128 + number),
    })
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

    #[test]
    fn detach_keys_parse_like_docker() {
        assert_eq!(detach_keys("").unwrap(), [16, 17]);
        assert_eq!(detach_keys("ctrl-p,ctrl-q").unwrap(), [16, 17]);
        assert_eq!(detach_keys("ctrl-a,d").unwrap(), [1, b'd']);
        assert_eq!(detach_keys("CTRL-Z,ctrl-@,ctrl-_").unwrap(), [26, 0, 31]);
        assert_eq!(detach_keys("ctrl-\\").unwrap(), [28]);
        for bad in ["ctrl-", "ctrl-1", "ctrl-ab", "ab", "ctrl-p,", ",", "é"] {
            let err = detach_keys(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid detach keys"), "{bad}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn detach_sequence_is_held_back_then_sent_or_swallowed() {
        let mut keys = DetachKeys::new(vec![16, 17]).unwrap();
        assert_eq!(keys.scan(b"ls\n"), (b"ls\n".to_vec(), false));
        // ^P alone waits for what follows.
        assert_eq!(keys.scan(&[16]), (Vec::new(), false));
        // Not ^Q: both go through.
        assert_eq!(keys.scan(b"x"), (vec![16, b'x'], false));
        // ^P ^P ^Q: the first ^P goes through, the sequence completes.
        assert_eq!(keys.scan(&[b'a', 16, 16, 17, b'z']), (vec![b'a', 16], true));
        // Split across reads.
        assert_eq!(keys.scan(&[16]), (Vec::new(), false));
        assert_eq!(keys.scan(&[17]), (Vec::new(), true));
        assert!(DetachKeys::new(Vec::new()).is_none());
    }
}
