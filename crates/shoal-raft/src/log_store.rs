//! The durable raft log (`raft.redb`): entries, vote, committed pointer and last-purged id, behind
//! openraft's `RaftLogStorage`.
//!
//! All writes go through one writer thread that owns redb's single write lock, so the raft core
//! never blocks on an fsync. The thread coalesces whatever is queued into one write transaction:
//! concurrent appends share one fsync. Appended entries stay readable from memory (`pending`) until
//! their transaction has committed, because openraft reads them back (to replicate and apply)
//! before they are durable.
//!
//! Durability points: `save_vote`, `truncate_after` and `purge` return only after their
//! `Durability::Immediate` commit; `append` signals `IOFlushed` only after its commit. The
//! committed pointer alone rides in a non-durable commit (made durable by the next one, or at
//! close): losing it only means re-applying less on restart, never applying something
//! uncommitted.
//!
//! With a [`StorageCipher`] every entry is sealed before it is queued, bound to its index (see
//! `at_rest`); the vote, committed and purged ids stay in clear.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use parking_lot::Mutex;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use crate::at_rest::AtRest;
use crate::cipher::{RecordKind, StorageCipher};
use crate::error::RaftError;
use crate::types::{self, Entry, LogId, TypeConfig, Vote};

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

type Callback = IOFlushed<TypeConfig>;
type Done = tokio::sync::oneshot::Sender<io::Result<()>>;

enum WriteOp {
    Append {
        seq: u64,
        entries: Vec<(u64, Vec<u8>)>,
        callback: Callback,
    },
    Vote {
        bytes: Vec<u8>,
        done: Done,
    },
    Committed {
        bytes: Option<Vec<u8>>,
    },
    Truncate {
        from: u64,
        done: Done,
    },
    Purge {
        upto: u64,
        bytes: Vec<u8>,
        done: Done,
    },
    Close {
        done: std::sync::mpsc::Sender<()>,
    },
}

/// An appended entry not yet known to be in redb. `seq` identifies the append call, so the writer
/// only evicts what it wrote, not a newer entry that replaced it at the same index.
struct Pending {
    seq: u64,
    entry: Entry,
}

#[derive(Default)]
struct MemState {
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// Set when a write failed: every later operation fails too, so openraft stops instead of
    /// running on a log with a hole.
    failed: Option<String>,
}

struct Shared {
    path: PathBuf,
    db: Mutex<Option<Arc<Database>>>,
    mem: Arc<Mutex<MemState>>,
    tx: Mutex<Option<mpsc::Sender<WriteOp>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    at_rest: AtRest,
}

/// Cheap to clone: clones share one database and one writer thread.
#[derive(Clone)]
pub(crate) struct LogStore {
    shared: Arc<Shared>,
}

fn io_err(e: impl Into<redb::Error>) -> io::Error {
    io::Error::other(e.into())
}

/// Maps a redb open failure to an error naming the file; corruption is reported as such.
pub(crate) fn open_db(path: &Path) -> Result<Database, RaftError> {
    match Database::create(path) {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason))) => {
            Err(RaftError::Corrupt {
                path: path.to_path_buf(),
                reason,
            })
        }
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
            if e.kind() == io::ErrorKind::InvalidData =>
        {
            Err(RaftError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
        Err(e) => Err(RaftError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Drops our handle of a database once in-flight readers let go of theirs, so the file lock is
/// released by the time `close` returns and the directory can be reopened.
pub(crate) fn release_db(db: Arc<Database>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut db = db;
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => {
                drop(db);
                return;
            }
            Err(still_shared) if Instant::now() < deadline => {
                db = still_shared;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => {
                tracing::warn!("a raft database handle is still in use after close");
                return;
            }
        }
    }
}

/// The stored form of `entry`: encoded, then sealed at its index when the log is encrypted.
fn encode_entry(at_rest: &AtRest, entry: &Entry) -> io::Result<Vec<u8>> {
    let index = entry.log_id.index;
    let plain = types::encode("log entry", entry)?;
    at_rest.seal(RecordKind::LogEntry, &index.to_be_bytes(), plain)
}

fn decode_entry(at_rest: &AtRest, index: u64, stored: &[u8]) -> io::Result<Entry> {
    let plain = at_rest.open(RecordKind::LogEntry, &index.to_be_bytes(), stored)?;
    let entry: Entry = types::decode("log entry", &plain)?;
    // The index is authenticated with the record; a mismatch inside means a damaged writer.
    if entry.log_id.index != index {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "log entry stored at {index} claims index {}",
                entry.log_id.index
            ),
        ));
    }
    Ok(entry)
}

