//! Node certificates over time, against real daemons on loopback addresses (127.0.0.3x and
//! 127.0.0.4x): promotion and demotion reach the node (new certificate, manager started or
//! stopped, no restart, heartbeats on), also across a kill -9 in the middle; and what an
//! attacker can do with the CA: an expired certificate of the real root, a forged or
//! wrong-role join token, a revoked node asking for renewal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use shoal_api::v1::control_client::ControlClient;
use shoal_api::v1::dispatcher_client::DispatcherClient;
use shoal_api::v1::node_ca_client::NodeCaClient;
use shoal_api::v1::{
    HeartbeatRequest, IssueNodeCertificateRequest, ListNodesRequest, NodeRole,
    RenewNodeCertificateRequest,
};
use shoal_manager::state_machine::StoreStateMachine;
use shoal_pki::{
    JoinToken, NodeCertRequest, NodeCertificates, NodeIdentity, NodeKey, Role, RootCa,
};
use shoal_raft::{GrpcNetwork, RaftConfig, ReplicatedLog, StorageCipher};
use shoal_store::Store;
use shoal_testkit::Daemon;
use shoal_testkit::swarm::{addr, init, join, start, token, wait_for};
use tonic::transport::{Channel, Endpoint};

/// [`wait_for`], showing the end of `daemon`'s log (info and above) when it times out.
#[track_caller]
fn wait_showing<T>(
    daemon: &Daemon,
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            let log = daemon.log();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" DEBUG ")).collect();
            panic!(
                "timed out waiting for {what}; progress {:?}; log:\n{}",
                progress(daemon),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn certs_dir(daemon: &Daemon) -> PathBuf {
    daemon.data_root().join("swarm/certificates")
}

fn certs_of(daemon: &Daemon) -> NodeCertificates {
    NodeCertificates::load(&certs_dir(daemon)).unwrap()
}

/// The certificate on disk, `None` while a write is between files.
fn identity_on_disk(daemon: &Daemon) -> Option<NodeIdentity> {
    NodeCertificates::load(&certs_dir(daemon))
        .ok()?
        .identity()
        .ok()
}

/// `role` and `raft_id` from the node's state.json.
fn state_of(daemon: &Daemon) -> (String, u64) {
    let text = std::fs::read_to_string(daemon.data_root().join("swarm/state.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    (
        v["role"].as_str().unwrap().to_owned(),
        v["raft_id"].as_u64().unwrap(),
    )
}

/// `node ls` rows as (id, status, manager status).
fn nodes(daemon: &Daemon) -> Option<Vec<(String, String, String)>> {
    let out = daemon.cli(&["node", "ls", "--format", "json"]);
    if out.code != 0 {
        return None;
    }
    let mut rows: Vec<(String, String, String)> = out
        .stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            (s("ID"), s("Status"), s("ManagerStatus"))
        })
        .collect();
    rows.sort();
    Some(rows)
}

fn row(daemon: &Daemon, id: &str) -> Option<(String, String)> {
    nodes(daemon)?
        .into_iter()
        .find(|(n, _, _)| n == id)
        .map(|(_, status, manager)| (status, manager))
}

