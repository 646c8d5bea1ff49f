//! `CliError`: every way a verb can fail, each rendered as one line for the user.

use std::error::Error as StdError;
use std::io;

use shoal_api::validate::InvalidInput;

/// Why a verb failed. `Display` is the single line the binary prints after `Error: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The socket is missing, or nothing listens on it.
    #[error("cannot connect to the shoal daemon at {host}: is the daemon running?")]
    DaemonNotRunning { host: String },

    /// The socket exists but this user may not open it.
    #[error(
        "permission denied while connecting to the shoal daemon at {host}: run as root or as a member of the socket's group"
    )]
    PermissionDenied { host: String },

    /// Any other failure to reach the daemon.
    #[error("cannot connect to the shoal daemon at {host}: {reason}")]
    Connect { host: String, reason: String },

    /// `-H` named something this client cannot dial.
    #[error("invalid daemon address {host:?}: {why}")]
    InvalidHost { host: String, why: &'static str },

    /// The daemon refused or failed the request; its message is shown as written.
    #[error("{}", status_line(.0))]
    Rpc(tonic::Status),

    /// The daemon answered, but without something the contract promises.
    #[error("the daemon sent an incomplete answer: {0}")]
    Protocol(&'static str),

    /// A name, label key or payload refused by the shared validation rules.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),

    /// Any other bad user input, caught before a request is sent.
    #[error("{0}")]
    Usage(String),

    /// An input file (or stdin) could not be read.
    #[error("cannot read {path}: {reason}")]
    ReadInput { path: String, reason: String },

    /// Writing to stdout failed.
    #[error("cannot write output: {}", io_reason(.0))]
    Output(#[from] io::Error),

    /// Several references of one command failed; the ones that worked were already printed.
    #[error("{}", join_lines(.0))]
    Several(Vec<CliError>),
}

impl CliError {
    /// The process exit code for this error (`u8`, for `std::process::ExitCode::from`).
    /// Clap's own usage errors exit 2 before we run.
    pub fn exit_code(&self) -> u8 {
        1
    }

    /// Folds the failures of a multi-reference command: none, one as itself, or several.
    pub(crate) fn collect(mut errors: Vec<CliError>) -> Result<(), CliError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(CliError::Several(errors)),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        CliError::Usage(message.into())
    }

    /// Classifies a failure to open the daemon's socket by the OS error underneath it,
    /// because tonic wraps it several layers deep.
    pub(crate) fn connect_failed(host: &str, err: &(dyn StdError + 'static)) -> Self {
        let host = host.to_owned();
        match find_io_error(err).map(io::Error::kind) {
            Some(io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
                CliError::DaemonNotRunning { host }
            }
            Some(io::ErrorKind::PermissionDenied) => CliError::PermissionDenied { host },
            Some(_) => CliError::Connect {
                host,
                reason: find_io_error(err).map(io_reason).unwrap_or_default(),
            },
            // No OS error underneath: the connection broke below gRPC in some other way,
            // which to the user means the same thing as a daemon that is gone.
            None => CliError::DaemonNotRunning { host },
        }
    }

    /// Maps a gRPC status: transport failures (which tonic reports as `Unavailable` with a
    /// source attached) become connection errors; anything the server wrote is kept as is.
    pub(crate) fn from_status(host: &str, status: tonic::Status) -> Self {
        if status.code() == tonic::Code::Unavailable
            && let Some(source) = status.source()
        {
            return Self::connect_failed(host, source);
        }
        CliError::Rpc(status)
    }
}

fn find_io_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = e.source();
    }
    None
}

/// An OS error's text without Rust's ` (os error N)` suffix, which means nothing to users.
pub(crate) fn io_reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn status_line(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        format!(
            "the daemon failed the request: {}",
            status.code().description()
        )
    } else {
        status.message().to_owned()
    }
}

fn join_lines(errors: &[CliError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_are_shown_as_written() {
        let err = CliError::from_status(
            "unix:///x.sock",
            tonic::Status::not_found("node web1 not found"),
        );
        assert_eq!(err.to_string(), "node web1 not found");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn server_sent_unavailable_is_kept() {
        // No source: the server itself said it, e.g. while no leader is elected.
        let err = CliError::from_status(
            "unix:///x.sock",
            tonic::Status::unavailable("no leader elected yet; retry"),
        );
        assert_eq!(err.to_string(), "no leader elected yet; retry");
    }

    #[test]
    fn io_kinds_classify() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            CliError::connect_failed("unix:///x.sock", &refused).to_string(),
            "cannot connect to the shoal daemon at unix:///x.sock: is the daemon running?"
        );
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(
            CliError::connect_failed("unix:///x.sock", &denied)
                .to_string()
                .starts_with(
                    "permission denied while connecting to the shoal daemon at unix:///x.sock"
                )
        );
        let other = io::Error::from_raw_os_error(36);
        let msg = CliError::connect_failed("unix:///x.sock", &other).to_string();
        assert!(!msg.contains("os error"), "{msg}");
    }

    #[test]
    fn several_errors_join_on_one_line() {
        let err = CliError::collect(vec![
            CliError::usage("no such node: a"),
            CliError::usage("no such node: b"),
        ])
        .unwrap_err();
        assert_eq!(err.to_string(), "no such node: a; no such node: b");
        assert!(CliError::collect(vec![]).is_ok());
    }
}
