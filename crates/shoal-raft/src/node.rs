//! `ReplicatedLog`: one node of the replicated log. Owns the openraft instance, the group-commit
//! batcher, the leadership watch, and the receiving side of the peer transport.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{
    ChangeMembershipError, ClientWriteError, Fatal, ForwardReason, ForwardToLeader,
    InitializeError, LinearizableReadError,
};
use openraft::impls::ProgressResponder;
use openraft::raft::{AppendEntriesRequest, ClientWriteResult, VoteRequest};
use openraft::{BasicNode, ChangeMembers, ReadPolicy, ServerState};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::cipher::StorageCipher;
use crate::compaction::{self, CompactionPolicy, SnapshotStats};
use crate::config::RaftConfig;
use crate::error::{ProposeError, RaftError};
use crate::log_store::LogStore;
use crate::network::{NetworkFactory, PeerNetwork, RpcKind, SnapshotHeader, WireResult};
use crate::state_machine::{SmStore, SnapshotStore, StateMachine};
use crate::types::{self, Blob, Proposals, Raft, Replies, Snapshot, TypeConfig};

/// A point-in-time view of this node's raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub is_leader: bool,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    /// Index of the last entry covered by the current snapshot.
    pub snapshot_index: Option<u64>,
    /// Index of the last entry removed by compaction.
    pub purged_index: Option<u64>,
    /// The latest snapshot built or installed since this node opened.
    pub last_snapshot: Option<SnapshotStats>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Every member (voter or learner) and its address.
    pub members: BTreeMap<u64, String>,
    /// On the leader only: for each voter, how long ago it last acknowledged a heartbeat or
    /// replication (measured from when that request was sent). A voter missing here has not
    /// acknowledged anything since this node became leader. Empty on followers.
    pub last_contact: BTreeMap<u64, Duration>,
    /// On the leader only: each voter's reachability as the leader sees it, reachable when its
    /// last contact is younger than [`RaftConfig::unreachable_after`]. A voter is absent while
    /// the leader does not know yet (it has led for less than that and not heard from the voter);
    /// empty on followers. The leader itself is always reachable.
    pub voter_reachable: BTreeMap<u64, bool>,
}

struct Queued {
    data: Vec<u8>,
    reply: oneshot::Sender<Attempt>,
}

/// The outcome of one submission of a proposal.
enum Attempt {
    Answer(Result<Vec<u8>, ProposeError>),
    /// Refused before being appended because this new leader's lease is not established yet:
    /// safe to resubmit.
    LeaderNotReady,
}

struct Inner {
    id: u64,
    config: RaftConfig,
    raft: Raft,
    log_store: LogStore,
    snapshots: SnapshotStore,
    batch_tx: Mutex<Option<mpsc::Sender<Queued>>>,
    leader_tx: Arc<watch::Sender<Option<u64>>>,
    /// When this node last became leader (`None` while it is not), kept by the metrics watcher.
    leader_since: Arc<Mutex<Option<Instant>>>,
    compaction: watch::Sender<CompactionPolicy>,
    closed: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// One node of the replicated log. Cheap to clone; clones share the node.
///
/// Call [`ReplicatedLog::shutdown`] before dropping the last clone: it stops raft and releases the
/// data directory.
#[derive(Clone)]
pub struct ReplicatedLog {
    inner: Arc<Inner>,
}

/// A handle that does not keep the node alive (for routers the node itself holds).
#[derive(Clone)]
pub(crate) struct WeakLog(std::sync::Weak<Inner>);

impl WeakLog {
    pub(crate) fn upgrade(&self) -> Option<ReplicatedLog> {
        self.0.upgrade().map(|inner| ReplicatedLog { inner })
    }
}

impl std::fmt::Debug for ReplicatedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedLog")
            .field("id", &self.inner.id)
            .finish()
    }
}

const RAFT_FILE: &str = "raft.redb";
const SNAPSHOT_FILE: &str = "snapshots.redb";

