//! The first objects of a new cluster: the Cluster (root CA, join tokens, defaults) and the
//! Node of the manager that ran `swarm init`.

use shoal_api::object::Object;
use shoal_api::v1::{
    self, Annotations, CaSettings, Cluster, ClusterSpec, DispatcherSettings, EncryptionSettings,
    IssuanceState, JoinTokens, ManagerStatus, Meta, Node, NodeCertificate, NodeDescription,
    NodeRole, NodeSpec, NodeState, NodeStatus, OrchestrationSettings, RaftSettings, Reachability,
    RootCa, StoreAction, StoreActionKind, Transaction,
};
use shoal_pki::JoinToken;

/// Default lifetime of node certificates (90 days, as swarm).
pub const DEFAULT_CERT_EXPIRY_SECS: u64 = 90 * 24 * 3600;
/// Shortest node certificate lifetime accepted.
pub const MIN_CERT_EXPIRY_SECS: u64 = 3600;

/// The cluster settings a new swarm starts with.
pub fn default_cluster_spec() -> ClusterSpec {
    ClusterSpec {
        annotations: Some(Annotations {
            name: "default".to_owned(),
            labels: Default::default(),
        }),
        orchestration: Some(OrchestrationSettings {
            task_history_retention_limit: 5,
        }),
        raft: Some(RaftSettings {
            snapshot_interval: 10_000,
            log_entries_for_slow_followers: 500,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
        }),
        dispatcher: Some(DispatcherSettings {
            heartbeat_period_ms: 5_000,
        }),
        ca: Some(CaSettings {
            node_cert_expiry_secs: DEFAULT_CERT_EXPIRY_SECS,
        }),
        encryption: Some(EncryptionSettings {
            auto_lock_managers: false,
        }),
    }
}

/// Everything `swarm init` records about the new cluster and its first node.
pub struct Bootstrap<'a> {
    pub cluster_id: &'a str,
    pub node_id: &'a str,
    pub raft_id: u64,
    pub root_ca: &'a shoal_pki::RootCa,
    pub node_cert: &'a shoal_pki::IssuedCert,
    pub spec: ClusterSpec,
    pub description: NodeDescription,
    /// host of the advertise address (what peers reach this node at).
    pub node_addr: String,
    /// host:port of the manager listener peers dial.
    pub manager_addr: String,
    /// The unlock key when the swarm is autolocked from the start (the first manager's files
    /// are already sealed under it).
    pub unlock_key: Option<&'a shoal_pki::UnlockKey>,
}

impl Bootstrap<'_> {
    /// The transaction that creates the cluster and the first node.
    pub fn transaction(&self) -> Transaction {
        let now = crate::now_timestamp();
        let meta = || Meta {
            version: 0,
            created_at: Some(now),
            updated_at: Some(now),
        };
        let digest = self.root_ca.digest();
        let cluster = Cluster {
            id: self.cluster_id.to_owned(),
            meta: Some(meta()),
            spec: Some(self.spec.clone()),
            root_ca: Some(RootCa {
                ca_key: self.root_ca.key_pem().into_bytes(),
                ca_cert: self.root_ca.cert_pem().as_bytes().to_vec(),
                ca_cert_digest: digest.clone(),
                join_tokens: Some(JoinTokens {
                    worker: JoinToken::generate(&digest).to_string(),
                    manager: JoinToken::generate(&digest).to_string(),
                }),
            }),
            default_address_pool: Some(v1::AddressPool {
                subnets: vec!["10.0.0.0/8".to_owned()],
                subnet_size: 24,
            }),
            revoked_certificates: Vec::new(),
            next_raft_id: self.raft_id + 1,
            unlock_key: self
                .unlock_key
                .map(|k| k.as_bytes().to_vec())
                .unwrap_or_default(),
        };
        let node = Node {
            id: self.node_id.to_owned(),
            meta: Some(meta()),
            spec: Some(NodeSpec {
                annotations: Some(Annotations::default()),
                desired_role: NodeRole::Manager as i32,
                availability: v1::NodeAvailability::Active as i32,
            }),
            description: Some(self.description.clone()),
            status: Some(NodeStatus {
                state: NodeState::Ready as i32,
                message: String::new(),
                addr: self.node_addr.clone(),
            }),
            manager_status: Some(ManagerStatus {
                raft_id: self.raft_id,
                addr: self.manager_addr.clone(),
                leader: true,
                reachability: Reachability::Reachable as i32,
            }),
            certificate: Some(NodeCertificate {
                role: NodeRole::Manager as i32,
                csr: Vec::new(),
                state: IssuanceState::Issued as i32,
                certificate: self.node_cert.cert_pem.clone().into_bytes(),
                common_name: self.node_id.to_owned(),
                serial: self.node_cert.serial_hex.clone(),
                not_after: Some(prost_types::Timestamp::from(self.node_cert.not_after)),
            }),
            role: NodeRole::Manager as i32,
        };
        Transaction {
            actions: vec![create(cluster), create(node)],
        }
    }
}

pub(crate) fn create<T: Object>(object: T) -> StoreAction {
    StoreAction {
        kind: StoreActionKind::Create as i32,
        object: Some(object.into_store_object()),
    }
}

pub(crate) fn update<T: Object>(object: T) -> StoreAction {
    StoreAction {
        kind: StoreActionKind::Update as i32,
        object: Some(object.into_store_object()),
    }
}

pub(crate) fn remove<T: Object>(object: T) -> StoreAction {
    StoreAction {
        kind: StoreActionKind::Remove as i32,
        object: Some(object.into_store_object()),
    }
}
