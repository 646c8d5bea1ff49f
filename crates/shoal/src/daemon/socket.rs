//! The local API socket: where it is, who may open it, and refusing to steal it from a live
//! daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nix::sys::stat::{Mode, umask};

/// The socket path named by `-H/--host` (`unix:///path` or a bare path).
pub(crate) fn path_of(host: &str) -> anyhow::Result<PathBuf> {
    let path = host.strip_prefix("unix://").unwrap_or(host);
    if path.contains("://") || !path.starts_with('/') {
        bail!(
            "invalid --host {host:?}: the daemon serves only a unix socket, given as unix:///absolute/path"
        );
    }
    Ok(PathBuf::from(path))
}

/// Binds the socket with mode 0600 (0660 and the group's ownership when `group` is given).
pub(crate) fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another shoal daemon is already serving {}; give each daemon its own -H socket",
                path.display()
            );
        }
        // Nobody answers: a socket left behind by a daemon that was killed.
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let gid = match group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .with_context(|| format!("cannot look up group {name}"))?
                .with_context(|| format!("no such group: {name}"))?
                .gid,
        ),
        None => None,
    };
    // The umask makes the socket private from its first instant, not after a chmod.
    let previous = umask(Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    umask(previous);
    let listener = bound.with_context(|| format!("cannot listen on {}", path.display()))?;
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("cannot give {} to its group", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(listener)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        assert_eq!(
            path_of("unix:///run/x.sock").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(
            path_of("/run/x.sock").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        assert!(path_of("tcp://1.2.3.4:2375").is_err());
        assert!(path_of("relative.sock").is_err());
    }

    #[tokio::test]
    async fn socket_is_private_and_not_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = bind(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind(&path, None).unwrap_err().to_string();
        assert!(err.contains("already serving"), "{err}");
        drop(listener);
        // A socket nobody serves any more is replaced.
        bind(&path, None).unwrap();
    }
}
