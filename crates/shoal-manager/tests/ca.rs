//! The CA service against a real one-voter replicated log: renewals take role and lifetime from
//! the store, a promotion gets its raft id once, and forwarded or revoked callers get nothing.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_api::v1::control_server::Control;
use shoal_api::v1::node_ca_server::NodeCa;
use shoal_api::v1::*;
use shoal_manager::Manager;
use shoal_manager::authz::Caller;
use shoal_manager::ca::NodeCaService;
use shoal_manager::control::ControlApi;
use shoal_manager::forward;
use shoal_pki::{NodeIdentity, NodeKey, Role};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

struct Fixture {
    _dir: tempfile::TempDir,
    ca: NodeCaService,
    control: ControlApi,
    manager: Arc<Manager>,
}

async fn fixture() -> Fixture {
    let one = common::one_manager(NodeDescription::default()).await;
    Fixture {
        _dir: one.dir,
        ca: NodeCaService::new(one.slot.clone()),
        control: ControlApi::new(one.slot),
        manager: one.manager,
    }
}

fn caller(node_id: &str, role: Role) -> Caller {
    Caller {
        addr: "10.0.0.7:40000".parse().unwrap(),
        identity: Some(NodeIdentity {
            node_id: node_id.into(),
            role,
            cluster_id: "cluster1".into(),
            serial_hex: "01".into(),
            not_before: SystemTime::now(),
            not_after: SystemTime::now(),
        }),
    }
}

fn renewal(advertise: &str) -> RenewNodeCertificateRequest {
    RenewNodeCertificateRequest {
        csr: NodeKey::generate().unwrap().csr_pem().unwrap(),
        advertise_addr: advertise.into(),
        listen_addr: "0.0.0.0:2377".into(),
    }
}

/// A renewal as the listener hands it over once `from` passed the TLS and authorization checks.
async fn renew_as(
    f: &Fixture,
    from: Caller,
    advertise: &str,
) -> Result<RenewNodeCertificateResponse, tonic::Status> {
    let mut request = Request::new(renewal(advertise));
    request.extensions_mut().insert(from);
    f.ca.renew_node_certificate(request)
        .await
        .map(|r| r.into_inner())
}

fn node(f: &Fixture, id: &str) -> Node {
    f.manager.store().view().get::<Node>(id).cloned().unwrap()
}

/// Joins a worker with the worker token, as a joining host would.
async fn join_worker(f: &Fixture) -> String {
    let token = f
        .manager
        .store()
        .view()
        .cluster()
        .unwrap()
        .root_ca
        .clone()
        .unwrap()
        .join_tokens
        .unwrap()
        .worker;
    let mut request = Request::new(IssueNodeCertificateRequest {
        token,
        csr: NodeKey::generate().unwrap().csr_pem().unwrap(),
        ..Default::default()
    });
    request.extensions_mut().insert(Caller {
        addr: "10.0.0.7:40000".parse().unwrap(),
        identity: None,
    });
    f.ca.issue_node_certificate(request)
        .await
        .unwrap()
        .into_inner()
        .node_id
}

async fn set_role(f: &Fixture, id: &str, role: NodeRole) {
    let current = node(f, id);
    let mut spec = current.spec.clone().unwrap();
    spec.desired_role = role as i32;
    f.control
        .update_node(Request::new(UpdateNodeRequest {
            node_id: id.into(),
            version: current.meta.unwrap().version,
            spec: Some(spec),
        }))
        .await
        .unwrap();
}

