//! Multi-host swarm over the network: joining by token with mutual TLS, managers replicated by
//! Raft, node status from heartbeats, refusals of bad joins and of attackers on port 2377, and
//! leader failover. Daemons run on distinct loopback addresses (127.0.0.x).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_api::v1::control_client::ControlClient;
use shoal_api::v1::dispatcher_client::DispatcherClient;
use shoal_api::v1::{HeartbeatRequest, ListNodesRequest};
use shoal_pki::{NodeCertRequest, NodeCertificates, NodeKey, Role, RootCa};
use shoal_testkit::Daemon;
use shoal_testkit::swarm::{addr, init, join, start, token, wait_for};
use tonic::transport::{Channel, Endpoint};

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

fn certs_of(daemon: &Daemon) -> NodeCertificates {
    NodeCertificates::load(&daemon.data_root().join("swarm/certificates")).unwrap()
}

/// A mutual-TLS (or anonymous) channel to `target` presenting `certs`.
fn channel(target: &str, config: rustls_config::Config) -> Channel {
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

mod rustls_config {
    pub(crate) type Config = shoal_pki::rustls::ClientConfig;
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Calls ListNodes (manager-only) and Heartbeat (nodes) presenting `config`'s identity.
fn probe(target: &str, config: rustls_config::Config) -> (tonic::Code, tonic::Code) {
    runtime().block_on(async {
        let ch = channel(target, config);
        let list = ControlClient::new(ch.clone())
            .list_nodes(ListNodesRequest::default())
            .await
            .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        let beat = DispatcherClient::new(ch)
            .heartbeat(HeartbeatRequest {})
            .await
            .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        (list, beat)
    })
}

#[test]
fn managers_and_workers_join_by_token_and_survive_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let m1 = start(dir.path(), "m1");
    let m2 = start(dir.path(), "m2");
    let m3 = start(dir.path(), "m3");
    let w1 = start(dir.path(), "w1");
    let w2 = start(dir.path(), "w2");
    let other = start(dir.path(), "other");
    let stranger = start(dir.path(), "stranger");
    let (n1, n2, n3, n4, n5, n_other) = (21, 22, 23, 24, 25, 26);

    init(&m1, n1);
    init(&other, n_other);
    let worker_token = token(&m1, "worker");
    let manager_token = token(&m1, "manager");

    let started = Instant::now();
    join(&m2, &manager_token, n2, n1).ok();
    let manager_join = started.elapsed();
    join(&m3, &manager_token, n3, n2).ok(); // through a follower
    let started = Instant::now();
    let out = join(&w1, &worker_token, n4, n1);
    let worker_join = started.elapsed();
    assert!(out.ok().contains("as a worker"), "{}", out.stdout);
    join(&w2, &worker_token, n5, n3).ok();
    eprintln!("join time: manager {manager_join:?}, worker {worker_join:?}");

    // Every manager sees the same five nodes, all Ready, one Leader.
    let managers = [&m1, &m2, &m3];
    let agreed = wait_for(Duration::from_secs(30), "managers to agree", || {
        let views: Vec<_> = managers.iter().map(|m| nodes(m)).collect::<Option<_>>()?;
        let first = views[0].clone();
        let ready = first.len() == 5
            && first.iter().all(|(_, status, _)| status == "Ready")
            && first.iter().filter(|(_, _, m)| m == "Leader").count() == 1
            && first.iter().filter(|(_, _, m)| m == "Reachable").count() == 2;
        (ready && views.iter().all(|v| *v == first)).then_some(first)
    });
    let line = w1.cli(&["node", "ls"]).one_line_error().to_owned();
    assert!(line.contains("This node is not a swarm manager"), "{line}");

    // Bad joins: one line each, the data root as before.
    let line = join(&stranger, &worker_token, 27, 99)
        .one_line_error()
        .to_owned();
    assert!(line.contains("could not reach a manager"), "{line}");
    let mut wrong = worker_token.clone();
    wrong.truncate(wrong.len() - 5);
    wrong.push_str("aaaaa");
    let line = join(&stranger, &wrong, 27, n1).one_line_error().to_owned();
    assert!(line.contains("invalid join token"), "{line}");
    let line = join(&stranger, &token(&other, "worker"), 27, n1)
        .one_line_error()
        .to_owned();
    assert!(
        line.contains("root CA does not match the join token"),
        "{line}"
    );
    let line = join(&w1, &worker_token, n4, n1).one_line_error().to_owned();
    assert!(line.contains("already part of a swarm"), "{line}");
    assert!(!stranger.data_root().join("swarm").exists());

    // Attackers on 2377.
    let leader_addr = addr(n1);
    let m1_certs = certs_of(&m1);
    let m1_id = m1_certs.identity().unwrap();
    // Same CN and cluster, signed by a CA of its own: TLS refuses it.
    let fake_root = RootCa::generate().unwrap();
    let fake_key = NodeKey::generate().unwrap();
    let fake = fake_root
        .sign_node(
            &fake_key.csr_pem().unwrap(),
            &NodeCertRequest {
                node_id: m1_id.node_id.clone(),
                role: Role::Manager,
                cluster_id: m1_id.cluster_id.clone(),
                validity: Duration::from_secs(7200),
            },
        )
        .unwrap();
    let forged = NodeCertificates {
        key: fake_key,
        cert_pem: fake.cert_pem,
        root_ca_pem: m1_certs.root_ca_pem.clone(),
    };
    // Presents the forged certificate (TLS must refuse it: it does not chain to the root).
    let forged_config = shoal_pki::client_config(&NodeCertificates {
        key: NodeKey::from_pem(&forged.key.to_pem()).unwrap(),
        cert_pem: forged.cert_pem.clone(),
        root_ca_pem: fake_root.cert_pem().to_owned(),
    })
    .unwrap();
    let (list, beat) = probe(&leader_addr, forged_config);
    assert_ne!(list, tonic::Code::Ok);
    assert_ne!(beat, tonic::Code::Ok);
    // A certificate from another swarm.
    let foreign = certs_of(&other);
    let (list, _) = probe(&leader_addr, shoal_pki::client_config(&foreign).unwrap());
    assert_ne!(list, tonic::Code::Ok);
    // No certificate at all: only the CA methods.
    let (list, beat) = probe(
        &leader_addr,
        shoal_pki::anonymous_client_config(&m1_certs.root_ca_pem).unwrap(),
    );
    assert_eq!(
        (list, beat),
        (tonic::Code::Unauthenticated, tonic::Code::Unauthenticated)
    );
    // A worker calling a manager-only method.
    let (list, beat) = probe(
        &leader_addr,
        shoal_pki::client_config(&certs_of(&w1)).unwrap(),
    );
    assert_eq!(
        (list, beat),
        (tonic::Code::PermissionDenied, tonic::Code::Ok)
    );
    // Garbage bytes: the connection is dropped.
    let mut garbage = TcpStream::connect(&leader_addr).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let _ = garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01garbage");
    let mut buf = [0u8; 64];
    let read = garbage.read(&mut buf);
    assert!(matches!(read, Ok(0) | Err(_)) || buf[0] == 0x15, "{read:?}");
    // A removed worker is revoked at once.
    let w2_certs = certs_of(&w2);
    let w2_id = w2_certs.identity().unwrap().node_id;
    m1.cli(&["node", "rm", "--force", &w2_id]).ok();
    let (_, beat) = probe(&leader_addr, shoal_pki::client_config(&w2_certs).unwrap());
    assert_eq!(beat, tonic::Code::PermissionDenied);
    let after = nodes(&m1).unwrap();
    assert_eq!(after.len(), 4);
    assert!(agreed.iter().any(|(id, _, _)| *id == w2_id));

    // Quorum: with one manager killed, demoting another would leave 1 of 2.
    let leader_id = agreed
        .iter()
        .find(|(_, _, m)| m == "Leader")
        .unwrap()
        .0
        .clone();
    assert_eq!(leader_id, m1_id.node_id);
    let line = m1.cli(&["swarm", "leave"]).one_line_error().to_owned();
    assert!(line.contains("--force"), "{line}");

    // Failover: kill -9 the leader; another manager takes writes.
    let mut m1 = m1;
    m1.kill9();
    let killed = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "a new leader to accept writes",
        || {
            let out = m2.cli_with_stdin(&["config", "create", "after-failover", "-"], Some(b"x"));
            (out.code == 0).then_some(())
        },
    );
    let failover = killed.elapsed();
    eprintln!("failover: new leader accepted a write {failover:?} after kill -9");
    let m3_id = certs_of(&m3).identity().unwrap().node_id;
    // The new leader sees the dead one Unreachable from raft's heartbeat acknowledgements, long
    // before its node heartbeats mark it Down.
    wait_for(
        Duration::from_secs(30),
        "the old leader to be unreachable",
        || {
            let rows = nodes(&m2)?;
            rows.iter()
                .any(|(id, _, m)| *id == leader_id && m == "Unreachable")
                .then_some(())
        },
    );
    let unreachable = killed.elapsed();
    eprintln!(
        "unreachable: node ls showed the old leader Unreachable {unreachable:?} after kill -9"
    );
    assert!(unreachable < Duration::from_secs(5), "{unreachable:?}");
    let line = m2.cli(&["node", "demote", &m3_id]);
    // One of three managers is unreachable: demoting another would leave one reachable of two.
    assert!(line.one_line_error().contains("quorum"), "{}", line.stderr);
    assert!(
        killed.elapsed() < Duration::from_secs(6),
        "{:?}",
        killed.elapsed()
    );

    m1.restart();
    let view = wait_for(Duration::from_secs(30), "the old leader to rejoin", || {
        let rows = nodes(&m1)?;
        let me = rows.iter().find(|(id, _, _)| *id == leader_id)?;
        (me.2 == "Reachable" && rows.iter().any(|(_, _, m)| m == "Leader")).then_some(rows)
    });
    assert_eq!(view.len(), 4);
    assert!(m1.cli(&["config", "ls"]).ok().contains("after-failover"));
}
