//! The cluster CA service (`shoal.v1.NodeCa`): hands out the root certificate, turns a join
//! token plus a CSR into a Node object (committed through Raft) and a signed certificate, and
//! renews the certificates of nodes already in the swarm. The token (at join) or the store (at
//! renewal) decides role and lifetime; the CSR contributes only its public key.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use shoal_api::id;
use shoal_api::object::Object;
use shoal_api::v1::node_ca_client::NodeCaClient;
use shoal_api::v1::node_ca_server::{NodeCa, NodeCaServer};
use shoal_api::v1::*;
use shoal_pki::{JoinToken, NodeCertRequest, Role, RootCa};
use tonic::{Request, Response, Status};

use crate::authz::Caller;
use crate::bootstrap::{DEFAULT_CERT_EXPIRY_SECS, create, update};
use crate::control::ManagerSlot;
use crate::{Manager, ManagerError, forward, from_leader, now_timestamp};

/// The port a manager listens on when the joiner names none.
pub const DEFAULT_CLUSTER_PORT: u16 = 2377;

const INVALID_TOKEN: &str = "invalid join token";
/// Bound on a CSR, far above what a P-256 request needs.
const MAX_CSR_LEN: usize = 16 * 1024;
/// A renewal that loses a race with another write to its node (a heartbeat) reads it again.
const RENEW_ATTEMPTS: usize = 5;

pub struct NodeCaService {
    slot: ManagerSlot,
}

impl NodeCaService {
    pub fn new(slot: ManagerSlot) -> Self {
        NodeCaService { slot }
    }

    pub fn into_server(self) -> NodeCaServer<NodeCaService> {
        NodeCaServer::new(self)
    }

    fn manager(&self) -> Result<Arc<Manager>, Status> {
        self.slot
            .get()
            .ok_or_else(|| Status::unavailable("this node is not a swarm manager"))
    }
}

/// The role `given` grants, comparing it with both stored tokens (secrets in constant time).
fn role_for_token(given: &str, tokens: &JoinTokens) -> Option<Role> {
    let given = JoinToken::parse(given).ok()?;
    let grants = |stored: &str| {
        JoinToken::parse(stored).is_ok_and(|stored| {
            stored.root_digest() == given.root_digest() && stored.matches_secret(&given)
        })
    };
    // Both comparisons always run, so timing does not tell which token was close.
    let worker = grants(&tokens.worker);
    let manager = grants(&tokens.manager);
    match (worker, manager) {
        (_, true) => Some(Role::Manager),
        (true, false) => Some(Role::Worker),
        _ => None,
    }
}

/// host:port other managers will dial: the advertise address asked for, else the caller's
/// address with the listen port.
fn manager_address(
    advertise_addr: &str,
    listen_addr: &str,
    observed: Option<IpAddr>,
) -> Result<String, ManagerError> {
    if !advertise_addr.is_empty() {
        let addr: SocketAddr = advertise_addr.parse().map_err(|_| {
            ManagerError::InvalidArgument(format!(
                "invalid advertise address {advertise_addr:?}: expected IP:PORT"
            ))
        })?;
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return Err(ManagerError::InvalidArgument(format!(
                "advertise address {addr} is not reachable by other managers"
            )));
        }
        return Ok(addr.to_string());
    }
    let port = listen_addr
        .parse::<SocketAddr>()
        .map(|a| a.port())
        .unwrap_or(DEFAULT_CLUSTER_PORT);
    let ip = observed.ok_or_else(|| {
        ManagerError::InvalidArgument("no advertise address given and none observed".to_owned())
    })?;
    Ok(SocketAddr::new(ip, port).to_string())
}