impl ReplicatedLog {
    /// Opens (or creates) the node's data directory, restores the state machine from the stored
    /// snapshot and re-applies the committed log tail, then starts raft.
    pub async fn open(
        config: RaftConfig,
        state_machine: Arc<dyn StateMachine>,
        network: Arc<dyn PeerNetwork>,
    ) -> Result<ReplicatedLog, RaftError> {
        let raft_config = Arc::new(config.to_openraft()?);
        let dir = config.data_dir.clone();
        let cipher = config.cipher.clone();
        let (log_store, snapshots) = tokio::task::spawn_blocking(move || open_stores(&dir, cipher))
            .await
            .map_err(|e| RaftError::Fatal(format!("open task failed: {e}")))??;
        let id = config.node_id;
        let sm = SmStore::new(state_machine, snapshots.clone());
        let factory = NetworkFactory { id, net: network };
        let raft = match Raft::new(id, raft_config, factory, log_store.clone(), sm).await {
            Ok(raft) => raft,
            Err(e) => {
                close_stores(log_store, snapshots).await;
                return Err(RaftError::Storage(format!(
                    "cannot recover raft state from {}: {e}",
                    config.data_dir.display()
                )));
            }
        };

        // One round trip through the raft core: by then it has published its recovered state, so
        // `status()` is meaningful as soon as `open` returns.
        if let Err(e) = raft.with_raft_state(|_| ()).await {
            let _ = raft.shutdown().await;
            close_stores(log_store, snapshots).await;
            return Err(RaftError::Fatal(format!("raft did not start: {e}")));
        }

        let (leader_tx, _) = watch::channel(None);
        let leader_tx = Arc::new(leader_tx);
        let leader_since = Arc::new(Mutex::new(None));
        let (compaction, policy) = watch::channel(config.compaction());
        let mut tasks = vec![
            tokio::spawn(watch_metrics(
                id,
                raft.clone(),
                leader_tx.clone(),
                leader_since.clone(),
            )),
            tokio::spawn(compaction::run(id, raft.clone(), policy)),
        ];
        let batch_tx = if config.group_commit {
            let (tx, rx) = mpsc::channel(config.max_batch_proposals.max(1) * 4);
            tasks.push(tokio::spawn(batcher(
                raft.clone(),
                rx,
                config.max_batch_proposals,
                config.max_batch_bytes,
                config.max_inflight_batches,
            )));
            Some(tx)
        } else {
            None
        };
        tracing::info!(node = id, dir = %config.data_dir.display(), group_commit = config.group_commit, "raft node opened");
        Ok(ReplicatedLog {
            inner: Arc::new(Inner {
                id,
                config,
                raft,
                log_store,
                snapshots,
                batch_tx: Mutex::new(batch_tx),
                leader_tx,
                leader_since,
                compaction,
                closed: AtomicBool::new(false),
                tasks: Mutex::new(tasks),
            }),
        })
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub(crate) fn downgrade(&self) -> WeakLog {
        WeakLog(Arc::downgrade(&self.inner))
    }

    pub fn config(&self) -> &RaftConfig {
        &self.inner.config
    }

    /// Bootstraps a one-voter cluster made of this node, once: a no-op on a node that already has
    /// state (bootstrapped before, or joined to a cluster).
    pub async fn initialize_single(&self, addr: String) -> Result<(), RaftError> {
        let raft = &self.inner.raft;
        if raft.is_initialized().await.map_err(fatal_to_raft)? {
            return Ok(());
        }
        let members = BTreeMap::from([(self.inner.id, BasicNode { addr })]);
        match raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(
                    node = self.inner.id,
                    "raft cluster initialized with one voter"
                );
                Ok(())
            }
            Err(openraft::error::RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(openraft::error::RaftError::APIError(e)) => Err(RaftError::Fatal(e.to_string())),
            Err(openraft::error::RaftError::Fatal(f)) => Err(fatal_to_raft(f)),
        }
    }

    /// Submits one proposal; resolves with the state machine's answer once it is committed and
    /// applied here. With group commit, proposals queued together share one log entry.
    pub async fn propose(&self, proposal: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        let limit = self.inner.config.max_proposal_bytes;
        if proposal.len() > limit {
            return Err(ProposeError::TooLarge {
                size: proposal.len(),
                limit,
            });
        }
        let limit = self.inner.config.commit_timeout;
        tokio::time::timeout(limit, self.propose_until_answered(proposal))
            .await
            .unwrap_or(Err(ProposeError::Timeout(limit)))
    }

