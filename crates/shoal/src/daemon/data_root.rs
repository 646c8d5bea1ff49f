//! The daemon's data root on disk: its layout, the lock that keeps two daemons off one root,
//! and the swarm state file whose format gates every start.
//!
//! ```text
//! <data-root>/lock                       held (flock) by the running daemon
//! <data-root>/swarm/state.json           this node's membership; its `format` is checked at start
//! <data-root>/swarm/certificates/        node key (0600; sealed under autolock), node
//!                                        certificate, root CA certificate
//! <data-root>/swarm/raft/                replicated log and snapshots (managers only)
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::autolock::Vault;

/// Format of `swarm/state.json` this build reads and writes.
pub(crate) const STATE_FORMAT: u32 = 1;

/// An opened, locked data root.
pub(crate) struct DataRoot {
    root: PathBuf,
    _lock: Flock<File>,
    /// The only writer of the node's identity files (see `autolock`).
    vault: std::sync::Arc<Vault>,
}

/// What this node is in its swarm; written when it enters one, removed when it leaves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SwarmState {
    pub(crate) format: u32,
    /// False until `swarm init` (or join) has fully completed; a start that finds `false`
    /// discards the half-made swarm directory, since the command never reported success.
    pub(crate) complete: bool,
    pub(crate) node_id: String,
    pub(crate) cluster_id: String,
    pub(crate) raft_id: u64,
    pub(crate) role: String,
    pub(crate) advertise_addr: String,
    pub(crate) listen_addr: String,
    /// host:port of managers a worker heartbeats (refreshed from the managers' answers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) managers: Vec<String>,
}

impl DataRoot {
    /// Creates (0700) and locks `root`. A second daemon on the same root is refused.
    pub(crate) fn open(root: &Path) -> anyhow::Result<DataRoot> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .with_context(|| format!("cannot create data root {}", root.display()))?;
        let lock_path = root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            anyhow::anyhow!(
                "data root {} is in use by another shoal daemon; give each daemon its own --data-root",
                root.display()
            )
        })?;
        Ok(DataRoot {
            root: root.to_owned(),
            _lock: lock,
            vault: std::sync::Arc::new(Vault::new(root.join("swarm").join("certificates"))),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.root
    }

    pub(crate) fn swarm_dir(&self) -> PathBuf {
        self.root.join("swarm")
    }

    /// The node's identity files and their protection: load, save and re-seal them here, never
    /// with `NodeCertificates::save`/`load` directly.
    pub(crate) fn vault(&self) -> &std::sync::Arc<Vault> {
        &self.vault
    }

    pub(crate) fn raft_dir(&self) -> PathBuf {
        self.swarm_dir().join("raft")
    }

    fn state_path(&self) -> PathBuf {
        self.swarm_dir().join("state.json")
    }

    /// The swarm this node belongs to, `None` when it belongs to none. A state file that is
    /// corrupt or from an unknown format is an error: the root is never silently re-initialised.
    pub(crate) fn load_state(&self) -> anyhow::Result<Option<SwarmState>> {
        let path = self.state_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.swarm_dir().exists() && dir_has_entries(&self.swarm_dir())? {
                    bail!(
                        "{} holds swarm data but no state.json: the data root is damaged",
                        self.swarm_dir().display()
                    );
                }
                return Ok(None);
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let probe: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is corrupt", path.display()))?;
        match probe.get("format").and_then(|f| f.as_u64()) {
            Some(f) if f == u64::from(STATE_FORMAT) => {}
            Some(f) => bail!(
                "{} has format {f}, but this shoal only understands format {STATE_FORMAT}: it was written by an incompatible version",
                path.display()
            ),
            None => bail!("{} is corrupt: it has no format field", path.display()),
        }
        let state: SwarmState = serde_json::from_value(probe)
            .with_context(|| format!("{} is corrupt", path.display()))?;
        if !state.complete {
            tracing::warn!(
                dir = %self.swarm_dir().display(),
                "discarding a swarm directory whose init or join never completed"
            );
            self.remove_swarm()?;
            return Ok(None);
        }
        Ok(Some(state))
    }

    /// Writes the state file atomically (temp file, fsync, rename, fsync of the directory).
    pub(crate) fn save_state(&self, state: &SwarmState) -> anyhow::Result<()> {
        let dir = self.swarm_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let bytes = serde_json::to_vec_pretty(state)?;
        write_atomically(&self.state_path(), &bytes)
    }

    /// Deletes everything this node kept about its swarm.
    pub(crate) fn remove_swarm(&self) -> anyhow::Result<()> {
        self.vault.reset();
        let dir = self.swarm_dir();
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
        }
    }
}

fn dir_has_entries(dir: &Path) -> anyhow::Result<bool> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .next()
        .is_some())
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let tmp = path.with_extension("tmp");
    {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SwarmState {
        SwarmState {
            format: STATE_FORMAT,
            complete: true,
            node_id: "n".into(),
            cluster_id: "c".into(),
            raft_id: 1,
            role: "manager".into(),
            advertise_addr: "10.0.0.1:2377".into(),
            listen_addr: "0.0.0.0:2377".into(),
            managers: Vec::new(),
        }
    }

    #[test]
    fn state_round_trip_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let root = DataRoot::open(dir.path()).unwrap();
        assert_eq!(root.load_state().unwrap(), None);
        root.save_state(&state()).unwrap();
        assert_eq!(root.load_state().unwrap(), Some(state()));
        let second = DataRoot::open(dir.path());
        assert!(
            second
                .err()
                .unwrap()
                .to_string()
                .contains("in use by another")
        );
    }

    #[test]
    fn refuses_corrupt_and_foreign_state() {
        let dir = tempfile::tempdir().unwrap();
        let root = DataRoot::open(dir.path()).unwrap();
        fs::create_dir_all(root.swarm_dir()).unwrap();
        fs::write(root.state_path(), b"{not json").unwrap();
        assert!(format!("{:#}", root.load_state().unwrap_err()).contains("is corrupt"));
        fs::write(root.state_path(), br#"{"format": 9}"#).unwrap();
        let err = format!("{:#}", root.load_state().unwrap_err());
        assert!(err.contains("incompatible version"), "{err}");
        // The refused file is left as it was.
        assert_eq!(fs::read(root.state_path()).unwrap(), br#"{"format": 9}"#);
    }

    #[test]
    fn incomplete_swarm_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let root = DataRoot::open(dir.path()).unwrap();
        let mut half = state();
        half.complete = false;
        root.save_state(&half).unwrap();
        fs::create_dir_all(root.raft_dir()).unwrap();
        assert_eq!(root.load_state().unwrap(), None);
        assert!(!root.swarm_dir().exists());
    }

    #[test]
    fn swarm_data_without_state_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let root = DataRoot::open(dir.path()).unwrap();
        fs::create_dir_all(root.raft_dir()).unwrap();
        assert!(
            root.load_state()
                .unwrap_err()
                .to_string()
                .contains("damaged")
        );
    }
}