impl LogStore {
    /// Opens (or creates) `raft.redb` at `path`, refusing corrupt files, unknown formats and an
    /// encryption that does not match `cipher` (see `at_rest`).
    pub(crate) fn open(path: &Path, cipher: Option<StorageCipher>) -> Result<LogStore, RaftError> {
        let db = open_db(path)?;
        let storage = |e: redb::Error| RaftError::Storage(format!("{}: {e}", path.display()));
        let corrupt = |reason: String| RaftError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };

        let mut mem = MemState::default();
        let at_rest;
        {
            let txn = db.begin_write().map_err(|e| storage(e.into()))?;
            {
                let log = txn.open_table(LOG).map_err(|e| storage(e.into()))?;
                let mut meta = txn.open_table(META).map_err(|e| storage(e.into()))?;
                let fresh = log.is_empty().map_err(|e| storage(e.into()))?
                    && meta.len().map_err(|e| storage(e.into()))? == 0;
                at_rest = AtRest::prepare(path, cipher, &mut meta, fresh)?;
                let get_meta = |key: &str| -> Result<Option<Vec<u8>>, RaftError> {
                    Ok(meta
                        .get(key)
                        .map_err(|e| storage(e.into()))?
                        .map(|v| v.value().to_vec()))
                };
                let decode_err = |e: types::CodecError| corrupt(e.to_string());
                if let Some(b) = get_meta(KEY_VOTE)? {
                    mem.vote = Some(types::decode("vote", &b).map_err(decode_err)?);
                }
                if let Some(b) = get_meta(KEY_COMMITTED)? {
                    mem.committed = types::decode("committed", &b).map_err(decode_err)?;
                }
                if let Some(b) = get_meta(KEY_LAST_PURGED)? {
                    mem.last_purged = Some(types::decode("last purged", &b).map_err(decode_err)?);
                }
                let last = log.last().map_err(|e| storage(e.into()))?;
                let last_entry: Option<Entry> = match last {
                    Some((k, v)) => Some(
                        decode_entry(&at_rest, k.value(), v.value())
                            .map_err(|e| corrupt(e.to_string()))?,
                    ),
                    None => None,
                };
                mem.last_log_id = match last_entry {
                    Some(e) => Some(e.log_id),
                    None => mem.last_purged,
                };
            }
            txn.commit().map_err(|e| storage(e.into()))?;
        }

