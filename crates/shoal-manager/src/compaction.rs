//! Keeps this manager's log compaction in line with the cluster's raft settings
//! (`ClusterSpec.raft`: snapshot interval, entries kept for slow followers). Every manager,
//! leader or not, reads them from its own store and applies them as soon as it applies the
//! change, so `swarm update` takes effect without a restart.

use std::sync::Arc;

use shoal_api::object::Kind;
use shoal_api::v1::RaftSettings;
use shoal_raft::CompactionPolicy;
use shoal_store::{View, WatchError};

use crate::Manager;
use crate::bootstrap::default_cluster_spec;

/// The policy `settings` ask for; unset (zero) values take the defaults.
pub fn policy_of(settings: Option<&RaftSettings>) -> CompactionPolicy {
    let defaults = default_cluster_spec().raft.unwrap_or_default();
    let pick = |given: u64, default: u64| if given == 0 { default } else { given };
    let given = settings.cloned().unwrap_or_default();
    CompactionPolicy {
        snapshot_interval: pick(given.snapshot_interval, defaults.snapshot_interval),
        keep_after_snapshot: pick(
            given.log_entries_for_slow_followers,
            defaults.log_entries_for_slow_followers,
        ),
    }
}

fn apply(manager: &Manager, view: &View) {
    let settings = view
        .cluster()
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.raft.as_ref());
    if let Err(error) = manager.log().set_compaction(policy_of(settings)) {
        tracing::warn!(%error, "raft settings of the cluster not applied");
    }
}

/// Applies the cluster's raft settings now and on every change to the cluster object, until the
/// store closes. Runs on every manager; the daemon aborts it when the manager stops.
pub async fn follow_raft_settings(manager: Arc<Manager>) {
    loop {
        let (view, watcher) = manager.store().view_and_watch();
        let mut watcher = watcher.only(&[Kind::Cluster]);
        apply(&manager, &view);
        loop {
            match watcher.next().await {
                Ok(_) => apply(&manager, &manager.store().view()),
                // Replaced by a snapshot, or fell behind: start again from a fresh view.
                Err(WatchError::Reset | WatchError::Lagged) => break,
                Err(WatchError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_default() {
        assert_eq!(
            policy_of(None),
            CompactionPolicy {
                snapshot_interval: 10_000,
                keep_after_snapshot: 500
            }
        );
        let given = RaftSettings {
            snapshot_interval: 7,
            ..Default::default()
        };
        assert_eq!(
            policy_of(Some(&given)),
            CompactionPolicy {
                snapshot_interval: 7,
                keep_after_snapshot: 500
            }
        );
    }
}
