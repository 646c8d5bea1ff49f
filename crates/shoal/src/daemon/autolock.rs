//! Autolock on this host: the [`Vault`] that keeps the node's key protection (raft data keys,
//! and the unlock key while the swarm is autolocked) and is the one writer of the identity
//! files; the locked state of a manager whose key file is sealed; and the watch that re-seals
//! the files whenever the cluster's unlock key changes.
//!
//! Order of writes: a new protection is persisted (`node.key`, atomically) before a new data key
//! seals anything, so a crash never leaves a raft record whose key is not on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use shoal_api::object::{Kind, Object};
use shoal_api::v1::Cluster;
use shoal_manager::{Manager, ManagerError};
use shoal_pki::{DataKey, KeyProtection, NodeCertificates, PkiError, Role, UnlockKey};
use shoal_raft::StorageCipher;
use shoal_store::WatchError;

/// What loading the node's identity found.
pub(crate) enum Loaded {
    Open(Box<NodeCertificates>),
    /// The key file is sealed and this daemon does not hold the unlock key yet.
    Locked,
}

struct VaultState {
    /// `None` until the identity is loaded (or while locked).
    protection: Option<KeyProtection>,
    /// Holds exactly `protection`'s data keys; replaced when keys are dropped (a node that
    /// stops being a manager), so a stale key can never seal new records.
    cipher: StorageCipher,
}

/// The node's identity files under `swarm/certificates` and the protection they are kept with.
/// Every write of the identity goes through here (certificate renewal included), so the data
/// keys are never lost and the key file is always sealed under the current unlock key.
pub(crate) struct Vault {
    dir: PathBuf,
    state: Mutex<VaultState>,
}

