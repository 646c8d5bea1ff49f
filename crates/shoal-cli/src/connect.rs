//! `connect.rs`: the `-H` address and the gRPC channel to the local daemon's unix socket.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::CliError;

/// Where the daemon listens unless `-H` or `SHOAL_HOST` says otherwise.
pub const DEFAULT_HOST: &str = "unix:///run/shoal/shoal.sock";

/// Options every client verb shares.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Daemon socket to connect to (unix:///path or a plain path)
    // Not `global`: like Docker, `-H` goes before the verb, and the daemon's own flags stay free.
    #[arg(
        short = 'H',
        long = "host",
        env = "SHOAL_HOST",
        default_value = DEFAULT_HOST,
        value_name = "HOST"
    )]
    pub host: String,
}

impl Default for GlobalArgs {
    fn default() -> Self {
        GlobalArgs {
            host: DEFAULT_HOST.to_owned(),
        }
    }
}

/// The socket path `host` names: `unix:///p` or a bare path. Other schemes are refused,
/// since the daemon serves clients only on its local unix socket.
pub fn socket_path(host: &str) -> Result<PathBuf, CliError> {
    let refuse = |why| {
        Err(CliError::InvalidHost {
            host: host.to_owned(),
            why,
        })
    };
    let path = if let Some(rest) = host.strip_prefix("unix://") {
        rest
    } else if host.contains("://") {
        return refuse(
            "only the local unix socket is served; use unix:///path/to/shoal.sock or a plain path",
        );
    } else {
        host
    };
    if path.is_empty() {
        return refuse("the socket path is empty");
    }
    Ok(PathBuf::from(path))
}

/// The form of `host` used in messages, so a bare path and its `unix://` spelling read alike.
pub(crate) fn display_host(host: &str) -> String {
    match socket_path(host) {
        Ok(path) => format!("unix://{}", path.display()),
        Err(_) => host.to_owned(),
    }
}

/// Opens a gRPC channel to the daemon at `host` (see [`socket_path`]). Connects eagerly so
/// that a missing daemon is reported here, in one line, rather than by the first request.
pub async fn connect(host: &str) -> Result<Channel, CliError> {
    let path = socket_path(host)?;
    let shown = display_host(host);
    // The URI is never dialed: the connector below ignores it. It only fills `:authority`.
    let endpoint = Endpoint::from_static("http://localhost");
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|err| CliError::connect_failed(&shown, &err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_urls_and_bare_paths() {
        assert_eq!(
            socket_path("unix:///run/shoal/shoal.sock").unwrap(),
            PathBuf::from("/run/shoal/shoal.sock")
        );
        assert_eq!(
            socket_path("/tmp/s.sock").unwrap(),
            PathBuf::from("/tmp/s.sock")
        );
        assert_eq!(socket_path("./s.sock").unwrap(), PathBuf::from("./s.sock"));
        assert_eq!(display_host("/tmp/s.sock"), "unix:///tmp/s.sock");
    }

    #[test]
    fn other_schemes_are_refused_clearly() {
        let err = socket_path("tcp://10.0.0.1:2375").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid daemon address \"tcp://10.0.0.1:2375\": only the local unix socket is served; \
             use unix:///path/to/shoal.sock or a plain path"
        );
        assert!(socket_path("unix://").is_err());
        assert!(socket_path("").is_err());
    }

    #[tokio::test]
    async fn missing_socket_says_daemon_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let host = format!("unix://{}/nope.sock", dir.path().display());
        let err = connect(&host).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot connect to the shoal daemon at {host}: is the daemon running?")
        );
        // The bare-path spelling reports the same address.
        let bare = format!("{}/nope.sock", dir.path().display());
        assert_eq!(
            connect(&bare).await.unwrap_err().to_string(),
            err.to_string()
        );
    }

    #[tokio::test]
    async fn stale_socket_file_says_daemon_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = connect(path.to_str().unwrap()).await.unwrap_err();
        assert!(matches!(err, CliError::DaemonNotRunning { .. }), "{err}");
    }
}
