//! The application's `StateMachine` plugged into openraft, and the snapshot file
//! (`snapshots.redb`: metadata and data of the one current snapshot).
//!
//! The application state is transient: it is rebuilt on start from the stored snapshot plus the
//! committed log tail (openraft re-applies up to the persisted committed pointer). Snapshots are
//! therefore persisted before they are reported or installed.
//!
//! With a [`StorageCipher`] the snapshot data is sealed, bound to the snapshot's metadata (see
//! `at_rest`); the metadata stays in clear.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::Mutex;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use crate::at_rest::AtRest;
use crate::cipher::{RecordKind, StorageCipher};
use crate::compaction::SnapshotStats;
use crate::error::RaftError;
use crate::log_store::{open_db, release_db};
use crate::types::{
    self, Blob, LogId, Replies, Snapshot, SnapshotMeta, StoredMembership, TypeConfig,
};

/// The replicated application. Implementations must be deterministic: every replica applies the
/// same proposals in the same order and must reach the same state.
///
/// The methods are called from raft's state-machine task, one at a time and never concurrently
/// with each other, so they should be quick (in-memory) and must not block on raft itself.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies one proposal committed at log `index` and returns the bytes handed back to the
    /// proposer. Under group commit several proposals share one index; they are applied in order.
    fn apply(&self, index: u64, proposal: &[u8]) -> Vec<u8>;
    /// The whole state, serialized, as of the last applied index.
    fn snapshot(&self) -> Vec<u8>;
    /// Captures the state as of the last applied index and returns what serializes it. Raft
    /// calls this on its state-machine task and runs the returned closure on a blocking thread,
    /// so applying goes on meanwhile: a state that can capture a cheap immutable view should do
    /// so here rather than serialize. By default it serializes at once.
    fn begin_snapshot(&self) -> SnapshotWriter {
        let data = self.snapshot();
        Box::new(move || data)
    }
    /// Replaces the whole state with a snapshot taken at `index`.
    fn restore(&self, index: u64, data: &[u8]) -> Result<(), String>;
}

/// Serializes a state captured by [`StateMachine::begin_snapshot`].
pub type SnapshotWriter = Box<dyn FnOnce() -> Vec<u8> + Send>;

const SNAPSHOT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshot");
const KEY_META: &str = "meta";
const KEY_DATA: &str = "data";

fn io_err(e: impl Into<redb::Error>) -> io::Error {
    io::Error::other(e.into())
}

/// `snapshots.redb`: at most one snapshot, replaced atomically.
#[derive(Clone)]
pub(crate) struct SnapshotStore {
    path: PathBuf,
    db: Arc<Mutex<Option<Arc<Database>>>>,
    /// The latest snapshot built or installed since the node opened.
    last: Arc<Mutex<Option<SnapshotStats>>>,
    at_rest: AtRest,
}

impl SnapshotStore {
    /// Opens (or creates) `snapshots.redb`, refusing corrupt files, unknown formats and an
    /// encryption that does not match `cipher`.
    pub(crate) fn open(
        path: &Path,
        cipher: Option<StorageCipher>,
    ) -> Result<SnapshotStore, RaftError> {
        let db = open_db(path)?;
        let storage = |e: redb::Error| RaftError::Storage(format!("{}: {e}", path.display()));
        let txn = db.begin_write().map_err(|e| storage(e.into()))?;
        let at_rest;
        {
            let mut table = txn.open_table(SNAPSHOT).map_err(|e| storage(e.into()))?;
            let fresh = table.len().map_err(|e| storage(e.into()))? == 0;
            at_rest = AtRest::prepare(path, cipher, &mut table, fresh)?;
            if let Some(meta) = table.get(KEY_META).map_err(|e| storage(e.into()))? {
                types::decode::<SnapshotMeta>("snapshot meta", meta.value()).map_err(|e| {
                    RaftError::Corrupt {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    }
                })?;
            }
        }
        txn.commit().map_err(|e| storage(e.into()))?;
        Ok(SnapshotStore {
            path: path.to_path_buf(),
            db: Arc::new(Mutex::new(Some(Arc::new(db)))),
            last: Arc::default(),
            at_rest,
        })
    }

