//! The control API against a real one-voter replicated log: validation, optimistic
//! concurrency, redaction and the refusals that protect the cluster.

mod common;

use std::sync::Arc;
use std::time::Duration;

use shoal_api::v1::control_server::Control;
use shoal_api::v1::*;
use shoal_manager::Manager;
use shoal_manager::control::{ControlApi, ManagerSlot};
use tonic::{Code, Request};

struct Fixture {
    _dir: tempfile::TempDir,
    api: ControlApi,
    manager: Arc<Manager>,
}

async fn fixture() -> Fixture {
    let one = common::one_manager(NodeDescription {
        hostname: "host-a".into(),
        ..Default::default()
    })
    .await;
    Fixture {
        _dir: one.dir,
        api: ControlApi::new(one.slot),
        manager: one.manager,
    }
}

fn config_spec(name: &str, data: &[u8]) -> ConfigSpec {
    ConfigSpec {
        annotations: Some(Annotations {
            name: name.into(),
            labels: Default::default(),
        }),
        data: data.to_vec(),
    }
}

async fn create_config(f: &Fixture, name: &str) -> Config {
    f.api
        .create_config(Request::new(CreateConfigRequest {
            spec: Some(config_spec(name, b"data")),
        }))
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap()
}

#[tokio::test]
async fn cluster_is_served_without_the_ca_key() {
    let f = fixture().await;
    let cluster = f
        .api
        .get_cluster(Request::new(GetClusterRequest {}))
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap();
    let root = cluster.root_ca.unwrap();
    assert!(
        root.ca_key.is_empty(),
        "the CA key must never leave the managers"
    );
    assert!(!root.ca_cert.is_empty());
    // The store itself still holds it, so a future leader can sign.
    let stored = f.manager.store().view().cluster().cloned().unwrap();
    assert!(!stored.root_ca.unwrap().ca_key.is_empty());
}

