//! The glue between the replicated log and the store: a committed proposal is a prost-encoded
//! `Transaction`, applied to the store; the answer is a prost-encoded `TransactionResult`.

use prost::Message;
use shoal_api::v1::{StoreSnapshot, Transaction, TransactionResult, transaction_result::Outcome};
use shoal_store::{ApplyError, Store};

/// Applies committed transactions to a [`Store`]; what the Raft log replicates on every manager.
pub struct StoreStateMachine {
    store: Store,
}

impl StoreStateMachine {
    pub fn new(store: Store) -> Self {
        StoreStateMachine { store }
    }
}

fn outcome_of(error: &ApplyError) -> Outcome {
    match error {
        ApplyError::VersionConflict { .. } => Outcome::Conflict,
        ApplyError::NotFound { .. } => Outcome::NotFound,
        ApplyError::AlreadyExists { .. } | ApplyError::NameConflict { .. } => {
            Outcome::AlreadyExists
        }
        _ => Outcome::Invalid,
    }
}

impl shoal_raft::StateMachine for StoreStateMachine {
    fn apply(&self, index: u64, proposal: &[u8]) -> Vec<u8> {
        let result = match Transaction::decode(proposal) {
            Ok(transaction) => match self.store.apply(index, &transaction) {
                Ok(_) => TransactionResult {
                    outcome: Outcome::Applied as i32,
                    index,
                    message: String::new(),
                },
                Err(error) => TransactionResult {
                    outcome: outcome_of(&error) as i32,
                    index,
                    message: error.to_string(),
                },
            },
            Err(error) => {
                // A proposal that does not decode was still committed; it changes nothing but
                // the applied index, identically on every replica.
                self.store.skip(index);
                TransactionResult {
                    outcome: Outcome::Invalid as i32,
                    index,
                    message: format!("malformed transaction: {error}"),
                }
            }
        };
        result.encode_to_vec()
    }

    fn snapshot(&self) -> Vec<u8> {
        self.store.snapshot().encode_to_vec()
    }

    fn begin_snapshot(&self) -> shoal_raft::SnapshotWriter {
        // A view is O(1) (persistent maps), so applying is held up only for that; copying and
        // encoding the whole store (hundreds of ms at 50 MB) happens on raft's blocking thread.
        let view = self.store.view();
        Box::new(move || view.snapshot().encode_to_vec())
    }

    fn restore(&self, _index: u64, data: &[u8]) -> Result<(), String> {
        let snapshot = StoreSnapshot::decode(data).map_err(|e| format!("snapshot: {e}"))?;
        self.store.restore(snapshot).map_err(|e| e.to_string())
    }
}