        let db = Arc::new(db);
        let mem = Arc::new(Mutex::new(mem));
        let (tx, rx) = mpsc::channel();
        let writer = {
            let db = db.clone();
            let mem = mem.clone();
            std::thread::Builder::new()
                .name("raft-log-writer".into())
                .spawn(move || writer_loop(db, mem, rx))
                .map_err(|e| RaftError::Storage(format!("cannot start the log writer: {e}")))?
        };
        Ok(LogStore {
            shared: Arc::new(Shared {
                path: path.to_path_buf(),
                db: Mutex::new(Some(db)),
                mem,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
                at_rest,
            }),
        })
    }

    /// Flushes everything queued, stops the writer and releases the file. Later calls fail.
    pub(crate) fn close(&self) {
        let tx = self.shared.tx.lock().take();
        if let Some(tx) = tx {
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            if tx.send(WriteOp::Close { done: done_tx }).is_ok() {
                let _ = done_rx.recv();
            }
        }
        if let Some(handle) = self.shared.writer.lock().take() {
            let _ = handle.join();
        }
        if let Some(db) = self.shared.db.lock().take() {
            release_db(db);
        }
    }

    fn db(&self) -> io::Result<Arc<Database>> {
        self.shared
            .db
            .lock()
            .clone()
            .ok_or_else(|| io::Error::other(format!("{} is closed", self.shared.path.display())))
    }

    fn send(&self, op: WriteOp) -> io::Result<()> {
        let closed = || io::Error::other(format!("{} is closed", self.shared.path.display()));
        let tx = self.shared.tx.lock();
        tx.as_ref()
            .ok_or_else(closed)?
            .send(op)
            .map_err(|_| closed())
    }

    fn check_failed(&self) -> io::Result<()> {
        match &self.shared.mem.lock().failed {
            Some(reason) => Err(io::Error::other(format!(
                "raft log writer failed earlier: {reason}"
            ))),
            None => Ok(()),
        }
    }

    async fn wait(done: tokio::sync::oneshot::Receiver<io::Result<()>>) -> io::Result<()> {
        done.await
            .unwrap_or_else(|_| Err(io::Error::other("raft log writer stopped")))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let lo = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        if lo >= hi {
            return Ok(Vec::new());
        }
        let bounds = lo..hi;
        // Pending first, then redb: an entry that moves from one to the other in between has been
        // committed before it left `pending`, so it is seen at least once.
        let pending: BTreeMap<u64, Entry> = {
            let mem = self.shared.mem.lock();
            if let Some(reason) = &mem.failed {
                return Err(io::Error::other(format!(
                    "raft log writer failed earlier: {reason}"
                )));
            }
            mem.pending
                .range(bounds.clone())
                .map(|(i, p)| (*i, p.entry.clone()))
                .collect()
        };
        let first_pending = pending.keys().next().copied();
        let mut out = Vec::new();
        let db = self.db()?;
        let txn = db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOG).map_err(io_err)?;
        for item in table.range(bounds).map_err(io_err)? {
            let (k, v) = item.map_err(io_err)?;
            let index = k.value();
            // Pending entries are newer than anything at the same or a later index in redb.
            if first_pending.is_some_and(|p| index >= p) {
                break;
            }
            out.push(decode_entry(&self.shared.at_rest, index, v.value())?);
        }
        out.extend(pending.into_values());
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.mem.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        self.check_failed()?;
        let mem = self.shared.mem.lock();
        Ok(LogState {
            last_purged_log_id: mem.last_purged,
            last_log_id: mem.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.check_failed()?;
        let bytes = types::encode("vote", vote)?;
        let (done, rx) = tokio::sync::oneshot::channel();
        self.send(WriteOp::Vote { bytes, done })?;
        Self::wait(rx).await?;
        self.shared.mem.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.check_failed()?;
        let bytes = match &committed {
            Some(c) => Some(types::encode("committed", &Some(*c))?),
            None => None,
        };
        self.shared.mem.lock().committed = committed;
        self.send(WriteOp::Committed { bytes })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.shared.mem.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: Callback) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.check_failed()?;
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        let mut encoded = Vec::with_capacity(entries.len());
        for e in &entries {
            encoded.push((e.log_id.index, encode_entry(&self.shared.at_rest, e)?));
        }
        // Register in memory and queue under one lock, so queue order equals `seq` order.
        let mut mem = self.shared.mem.lock();
        let seq = mem.next_seq;
        mem.next_seq += 1;
        if let Some(last) = entries.last() {
            mem.last_log_id = Some(last.log_id);
        }
        for entry in entries {
            mem.pending
                .insert(entry.log_id.index, Pending { seq, entry });
        }
        let sent = self.send(WriteOp::Append {
            seq,
            entries: encoded,
            callback,
        });
        if sent.is_err() {
            mem.pending.retain(|_, p| p.seq != seq);
        }
        sent
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.check_failed()?;
        let from = last_log_id.map_or(0, |l| l.index + 1);
        let (done, rx) = tokio::sync::oneshot::channel();
        {
            let mut mem = self.shared.mem.lock();
            let _ = mem.pending.split_off(&from);
            let cut = last_log_id.or(mem.last_purged);
            let index = |l: &Option<LogId>| l.map(|l| l.index);
            if index(&mem.last_log_id) > index(&cut) {
                mem.last_log_id = cut;
            }
            self.send(WriteOp::Truncate { from, done })?;
        }
        tracing::debug!(from, "raft log truncated");
        Self::wait(rx).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.check_failed()?;
        let upto = log_id.index;
        let bytes = types::encode("last purged", &log_id)?;
        let (done, rx) = tokio::sync::oneshot::channel();
        {
            let mut mem = self.shared.mem.lock();
            let keep = mem.pending.split_off(&(upto + 1));
            mem.pending = keep;
            mem.last_purged = Some(log_id);
            if mem.last_log_id < Some(log_id) {
                mem.last_log_id = Some(log_id);
            }
            self.send(WriteOp::Purge { upto, bytes, done })?;
        }
        Self::wait(rx).await?;
        tracing::debug!(upto, "raft log purged");
        Ok(())
    }
}

