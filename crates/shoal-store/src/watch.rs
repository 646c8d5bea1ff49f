//! Change notification: the events a committed transaction produces and the watchers that
//! receive them, in commit order, with loss reported rather than hidden.

use std::sync::Arc;

use shoal_api::object::{Kind, Object};
use shoal_api::v1::StoreObject;
use tokio::sync::broadcast;

use crate::envelope;
use crate::error::WatchError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeAction {
    Created,
    Updated,
    Removed,
}

/// One object written by a transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub action: ChangeAction,
    pub kind: Kind,
    /// The value as stored (with `meta.version` = the event's index); for `Removed`, the last
    /// value the store held. Shared with the tables, so cloning a change is cheap.
    pub object: Arc<StoreObject>,
}

impl Change {
    pub fn id(&self) -> &str {
        self.object.id().unwrap_or_default()
    }

    /// The object as `T`, when it is of that kind.
    pub fn get<T: Object>(&self) -> Option<&T> {
        envelope::downcast(&self.object)
    }
}

/// Everything one successful transaction changed, at the log index it was applied at.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub index: u64,
    /// In the order of the transaction's actions.
    pub changes: Vec<Change>,
}

impl Event {
    /// The changes to objects of type `T`, in order.
    pub fn of<T: Object>(&self) -> impl Iterator<Item = (ChangeAction, &T)> + '_ {
        self.changes
            .iter()
            .filter_map(|change| Some((change.action, change.get::<T>()?)))
    }
}

/// What travels on the broadcast channel.
#[derive(Debug, Clone)]
pub(crate) enum Notice {
    Event(Event),
    /// A snapshot replaced the content.
    Reset,
}

/// Receives the events committed after the point it was created at (see
/// `Store::view_and_watch`).
///
/// The buffer is bounded (`Store::with_watch_capacity`). A watcher that falls further behind
/// gets `WatchError::Lagged` instead of a silent gap. Any error is final: the watcher returns
/// it from then on, and the consumer starts over from a fresh view.
#[derive(Debug)]
pub struct Watcher {
    receiver: broadcast::Receiver<Notice>,
    /// Bit `kind as u8` set for each kind wanted; all bits set when unfiltered.
    kinds: u8,
    failed: Option<WatchError>,
}

const ALL_KINDS: u8 = u8::MAX;

impl Watcher {
    pub(crate) fn new(receiver: broadcast::Receiver<Notice>) -> Watcher {
        Watcher {
            receiver,
            kinds: ALL_KINDS,
            failed: None,
        }
    }

    /// Keeps only changes to objects of `kinds`; events left with no change are skipped
    /// (their indexes are then not seen).
    pub fn only(mut self, kinds: &[Kind]) -> Watcher {
        self.kinds = kinds.iter().fold(0, |bits, kind| bits | kind_bit(*kind));
        self
    }

    /// The next event. Cancel-safe: dropping the future loses nothing, so it can sit in a
    /// `select!` loop.
    pub async fn next(&mut self) -> Result<Event, WatchError> {
        loop {
            if let Some(error) = self.failed {
                return Err(error);
            }
            let received = self.receiver.recv().await;
            let notice = match received {
                Ok(notice) => Ok(notice),
                Err(broadcast::error::RecvError::Lagged(_)) => Err(WatchError::Lagged),
                Err(broadcast::error::RecvError::Closed) => Err(WatchError::Closed),
            };
            if let Some(event) = self.accept(notice)? {
                return Ok(event);
            }
        }
    }

    /// The next event if one is already buffered, without waiting.
    pub fn try_next(&mut self) -> Result<Option<Event>, WatchError> {
        use broadcast::error::TryRecvError;
        loop {
            if let Some(error) = self.failed {
                return Err(error);
            }
            let notice = match self.receiver.try_recv() {
                Ok(notice) => Ok(notice),
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Lagged(_)) => Err(WatchError::Lagged),
                Err(TryRecvError::Closed) => Err(WatchError::Closed),
            };
            if let Some(event) = self.accept(notice)? {
                return Ok(Some(event));
            }
        }
    }

    /// Turns a notice into the event to deliver, if any survives the filter; records errors
    /// so that they stick.
    fn accept(&mut self, notice: Result<Notice, WatchError>) -> Result<Option<Event>, WatchError> {
        let event = match notice {
            Ok(Notice::Event(event)) => event,
            Ok(Notice::Reset) => return Err(self.fail(WatchError::Reset)),
            Err(error) => return Err(self.fail(error)),
        };
        if self.kinds == ALL_KINDS {
            return Ok(Some(event));
        }
        let kinds = self.kinds;
        let changes: Vec<Change> = event
            .changes
            .into_iter()
            .filter(|change| kinds & kind_bit(change.kind) != 0)
            .collect();
        Ok((!changes.is_empty()).then_some(Event {
            index: event.index,
            changes,
        }))
    }

    fn fail(&mut self, error: WatchError) -> WatchError {
        self.failed = Some(error);
        error
    }
}

fn kind_bit(kind: Kind) -> u8 {
    1 << (kind as u8)
}
