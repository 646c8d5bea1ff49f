//! The control API (`shoal.v1.Control`): reads from a current view of the store, writes as
//! transactions committed through the replicated log. Validation happens here, before anything
//! is proposed, so a bad request never reaches the log.

use std::sync::{Arc, RwLock};

use shoal_api::object::Object;
use shoal_api::v1::control_client::ControlClient;
use shoal_api::v1::control_server::{Control, ControlServer};
use shoal_api::v1::*;
use shoal_api::{id, validate};
use shoal_pki::JoinToken;
use shoal_store::View;
use tonic::{Request, Response, Status};

use crate::bootstrap::{MIN_CERT_EXPIRY_SECS, remove, update};
use crate::{Manager, ManagerError, now_timestamp};

/// The manager this host currently runs, if any. The daemon fills it on `swarm init` (or at
/// start when the host is already a manager) and empties it on `swarm leave`. It also knows
/// whether this host is a worker, or a manager that is locked (autolock), so refusals can say
/// which it is.
#[derive(Clone, Default)]
pub struct ManagerSlot(
    Arc<RwLock<Option<Arc<Manager>>>>,
    Arc<std::sync::atomic::AtomicBool>,
    Arc<std::sync::atomic::AtomicBool>,
);

impl ManagerSlot {
    /// Puts `manager` in the slot (or empties it); either way the host is no longer locked.
    pub fn set(&self, manager: Option<Arc<Manager>>) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = manager;
        self.2.store(false, std::sync::atomic::Ordering::Release);
    }

    /// Records that this host is a manager waiting for `swarm unlock` (the slot stays empty).
    pub fn set_locked(&self) {
        self.set(None);
        self.2.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_locked(&self) -> bool {
        self.2.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records whether this host is a worker of a swarm (it then holds no manager).
    pub fn set_worker(&self, worker: bool) {
        self.1.store(worker, std::sync::atomic::Ordering::Release);
    }

    pub fn is_worker(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn get(&self) -> Option<Arc<Manager>> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// The control API service, backed by whichever [`Manager`] the slot holds.
pub struct ControlApi {
    slot: ManagerSlot,
}

impl ControlApi {
    pub fn new(slot: ManagerSlot) -> Self {
        ControlApi { slot }
    }

    fn manager(&self) -> Result<Arc<Manager>, ManagerError> {
        if self.slot.is_locked() {
            return Err(ManagerError::FailedPrecondition(
                "this manager is locked: run shoal swarm unlock".to_owned(),
            ));
        }
        if self.slot.is_worker() {
            return Err(ManagerError::FailedPrecondition(
                "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.".to_owned(),
            ));
        }
        self.slot.get().ok_or_else(|| {
            ManagerError::FailedPrecondition(
                "this node is not a swarm manager: use \"shoal swarm init\" or \"shoal swarm join\" to connect it to a swarm"
                    .to_owned(),
            )
        })
    }

    pub fn into_server(self) -> ControlServer<ControlApi> {
        ControlServer::new(self)
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// On a follower, sends the call to the leader (with the caller's identity) and returns its
/// answer; on the leader, falls through.
macro_rules! leader_or_forward {
    ($manager:ident, $request:ident, $method:ident) => {
        if let Some(channel) = $manager.leader_channel(&$request)? {
            let forwarded = crate::forward::forwarded(
                &$request,
                $request.get_ref().clone(),
                $manager.node_id(),
            );
            return ControlClient::new(channel)
                .$method(forwarded)
                .await
                .map_err(crate::from_leader);
        }
    };
}

/// Raft ids of the voters the leader can count on: voters raft reports reachable (it has
/// acknowledged a recent heartbeat); where raft does not know yet (a leader of under
/// `unreachable_after`), voters whose node is not Down.
fn quorum_after_removing(manager: &Manager, view: &View, raft_id: u64) -> (usize, usize) {
    let status = manager.log().status();
    let voters: Vec<u64> = status
        .voters
        .iter()
        .copied()
        .filter(|v| *v != raft_id)
        .collect();
    let reachable = voters
        .iter()
        .filter(|v| match status.voter_reachable.get(v) {
            Some(reachable) => *reachable,
            None => view.iter::<Node>().any(|n| {
                n.manager_status.as_ref().is_some_and(|m| m.raft_id == **v)
                    && n.status.as_ref().map_or(0, |s| s.state) != NodeState::Down as i32
            }),
        })
        .count();
    (reachable, voters.len())
}

/// Refuses a change that takes `node`'s vote away when the remaining reachable voters would
/// not be a majority of the remaining voters.
pub(crate) fn ensure_quorum_without(
    manager: &Manager,
    view: &View,
    node: &Node,
    action: &str,
) -> Result<(), ManagerError> {
    let Some(status) = node.manager_status.as_ref() else {
        return Ok(());
    };
    let (reachable, voters) = quorum_after_removing(manager, view, status.raft_id);
    if voters == 0 || reachable < voters / 2 + 1 {
        return Err(ManagerError::FailedPrecondition(format!(
            "can't {action} node {}: the swarm would lose its quorum of managers ({reachable} of {voters} remaining managers reachable, {} needed)",
            node.id,
            voters / 2 + 1
        )));
    }
    Ok(())
}

/// How long a leader demoting itself waits for another manager to take over.
const HAND_OVER_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A leader asked to demote itself cannot take itself out of raft and then commit the change (it
/// would no longer lead): it hands leadership to a reachable voter and sends the call on to the
/// new leader. That is a second hop for a call a follower forwarded here, made on purpose and
/// once: the new leader is another node, and handles it. `None` when this call is not a
/// leader's self-demotion, or no other manager can take over (the checks that follow refuse).
async fn demote_self_elsewhere(
    manager: &Manager,
    request: &Request<UpdateNodeRequest>,
) -> Result<Option<UpdateNodeResponse>, Status> {
    let demoting_me = request.get_ref().node_id == manager.node_id()
        && request
            .get_ref()
            .spec
            .as_ref()
            .is_some_and(|s| s.desired_role == NodeRole::Worker as i32);
    let log = manager.log();
    let status = log.status();
    if !demoting_me || !status.is_leader {
        return Ok(None);
    }
    let Some(successor) = status
        .voters
        .iter()
        .copied()
        .find(|v| *v != status.id && status.voter_reachable.get(v) == Some(&true))
    else {
        return Ok(None);
    };
    // A demotion the new leader would refuse must not move leadership first.
    let view = manager.current_view().await?;
    if let Some(me) = view.get::<Node>(manager.node_id()) {
        ensure_quorum_without(manager, &view, me, "demote")?;
    }
    tracing::info!(
        successor,
        "demoting the leader: handing leadership over first"
    );
    log.transfer_leadership(successor)
        .await
        .map_err(|e| ManagerError::Unavailable(format!("cannot hand leadership over: {e}")))?;
    let deadline = tokio::time::Instant::now() + HAND_OVER_LIMIT;
    while log.status().leader_id.is_none_or(|l| l == status.id) {
        if tokio::time::Instant::now() >= deadline {
            return Err(ManagerError::Unavailable(
                "leadership was not handed over in time; retry the demotion".to_owned(),
            )
            .into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A bare request: this call's own forwarding marks must not stop the one deliberate hop.
    let channel = manager
        .leader_channel(&Request::new(()))?
        .ok_or_else(|| ManagerError::Unavailable("leadership came back; retry".to_owned()))?;
    let forwarded =
        crate::forward::forwarded(request, request.get_ref().clone(), manager.node_id());
    let answer = ControlClient::new(channel)
        .update_node(forwarded)
        .await
        .map_err(crate::from_leader)?;
    Ok(Some(answer.into_inner()))
}

fn node_hostname(node: &Node) -> &str {
    node.description
        .as_ref()
        .map_or("", |d| d.hostname.as_str())
}

/// Fills a manager node's leader flag and reachability from the log's current view: the stored
/// flag is only what was true at the node's last write. Reachability is raft's (the leader's
/// view of heartbeat acknowledgements) when it knows, else whether the node is Down.
fn with_live_leadership(mut node: Node, manager: &Manager) -> Node {
    let status = manager.log().status();
    let down = node.status.as_ref().map_or(0, |s| s.state) == NodeState::Down as i32;
    if let Some(manager_status) = node.manager_status.as_mut() {
        manager_status.leader = status.leader_id == Some(manager_status.raft_id);
        let raft_view = status.voter_reachable.get(&manager_status.raft_id).copied();
        manager_status.reachability = if manager_status.leader {
            Reachability::Reachable
        } else if let Some(reachable) = raft_view {
            if reachable {
                Reachability::Reachable
            } else {
                Reachability::Unreachable
            }
        } else if down || !status.members.contains_key(&manager_status.raft_id) {
            Reachability::Unreachable
        } else {
            Reachability::Reachable
        } as i32;
    }
    node
}

/// Resolves a node by ID, unique ID prefix, or unique hostname.
fn lookup_node(view: &View, reference: &str) -> Result<Node, ManagerError> {
    match view.lookup::<Node>(reference) {
        Ok(node) => Ok(node.clone()),
        Err(shoal_store::LookupError::NotFound { .. }) => {
            let mut by_host = view
                .list::<Node>()
                .into_iter()
                .filter(|n| node_hostname(n) == reference);
            match (by_host.next(), by_host.next()) {
                (Some(node), None) => Ok(node.clone()),
                (Some(_), Some(_)) => Err(ManagerError::InvalidArgument(format!(
                    "node reference {reference:?} is ambiguous: several nodes have this hostname; use the node ID"
                ))),
                _ => Err(ManagerError::NotFound(format!("no such node: {reference}"))),
            }
        }
        Err(other) => Err(other.into()),
    }
}

fn labels_of(
    annotations: &Option<Annotations>,
) -> Option<&std::collections::HashMap<String, String>> {
    annotations.as_ref().map(|a| &a.labels)
}

/// True when `object` passes every filter (names and ID prefixes match any; labels all).
fn matches_filters(
    filters: &Option<ListFilters>,
    id: &str,
    names: &[&str],
    labels: Option<&std::collections::HashMap<String, String>>,
) -> bool {
    let Some(filters) = filters else {
        return true;
    };
    if !filters.names.is_empty()
        && !filters
            .names
            .iter()
            .any(|wanted| names.iter().any(|name| name.starts_with(wanted.as_str())))
    {
        return false;
    }
    if !filters.id_prefixes.is_empty()
        && !filters
            .id_prefixes
            .iter()
            .any(|p| id.starts_with(p.as_str()))
    {
        return false;
    }
    filters.labels.iter().all(|(key, value)| {
        labels
            .and_then(|l| l.get(key))
            .is_some_and(|have| value.is_empty() || have == value)
    })
}

pub(crate) fn the_cluster(view: &View) -> Result<Cluster, ManagerError> {
    view.cluster()
        .cloned()
        .ok_or_else(|| ManagerError::Internal("the cluster object is missing".to_owned()))
}

/// The cluster as clients may see it: never the CA's private key, never the unlock key.
fn redact_cluster(mut cluster: Cluster) -> Cluster {
    if let Some(root) = cluster.root_ca.as_mut() {
        root.ca_key.clear();
    }
    cluster.unlock_key.clear();
    cluster
}

fn validate_node_spec(spec: &NodeSpec) -> Result<(), ManagerError> {
    if let Some(annotations) = &spec.annotations {
        validate::labels(annotations.labels.keys())?;
    }
    NodeRole::try_from(spec.desired_role).map_err(|_| {
        ManagerError::InvalidArgument(format!("invalid node role {}", spec.desired_role))
    })?;
    NodeAvailability::try_from(spec.availability).map_err(|_| {
        ManagerError::InvalidArgument(format!("invalid node availability {}", spec.availability))
    })?;
    Ok(())
}

fn validate_cluster_spec(spec: &ClusterSpec) -> Result<(), ManagerError> {
    if let Some(ca) = &spec.ca
        && ca.node_cert_expiry_secs < MIN_CERT_EXPIRY_SECS
    {
        return Err(ManagerError::InvalidArgument(format!(
            "certificate expiry of {}s is below the minimum of 1 hour",
            ca.node_cert_expiry_secs
        )));
    }
    if let Some(raft) = &spec.raft {
        if raft.snapshot_interval == 0 {
            return Err(ManagerError::InvalidArgument(
                "raft snapshot interval must be at least 1".to_owned(),
            ));
        }
        if raft.log_entries_for_slow_followers == 0 {
            return Err(ManagerError::InvalidArgument(
                "raft log entries for slow followers must be at least 1".to_owned(),
            ));
        }
    }
    if let Some(annotations) = &spec.annotations {
        validate::labels(annotations.labels.keys())?;
    }
    Ok(())
}

fn validate_config_spec(spec: &ConfigSpec) -> Result<&str, ManagerError> {
    let annotations = spec
        .annotations
        .as_ref()
        .ok_or_else(|| ManagerError::InvalidArgument("a config needs a name".to_owned()))?;
    validate::object_name("config", &annotations.name)?;
    validate::labels(annotations.labels.keys())?;
    validate::size("config data", spec.data.len(), validate::MAX_CONFIG_SIZE)?;
    Ok(&annotations.name)
}

fn touch<T: Object>(object: &mut T, version: u64) {
    let meta = object.meta_mut();
    meta.version = version;
    meta.updated_at = Some(now_timestamp());
}

#[tonic::async_trait]
impl Control for ControlApi {
    async fn get_node(&self, request: Request<GetNodeRequest>) -> Reply<GetNodeResponse> {
        let manager = self.manager()?;
        leader_or_forward!(manager, request, get_node);
        let view = manager.current_view().await?;
        let node = lookup_node(&view, &request.get_ref().node)?;
        Ok(Response::new(GetNodeResponse {
            node: Some(with_live_leadership(node, &manager)),
        }))
    }

    async fn list_nodes(&self, request: Request<ListNodesRequest>) -> Reply<ListNodesResponse> {
        let manager = self.manager()?;
        leader_or_forward!(manager, request, list_nodes);
        let view = manager.current_view().await?;
        let filters = &request.get_ref().filters;
        let nodes = view
            .iter::<Node>()
            .filter(|n| {
                let spec_name = n.name();
                matches_filters(
                    filters,
                    &n.id,
                    &[node_hostname(n), spec_name],
                    n.spec.as_ref().and_then(|s| labels_of(&s.annotations)),
                )
            })
            .map(|node| with_live_leadership(node.clone(), &manager))
            .collect();
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn update_node(&self, request: Request<UpdateNodeRequest>) -> Reply<UpdateNodeResponse> {
        let manager = self.manager()?;
        leader_or_forward!(manager, request, update_node);
        if let Some(answer) = demote_self_elsewhere(&manager, &request).await? {
            return Ok(Response::new(answer));
        }
        let request = request.into_inner();
        let spec = request
            .spec
            .ok_or_else(|| ManagerError::InvalidArgument("missing node spec".to_owned()))?;
        validate_node_spec(&spec)?;
        // A demotion takes the manager out of raft and then commits; a raft join finishing
        // meanwhile must wait (see `RaftMembership::join`).
        let _role_change = if spec.desired_role == NodeRole::Worker as i32
            && manager
                .store()
                .view()
                .get::<Node>(&request.node_id)
                .is_some_and(|n| n.role == NodeRole::Manager as i32)
        {
            Some(manager.role_change.lock().await)
        } else {
            None
        };
        let view = manager.current_view().await?;
        let mut node = view
            .get::<Node>(&request.node_id)
            .cloned()
            .ok_or_else(|| ManagerError::NotFound(format!("no such node: {}", request.node_id)))?;
        let demoting = spec.desired_role == NodeRole::Worker as i32
            && node
                .spec
                .as_ref()
                .is_some_and(|s| s.desired_role == NodeRole::Manager as i32);
        if demoting {
            let managers = view
                .list::<Node>()
                .iter()
                .filter(|n| {
                    n.spec
                        .as_ref()
                        .is_some_and(|s| s.desired_role == NodeRole::Manager as i32)
                })
                .count();
            if managers <= 1 {
                return Err(ManagerError::FailedPrecondition(format!(
                    "node {} is the last manager of the swarm and cannot be demoted",
                    node.id
                ))
                .into());
            }
            ensure_quorum_without(&manager, &view, &node, "demote")?;
        }
        // A demoted manager leaves raft first, then its role flips (as swarm's role manager
        // does): a store that says "worker" about a raft voter would lie about quorum. A node
        // promoted but not yet in raft has nothing to leave. The node itself notices the new
        // role at its next heartbeat, renews into a worker certificate and stops its manager.
        if demoting && node.role == NodeRole::Manager as i32 {
            if let Some(status) = node.manager_status.take()
                && manager.log().status().members.contains_key(&status.raft_id)
            {
                manager
                    .log()
                    .remove_node(status.raft_id)
                    .await
                    .map_err(|e| {
                        ManagerError::Unavailable(format!(
                            "cannot remove the manager from raft: {e}"
                        ))
                    })?;
            }
            node.role = NodeRole::Worker as i32;
        }
        // Promotion flips the role at once: the node renews into a manager certificate (the CA
        // gives it a raft id then) and joins raft itself.
        if spec.desired_role == NodeRole::Manager as i32 {
            node.role = NodeRole::Manager as i32;
        }
        node.spec = Some(spec);
        touch(&mut node, request.version);
        let index = manager
            .commit(Transaction {
                actions: vec![update(node.clone())],
            })
            .await?;
        node.meta_mut().version = index;
        Ok(Response::new(UpdateNodeResponse { node: Some(node) }))
    }

    async fn remove_node(&self, request: Request<RemoveNodeRequest>) -> Reply<RemoveNodeResponse> {
        let manager = self.manager()?;
        leader_or_forward!(manager, request, remove_node);
        let request = request.into_inner();
        let view = manager.current_view().await?;
        let node = lookup_node(&view, &request.node_id)?;
        if node.id == manager.node_id() {
            return Err(ManagerError::FailedPrecondition(format!(
                "node {} is this manager; use \"shoal swarm leave\" on it instead",
                node.id
            ))
            .into());
        }
        if node.role == NodeRole::Manager as i32 {
            if !request.force {
                return Err(ManagerError::FailedPrecondition(format!(
                    "node {} is a manager and a member of the raft cluster: demote it before removing it, or use --force",
                    node.id
                ))
                .into());
            }
            ensure_quorum_without(&manager, &view, &node, "remove")?;
            if let Some(status) = &node.manager_status {
                manager
                    .log()
                    .remove_node(status.raft_id)
                    .await
                    .map_err(|e| {
                        ManagerError::Unavailable(format!(
                            "cannot remove the manager from raft: {e}"
                        ))
                    })?;
            }
        }
        let state = node.status.as_ref().map_or(0, |s| s.state);
        if !request.force && state != NodeState::Down as i32 {
            return Err(ManagerError::FailedPrecondition(format!(
                "node {} is not down and can't be removed: stop it or use --force",
                node.id
            ))
            .into());
        }
        // Removal revokes the node's certificate in the same transaction, so a removed node can
        // never again pass the mutual-TLS check.
        let mut cluster = the_cluster(&view)?;
        if let Some(cert) = &node.certificate
            && !cert.serial.is_empty()
        {
            cluster.revoked_certificates.push(RevokedCertificate {
                serial: cert.serial.clone(),
                node_id: node.id.clone(),
                expires: cert.not_after,
            });
        }
        let cluster_version = cluster.version();
        touch(&mut cluster, cluster_version);
        let node_version = node.version();
        let mut removed = node;
        removed.meta_mut().version = node_version;
        manager
            .commit(Transaction {
                actions: vec![update(cluster), remove(removed)],
            })
            .await?;
        Ok(Response::new(RemoveNodeResponse {}))
    }

    async fn get_cluster(&self, request: Request<GetClusterRequest>) -> Reply<GetClusterResponse> {
        let manager = self.manager()?;
        leader_or_forward!(manager, request, get_cluster);
        let view = manager.current_view().await?;
        let cluster = the_cluster(&view)?;
        Ok(Response::new(GetClusterResponse {
            cluster: Some(redact_cluster(cluster)),
        }))
    }

    async fn update_cluster(
        &self,
        request: Request<UpdateClusterRequest>,
    ) -> Reply<UpdateClusterResponse> {
        let manager = self.manager()?;
        leader_or_forward!(manager, request, update_cluster);
        let request = request.into_inner();
        let spec = request
            .spec
            .ok_or_else(|| ManagerError::InvalidArgument("missing cluster spec".to_owned()))?;
        validate_cluster_spec(&spec)?;
        let view = manager.current_view().await?;
        let mut cluster = view
            .get::<Cluster>(&request.cluster_id)
            .cloned()
            .ok_or_else(|| {
                ManagerError::NotFound(format!("no such cluster: {}", request.cluster_id))
            })?;
        cluster.spec = Some(spec);
        crate::autolock::align_unlock_key(&mut cluster)?;
        if let Some(root) = cluster.root_ca.as_mut() {
            let digest = root.ca_cert_digest.clone();
            let tokens = root.join_tokens.get_or_insert_with(Default::default);
            if request.rotate_worker_token {
                tokens.worker = JoinToken::generate(&digest).to_string();
            }
            if request.rotate_manager_token {
                tokens.manager = JoinToken::generate(&digest).to_string();
            }
        }
        touch(&mut cluster, request.version);
        let index = manager
            .commit(Transaction {
                actions: vec![update(cluster.clone())],
            })
            .await?;
        cluster.meta_mut().version = index;
        Ok(Response::new(UpdateClusterResponse {
            cluster: Some(redact_cluster(cluster)),
        }))
    }

    async fn get_unlock_key(
        &self,
        request: Request<GetUnlockKeyRequest>,
    ) -> Reply<GetUnlockKeyResponse> {
        let manager = self.manager()?;
        leader_or_forward!(manager, request, get_unlock_key);
        let cluster = the_cluster(&manager.current_view().await?)?;
        let key = crate::autolock::unlock_key_of(&cluster)?;
        Ok(Response::new(GetUnlockKeyResponse {
            unlock_key: key.to_string(),
            version: cluster.version(),
        }))
    }

    async fn rotate_unlock_key(
        &self,
        request: Request<RotateUnlockKeyRequest>,
    ) -> Reply<RotateUnlockKeyResponse> {
        let manager = self.manager()?;
        leader_or_forward!(manager, request, rotate_unlock_key);
        let mut cluster = the_cluster(&manager.current_view().await?)?;
        let key = crate::autolock::rotate_unlock_key(&mut cluster)?;
        let version = cluster.version();
        touch(&mut cluster, version);
        manager
            .commit(Transaction {
                actions: vec![update(cluster)],
            })
            .await?;
        Ok(Response::new(RotateUnlockKeyResponse {
            unlock_key: key.to_string(),
        }))
    }

    async fn create_config(
        &self,
        request: Request<CreateConfigRequest>,
    ) -> Reply<CreateConfigResponse> {
        let manager = self.manager()?;
        leader_or_forward!(manager, request, create_config);
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| ManagerError::InvalidArgument("missing config spec".to_owned()))?;
        let name = validate_config_spec(&spec)?.to_owned();
        let now = now_timestamp();
        let mut config = Config {
            id: id::new_id(),
            meta: Some(Meta {
                version: 0,
                created_at: Some(now),
                updated_at: Some(now),
            }),
            spec: Some(spec),
        };
        let index = manager
            .commit(Transaction {
                actions: vec![crate::bootstrap::create(config.clone())],
            })
            .await
            .map_err(|e| match e {
                ManagerError::AlreadyExists(_) => {
                    ManagerError::AlreadyExists(format!("a config named {name:?} already exists"))
                }
                other => other,
            })?;
        config.meta_mut().version = index;
        Ok(Response::new(CreateConfigResponse {
            config: Some(config),
        }))
    }

    async fn get_config(&self, request: Request<GetConfigRequest>) -> Reply<GetConfigResponse> {
        let manager = self.manager()?;
        leader_or_forward!(manager, request, get_config);
        let view = manager.current_view().await?;
        let config = view
            .lookup::<Config>(&request.get_ref().config)
            .map_err(ManagerError::from)?
            .clone();
        Ok(Response::new(GetConfigResponse {
            config: Some(config),
        }))
    }

    async fn update_config(
        &self,
        request: Request<UpdateConfigRequest>,
    ) -> Reply<UpdateConfigResponse> {
        let manager = self.manager()?;
        leader_or_forward!(manager, request, update_config);
        let request = request.into_inner();
        let spec = request
            .spec
            .ok_or_else(|| ManagerError::InvalidArgument("missing config spec".to_owned()))?;
        validate_config_spec(&spec)?;
        let view = manager.current_view().await?;
        let mut config = view
            .get::<Config>(&request.config_id)
            .cloned()
            .ok_or_else(|| {
                ManagerError::NotFound(format!("no such config: {}", request.config_id))
            })?;
        let current = config.spec.clone().unwrap_or_default();
        if current.data != spec.data
            || current.annotations.as_ref().map(|a| &a.name)
                != spec.annotations.as_ref().map(|a| &a.name)
        {
            return Err(ManagerError::InvalidArgument(
                "only the labels of a config can be updated; its name and data are immutable"
                    .to_owned(),
            )
            .into());
        }
        config.spec = Some(spec);
        touch(&mut config, request.version);
        let index = manager
            .commit(Transaction {
                actions: vec![update(config.clone())],
            })
            .await?;
        config.meta_mut().version = index;
        Ok(Response::new(UpdateConfigResponse {
            config: Some(config),
        }))
    }

    async fn list_configs(
        &self,
        request: Request<ListConfigsRequest>,
    ) -> Reply<ListConfigsResponse> {
        let manager = self.manager()?;
        leader_or_forward!(manager, request, list_configs);
        let view = manager.current_view().await?;
        let filters = &request.get_ref().filters;
        let configs = view
            .iter::<Config>()
            .filter(|c| {
                matches_filters(
                    filters,
                    &c.id,
                    &[c.name()],
                    c.spec.as_ref().and_then(|s| labels_of(&s.annotations)),
                )
            })
            .map(|c| {
                // A list carries names and labels, never the data: 4 MiB of configs must not
                // make `config ls` exceed a message limit. `GetConfig` returns the data.
                let mut c = c.clone();
                if let Some(spec) = c.spec.as_mut() {
                    spec.data.clear();
                }
                c
            })
            .collect();
        Ok(Response::new(ListConfigsResponse { configs }))
    }

    async fn remove_config(
        &self,
        request: Request<RemoveConfigRequest>,
    ) -> Reply<RemoveConfigResponse> {
        let manager = self.manager()?;
        leader_or_forward!(manager, request, remove_config);
        let view = manager.current_view().await?;
        let config = view
            .lookup::<Config>(&request.get_ref().config_id)
            .map_err(ManagerError::from)?
            .clone();
        // Services cannot reference configs yet; when they can, removal of a config in use
        // must be refused here.
        manager
            .commit(Transaction {
                actions: vec![remove(config)],
            })
            .await?;
        Ok(Response::new(RemoveConfigResponse {}))
    }
}
