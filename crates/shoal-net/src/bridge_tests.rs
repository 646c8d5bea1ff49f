//! Unit tests of the bridge network over the in-memory fakes: IPAM, ports, rollback, detach,
//! persistence across restarts, reconcile and teardown.

use super::*;
use crate::fake::{FakeFirewall, FakeHostPorts, FakeLinks};
use crate::port::Protocol;
use crate::ruleset::PUBLISHED_CHAIN;

type FakeNetwork = BridgeNetwork<FakeLinks, FakeFirewall, FakeHostPorts>;

struct World {
    dir: tempfile::TempDir,
    links: FakeLinks,
    firewall: FakeFirewall,
    ports: FakeHostPorts,
    config: BridgeConfig,
}

impl World {
    fn new() -> Self {
        World {
            dir: tempfile::tempdir().unwrap(),
            links: FakeLinks::new(),
            firewall: FakeFirewall::new(),
            ports: FakeHostPorts::new(),
            config: BridgeConfig::default(),
        }
    }

    /// The network as a (re)started daemon opens it: same kernel, same state directory.
    fn open(&self) -> FakeNetwork {
        BridgeNetwork::open(
            self.config.clone(),
            self.dir.path(),
            self.links.clone(),
            self.firewall.clone(),
            self.ports.clone(),
        )
        .unwrap()
    }

    fn container(&self, name: &str) -> Netns {
        let netns = Netns::named(name);
        self.links.add_netns(&netns);
        netns
    }

    fn dnat_rules(&self) -> Vec<serde_json::Value> {
        let Some(table) = self.firewall.table(DEFAULT_TABLE) else {
            return Vec::new();
        };
        table.to_json()["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .filter(|r| r["chain"] == PUBLISHED_CHAIN)
            .cloned()
            .collect()
    }

    fn veths(&self) -> Vec<String> {
        self.links
            .links()
            .into_iter()
            .filter(|l| l.info.name.starts_with(HOST_VETH_PREFIX))
            .map(|l| l.info.name)
            .collect()
    }

    fn state_json(&self) -> serde_json::Value {
        let path = self.dir.path().join("bridge-shoal0.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }
}

fn p(spec: &str) -> PortMapping {
    PortMapping::parse(spec).unwrap()
}

#[tokio::test]
async fn ensure_creates_the_bridge_once() {
    let w = World::new();
    let net = w.open();
    net.ensure().await.unwrap();
    net.ensure().await.unwrap();
    let bridge = w.links.link(DEFAULT_BRIDGE).unwrap();
    assert_eq!(bridge.info.kind.as_deref(), Some("bridge"));
    assert!(bridge.info.up);
    assert_eq!(bridge.addresses, vec!["172.30.0.1/16".parse().unwrap()]);
    let adds = w
        .links
        .calls()
        .iter()
        .filter(|c| c.starts_with("add_bridge"))
        .count();
    assert_eq!(adds, 1);
    assert_eq!(w.links.sysctl("net/ipv4/ip_forward").as_deref(), Some("1"));
    assert_eq!(
        w.links
            .sysctl("net/ipv4/conf/shoal0/route_localnet")
            .as_deref(),
        Some("1")
    );
    let table = w.firewall.table(DEFAULT_TABLE).unwrap();
    assert_eq!(table, net.desired_table().await);
    assert!(w.dnat_rules().is_empty());
}

#[tokio::test]
async fn ensure_refuses_a_non_bridge_link_of_the_same_name() {
    let w = World::new();
    w.links.add_veth(DEFAULT_BRIDGE, "other").await.unwrap();
    let err = w.open().ensure().await.unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid bridge configuration: a link called shoal0 exists and is not a bridge"
    );
}

#[tokio::test]
async fn attach_wires_the_container_and_publishes_its_ports() {
    let w = World::new();
    let net = w.open();
    let ns = w.container("c1");
    let a = net
        .attach("c1", &ns, &[p("8080:80"), p("127.0.0.1:5353:53/udp")])
        .await
        .unwrap();
    assert_eq!(a.ip, Ipv4Addr::new(172, 30, 0, 2));
    assert_eq!(a.gateway, Ipv4Addr::new(172, 30, 0, 1));
    assert_eq!(a.prefix_len, 16);
    assert_eq!(a.mac.to_string(), "02:42:ac:1e:00:02");
    assert_eq!(a.ports.len(), 2);
    assert_eq!(a.ports[0].to_string(), "0.0.0.0:8080->80/tcp");
    assert_eq!(a.ports[1].to_string(), "127.0.0.1:5353->53/udp");

    // Host side: the veth is a port of the bridge, up, with hairpin.
    let bridge = w.links.link(DEFAULT_BRIDGE).unwrap();
    let host = w.links.link(&a.host_veth).unwrap();
    assert!(a.host_veth.starts_with(HOST_VETH_PREFIX) && a.host_veth.len() <= 15);
    assert_eq!(host.info.controller, Some(bridge.info.index));
    assert!(host.info.up && host.hairpin);
    assert_eq!(host.info.mtu, Some(1500));
    // Container side: eth0 with address and mac, lo up, default route via the gateway.
    let inside = w.links.links_in(&ns);
    let eth0 = inside
        .iter()
        .find(|l| l.info.name == CONTAINER_IFNAME)
        .unwrap();
    assert_eq!(eth0.addresses, vec!["172.30.0.2/16".parse().unwrap()]);
    assert_eq!(eth0.info.mac, Some(a.mac));
    assert!(eth0.info.up);
    assert_eq!(eth0.peer, Some(host.info.index));
    assert!(inside.iter().any(|l| l.info.name == "lo" && l.info.up));
    assert_eq!(w.links.default_route_in(&ns), Some(a.gateway));

    // Firewall: one DNAT per port, comment = container.
    let rules = w.dnat_rules();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0]["comment"], "c1");
    assert_eq!(rules[0]["expr"][1]["dnat"]["addr"], "172.30.0.2");
    assert_eq!(rules[1]["expr"][0]["match"]["right"], "127.0.0.1");
    // Ports held, state persisted.
    assert_eq!(
        w.ports.held(),
        vec![(Protocol::Tcp, 8080), (Protocol::Udp, 5353)]
    );
    let state = w.state_json();
    assert_eq!(state["attachments"]["c1"]["ip"], "172.30.0.2");
    assert_eq!(
        state["attachments"]["c1"]["host_veth"],
        a.host_veth.as_str()
    );
    assert_eq!(net.attachment("c1").await, Some(a.clone()));