    /// The latest snapshot built or installed since the node opened.
    pub(crate) fn last_stats(&self) -> Option<SnapshotStats> {
        *self.last.lock()
    }

    fn record(&self, stats: SnapshotStats) {
        *self.last.lock() = Some(stats);
    }

    pub(crate) fn close(&self) {
        if let Some(db) = self.db.lock().take() {
            release_db(db);
        }
    }

    fn db(&self) -> io::Result<Arc<Database>> {
        self.db
            .lock()
            .clone()
            .ok_or_else(|| io::Error::other(format!("{} is closed", self.path.display())))
    }

    /// The stored form of snapshot `data`, sealed to the exact metadata bytes stored beside it,
    /// so data cannot be paired with another snapshot's metadata.
    fn seal(&self, meta_bytes: &[u8], data: &[u8]) -> io::Result<Vec<u8>> {
        self.at_rest
            .seal(RecordKind::Snapshot, meta_bytes, data.to_vec())
    }

    pub(crate) fn load_meta(&self) -> io::Result<Option<SnapshotMeta>> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(io_err)?;
        let table = txn.open_table(SNAPSHOT).map_err(io_err)?;
        match table.get(KEY_META).map_err(io_err)? {
            Some(v) => Ok(Some(types::decode("snapshot meta", v.value())?)),
            None => Ok(None),
        }
    }

    pub(crate) fn load(&self) -> io::Result<Option<Snapshot>> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(io_err)?;
        let table = txn.open_table(SNAPSHOT).map_err(io_err)?;
        let Some(meta) = table.get(KEY_META).map_err(io_err)? else {
            return Ok(None);
        };
        let meta_bytes = meta.value().to_vec();
        let meta: SnapshotMeta = types::decode("snapshot meta", &meta_bytes)?;
        let stored = table.get(KEY_DATA).map_err(io_err)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: snapshot data missing", self.path.display()),
            )
        })?;
        let data = self
            .at_rest
            .open(RecordKind::Snapshot, &meta_bytes, stored.value())?
            .into_owned();
        Ok(Some(Snapshot {
            meta,
            snapshot: data,
        }))
    }

    /// Durably replaces the stored snapshot, unless the stored one is already as new: a slow
    /// snapshot build must not overwrite a newer snapshot installed from the leader meanwhile.
    /// Returns whether it wrote.
    pub(crate) fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<bool> {
        let meta_bytes = types::encode("snapshot meta", meta)?;
        let data = self.seal(&meta_bytes, data)?;
        let db = self.db()?;
        let mut txn = db.begin_write().map_err(io_err)?;
        txn.set_durability(Durability::Immediate).map_err(io_err)?;
        {
            let mut table = txn.open_table(SNAPSHOT).map_err(io_err)?;
            let current: Option<SnapshotMeta> = match table.get(KEY_META).map_err(io_err)? {
                Some(v) => Some(types::decode("snapshot meta", v.value())?),
                None => None,
            };
            if current.is_some_and(|c| c.last_log_id >= meta.last_log_id) {
                return Ok(false);
            }
            table
                .insert(KEY_META, meta_bytes.as_slice())
                .map_err(io_err)?;
            table.insert(KEY_DATA, data.as_slice()).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)?;
        Ok(true)
    }

    /// Durably replaces the stored snapshot whatever it is (recovery rewrites the membership of
    /// a snapshot at the same index).
    pub(crate) fn replace(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let meta_bytes = types::encode("snapshot meta", meta)?;
        let data = self.seal(&meta_bytes, data)?;
        let db = self.db()?;
        let mut txn = db.begin_write().map_err(io_err)?;
        txn.set_durability(Durability::Immediate).map_err(io_err)?;
        {
            let mut table = txn.open_table(SNAPSHOT).map_err(io_err)?;
            table
                .insert(KEY_META, meta_bytes.as_slice())
                .map_err(io_err)?;
            table.insert(KEY_DATA, data.as_slice()).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)
    }
}

struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// openraft's view of the application state machine plus the snapshot store.
#[derive(Clone)]
pub(crate) struct SmStore {
    app: Arc<dyn StateMachine>,
    snapshots: SnapshotStore,
    applied: Arc<Mutex<Applied>>,
}

