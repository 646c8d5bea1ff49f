//! The per-container shim: its command line ([`ShimArgs`]), the line-delimited JSON protocol on
//! its unix socket ([`Request`], [`Response`]), the exit record it leaves in
//! `<state_root>/<id>/exit.json`, [`spawn_shim`] for the daemon, and the [`ShimClient`].
//!
//! Protocol: one JSON object per line in each direction, one request per connection turn, e.g.
//! `{"op":"kill","signal":15}` → `{"type":"ok"}`. `wait` answers only when the container has
//! exited (with the exit record); a client re-adopts a shim simply by connecting to its socket.
//! `attach` turns its connection into the attach channel (see [`attach`]): framed stdin, resize
//! and output, which any number of clients may hold at once and a restarted daemon opens again.

pub mod attach;
mod client;
pub mod log;
pub mod server;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcStdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use client::ShimClient;

use crate::cgroups::Stats;

/// Errors talking to or starting a shim.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("shim socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("shim i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("shim protocol: {0}")]
    Protocol(String),
    /// The shim answered with an error (e.g. the container failed to start).
    #[error("{0}")]
    Remote(String),
    #[error("starting shim {binary}: {message}")]
    Spawn { binary: PathBuf, message: String },
    #[error("timed out waiting for the container")]
    Timeout,
}

/// How a container ended, as the shim records it in `exit.json` before it exits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code, or 128 + the signal number when a signal killed it.
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// The cgroup's OOM killer killed a process of the container.
    pub oom_killed: bool,
    /// RFC 3339 with nanoseconds.
    pub finished_at: String,
    pub pid: i32,
}

/// The shim's view of its container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimState {
    pub id: String,
    pub pid: i32,
    /// `created`, `running` or `stopped`.
    pub status: String,
    pub exit: Option<ExitRecord>,
}

/// Requests on the shim socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Start,
    State,
    Kill {
        signal: i32,
    },
    /// Answers when the container has exited.
    Wait,
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Answered `ok`, then the connection carries [`attach::Frame`]s: output from now on (none
    /// of the past), stdin when the shim holds it, and the exit record last.
    Attach,
    Stats,
    Pause,
    Resume,
    /// Kills the container if `force` (else refuses while it runs), cleans up, and exits.
    Shutdown {
        #[serde(default)]
        force: bool,
    },
}

/// Answers on the shim socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Ok,
    State(ShimState),
    Exit(ExitRecord),
    Stats(Stats),
    Error { message: String },
}

/// Where the json-file log goes and how it rotates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOptions {
    pub path: PathBuf,
    /// Rotate when the file would pass this many bytes (`None`: never).
    pub max_size: Option<u64>,
    /// Files kept, the live one included (`<log>`, `<log>.1`, ...). At least 1.
    pub max_files: u32,
}

/// The shim's command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimArgs {
    pub id: String,
    pub bundle: PathBuf,
    pub state_root: PathBuf,
    pub log: LogOptions,
    pub tty: bool,
    /// Keep the container's stdin open for attached clients (`-i`): a pipe the shim writes, or
    /// the terminal with `tty`. Without it, stdin is `/dev/null` (or a terminal nobody types on).
    pub open_stdin: bool,
    /// The terminal's size from the start, `(rows, cols)`, so the first prompt already fits.
    pub console_size: Option<(u16, u16)>,
    pub socket: PathBuf,
    /// How long the shim lingers after the container exits, waiting for `shutdown`.
    pub exit_timeout: Duration,
}

impl ShimArgs {
    /// Parses `--id ID --bundle DIR --state-root DIR --log PATH [--log-max-size BYTES]
    /// [--log-max-files N] [--tty] [--stdin] [--console-size ROWSxCOLS] --socket PATH
    /// [--exit-timeout SECS]`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<ShimArgs, String> {
        let mut it = args.into_iter();
        let (mut id, mut bundle, mut state_root, mut log, mut socket) =
            (None, None, None, None, None);
        let (mut max_size, mut max_files, mut tty, mut exit_timeout) = (None, 1u32, false, 300u64);
        let (mut open_stdin, mut console_size) = (false, None);
        while let Some(a) = it.next() {
            let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
            match a.as_str() {
                "--id" => id = Some(value("--id")?),
                "--bundle" => bundle = Some(PathBuf::from(value("--bundle")?)),
                "--state-root" => state_root = Some(PathBuf::from(value("--state-root")?)),
                "--log" => log = Some(PathBuf::from(value("--log")?)),
                "--socket" => socket = Some(PathBuf::from(value("--socket")?)),
                "--log-max-size" => {
                    max_size = Some(
                        value("--log-max-size")?
                            .parse()
                            .map_err(|_| "--log-max-size takes bytes".to_string())?,
                    )
                }
                "--log-max-files" => {
                    max_files = value("--log-max-files")?
                        .parse()
                        .map_err(|_| "--log-max-files takes a count".to_string())?
                }
                "--exit-timeout" => {
                    exit_timeout = value("--exit-timeout")?
                        .parse()
                        .map_err(|_| "--exit-timeout takes seconds".to_string())?
                }
                "--tty" => tty = true,
                "--stdin" => open_stdin = true,
                "--console-size" => {
                    let text = value("--console-size")?;
                    console_size = Some(
                        text.split_once('x')
                            .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)))
                            .ok_or_else(|| "--console-size takes ROWSxCOLS".to_string())?,
                    )
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        fn need<T>(v: Option<T>, n: &str) -> Result<T, String> {
            v.ok_or_else(|| format!("{n} is required"))
        }
        Ok(ShimArgs {
            id: need(id, "--id")?,
            bundle: need(bundle, "--bundle")?,
            state_root: need(state_root, "--state-root")?,
            log: LogOptions {
                path: need(log, "--log")?,
                max_size,
                max_files: max_files.max(1),
            },
            tty,
            open_stdin,
            console_size,
            socket: need(socket, "--socket")?,
            exit_timeout: Duration::from_secs(exit_timeout),
        })
    }

    /// The command line that [`ShimArgs::parse`] reads back.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--id".into(),
            self.id.clone(),
            "--bundle".into(),
            self.bundle.display().to_string(),
            "--state-root".into(),
            self.state_root.display().to_string(),
            "--log".into(),
            self.log.path.display().to_string(),
            "--log-max-files".into(),
            self.log.max_files.to_string(),
            "--socket".into(),
            self.socket.display().to_string(),
            "--exit-timeout".into(),
            self.exit_timeout.as_secs().to_string(),
        ];
        if let Some(m) = self.log.max_size {
            v.push("--log-max-size".into());
            v.push(m.to_string());
        }
        if self.tty {
            v.push("--tty".into());
        }
        if self.open_stdin {
            v.push("--stdin".into());
        }
        if let Some((rows, cols)) = self.console_size {
            v.push("--console-size".into());
            v.push(format!("{rows}x{cols}"));
        }
        v
    }
}

