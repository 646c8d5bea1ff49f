//! This host's membership: the local `shoal.v1.Swarm` service (init, join, leave, info), the
//! life cycle of the manager it runs (log, cluster listener, liveness loop) and of the
//! heartbeat session every node keeps with the managers. Only the daemon's unix socket serves
//! the Swarm service.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::{ClientConfig, ServerConfig};
use shoal_api::v1::dispatcher_client::DispatcherClient;
use shoal_api::v1::node_ca_client::NodeCaClient;
use shoal_api::v1::raft_membership_client::RaftMembershipClient;
use shoal_api::v1::swarm_server::{Swarm, SwarmServer};
use shoal_api::v1::{
    ClusterSpec, GetRootCaCertificateRequest, HeartbeatRequest, InfoRequest, InfoResponse,
    InitRequest, InitResponse, IssueNodeCertificateRequest, JoinRequest, JoinResponse,
    LeaveRequest, LeaveResponse, LocalNodeState, Node, NodeRole, RaftInfo, RaftJoinRequest,
    RaftLeaveRequest, UnlockRequest, UnlockResponse,
};
use shoal_api::{id, object::Object};
use shoal_manager::bootstrap::{Bootstrap, default_cluster_spec};
use shoal_manager::control::ManagerSlot;
use shoal_manager::state_machine::StoreStateMachine;
use shoal_manager::{Dialer, Manager, ManagerError};
use shoal_pki::{
    IdentitySlot, JoinToken, NodeCertRequest, NodeCertificates, NodeKey, Role, RootCa,
};
use shoal_raft::{GrpcNetwork, RaftConfig, ReplicatedLog};
use shoal_store::Store;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use super::autolock;
use super::cluster;
use super::data_root::{DataRoot, STATE_FORMAT, SwarmState};
use super::host;

mod renewal;
mod role_change;

/// The manager listener's port when the user names none.
pub(crate) const DEFAULT_PORT: u16 = 2377;
/// Bound on each remote call of a join (root fetch, certificate issuance).
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a new manager's raft join (learner catch-up included) and on applying the log.
const RAFT_JOIN_TIMEOUT: Duration = Duration::from_secs(90);
/// Heartbeat period used until a manager tells the node the cluster's.
const FIRST_HEARTBEAT_PERIOD: Duration = Duration::from_secs(1);
/// Bound on a leaving manager's attempt to take itself out of raft.
const LEAVE_RAFT_LIMIT: Duration = Duration::from_secs(15);

/// Settings the daemon passes down to the managers it starts.
#[derive(Clone, Debug)]
pub(crate) struct ManagerOptions {
    pub(crate) group_commit: bool,
}

/// The TLS configurations made from this node's certificates. Both present whatever
/// `identity` holds at each handshake, so a renewal reaches every user of them.
#[derive(Clone)]
struct Tls {
    identity: Arc<IdentitySlot>,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl Tls {
    fn new(certs: &NodeCertificates) -> anyhow::Result<Tls> {
        let identity = IdentitySlot::new(certs)?;
        Ok(Tls {
            client: Arc::new(identity.client_config()?),
            server: Arc::new(identity.server_config()?),
            identity,
        })
    }

    fn dialer(&self) -> Dialer {
        let client = self.client.clone();
        Arc::new(move |addr: &str| cluster::channel(addr, client.clone()))
    }
}

/// This host's part in a swarm while it is in one.
struct Active {
    state: SwarmState,
    manager: Option<Arc<Manager>>,
    listener: Option<cluster::Listener>,
    /// The manager's own loops.
    tasks: Vec<JoinHandle<()>>,
    /// What every node runs, kept across role changes: heartbeats and certificate renewal.
    node_tasks: Vec<JoinHandle<()>>,
}

impl Active {
    /// Stops everything this membership runs, leaving its state on disk.
    async fn stop(mut self) {
        for task in self.tasks.drain(..).chain(self.node_tasks.drain(..)) {
            task.abort();
        }
        // The log first: requests waiting on a commit then fail at once with "shutting down",
        // instead of holding the listener's graceful stop until its deadline (a manager without
        // quorum would otherwise take seconds to stop).
        if let Some(manager) = self.manager.take() {
            manager.log().shutdown().await;
        }
        if let Some(listener) = self.listener.take() {
            listener.stop().await;
        }
    }
}

/// Everything the local Swarm service changes; one lock so that init, join and leave never
/// interleave.
pub(crate) struct Membership {
    /// Handed to the renewal agent, which changes this membership when the node's role does.
    me: Weak<Membership>,
    data_root: DataRoot,
    exec_root: std::path::PathBuf,
    options: ManagerOptions,
    slot: ManagerSlot,
    active: Mutex<Option<Active>>,
}

fn unusable(data_root: &DataRoot) -> String {
    format!(
        "data root {} is unusable; refusing to start (nothing was changed: move it away to start afresh)",
        data_root.path().display()
    )
}

impl Membership {
    /// Loads the data root's swarm state and resumes this host's part: a manager's log and
    /// listener, and every node's heartbeat session.
    pub(crate) async fn start(
        data_root: DataRoot,
        exec_root: std::path::PathBuf,
        options: ManagerOptions,
        slot: ManagerSlot,
    ) -> anyhow::Result<Arc<Membership>> {
        let state = data_root
            .load_state()
            .with_context(|| unusable(&data_root))?;
        let membership = Arc::new_cyclic(|me| Membership {
            me: me.clone(),
            data_root,
            exec_root,
            options,
            slot,
            active: Mutex::new(None),
        });
        if let Some(state) = state {
            // Held while resuming: the renewal agent started inside must find the membership
            // in place, not an empty one it would take for "left the swarm".
            let mut active = membership.active.lock().await;
            *active = Some(
                membership
                    .resume(state)
                    .await
                    .with_context(|| unusable(&membership.data_root))?,
            );
        }
        Ok(membership)
    }