    let err = net.attach("c1", &ns, &[]).await.unwrap_err().to_string();
    assert_eq!(err, "container c1 is already attached to the network");
}

#[tokio::test]
async fn random_ports_skip_ports_in_use_and_run_out_cleanly() {
    let mut w = World::new();
    w.config.ephemeral_ports = 40000..=40002;
    let net = w.open();
    w.ports.mark_in_use(Protocol::Tcp, 40000);
    w.ports.mark_in_use(Protocol::Tcp, 40002);
    let a = net
        .attach(
            "c1",
            &w.container("c1"),
            &[PortMapping::random(80, Protocol::Tcp)],
        )
        .await
        .unwrap();
    assert_eq!(a.ports[0].host_port, 40001);
    // 40000 and 40002 are used by others, 40001 by c1: nothing is left for TCP.
    let err = net
        .attach("c2", &w.container("c2"), &[p("80")])
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, "no free host port left in 40000-40002 for tcp");
    assert!(net.attachment("c2").await.is_none());
    // UDP is a separate space.
    let b = net
        .attach(
            "c2",
            &w.container("c2b"),
            &[p("53/udp"), p("127.0.0.1::54/udp")],
        )
        .await
        .unwrap();
    assert!(w.config.ephemeral_ports.contains(&b.ports[0].host_port));
    assert_ne!(b.ports[0].host_port, b.ports[1].host_port);
}

