//! The store's typed errors: refused transactions, failed lookups, broken watches and
//! unusable snapshots.

use shoal_api::object::Kind;

/// Why a transaction was refused. Every refusal leaves the tables untouched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The log index is older than the applied one (or 0): nothing happened, and the applied
    /// index stays where it was.
    #[error("log index {index} is behind the applied index {applied}")]
    StaleIndex { index: u64, applied: u64 },
    /// An action the store cannot interpret; `action` is its position in the transaction.
    #[error("malformed action {action}: {reason}")]
    Malformed { action: usize, reason: &'static str },
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: Kind, id: String },
    /// Another object of the kind already holds the name; `id` is that holder.
    #[error("{kind} name {name:?} is already in use by {id}")]
    NameConflict {
        kind: Kind,
        name: String,
        id: String,
    },
    #[error("no such {kind}: {id}")]
    NotFound { kind: Kind, id: String },
    /// Optimistic concurrency: the writer read version `expected`, but the stored object is
    /// now at version `actual`. The writer must read again and redo its change.
    #[error(
        "{kind} {id} was changed concurrently: the write expected version {expected}, the store has {actual}"
    )]
    VersionConflict {
        kind: Kind,
        id: String,
        expected: u64,
        actual: u64,
    },
}

/// Why a reference (ID, name or ID prefix) did not resolve to exactly one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("no such {kind}: {reference}")]
    NotFound { kind: Kind, reference: String },
    #[error("{kind} reference {reference:?} is ambiguous: it matches {count} {kind}s")]
    Ambiguous {
        kind: Kind,
        reference: String,
        count: usize,
    },
}

/// Why a watcher delivers no further events. Every variant is final: once returned, the
/// watcher keeps returning it, and the consumer must start again from a fresh
/// `Store::view_and_watch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The watcher fell so far behind that its buffer overflowed and events were lost.
    #[error("watcher fell behind and missed events")]
    Lagged,
    /// Every handle on the store was dropped.
    #[error("store is closed")]
    Closed,
    /// A snapshot replaced the whole content; earlier views no longer describe the store.
    #[error("store content was replaced by a snapshot")]
    Reset,
}

/// Why a snapshot was refused. A refused snapshot leaves the store untouched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot decode snapshot: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("unknown snapshot format {format} (this build reads format {known})")]
    UnknownFormat { format: u32, known: u32 },
    /// `position` counts from 0 among the snapshot's objects.
    #[error("snapshot object {position} is empty")]
    EmptyObject { position: usize },
    #[error("snapshot object {position} is a {kind} without an id")]
    MissingId { kind: Kind, position: usize },
    #[error("snapshot holds {kind} {id} twice")]
    DuplicateId { kind: Kind, id: String },
    #[error("snapshot holds two {kind}s named {name:?}")]
    DuplicateName { kind: Kind, name: String },
}