async fn issue(
    manager: &Manager,
    request: IssueNodeCertificateRequest,
    observed: Option<IpAddr>,
) -> Result<IssueNodeCertificateResponse, ManagerError> {
    if request.token.len() > 256 || request.csr.len() > MAX_CSR_LEN {
        return Err(ManagerError::InvalidArgument(INVALID_TOKEN.to_owned()));
    }
    let view = manager.current_view().await?;
    let mut cluster = view
        .cluster()
        .cloned()
        .ok_or_else(|| ManagerError::Internal("the cluster object is missing".to_owned()))?;
    let root = cluster
        .root_ca
        .clone()
        .ok_or_else(|| ManagerError::Internal("the cluster has no root CA".to_owned()))?;
    let tokens = root.join_tokens.clone().unwrap_or_default();
    let role = role_for_token(&request.token, &tokens)
        .ok_or_else(|| ManagerError::InvalidArgument(INVALID_TOKEN.to_owned()))?;

    let node_id = id::new_id();
    let (raft_id, manager_addr) = match role {
        Role::Manager => {
            let raft_id = cluster.next_raft_id.max(2);
            cluster.next_raft_id = raft_id + 1;
            (
                raft_id,
                manager_address(&request.advertise_addr, &request.listen_addr, observed)?,
            )
        }
        Role::Worker => (0, String::new()),
    };
    let issued = sign(&cluster, &root, &request.csr, &node_id, role)?;

    let node_role = node_role(role);
    let now = now_timestamp();
    let mut description = request.description.clone().unwrap_or_default();
    if description.hostname.is_empty() {
        description.hostname = request.hostname.clone();
    }
    let node = Node {
        id: node_id.clone(),
        meta: Some(Meta {
            version: 0,
            created_at: Some(now),
            updated_at: Some(now),
        }),
        spec: Some(NodeSpec {
            annotations: Some(Annotations::default()),
            desired_role: node_role as i32,
            availability: NodeAvailability::Active as i32,
        }),
        description: Some(description),
        status: Some(NodeStatus {
            state: NodeState::Unknown as i32,
            message: String::new(),
            addr: observed.map(|ip| ip.to_string()).unwrap_or_default(),
        }),
        manager_status: (role == Role::Manager).then(|| ManagerStatus {
            raft_id,
            addr: manager_addr.clone(),
            leader: false,
            reachability: Reachability::Unknown as i32,
        }),
        certificate: Some(certificate_record(&issued, &node_id, role)),
        role: node_role as i32,
    };
    let version = cluster.version();
    cluster.meta_mut().version = version;
    cluster.meta_mut().updated_at = Some(now);
    manager
        .commit(Transaction {
            actions: vec![update(cluster.clone()), create(node)],
        })
        .await?;
    tracing::info!(%node_id, %role, raft_id, "issued a certificate to a joining node");
    let (unlock_key, unlock_key_version) = unlock_key_for(role, &cluster);
    Ok(IssueNodeCertificateResponse {
        node_id,
        cluster_id: cluster.id,
        role: node_role as i32,
        certificate: issued.cert_pem,
        root_ca: String::from_utf8_lossy(&root.ca_cert).into_owned(),
        raft_id,
        advertise_addr: manager_addr,
        unlock_key,
        unlock_key_version,
    })
}

fn role_of(node: &Node) -> Role {
    if node.role == NodeRole::Manager as i32 {
        Role::Manager
    } else {
        Role::Worker
    }
}

/// Signs `csr` for `node_id` in `role` with the cluster's root, valid for the cluster's
/// certificate expiry.
fn sign(
    cluster: &Cluster,
    root: &shoal_api::v1::RootCa,
    csr: &str,
    node_id: &str,
    role: Role,
) -> Result<shoal_pki::IssuedCert, ManagerError> {
    let ca = RootCa::from_pem(
        &String::from_utf8_lossy(&root.ca_cert),
        &String::from_utf8_lossy(&root.ca_key),
    )
    .map_err(|e| ManagerError::Internal(format!("cannot load the root CA: {e}")))?;
    let expiry = cluster
        .spec
        .as_ref()
        .and_then(|s| s.ca.as_ref())
        .map_or(DEFAULT_CERT_EXPIRY_SECS, |c| c.node_cert_expiry_secs);
    ca.sign_node(
        csr,
        &NodeCertRequest {
            node_id: node_id.to_owned(),
            role,
            cluster_id: cluster.id.clone(),
            validity: Duration::from_secs(expiry),
        },
    )
    .map_err(|e| ManagerError::InvalidArgument(format!("invalid certificate signing request: {e}")))
}

/// What the Node records of the certificate it was just issued.
fn certificate_record(
    issued: &shoal_pki::IssuedCert,
    node_id: &str,
    role: Role,
) -> NodeCertificate {
    NodeCertificate {
        role: node_role(role) as i32,
        csr: Vec::new(),
        state: IssuanceState::Issued as i32,
        certificate: issued.cert_pem.clone().into_bytes(),
        common_name: node_id.to_owned(),
        serial: issued.serial_hex.clone(),
        not_after: Some(prost_types::Timestamp::from(issued.not_after)),
    }
}

