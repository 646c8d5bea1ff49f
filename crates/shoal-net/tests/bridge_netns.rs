//! Privileged end-to-end tests of the bridge network against the real kernel, run entirely
//! inside network namespaces the tests create (a "host", containers, an "external" host) and
//! delete again, even on failure. Skipped unless root with `ip` and `nft` available. Nothing
//! here touches the real host's interfaces, routes or firewall: every kernel call is made from a
//! thread that has entered a test namespace (checked before anything is done), and `nft` runs
//! through `ip netns exec`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shoal_net::{
    BridgeConfig, BridgeNetwork, ContainerAttachmentRecord, Links, NetlinkLinks, Netns,
    NftFirewall, PortMapping, Protocol, SystemHostPorts, enter_on_this_thread,
};

const TIMEOUT: Duration = Duration::from_secs(3);

type RealNetwork = BridgeNetwork<NetlinkLinks, NftFirewall, SystemHostPorts>;

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) -> String {
    run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A network namespace created for the test and deleted when dropped.
struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    fn new(name: String) -> Self {
        must(&["ip", "netns", "add", &name]);
        must(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        NetnsGuard { name }
    }

    fn netns(&self) -> Netns {
        Netns::named(&self.name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        must(&all)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

fn unique_prefix() -> String {
    format!("shoal-net-test-{:08x}", rand::random::<u32>())
}

/// Runs `body` on a thread that has entered `host`, with a current-thread runtime, after
/// checking the thread really is in that namespace.
fn in_host_netns<F, Fut>(host: &NetnsGuard, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let netns = host.netns();
    let handle = std::thread::spawn(move || {
        enter_on_this_thread(&netns).expect("entering the test namespace");
        let mine = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
        let wanted = std::fs::metadata(netns.ns_path()).unwrap();
        assert_eq!(
            (mine.dev(), mine.ino()),
            (wanted.dev(), wanted.ino()),
            "refusing to run outside the test namespace"
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(body());
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

/// A TCP server in a namespace answering every connection with "NAME saw PEER: DATA".
struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    fn start(netns: Netns, name: &str, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = Arc::clone(&stop);
        let name = name.to_owned();
        let thread = std::thread::spawn(move || {
            enter_on_this_thread(&netns).expect("entering the server's namespace");
            let listener = TcpListener::bind(("0.0.0.0", port)).expect("binding the echo port");
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                        let mut buf = [0u8; 256];
                        let n = stream.read(&mut buf).unwrap_or(0);
                        let data = String::from_utf8_lossy(&buf[..n]);
                        let _ = write!(stream, "{name} saw {}: {data}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx
            .recv_timeout(TIMEOUT)
            .expect("the echo server did not start");
        EchoServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects from the calling thread's namespace, sends `msg`, returns the answer.
fn talk(addr: SocketAddrV4, msg: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(addr), TIMEOUT)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(msg.as_bytes())
        .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    Ok(answer)
}

/// Connects from inside `netns` (on a thread of its own).
fn talk_from(netns: &Netns, addr: SocketAddrV4, msg: &str) -> Result<String, String> {
    let msg = msg.to_owned();
    netns
        .run(move || talk(addr, &msg))
        .map_err(|e| e.to_string())?
}

fn v4(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

fn read_sysctl(key: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{key}"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn bridge_network_end_to_end() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let prefix = unique_prefix();
    let host = NetnsGuard::new(format!("{prefix}-h"));
    let c1 = NetnsGuard::new(format!("{prefix}-c1"));
    let c2 = NetnsGuard::new(format!("{prefix}-c2"));
    let ext = NetnsGuard::new(format!("{prefix}-x"));
    // An "external" host on a link of its own: 192.168.77.2 ↔ the host's 192.168.77.1, with
    // a route to the container subnet through the host.
    let ext_link = format!("{}x", &prefix[prefix.len() - 8..]);
    host.ip(&[
        "link", "add", &ext_link, "type", "veth", "peer", "name", "eth0", "netns", &ext.name,
    ]);
    host.ip(&["addr", "add", "192.168.77.1/24", "dev", &ext_link]);
    host.ip(&["link", "set", &ext_link, "up"]);
    ext.ip(&["addr", "add", "192.168.77.2/24", "dev", "eth0"]);
    ext.ip(&["link", "set", "eth0", "up"]);
    ext.ip(&["route", "add", "172.30.0.0/16", "via", "192.168.77.1"]);

    let state_dir = tempfile::tempdir().unwrap();
    let state_path = state_dir.path().to_owned();
    let c1_ns = c1.netns();
    let c2_ns = c2.netns();
    let ext_ns = ext.netns();
    let host_name = host.name.clone();
    let host_for_checks = NetnsInfo {
        name: host.name.clone(),
    };

    in_host_netns(&host, move || async move {
        let net = open_network_named(&host_name, &state_path);
        net.ensure().await.unwrap();
        assert_eq!(read_sysctl("net/ipv4/ip_forward"), "1");
        assert_eq!(read_sysctl("net/ipv4/conf/shoal0/route_localnet"), "1");
        let links = NetlinkLinks::new().unwrap();
        let bridge = links.get("shoal0").await.unwrap().expect("bridge created");
        assert_eq!(bridge.kind.as_deref(), Some("bridge"));
        assert_eq!(
            links.addresses("shoal0").await.unwrap(),
            vec!["172.30.0.1/16".parse().unwrap()]
        );
        net.ensure().await.unwrap();
        let table = host_for_checks
            .nft(&["list", "table", "ip", "shoal"])
            .unwrap();
        assert_eq!(table.matches("masquerade").count(), 3, "{table}");

        let _server1 = EchoServer::start(c1_ns.clone(), "c1", 80);
        let _server2 = EchoServer::start(c2_ns.clone(), "c2", 80);
        let a1 = net
            .attach(
                "c1",
                &c1_ns,
                &[
                    PortMapping::parse("8080:80").unwrap(),
                    PortMapping::parse("127.0.0.1:9090:80").unwrap(),
                    PortMapping::random(80, Protocol::Tcp),
                ],
            )
            .await
            .unwrap();
        assert_eq!(a1.ip, Ipv4Addr::new(172, 30, 0, 2));
        let random_port = a1.ports[2].host_port;
        assert!((32768..=60999).contains(&random_port));
        let a2 = net.attach("c2", &c2_ns, &[]).await.unwrap();
        assert_eq!(a2.ip, Ipv4Addr::new(172, 30, 0, 3));

        // Container side as the kernel sees it.
        let inside = host_for_checks.ip_in(&c1_ns, &["-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(inside.contains("inet 172.30.0.2/16"), "{inside}");
        let routes = host_for_checks.ip_in(&c1_ns, &["route", "show", "default"]);
        assert!(
            routes.contains("default via 172.30.0.1 dev eth0"),
            "{routes}"
        );
        let mac = host_for_checks.ip_in(&c1_ns, &["-o", "link", "show", "eth0"]);
        assert!(mac.contains("02:42:ac:1e:00:02"), "{mac}");
        let port = links.get(&a1.host_veth).await.unwrap().expect("host veth");
        assert_eq!(port.controller, Some(bridge.index));

        // The container reaches the gateway and a listener on the host side.
        let host_listener = TcpListener::bind("172.30.0.1:7000").unwrap();
        let accepted = std::thread::spawn(move || {
            host_listener.set_nonblocking(false).unwrap();
            let (mut s, peer) = host_listener.accept().unwrap();
            s.write_all(b"host").unwrap();
            peer
        });
        let answer = {
            let ns = c1_ns.clone();
            ns.run(|| {
                let mut s =
                    TcpStream::connect_timeout(&"172.30.0.1:7000".parse().unwrap(), TIMEOUT)
                        .unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
            .unwrap()
        };
        assert_eq!(answer, "host");
        assert_eq!(accepted.join().unwrap().ip().to_string(), "172.30.0.2");
        if run(&["busybox", "true"]).is_ok() {
            let out = must(&[
                "ip",
                "netns",
                "exec",
                &netns_name(&c1_ns),
                "busybox",
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                "172.30.0.1",
            ]);
            assert!(out.contains("1 packets received"), "{out}");
        }

        // Published ports from the host itself: loopback, the bridge's and another address.
        for (addr, msg) in [
            (v4([127, 0, 0, 1], 8080), "lo"),
            (v4([127, 0, 0, 1], 9090), "lo-ip"),
            (v4([127, 0, 0, 1], random_port), "lo-random"),
            (v4([172, 30, 0, 1], 8080), "gw"),
            (v4([192, 168, 77, 1], 8080), "ext-ip"),
        ] {
            let answer = talk(addr, msg).unwrap();
            assert!(answer.starts_with("c1 saw "), "{addr}: {answer}");
            assert!(answer.ends_with(&format!(": {msg}")), "{addr}: {answer}");
        }
        // Loopback sources are masqueraded to the gateway.
        assert_eq!(
            talk(v4([127, 0, 0, 1], 8080), "x").unwrap(),
            "c1 saw 172.30.0.1: x"
        );

        // From another host: the client's address is kept; 9090 is published on 127.0.0.1 only;
        // containers are not reachable directly.
        assert_eq!(
            talk_from(&ext_ns, v4([192, 168, 77, 1], 8080), "ext").unwrap(),
            "c1 saw 192.168.77.2: ext"
        );
        assert!(talk_from(&ext_ns, v4([192, 168, 77, 1], 9090), "no").is_err());
        assert!(talk_from(&ext_ns, v4([172, 30, 0, 2], 80), "direct").is_err());

        // Egress NAT: a container reaching the other host appears as the host.
        let _ext_server = EchoServer::start(ext_ns.clone(), "ext", 7001);
        assert_eq!(
            talk_from(&c1_ns, v4([192, 168, 77, 2], 7001), "out").unwrap(),
            "ext saw 192.168.77.1: out"
        );

        // Hairpin: a container reaches a published port, its own and another's.
        assert_eq!(
            talk_from(&c1_ns, v4([172, 30, 0, 1], 8080), "self").unwrap(),
            "c1 saw 172.30.0.1: self"
        );
        assert_eq!(
            talk_from(&c2_ns, v4([172, 30, 0, 1], 8080), "hairpin").unwrap(),
            "c1 saw 172.30.0.1: hairpin"
        );
        // Containers on the bridge reach each other directly.
        assert_eq!(
            talk_from(&c2_ns, v4([172, 30, 0, 2], 80), "icc").unwrap(),
            "c1 saw 172.30.0.3: icc"
        );

        // A published port is held: nobody else can listen on it, and it cannot be published
        // twice.
        assert!(TcpListener::bind("0.0.0.0:8080").is_err());
        let err = net
            .attach("c3", &c2_ns, &[PortMapping::parse("8080:81").unwrap()])
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "port 8080/tcp is already published by container c1"
        );

        // Detach: veth, address, rules, held ports and tracked connections go.
        let tracked = || {
            std::fs::read_to_string("/proc/thread-self/net/nf_conntrack")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("=172.30.0.2 "))
                .count()
        };
        assert!(tracked() > 0, "the flows above are tracked");
        net.detach("c1").await.unwrap().expect("c1 was attached");
        assert_eq!(tracked(), 0, "the detached address's flows are forgotten");
        assert!(links.get(&a1.host_veth).await.unwrap().is_none());
        assert!(
            host_for_checks
                .ip_in(&c1_ns, &["-o", "link"])
                .lines()
                .all(|l| !l.contains("eth0"))
        );
        let table = host_for_checks
            .nft(&["list", "table", "ip", "shoal"])
            .unwrap();
        assert!(!table.contains("comment \"c1\""), "{table}");
        assert!(!table.contains("dnat to"), "{table}");
        let state = std::fs::read_to_string(net.state_path()).unwrap();
        assert!(!state.contains("\"c1\""), "{state}");
        assert!(talk(v4([127, 0, 0, 1], 8080), "gone").is_err());
        drop(TcpListener::bind("0.0.0.0:8080").expect("the port is free again"));

        // A restarted daemon: c2 died meanwhile, c1 comes back.
        net.attach("c1", &c1_ns, &[PortMapping::parse("8080:80").unwrap()])
            .await
            .unwrap();
        drop(net);
        let net = open_network_named(&host_for_checks.name, &state_path);
        let report = net
            .reconcile(&[ContainerAttachmentRecord::from("c1")])
            .await
            .unwrap();
        assert_eq!(report.kept, vec!["c1".to_owned()]);
        assert_eq!(report.removed, vec!["c2".to_owned()]);
        assert!(links.get(&a2.host_veth).await.unwrap().is_none());
        let table = host_for_checks
            .nft(&["list", "table", "ip", "shoal"])
            .unwrap();
        assert_eq!(table.matches("dnat to").count(), 1, "{table}");
        assert_eq!(
            talk(v4([127, 0, 0, 1], 8080), "back").unwrap(),
            "c1 saw 172.30.0.1: back"
        );
        let again = net.reconcile(&["c1".into()]).await.unwrap();
        assert_eq!(again.kept, vec!["c1".to_owned()]);
        assert!(again.removed.is_empty() && again.deleted_links.is_empty());
        let table_again = host_for_checks
            .nft(&["list", "table", "ip", "shoal"])
            .unwrap();
        assert_eq!(table, table_again);

        // Teardown removes everything the network made.
        net.teardown().await.unwrap();
        assert!(links.get("shoal0").await.unwrap().is_none());
        assert!(
            host_for_checks
                .nft(&["list", "table", "ip", "shoal"])
                .is_err()
        );
        assert!(!net.state_path().exists());
        let left = host_for_checks.ip_in(&Netns::named(&host_for_checks.name), &["-o", "link"]);
        assert!(!left.contains("shv"), "{left}");
    });
}

/// Namespace-scoped commands usable from inside the host thread.
#[derive(Clone)]
struct NetnsInfo {
    name: String,
}

impl NetnsInfo {
    fn nft(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["ip", "netns", "exec", &self.name, "nft"];
        all.extend_from_slice(args);
        run(&all)
    }

    fn ip_in(&self, netns: &Netns, args: &[&str]) -> String {
        let path = netns.ns_path();
        let name = path.file_name().unwrap().to_str().unwrap();
        let mut all = vec!["ip", "-n", name];
        all.extend_from_slice(args);
        must(&all)
    }
}

fn netns_name(netns: &Netns) -> String {
    netns
        .ns_path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn open_network_named(host: &str, state_dir: &std::path::Path) -> RealNetwork {
    BridgeNetwork::open(
        BridgeConfig::default(),
        state_dir,
        NetlinkLinks::new().expect("netlink socket in the test namespace"),
        NftFirewall::in_named_netns(host),
        SystemHostPorts,
    )
    .unwrap()
}

#[test]
fn a_failed_attach_leaves_nothing_behind() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let prefix = unique_prefix();
    let host = NetnsGuard::new(format!("{prefix}-h"));
    let busy = NetnsGuard::new(format!("{prefix}-busy"));
    // The container already has an eth0: renaming the new veth end fails.
    busy.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    let state_dir = tempfile::tempdir().unwrap();
    let state_path = state_dir.path().to_owned();
    let busy_ns = busy.netns();
    let checks = NetnsInfo {
        name: host.name.clone(),
    };
    in_host_netns(&host, move || async move {
        let net = open_network_named(&checks.name, &state_path);
        let err = net
            .attach("c1", &busy_ns, &[PortMapping::parse("8080:80").unwrap()])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("renaming"), "{err}");
        let links = checks.ip_in(&Netns::named(&checks.name), &["-o", "link"]);
        assert!(!links.contains("shv") && !links.contains("shp"), "{links}");
        let inside = checks.ip_in(&busy_ns, &["-o", "link"]);
        assert!(!inside.contains("shp"), "{inside}");
        let table = checks.nft(&["list", "table", "ip", "shoal"]).unwrap();
        assert!(!table.contains("dnat to"), "{table}");
        assert!(net.attachments().await.is_empty());
        // The port was released and the address is free: a good attach gets both.
        let _port_free = TcpListener::bind("0.0.0.0:8080").expect("port released");
        drop(_port_free);
        let err = net
            .attach(
                "c1",
                &busy_ns,
                &[PortMapping::parse("192.0.2.1:8080:80").unwrap()],
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "host address 192.0.2.1 is not an address of this host"
        );
        net.teardown().await.unwrap();
    });
}
