//! This host's membership: the local `shoal.v1.Swarm` service (init, join, leave, info) and
//! the life cycle of the manager it runs. Only the daemon's unix socket serves it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use shoal_api::v1::swarm_server::{Swarm, SwarmServer};
use shoal_api::v1::{
    ClusterSpec, InfoRequest, InfoResponse, InitRequest, InitResponse, JoinRequest, JoinResponse,
    LeaveRequest, LeaveResponse, LocalNodeState, Node, NodeRole, RaftInfo,
};
use shoal_api::{id, object::Object};
use shoal_manager::bootstrap::{Bootstrap, default_cluster_spec};
use shoal_manager::control::ManagerSlot;
use shoal_manager::state_machine::StoreStateMachine;
use shoal_manager::{Manager, ManagerError};
use shoal_pki::{NodeCertRequest, NodeCertificates, NodeKey, Role, RootCa};
use shoal_raft::{RaftConfig, ReplicatedLog};
use shoal_store::Store;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use super::data_root::{DataRoot, STATE_FORMAT, SwarmState};
use super::host;

/// The manager listener's port when the user names none.
pub(crate) const DEFAULT_PORT: u16 = 2377;

/// Settings the daemon passes down to the managers it starts.
#[derive(Clone, Debug)]
pub(crate) struct ManagerOptions {
    pub(crate) group_commit: bool,
}

/// A manager this host runs: its log (to shut it down) and the state file it was started from.
struct ActiveManager {
    manager: Arc<Manager>,
    state: SwarmState,
}

/// Everything the local Swarm service changes; one lock so that init, join and leave never
/// interleave.
pub(crate) struct Membership {
    data_root: DataRoot,
    exec_root: std::path::PathBuf,
    options: ManagerOptions,
    slot: ManagerSlot,
    active: Mutex<Option<ActiveManager>>,
}

impl Membership {
    /// Loads the data root's swarm state and, when this host is a manager, starts its manager.
    pub(crate) async fn start(
        data_root: DataRoot,
        exec_root: std::path::PathBuf,
        options: ManagerOptions,
        slot: ManagerSlot,
    ) -> anyhow::Result<Membership> {
        let state = data_root.load_state().with_context(|| {
            format!(
                "data root {} is unusable; refusing to start (nothing was changed: move it away to start afresh)",
                data_root.path().display()
            )
        })?;
        let membership = Membership {
            data_root,
            exec_root,
            options,
            slot,
            active: Mutex::new(None),
        };
        if let Some(state) = state {
            let manager = membership.open_manager(&state).await.with_context(|| {
                format!(
                    "data root {} is unusable; refusing to start (nothing was changed: move it away to start afresh)",
                    membership.data_root.path().display()
                )
            })?;
            tracing::info!(node_id = %state.node_id, cluster_id = %state.cluster_id, "manager resumed");
            membership.slot.set(Some(manager.clone()));
            *membership.active.lock().await = Some(ActiveManager { manager, state });
        }
        Ok(membership)
    }

    /// Opens the certificates and the replicated log of an existing manager.
    async fn open_manager(&self, state: &SwarmState) -> anyhow::Result<Arc<Manager>> {
        // Loading checks the key, certificate and root belong together; a damaged set stops
        // the start here rather than at the first peer connection.
        NodeCertificates::load(&self.data_root.certificates_dir())?;
        let store = Store::new();
        let log = ReplicatedLog::open(
            self.raft_config(state.raft_id),
            Arc::new(StoreStateMachine::new(store.clone())),
            Arc::new(NoPeers),
        )
        .await?;
        let log = Arc::new(log);
        wait_for_leader(&log, Duration::from_secs(10)).await?;
        Ok(Arc::new(Manager::new(
            store,
            log,
            state.node_id.clone(),
            state.cluster_id.clone(),
        )))
    }

    fn raft_config(&self, raft_id: u64) -> RaftConfig {
        let mut config = RaftConfig::new(raft_id, self.data_root.raft_dir());
        config.group_commit = self.options.group_commit;
        config
    }

