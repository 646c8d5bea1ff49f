//! The manager role: commits transactions through the replicated log, serves the control API,
//! and creates the first cluster objects at `swarm init`.

pub mod bootstrap;
pub mod control;
pub mod error;
pub mod state_machine;

use std::sync::Arc;
use std::time::SystemTime;

use prost::Message;
use shoal_api::v1::{Transaction, TransactionResult, transaction_result::Outcome};
use shoal_raft::{ProposeError, ReplicatedLog};
use shoal_store::{Store, View};

pub use error::ManagerError;

/// A running manager: the store every manager holds, and the log that feeds it.
pub struct Manager {
    store: Store,
    log: Arc<ReplicatedLog>,
    node_id: String,
    cluster_id: String,
}

impl Manager {
    pub fn new(store: Store, log: Arc<ReplicatedLog>, node_id: String, cluster_id: String) -> Self {
        Manager {
            store,
            log,
            node_id,
            cluster_id,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn log(&self) -> &Arc<ReplicatedLog> {
        &self.log
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Replicates `transaction` and waits until it is applied; returns its Raft index.
    pub async fn commit(&self, transaction: Transaction) -> Result<u64, ManagerError> {
        let answer = self
            .log
            .propose(transaction.encode_to_vec())
            .await
            .map_err(propose_error)?;
        let result = TransactionResult::decode(answer.as_slice())
            .map_err(|e| ManagerError::Internal(format!("undecodable apply result: {e}")))?;
        match Outcome::try_from(result.outcome).unwrap_or(Outcome::Invalid) {
            Outcome::Applied => Ok(result.index),
            Outcome::Conflict => Err(ManagerError::Conflict(format!(
                "update out of sequence: {}; read the object again and retry",
                result.message
            ))),
            Outcome::NotFound => Err(ManagerError::NotFound(result.message)),
            Outcome::AlreadyExists => Err(ManagerError::AlreadyExists(result.message)),
            Outcome::Invalid => Err(ManagerError::InvalidArgument(result.message)),
        }
    }

    /// A view that reflects every write acknowledged before this call (a read barrier).
    pub async fn current_view(&self) -> Result<View, ManagerError> {
        self.log
            .ensure_linearizable()
            .await
            .map_err(propose_error)?;
        Ok(self.store.view())
    }
}

fn propose_error(error: ProposeError) -> ManagerError {
    match error {
        ProposeError::NotLeader { .. } => ManagerError::Unavailable(
            "this manager is not the leader and no leader is known: the swarm may have lost quorum"
                .to_owned(),
        ),
        ProposeError::TooLarge { size, limit } => ManagerError::InvalidArgument(format!(
            "request of {size} bytes exceeds the limit of {limit} bytes"
        )),
        ProposeError::LeadershipLost { .. } => ManagerError::Unavailable(
            "leadership changed while the request was being committed: it may or may not have been applied; check and retry"
                .to_owned(),
        ),
        ProposeError::NoQuorum(reason) => ManagerError::Unavailable(format!(
            "the swarm does not have a quorum of managers: {reason}"
        )),
        ProposeError::Shutdown => {
            ManagerError::Unavailable("the manager is shutting down".to_owned())
        }
        other => ManagerError::Internal(other.to_string()),
    }
}

/// Now, as a protobuf timestamp (set by the proposer so that applying stays deterministic).
pub fn now_timestamp() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}