#[tokio::test]
async fn conflicting_ports_are_refused_and_leave_nothing() {
    let w = World::new();
    let net = w.open();
    net.attach("web", &w.container("web"), &[p("8080:80")])
        .await
        .unwrap();
    let ns = w.container("other");
    for spec in ["8080:81", "127.0.0.1:8080:81", "10.0.0.1:8080:81"] {
        let err = net.attach("other", &ns, &[p(spec)]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "port 8080/tcp is already published by container web"
        );
    }
    // The same port twice in one request.
    let err = net
        .attach("other", &ns, &[p("9090:80"), p("9090:81")])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "port 9090/tcp is already published by container other"
    );
    // A port some other program holds.
    w.ports.mark_in_use(Protocol::Tcp, 9999);
    let err = net.attach("other", &ns, &[p("9999:80")]).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("port 0.0.0.0:9999/tcp is already in use on this host")
    );
    let err = net
        .attach("other", &ns, &[p("192.0.2.1:80:80")])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "host address 192.0.2.1 is not an address of this host"
    );
    // Nothing of the refused attempts is left: one veth, one address, one rule, one held port.
    assert_eq!(w.veths().len(), 1);
    assert_eq!(net.attachments().await.len(), 1);
    assert_eq!(w.dnat_rules().len(), 1);
    assert_eq!(w.ports.held(), vec![(Protocol::Tcp, 8080)]);
    // UDP on the same number is fine.
    net.attach("other", &ns, &[p("8080:80/udp")]).await.unwrap();
}

#[tokio::test]
async fn a_failed_attach_is_undone() {
    let w = World::new();
    let net = w.open();
    net.ensure().await.unwrap();
    let ns = w.container("c1");
    for op in [
        "move_to_netns",
        "rename",
        "set_default_route",
        "set_hairpin",
    ] {
        w.links.fail(op);
        let err = net.attach("c1", &ns, &[p("8080:80")]).await.unwrap_err();
        assert!(err.to_string().contains("injected failure"), "{op}: {err}");
        w.links.heal();
        assert!(w.veths().is_empty(), "{op}");
        assert!(
            !w.links.links_in(&ns).iter().any(|l| l.info.name != "lo"),
            "{op}"
        );
        assert!(net.attachment("c1").await.is_none());
        assert!(w.dnat_rules().is_empty());
        assert!(w.ports.held().is_empty());
        assert_eq!(w.state_json()["attachments"], serde_json::json!({}));
    }
    w.firewall.set_failing(true);
    assert!(net.attach("c1", &ns, &[p("8080:80")]).await.is_err());
    w.firewall.set_failing(false);
    assert!(w.veths().is_empty());
    // The address given out in the failed attempts is free again (next in order is fine).
    let a = net.attach("c1", &ns, &[p("8080:80")]).await.unwrap();
    assert_eq!(net.attachments().await, vec![a]);
}

#[tokio::test]
async fn detach_removes_veth_address_and_rules() {
    let w = World::new();
    let net = w.open();
    let ns = w.container("c1");
    let a = net.attach("c1", &ns, &[p("8080:80")]).await.unwrap();
    let b = net
        .attach("c2", &w.container("c2"), &[p("8081:80")])
        .await
        .unwrap();
    let gone = net.detach("c1").await.unwrap();
    assert_eq!(gone, Some(a.clone()));
    assert_eq!(w.veths(), vec![b.host_veth.clone()]);
    assert!(
        !w.links
            .links_in(&ns)
            .iter()
            .any(|l| l.info.name == CONTAINER_IFNAME)
    );
    let rules = w.dnat_rules();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["comment"], "c2");
    assert_eq!(w.ports.held(), vec![(Protocol::Tcp, 8081)]);
    assert!(w.state_json()["attachments"].get("c1").is_none());
    assert!(
        w.state_json()["ipam"]["allocated"]
            .get("172.30.0.2")
            .is_none()
    );
    assert_eq!(
        w.firewall.forgotten(),
        vec![a.ip],
        "its tracked connections are forgotten"
    );
    assert_eq!(net.detach("c1").await.unwrap(), None);
    // Its port can be published again.
    net.attach("c3", &w.container("c3"), &[p("8080:80")])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_restarted_daemon_does_not_hand_out_an_address_twice() {
    let w = World::new();
    let first = w.open();
    let a = first
        .attach("c1", &w.container("c1"), &[p("8080:80")])
        .await
        .unwrap();
    drop(first);
    let second = w.open();
    assert_eq!(second.attachment("c1").await, Some(a.clone()));
    let b = second.attach("c2", &w.container("c2"), &[]).await.unwrap();
    assert_ne!(a.ip, b.ip);
    assert_ne!(a.host_veth, b.host_veth);
    // Its published ports are still known: a conflict is still refused.
    let err = second
        .attach("c3", &w.container("c3"), &[p("8080:80")])
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::PortPublished { .. }));
}

