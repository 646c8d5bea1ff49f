//! The store's side of `swarm init --force-new-cluster`: once raft holds only the surviving
//! manager, the store must stop claiming the others are managers.

use shoal_api::object::Object;
use shoal_api::v1::{
    Cluster, Node, NodeRole, NodeState, NodeStatus, RevokedCertificate, Transaction,
};
use shoal_store::View;

use crate::bootstrap::update;
use crate::now_timestamp;

/// The one transaction that makes the store agree with a forced one-voter raft: every other
/// manager becomes a Down worker whose certificate is revoked (its raft membership is gone, and
/// a manager certificate would still open manager methods to it), and the survivor's manager
/// address becomes `addr`. Services, tasks, configs and the nodes themselves are all kept; a
/// lost manager comes back by leaving (`swarm leave --force`) and joining again.
pub fn forced_cluster_transaction(view: &View, survivor: &str, addr: &str) -> Transaction {
    let mut actions = Vec::new();
    let mut revoked = Vec::new();
    for node in view.list::<Node>() {
        let mut node = node.clone();
        let version = node.version();
        if node.id == survivor {
            if let Some(status) = node.manager_status.as_mut()
                && status.addr != addr
            {
                status.addr = addr.to_owned();
                touch(&mut node, version);
                actions.push(update(node));
            }
            continue;
        }
        let is_manager = node.role == NodeRole::Manager as i32
            || node
                .spec
                .as_ref()
                .is_some_and(|s| s.desired_role == NodeRole::Manager as i32);
        if !is_manager {
            continue;
        }
        node.role = NodeRole::Worker as i32;
        if let Some(spec) = node.spec.as_mut() {
            spec.desired_role = NodeRole::Worker as i32;
        }
        node.manager_status = None;
        let addr = node
            .status
            .as_ref()
            .map(|s| s.addr.clone())
            .unwrap_or_default();
        node.status = Some(NodeStatus {
            state: NodeState::Down as i32,
            message: "removed from the managers by swarm init --force-new-cluster".to_owned(),
            addr,
        });
        if let Some(cert) = &node.certificate
            && !cert.serial.is_empty()
        {
            revoked.push(RevokedCertificate {
                serial: cert.serial.clone(),
                node_id: node.id.clone(),
                expires: cert.not_after,
            });
        }
        touch(&mut node, version);
        actions.push(update(node));
    }
    if !revoked.is_empty()
        && let Some(cluster) = view.list::<Cluster>().first()
    {
        let mut cluster = (*cluster).clone();
        let version = cluster.version();
        cluster.revoked_certificates.extend(revoked);
        touch(&mut cluster, version);
        actions.push(update(cluster));
    }
    Transaction { actions }
}

fn touch<T: Object>(object: &mut T, version: u64) {
    let meta = object.meta_mut();
    meta.version = version;
    meta.updated_at = Some(now_timestamp());
}