    async fn propose_until_answered(&self, proposal: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        // A freshly elected leader refuses writes until a quorum has acknowledged it; that is a
        // matter of one heartbeat round, so wait it out rather than report "not leader".
        let deadline = Instant::now() + self.inner.config.election_timeout_max * 2;
        loop {
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(ProposeError::Shutdown);
            }
            match self.propose_once(proposal.clone()).await {
                Attempt::Answer(answer) => return answer,
                Attempt::LeaderNotReady if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Attempt::LeaderNotReady => {
                    let status = self.status();
                    return Err(ProposeError::NotLeader {
                        leader_id: status.leader_id,
                        leader_addr: status
                            .leader_id
                            .and_then(|l| status.members.get(&l).cloned()),
                    });
                }
            }
        }
    }

    async fn propose_once(&self, proposal: Vec<u8>) -> Attempt {
        if self.inner.config.group_commit {
            let tx = self.inner.batch_tx.lock().clone();
            let Some(tx) = tx else {
                return Attempt::Answer(Err(ProposeError::Shutdown));
            };
            let (reply, rx) = oneshot::channel();
            let queued = Queued {
                data: proposal,
                reply,
            };
            if tx.send(queued).await.is_err() {
                return Attempt::Answer(Err(ProposeError::Shutdown));
            }
            rx.await
                .unwrap_or(Attempt::Answer(Err(ProposeError::Shutdown)))
        } else {
            let result = self
                .inner
                .raft
                .client_write(Proposals(vec![Blob(proposal)]))
                .await;
            let result = match result {
                Ok(resp) => Ok(resp),
                Err(openraft::error::RaftError::APIError(e)) => Err(e),
                Err(openraft::error::RaftError::Fatal(f)) => {
                    return Attempt::Answer(Err(fatal_to_propose(f)));
                }
            };
            distribute(result, 1)
                .pop()
                .unwrap_or(Attempt::Answer(Err(ProposeError::Fatal("no reply".into()))))
        }
    }

    /// Read barrier: returns once this node has confirmed (with a quorum) that it is the leader
    /// and has applied everything committed before the call. Reads after it are linearizable.
    pub async fn ensure_linearizable(&self) -> Result<(), ProposeError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ProposeError::Shutdown);
        }
        let limit = self.inner.config.commit_timeout;
        let barrier = self.inner.raft.ensure_linearizable(ReadPolicy::ReadIndex);
        let Ok(result) = tokio::time::timeout(limit, barrier).await else {
            return Err(ProposeError::Timeout(limit));
        };
        match result {
            Ok(_) => Ok(()),
            Err(openraft::error::RaftError::APIError(LinearizableReadError::ForwardToLeader(
                f,
            ))) => Err(not_leader(f)),
            Err(openraft::error::RaftError::APIError(LinearizableReadError::QuorumNotEnough(
                q,
            ))) => Err(ProposeError::NoQuorum(q.to_string())),
            Err(openraft::error::RaftError::Fatal(f)) => Err(fatal_to_propose(f)),
        }
    }

    pub fn status(&self) -> RaftStatus {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let is_leader = m.state == ServerState::Leader;
        let mut last_contact = BTreeMap::new();
        let mut voter_reachable = BTreeMap::new();
        if let (true, Some(acked)) = (is_leader, m.heartbeat.as_ref()) {
            let limit = self.inner.config.unreachable_after();
            let leading_for = self.inner.leader_since.lock().map(|t| t.elapsed());
            for voter in membership.voter_ids() {
                if voter == m.id {
                    voter_reachable.insert(voter, true);
                    continue;
                }
                let age = acked
                    .get(&voter)
                    .copied()
                    .flatten()
                    .map(|t| openraft::Instant::elapsed(&*t));
                match age {
                    Some(age) => {
                        last_contact.insert(voter, age);
                        voter_reachable.insert(voter, age < limit);
                    }
                    // Never heard from during this leadership: unreachable once we have led
                    // long enough to have heard from it.
                    None if leading_for.is_some_and(|l| l >= limit) => {
                        voter_reachable.insert(voter, false);
                    }
                    None => {}
                }
            }
        }
        RaftStatus {
            id: m.id,
            term: m.current_term,
            leader_id: m.current_leader,
            is_leader,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            last_snapshot: self.inner.snapshots.last_stats(),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            members: membership
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            last_contact,
            voter_reachable,
        }
    }

    /// True once [`ReplicatedLog::shutdown`] has been called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    pub fn is_leader(&self) -> bool {
        self.status().is_leader
    }

    /// The current leader's id (`None` while there is none), updated on every change. The
    /// manager watches it to start and stop its leader-only loops.
    pub fn leader_watch(&self) -> watch::Receiver<Option<u64>> {
        self.inner.leader_tx.subscribe()
    }

    /// Waits until some node is known as leader, for at most `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<u64> {
        let mut rx = self.leader_watch();
        let wait = rx.wait_for(|l| l.is_some());
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(leader)) => *leader,
            _ => None,
        }
    }

    /// Adds `id` (reachable at `addr`) as a non-voting learner. With `blocking`, returns once it
    /// holds the leader's log up to its own addition, by log or by snapshot, so that a learner
    /// made a voter next can vote on current entries at once.
    pub async fn add_learner(
        &self,
        id: u64,
        addr: String,
        blocking: bool,
    ) -> Result<(), ProposeError> {
        let raft = &self.inner.raft;
        retry_in_progress(self.inner.config.commit_timeout, || {
            raft.add_learner(id, BasicNode { addr: addr.clone() }, false)
        })
        .await?;
        if !blocking {
            return Ok(());
        }
        // A fixed target, reached even while writes go on; openraft's own blocking add waits
        // for "within N entries of the last one", which a busy leader's log may keep outrunning
        // and a short log satisfies before a snapshot has even been sent.
        let target = self.status().last_log_index.unwrap_or(0);
        // Catching up may rightly take long (a whole snapshot): the caller bounds it.
        self.wait_replicated(id, target).await
    }

    /// Waits (on the leader) until `id` holds the log up to `target`.
    async fn wait_replicated(&self, id: u64, target: u64) -> Result<(), ProposeError> {
        let mut metrics = self.inner.raft.metrics();
        loop {
            {
                let m = metrics.borrow_watched();
                let membership = m.membership_config.membership();
                if m.state != ServerState::Leader {
                    return Err(ProposeError::NotLeader {
                        leader_id: m.current_leader,
                        leader_addr: m
                            .current_leader
                            .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone())),
                    });
                }
                if membership.get_node(&id).is_none() {
                    return Err(ProposeError::Rejected(format!(
                        "node {id} was removed while catching up"
                    )));
                }
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten());
                if matched.is_some_and(|l| l.index >= target) {
                    return Ok(());
                }
            }
            if metrics.changed().await.is_err() {
                return Err(ProposeError::Shutdown);
            }
        }
    }

    /// Makes exactly `voters` the voting members (each must already be a member). Voters left out
    /// are removed from the cluster.
    pub async fn change_voters(&self, voters: BTreeSet<u64>) -> Result<(), ProposeError> {
        let raft = &self.inner.raft;
        let limit = self.inner.config.commit_timeout;
        retry_in_progress(limit, || {
            raft.change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), false)
        })
        .await
    }

    /// Removes `id` from the cluster, whether voter or learner.
    pub async fn remove_node(&self, id: u64) -> Result<(), ProposeError> {
        let raft = &self.inner.raft;
        let limit = self.inner.config.commit_timeout;
        retry_in_progress(limit, || {
            let change = if self.status().voters.contains(&id) {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            };
            raft.change_membership(change, false)
        })
        .await
    }

    /// Asks the leader (this node) to hand leadership to voter `to`; returns at once, the
    /// transfer completes when `to` wins its election.
    pub async fn transfer_leadership(&self, to: u64) -> Result<(), RaftError> {
        self.inner
            .raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(fatal_to_raft)
    }

    /// Changes when this node snapshots and how much log it keeps behind a snapshot, from now on
    /// (the next check happens at once).
    pub fn set_compaction(&self, policy: CompactionPolicy) -> Result<(), RaftError> {
        if policy.snapshot_interval == 0 {
            return Err(RaftError::Config("snapshot_interval must be > 0".into()));
        }
        let changed = self.inner.compaction.send_if_modified(|current| {
            let changed = *current != policy;
            *current = policy;
            changed
        });
        if changed {
            tracing::info!(
                node = self.inner.id,
                snapshot_interval = policy.snapshot_interval,
                keep_after_snapshot = policy.keep_after_snapshot,
                "raft compaction policy changed"
            );
        }
        Ok(())
    }

    /// The compaction policy in force.
    pub fn compaction(&self) -> CompactionPolicy {
        *self.inner.compaction.borrow()
    }

    /// Takes a snapshot now instead of waiting for `snapshot_interval` entries.
    pub async fn trigger_snapshot(&self) -> Result<(), RaftError> {
        self.inner
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(fatal_to_raft)
    }

    /// Handles one request received from a peer's [`PeerNetwork::call`] and returns the reply
    /// payload to send back.
    pub async fn handle_rpc(&self, kind: RpcKind, payload: &[u8]) -> Result<Vec<u8>, RaftError> {
        let malformed = |e: types::CodecError| RaftError::Malformed(e.to_string());
        let raft = &self.inner.raft;
        match kind {
            RpcKind::AppendEntries => {
                let req: AppendEntriesRequest<TypeConfig> =
                    types::decode("append entries request", payload).map_err(malformed)?;
                reply(raft.append_entries(req).await)
            }
            RpcKind::Vote => {
                let req: VoteRequest<TypeConfig> =
                    types::decode("vote request", payload).map_err(malformed)?;
                reply(raft.vote(req).await)
            }
            RpcKind::PreVote => {
                let req: VoteRequest<TypeConfig> =
                    types::decode("pre-vote request", payload).map_err(malformed)?;
                reply(raft.pre_vote(req).await)
            }
        }
    }

    /// Receives one snapshot streamed by a peer's [`PeerNetwork::install_snapshot`], installs it,
    /// and returns the reply payload.
    pub async fn handle_snapshot<S, E>(&self, chunks: S) -> Result<Vec<u8>, RaftError>
    where
        S: Stream<Item = Result<Vec<u8>, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let mut chunks = chunks;
        let broken = |e: E| RaftError::Malformed(format!("snapshot stream broken: {e}"));
        let header = chunks
            .next()
            .await
            .ok_or_else(|| RaftError::Malformed("empty snapshot stream".into()))?
            .map_err(broken)?;
        let header: SnapshotHeader = types::decode("snapshot header", &header)
            .map_err(|e| RaftError::Malformed(e.to_string()))?;
        // redb's value limit; also refuses absurd sizes before allocating.
        const MAX_SNAPSHOT_BYTES: u64 = 3 << 30;
        if header.size > MAX_SNAPSHOT_BYTES {
            return Err(RaftError::Malformed(format!(
                "snapshot of {} bytes exceeds {MAX_SNAPSHOT_BYTES}",
                header.size
            )));
        }
        let size = header.size as usize;
        let index = header.meta.last_log_id.map(|l| l.index);
        tracing::info!(node = self.inner.id, index, size, "receiving raft snapshot");
        let mut data = Vec::with_capacity(size.min(64 << 20));
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(broken)?;
            if data.len() + chunk.len() > size {
                return Err(RaftError::Malformed(
                    "snapshot longer than announced".into(),
                ));
            }
            data.extend_from_slice(&chunk);
        }
        if data.len() != size {
            return Err(RaftError::Malformed(format!(
                "snapshot truncated: {} of {size} bytes",
                data.len()
            )));
        }
        let snapshot = Snapshot {
            meta: header.meta,
            snapshot: data,
        };
        match self
            .inner
            .raft
            .install_full_snapshot(header.vote, snapshot)
            .await
        {
            Ok(resp) => encode_reply(&WireResult::Ok(resp)),
            Err(f) => Err(fatal_to_raft(f)),
        }
    }

    /// Stops raft, fails queued proposals with `Shutdown`, flushes and releases the data
    /// directory. Idempotent.
    pub async fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(node = self.inner.id, "raft node shutting down");
        self.inner.batch_tx.lock().take();
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft core did not stop cleanly");
        }
        let tasks: Vec<_> = self.inner.tasks.lock().drain(..).collect();
        for task in tasks {
            // The batcher drains and answers what is queued; the watcher ends with the metrics.
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("a raft background task did not stop in time");
            }
        }
        close_stores(self.inner.log_store.clone(), self.inner.snapshots.clone()).await;
        self.inner.leader_tx.send_replace(None);
    }
}

