//! The `Store` handle: the current tables behind a lock, the single writer path that Raft
//! drives (apply, skip, restore), and the broadcast that feeds watchers.

use std::sync::Arc;

use parking_lot::RwLock;
use shoal_api::v1::{StoreSnapshot, Transaction};
use tokio::sync::broadcast;

use crate::error::{ApplyError, RestoreError};
use crate::snapshot::SNAPSHOT_FORMAT;
use crate::tables::Tables;
use crate::view::View;
use crate::watch::{Change, Event, Notice, Watcher};

/// Events a watcher may fall behind by before it is told it lagged.
pub const DEFAULT_WATCH_CAPACITY: usize = 1024;

/// The replicated object store. Cloning gives another handle on the same store.
///
/// Writes come only from the Raft state machine, in log order: [`Store::apply`] for
/// transactions, [`Store::skip`] for entries that carry none, [`Store::restore`] for
/// snapshots. Everything else reads through views and watchers.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    /// Writers hold it exclusively for the whole transaction (it is applied in place, see
    /// `tables`); readers hold it only to clone the tables.
    state: RwLock<State>,
    /// Sent only while `state` is write-locked, so that subscribing under the read lock sees
    /// exactly the events after the tables it read.
    events: broadcast::Sender<Notice>,
}

struct State {
    tables: Tables,
    applied_index: u64,
}

impl Default for Store {
    fn default() -> Store {
        Store::new()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("applied_index", &self.applied_index())
            .finish_non_exhaustive()
    }
}

impl Store {
    pub fn new() -> Store {
        Store::with_watch_capacity(DEFAULT_WATCH_CAPACITY)
    }

    /// A store whose watchers may fall `capacity` events behind (at least 1) before lagging.
    pub fn with_watch_capacity(capacity: usize) -> Store {
        let (events, _) = broadcast::channel(capacity.max(1));
        Store {
            shared: Arc::new(Shared {
                state: RwLock::new(State {
                    tables: Tables::default(),
                    applied_index: 0,
                }),
                events,
            }),
        }
    }

    /// A consistent snapshot of the current content.
    pub fn view(&self) -> View {
        let state = self.shared.state.read();
        View::new(state.tables.clone(), state.applied_index)
    }

    /// The last log index applied, skipped or restored (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.shared.state.read().applied_index
    }

    /// A view and a watcher taken at the same instant: the watcher delivers every event
    /// committed after the view, in order, with no gap and no duplicate.
    pub fn view_and_watch(&self) -> (View, Watcher) {
        let state = self.shared.state.read();
        let view = View::new(state.tables.clone(), state.applied_index);
        let watcher = Watcher::new(self.shared.events.subscribe());
        (view, watcher)
    }

    /// A watcher of the events committed from now on.
    pub fn watch(&self) -> Watcher {
        self.view_and_watch().1
    }

    /// Applies the transaction committed at log `index`, all or nothing.
    ///
    /// Readers wait while a transaction is applied (it is applied in place): a batch of a
    /// thousand creations holds them up for a few milliseconds. A view, once taken, never
    /// waits.
    ///
    /// `index` may equal the applied index when several transactions share one log entry.
    /// Every stored object gets `meta.version = index`; nothing else is touched, so every
    /// replica ends up identical. On success the changes are published to watchers as one
    /// event (even when the transaction is empty) and returned.
    ///
    /// A refused transaction still consumes its index: `applied_index` becomes `index` and the
    /// error is the entry's result, which is what every replica computes too. The only
    /// exception is `ApplyError::StaleIndex`, where nothing happens at all. Callers therefore
    /// never call [`Store::skip`] after a failed `apply`.
    pub fn apply(&self, index: u64, txn: &Transaction) -> Result<Vec<Change>, ApplyError> {
        let mut state = self.shared.state.write();
        // Several transactions may share one index: group commit packs concurrent proposals
        // into one log entry, applied in order. Index 0 is never a write (version 0 means
        // "never stored").
        if index == 0 || index < state.applied_index {
            return Err(ApplyError::StaleIndex {
                index,
                applied: state.applied_index,
            });
        }
        state.applied_index = index;
        match state.tables.apply(index, txn) {
            Ok(changes) => {
                // No watcher is not an error: the event simply has no audience.
                let _ = self.shared.events.send(Notice::Event(Event {
                    index,
                    changes: changes.clone(),
                }));
                Ok(changes)
            }
            Err(error) => {
                drop(state);
                tracing::debug!(index, %error, "store transaction refused");
                Err(error)
            }
        }
    }

    /// Consumes log `index` without a transaction, for Raft entries that carry no store
    /// content (blank and membership entries, proposals that do not decode). Publishes
    /// nothing. An index already applied is ignored: such an entry changes nothing anyway.
    pub fn skip(&self, index: u64) {
        let mut state = self.shared.state.write();
        if index > state.applied_index {
            state.applied_index = index;
        } else {
            tracing::debug!(index, applied = state.applied_index, "stale skip ignored");
        }
    }

    /// The whole content at the applied index (see [`View::snapshot`]).
    pub fn snapshot(&self) -> StoreSnapshot {
        self.view().snapshot()
    }

    /// Replaces the whole content and the applied index with a snapshot's, atomically.
    ///
    /// Refuses unknown formats, objects without a kind or an id, and duplicate ids or names;
    /// a refused snapshot changes nothing. The snapshot's index is taken as is, even when it
    /// is not past the applied index (Raft decides which snapshot to install). Every existing
    /// watcher then receives `WatchError::Reset` after the events it has not read yet, and
    /// must start again from a fresh [`Store::view_and_watch`].
    pub fn restore(&self, snapshot: StoreSnapshot) -> Result<(), RestoreError> {
        if snapshot.format != SNAPSHOT_FORMAT {
            return Err(RestoreError::UnknownFormat {
                format: snapshot.format,
                known: SNAPSHOT_FORMAT,
            });
        }
        let index = snapshot.index;
        let tables = Tables::from_objects(snapshot.objects)?;
        let mut state = self.shared.state.write();
        let replaced = std::mem::replace(&mut state.tables, tables);
        state.applied_index = index;
        let _ = self.shared.events.send(Notice::Reset);
        drop(state);
        drop(replaced);
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn assert_consistent(&self) {
        self.shared.state.read().tables.assert_consistent();
    }
}
