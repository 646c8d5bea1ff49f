//! The application's `StateMachine` plugged into openraft, and the snapshot file
//! (`snapshots.redb`: metadata and data of the one current snapshot).
//!
//! The application state is transient: it is rebuilt on start from the stored snapshot plus the
//! committed log tail (openraft re-applies up to the persisted committed pointer). Snapshots are
//! therefore persisted before they are reported or installed.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::Mutex;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use crate::error::RaftError;
use crate::log_store::{open_db, release_db};
use crate::types::{
    self, Blob, FORMAT_V1, LogId, Replies, Snapshot, SnapshotMeta, StoredMembership, TypeConfig,
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
    /// Replaces the whole state with a snapshot taken at `index`.
    fn restore(&self, index: u64, data: &[u8]) -> Result<(), String>;
}

const SNAPSHOT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshot");
const KEY_FORMAT: &str = "format";
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
}

impl SnapshotStore {
    pub(crate) fn open(path: &Path) -> Result<SnapshotStore, RaftError> {
        let db = open_db(path)?;
        let storage = |e: redb::Error| RaftError::Storage(format!("{}: {e}", path.display()));
        let txn = db.begin_write().map_err(|e| storage(e.into()))?;
        {
            let mut table = txn.open_table(SNAPSHOT).map_err(|e| storage(e.into()))?;
            let format = table
                .get(KEY_FORMAT)
                .map_err(|e| storage(e.into()))?
                .map(|v| v.value().to_vec());
            match format.as_deref() {
                None => {
                    if table.len().map_err(|e| storage(e.into()))? != 0 {
                        return Err(RaftError::Corrupt {
                            path: path.to_path_buf(),
                            reason: "missing format marker".into(),
                        });
                    }
                    table
                        .insert(KEY_FORMAT, [FORMAT_V1].as_slice())
                        .map_err(|e| storage(e.into()))?;
                }
                Some([FORMAT_V1]) => {}
                Some([found]) => {
                    return Err(RaftError::UnsupportedFormat {
                        path: path.to_path_buf(),
                        found: *found,
                        supported: FORMAT_V1,
                    });
                }
                Some(_) => {
                    return Err(RaftError::Corrupt {
                        path: path.to_path_buf(),
                        reason: "malformed format marker".into(),
                    });
                }
            }
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
        })
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
        let meta: SnapshotMeta = types::decode("snapshot meta", meta.value())?;
        let data = table
            .get(KEY_DATA)
            .map_err(io_err)?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: snapshot data missing", self.path.display()),
                )
            })?;
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
            table.insert(KEY_DATA, data).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)?;
        Ok(true)
    }

    /// Durably replaces the stored snapshot whatever it is (recovery rewrites the membership of
    /// a snapshot at the same index).
    pub(crate) fn replace(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let meta_bytes = types::encode("snapshot meta", meta)?;
        let db = self.db()?;
        let mut txn = db.begin_write().map_err(io_err)?;
        txn.set_durability(Durability::Immediate).map_err(io_err)?;
        {
            let mut table = txn.open_table(SNAPSHOT).map_err(io_err)?;
            table
                .insert(KEY_META, meta_bytes.as_slice())
                .map_err(io_err)?;
            table.insert(KEY_DATA, data).map_err(io_err)?;
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
/// persisted on a spawned task.
pub(crate) struct SnapshotBuilder {
    meta: SnapshotMeta,
    data: Vec<u8>,
    snapshots: SnapshotStore,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let meta = self.meta.clone();
        let data = std::mem::take(&mut self.data);
        let store = self.snapshots.clone();
        let index = meta.last_log_id.map(|l| l.index);
        let size = data.len();
        let (meta, data) = blocking(move || {
            store.save(&meta, &data)?;
            Ok((meta, data))
        })
        .await?;
        tracing::info!(index, size, "raft snapshot built and persisted");
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
            data: self.app.snapshot(),
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
        // On restart openraft installs the stored snapshot itself: no need to write it again.
        let (snapshot, written) = blocking(move || {
            if store.load_meta()?.as_ref() == Some(&owned_meta) {
                return Ok((snapshot, false));
            }
            let written = store.save(&owned_meta, &snapshot)?;
            Ok((snapshot, written))
        })
        .await?;
        self.app.restore(index, &snapshot).map_err(|e| {
            io::Error::other(format!("state machine refused snapshot at {index}: {e}"))
        })?;
        let mut applied = self.applied.lock();
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        tracing::info!(
            index,
            size = snapshot.len(),
            persisted = written,
            "raft snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let store = self.snapshots.clone();
        blocking(move || store.load()).await
    }
}