#[tokio::test]
async fn reconcile_removes_the_dead_keeps_the_living_and_is_idempotent() {
    let w = World::new();
    let first = w.open();
    let a = first
        .attach("alive", &w.container("alive"), &[p("8080:80")])
        .await
        .unwrap();
    let dead = first
        .attach("dead", &w.container("dead"), &[p("8081:80")])
        .await
        .unwrap();
    drop(first);
    // A stray veth on the bridge (crash between creating it and recording it).
    w.links
        .add_veth("shv0123456789ab", "shp0123456789ab")
        .await
        .unwrap();
    w.links
        .set_controller("shv0123456789ab", DEFAULT_BRIDGE)
        .await
        .unwrap();
    // Unrelated links are never touched.
    w.links.add_veth("other0", "other1").await.unwrap();

    let net = w.open();
    let report = net.reconcile(&["alive".into()]).await.unwrap();
    assert_eq!(report.kept, vec!["alive".to_owned()]);
    assert_eq!(report.removed, vec!["dead".to_owned()]);
    assert!(report.lost.is_empty() && report.adopted.is_empty());
    let mut deleted = report.deleted_links.clone();
    deleted.sort();
    assert_eq!(
        deleted,
        vec!["shv0123456789ab".to_owned(), dead.host_veth.clone()]
    );
    assert_eq!(w.veths(), vec![a.host_veth.clone()]);
    assert!(w.links.link("other0").is_some());
    let rules = w.dnat_rules();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["comment"], "alive");
    assert_eq!(net.attachments().await, vec![a.clone()]);
    let allocated = w.state_json()["ipam"]["allocated"].clone();
    assert_eq!(allocated, serde_json::json!({"172.30.0.2": "alive"}));
    // The port of the living container is held again after the restart.
    assert_eq!(w.ports.held(), vec![(Protocol::Tcp, 8080)]);

    let again = net.reconcile(&["alive".into()]).await.unwrap();
    assert_eq!(
        again,
        ReconcileReport {
            kept: vec!["alive".into()],
            ..ReconcileReport::default()
        }
    );
    assert_eq!(w.dnat_rules().len(), 1);
    assert_eq!(w.veths().len(), 1);
}

#[tokio::test]
async fn reconcile_adopts_attachments_the_daemon_remembers() {
    let w = World::new();
    let first = w.open();
    let a = first
        .attach("c1", &w.container("c1"), &[p("8080:80")])
        .await
        .unwrap();
    drop(first);
    std::fs::remove_file(w.dir.path().join("bridge-shoal0.json")).unwrap();
    let net = w.open();
    assert!(net.attachments().await.is_empty());
    let report = net.reconcile(&[a.clone().into()]).await.unwrap();
    assert_eq!(report.adopted, vec!["c1".to_owned()]);
    assert!(report.deleted_links.is_empty());
    assert_eq!(net.attachments().await, vec![a.clone()]);
    assert_eq!(w.dnat_rules().len(), 1);
    // Its address is taken again.
    let b = net.attach("c2", &w.container("c2"), &[]).await.unwrap();
    assert_ne!(b.ip, a.ip);
}

#[tokio::test]
async fn reconcile_reports_living_containers_whose_wiring_is_gone() {
    let w = World::new();
    let first = w.open();
    let a = first
        .attach("c1", &w.container("c1"), &[p("8080:80")])
        .await
        .unwrap();
    drop(first);
    w.links.delete(&a.host_veth).await.unwrap();
    let net = w.open();
    let report = net.reconcile(&["c1".into()]).await.unwrap();
    assert_eq!(report.lost, vec!["c1".to_owned()]);
    assert!(net.attachments().await.is_empty());
    assert!(w.dnat_rules().is_empty());
    // It can be attached again, with its old port.
    let ns = w.container("c1-again");
    net.attach("c1", &ns, &[p("8080:80")]).await.unwrap();
}

