//! Disaster recovery on a stopped node's data directory: `force_new_cluster` turns what this node
//! holds into a one-voter cluster of itself, keeping every committed change.
//!
//! Raft cannot change its membership without a quorum of the old one, which is exactly what is
//! missing when this is needed; so it is done offline, on the files: the committed state is
//! rebuilt (stored snapshot + committed log tail), written as a new snapshot whose membership is
//! this node alone, and the log is emptied behind it. The next `ReplicatedLog::open` finds a
//! single voter and elects itself. Entries past the committed index are dropped: this node cannot
//! know whether any other node ever committed them, and keeping them would invent history.
//!
//! The rewrite happens in a copy of the directory that replaces the original by rename, so a
//! crash at any point leaves either the old state or the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::{BasicNode, EntryPayload, Membership};

use crate::cipher::StorageCipher;
use crate::config::RaftConfig;
use crate::error::RaftError;
use crate::node::{close_stores, open_stores};
use crate::state_machine::StateMachine;
use crate::types::{LogId, SnapshotMeta, StoredMembership};

/// What [`force_new_cluster`] kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedCluster {
    /// Index of the last committed change kept (the new snapshot's index).
    pub last_index: u64,
    /// Raft ids of the voters and learners the old membership had besides this node.
    pub dropped_members: Vec<u64>,
    /// Log entries past the committed index that were discarded.
    pub discarded_entries: u64,
}

fn storage(what: &str, e: impl std::fmt::Display) -> RaftError {
    RaftError::Storage(format!("{what}: {e}"))
}