impl Vault {
    pub(crate) fn new(dir: PathBuf) -> Vault {
        Vault {
            dir,
            state: Mutex::new(VaultState {
                protection: None,
                cipher: StorageCipher::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the identity: with the protection this daemon already holds, else from a clear
    /// key file. A sealed key file that this daemon has not been given the key for is
    /// `Locked`.
    pub(crate) fn load(&self) -> anyhow::Result<Loaded> {
        let mut state = self.lock();
        let unlock = state.protection.as_ref().and_then(|p| p.unlock_key.clone());
        if unlock.is_none() && NodeCertificates::is_sealed(&self.dir)? {
            return Ok(Loaded::Locked);
        }
        let (certs, protection) = NodeCertificates::load_protected(&self.dir, unlock.as_ref())?;
        adopt(&mut state, protection);
        Ok(Loaded::Open(Box::new(certs)))
    }

    /// Opens a sealed key file with `key`. A wrong key changes nothing.
    pub(crate) fn unlock(&self, key: &UnlockKey) -> Result<NodeCertificates, PkiError> {
        let mut state = self.lock();
        let (certs, protection) = NodeCertificates::load_protected(&self.dir, Some(key))?;
        adopt(&mut state, protection);
        Ok(certs)
    }

    /// The identity as stored now (e.g. for a call that needs the node's TLS identity).
    pub(crate) fn certificates(&self) -> anyhow::Result<NodeCertificates> {
        match self.load()? {
            Loaded::Open(certs) => Ok(*certs),
            Loaded::Locked => anyhow::bail!("this manager is locked: run shoal swarm unlock"),
        }
    }

    /// Writes the identity of a node entering a swarm (init or join), sealed under `unlock`
    /// when the swarm is autolocked from the start; `key_version` is the version of the
    /// cluster object that key came from (0 at init). Data keys come with the first raft open.
    pub(crate) fn save_new(
        &self,
        certs: &NodeCertificates,
        unlock: Option<UnlockKey>,
        key_version: u64,
    ) -> anyhow::Result<()> {
        let mut state = self.lock();
        let protection = KeyProtection {
            data_keys: Vec::new(),
            unlock_key: unlock,
            key_version,
        };
        certs.save(&self.dir, &protection)?;
        adopt(&mut state, protection);
        Ok(())
    }

    /// Writes a new identity of this node (a renewed certificate, a new key) under the current
    /// protection. A worker's identity keeps no data keys and is never sealed: workers do not
    /// lock.
    pub(crate) fn save(&self, certs: &NodeCertificates) -> anyhow::Result<()> {
        let mut state = self.lock();
        let current = state.protection.clone().context(
            "the node's identity is not loaded (this manager is locked: run shoal swarm unlock)",
        )?;
        let protection = if certs.identity()?.role == Role::Worker {
            KeyProtection::default()
        } else {
            current
        };
        certs.save(&self.dir, &protection)?;
        adopt(&mut state, protection);
        Ok(())
    }

    /// The cipher a raft log of this node is opened with. It seals under the newest data key;
    /// call [`Vault::ensure_data_key`] first so there is one.
    pub(crate) fn cipher(&self) -> StorageCipher {
        self.lock().cipher.clone()
    }

    /// Makes sure this node has a raft data key before its log in `raft_dir` is opened,
    /// creating and persisting one for a log that does not exist yet. Raft data without a key
    /// (written by a build without encryption at rest, or damage) gets none: opening it then
    /// fails with a line naming the file, and the data root is left as it was.
    pub(crate) fn ensure_data_key(&self, raft_dir: &Path) -> anyhow::Result<()> {
        let mut state = self.lock();
        let Some(current) = state.protection.clone() else {
            anyhow::bail!("this manager is locked: run shoal swarm unlock");
        };
        if !current.data_keys.is_empty() {
            return Ok(());
        }
        let has_data = std::fs::read_dir(raft_dir).is_ok_and(|mut d| d.next().is_some());
        if has_data {
            return Ok(());
        }
        let mut protection = current.clone();
        protection
            .data_keys
            .push(DataKey::generate(protection.next_data_key_id())?);
        self.reseal(&mut state, &current, protection)
    }

    /// Re-seals the identity under `key` (`None`: in clear), the unlock key of the cluster
    /// object at `version`. A version not newer than the one the files follow is a replay of
    /// history (a log re-applied at start) and changes nothing. Turning autolock on also adds a
    /// new data key, which seals every raft record from then on: the previous one has been on
    /// disk in clear. Returns whether anything changed, and whether a data key was added.
    pub(crate) fn set_unlock_key(
        &self,
        key: Option<UnlockKey>,
        version: u64,
    ) -> anyhow::Result<Resealed> {
        let mut state = self.lock();
        let Some(current) = state.protection.clone() else {
            anyhow::bail!("this manager is locked: run shoal swarm unlock");
        };
        if version <= current.key_version || current.unlock_key == key {
            return Ok(Resealed::Unchanged);
        }
        let turning_on = current.unlock_key.is_none() && key.is_some();
        let mut protection = current.clone();
        protection.unlock_key = key;
        protection.key_version = version;
        let rotated = turning_on && !protection.data_keys.is_empty();
        if rotated {
            protection
                .data_keys
                .push(DataKey::generate(protection.next_data_key_id())?);
        }
        self.reseal(&mut state, &current, protection)?;
        Ok(Resealed::Changed {
            new_data_key: rotated,
        })
    }

    /// Rewrites the identity files with `protection` (from `current`), then lets the cipher
    /// use its keys.
    fn reseal(
        &self,
        state: &mut VaultState,
        current: &KeyProtection,
        protection: KeyProtection,
    ) -> anyhow::Result<()> {
        let (certs, _) = NodeCertificates::load_protected(&self.dir, current.unlock_key.as_ref())?;
        certs.save(&self.dir, &protection)?;
        adopt(state, protection);
        Ok(())
    }

    /// Forgets everything (the swarm directory is being removed).
    pub(crate) fn reset(&self) {
        let mut state = self.lock();
        state.protection = None;
        state.cipher = StorageCipher::new();
    }
}

/// Makes `protection` current and the cipher hold exactly its data keys.
fn adopt(state: &mut VaultState, protection: KeyProtection) {
    let had = state
        .protection
        .as_ref()
        .map(|p| p.data_keys.iter().map(DataKey::id).collect::<Vec<_>>())
        .unwrap_or_default();
    let keeps_all = had
        .iter()
        .all(|id| protection.data_keys.iter().any(|k| k.id() == *id));
    if !keeps_all {
        state.cipher = StorageCipher::new();
    }
    for key in &protection.data_keys {
        state.cipher.add_key(key.id(), key.bytes());
    }
    state.protection = Some(protection);
}

/// What [`Vault::set_unlock_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resealed {
    Unchanged,
    Changed { new_data_key: bool },
}

/// The unlock key a cluster object holds (`None` when autolock is off). A malformed stored key
/// is reported and treated as absent rather than trusted.
pub(crate) fn cluster_unlock_key(cluster: &Cluster) -> Option<UnlockKey> {
    if cluster.unlock_key.is_empty() {
        return None;
    }
    match UnlockKey::from_bytes(&cluster.unlock_key) {
        Ok(key) => Some(key),
        Err(error) => {
            tracing::error!(%error, "the cluster object holds a malformed unlock key; ignoring it");
            None
        }
    }
}

/// Follows the cluster's unlock key: every change (autolock on or off, a rotation) re-seals
/// this manager's identity and data keys under the new key. A failed write is retried from a
/// fresh view, so a later change is never held up behind an older one.
pub(crate) async fn follow_unlock_key(manager: Arc<Manager>, vault: Arc<Vault>) {
    loop {
        let (view, watcher) = manager.store().view_and_watch();
        let mut watcher = watcher.only(&[Kind::Cluster]);
        let mut wanted = view.cluster().map(|c| (cluster_unlock_key(c), c.version()));
        let retry = loop {
            if let Some((key, version)) = wanted.take()
                && let Err(error) = apply(&manager, &vault, key, version).await
            {
                tracing::error!(error = %format!("{error:#}"), "cannot re-seal the node key for the swarm's unlock key; retrying");
                break true;
            }
            match watcher.next().await {
                Ok(event) => {
                    wanted = event
                        .of::<Cluster>()
                        .last()
                        .map(|(_, c)| (cluster_unlock_key(c), c.version()));
                }
                Err(WatchError::Closed) => return,
                // Lagged, or a snapshot replaced the store: start over from a fresh view.
                Err(_) => break false,
            }
        };
        if retry {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn apply(
    manager: &Manager,
    vault: &Vault,
    key: Option<UnlockKey>,
    version: u64,
) -> anyhow::Result<()> {
    let autolock = key.is_some();
    let Resealed::Changed { new_data_key } = vault.set_unlock_key(key, version)? else {
        return Ok(());
    };
    tracing::info!(
        autolock,
        new_data_key,
        "node key and raft data keys re-sealed for the swarm's unlock key"
    );
    if new_data_key {
        // The snapshot is the bulk of the state: rewrite it under the new data key now rather
        // than at the next scheduled snapshot.
        if let Err(error) = manager.log().trigger_snapshot().await {
            tracing::warn!(%error, "could not re-write the raft snapshot under the new data key");
        }
    }
    Ok(())
}

/// Opens the vault of a locked manager with the key text an operator gave. A malformed key and
/// a wrong key are one line each, and change nothing on disk.
pub(crate) fn unlock(vault: &Vault, text: &str) -> Result<(), ManagerError> {
    let key = UnlockKey::parse(text).map_err(|e| ManagerError::InvalidArgument(e.to_string()))?;
    match vault.unlock(&key) {
        Ok(_) => Ok(()),
        Err(PkiError::WrongUnlockKey { .. }) => Err(ManagerError::InvalidArgument(
            "wrong unlock key: this manager was locked with another key (if the key was rotated while it was down, use the key that was current when it stopped)".to_owned(),
        )),
        Err(error) => Err(ManagerError::Internal(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_pki::{NodeCertRequest, NodeKey, RootCa};

    fn certs(root: &RootCa, role: Role) -> NodeCertificates {
        let key = NodeKey::generate().unwrap();
        let issued = root
            .sign_node(
                &key.csr_pem().unwrap(),
                &NodeCertRequest {
                    node_id: "node1".into(),
                    role,
                    cluster_id: "cluster1".into(),
                    validity: Duration::from_secs(7200),
                },
            )
            .unwrap();
        NodeCertificates {
            key,
            cert_pem: issued.cert_pem,
            root_ca_pem: root.cert_pem().to_owned(),
        }
    }

    fn on_disk(dir: &std::path::Path, key: Option<&UnlockKey>) -> KeyProtection {
        NodeCertificates::load_protected(dir, key).unwrap().1
    }

    fn ids(protection: &KeyProtection) -> Vec<u32> {
        protection.data_keys.iter().map(DataKey::id).collect()
    }

    #[test]
    fn keys_follow_the_cluster_and_are_persisted_before_use() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certificates");
        let root = RootCa::generate().unwrap();
        let vault = Vault::new(dir.clone());
        vault
            .save_new(&certs(&root, Role::Manager), None, 0)
            .unwrap();
        assert_eq!(vault.cipher().current_key_id(), None);
        vault.ensure_data_key(&tmp.path().join("raft")).unwrap();
        vault.ensure_data_key(&tmp.path().join("raft")).unwrap();
        assert_eq!(ids(&on_disk(&dir, None)), [1]);
        let cipher = vault.cipher();
        assert_eq!(cipher.current_key_id(), Some(1));

        // Autolock on: sealed, and a new data key (the first was on disk in clear).
        let key = UnlockKey::generate().unwrap();
        assert_eq!(
            vault.set_unlock_key(Some(key.clone()), 10).unwrap(),
            Resealed::Changed { new_data_key: true }
        );
        assert!(NodeCertificates::is_sealed(&dir).unwrap());
        assert_eq!(ids(&on_disk(&dir, Some(&key))), [1, 2]);
        assert_eq!(on_disk(&dir, Some(&key)).key_version, 10);
        // The running log's cipher (a clone) seals with the new key from now on.
        assert_eq!(cipher.current_key_id(), Some(2));
        assert_eq!(
            vault.set_unlock_key(Some(key.clone()), 12).unwrap(),
            Resealed::Unchanged
        );
        // An older cluster object (a log replayed at start) is history, not a change.
        assert_eq!(vault.set_unlock_key(None, 9).unwrap(), Resealed::Unchanged);
        assert!(NodeCertificates::is_sealed(&dir).unwrap());

        // Rotation: re-sealed, same data keys.
        let rotated = UnlockKey::generate().unwrap();
        assert_eq!(
            vault.set_unlock_key(Some(rotated.clone()), 20).unwrap(),
            Resealed::Changed {
                new_data_key: false
            }
        );
        assert_eq!(
            vault.set_unlock_key(Some(key.clone()), 10).unwrap(),
            Resealed::Unchanged
        );
        assert_eq!(ids(&on_disk(&dir, Some(&rotated))), [1, 2]);
        assert!(NodeCertificates::load_protected(&dir, Some(&key)).is_err());

        // A renewal (new key pair) keeps the protection.
        vault.save(&certs(&root, Role::Manager)).unwrap();
        assert_eq!(ids(&on_disk(&dir, Some(&rotated))), [1, 2]);
        assert_eq!(on_disk(&dir, Some(&rotated)).key_version, 20);

        // Off: in clear again, data keys kept.
        vault.set_unlock_key(None, 30).unwrap();
        assert!(!NodeCertificates::is_sealed(&dir).unwrap());
        assert_eq!(ids(&on_disk(&dir, None)), [1, 2]);
        assert_eq!(on_disk(&dir, None).key_version, 30);

        // Demoted: a worker keeps no data keys, and the cipher forgets them.
        vault.set_unlock_key(Some(key), 40).unwrap();
        vault.save(&certs(&root, Role::Worker)).unwrap();
        assert!(!NodeCertificates::is_sealed(&dir).unwrap());
        assert!(on_disk(&dir, None).data_keys.is_empty());
        assert_eq!(vault.cipher().current_key_id(), None);
    }

    #[test]
    fn raft_data_without_a_key_gets_none() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certificates");
        let vault = Vault::new(dir.clone());
        vault
            .save_new(&certs(&RootCa::generate().unwrap(), Role::Manager), None, 0)
            .unwrap();
        // A log from a build without encryption at rest: no key is made up for it, so opening
        // it fails on its format and the data root is left as it was.
        let raft = tmp.path().join("raft");
        std::fs::create_dir_all(&raft).unwrap();
        std::fs::write(raft.join("raft.redb"), b"older").unwrap();
        let before = std::fs::read(dir.join(shoal_pki::KEY_FILE)).unwrap();
        vault.ensure_data_key(&raft).unwrap();
        assert_eq!(
            std::fs::read(dir.join(shoal_pki::KEY_FILE)).unwrap(),
            before
        );
        assert_eq!(vault.cipher().current_key_id(), None);
    }

    #[test]
    fn a_sealed_identity_is_locked_until_the_right_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certificates");
        let root = RootCa::generate().unwrap();
        let key = UnlockKey::generate().unwrap();
        {
            let vault = Vault::new(dir.clone());
            vault
                .save_new(&certs(&root, Role::Manager), Some(key.clone()), 0)
                .unwrap();
            vault.ensure_data_key(&tmp.path().join("raft")).unwrap();
        }
        let sealed = std::fs::read(dir.join(shoal_pki::KEY_FILE)).unwrap();

        // A restarted daemon.
        let vault = Vault::new(dir.clone());
        assert!(matches!(vault.load().unwrap(), Loaded::Locked));
        assert!(vault.ensure_data_key(&tmp.path().join("raft")).is_err());
        assert!(vault.save(&certs(&root, Role::Manager)).is_err());
        let err = unlock(&vault, "SHLKEY-1-nope").unwrap_err().to_string();
        assert!(err.starts_with("invalid unlock key"), "{err}");
        let other = UnlockKey::generate().unwrap().to_string();
        let err = unlock(&vault, &other).unwrap_err().to_string();
        assert!(err.starts_with("wrong unlock key"), "{err}");
        assert_eq!(
            std::fs::read(dir.join(shoal_pki::KEY_FILE)).unwrap(),
            sealed
        );
        assert!(matches!(vault.load().unwrap(), Loaded::Locked));

        unlock(&vault, &format!("{key}\n")).unwrap();
        assert!(matches!(vault.load().unwrap(), Loaded::Open(_)));
        assert_eq!(vault.cipher().current_key_id(), Some(1));

        // Leaving the swarm forgets it all.
        vault.reset();
        assert!(matches!(vault.load().unwrap(), Loaded::Locked));
        assert_eq!(vault.cipher().current_key_id(), None);
    }
}