impl SmStore {
    pub(crate) fn new(app: Arc<dyn StateMachine>, snapshots: SnapshotStore) -> SmStore {
        SmStore {
            app,
            snapshots,
            applied: Arc::new(Mutex::new(Applied {
                last_applied: None,
                membership: StoredMembership::default(),
            })),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("snapshot task failed: {e}")))?
}

/// A snapshot captured on the state-machine task (so it matches `last_applied` exactly), then
/// serialized and persisted on a blocking thread.
pub(crate) struct SnapshotBuilder {
    meta: SnapshotMeta,
    /// In a mutex only because openraft wants the builder `Sync`.
    writer: Mutex<Option<SnapshotWriter>>,
    snapshots: SnapshotStore,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let meta = self.meta.clone();
        let writer = self
            .writer
            .lock()
            .take()
            .ok_or_else(|| io::Error::other("snapshot builder used twice"))?;
        let store = self.snapshots.clone();
        let index = meta.last_log_id.map_or(0, |l| l.index);
        let (meta, data, serialize, persist) = blocking(move || {
            let started = Instant::now();
            let data = writer();
            let serialize = started.elapsed();
            store.save(&meta, &data)?;
            Ok((meta, data, serialize, started.elapsed() - serialize))
        })
        .await?;
        self.snapshots.record(SnapshotStats {
            index,
            bytes: data.len() as u64,
            build: Some(serialize + persist),
        });
        tracing::info!(
            index,
            size = data.len(),
            serialize_ms = serialize.as_millis() as u64,
            persist_ms = persist.as_millis() as u64,
            "raft snapshot built and persisted"
        );
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = self.applied.lock();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let index = entry.log_id.index;
            let replies = match entry.payload {
                EntryPayload::Blank => Replies::default(),
                EntryPayload::Normal(proposals) => Replies(
                    proposals
                        .0
                        .iter()
                        .map(|p| Blob(self.app.apply(index, &p.0)))
                        .collect(),
                ),
                EntryPayload::Membership(membership) => {
                    self.applied.lock().membership =
                        StoredMembership::new(Some(entry.log_id), membership);
                    Replies::default()
                }
            };
            self.applied.lock().last_applied = Some(entry.log_id);
            if let Some(responder) = responder {
                responder.send(replies);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let (last_applied, membership) = {
            let applied = self.applied.lock();
            (applied.last_applied, applied.membership.clone())
        };
        SnapshotBuilder {
            meta: SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
            },
            writer: Mutex::new(Some(self.app.begin_snapshot())),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let index = meta.last_log_id.map_or(0, |l| l.index);
        let store = self.snapshots.clone();
        let owned_meta = meta.clone();
        let started = Instant::now();
        // On restart openraft installs the stored snapshot itself: no need to write it again.
        let (snapshot, written) = blocking(move || {
            if store.load_meta()?.as_ref() == Some(&owned_meta) {
                return Ok((snapshot, false));
            }
            let written = store.save(&owned_meta, &snapshot)?;
            Ok((snapshot, written))
        })
        .await?;
        let persist = started.elapsed();
        self.app.restore(index, &snapshot).map_err(|e| {
            io::Error::other(format!("state machine refused snapshot at {index}: {e}"))
        })?;
        let restore = started.elapsed() - persist;
        let mut applied = self.applied.lock();
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        self.snapshots.record(SnapshotStats {
            index,
            bytes: snapshot.len() as u64,
            build: None,
        });
        tracing::info!(
            index,
            size = snapshot.len(),
            persisted = written,
            persist_ms = persist.as_millis() as u64,
            restore_ms = restore.as_millis() as u64,
            "raft snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let store = self.snapshots.clone();
        let started = Instant::now();
        let snapshot = blocking(move || store.load()).await?;
        // Runs on the state-machine task (to send it to a peer, or to restore it at start), so
        // its cost is a pause in applying: worth seeing.
        if let Some(s) = &snapshot {
            tracing::info!(
                index = s.meta.last_log_id.map_or(0, |l| l.index),
                size = s.snapshot.len(),
                load_ms = started.elapsed().as_millis() as u64,
                "raft snapshot read from disk"
            );
        }
        Ok(snapshot)
    }
}