#[tokio::test]
async fn teardown_removes_everything() {
    let w = World::new();
    let net = w.open();
    let ns = w.container("c1");
    net.attach("c1", &ns, &[p("8080:80")]).await.unwrap();
    net.teardown().await.unwrap();
    assert!(w.links.link(DEFAULT_BRIDGE).is_none());
    assert!(w.veths().is_empty());
    assert!(w.links.links_in(&ns).iter().all(|l| l.info.name == "lo"));
    assert!(w.firewall.table(DEFAULT_TABLE).is_none());
    assert!(!w.dir.path().join("bridge-shoal0.json").exists());
    assert!(w.ports.held().is_empty());
    assert!(net.attachments().await.is_empty());
    // Tearing down twice is fine; the network can be used again afterwards.
    net.teardown().await.unwrap();
    net.attach("c1", &w.container("c1b"), &[]).await.unwrap();
    assert!(w.links.link(DEFAULT_BRIDGE).is_some());
}

#[tokio::test]
async fn the_subnet_changes_only_while_nothing_is_attached() {
    let mut w = World::new();
    let net = w.open();
    net.attach("c1", &w.container("c1"), &[]).await.unwrap();
    drop(net);
    w.config.subnet = "10.77.0.0/24".parse().unwrap();
    let err = BridgeNetwork::open(
        w.config.clone(),
        w.dir.path(),
        w.links.clone(),
        w.firewall.clone(),
        w.ports.clone(),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "invalid bridge configuration: 1 containers are attached to shoal0 on 172.30.0.0/16; \
         detach them before changing its subnet to 10.77.0.0/24"
    );
    w.config.subnet = DEFAULT_SUBNET;
    w.open().detach("c1").await.unwrap();
    w.config.subnet = "10.77.0.0/24".parse().unwrap();
    let net = w.open();
    let a = net.attach("c2", &w.container("c2"), &[]).await.unwrap();
    assert_eq!(a.ip, Ipv4Addr::new(10, 77, 0, 2));
}

#[test]
fn bad_configurations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open = |config: BridgeConfig| {
        BridgeNetwork::open(
            config,
            dir.path(),
            FakeLinks::new(),
            FakeFirewall::new(),
            FakeHostPorts::new(),
        )
        .map(drop)
        .unwrap_err()
        .to_string()
    };
    let base = BridgeConfig::default;
    assert!(
        open(BridgeConfig {
            bridge: "a-very-long-bridge-name".into(),
            ..base()
        })
        .contains("not a valid interface name")
    );
    assert!(open(BridgeConfig { mtu: 10, ..base() }).contains("mtu 10"));
    assert!(
        open(BridgeConfig {
            table: "bad name".into(),
            ..base()
        })
        .contains("table name")
    );
    assert!(
        open(BridgeConfig {
            ephemeral_ports: 0..=10,
            ..base()
        })
        .contains("port range")
    );
    assert!(
        open(BridgeConfig {
            subnet: "10.0.0.0/31".parse().unwrap(),
            ..base()
        })
        .contains("too small")
    );
    assert!(
        open(BridgeConfig {
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            ..base()
        })
        .contains("not a host address")
    );
}

#[test]
fn a_corrupt_state_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bridge-shoal0.json"), "{not json").unwrap();
    let err = BridgeNetwork::open(
        BridgeConfig::default(),
        dir.path(),
        FakeLinks::new(),
        FakeFirewall::new(),
        FakeHostPorts::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("bridge-shoal0.json is corrupt"), "{err}");
}

#[test]
fn veth_names_are_stable_and_short() {
    let (host, peer) = veth_names("abc", 0);
    assert_eq!(host.len(), 15);
    assert_eq!(&host[3..], &peer[3..]);
    assert_eq!(veth_names("abc", 0), (host.clone(), peer));
    assert_ne!(veth_names("abc", 1).0, host);
    // Pinned: names must not change between builds, or a restarted daemon would not know
    // its own veths.
    assert_eq!(host, "shva2190541574b");
    assert!(valid_ifname(&host));
}

#[test]
fn the_host_network_can_be_shared_across_tasks() {
    fn send_sync<T: Send + Sync>() {}
    fn spawnable<F: std::future::Future + Send>(_: F) {}
    send_sync::<HostBridgeNetwork>();
    // Never called: it only has to compile, which proves the futures can be tokio::spawn'ed.
    let _check = |net: &HostBridgeNetwork, ns: &Netns| {
        spawnable(net.ensure());
        spawnable(net.attach("c", ns, &[]));
        spawnable(net.detach("c"));
        spawnable(net.reconcile(&[]));
        spawnable(net.teardown());
    };
}
