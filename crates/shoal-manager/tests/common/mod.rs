//! The fixture the manager's integration tests share: one manager on a real one-voter log,
//! bootstrapped as `swarm init` does (node `node1` of cluster `cluster1`).
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use shoal_api::v1::NodeDescription;
use shoal_manager::Manager;
use shoal_manager::bootstrap::{Bootstrap, default_cluster_spec};
use shoal_manager::control::ManagerSlot;
use shoal_manager::state_machine::StoreStateMachine;
use shoal_pki::{NodeCertRequest, NodeKey, Role, RootCa};
use shoal_raft::{LocalNetwork, RaftConfig, ReplicatedLog};
use shoal_store::Store;

pub struct OneManager {
    /// Holds the raft directory; dropped with the fixture.
    pub dir: tempfile::TempDir,
    pub manager: Arc<Manager>,
    /// Holds `manager`, as the daemon's slot does.
    pub slot: ManagerSlot,
}

/// A bootstrapped one-manager swarm whose own node is described by `description`.
pub async fn one_manager(description: NodeDescription) -> OneManager {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new();
    let network = LocalNetwork::new();
    let log = ReplicatedLog::open(
        RaftConfig::new(1, dir.path().join("raft")),
        Arc::new(StoreStateMachine::new(store.clone())),
        network.for_node(1),
    )
    .await
    .unwrap();
    network.register(&log);
    log.initialize_single("127.0.0.1:2377".into())
        .await
        .unwrap();
    log.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let manager = Arc::new(Manager::new(
        store,
        Arc::new(log),
        "node1".into(),
        "cluster1".into(),
    ));
    let root = RootCa::generate().unwrap();
    let key = NodeKey::generate().unwrap();
    let issued = root
        .sign_node(
            &key.csr_pem().unwrap(),
            &NodeCertRequest {
                node_id: "node1".into(),
                role: Role::Manager,
                cluster_id: "cluster1".into(),
                validity: Duration::from_secs(7200),
            },
        )
        .unwrap();
    let bootstrap = Bootstrap {
        cluster_id: "cluster1",
        node_id: "node1",
        raft_id: 1,
        root_ca: &root,
        node_cert: &issued,
        spec: default_cluster_spec(),
        description,
        node_addr: "127.0.0.1".into(),
        manager_addr: "127.0.0.1:2377".into(),
        unlock_key: None,
    };
    manager.commit(bootstrap.transaction()).await.unwrap();
    let slot = ManagerSlot::default();
    slot.set(Some(manager.clone()));
    OneManager { dir, manager, slot }
}