#[tokio::test]
async fn nodes_list_and_resolve_by_hostname_and_prefix() {
    let f = fixture().await;
    let nodes = f
        .api
        .list_nodes(Request::new(ListNodesRequest { filters: None }))
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0].manager_status.as_ref().unwrap().leader);
    for reference in ["node1", "nod", "host-a"] {
        let node = f
            .api
            .get_node(Request::new(GetNodeRequest {
                node: reference.into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .node
            .unwrap();
        assert_eq!(node.id, "node1", "{reference}");
    }
    let missing = f
        .api
        .get_node(Request::new(GetNodeRequest { node: "zz".into() }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(missing.message(), "no such node: zz");
}

#[tokio::test]
async fn config_validation_and_uniqueness() {
    let f = fixture().await;
    let created = create_config(&f, "app.conf").await;
    assert_eq!(created.id.len(), 25);
    assert!(created.meta.unwrap().version > 0);

    let duplicate = f
        .api
        .create_config(Request::new(CreateConfigRequest {
            spec: Some(config_spec("app.conf", b"other")),
        }))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    for (name, data) in [
        ("bad name", b"x".to_vec()),
        ("", b"x".to_vec()),
        ("big", vec![0u8; shoal_api::validate::MAX_CONFIG_SIZE + 1]),
    ] {
        let refused = f
            .api
            .create_config(Request::new(CreateConfigRequest {
                spec: Some(config_spec(name, &data)),
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{name}");
    }
    let listed = f
        .api
        .list_configs(Request::new(ListConfigsRequest { filters: None }))
        .await
        .unwrap()
        .into_inner()
        .configs;
    assert_eq!(listed.len(), 1, "refused creates left nothing behind");
}

#[tokio::test]
async fn stale_versions_are_refused_and_only_one_racer_wins() {
    let f = fixture().await;
    let config = create_config(&f, "raced").await;
    let version = config.meta.unwrap().version;
    let update = |label: &str| {
        let mut spec = config.spec.clone().unwrap();
        spec.annotations
            .as_mut()
            .unwrap()
            .labels
            .insert("who".into(), label.into());
        UpdateConfigRequest {
            config_id: config.id.clone(),
            version,
            spec: Some(spec),
        }
    };
    let (a, b) = tokio::join!(
        f.api.update_config(Request::new(update("a"))),
        f.api.update_config(Request::new(update("b")))
    );
    let outcomes = [a.is_ok(), b.is_ok()];
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "{outcomes:?}");
    let loser = if a.is_ok() { b } else { a }.unwrap_err();
    assert_eq!(loser.code(), Code::Aborted);
    assert!(
        loser.message().contains("out of sequence"),
        "{}",
        loser.message()
    );

    // Data is immutable.
    let mut changed = update("c");
    changed.version = f
        .api
        .get_config(Request::new(GetConfigRequest {
            config: config.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap()
        .meta
        .unwrap()
        .version;
    changed.spec.as_mut().unwrap().data = b"new".to_vec();
    let refused = f
        .api
        .update_config(Request::new(changed))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn the_last_manager_is_protected() {
    let f = fixture().await;
    let node = f
        .manager
        .store()
        .view()
        .get::<Node>("node1")
        .cloned()
        .unwrap();
    let mut spec = node.spec.clone().unwrap();
    spec.desired_role = NodeRole::Worker as i32;
    let refused = f
        .api
        .update_node(Request::new(UpdateNodeRequest {
            node_id: "node1".into(),
            version: node.meta.unwrap().version,
            spec: Some(spec),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("last manager"),
        "{}",
        refused.message()
    );

    let refused = f
        .api
        .remove_node(Request::new(RemoveNodeRequest {
            node_id: "node1".into(),
            force: true,
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);

    let mut spec = node.spec.clone().unwrap();
    spec.annotations
        .get_or_insert_with(Default::default)
        .labels
        .insert("bad key".into(), "x".into());
    let refused = f
        .api
        .update_node(Request::new(UpdateNodeRequest {
            node_id: "node1".into(),
            version: node.meta.unwrap().version,
            spec: Some(spec),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    let mut spec = node.spec.clone().unwrap();
    spec.availability = NodeAvailability::Drain as i32;
    let updated = f
        .api
        .update_node(Request::new(UpdateNodeRequest {
            node_id: "node1".into(),
            version: node.meta.unwrap().version,
            spec: Some(spec),
        }))
        .await
        .unwrap()
        .into_inner()
        .node
        .unwrap();
    assert_eq!(
        updated.spec.unwrap().availability,
        NodeAvailability::Drain as i32
    );
}

#[tokio::test]
async fn token_rotation_and_cluster_settings() {
    let f = fixture().await;
    let cluster = f.manager.store().view().cluster().cloned().unwrap();
    let before = cluster.root_ca.clone().unwrap().join_tokens.unwrap();
    let rotated = f
        .api
        .update_cluster(Request::new(UpdateClusterRequest {
            cluster_id: cluster.id.clone(),
            version: cluster.meta.unwrap().version,
            spec: cluster.spec.clone(),
            rotate_worker_token: true,
            rotate_manager_token: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap();
    let after = rotated.root_ca.unwrap().join_tokens.unwrap();
    assert_ne!(before.worker, after.worker);
    assert_eq!(before.manager, after.manager);
    assert!(shoal_pki::JoinToken::parse(&after.worker).is_ok());

    let mut spec = cluster.spec.clone().unwrap();
    spec.ca.as_mut().unwrap().node_cert_expiry_secs = 600;
    let refused = f
        .api
        .update_cluster(Request::new(UpdateClusterRequest {
            cluster_id: cluster.id.clone(),
            version: rotated.meta.unwrap().version,
            spec: Some(spec),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn the_unlock_key_follows_autolock_and_is_never_in_the_cluster_view() {
    let f = fixture().await;
    let get_key = || async {
        f.api
            .get_unlock_key(Request::new(GetUnlockKeyRequest {}))
            .await
    };
    let refused = get_key().await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("--autolock=true"), "{refused:?}");
    let refused = f
        .api
        .rotate_unlock_key(Request::new(RotateUnlockKeyRequest {}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);

    let set_autolock = |on: bool| {
        let cluster = f.manager.store().view().cluster().cloned().unwrap();
        let mut spec = cluster.spec.clone().unwrap();
        spec.encryption.get_or_insert_default().auto_lock_managers = on;
        f.api.update_cluster(Request::new(UpdateClusterRequest {
            cluster_id: cluster.id.clone(),
            version: cluster.meta.unwrap().version,
            spec: Some(spec),
            ..Default::default()
        }))
    };
    let updated = set_autolock(true)
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap();
    assert!(updated.unlock_key.is_empty(), "UpdateCluster shows the key");
    let key = get_key().await.unwrap().into_inner().unlock_key;
    let parsed = shoal_pki::UnlockKey::parse(&key).unwrap();
    let stored = f.manager.store().view().cluster().cloned().unwrap();
    assert_eq!(stored.unlock_key, parsed.as_bytes().to_vec());
    let shown = f
        .api
        .get_cluster(Request::new(GetClusterRequest {}))
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap();
    assert!(shown.unlock_key.is_empty(), "GetCluster shows the key");

    // Another update leaves the key alone; a rotation replaces it.
    set_autolock(true).await.unwrap();
    assert_eq!(get_key().await.unwrap().into_inner().unlock_key, key);
    let rotated = f
        .api
        .rotate_unlock_key(Request::new(RotateUnlockKeyRequest {}))
        .await
        .unwrap()
        .into_inner()
        .unlock_key;
    assert_ne!(rotated, key);
    assert_eq!(get_key().await.unwrap().into_inner().unlock_key, rotated);

    set_autolock(false).await.unwrap();
    assert!(
        f.manager
            .store()
            .view()
            .cluster()
            .unwrap()
            .unlock_key
            .is_empty()
    );
    assert_eq!(
        get_key().await.unwrap_err().code(),
        Code::FailedPrecondition
    );
}

#[tokio::test]
async fn a_locked_manager_refuses_control_with_one_line() {
    let slot = ManagerSlot::default();
    slot.set_locked();
    assert!(slot.is_locked());
    let api = ControlApi::new(slot.clone());
    let refused = api
        .list_nodes(Request::new(ListNodesRequest { filters: None }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        refused.message(),
        "this manager is locked: run shoal swarm unlock"
    );
    // Filling (or emptying) the slot ends the locked state.
    slot.set(None);
    assert!(!slot.is_locked());
}

#[tokio::test]
async fn no_manager_no_control() {
    let api = ControlApi::new(ManagerSlot::default());
    let refused = api
        .list_nodes(Request::new(ListNodesRequest { filters: None }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("not a swarm manager"));
}

#[tokio::test]
async fn malformed_proposals_change_nothing_but_the_index() {
    let f = fixture().await;
    let before = f.manager.store().view().snapshot();
    let answer = f
        .manager
        .log()
        .propose(vec![0xff, 0xff, 0xff])
        .await
        .unwrap();
    let result = <TransactionResult as prost::Message>::decode(answer.as_slice()).unwrap();
    assert_eq!(result.outcome, transaction_result::Outcome::Invalid as i32);
    let after = f.manager.store().view().snapshot();
    assert_eq!(before.objects, after.objects);
}

#[tokio::test]
async fn raft_settings_reach_the_running_log_and_zeroes_are_refused() {
    let f = fixture().await;
    let follower = tokio::spawn(shoal_manager::compaction::follow_raft_settings(
        f.manager.clone(),
    ));
    let log = f.manager.log().clone();
    let policy = |interval, keep| shoal_raft::CompactionPolicy {
        snapshot_interval: interval,
        keep_after_snapshot: keep,
    };
    let settle = |want: shoal_raft::CompactionPolicy| {
        let log = log.clone();
        async move {
            for _ in 0..500 {
                if log.compaction() == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the log never took {want:?}: {:?}", log.compaction());
        }
    };
    settle(policy(10_000, 500)).await;

    let cluster = f.manager.store().view().cluster().cloned().unwrap();
    let mut spec = cluster.spec.clone().unwrap();
    let raft = spec.raft.as_mut().unwrap();
    raft.snapshot_interval = 40;
    raft.log_entries_for_slow_followers = 7;
    let updated = f
        .api
        .update_cluster(Request::new(UpdateClusterRequest {
            cluster_id: cluster.id.clone(),
            version: cluster.meta.unwrap().version,
            spec: Some(spec.clone()),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap();
    settle(policy(40, 7)).await;

    for (interval, keep, what) in [(0, 7, "snapshot interval"), (40, 0, "slow followers")] {
        let mut bad = spec.clone();
        let raft = bad.raft.as_mut().unwrap();
        raft.snapshot_interval = interval;
        raft.log_entries_for_slow_followers = keep;
        let refused = f
            .api
            .update_cluster(Request::new(UpdateClusterRequest {
                cluster_id: cluster.id.clone(),
                version: updated.meta.unwrap().version,
                spec: Some(bad),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(
            refused.message().contains(what) && refused.message().contains("at least 1"),
            "{}",
            refused.message()
        );
    }
    assert_eq!(log.compaction(), policy(40, 7));
    follower.abort();
}