    async fn init(&self, request: InitRequest) -> anyhow::Result<InitResponse, ManagerError> {
        let mut active = self.active.lock().await;
        if active.is_some() {
            return Err(ManagerError::FailedPrecondition(
                "this node is already part of a swarm: use \"shoal swarm leave\" to leave it before initializing a new one".to_owned(),
            ));
        }
        if request.force_new_cluster {
            return Err(ManagerError::FailedPrecondition(
                "--force-new-cluster needs an existing manager state on this node, and this node is not in a swarm".to_owned(),
            ));
        }
        let listen = parse_addr("listen", &request.listen_addr, "0.0.0.0")?;
        let advertise = if request.advertise_addr.is_empty() {
            let ip = host::default_route_address().ok_or_else(|| {
                ManagerError::InvalidArgument(
                    "could not choose an IP address to advertise: this host has no default route; use --advertise-addr".to_owned(),
                )
            })?;
            SocketAddr::new(ip, listen.port())
        } else {
            parse_addr("advertise", &request.advertise_addr, "")?
        };
        if advertise.ip().is_unspecified() {
            return Err(ManagerError::InvalidArgument(format!(
                "advertise address {advertise} is unspecified: give the address other hosts reach this one at"
            )));
        }
        let mut spec = default_cluster_spec();
        if let Some(given) = request.spec {
            merge_spec(&mut spec, given);
        }
        let state = SwarmState {
            format: STATE_FORMAT,
            complete: false,
            node_id: id::new_id(),
            cluster_id: id::new_id(),
            raft_id: 1,
            role: "manager".to_owned(),
            advertise_addr: advertise.to_string(),
            listen_addr: listen.to_string(),
        };
        match self.create_swarm(&state, spec).await {
            Ok(manager) => {
                let mut done = state.clone();
                done.complete = true;
                if let Err(error) = self.data_root.save_state(&done) {
                    manager.log().shutdown().await;
                    let _ = self.data_root.remove_swarm();
                    return Err(ManagerError::Internal(format!("{error:#}")));
                }
                tracing::info!(node_id = %done.node_id, cluster_id = %done.cluster_id, %advertise, "swarm initialized");
                self.slot.set(Some(manager.clone()));
                *active = Some(ActiveManager {
                    manager,
                    state: done.clone(),
                });
                Ok(InitResponse {
                    node_id: done.node_id,
                    cluster_id: done.cluster_id,
                })
            }
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "swarm init failed");
                let _ = self.data_root.remove_swarm();
                Err(ManagerError::Internal(format!(
                    "swarm init failed: {error:#}"
                )))
            }
        }
    }

    /// Makes the root CA, this node's certificate, the one-voter log and the first objects.
    async fn create_swarm(
        &self,
        state: &SwarmState,
        spec: ClusterSpec,
    ) -> anyhow::Result<Arc<Manager>> {
        self.data_root.save_state(state)?;
        let root = RootCa::generate()?;
        let key = NodeKey::generate()?;
        let expiry = spec
            .ca
            .as_ref()
            .map_or(shoal_manager::bootstrap::DEFAULT_CERT_EXPIRY_SECS, |c| {
                c.node_cert_expiry_secs
            });
        let issued = root.sign_node(
            &key.csr_pem()?,
            &NodeCertRequest {
                node_id: state.node_id.clone(),
                role: Role::Manager,
                cluster_id: state.cluster_id.clone(),
                validity: Duration::from_secs(expiry),
            },
        )?;
        NodeCertificates {
            key,
            cert_pem: issued.cert_pem.clone(),
            root_ca_pem: root.cert_pem().to_owned(),
        }
        .save(&self.data_root.certificates_dir())?;

        let store = Store::new();
        let log = Arc::new(
            ReplicatedLog::open(
                self.raft_config(state.raft_id),
                Arc::new(StoreStateMachine::new(store.clone())),
                Arc::new(NoPeers),
            )
            .await?,
        );
        let result = async {
            log.initialize_single(state.advertise_addr.clone()).await?;
            wait_for_leader(&log, Duration::from_secs(10)).await?;
            let manager = Arc::new(Manager::new(
                store,
                log.clone(),
                state.node_id.clone(),
                state.cluster_id.clone(),
            ));
            let advertise: SocketAddr = state.advertise_addr.parse()?;
            let bootstrap = Bootstrap {
                cluster_id: &state.cluster_id,
                node_id: &state.node_id,
                raft_id: state.raft_id,
                root_ca: &root,
                node_cert: &issued,
                spec,
                description: host::description(),
                node_addr: advertise.ip().to_string(),
                manager_addr: state.advertise_addr.clone(),
            };
            manager.commit(bootstrap.transaction()).await?;
            anyhow::Ok(manager)
        }
        .await;
        if result.is_err() {
            log.shutdown().await;
        }
        result
    }

    async fn leave(&self, request: LeaveRequest) -> Result<(), ManagerError> {
        let mut active = self.active.lock().await;
        let Some(current) = active.as_ref() else {
            return Err(ManagerError::FailedPrecondition(
                "this node is not part of a swarm".to_owned(),
            ));
        };
        if current.state.role == "manager" && !request.force {
            return Err(ManagerError::FailedPrecondition(
                "this node is a manager: leaving removes it from the raft cluster, and leaving the last manager erases the swarm's whole state; use --force to leave anyway".to_owned(),
            ));
        }
        let current = active.take().expect("checked above");
        self.slot.set(None);
        current.manager.log().shutdown().await;
        self.data_root
            .remove_swarm()
            .map_err(|e| ManagerError::Internal(format!("{e:#}")))?;
        tracing::info!(node_id = %current.state.node_id, "left the swarm");
        Ok(())
    }

    async fn info(&self) -> InfoResponse {
        let mut info = InfoResponse {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            hostname: host::hostname(),
            os: std::env::consts::OS.to_owned(),
            architecture: host::architecture().to_owned(),
            cpus: host::cpus(),
            memory_bytes: host::memory_bytes(),
            data_root: self.data_root.path().display().to_string(),
            exec_root: self.exec_root.display().to_string(),
            state: LocalNodeState::Inactive as i32,
            ..Default::default()
        };
        let active = self.active.lock().await;
        let Some(current) = active.as_ref() else {
            return info;
        };
        info.state = LocalNodeState::Active as i32;
        info.node_id = current.state.node_id.clone();
        info.cluster_id = current.state.cluster_id.clone();
        info.is_manager = current.state.role == "manager";
        info.node_addr = current
            .state
            .advertise_addr
            .parse::<SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let status = current.manager.log().status();
        info.raft = Some(RaftInfo {
            raft_id: status.id,
            term: status.term,
            last_log_index: status.last_log_index.unwrap_or(0),
            last_applied: status.last_applied.unwrap_or(0),
            leader_raft_id: status.leader_id.unwrap_or(0),
            voters: status.voters.len() as u32,
        });
        let view = current.manager.store().view();
        let nodes = view.list::<Node>();
        info.nodes = nodes.len() as u32;
        info.managers = nodes
            .iter()
            .filter(|n| n.role == NodeRole::Manager as i32)
            .count() as u32;
        info.remote_managers = nodes
            .iter()
            .filter_map(|n| n.manager_status.as_ref())
            .map(|m| m.addr.clone())
            .collect();
        if let Some(me) = view.get::<Node>(&current.state.node_id) {
            info.cert_expiry = me.certificate.as_ref().and_then(|c| c.not_after);
            if me.version() == 0 {
                info.error = "node object has no version".to_owned();
            }
        }
        info
    }

    /// Stops the manager (if any) without touching its state: used at daemon shutdown.
    pub(crate) async fn shutdown(&self) {
        let mut active = self.active.lock().await;
        self.slot.set(None);
        if let Some(current) = active.take() {
            current.manager.log().shutdown().await;
        }
    }
}

