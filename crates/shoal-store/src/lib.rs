//! shoal's replicated state: the in-memory object tables that the Raft state machine applies
//! transactions to, with version checks, name uniqueness, task secondary indexes, consistent
//! snapshot views and ordered change watches. It knows nothing of Raft or the network.
//!
//! ```
//! use shoal_api::object::Object;
//! use shoal_api::v1::{Node, StoreAction, StoreActionKind, Transaction};
//! use shoal_store::Store;
//!
//! let store = Store::new();
//! let node = Node { id: "n1".into(), ..Default::default() };
//! let txn = Transaction {
//!     actions: vec![StoreAction {
//!         kind: StoreActionKind::Create as i32,
//!         object: Some(node.into_store_object()),
//!     }],
//! };
//! store.apply(1, &txn).unwrap();
//! assert_eq!(store.view().get::<Node>("n1").unwrap().version(), 1);
//! ```

mod envelope;
mod error;
mod key;
mod snapshot;
mod store;
mod tables;
mod view;
mod watch;

pub use error::{ApplyError, LookupError, RestoreError, WatchError};
pub use snapshot::{SNAPSHOT_FORMAT, decode_snapshot, encode_snapshot};
pub use store::{DEFAULT_WATCH_CAPACITY, Store};
pub use view::View;
pub use watch::{Change, ChangeAction, Event, Watcher};

#[cfg(test)]
mod tests;
