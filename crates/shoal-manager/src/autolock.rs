//! The swarm's unlock key in the cluster object: made when autolock is turned on, dropped when
//! it is turned off, replaced on rotation, and shown only through `GetUnlockKey` (never by
//! `GetCluster`). Managers follow it to re-seal their keys (the daemon's `autolock` module).

use shoal_api::object::Object;
use shoal_api::v1::{Cluster, ClusterSpec};
use shoal_pki::UnlockKey;

use crate::ManagerError;

/// Whether `spec` asks for autolocked managers.
pub fn autolock_enabled(spec: Option<&ClusterSpec>) -> bool {
    spec.and_then(|s| s.encryption.as_ref())
        .is_some_and(|e| e.auto_lock_managers)
}

fn fresh_key() -> Result<Vec<u8>, ManagerError> {
    UnlockKey::generate()
        .map(|k| k.as_bytes().to_vec())
        .map_err(|e| ManagerError::Internal(format!("cannot make an unlock key: {e}")))
}

/// Makes the cluster's unlock key agree with its spec: a new key when autolock is on and there
/// is none, no key when it is off. Called on every cluster update, before it is committed.
pub(crate) fn align_unlock_key(cluster: &mut Cluster) -> Result<(), ManagerError> {
    if autolock_enabled(cluster.spec.as_ref()) {
        if cluster.unlock_key.is_empty() {
            cluster.unlock_key = fresh_key()?;
        }
    } else {
        cluster.unlock_key.clear();
    }
    Ok(())
}

/// Replaces the unlock key of an autolocked cluster.
pub(crate) fn rotate_unlock_key(cluster: &mut Cluster) -> Result<UnlockKey, ManagerError> {
    unlock_key_of(cluster)?;
    cluster.unlock_key = fresh_key()?;
    unlock_key_of(cluster)
}

/// The cluster's unlock key; refused with the way to turn autolock on when it is off.
pub(crate) fn unlock_key_of(cluster: &Cluster) -> Result<UnlockKey, ManagerError> {
    if !autolock_enabled(cluster.spec.as_ref()) || cluster.unlock_key.is_empty() {
        return Err(ManagerError::FailedPrecondition(
            "autolock is not enabled on this swarm, so it has no unlock key: turn it on with \"shoal swarm update --autolock=true\"".to_owned(),
        ));
    }
    UnlockKey::from_bytes(&cluster.unlock_key).map_err(|e| {
        ManagerError::Internal(format!(
            "the cluster object {} holds a malformed unlock key: {e}",
            cluster.id()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::v1::EncryptionSettings;

    fn cluster(autolock: bool) -> Cluster {
        Cluster {
            id: "c".into(),
            spec: Some(ClusterSpec {
                encryption: Some(EncryptionSettings {
                    auto_lock_managers: autolock,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_key_follows_the_setting() {
        let mut c = cluster(true);
        align_unlock_key(&mut c).unwrap();
        assert_eq!(c.unlock_key.len(), 32);
        let first = unlock_key_of(&c).unwrap();
        // Staying on keeps the key.
        align_unlock_key(&mut c).unwrap();
        assert_eq!(unlock_key_of(&c).unwrap(), first);
        // Rotation replaces it.
        let rotated = rotate_unlock_key(&mut c).unwrap();
        assert_ne!(rotated, first);
        assert_eq!(unlock_key_of(&c).unwrap(), rotated);
        // Off drops it, and asking for it says how to turn autolock on.
        c.spec = cluster(false).spec;
        align_unlock_key(&mut c).unwrap();
        assert!(c.unlock_key.is_empty());
        let err = unlock_key_of(&c).unwrap_err().to_string();
        assert!(err.contains("--autolock=true"), "{err}");
        assert!(rotate_unlock_key(&mut c).is_err());
        assert!(c.unlock_key.is_empty());
        // A spec without encryption settings is autolock off.
        let mut bare = Cluster {
            unlock_key: vec![1; 32],
            ..Default::default()
        };
        align_unlock_key(&mut bare).unwrap();
        assert!(bare.unlock_key.is_empty());
    }

    #[test]
    fn a_malformed_stored_key_is_an_error_not_a_key() {
        let mut c = cluster(true);
        c.unlock_key = vec![1; 7];
        let err = unlock_key_of(&c).unwrap_err().to_string();
        assert!(err.contains("malformed unlock key"), "{err}");
    }
}