/// Rewrites the (closed) data directory of `config` into a one-voter cluster of
/// `config.node_id` reachable at `addr`, with every committed change kept. `scratch` is an
/// empty instance of the application's state machine, used to rebuild the state.
///
/// The log must not be open anywhere while this runs.
pub async fn force_new_cluster(
    config: &RaftConfig,
    addr: String,
    scratch: Arc<dyn StateMachine>,
) -> Result<ForcedCluster, RaftError> {
    let dir = config.data_dir.clone();
    let work = sibling(&dir, "forcing");
    let old = sibling(&dir, "replaced");
    let (dir_c, work_c, old_c) = (dir.clone(), work.clone(), old.clone());
    blocking(move || {
        // Leftovers of an interrupted earlier attempt: the original is still in place.
        remove_dir_if_present(&work_c)?;
        remove_dir_if_present(&old_c)?;
        copy_dir(&dir_c, &work_c)
    })
    .await?;

    let forced = rewrite(&work, config.node_id, addr, scratch, config.cipher.clone()).await;
    let forced = match forced {
        Ok(forced) => forced,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    blocking(move || {
        std::fs::rename(&dir, &old)
            .map_err(|e| storage("cannot set the old raft state aside", e))?;
        std::fs::rename(&work, &dir)
            .map_err(|e| storage("cannot put the new raft state in place", e))?;
        sync_parent(&dir);
        remove_dir_if_present(&old)
    })
    .await?;
    tracing::warn!(
        node = config.node_id,
        last_index = forced.last_index,
        dropped = ?forced.dropped_members,
        discarded = forced.discarded_entries,
        "raft membership forced to this node alone"
    );
    Ok(forced)
}

async fn rewrite(
    dir: &Path,
    id: u64,
    addr: String,
    app: Arc<dyn StateMachine>,
    cipher: Option<StorageCipher>,
) -> Result<ForcedCluster, RaftError> {
    let dir_owned = dir.to_path_buf();
    let (mut log_store, snapshots) = blocking(move || open_stores(&dir_owned, cipher)).await?;
    let result = async {
        let stored = {
            let snapshots = snapshots.clone();
            blocking(move || {
                snapshots
                    .load()
                    .map_err(|e| storage("reading the snapshot", e))
            })
            .await?
        };
        let mut membership = StoredMembership::default();
        let mut applied: Option<LogId> = None;
        if let Some(snapshot) = &stored {
            let index = snapshot.meta.last_log_id.map_or(0, |l| l.index);
            app.restore(index, &snapshot.snapshot)
                .map_err(|e| storage("the stored snapshot does not restore", e))?;
            applied = snapshot.meta.last_log_id;
            membership = snapshot.meta.last_membership.clone();
        }
        let committed = log_store
            .read_committed()
            .await
            .map_err(|e| storage("reading the committed index", e))?;
        let state = log_store
            .get_log_state()
            .await
            .map_err(|e| storage("reading the log state", e))?;
        let from = applied.map_or(0, |l| l.index + 1);
        if let Some(committed) = committed.filter(|c| Some(*c) > applied) {
            let entries = log_store
                .try_get_log_entries(from..=committed.index)
                .await
                .map_err(|e| storage("reading the log", e))?;
            for (expected, entry) in (from..).zip(entries) {
                if entry.log_id.index != expected {
                    return Err(storage(
                        "reading the log",
                        format!("entry {expected} is missing"),
                    ));
                }
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(proposals) => {
                        for proposal in &proposals.0 {
                            app.apply(entry.log_id.index, &proposal.0);
                        }
                    }
                    EntryPayload::Membership(m) => {
                        membership = StoredMembership::new(Some(entry.log_id), m);
                    }
                }
                applied = Some(entry.log_id);
            }
            if applied != Some(committed) {
                return Err(storage(
                    "reading the log",
                    format!("committed entry {} is missing", committed.index),
                ));
            }
        }
        let Some(last) = applied else {
            return Err(RaftError::Storage(
                "this node holds no committed state to keep".to_owned(),
            ));
        };
        let discarded_entries = state
            .last_log_id
            .map_or(0, |l| l.index.saturating_sub(last.index));
        let dropped_members: Vec<u64> = membership
            .membership()
            .nodes()
            .map(|(node, _)| *node)
            .filter(|node| *node != id)
            .collect();

        let alone = Membership::new(
            vec![BTreeSet::from([id])],
            BTreeMap::from([(id, BasicNode { addr })]),
        )
        .map_err(|e| storage("building the new membership", e))?;
        let meta = SnapshotMeta {
            last_log_id: Some(last),
            last_membership: StoredMembership::new(Some(last), alone),
        };
        let data = app.snapshot();
        {
            let snapshots = snapshots.clone();
            blocking(move || {
                snapshots
                    .replace(&meta, &data)
                    .map_err(|e| storage("writing the new snapshot", e))
            })
            .await?;
        }
        // Drop everything after the kept state, then everything up to it: the log is empty
        // behind the snapshot, as after a compaction.
        log_store
            .truncate_after(Some(last))
            .await
            .map_err(|e| storage("truncating the log", e))?;
        log_store
            .purge(last)
            .await
            .map_err(|e| storage("purging the log", e))?;
        log_store
            .save_committed(Some(last))
            .await
            .map_err(|e| storage("saving the committed index", e))?;
        Ok(ForcedCluster {
            last_index: last.index,
            dropped_members,
            discarded_entries,
        })
    }
    .await;
    close_stores(log_store, snapshots).await;
    result
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "raft".to_owned());
    dir.with_file_name(format!("{name}.{suffix}"))
}

fn remove_dir_if_present(dir: &Path) -> Result<(), RaftError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(storage(&format!("cannot remove {}", dir.display()), e)),
    }
}

/// Copies the flat directory of raft files, each file fsynced.
fn copy_dir(from: &Path, to: &Path) -> Result<(), RaftError> {
    let err = |e: std::io::Error| storage(&format!("cannot copy {}", from.display()), e);
    std::fs::create_dir_all(to).map_err(err)?;
    for entry in std::fs::read_dir(from).map_err(err)? {
        let entry = entry.map_err(err)?;
        if !entry.file_type().map_err(err)?.is_file() {
            continue;
        }
        let target = to.join(entry.file_name());
        std::fs::copy(entry.path(), &target).map_err(err)?;
        std::fs::File::open(&target)
            .and_then(|f| f.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

fn sync_parent(dir: &Path) {
    if let Some(parent) = dir.parent()
        && let Ok(d) = std::fs::File::open(parent)
    {
        let _ = d.sync_all();
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RaftError> + Send + 'static,
) -> Result<T, RaftError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RaftError::Fatal(format!("recovery task failed: {e}")))?
}