    async fn resume(&self, state: SwarmState) -> anyhow::Result<Active> {
        // Loading checks the key, certificate and root belong together; a damaged set stops
        // the start here rather than at the first peer connection.
        let certs = match self.data_root.vault().load()? {
            autolock::Loaded::Open(certs) => *certs,
            autolock::Loaded::Locked => return Ok(self.start_locked(state)),
        };
        let tls = Tls::new(&certs)?;
        let state = role_change::settle_on_start(&self.data_root, state, &certs.identity()?)?;
        if state.role != "manager" {
            tracing::info!(node_id = %state.node_id, cluster_id = %state.cluster_id, "worker resumed");
            return Ok(self.start_worker(state, &tls));
        }
        let store = Store::new();
        let log = self.open_log(&state, &store, &tls).await?;
        // A lone voter elects itself at once; waiting keeps the first command after a restart
        // from racing the election. With peers, quorum may need this node's listener, so no
        // waiting here.
        if log.status().voters.len() <= 1 {
            wait_for_leader(&log, Duration::from_secs(10)).await?;
        }
        let manager = self.manager(&state, store, log, &tls);
        let listen: SocketAddr = state.listen_addr.parse().with_context(|| {
            format!(
                "invalid listen address {:?} in state.json",
                state.listen_addr
            )
        })?;
        let tcp = match cluster::bind(listen).await {
            Ok(tcp) => Some(tcp),
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "cluster listener not opened; retrying in the background");
                None
            }
        };
        tracing::info!(node_id = %state.node_id, cluster_id = %state.cluster_id, "manager resumed");
        Ok(self.start_manager(state, manager, &tls, tcp, Some(listen)))
    }

    async fn open_log(
        &self,
        state: &SwarmState,
        store: &Store,
        tls: &Tls,
    ) -> anyhow::Result<Arc<ReplicatedLog>> {
        self.data_root
            .vault()
            .ensure_data_key(&self.data_root.raft_dir())?;
        let dialer = tls.dialer();
        let network = GrpcNetwork::new(move |addr| dialer(addr));
        let log = ReplicatedLog::open(
            self.raft_config(state.raft_id),
            Arc::new(StoreStateMachine::new(store.clone())),
            Arc::new(network),
        )
        .await?;
        Ok(Arc::new(log))
    }

    fn manager(
        &self,
        state: &SwarmState,
        store: Store,
        log: Arc<ReplicatedLog>,
        tls: &Tls,
    ) -> Arc<Manager> {
        Arc::new(
            Manager::new(store, log, state.node_id.clone(), state.cluster_id.clone())
                .with_dialer(tls.dialer()),
        )
    }

    /// Puts `manager` in service (see [`Membership::serve_manager`]) and starts the node's
    /// heartbeat and certificate renewal.
    fn start_manager(
        &self,
        state: SwarmState,
        manager: Arc<Manager>,
        tls: &Tls,
        tcp: Option<TcpListener>,
        listen: Option<SocketAddr>,
    ) -> Active {
        let (listener, tasks) = self.serve_manager(manager.clone(), tls, tcp, listen);
        let mut managers = vec![state.advertise_addr.clone()];
        managers.extend(state.managers.iter().cloned());
        let node_tasks = self.start_node_tasks(tls, managers);
        Active {
            state,
            manager: Some(manager),
            listener,
            tasks,
            node_tasks,
        }
    }

    /// The manager's part: the slot (local control API), the cluster listener (now on `tcp`,
    /// or retried in the background on `listen`) and the manager's loops.
    fn serve_manager(
        &self,
        manager: Arc<Manager>,
        tls: &Tls,
        tcp: Option<TcpListener>,
        listen: Option<SocketAddr>,
    ) -> (Option<cluster::Listener>, Vec<JoinHandle<()>>) {
        self.slot.set_worker(false);
        self.slot.set(Some(manager.clone()));
        let mut tasks = vec![
            tokio::spawn(shoal_manager::dispatcher::run_liveness(manager.clone())),
            tokio::spawn(shoal_manager::compaction::follow_raft_settings(
                manager.clone(),
            )),
            tokio::spawn(autolock::follow_unlock_key(
                manager.clone(),
                self.data_root.vault().clone(),
            )),
        ];
        let log = (**manager.log()).clone();
        let listener = match (tcp, listen) {
            (Some(tcp), _) => Some(cluster::serve(
                tcp,
                tls.server.clone(),
                self.slot.clone(),
                log,
            )),
            (None, Some(listen)) => {
                tasks.push(tokio::spawn(retry_listener(
                    listen,
                    tls.server.clone(),
                    self.slot.clone(),
                    log,
                )));
                None
            }
            (None, None) => None,
        };
        (listener, tasks)
    }

    fn start_worker(&self, state: SwarmState, tls: &Tls) -> Active {
        self.slot.set(None);
        self.slot.set_worker(true);
        let node_tasks = self.start_node_tasks(tls, state.managers.clone());
        Active {
            state,
            manager: None,
            listener: None,
            tasks: Vec::new(),
            node_tasks,
        }
    }

    /// A manager whose key file is sealed: nothing runs (it has no usable TLS key, and no raft
    /// key) until `swarm unlock`.
    fn start_locked(&self, state: SwarmState) -> Active {
        tracing::warn!(node_id = %state.node_id, "this manager is locked: run shoal swarm unlock");
        self.slot.set_worker(false);
        self.slot.set_locked();
        Active {
            state,
            manager: None,
            listener: None,
            tasks: Vec::new(),
            node_tasks: Vec::new(),
        }
    }

    /// `swarm unlock`: opens the locked manager's keys with the unlock key and resumes it.
    async fn unlock(&self, request: UnlockRequest) -> Result<(), ManagerError> {
        let mut active = self.active.lock().await;
        let state = match active.as_ref() {
            Some(current) if self.slot.is_locked() => current.state.clone(),
            Some(_) => {
                return Err(ManagerError::FailedPrecondition(
                    "this node is not locked".to_owned(),
                ));
            }
            None => {
                return Err(ManagerError::FailedPrecondition(
                    "this node is not part of a swarm".to_owned(),
                ));
            }
        };
        autolock::unlock(self.data_root.vault(), &request.unlock_key)?;
        let resumed = self.resume(state).await.map_err(|e| {
            ManagerError::Internal(format!("unlocked, but the manager did not start: {e:#}"))
        })?;
        *active = Some(resumed);
        tracing::info!("manager unlocked");
        Ok(())
    }

    /// The heartbeat session with `managers` and the renewal agent that follows it.
    fn start_node_tasks(&self, tls: &Tls, managers: Vec<String>) -> Vec<JoinHandle<()>> {
        let session = renewal::Session::new(managers.clone());
        let agent = renewal::DaemonNode {
            membership: self.me.clone(),
            tls: tls.clone(),
            session: session.clone(),
        };
        let roles = session.watch_role();
        vec![
            tokio::spawn(heartbeat_loop(tls.client.clone(), managers, session)),
            tokio::spawn(renewal::run(agent, renewal::SystemClock, roles)),
        ]
    }

    fn raft_config(&self, raft_id: u64) -> RaftConfig {
        let mut config = RaftConfig::new(raft_id, self.data_root.raft_dir());
        config.group_commit = self.options.group_commit;
        config.cipher = Some(self.data_root.vault().cipher());
        config
    }

    async fn init(&self, request: InitRequest) -> anyhow::Result<InitResponse, ManagerError> {
        let mut active = self.active.lock().await;
        if self.slot.is_locked() {
            return Err(ManagerError::FailedPrecondition(
                "this manager is locked: run shoal swarm unlock".to_owned(),
            ));
        }
        if request.force_new_cluster && active.is_some() {
            return self.force_new_cluster(&mut active, request).await;
        }
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
        // Bound before anything is written: a taken port fails init with nothing to undo.
        let tcp = cluster::bind(listen)
            .await
            .map_err(|e| ManagerError::FailedPrecondition(format!("{e:#}")))?;
        let listen = tcp.local_addr().unwrap_or(listen);
        let state = SwarmState {
            format: STATE_FORMAT,
            complete: false,
            node_id: id::new_id(),
            cluster_id: id::new_id(),
            raft_id: 1,
            role: "manager".to_owned(),
            advertise_addr: advertise.to_string(),
            listen_addr: listen.to_string(),
            managers: Vec::new(),
        };
        match self.create_swarm(&state, spec).await {
            Ok((manager, tls)) => {
                let mut done = state.clone();
                done.complete = true;
                if let Err(error) = self.data_root.save_state(&done) {
                    manager.log().shutdown().await;
                    let _ = self.data_root.remove_swarm();
                    return Err(ManagerError::Internal(format!("{error:#}")));
                }
                tracing::info!(node_id = %done.node_id, cluster_id = %done.cluster_id, %advertise, %listen, "swarm initialized");
                *active = Some(self.start_manager(done.clone(), manager, &tls, Some(tcp), None));
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

    /// `swarm init --force-new-cluster` on a manager that lost its quorum for good: raft is
    /// rewritten offline into a cluster of this manager alone, keeping every committed change,
    /// then the store stops counting the other managers. On failure the node resumes as it was.
    async fn force_new_cluster(
        &self,
        active: &mut Option<Active>,
        request: InitRequest,
    ) -> Result<InitResponse, ManagerError> {
        let current = active.as_ref().expect("checked by the caller");
        if current.state.role != "manager" {
            return Err(ManagerError::FailedPrecondition(
                "this node is a worker: run --force-new-cluster on a surviving manager".to_owned(),
            ));
        }
        let mut state = current.state.clone();
        if !request.listen_addr.is_empty() {
            state.listen_addr = parse_addr("listen", &request.listen_addr, "0.0.0.0")?.to_string();
        }
        if !request.advertise_addr.is_empty() {
            let addr = parse_addr("advertise", &request.advertise_addr, "")?;
            if addr.ip().is_unspecified() {
                return Err(ManagerError::InvalidArgument(format!(
                    "advertise address {addr} is unspecified: give the address other hosts reach this one at"
                )));
            }
            state.advertise_addr = addr.to_string();
        }
        let previous = active.take().expect("checked by the caller");
        let old_state = previous.state.clone();
        self.slot.set(None);
        previous.stop().await;

        let forced = shoal_raft::force_new_cluster(
            &self.raft_config(state.raft_id),
            state.advertise_addr.clone(),
            Arc::new(StoreStateMachine::new(Store::new())),
        )
        .await;
        let forced = match forced {
            Ok(forced) => forced,
            Err(error) => {
                tracing::error!(%error, "--force-new-cluster failed; resuming as before");
                *active = self.resume(old_state).await.ok();
                return Err(ManagerError::FailedPrecondition(format!(
                    "cannot force a new cluster: {error}"
                )));
            }
        };
        // From here raft holds the new membership: the node must come up as that cluster.
        let saved = self.data_root.save_state(&state).map_err(internal);
        let resumed = match saved {
            Ok(()) => self.resume(state.clone()).await.map_err(internal),
            Err(error) => Err(error),
        };
        let resumed = match resumed {
            Ok(resumed) => resumed,
            Err(error) => {
                tracing::error!(%error, "the forced cluster did not start");
                return Err(error);
            }
        };
        let manager = resumed.manager.clone().expect("a resumed manager");
        *active = Some(resumed);
        let view = manager.current_view().await?;
        let transaction = shoal_manager::recovery::forced_cluster_transaction(
            &view,
            &state.node_id,
            &state.advertise_addr,
        );
        if !transaction.actions.is_empty() {
            manager.commit(transaction).await?;
        }
        tracing::warn!(
            node_id = %state.node_id,
            last_index = forced.last_index,
            dropped_raft_members = ?forced.dropped_members,
            discarded_uncommitted_entries = forced.discarded_entries,
            "forced a new one-manager cluster from this node's state"
        );
        Ok(InitResponse {
            node_id: state.node_id,
            cluster_id: state.cluster_id,
        })
    }

    /// Makes the root CA, this node's certificate, the one-voter log and the first objects.
    async fn create_swarm(
        &self,
        state: &SwarmState,
        spec: ClusterSpec,
    ) -> anyhow::Result<(Arc<Manager>, Tls)> {
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
        let certs = NodeCertificates {
            key,
            cert_pem: issued.cert_pem.clone(),
            root_ca_pem: root.cert_pem().to_owned(),
        };
        // Autolocked from the start: sealed before anything else is written.
        let unlock_key = shoal_manager::autolock::autolock_enabled(Some(&spec))
            .then(shoal_pki::UnlockKey::generate)
            .transpose()?;
        self.data_root
            .vault()
            .save_new(&certs, unlock_key.clone(), 0)?;
        let tls = Tls::new(&certs)?;

        let store = Store::new();
        let log = self.open_log(state, &store, &tls).await?;
        let result = async {
            log.initialize_single(state.advertise_addr.clone()).await?;
            wait_for_leader(&log, Duration::from_secs(10)).await?;
            let manager = self.manager(state, store, log.clone(), &tls);
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
                unlock_key: unlock_key.as_ref(),
            };
            manager.commit(bootstrap.transaction()).await?;
            anyhow::Ok(manager)
        }
        .await;
        match result {
            Ok(manager) => Ok((manager, tls)),
            Err(error) => {
                log.shutdown().await;
                Err(error)
            }
        }
    }

    async fn join(&self, request: JoinRequest) -> Result<JoinResponse, ManagerError> {
        let mut active = self.active.lock().await;
        if active.is_some() {
            return Err(ManagerError::FailedPrecondition(
                "this node is already part of a swarm: use \"shoal swarm leave\" to leave it before joining another".to_owned(),
            ));
        }
        let remote = request
            .remote_addrs
            .first()
            .filter(|r| !r.is_empty())
            .cloned()
            .ok_or_else(|| {
                ManagerError::InvalidArgument("no manager address to join through".to_owned())
            })?;
        let token = JoinToken::parse(&request.join_token)
            .map_err(|e| ManagerError::InvalidArgument(e.to_string()))?;
        let listen = parse_addr("listen", &request.listen_addr, "0.0.0.0")?;
        let advertise = if request.advertise_addr.is_empty() {
            None
        } else {
            let addr = parse_addr("advertise", &request.advertise_addr, "")?;
            if addr.ip().is_unspecified() {
                return Err(ManagerError::InvalidArgument(format!(
                    "advertise address {addr} is unspecified: give the address other hosts reach this one at"
                )));
            }
            Some(addr)
        };

        // 1. The root CA, over a connection that proves nothing, checked against the token.
        let root_pem = fetch_root_ca(&remote).await?;
        token.pins(root_pem.as_bytes()).map_err(|_| {
            ManagerError::InvalidArgument(format!(
                "the root CA does not match the join token: the manager at {remote} is not the swarm this token was made for"
            ))
        })?;

        // 2. A fresh key; the CA decides the rest.
        let key = NodeKey::generate().map_err(internal)?;
        let csr = key.csr_pem().map_err(internal)?;
        let description = host::description();
        let issued = issue_certificate(
            &remote,
            &root_pem,
            IssueNodeCertificateRequest {
                token: request.join_token.clone(),
                csr,
                advertise_addr: advertise.map(|a| a.to_string()).unwrap_or_default(),
                listen_addr: listen.to_string(),
                hostname: description.hostname.clone(),
                description: Some(description),
            },
        )
        .await?;
        let certs = NodeCertificates {
            key,
            cert_pem: issued.certificate.clone(),
            root_ca_pem: root_pem,
        };
        certs.validate().map_err(|e| {
            ManagerError::Internal(format!("the manager returned an unusable certificate: {e}"))
        })?;
        let tls = Tls::new(&certs).map_err(internal)?;
        let role = if issued.role == NodeRole::Manager as i32 {
            "manager"
        } else {
            "worker"
        };
        // A manager's listener is bound before anything is written, as at init.
        let tcp = if role == "manager" {
            Some(
                cluster::bind(listen)
                    .await
                    .map_err(|e| ManagerError::FailedPrecondition(format!("{e:#}")))?,
            )
        } else {
            None
        };
        let listen = tcp
            .as_ref()
            .and_then(|t| t.local_addr().ok())
            .unwrap_or(listen);
        let state = SwarmState {
            format: STATE_FORMAT,
            complete: false,
            node_id: issued.node_id.clone(),
            cluster_id: issued.cluster_id.clone(),
            raft_id: issued.raft_id,
            role: role.to_owned(),
            // A worker keeps the address it asked for: a promotion offers it to the CA again.
            advertise_addr: if issued.advertise_addr.is_empty() {
                advertise.map(|a| a.to_string()).unwrap_or_default()
            } else {
                issued.advertise_addr.clone()
            },
            listen_addr: listen.to_string(),
            managers: vec![remote.clone()],
        };
        let started = async {
            self.data_root.save_state(&state)?;
            // A manager joining an autolocked swarm is sealed from its first write.
            let unlock = if role == "manager" && !issued.unlock_key.is_empty() {
                Some(shoal_pki::UnlockKey::from_bytes(&issued.unlock_key)?)
            } else {
                None
            };
            self.data_root
                .vault()
                .save_new(&certs, unlock, issued.unlock_key_version)?;
            anyhow::Ok(())
        }
        .await;
        let joined = match started {
            Err(error) => Err(ManagerError::Internal(format!("{error:#}"))),
            Ok(()) if role == "manager" => self.join_raft(&state, &tls, tcp, &remote).await,
            Ok(()) => Ok(self.start_worker(state.clone(), &tls)),
        };
        let done = match joined {
            Ok(mut joined) => {
                joined.state.complete = true;
                match self.data_root.save_state(&joined.state) {
                    Ok(()) => Ok(joined),
                    Err(error) => {
                        joined.stop().await;
                        Err(ManagerError::Internal(format!("{error:#}")))
                    }
                }
            }
            Err(error) => Err(error),
        };
        match done {
            Ok(joined) => {
                tracing::info!(node_id = %state.node_id, %role, %remote, "joined the swarm");
                *active = Some(joined);
                Ok(JoinResponse {
                    node_id: state.node_id,
                    cluster_id: state.cluster_id,
                })
            }
            Err(error) => {
                tracing::error!(%error, "swarm join failed");
                self.slot.set(None);
                self.slot.set_worker(false);
                let _ = self.data_root.remove_swarm();
                Err(error)
            }
        }
    }

    /// A new manager: an empty log served on the listener, the leader adds it as learner and
    /// then voter, and it is ready once it has applied its own Node object.
    async fn join_raft(
        &self,
        state: &SwarmState,
        tls: &Tls,
        tcp: Option<TcpListener>,
        remote: &str,
    ) -> Result<Active, ManagerError> {
        let store = Store::new();
        let log = self.open_log(state, &store, tls).await.map_err(internal)?;
        let manager = self.manager(state, store.clone(), log.clone(), tls);
        let active = self.start_manager(state.clone(), manager, tls, tcp, None);
        let result = async {
            let channel =
                cluster::channel(remote, tls.client.clone()).map_err(ManagerError::Unavailable)?;
            let mut client = RaftMembershipClient::new(channel);
            let call = client.join(RaftJoinRequest {});
            tokio::time::timeout(RAFT_JOIN_TIMEOUT, call)
                .await
                .map_err(|_| {
                    ManagerError::Unavailable(format!(
                        "the swarm did not add this manager to raft within {RAFT_JOIN_TIMEOUT:?}"
                    ))
                })?
                .map_err(|status| remote_error(remote, status))?;
            let deadline = tokio::time::Instant::now() + RAFT_JOIN_TIMEOUT;
            while store.view().get::<Node>(&state.node_id).is_none() {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ManagerError::Unavailable(
                        "this manager did not catch up with the swarm's log in time".to_owned(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(active),
            Err(error) => {
                active.stop().await;
                Err(error)
            }
        }
    }

    async fn leave(&self, request: LeaveRequest) -> Result<(), ManagerError> {
        let mut active = self.active.lock().await;
        let Some(current) = active.as_ref() else {
            return Err(ManagerError::FailedPrecondition(
                "this node is not part of a swarm".to_owned(),
            ));
        };
        if current.state.role == "manager" && !request.force {
            let voters = current
                .manager
                .as_ref()
                .map_or(1, |m| m.log().status().voters.len());
            let message = if voters <= 1 {
                "this node is a manager: leaving removes it from the raft cluster, and leaving the last manager erases the swarm's whole state; use --force to leave anyway".to_owned()
            } else {
                format!(
                    "this node is a manager: leaving removes one of the {voters} managers, and without a quorum of managers the swarm is inaccessible; demote it first (shoal node demote), or use --force to leave anyway"
                )
            };
            return Err(ManagerError::FailedPrecondition(message));
        }
        if let Some(manager) = current.manager.as_ref()
            && manager.log().status().voters.len() > 1
        {
            // Forced or not, a manager that can still reach a quorum takes itself out of raft,
            // so the others do not go on counting a vote that is gone.
            match tokio::time::timeout(LEAVE_RAFT_LIMIT, self.leave_raft(&current.state, manager))
                .await
            {
                Ok(Ok(())) => tracing::info!("this manager left raft"),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "leaving without leaving raft: the other managers still count this one; remove it there with \"shoal node rm --force\"")
                }
                Err(_) => tracing::warn!(
                    "leaving without leaving raft (no answer in {LEAVE_RAFT_LIMIT:?}): the other managers still count this one; remove it there with \"shoal node rm --force\""
                ),
            }
        }
        let current = active.take().expect("checked above");
        let node_id = current.state.node_id.clone();
        self.slot.set(None);
        self.slot.set_worker(false);
        current.stop().await;
        self.data_root
            .remove_swarm()
            .map_err(|e| ManagerError::Internal(format!("{e:#}")))?;
        tracing::info!(%node_id, "left the swarm");
        Ok(())
    }

    /// Hands leadership over if this manager leads, then asks the leader (through this node's
    /// own listener, which forwards) to remove this manager from raft.
    async fn leave_raft(&self, state: &SwarmState, manager: &Manager) -> Result<(), String> {
        let log = manager.log();
        let me = log.id();
        if log.is_leader() {
            let status = log.status();
            let successor = status
                .voters
                .iter()
                .copied()
                .find(|v| *v != me && status.voter_reachable.get(v) == Some(&true))
                .ok_or("no other manager is reachable to take over leadership")?;
            log.transfer_leadership(successor)
                .await
                .map_err(|e| e.to_string())?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while log.status().leader_id.is_none_or(|l| l == me) {
                if tokio::time::Instant::now() >= deadline {
                    return Err("leadership was not handed over in time".to_owned());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let certs = self
            .data_root
            .vault()
            .certificates()
            .map_err(|e| format!("{e:#}"))?;
        let client = Arc::new(shoal_pki::client_config(&certs).map_err(|e| e.to_string())?);
        let channel = cluster::channel(&state.advertise_addr, client)?;
        RaftMembershipClient::new(channel)
            .leave(RaftLeaveRequest {})
            .await
            .map_err(|status| status.message().to_owned())?;
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
        if self.slot.is_locked() {
            info.state = LocalNodeState::Locked as i32;
            return info;
        }
        let Some(manager) = current.manager.as_ref() else {
            info.remote_managers = current.state.managers.clone();
            return info;
        };
        let status = manager.log().status();
        info.raft = Some(RaftInfo {
            raft_id: status.id,
            term: status.term,
            last_log_index: status.last_log_index.unwrap_or(0),
            last_applied: status.last_applied.unwrap_or(0),
            leader_raft_id: status.leader_id.unwrap_or(0),
            voters: status.voters.len() as u32,
            snapshot_index: status.snapshot_index.unwrap_or(0),
            first_log_index: status.purged_index.map_or(0, |p| p + 1),
            snapshot_bytes: status.last_snapshot.map_or(0, |s| s.bytes),
            snapshot_build_ms: status
                .last_snapshot
                .and_then(|s| s.build)
                .map_or(0, |b| b.as_millis() as u64),
            snapshot_interval: manager.log().compaction().snapshot_interval,
            log_entries_for_slow_followers: manager.log().compaction().keep_after_snapshot,
        });
        let view = manager.store().view();
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
            current.stop().await;
        }
    }
}

fn internal(error: impl std::fmt::Display) -> ManagerError {
    ManagerError::Internal(format!("{error:#}"))
}

/// A refusal from the remote manager, or a failure to reach it, as one line.
fn remote_error(remote: &str, status: Status) -> ManagerError {
    match status.code() {
        tonic::Code::InvalidArgument => ManagerError::InvalidArgument(status.message().to_owned()),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            ManagerError::FailedPrecondition(format!(
                "the manager at {remote} refused this node: {}",
                status.message()
            ))
        }
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded => {
            ManagerError::Unavailable(format!(
                "could not reach a manager at {remote}: {}",
                transport_reason(&status)
            ))
        }
        _ => ManagerError::FailedPrecondition(format!(
            "the manager at {remote} refused the join: {}",
            status.message()
        )),
    }
}

/// tonic's transport errors nest the cause; the innermost one is what a user can act on.
fn transport_reason(status: &Status) -> String {
    use std::error::Error;
    let mut source: Option<&(dyn Error + 'static)> = status.source();
    let mut last = None;
    while let Some(error) = source {
        last = Some(error.to_string());
        source = error.source();
    }
    last.filter(|l| !l.is_empty())
        .unwrap_or_else(|| status.message().to_owned())
        .replace('\n', " ")
}

/// Fetches the root CA over TLS that verifies nothing; the caller pins it before use.
async fn fetch_root_ca(remote: &str) -> Result<String, ManagerError> {
    let config = shoal_pki::insecure_bootstrap_client_config().map_err(internal)?;
    let channel =
        cluster::channel(remote, Arc::new(config)).map_err(ManagerError::InvalidArgument)?;
    let mut client = NodeCaClient::new(channel);
    let call = client.get_root_ca_certificate(GetRootCaCertificateRequest {});
    let answer = tokio::time::timeout(JOIN_CALL_TIMEOUT, call)
        .await
        .map_err(|_| {
            ManagerError::Unavailable(format!(
                "could not reach a manager at {remote}: no answer within {JOIN_CALL_TIMEOUT:?}"
            ))
        })?
        .map_err(|status| remote_error(remote, status))?;
    Ok(answer.into_inner().certificate)
}

/// Asks the CA for a certificate, trusting only the pinned root and presenting none.
async fn issue_certificate(
    remote: &str,
    root_pem: &str,
    request: IssueNodeCertificateRequest,
) -> Result<shoal_api::v1::IssueNodeCertificateResponse, ManagerError> {
    let config = shoal_pki::anonymous_client_config(root_pem).map_err(internal)?;
    let channel =
        cluster::channel(remote, Arc::new(config)).map_err(ManagerError::InvalidArgument)?;
    let mut client = NodeCaClient::new(channel);
    let call = client.issue_node_certificate(request);
    let answer = tokio::time::timeout(JOIN_CALL_TIMEOUT, call)
        .await
        .map_err(|_| {
            ManagerError::Unavailable(format!(
                "could not reach a manager at {remote}: no answer within {JOIN_CALL_TIMEOUT:?}"
            ))
        })?
        .map_err(|status| remote_error(remote, status))?;
    Ok(answer.into_inner())
}

/// Keeps trying to open the cluster listener after a restart found its port taken.
async fn retry_listener(
    listen: SocketAddr,
    tls: Arc<ServerConfig>,
    slot: ManagerSlot,
    log: ReplicatedLog,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(tcp) = cluster::bind(listen).await {
            tracing::info!(%listen, "cluster listener opened after a retry");
            let listener = cluster::serve(tcp, tls.clone(), slot.clone(), log.clone());
            // Parked: aborting this task (leave, shutdown) drops the guard, which stops it.
            let _guard = ListenerGuard(Some(listener));
            std::future::pending::<()>().await;
        }
    }
}

/// Stops a listener when the task holding it is aborted.
struct ListenerGuard(Option<cluster::Listener>);

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        if let Some(listener) = self.0.take() {
            listener.abort();
        }
    }
}

/// The node's session with the managers: a heartbeat every period, moving to the next known
/// manager when one does not answer.
async fn heartbeat_loop(
    client: Arc<ClientConfig>,
    mut managers: Vec<String>,
    session: Arc<renewal::Session>,
) {
    let mut channels: HashMap<String, tonic::transport::Channel> = HashMap::new();
    let mut next = 0usize;
    let mut period = FIRST_HEARTBEAT_PERIOD;
    loop {
        if managers.is_empty() {
            tokio::time::sleep(period).await;
            continue;
        }
        let addr = managers[next % managers.len()].clone();
        let channel = match channels.get(&addr) {
            Some(channel) => Some(channel.clone()),
            None => cluster::channel(&addr, client.clone()).ok().inspect(|c| {
                channels.insert(addr.clone(), c.clone());
            }),
        };
        let answer = match channel {
            Some(channel) => {
                let mut client = DispatcherClient::new(channel);
                let call = client.heartbeat(HeartbeatRequest {});
                tokio::time::timeout(Duration::from_secs(5), call).await
            }
            None => Ok(Err(Status::unavailable("bad address"))),
        };
        match answer {
            Ok(Ok(answer)) => {
                let answer = answer.into_inner();
                period = Duration::from_millis(answer.period_ms.clamp(100, 60_000));
                if !answer.managers.is_empty() {
                    // The manager that answered stays first in line.
                    let mut known = vec![addr.clone()];
                    known.extend(answer.managers.into_iter().filter(|m| *m != addr));
                    managers = known;
                    next = 0;
                }
                session.heard(answer.role, &managers);
            }
            Ok(Err(status)) => {
                tracing::debug!(manager = %addr, error = %status.message(), "heartbeat failed");
                channels.remove(&addr);
                next += 1;
                tokio::time::sleep(FIRST_HEARTBEAT_PERIOD).await;
                continue;
            }
            Err(_) => {
                tracing::debug!(manager = %addr, "heartbeat timed out");
                channels.remove(&addr);
                next += 1;
                continue;
            }
        }
        tokio::time::sleep(period).await;
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
    if let (Some(given), Some(raft)) = (given.raft, spec.raft.as_mut()) {
        if given.snapshot_interval != 0 {
            raft.snapshot_interval = given.snapshot_interval;
        }
        if given.log_entries_for_slow_followers != 0 {
            raft.log_entries_for_slow_followers = given.log_entries_for_slow_followers;
        }
    }
    if let Some(dispatcher) = given.dispatcher
        && dispatcher.heartbeat_period_ms != 0
    {
        spec.dispatcher = Some(dispatcher);
    }
    if let Some(encryption) = given.encryption {
        spec.encryption = Some(encryption);
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

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        Ok(Response::new(
            self.membership.join(request.into_inner()).await?,
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

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        self.membership.unlock(request.into_inner()).await?;
        Ok(Response::new(UnlockResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_raft_settings_override_only_what_was_given() {
        let mut spec = default_cluster_spec();
        let given = ClusterSpec {
            raft: Some(shoal_api::v1::RaftSettings {
                snapshot_interval: 25,
                ..Default::default()
            }),
            ..Default::default()
        };
        merge_spec(&mut spec, given);
        let raft = spec.raft.unwrap();
        assert_eq!(raft.snapshot_interval, 25);
        assert_eq!(raft.log_entries_for_slow_followers, 500);
        assert_eq!(raft.heartbeat_interval_ms, 100);
    }

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