pub(crate) fn open_stores(
    dir: &Path,
    cipher: Option<StorageCipher>,
) -> Result<(LogStore, SnapshotStore), RaftError> {
    std::fs::create_dir_all(dir).map_err(|e| RaftError::Open {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let log_store = LogStore::open(&dir.join(RAFT_FILE), cipher.clone())?;
    match SnapshotStore::open(&dir.join(SNAPSHOT_FILE), cipher) {
        Ok(snapshots) => Ok((log_store, snapshots)),
        Err(e) => {
            log_store.close();
            Err(e)
        }
    }
}

pub(crate) async fn close_stores(log_store: LogStore, snapshots: SnapshotStore) {
    let closed = tokio::task::spawn_blocking(move || {
        log_store.close();
        snapshots.close();
    })
    .await;
    if let Err(e) = closed {
        tracing::warn!(error = %e, "closing raft storage failed");
    }
}

fn encode_reply<T: Serialize>(value: &WireResult<T>) -> Result<Vec<u8>, RaftError> {
    types::encode("rpc reply", value).map_err(|e| RaftError::Fatal(e.to_string()))
}

fn reply<T: Serialize>(
    result: Result<T, openraft::error::RaftError<TypeConfig>>,
) -> Result<Vec<u8>, RaftError> {
    match result {
        Ok(v) => encode_reply(&WireResult::Ok(v)),
        Err(openraft::error::RaftError::Fatal(f)) => Err(fatal_to_raft(f)),
        Err(openraft::error::RaftError::APIError(never)) => match never {},
    }
}

fn fatal_to_raft(f: Fatal<TypeConfig>) -> RaftError {
    match f {
        Fatal::Stopped => RaftError::Shutdown,
        other => RaftError::Fatal(other.to_string()),
    }
}

fn fatal_to_propose(f: Fatal<TypeConfig>) -> ProposeError {
    match f {
        Fatal::Stopped => ProposeError::Shutdown,
        other => ProposeError::Fatal(other.to_string()),
    }
}

fn not_leader(f: ForwardToLeader<TypeConfig>) -> ProposeError {
    ProposeError::NotLeader {
        leader_id: f.leader_id,
        leader_addr: f.leader_node.map(|n| n.addr),
    }
}

fn write_error(e: ClientWriteError<TypeConfig>) -> ProposeError {
    match e {
        ClientWriteError::ForwardToLeader(f) => not_leader(f),
        ClientWriteError::LogEntryDiscarded(f) => ProposeError::LeadershipLost {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        ClientWriteError::ChangeMembershipError(e) => ProposeError::Rejected(e.to_string()),
        other => ProposeError::Fatal(other.to_string()),
    }
}

/// Runs a membership change, retrying for a while if another change (e.g. the bootstrap
/// membership, or the second step of a joint change) is not committed yet.
/// Each attempt is bounded by `limit`: a membership change is a commit, and without a quorum it
/// would wait forever.
async fn retry_in_progress<T, F, Fut>(limit: Duration, mut attempt: F) -> Result<(), ProposeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
            Output = Result<
                T,
                openraft::error::RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
            >,
        >,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let Ok(result) = tokio::time::timeout(limit, attempt()).await else {
            return Err(ProposeError::Timeout(limit));
        };
        match result {
            Ok(_) => return Ok(()),
            Err(openraft::error::RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(p),
            ))) if Instant::now() < deadline => {
                tracing::debug!(%p, "membership change in progress; retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(openraft::error::RaftError::APIError(e)) => return Err(write_error(e)),
            Err(openraft::error::RaftError::Fatal(f)) => return Err(fatal_to_propose(f)),
        }
    }
}

/// Splits the outcome of one log entry into the answers of its `n` proposals.
fn distribute(result: ClientWriteResult<TypeConfig>, n: usize) -> Vec<Attempt> {
    let all = |e: ProposeError| (0..n).map(|_| Attempt::Answer(Err(e.clone()))).collect();
    match result {
        Ok(resp) => {
            let Replies(replies) = resp.data;
            if replies.len() != n {
                return all(ProposeError::Fatal(format!(
                    "state machine returned {} replies for {n} proposals",
                    replies.len()
                )));
            }
            replies
                .into_iter()
                .map(|b| Attempt::Answer(Ok(b.0)))
                .collect()
        }
        Err(ClientWriteError::ForwardToLeader(f)) if f.reason == ForwardReason::LeaseExpired => {
            (0..n).map(|_| Attempt::LeaderNotReady).collect()
        }
        Err(e) => all(write_error(e)),
    }
}

/// Group commit: drains whatever is queued (up to the batch limits) into one entry per
/// `client_write`. Submission is in queue order; up to `max_inflight` batches await their commit
/// concurrently, so a slow commit does not stop the next batch from forming and being submitted.
async fn batcher(
    raft: Raft,
    mut rx: mpsc::Receiver<Queued>,
    max_proposals: usize,
    max_bytes: usize,
    max_inflight: usize,
) {
    let inflight = Arc::new(Semaphore::new(max_inflight));
    let mut carry: Option<Queued> = None;
    loop {
        // Waiting for a slot first lets the queue grow meanwhile, so batches get larger exactly
        // when commits are slow.
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break;
        };
        let first = match carry.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => break,
            },
        };
        let mut bytes = first.data.len();
        let mut batch = vec![first];
        while batch.len() < max_proposals {
            match rx.try_recv() {
                Ok(q) if bytes + q.data.len() > max_bytes => {
                    carry = Some(q);
                    break;
                }
                Ok(q) => {
                    bytes += q.data.len();
                    batch.push(q);
                }
                Err(_) => break,
            }
        }
        let n = batch.len();
        let (data, replies): (Vec<Blob>, Vec<_>) =
            batch.into_iter().map(|q| (Blob(q.data), q.reply)).unzip();
        let (responder, done) = ProgressResponder::complete_only();
        if let Err(f) = raft.client_write_ff(Proposals(data), Some(responder)).await {
            let e = fatal_to_propose(f);
            for r in replies {
                let _ = r.send(Attempt::Answer(Err(e.clone())));
            }
            continue;
        }
        tokio::spawn(async move {
            let _permit = permit;
            let answers = match done.await {
                Ok(result) => distribute(result, n),
                Err(_) => (0..n)
                    .map(|_| Attempt::Answer(Err(ProposeError::Shutdown)))
                    .collect(),
            };
            for (r, a) in replies.into_iter().zip(answers) {
                let _ = r.send(a);
            }
        });
    }
    // Shut down: answer anything still queued.
    if let Some(q) = carry {
        let _ = q.reply.send(Attempt::Answer(Err(ProposeError::Shutdown)));
    }
    rx.close();
    while let Some(q) = rx.recv().await {
        let _ = q.reply.send(Attempt::Answer(Err(ProposeError::Shutdown)));
    }
}