/// The transport of a manager that has no peers yet: joining other managers (and with it the
/// mutual-TLS transport) arrives with multi-host clusters.
struct NoPeers;

impl shoal_raft::PeerNetwork for NoPeers {
    fn call(
        &self,
        target: u64,
        _addr: &str,
        _kind: shoal_raft::RpcKind,
        _payload: Vec<u8>,
    ) -> shoal_raft::BoxFuture<'static, Result<Vec<u8>, shoal_raft::NetError>> {
        Box::pin(async move {
            Err(shoal_raft::NetError::Unreachable(format!(
                "no transport to raft peer {target}"
            )))
        })
    }

    fn install_snapshot(
        &self,
        target: u64,
        _addr: &str,
        _chunks: shoal_raft::SnapshotChunks,
    ) -> shoal_raft::BoxFuture<'static, Result<Vec<u8>, shoal_raft::NetError>> {
        Box::pin(async move {
            Err(shoal_raft::NetError::Unreachable(format!(
                "no transport to raft peer {target}"
            )))
        })
    }
}

/// Waits until the log has a leader that is ready to take writes.
async fn wait_for_leader(log: &ReplicatedLog, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if log.status().leader_id.is_some() && log.ensure_linearizable().await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no raft leader elected within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Parses `ADDR[:PORT]` (IP addresses only); the port defaults to 2377.
fn parse_addr(what: &str, given: &str, default_ip: &str) -> Result<SocketAddr, ManagerError> {
    let text = if given.is_empty() { default_ip } else { given };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    Err(ManagerError::InvalidArgument(format!(
        "invalid {what} address {given:?}: expected an IP address with an optional port, such as 192.0.2.10 or 192.0.2.10:2377"
    )))
}

/// Applies the settings a client gave to `swarm init` over the defaults.
fn merge_spec(spec: &mut ClusterSpec, given: ClusterSpec) {
    if let Some(ca) = given.ca
        && ca.node_cert_expiry_secs != 0
    {
        spec.ca = Some(ca);
    }
    if let Some(orchestration) = given.orchestration {
        spec.orchestration = Some(orchestration);
    }
    if let Some(dispatcher) = given.dispatcher
        && dispatcher.heartbeat_period_ms != 0
    {
        spec.dispatcher = Some(dispatcher);
    }
    if let Some(annotations) = given.annotations
        && !annotations.labels.is_empty()
    {
        spec.annotations.get_or_insert_with(Default::default).labels = annotations.labels;
    }
}

/// The gRPC face of [`Membership`].
pub(crate) struct SwarmApi {
    membership: Arc<Membership>,
}

impl SwarmApi {
    pub(crate) fn server(membership: Arc<Membership>) -> SwarmServer<SwarmApi> {
        SwarmServer::new(SwarmApi { membership })
    }
}

#[tonic::async_trait]
impl Swarm for SwarmApi {
    async fn init(&self, request: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        let request = request.into_inner();
        if let Some(ca) = request.spec.as_ref().and_then(|s| s.ca.as_ref())
            && ca.node_cert_expiry_secs != 0
            && ca.node_cert_expiry_secs < shoal_manager::bootstrap::MIN_CERT_EXPIRY_SECS
        {
            return Err(Status::invalid_argument(
                "certificate expiry must be at least 1 hour",
            ));
        }
        Ok(Response::new(self.membership.init(request).await?))
    }

    async fn join(&self, _request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        Err(Status::unimplemented(
            "joining an existing swarm over the network is not available in this build yet",
        ))
    }

    async fn leave(
        &self,
        request: Request<LeaveRequest>,
    ) -> Result<Response<LeaveResponse>, Status> {
        self.membership.leave(request.into_inner()).await?;
        Ok(Response::new(LeaveResponse {}))
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(self.membership.info().await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("listen", "", "0.0.0.0").unwrap(),
            "0.0.0.0:2377".parse().unwrap()
        );
        assert_eq!(
            parse_addr("advertise", "10.1.2.3", "").unwrap(),
            "10.1.2.3:2377".parse().unwrap()
        );
        assert_eq!(
            parse_addr("advertise", "10.1.2.3:4000", "").unwrap(),
            "10.1.2.3:4000".parse().unwrap()
        );
        assert_eq!(
            parse_addr("advertise", "[::1]", "").unwrap(),
            "[::1]:2377".parse().unwrap()
        );
        for bad in ["eth0", "10.1.2.3:99999", "host.example:2377", "10.1.2"] {
            let err = parse_addr("advertise", bad, "").unwrap_err().to_string();
            assert!(err.starts_with("invalid advertise address"), "{err}");
        }
    }
}
