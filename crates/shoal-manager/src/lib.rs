//! The manager role: commits transactions through the replicated log, serves the control API,
//! and creates the first cluster objects at `swarm init`.

pub mod authz;
pub mod autolock;
pub mod bootstrap;
pub mod ca;
pub mod compaction;
pub mod control;
pub mod dispatcher;
pub mod error;
pub mod forward;
pub mod membership;
pub mod recovery;
pub mod state_machine;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prost::Message;
use shoal_api::v1::{Transaction, TransactionResult, transaction_result::Outcome};
use shoal_raft::{ProposeError, ReplicatedLog};
use shoal_store::{Store, View};
use tonic::Request;
use tonic::transport::Channel;

pub use error::ManagerError;
pub use forward::Dialer;

/// A running manager: the store every manager holds, and the log that feeds it.
pub struct Manager {
    store: Store,
    log: Arc<ReplicatedLog>,
    node_id: String,
    cluster_id: String,
    dialer: Option<Dialer>,
    /// One channel per leader address: forwarded calls reuse the connection.
    channels: Mutex<HashMap<String, Channel>>,
    pub(crate) liveness: dispatcher::Liveness,
    /// Held while a manager's role and its raft membership change together (a demotion, the
    /// last step of a raft join), so neither sees the other half done.
    pub(crate) role_change: tokio::sync::Mutex<()>,
}

impl Manager {
    pub fn new(store: Store, log: Arc<ReplicatedLog>, node_id: String, cluster_id: String) -> Self {
        Manager {
            store,
            log,
            node_id,
            cluster_id,
            dialer: None,
            channels: Mutex::default(),
            liveness: dispatcher::Liveness::default(),
            role_change: tokio::sync::Mutex::new(()),
        }
    }

    /// Lets this manager reach the others (to forward leader-bound calls).
    pub fn with_dialer(mut self, dialer: Dialer) -> Self {
        self.dialer = Some(dialer);
        self
    }

    /// True when the certificate with `serial_hex`, or any certificate of `node_id`, is revoked.
    pub fn is_revoked(&self, serial_hex: &str, node_id: &str) -> bool {
        let view = self.store.view();
        view.cluster().is_some_and(|cluster| {
            cluster
                .revoked_certificates
                .iter()
                .any(|r| r.serial == serial_hex || r.node_id == node_id)
        })
    }

    /// `None` when this manager is the leader (handle the call here), else a channel to the
    /// leader. A call that a follower already forwarded is never forwarded again.
    pub fn leader_channel<T>(&self, request: &Request<T>) -> Result<Option<Channel>, ManagerError> {
        let status = self.log.status();
        if status.is_leader {
            return Ok(None);
        }
        let no_leader = || {
            ManagerError::Unavailable(
                "the swarm does not have a leader: it may have lost its quorum of managers; wait for an election, or restore quorum".to_owned(),
            )
        };
        if forward::origin(request).forwarded {
            return Err(ManagerError::Unavailable(
                "leadership moved while the request was forwarded; retry".to_owned(),
            ));
        }
        let leader = status.leader_id.ok_or_else(no_leader)?;
        let addr = status.members.get(&leader).cloned().ok_or_else(no_leader)?;
        let dialer = self.dialer.as_ref().ok_or_else(no_leader)?;
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(&addr) {
            return Ok(Some(channel.clone()));
        }
        let channel = dialer(&addr).map_err(ManagerError::Unavailable)?;
        channels.insert(addr, channel.clone());
        Ok(Some(channel))
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
        self.log.ensure_linearizable().await.map_err(|e| match e {
            // A read changes nothing: no "may or may not have been applied" here.
            ProposeError::Timeout(after) => ManagerError::Unavailable(format!(
                "the swarm does not have a quorum of managers: none answered within {}s",
                after.as_secs()
            )),
            other => propose_error(other),
        })?;
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
        ProposeError::Timeout(after) => ManagerError::Unavailable(format!(
            "the swarm does not have a quorum of managers: none answered within {}s; a write may or may not have been applied: check and retry",
            after.as_secs()
        )),
        ProposeError::Shutdown => {
            ManagerError::Unavailable("the manager is shutting down".to_owned())
        }
        other => ManagerError::Internal(other.to_string()),
    }
}

/// A status from the leader, passed on as is; a transport failure becomes one line naming it.
pub(crate) fn from_leader(status: tonic::Status) -> tonic::Status {
    match status.code() {
        // A status made on this side (it carries the local error as its source: connection
        // refused or reset, a failed TLS handshake) rather than one the leader sent.
        tonic::Code::Unavailable | tonic::Code::Unknown
            if std::error::Error::source(&status).is_some()
                || status.message().contains("transport")
                || status.message().is_empty() =>
        {
            tonic::Status::unavailable(format!(
                "cannot reach the swarm leader: {}",
                status.message()
            ))
        }
        _ => status,
    }
}

/// Now, as a protobuf timestamp (set by the proposer so that applying stays deterministic).
pub fn now_timestamp() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}