/// Publishes leader changes and logs leadership and election events.
async fn watch_metrics(
    id: u64,
    raft: Raft,
    leader_tx: Arc<watch::Sender<Option<u64>>>,
    leader_since: Arc<Mutex<Option<Instant>>>,
) {
    let mut metrics = raft.metrics();
    drop(raft);
    let mut last_leader = None;
    let mut last_state = None;
    let mut last_term = 0;
    let mut leaderless_since: Option<Instant> = None;
    loop {
        let (leader, state, term) = {
            let m = metrics.borrow_watched();
            (m.current_leader, m.state, m.current_term)
        };
        let new_term = term != last_term;
        if new_term {
            tracing::debug!(node = id, term, "raft term changed");
            last_term = term;
        }
        if last_state != Some(state) || new_term {
            *leader_since.lock() = (state == ServerState::Leader).then(Instant::now);
        }
        if last_state != Some(state) {
            match state {
                ServerState::Candidate => tracing::info!(node = id, term, "raft election started"),
                ServerState::Leader => {
                    tracing::info!(node = id, term, "this node is now the raft leader")
                }
                _ if last_state == Some(ServerState::Leader) => {
                    tracing::info!(node = id, term, "this node lost raft leadership")
                }
                _ => {}
            }
            last_state = Some(state);
        }
        if leader != last_leader {
            match (leader, leaderless_since.take()) {
                (Some(l), Some(since)) => tracing::info!(
                    node = id,
                    term,
                    leader = l,
                    leaderless_ms = since.elapsed().as_millis() as u64,
                    "raft leader elected"
                ),
                (Some(l), None) => tracing::info!(node = id, term, leader = l, "raft leader known"),
                (None, _) => {
                    leaderless_since = Some(Instant::now());
                    tracing::info!(node = id, term, "raft leader lost");
                }
            }
            last_leader = leader;
            leader_tx.send_replace(leader);
        }
        if metrics.changed().await.is_err() {
            break;
        }
    }
}
