//! `RaftConfig`: the knobs of one replicated-log node, their defaults, and their translation into
//! openraft's configuration.

use std::path::PathBuf;
use std::time::Duration;

use crate::cipher::StorageCipher;
use crate::compaction::CompactionPolicy;
use crate::error::RaftError;

/// Configuration of one node of the replicated log.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This node's raft id. Never reuse an id that was ever part of the cluster.
    pub node_id: u64,
    /// Holds `raft.redb` (log, vote, committed, last purged) and `snapshots.redb`.
    pub data_dir: PathBuf,
    pub heartbeat_interval: Duration,
    /// A follower that hears nothing from a leader for a random time in
    /// `[election_timeout_min, election_timeout_max)` starts an election.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Take a snapshot (and allow compaction) every this many log entries. The starting value:
    /// [`crate::ReplicatedLog::set_compaction`] changes it while running.
    pub snapshot_interval: u64,
    /// Entries kept after a snapshot so slow followers can catch up from the log (the starting
    /// value, as `snapshot_interval`).
    pub logs_to_keep_after_snapshot: u64,
    /// Coalesce concurrently queued proposals into one log entry.
    pub group_commit: bool,
    pub max_batch_proposals: usize,
    pub max_batch_bytes: usize,
    pub max_proposal_bytes: usize,
    /// How many group-commit batches may be in flight (submitted, not yet applied) at once.
    pub max_inflight_batches: usize,
    /// Longest wait for a quorum: a proposal, read barrier or voter change that has not gone
    /// through by then fails with [`crate::ProposeError::Timeout`] instead of waiting forever
    /// (a leader cut off from its followers stays leader in its own eyes).
    pub commit_timeout: Duration,
    /// Seals every log entry and snapshot this node stores (see [`StorageCipher`]). `None`
    /// stores them in clear; a data directory is either encrypted or not from its creation, and
    /// opening it the other way is refused.
    pub cipher: Option<StorageCipher>,
}

/// Largest AppendEntries payload we build, in entry bytes (a single larger entry is still sent
/// alone). Well under the 4 MiB gRPC default so no replication message hits a transport limit.
pub(crate) const MAX_APPEND_BYTES: usize = 2 * 1024 * 1024;
/// Snapshot chunk size on the wire.
pub(crate) const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

impl RaftConfig {
    /// Defaults modelled on swarmkit's (snapshot every 10,000 entries, keep 500, 1.5 MiB proposals)
    /// with sub-second failover: heartbeat 100 ms, election timeout 300–600 ms.
    pub fn new(node_id: u64, data_dir: impl Into<PathBuf>) -> Self {
        RaftConfig {
            node_id,
            data_dir: data_dir.into(),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(600),
            snapshot_interval: 10_000,
            logs_to_keep_after_snapshot: 500,
            group_commit: true,
            max_batch_proposals: 1024,
            max_batch_bytes: 1024 * 1024,
            max_proposal_bytes: 1536 * 1024,
            max_inflight_batches: 4,
            commit_timeout: Duration::from_secs(7),
            cipher: None,
        }
    }

    /// The compaction policy the node starts with.
    pub(crate) fn compaction(&self) -> CompactionPolicy {
        CompactionPolicy {
            snapshot_interval: self.snapshot_interval,
            keep_after_snapshot: self.logs_to_keep_after_snapshot,
        }
    }

    /// How long the leader may go without an acknowledgement from a voter before it reports
    /// that voter unreachable: three maximal election timeouts.
    pub fn unreachable_after(&self) -> Duration {
        self.election_timeout_max * 3
    }

    pub(crate) fn to_openraft(&self) -> Result<openraft::Config, RaftError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if self.snapshot_interval == 0 {
            return Err(RaftError::Config("snapshot_interval must be > 0".into()));
        }
        if self.max_batch_proposals == 0 || self.max_inflight_batches == 0 {
            return Err(RaftError::Config(
                "max_batch_proposals and max_inflight_batches must be > 0".into(),
            ));
        }
        let (heartbeat, min, max) = (
            ms(self.heartbeat_interval),
            ms(self.election_timeout_min),
            ms(self.election_timeout_max),
        );
        if heartbeat == 0 || min <= heartbeat || max <= min {
            return Err(RaftError::Config(format!(
                "need 0 < heartbeat_interval ({heartbeat} ms) < election_timeout_min ({min} ms) < election_timeout_max ({max} ms)"
            )));
        }
        // openraft waits a leader lease (its election_timeout_max) *plus* a random election
        // timeout in [its min, its max) before campaigning. Split our window so the sum lands in
        // [min, max): lease = max/2, random part in [min - max/2, max/2), floored above the
        // heartbeat as openraft requires.
        let lease = max / 2;
        let random_min = min.saturating_sub(lease).max(heartbeat + 1);
        if random_min >= lease {
            return Err(RaftError::Config(format!(
                "election_timeout_max ({max} ms) must be more than twice heartbeat_interval ({heartbeat} ms)"
            )));
        }
        let config = openraft::Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: heartbeat,
            election_timeout_min: random_min,
            election_timeout_max: lease,
            // A node that cannot win (partitioned, restarted, stale) must not bump the term and
            // depose a healthy leader when it comes back.
            enable_pre_vote: Some(true),
            // Snapshots and purges are ours to trigger (`compaction`), so that the policy can
            // change while running; openraft on its own would neither build nor purge.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES as u64,
            // Covers sending and installing a whole (chunked) snapshot, not one chunk.
            install_snapshot_timeout: 120_000,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| RaftError::Config(e.to_string()))
    }
}