fn node_role(role: Role) -> NodeRole {
    match role {
        Role::Manager => NodeRole::Manager,
        Role::Worker => NodeRole::Worker,
    }
}

/// Renews `node_id`'s certificate: role from the node's record, lifetime from the cluster spec.
/// A node the store makes a manager but that has no raft id yet (a promotion) gets one here,
/// with the address other managers will dial, in the same transaction as its new certificate.
async fn renew(
    manager: &Manager,
    node_id: &str,
    request: &RenewNodeCertificateRequest,
    observed: Option<IpAddr>,
) -> Result<RenewNodeCertificateResponse, ManagerError> {
    if request.csr.len() > MAX_CSR_LEN
        || request.advertise_addr.len() > 256
        || request.listen_addr.len() > 256
    {
        return Err(ManagerError::InvalidArgument(
            "renewal request is too large".to_owned(),
        ));
    }
    let mut attempt = 1;
    loop {
        match renew_once(manager, node_id, request, observed).await {
            Err(ManagerError::Conflict(_)) if attempt < RENEW_ATTEMPTS => attempt += 1,
            other => return other,
        }
    }
}

async fn renew_once(
    manager: &Manager,
    node_id: &str,
    request: &RenewNodeCertificateRequest,
    observed: Option<IpAddr>,
) -> Result<RenewNodeCertificateResponse, ManagerError> {
    let view = manager.current_view().await?;
    let mut node = view.get::<Node>(node_id).cloned().ok_or_else(|| {
        ManagerError::NotFound(format!(
            "node {node_id} is not in the swarm (it was removed): it must join again"
        ))
    })?;
    let mut cluster = view
        .cluster()
        .cloned()
        .ok_or_else(|| ManagerError::Internal("the cluster object is missing".to_owned()))?;
    let root = cluster
        .root_ca
        .clone()
        .ok_or_else(|| ManagerError::Internal("the cluster has no root CA".to_owned()))?;
    let role = role_of(&node);
    let mut actions = Vec::new();
    if role == Role::Manager && node.manager_status.is_none() {
        let raft_id = cluster.next_raft_id.max(2);
        cluster.next_raft_id = raft_id + 1;
        let addr = manager_address(&request.advertise_addr, &request.listen_addr, observed)?;
        tracing::info!(%node_id, raft_id, %addr, "a promoted node takes up its manager role");
        node.manager_status = Some(ManagerStatus {
            raft_id,
            addr,
            leader: false,
            reachability: Reachability::Unknown as i32,
        });
        let version = cluster.version();
        cluster.meta_mut().version = version;
        cluster.meta_mut().updated_at = Some(now_timestamp());
        actions.push(update(cluster.clone()));
    }
    let issued = sign(&cluster, &root, &request.csr, node_id, role)?;
    node.certificate = Some(certificate_record(&issued, node_id, role));
    let version = node.version();
    node.meta_mut().version = version;
    node.meta_mut().updated_at = Some(now_timestamp());
    let (raft_id, advertise_addr) = node
        .manager_status
        .as_ref()
        .map_or((0, String::new()), |m| (m.raft_id, m.addr.clone()));
    actions.push(update(node));
    manager.commit(Transaction { actions }).await?;
    tracing::info!(%node_id, %role, serial = %issued.serial_hex, "renewed a node certificate");
    let (unlock_key, unlock_key_version) = unlock_key_for(role, &cluster);
    Ok(RenewNodeCertificateResponse {
        role: node_role(role) as i32,
        certificate: issued.cert_pem,
        root_ca: String::from_utf8_lossy(&root.ca_cert).into_owned(),
        raft_id,
        advertise_addr,
        unlock_key,
        unlock_key_version,
    })
}

/// The unlock key a manager of an autolocked swarm is handed with its certificate, and the
/// version of the cluster object it was read from (as read: any later change to the key has a
/// higher version, so the node never mistakes a later rotation for a replay of history).
fn unlock_key_for(role: Role, cluster: &Cluster) -> (Vec<u8>, u64) {
    if role == Role::Manager && !cluster.unlock_key.is_empty() {
        (cluster.unlock_key.clone(), cluster.version())
    } else {
        (Vec::new(), 0)
    }
}