/// What the daemon needs to start a shim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimOptions {
    /// The `shoal-shim` executable.
    pub binary: PathBuf,
    pub args: ShimArgs,
}

/// A freshly started shim.
#[derive(Debug)]
pub struct SpawnedShim {
    pub client: ShimClient,
    /// The shim's own pid (it has daemonized: not a child of the caller).
    pub shim_pid: i32,
    /// The container's init, created and waiting for `start`.
    pub container_pid: i32,
}

/// Starts a shim, which creates the container and answers on its socket; returns once the
/// container is created (or with the creation error). Blocking: call it from a blocking thread.
///
/// The shim daemonizes (double fork + setsid), so the caller's death never reaches it.
pub fn spawn_shim(opts: &ShimOptions) -> Result<SpawnedShim, ShimError> {
    let spawn_err = |message: String| ShimError::Spawn {
        binary: opts.binary.clone(),
        message,
    };
    let mut child = Command::new(&opts.binary)
        .args(opts.args.to_args())
        .stdin(ProcStdio::null())
        .stdout(ProcStdio::piped())
        .stderr(ProcStdio::null())
        .spawn()
        .map_err(|e| spawn_err(e.to_string()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| spawn_err("no stdout".into()))?;
    let mut line = String::new();
    let read = BufReader::new(stdout).read_line(&mut line);
    let _ = child.wait();
    read.map_err(|e| spawn_err(e.to_string()))?;
    let line = line.trim_end();
    if let Some(msg) = line.strip_prefix("error ") {
        return Err(ShimError::Remote(msg.to_string()));
    }
    let mut parts = line.split(' ');
    let (Some("ok"), Some(shim), Some(pid)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(spawn_err(format!("unexpected handshake {line:?}")));
    };
    let parse = |s: &str| {
        s.parse::<i32>()
            .map_err(|_| spawn_err(format!("bad pid {s:?}")))
    };
    Ok(SpawnedShim {
        client: ShimClient::connect(&opts.args.socket)?,
        shim_pid: parse(shim)?,
        container_pid: parse(pid)?,
    })
}

/// `exit.json` of container `id`, if its shim recorded one.
pub fn read_exit_record(state_root: &Path, id: &str) -> Result<Option<ExitRecord>, ShimError> {
    let path = state_root.join(id).join("exit.json");
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ShimError::Protocol(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let a = ShimArgs {
            id: "c1".into(),
            bundle: "/b".into(),
            state_root: "/s".into(),
            log: LogOptions {
                path: "/l".into(),
                max_size: Some(1000),
                max_files: 3,
            },
            tty: true,
            open_stdin: true,
            console_size: Some((24, 80)),
            socket: "/sock".into(),
            exit_timeout: Duration::from_secs(7),
        };
        assert_eq!(ShimArgs::parse(a.to_args()).unwrap(), a);
        assert!(ShimArgs::parse(vec!["--id".to_string()]).is_err());
        let mut bad = a.to_args();
        let at = bad.iter().position(|x| x == "24x80").unwrap();
        bad[at] = "24by80".into();
        assert!(ShimArgs::parse(bad).is_err());
    }

    #[test]
    fn protocol_shapes() {
        let r: Request = serde_json::from_str(r#"{"op":"kill","signal":9}"#).unwrap();
        assert_eq!(r, Request::Kill { signal: 9 });
        let r: Request = serde_json::from_str(r#"{"op":"shutdown"}"#).unwrap();
        assert_eq!(r, Request::Shutdown { force: false });
        let s = serde_json::to_string(&Response::Exit(ExitRecord {
            exit_code: 137,
            signal: Some(9),
            oom_killed: false,
            finished_at: "t".into(),
            pid: 5,
        }))
        .unwrap();
        assert!(s.starts_with(r#"{"type":"exit","exit_code":137"#), "{s}");
    }
}