/// How many raft voters `swarm info` on `daemon` reports (`None` on a worker).
fn voters(daemon: &Daemon) -> Option<u64> {
    let out = daemon.cli(&["info", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).ok()?;
    v["Swarm"]["Raft"]["Voters"].as_u64()
}

fn write_works(daemon: &Daemon, name: &str) -> bool {
    daemon
        .cli_with_stdin(&["config", "create", name, "-"], Some(b"x"))
        .code
        == 0
}

/// How far a node's role change got, from what is on disk: (certificate role, state role, raft
/// data present).
fn progress(daemon: &Daemon) -> (String, String, bool) {
    let certificate = identity_on_disk(daemon).map_or("?".to_owned(), |i| i.role.to_string());
    (certificate, state_of(daemon).0, has_raft_data(daemon))
}

/// Heartbeats the daemon logged as failed or timed out so far.
fn missed_heartbeats(daemon: &Daemon) -> usize {
    daemon
        .log()
        .lines()
        .filter(|l| l.contains("heartbeat failed") || l.contains("heartbeat timed out"))
        .count()
}

/// The node's data root holds raft data (managers only).
fn has_raft_data(daemon: &Daemon) -> bool {
    daemon.data_root().join("swarm/raft").exists()
}

/// A lazy channel to `target` over TLS with `config`.
fn channel(target: &str, config: shoal_pki::rustls::ClientConfig) -> Channel {
    let config = Arc::new(config);
    let target = target.to_owned();
    Endpoint::from_static("http://shoal-manager")
        .connect_timeout(Duration::from_secs(3))
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let config = config.clone();
            let target = target.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                let name =
                    shoal_pki::rustls::pki_types::ServerName::try_from("shoal-manager").unwrap();
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn code<T>(result: Result<T, tonic::Status>) -> tonic::Code {
    result.map_or_else(|s| s.code(), |_| tonic::Code::Ok)
}

/// ListNodes (managers), Heartbeat (nodes) and RenewNodeCertificate (nodes) presenting
/// `config`'s identity.
fn probe(target: &str, config: shoal_pki::rustls::ClientConfig) -> [tonic::Code; 3] {
    runtime().block_on(async {
        let ch = channel(target, config);
        let list = code(
            ControlClient::new(ch.clone())
                .list_nodes(ListNodesRequest::default())
                .await,
        );
        let beat = code(
            DispatcherClient::new(ch.clone())
                .heartbeat(HeartbeatRequest {})
                .await,
        );
        let csr = NodeKey::generate().unwrap().csr_pem().unwrap();
        let renew = code(
            NodeCaClient::new(ch)
                .renew_node_certificate(RenewNodeCertificateRequest {
                    csr,
                    ..Default::default()
                })
                .await,
        );
        [list, beat, renew]
    })
}

#[test]
fn promotion_and_demotion_reach_the_node_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let m1 = start(dir.path(), "m1");
    let m2 = start(dir.path(), "m2");
    let m3 = start(dir.path(), "m3");
    let mut w1 = start(dir.path(), "w1");
    let (n1, n2, n3, n4) = (31, 32, 33, 34);
    init(&m1, n1);
    let manager_token = token(&m1, "manager");
    join(&m2, &manager_token, n2, n1).ok();
    join(&m3, &manager_token, n3, n1).ok();
    join(&w1, &token(&m1, "worker"), n4, n1).ok();

    let before = certs_of(&w1).identity().unwrap();
    let w1_id = before.node_id.clone();
    assert_eq!(before.role, Role::Worker);
    wait_for(Duration::from_secs(30), "the worker to be Ready", || {
        (row(&m1, &w1_id)? == ("Ready".into(), String::new())).then_some(())
    });
    let pid = w1.pid();
    let missed_before = missed_heartbeats(&w1);
    let line = w1.cli(&["node", "ls"]).one_line_error().to_owned();
    assert!(line.contains("not a swarm manager"), "{line}");

    // Promotion: the worker renews into a manager certificate, starts a manager and joins raft.
    let promoted = Instant::now();
    let out = m1.cli(&["node", "promote", &w1_id]);
    assert!(out.ok().contains("promoted to a manager"), "{}", out.stdout);
    wait_for(
        Duration::from_secs(60),
        "the promoted node to be a manager",
        || {
            let identity = identity_on_disk(&w1)?;
            let (role, raft_id) = state_of(&w1);
            let (status, manager) = row(&m1, &w1_id)?;
            assert_eq!(
                status, "Ready",
                "the node's session went on during its promotion"
            );
            (identity.role == Role::Manager
                && role == "manager"
                && raft_id > 3
                && manager == "Reachable"
                && voters(&m1) == Some(4))
            .then_some(())
        },
    );
    eprintln!("promotion took {:?}", promoted.elapsed());
    let after = certs_of(&w1).identity().unwrap();
    assert_eq!(
        after.node_id, w1_id,
        "the same node, with a new certificate"
    );
    assert_ne!(after.serial_hex, before.serial_hex);
    assert_eq!(w1.pid(), pid, "no restart");
    // It serves the control API now, and the swarm takes writes with four voters.
    wait_for(Duration::from_secs(30), "the new manager to answer", || {
        nodes(&w1).filter(|rows| rows.len() == 4).map(drop)
    });
    assert!(write_works(&m1, "after-promotion"));
    assert!(write_works(&w1, "through-the-new-manager"));
    assert!(has_raft_data(&w1));

    // Demotion: out of raft first, then a worker certificate, then the manager stops.
    let demoted = Instant::now();
    let out = m2.cli(&["node", "demote", &w1_id]);
    assert!(out.ok().contains("demoted"), "{}", out.stdout);
    wait_for(
        Duration::from_secs(60),
        "the demoted node to be a worker",
        || {
            let identity = identity_on_disk(&w1)?;
            let (role, raft_id) = state_of(&w1);
            let (status, manager) = row(&m1, &w1_id)?;
            assert_eq!(
                status, "Ready",
                "the node's session went on during its demotion"
            );
            (identity.role == Role::Worker
                && role == "worker"
                && raft_id == 0
                && manager.is_empty()
                && !has_raft_data(&w1)
                && voters(&m1) == Some(3))
            .then_some(())
        },
    );
    eprintln!("demotion took {:?}", demoted.elapsed());
    // Its heartbeats went on over the connection it had, through both renewals.
    assert_eq!(missed_heartbeats(&w1), missed_before);
    assert_eq!(w1.pid(), pid, "no restart");
    let line = w1.cli(&["node", "ls"]).one_line_error().to_owned();
    assert!(line.contains("not a swarm manager"), "{line}");
    assert!(write_works(&m3, "after-demotion"));
    let ids: Vec<String> = nodes(&m1).unwrap().into_iter().map(|r| r.0).collect();
    assert_eq!(ids.len(), 4);

    // A kill -9 in the middle of each change: the restarted node finishes it. A node learns
    // of a change at its first heartbeat after a start, so the first kill makes the change
    // begin at the restart, and the second one lands somewhere inside it.
    let mut landed = Vec::new();
    for delay in [40u64, 120, 300, 700, 1200] {
        m1.cli(&["node", "promote", &w1_id]).ok();
        w1.kill9();
        w1.start_again();
        std::thread::sleep(Duration::from_millis(delay));
        landed.push(("promotion", delay, progress(&w1)));
        w1.kill9();
        w1.start_again();
        wait_showing(
            &w1,
            Duration::from_secs(60),
            "an interrupted promotion to finish",
            || {
                let identity = identity_on_disk(&w1)?;
                let (_, manager) = row(&m1, &w1_id)?;
                (identity.role == Role::Manager
                    && state_of(&w1).0 == "manager"
                    && manager == "Reachable"
                    && voters(&m1) == Some(4))
                .then_some(())
            },
        );
        assert!(write_works(&w1, &format!("promoted-{delay}")));

        m1.cli(&["node", "demote", &w1_id]).ok();
        w1.kill9();
        w1.start_again();
        std::thread::sleep(Duration::from_millis(delay / 4));
        landed.push(("demotion", delay / 4, progress(&w1)));
        w1.kill9();
        w1.start_again();
        wait_showing(
            &w1,
            Duration::from_secs(60),
            "an interrupted demotion to finish",
            || {
                let identity = identity_on_disk(&w1)?;
                let (status, manager) = row(&m1, &w1_id)?;
                (identity.role == Role::Worker
                    && state_of(&w1) == ("worker".to_owned(), 0)
                    && status == "Ready"
                    && manager.is_empty()
                    && !has_raft_data(&w1)
                    && voters(&m1) == Some(3))
                .then_some(())
            },
        );
        assert!(write_works(&m1, &format!("demoted-{delay}")));
    }
    eprintln!("kill -9 landed at (change, ms after start, progress): {landed:?}");

    // Demoting the leader: it hands leadership over, then becomes a worker like any other.
    let m1_id = certs_of(&m1).identity().unwrap().node_id;
    m1.cli(&["node", "demote", &m1_id]).ok();
    wait_for(
        Duration::from_secs(60),
        "the old leader to be a worker",
        || {
            let identity = identity_on_disk(&m1)?;
            let (status, manager) = row(&m2, &m1_id)?;
            (identity.role == Role::Worker
                && state_of(&m1).0 == "worker"
                && status == "Ready"
                && manager.is_empty()
                && voters(&m2) == Some(2))
            .then_some(())
        },
    );
    assert!(write_works(&m2, "after-leader-demotion"));
}

/// The swarm's root CA with its key, read from a stopped manager's data root, as anyone holding
/// that disk could while autolock is off: the data keys beside the node key open the raft log,
/// whose store holds the root.
fn root_from_disk(manager: &Daemon) -> RootCa {
    let (_, protection) = NodeCertificates::load_protected(&certs_dir(manager), None).unwrap();
    let cipher = StorageCipher::new();
    for key in &protection.data_keys {
        cipher.add_key(key.id(), key.bytes());
    }
    let (_, raft_id) = state_of(manager);
    let mut config = RaftConfig::new(raft_id, manager.data_root().join("swarm/raft"));
    config.cipher = Some(cipher);
    let store = Store::new();
    let cluster = runtime().block_on(async {
        let log = ReplicatedLog::open(
            config,
            Arc::new(StoreStateMachine::new(store.clone())),
            Arc::new(GrpcNetwork::plaintext()),
        )
        .await
        .unwrap();
        let cluster = store.view().cluster().cloned().unwrap();
        log.shutdown().await;
        cluster
    });
    let root = cluster.root_ca.unwrap();
    RootCa::from_pem(
        &String::from_utf8(root.ca_cert).unwrap(),
        &String::from_utf8(root.ca_key).unwrap(),
    )
    .unwrap()
}

fn count(daemon: &Daemon) -> Option<usize> {
    nodes(daemon).map(|rows| rows.len())
}

/// A fresh key and what a certificate for `node_id` would say.
fn request_for(node_id: &str, role: Role, cluster_id: &str) -> (NodeKey, NodeCertRequest) {
    let key = NodeKey::generate().unwrap();
    let request = NodeCertRequest {
        node_id: node_id.to_owned(),
        role,
        cluster_id: cluster_id.to_owned(),
        validity: Duration::from_secs(7200),
    };
    (key, request)
}

#[test]
fn the_ca_gives_no_more_than_it_should() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = start(dir.path(), "m");
    let w = start(dir.path(), "w");
    let (nm, nw) = (41, 42);
    init(&m, nm);
    let worker_token = token(&m, "worker");
    join(&w, &worker_token, nw, nm).ok();
    let target = addr(nm);
    let m_certs = certs_of(&m);
    let m_id = m_certs.identity().unwrap();
    let root_pem = m_certs.root_ca_pem.clone();
    wait_for(Duration::from_secs(30), "two nodes", || {
        (count(&m)? == 2).then_some(())
    });

    // The root key, read from the manager's disk while it is stopped.
    assert_eq!(m.terminate(), Some(0));
    let root = root_from_disk(&m);
    assert_eq!(root.cert_pem().trim(), root_pem.trim());
    m.start_again();
    wait_for(Duration::from_secs(30), "the manager to be back", || {
        (count(&m)? == 2).then_some(())
    });

    // An expired certificate of the real root, in the manager's own name: refused at the TLS
    // layer, for every method. The same identity with valid dates passes, so only the dates
    // are at fault.
    let now = SystemTime::now();
    let (key, request) = request_for(&m_id.node_id, Role::Manager, &m_id.cluster_id);
    let expired = root
        .sign_node_valid_between(
            &key.csr_pem().unwrap(),
            &request,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(60),
        )
        .unwrap();
    let expired = NodeCertificates {
        key,
        cert_pem: expired.cert_pem,
        root_ca_pem: root_pem.clone(),
    };
    expired.validate().unwrap();
    let refused = probe(&target, shoal_pki::client_config(&expired).unwrap());
    // The TLS refusal reaches a TLS 1.3 client after its side of the handshake, as a broken
    // connection: never a gRPC answer, and so never the authorization layer's refusals.
    for code in refused {
        assert!(
            !matches!(
                code,
                tonic::Code::Ok | tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ),
            "{refused:?}"
        );
    }
    let refusals: Vec<String> = m
        .log()
        .lines()
        .filter(|l| l.contains("TLS handshake refused"))
        .map(str::to_owned)
        .collect();
    assert!(
        refusals.len() >= 3 && refusals.iter().all(|l| l.contains("expired")),
        "{refusals:?}"
    );
    let (key, request) = request_for(&m_id.node_id, Role::Manager, &m_id.cluster_id);
    let fresh = root.sign_node(&key.csr_pem().unwrap(), &request).unwrap();
    let fresh = NodeCertificates {
        key,
        cert_pem: fresh.cert_pem,
        root_ca_pem: root_pem.clone(),
    };
    let [list, _, _] = probe(&target, shoal_pki::client_config(&fresh).unwrap());
    assert_eq!(list, tonic::Code::Ok);
    assert_eq!(count(&m), Some(2), "nothing changed");

    let anonymous = || shoal_pki::anonymous_client_config(&root_pem).unwrap();
    let issue = |token: &str, csr: String| {
        runtime().block_on(async {
            NodeCaClient::new(channel(&target, anonymous()))
                .issue_node_certificate(IssueNodeCertificateRequest {
                    token: token.to_owned(),
                    csr,
                    advertise_addr: addr(43),
                    listen_addr: addr(43),
                    hostname: "attacker".into(),
                    description: None,
                })
                .await
        })
    };

    // A token with the right root digest and a secret of its own making.
    let forged = JoinToken::generate(&root.digest()).to_string();
    let status = issue(&forged, NodeKey::generate().unwrap().csr_pem().unwrap()).unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "invalid join token");
    assert_eq!(count(&m), Some(2));

    // The worker token, with a CSR claiming to be the manager (its CN, OU=manager, its
    // cluster) and a manager's advertise address: a worker it gets, with a fresh identity.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["shoal-manager".to_owned()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, m_id.node_id.as_str());
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "manager");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, m_id.cluster_id.as_str());
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let answer = issue(&worker_token, csr).unwrap().into_inner();
    assert_eq!(answer.role, NodeRole::Worker as i32);
    assert_eq!((answer.raft_id, answer.advertise_addr.as_str()), (0, ""));
    assert_ne!(answer.node_id, m_id.node_id);
    let got = NodeIdentity::from_pem(&answer.certificate).unwrap();
    assert_eq!(got.role, Role::Worker);
    assert_eq!(got.node_id, answer.node_id);
    let intruder = NodeCertificates {
        key: NodeKey::from_pem(&key.serialize_pem()).unwrap(),
        cert_pem: answer.certificate.clone(),
        root_ca_pem: root_pem.clone(),
    };
    intruder.validate().unwrap();
    // As a worker it may heartbeat and renew (a worker certificate again), nothing more.
    let [list, beat, renew] = probe(&target, shoal_pki::client_config(&intruder).unwrap());
    assert_eq!(
        (list, beat, renew),
        (
            tonic::Code::PermissionDenied,
            tonic::Code::Ok,
            tonic::Code::Ok
        )
    );
    let renewed = runtime().block_on(async {
        NodeCaClient::new(channel(
            &target,
            shoal_pki::client_config(&intruder).unwrap(),
        ))
        .renew_node_certificate(RenewNodeCertificateRequest {
            csr: NodeKey::generate().unwrap().csr_pem().unwrap(),
            advertise_addr: addr(43),
            listen_addr: addr(43),
        })
        .await
        .unwrap()
        .into_inner()
    });
    assert_eq!(
        NodeIdentity::from_pem(&renewed.certificate).unwrap().role,
        Role::Worker
    );
    assert_eq!(renewed.raft_id, 0);
    assert_eq!(voters(&m), Some(1), "raft is as it was");

    // A removed node is revoked: no heartbeat, no renewal.
    let w_certs = certs_of(&w);
    let w_id = w_certs.identity().unwrap().node_id;
    m.cli(&["node", "rm", "--force", &w_id]).ok();
    let [_, beat, renew] = probe(&target, shoal_pki::client_config(&w_certs).unwrap());
    assert_eq!(
        (beat, renew),
        (tonic::Code::PermissionDenied, tonic::Code::PermissionDenied)
    );
    assert!(row(&m, &w_id).is_none());
}