/// A follower forwards renewals with the caller's identity, which the leader believes only from
/// a manager. A manager the store has demoted still holds its manager certificate until it
/// renews; it may forward its own renewal (through its own listener) but nobody else's, or it
/// could obtain a certificate in another node's name.
fn check_forwarder<T>(manager: &Manager, request: &Request<T>, origin: &str) -> Result<(), Status> {
    let Some(forwarder) = request
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.identity.as_ref())
    else {
        return Err(Status::unauthenticated(
            "a forwarded call needs a manager certificate",
        ));
    };
    if forwarder.node_id == origin {
        return Ok(());
    }
    let view = manager.store().view();
    match view.get::<Node>(&forwarder.node_id) {
        Some(node) if node.role == NodeRole::Manager as i32 => Ok(()),
        _ => Err(Status::permission_denied(format!(
            "node {} is no longer a manager and may not forward calls",
            forwarder.node_id
        ))),
    }
}

#[tonic::async_trait]
impl NodeCa for NodeCaService {
    async fn get_root_ca_certificate(
        &self,
        _request: Request<GetRootCaCertificateRequest>,
    ) -> Result<Response<GetRootCaCertificateResponse>, Status> {
        let manager = self.manager()?;
        let view = manager.store().view();
        let certificate = view
            .cluster()
            .and_then(|c| c.root_ca.as_ref())
            .map(|r| String::from_utf8_lossy(&r.ca_cert).into_owned())
            .ok_or_else(|| Status::unavailable("the cluster is not initialized yet"))?;
        Ok(Response::new(GetRootCaCertificateResponse { certificate }))
    }

    async fn issue_node_certificate(
        &self,
        request: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let manager = self.manager()?;
        if let Some(channel) = manager.leader_channel(&request)? {
            let forwarded =
                forward::forwarded(&request, request.get_ref().clone(), manager.node_id());
            return NodeCaClient::new(channel)
                .issue_node_certificate(forwarded)
                .await
                .map_err(from_leader);
        }
        let observed = forward::origin(&request).ip;
        Ok(Response::new(
            issue(&manager, request.into_inner(), observed).await?,
        ))
    }

    async fn renew_node_certificate(
        &self,
        request: Request<RenewNodeCertificateRequest>,
    ) -> Result<Response<RenewNodeCertificateResponse>, Status> {
        let manager = self.manager()?;
        if let Some(channel) = manager.leader_channel(&request)? {
            let forwarded =
                forward::forwarded(&request, request.get_ref().clone(), manager.node_id());
            return NodeCaClient::new(channel)
                .renew_node_certificate(forwarded)
                .await
                .map_err(from_leader);
        }
        let origin = forward::origin(&request);
        let node_id = origin
            .node_id
            .ok_or_else(|| Status::unauthenticated("a renewal needs a node certificate"))?;
        if origin.forwarded {
            check_forwarder(&manager, &request, &node_id)?;
        }
        // The listener checked the transport caller; a forwarded caller is checked here.
        if manager.is_revoked("", &node_id) {
            return Err(Status::permission_denied(format!(
                "node {node_id} has been removed from the swarm: its certificate is revoked"
            )));
        }
        Ok(Response::new(
            renew(&manager, &node_id, request.get_ref(), origin.ip).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_decides_the_role() {
        let digest = "0".repeat(shoal_pki::DIGEST_LEN);
        let worker = JoinToken::generate(&digest);
        let manager = JoinToken::generate(&digest);
        let tokens = JoinTokens {
            worker: worker.to_string(),
            manager: manager.to_string(),
        };
        assert_eq!(
            role_for_token(&worker.to_string(), &tokens),
            Some(Role::Worker)
        );
        assert_eq!(
            role_for_token(&manager.to_string(), &tokens),
            Some(Role::Manager)
        );
        let other = JoinToken::generate(&digest);
        assert_eq!(role_for_token(&other.to_string(), &tokens), None);
        assert_eq!(role_for_token("garbage", &tokens), None);
        let other_root = JoinToken::generate(&"1".repeat(shoal_pki::DIGEST_LEN));
        assert_eq!(role_for_token(&other_root.to_string(), &tokens), None);
    }
}
