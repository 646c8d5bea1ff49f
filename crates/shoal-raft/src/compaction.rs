//! Log compaction, driven by this crate rather than by openraft's fixed policy: when to take a
//! snapshot and how much log to keep behind it can change while the node runs
//! ([`crate::ReplicatedLog::set_compaction`]), which openraft's start-time configuration cannot.
//!
//! Every node (leader, follower, learner) compacts its own log: once `snapshot_interval` entries
//! have been applied since the last snapshot, it builds one; once a snapshot exists, it purges the
//! log up to `keep_after_snapshot` entries behind it. A peer that needs a purged entry is sent the
//! snapshot instead (in chunks, see `network`).

use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::watch;

use crate::types::Raft;

/// When to snapshot and how much log to keep behind a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Build a snapshot once this many entries were applied since the last one (at least 1).
    pub snapshot_interval: u64,
    /// Entries kept behind the latest snapshot, so that a follower that is only a little behind
    /// catches up from the log rather than by a whole snapshot.
    pub keep_after_snapshot: u64,
}

/// The latest snapshot this node built or installed since it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Index of the last entry it covers.
    pub index: u64,
    /// Size of its data.
    pub bytes: u64,
    /// Time to serialize and persist it, for one built here; `None` for one installed (sent by
    /// the leader, or the stored one restored at start).
    pub build: Option<Duration>,
}

/// A snapshot build that has not shown up in the metrics by then is asked for again (a failed
/// build leaves no other trace than the log line).
const BUILD_RETRY: Duration = Duration::from_secs(60);

/// Watches this node's applied, snapshot and purged indexes and asks openraft for a snapshot or
/// a purge when `policy` says so. Ends when raft stops.
pub(crate) async fn run(id: u64, raft: Raft, mut policy: watch::Receiver<CompactionPolicy>) {
    let mut metrics = raft.metrics();
    // (snapshot index when the build was asked for, when)
    let mut building: Option<(Option<u64>, Instant)> = None;
    let mut purge_asked: Option<u64> = None;
    loop {
        let (applied, snapshot, purged) = {
            let m = metrics.borrow_watched();
            (
                m.last_applied.map(|l| l.index),
                m.snapshot.map(|l| l.index),
                m.purged.map(|l| l.index),
            )
        };
        let CompactionPolicy {
            snapshot_interval,
            keep_after_snapshot,
        } = *policy.borrow();

        if let Some((base, at)) = building
            && (snapshot > base || at.elapsed() >= BUILD_RETRY)
        {
            building = None;
        }
        if building.is_none()
            && let Some(applied) = applied
            && applied_since(applied, snapshot) >= snapshot_interval.max(1)
        {
            tracing::debug!(node = id, applied, ?snapshot, "building a raft snapshot");
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            building = Some((snapshot, Instant::now()));
        }

        if let Some(upto) = snapshot.and_then(|s| s.checked_sub(keep_after_snapshot))
            && purged.is_none_or(|p| upto > p)
            && purge_asked.is_none_or(|p| upto > p)
        {
            tracing::debug!(node = id, upto, ?snapshot, "purging the raft log");
            if raft.trigger().purge_log(upto).await.is_err() {
                return;
            }
            purge_asked = Some(upto);
        }

        let retry = building.map_or(BUILD_RETRY, |(_, at)| {
            BUILD_RETRY.saturating_sub(at.elapsed())
        });
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            changed = policy.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(retry) => {}
        }
    }
}

/// Entries applied since the snapshot covering up to `snapshot` (all of them without one; the
/// log starts at index 0).
fn applied_since(applied: u64, snapshot: Option<u64>) -> u64 {
    match snapshot {
        Some(s) => applied.saturating_sub(s),
        None => applied + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_entries_since_the_snapshot() {
        assert_eq!(applied_since(0, None), 1);
        assert_eq!(applied_since(9, None), 10);
        assert_eq!(applied_since(9, Some(9)), 0);
        assert_eq!(applied_since(19, Some(9)), 10);
        // A snapshot installed past what was applied (a follower catching up).
        assert_eq!(applied_since(5, Some(9)), 0);
    }
}
