//! Raft membership a manager asks for itself (`shoal.v1.RaftMembership`): the leader adds the
//! caller as a learner, waits until it has caught up (log or snapshot), then makes it a voter.
//! The raft id and address come from the caller's Node object, which the CA created; nothing
//! the caller says about itself is used.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use shoal_api::v1::raft_membership_client::RaftMembershipClient;
use shoal_api::v1::raft_membership_server::{RaftMembership, RaftMembershipServer};
use shoal_api::v1::{Node, NodeRole, RaftJoinRequest, RaftJoinResponse};
use tonic::{Request, Response, Status};

use crate::control::ManagerSlot;
use crate::{ManagerError, forward, from_leader};

/// How long a learner may take to catch up before the join is abandoned.
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

pub struct RaftMembershipService {
    slot: ManagerSlot,
    /// One membership change at a time.
    changing: Arc<tokio::sync::Mutex<()>>,
}

impl RaftMembershipService {
    pub fn new(slot: ManagerSlot) -> Self {
        RaftMembershipService {
            slot,
            changing: Arc::default(),
        }
    }

    pub fn into_server(self) -> RaftMembershipServer<RaftMembershipService> {
        RaftMembershipServer::new(self)
    }
}

fn propose(error: shoal_raft::ProposeError) -> Status {
    ManagerError::Unavailable(format!("raft membership change failed: {error}")).into()
}

#[tonic::async_trait]
impl RaftMembership for RaftMembershipService {
    async fn join(
        &self,
        request: Request<RaftJoinRequest>,
    ) -> Result<Response<RaftJoinResponse>, Status> {
        let manager = self
            .slot
            .get()
            .ok_or_else(|| Status::unavailable("this node is not a swarm manager"))?;
        if let Some(channel) = manager.leader_channel(&request)? {
            let forwarded = forward::forwarded(&request, RaftJoinRequest {}, manager.node_id());
            return RaftMembershipClient::new(channel)
                .join(forwarded)
                .await
                .map_err(from_leader);
        }
        let node_id = forward::origin(&request)
            .node_id
            .ok_or_else(|| Status::unauthenticated("joining raft needs a manager certificate"))?;
        let _changing = self.changing.lock().await;
        let view = manager.current_view().await?;
        let node = view
            .get::<Node>(&node_id)
            .ok_or_else(|| Status::not_found(format!("node {node_id} is not in the swarm")))?;
        let status = node
            .manager_status
            .as_ref()
            .filter(|_| node.role == NodeRole::Manager as i32)
            .ok_or_else(|| Status::permission_denied(format!("node {node_id} is not a manager")))?;
        let (raft_id, addr) = (status.raft_id, status.addr.clone());
        let log = manager.log();
        if !log.status().voters.contains(&raft_id) {
            tracing::info!(%node_id, raft_id, %addr, "adding a manager to raft as a learner");
            let caught_up =
                tokio::time::timeout(CATCH_UP_LIMIT, log.add_learner(raft_id, addr.clone(), true))
                    .await;
            match caught_up {
                Ok(result) => result.map_err(propose)?,
                Err(_) => {
                    let _ = log.remove_node(raft_id).await;
                    return Err(Status::deadline_exceeded(format!(
                        "the new manager did not catch up with the log within {CATCH_UP_LIMIT:?}"
                    )));
                }
            }
            let mut voters: BTreeSet<u64> = log.status().voters.into_iter().collect();
            voters.insert(raft_id);
            log.change_voters(voters).await.map_err(propose)?;
            tracing::info!(%node_id, raft_id, "the new manager is a voter");
        }
        Ok(Response::new(RaftJoinResponse {
            raft_id,
            members: log.status().members.into_iter().collect(),
        }))
    }
}
