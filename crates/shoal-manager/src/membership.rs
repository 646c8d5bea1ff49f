//! Raft membership a manager asks for itself (`shoal.v1.RaftMembership`): the leader adds the
//! caller as a learner, waits until it has caught up (log or snapshot), then makes it a voter.
//! The raft id and address come from the caller's Node object, which the CA created; nothing
//! the caller says about itself is used.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use shoal_api::object::Object;
use shoal_api::v1::raft_membership_client::RaftMembershipClient;
use shoal_api::v1::raft_membership_server::{RaftMembership, RaftMembershipServer};
use shoal_api::v1::{
    Node, NodeRole, NodeState, NodeStatus, RaftJoinRequest, RaftJoinResponse, RaftLeaveRequest,
    RaftLeaveResponse, RevokedCertificate, Transaction,
};
use tonic::{Request, Response, Status};

use crate::bootstrap::update;
use crate::control::{ManagerSlot, ensure_quorum_without, the_cluster};
use crate::{ManagerError, forward, from_leader, now_timestamp};

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
            // A demotion that ran while the learner caught up found nothing to take out of
            // raft; it must not end up with a voter the store calls a worker.
            let _role_change = manager.role_change.lock().await;
            let still_manager = manager
                .store()
                .view()
                .get::<Node>(&node_id)
                .is_some_and(|n| {
                    n.role == NodeRole::Manager as i32
                        && n.manager_status.as_ref().map(|m| m.raft_id) == Some(raft_id)
                });
            if !still_manager {
                let _ = log.remove_node(raft_id).await;
                return Err(Status::permission_denied(format!(
                    "node {node_id} was demoted while it joined raft"
                )));
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

    async fn leave(
        &self,
        request: Request<RaftLeaveRequest>,
    ) -> Result<Response<RaftLeaveResponse>, Status> {
        let manager = self
            .slot
            .get()
            .ok_or_else(|| Status::unavailable("this node is not a swarm manager"))?;
        if let Some(channel) = manager.leader_channel(&request)? {
            let forwarded = forward::forwarded(&request, RaftLeaveRequest {}, manager.node_id());
            return RaftMembershipClient::new(channel)
                .leave(forwarded)
                .await
                .map_err(from_leader);
        }
        let node_id = forward::origin(&request)
            .node_id
            .ok_or_else(|| Status::unauthenticated("leaving raft needs a manager certificate"))?;
        let _changing = self.changing.lock().await;
        let view = manager.current_view().await?;
        let mut node = view
            .get::<Node>(&node_id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("node {node_id} is not in the swarm")))?;
        if node_id == manager.node_id() {
            // The leader cannot commit its own departure's bookkeeping after it has left.
            return Err(Status::failed_precondition(
                "the leaving manager leads the swarm: hand leadership over first",
            ));
        }
        ensure_quorum_without(&manager, &view, &node, "remove")?;
        if let Some(status) = node.manager_status.take() {
            manager
                .log()
                .remove_node(status.raft_id)
                .await
                .map_err(propose)?;
            tracing::info!(%node_id, raft_id = status.raft_id, "a manager left raft");
        }
        let version = node.version();
        node.role = NodeRole::Worker as i32;
        if let Some(spec) = node.spec.as_mut() {
            spec.desired_role = NodeRole::Worker as i32;
        }
        let addr = node
            .status
            .as_ref()
            .map(|s| s.addr.clone())
            .unwrap_or_default();
        node.status = Some(NodeStatus {
            state: NodeState::Down as i32,
            message: "left the swarm".to_owned(),
            addr,
        });
        let meta = node.meta_mut();
        meta.version = version;
        meta.updated_at = Some(now_timestamp());
        let mut actions = Vec::new();
        // The departed host deleted its key; revoking still closes the door on a copy of it.
        if let Some(cert) = node.certificate.as_ref().filter(|c| !c.serial.is_empty()) {
            let mut cluster = the_cluster(&view)?;
            let cluster_version = cluster.version();
            cluster.revoked_certificates.push(RevokedCertificate {
                serial: cert.serial.clone(),
                node_id: node.id.clone(),
                expires: cert.not_after,
            });
            let meta = cluster.meta_mut();
            meta.version = cluster_version;
            meta.updated_at = Some(now_timestamp());
            actions.push(update(cluster));
        }
        actions.push(update(node));
        manager.commit(Transaction { actions }).await?;
        Ok(Response::new(RaftLeaveResponse {}))
    }
}