/// Upper bound on operations folded into one transaction, so callbacks are not delayed
/// indefinitely under a constant stream of appends.
const MAX_OPS_PER_TXN: usize = 1024;

fn writer_loop(db: Arc<Database>, mem: Arc<Mutex<MemState>>, rx: mpsc::Receiver<WriteOp>) {
    let mut unflushed = false;
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_OPS_PER_TXN {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let mut close = None;
        if let Some(pos) = ops
            .iter()
            .position(|op| matches!(op, WriteOp::Close { .. }))
        {
            // Close is always the last op sent: nothing follows it.
            if let WriteOp::Close { done } = ops.remove(pos) {
                close = Some(done);
            }
        }
        // A batch holding only the committed pointer needs no fsync of its own.
        let durable = close.is_some()
            || ops
                .iter()
                .any(|op| !matches!(op, WriteOp::Committed { .. }));
        let failed = mem.lock().failed.clone();
        let result = match failed {
            Some(reason) => Err(io::Error::other(format!(
                "raft log writer failed earlier: {reason}"
            ))),
            None if ops.is_empty() && !durable => Ok(()),
            None => write_batch(&db, &ops, durable),
        };
        match &result {
            Ok(()) => unflushed = !durable && !ops.is_empty(),
            Err(e) => {
                tracing::error!(error = %e, "raft log write failed");
                mem.lock().failed.get_or_insert_with(|| e.to_string());
            }
        }
        finish(&mem, ops, &result);
        if let Some(done) = close {
            let _ = done.send(());
            return;
        }
    }
    if unflushed {
        // Every handle dropped without close: still make the committed pointer durable.
        let _ = write_batch(&db, &[], true);
    }
}

fn write_batch(db: &Database, ops: &[WriteOp], durable: bool) -> io::Result<()> {
    let mut txn = db.begin_write().map_err(io_err)?;
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    })
    .map_err(io_err)?;
    {
        let mut log = txn.open_table(LOG).map_err(io_err)?;
        let mut meta = txn.open_table(META).map_err(io_err)?;
        for op in ops {
            match op {
                WriteOp::Append { entries, .. } => {
                    for (index, bytes) in entries {
                        log.insert(*index, bytes.as_slice()).map_err(io_err)?;
                    }
                }
                WriteOp::Vote { bytes, .. } => {
                    meta.insert(KEY_VOTE, bytes.as_slice()).map_err(io_err)?;
                }
                WriteOp::Committed { bytes } => match bytes {
                    Some(b) => {
                        meta.insert(KEY_COMMITTED, b.as_slice()).map_err(io_err)?;
                    }
                    None => {
                        meta.remove(KEY_COMMITTED).map_err(io_err)?;
                    }
                },
                WriteOp::Truncate { from, .. } => {
                    log.retain_in(*from.., |_, _| false).map_err(io_err)?;
                }
                WriteOp::Purge { upto, bytes, .. } => {
                    // The marker first: entries at or below it are ignored even if a crash left
                    // some behind.
                    meta.insert(KEY_LAST_PURGED, bytes.as_slice())
                        .map_err(io_err)?;
                    log.retain_in(..=*upto, |_, _| false).map_err(io_err)?;
                }
                WriteOp::Close { .. } => {}
            }
        }
    }
    txn.commit().map_err(io_err)
}

/// Completes every operation of a transaction: evicts the now-durable entries from `pending` and
/// fires callbacks, in queue order.
fn finish(mem: &Mutex<MemState>, ops: Vec<WriteOp>, result: &io::Result<()>) {
    let outcome = || match result {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    };
    if result.is_ok() {
        let mut mem = mem.lock();
        for op in &ops {
            if let WriteOp::Append { seq, entries, .. } = op {
                for (index, _) in entries {
                    if mem.pending.get(index).is_some_and(|p| p.seq == *seq) {
                        mem.pending.remove(index);
                    }
                }
            }
        }
    }
    for op in ops {
        match op {
            WriteOp::Append { callback, .. } => callback.io_completed(outcome()),
            WriteOp::Vote { done, .. }
            | WriteOp::Truncate { done, .. }
            | WriteOp::Purge { done, .. } => {
                let _ = done.send(outcome());
            }
            WriteOp::Committed { .. } | WriteOp::Close { .. } => {}
        }
    }
}