#[tokio::test]
async fn renewals_follow_the_store_and_a_promotion_gets_one_raft_id() {
    let f = fixture().await;
    let worker = join_worker(&f).await;
    // The store's lifetime, not the default: two hours.
    let cluster = f.manager.store().view().cluster().cloned().unwrap();
    let mut spec = cluster.spec.clone().unwrap();
    spec.ca.get_or_insert_default().node_cert_expiry_secs = 7200;
    f.control
        .update_cluster(Request::new(UpdateClusterRequest {
            cluster_id: cluster.id.clone(),
            version: cluster.meta.unwrap().version,
            spec: Some(spec),
            ..Default::default()
        }))
        .await
        .unwrap();

    // Whatever the caller's certificate says, the store says worker.
    let answer = renew_as(&f, caller(&worker, Role::Manager), "10.0.0.9:2377")
        .await
        .unwrap();
    let issued = NodeIdentity::from_pem(&answer.certificate).unwrap();
    assert_eq!(
        (issued.node_id.as_str(), issued.role),
        (worker.as_str(), Role::Worker)
    );
    assert_eq!((answer.raft_id, answer.advertise_addr.as_str()), (0, ""));
    let life = issued.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(
        life > Duration::from_secs(7000) && life <= Duration::from_secs(7200),
        "{life:?}"
    );
    let recorded = node(&f, &worker).certificate.unwrap();
    assert_eq!(recorded.serial, issued.serial_hex);
    assert!(node(&f, &worker).manager_status.is_none());

    // Promoted: the next renewal makes it a manager with a new raft id and the address asked.
    set_role(&f, &worker, NodeRole::Manager).await;
    assert_eq!(node(&f, &worker).role, NodeRole::Manager as i32);
    let next_raft_id = f.manager.store().view().cluster().unwrap().next_raft_id;
    let answer = renew_as(&f, caller(&worker, Role::Worker), "10.0.0.9:2377")
        .await
        .unwrap();
    assert_eq!(
        NodeIdentity::from_pem(&answer.certificate).unwrap().role,
        Role::Manager
    );
    let raft_id = answer.raft_id;
    assert!(raft_id >= next_raft_id.max(2), "{raft_id}");
    assert_eq!(answer.advertise_addr, "10.0.0.9:2377");
    let status = node(&f, &worker).manager_status.unwrap();
    assert_eq!(
        (status.raft_id, status.addr.as_str()),
        (raft_id, "10.0.0.9:2377")
    );
    assert_eq!(
        f.manager.store().view().cluster().unwrap().next_raft_id,
        raft_id + 1
    );
    // Renewing again keeps it.
    let again = renew_as(&f, caller(&worker, Role::Manager), "10.0.0.8:2377")
        .await
        .unwrap();
    assert_eq!(
        (again.raft_id, again.advertise_addr.as_str()),
        (raft_id, "10.0.0.9:2377")
    );

    // Demoted before it ever joined raft: back to a worker, the raft id given up for good.
    set_role(&f, &worker, NodeRole::Worker).await;
    let demoted = node(&f, &worker);
    assert_eq!(demoted.role, NodeRole::Worker as i32);
    assert!(demoted.manager_status.is_none());
    let answer = renew_as(&f, caller(&worker, Role::Manager), "10.0.0.9:2377")
        .await
        .unwrap();
    assert_eq!(
        NodeIdentity::from_pem(&answer.certificate).unwrap().role,
        Role::Worker
    );
    assert_eq!(answer.raft_id, 0);
    set_role(&f, &worker, NodeRole::Manager).await;
    let answer = renew_as(&f, caller(&worker, Role::Worker), "10.0.0.9:2377")
        .await
        .unwrap();
    assert_eq!(answer.raft_id, raft_id + 1, "raft ids are never reused");
}

#[tokio::test]
async fn forwarded_renewals_are_believed_only_from_managers() {
    let f = fixture().await;
    let worker = join_worker(&f).await;
    let other = join_worker(&f).await;
    let forwarded_by = |transport: Caller, origin: &str| {
        let mut request = Request::new(renewal(""));
        request.extensions_mut().insert(transport.clone());
        let metadata = request.metadata_mut();
        let by = transport.identity.unwrap().node_id;
        metadata.insert(forward::FORWARDED_BY, MetadataValue::try_from(by).unwrap());
        metadata.insert(
            forward::FORWARDED_NODE,
            MetadataValue::try_from(origin).unwrap(),
        );
        metadata.insert(
            forward::FORWARDED_ROLE,
            MetadataValue::try_from("worker").unwrap(),
        );
        request
    };

    // Through a manager: the certificate is the origin's.
    let answer =
        f.ca.renew_node_certificate(forwarded_by(caller("node1", Role::Manager), &worker))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(
        NodeIdentity::from_pem(&answer.certificate).unwrap().node_id,
        worker
    );

    // A node holding a manager certificate the store no longer backs (a demoted manager) may
    // not forward for someone else, which would get it a certificate in another name...
    let refused =
        f.ca.renew_node_certificate(forwarded_by(caller(&other, Role::Manager), &worker))
            .await
            .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("no longer a manager"),
        "{refused:?}"
    );
    // ...but its own renewal, through its own listener, goes through.
    let own =
        f.ca.renew_node_certificate(forwarded_by(caller(&other, Role::Manager), &other))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(
        NodeIdentity::from_pem(&own.certificate).unwrap().role,
        Role::Worker
    );

    // Removed: revoked, whoever forwards it.
    f.control
        .remove_node(Request::new(RemoveNodeRequest {
            node_id: worker.clone(),
            force: true,
        }))
        .await
        .unwrap();
    let refused =
        f.ca.renew_node_certificate(forwarded_by(caller("node1", Role::Manager), &worker))
            .await
            .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = renew_as(&f, caller(&worker, Role::Worker), "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
}
