//! Multi-host test harness: a [`Cluster`] of hosts, each a network namespace on a private
//! underlay bridge running a real `shoal daemon`, with crash, restart, isolation and partition
//! controls, and a teardown that leaves nothing behind even when the test panicked.
//!
//! Layout of one cluster, named `shoaltk-<pid>-<n>` (`n` counts clusters in this process):
//!
//! - network namespace `shoaltk-<pid>-<n>`: the underlay, holding bridge `br0` and one port
//!   `v<i>` per host. It has no link to anything else, so nothing reaches the real network;
//! - network namespace `shoaltk-<pid>-<n>-<host>` per host: `lo` and `eth0` (the other end of
//!   `v<i>`) with `10.<x>.<y>.<i+1>/24`, and the nftables table `shoal_test`;
//! - `/tmp/stk-<pid base 36>-<n base 36>/<i>/`: the host's data root, socket, log and exec root.
//!   Short on purpose: shim sockets live under the exec root and a socket path holds 107 bytes;
//! - cgroup `/shoaltk-<pid>-<n>/<host>` in every hierarchy: the daemon's `--cgroup-parent`;
//! - `/run/shoaltk/shoaltk-<pid>-<n>`: the reservation of the subnet, made first and removed last.
//!
//! A run that crashed leaves these behind; the next [`Cluster::new`] removes every set whose
//! process is gone.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{CliOutput, Daemon};

/// Whether this machine can run the cluster harness: root, `ip`, `nft` and `nsenter`, and the
/// `shoal` and `shoal-shim` binaries built. Prints why not when it cannot.
pub fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the cluster harness needs root");
        return false;
    }
    for tool in ["ip", "nft", "nsenter"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            eprintln!("skipped: {tool} is missing");
            return false;
        }
    }
    let built = std::env::var_os("SHOAL_BIN").is_some()
        || std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().and_then(Path::parent).map(Path::to_owned))
            .is_some_and(|profile| {
                profile.join("shoal").exists() && profile.join("shoal-shim").exists()
            });
    if !built {
        eprintln!("skipped: shoal and shoal-shim are not built (cargo build -p shoal --bins)");
    }
    built
}

/// Start of every namespace, cgroup and reservation name the harness makes.
pub const PREFIX: &str = "shoaltk";
/// The nftables table in every host namespace.
pub const NFT_TABLE: &str = "shoal_test";
const NETNS_DIR: &str = "/run/netns";
const RESERVATIONS: &str = "/run/shoaltk";
const BRIDGE: &str = "br0";
const HOST_LINK: &str = "eth0";
/// Host directories are named by one base-36 digit, keeping socket paths short.
const MAX_HOSTS: usize = 36;
/// Bound of every cleanup wait: killing processes, emptying cgroups.
const CLEANUP_LIMIT: Duration = Duration::from_secs(10);

static NEXT_CLUSTER: AtomicU32 = AtomicU32::new(0);
/// Clusters of this process still alive, by number: a leftover carrying this process's own pid
/// (a crashed earlier run whose pid was reused) is stale unless listed here.
static LIVE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Several hosts, each running a real daemon in its own network namespace. Dropping it kills
/// every daemon and whatever else runs in its namespaces and cgroups, and removes all it made.
pub struct Cluster {
    ident: Ident,
    /// `x` and `y` of `10.x.y.0/24`.
    subnet: [u8; 2],
    hosts: Vec<Host>,
}

/// One host of a [`Cluster`].
pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    pub daemon: Daemon,
    netns: String,
    /// Its end of the underlay: the bridge port in the underlay namespace.
    port: String,
    cgroup_parent: String,
}

/// Who made a set of namespaces, directories and cgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Ident {
    pid: u32,
    n: u32,
}

impl Ident {
    /// `shoaltk-<pid>-<n>`: the underlay namespace, the cgroup and the reservation file.
    fn name(self) -> String {
        format!("{PREFIX}-{}-{}", self.pid, self.n)
    }

    fn dir(self) -> PathBuf {
        PathBuf::from(format!("/tmp/stk-{}-{}", base36(self.pid), base36(self.n)))
    }

    fn reservation(self) -> PathBuf {
        Path::new(RESERVATIONS).join(self.name())
    }

    /// Parses `shoaltk-<pid>-<n>` and `shoaltk-<pid>-<n>-<host>`.
    fn parse(name: &str) -> Option<Ident> {
        let rest = name.strip_prefix(PREFIX)?.strip_prefix('-')?;
        let mut parts = rest.splitn(3, '-');
        let pid = parts.next()?.parse().ok()?;
        let n = parts.next()?.parse().ok()?;
        Some(Ident { pid, n })
    }

    /// Whether the process that made it is gone.
    fn is_stale(self) -> bool {
        if self.pid == std::process::id() {
            return !live().contains(&self.n);
        }
        match kill(Pid::from_raw(self.pid as i32), None) {
            Ok(()) => false,
            Err(errno) => errno == nix::errno::Errno::ESRCH,
        }
    }
}

fn live() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn base36(mut value: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(value % 36) as usize]);
        value /= 36;
        if value == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base-36 digits are ASCII")
}

impl Cluster {
    /// An empty cluster: the underlay namespace with its bridge, on a `10.x.y.0/24` that no
    /// other live cluster holds and no interface of this namespace uses. Removes the leftovers
    /// of runs whose process is gone first.
    pub fn new() -> Cluster {
        assert!(
            nix::unistd::geteuid().is_root(),
            "a Cluster needs root: it makes network namespaces, nftables rules and cgroups"
        );
        let ident = Ident {
            pid: std::process::id(),
            n: NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed),
        };
        live().insert(ident.n);
        // From here on a panic drops the cluster, which tears down whatever was made.
        let mut cluster = Cluster {
            ident,
            subnet: [0, 0],
            hosts: Vec::new(),
        };
        cluster.subnet = reserve_subnet(ident);

        let dir = ident.dir();
        // A directory of this name can only be a leftover; reservations exclude live ones.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));

        let underlay = ident.name();
        run("ip", &["netns", "add", &underlay]);
        run("ip", &["-n", &underlay, "link", "set", "lo", "up"]);
        run(
            "ip",
            &["-n", &underlay, "link", "add", BRIDGE, "type", "bridge"],
        );
        run("ip", &["-n", &underlay, "link", "set", BRIDGE, "up"]);
        cluster
    }

    /// `shoaltk-<pid>-<n>`: the underlay namespace's name, the start of every host
    /// namespace's name, and the cgroup holding every host's containers.
    pub fn name(&self) -> String {
        self.ident.name()
    }

    /// The directory holding every host's roots, sockets and logs.
    pub fn dir(&self) -> PathBuf {
        self.ident.dir()
    }

    /// The underlay network, `10.x.y.0`, always a /24.
    pub fn subnet(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet[0], self.subnet[1], 0)
    }

    /// Adds a host: a namespace with `lo` and a veth into the underlay bridge, the next address
    /// of the subnet, and a daemon with its own roots, socket and cgroup parent, started with
    /// `--bridge none` (unless `daemon_args` names a bridge) and `daemon_args`. Returns once the
    /// daemon's socket answers.
    pub fn add_host(&mut self, name: &str, daemon_args: &[&str]) -> &Host {
        assert!(
            !name.is_empty()
                && name.len() <= 24
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "host name {name:?}: use 1 to 24 of a-z, 0-9 and -"
        );
        assert!(
            self.hosts.iter().all(|h| h.name != name),
            "host {name:?} exists already"
        );
        let index = self.hosts.len();
        assert!(
            index < MAX_HOSTS,
            "a cluster holds at most {MAX_HOSTS} hosts"
        );
        let digit = base36(index as u32);
        let underlay = self.ident.name();
        let netns = format!("{underlay}-{name}");
        let port = format!("v{digit}");
        let ip = Ipv4Addr::new(10, self.subnet[0], self.subnet[1], index as u8 + 1);

        run("ip", &["netns", "add", &netns]);
        // Both ends are made from inside the underlay: the root namespace never sees them.
        run(
            "ip",
            &[
                "-n", &underlay, "link", "add", &port, "type", "veth", "peer", "name", HOST_LINK,
                "netns", &netns,
            ],
        );
        run(
            "ip",
            &[
                "-n", &underlay, "link", "set", &port, "master", BRIDGE, "up",
            ],
        );
        run("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        run(
            "ip",
            &[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                HOST_LINK,
            ],
        );
        run("ip", &["-n", &netns, "link", "set", HOST_LINK, "up"]);
        install_nft_table(&netns);

        let dir = self.ident.dir().join(&digit);
        let cgroup_parent = format!("/{underlay}/{name}");
        let mut args = vec!["--cgroup-parent".to_owned(), cgroup_parent.clone()];
        if !daemon_args
            .iter()
            .any(|a| *a == "--bridge" || a.starts_with("--bridge="))
        {
            args.extend(["--bridge".to_owned(), "none".to_owned()]);
        }
        args.extend(daemon_args.iter().map(|a| a.to_string()));
        let daemon = Daemon::start_in_named_netns(&dir, &dir.join("x"), &netns, &args);
        self.hosts.push(Host {
            name: name.to_owned(),
            ip,
            daemon,
            netns,
            port,
            cgroup_parent,
        });
        &self.hosts[index]
    }

    #[track_caller]
    pub fn host(&self, name: &str) -> &Host {
        let names = self.names();
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name:?} (hosts: {names:?})"))
    }

    #[track_caller]
    pub fn host_mut(&mut self, name: &str) -> &mut Host {
        let names = self.names();
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name:?} (hosts: {names:?})"))
    }

    /// Hosts in the order they were added.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter()
    }

    fn names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.name.clone()).collect()
    }

    /// SIGKILL the host's daemon, as a crash or power loss would stop it. Its containers and
    /// shims keep running, as they would on a real machine.
    #[track_caller]
    pub fn kill9(&mut self, name: &str) {
        self.host_mut(name).daemon.kill9();
    }

    /// Starts the host's daemon again on the same roots (after [`Cluster::kill9`],
    /// [`Cluster::stop`] or a crash; a running daemon is killed first) and waits for its socket.
    #[track_caller]
    pub fn restart(&mut self, name: &str) {
        self.host_mut(name).daemon.restart();
    }

    /// SIGTERM the host's daemon and wait (at most 20 s) for it to exit.
    #[track_caller]
    pub fn stop(&mut self, name: &str) {
        let host = self.host_mut(name);
        if let Some(code) = host.daemon.terminate()
            && code != 0
        {
            eprintln!("host {name}: daemon exited with {code} after SIGTERM");
        }
    }

    /// Cuts the host off the underlay (its bridge port down, as if the cable were pulled): it
    /// keeps its address and reaches itself, but no other host, and none reaches it.
    #[track_caller]
    pub fn isolate(&mut self, name: &str) {
        let port = self.host(name).port.clone();
        run(
            "ip",
            &["-n", &self.ident.name(), "link", "set", &port, "down"],
        );
    }

    /// One-way cut: what hosts in `from` send to hosts in `to` is dropped in the senders'
    /// namespaces (table `shoal_test`), except replies within connections a host in `to`
    /// opened. So `from` cannot reach `to` (new or existing connections of its own), while `to`
    /// still reaches `from` and gets its answers: TCP cannot work with every packet of one
    /// direction gone. Call it again with the sides swapped for a symmetric cut.
    #[track_caller]
    pub fn partition(&mut self, from: &[&str], to: &[&str]) {
        for sender in from {
            let netns = self.host(sender).netns.clone();
            let targets: Vec<String> = to
                .iter()
                .filter(|t| *t != sender)
                .map(|t| self.host(t).ip.to_string())
                .collect();
            if targets.is_empty() {
                continue;
            }
            let set = format!("{{ {} }}", targets.join(", "));
            run(
                "nsenter",
                &[
                    &format!("--net={NETNS_DIR}/{netns}"),
                    "--",
                    "nft",
                    "add",
                    "rule",
                    "inet",
                    NFT_TABLE,
                    "partition",
                    "ip",
                    "daddr",
                    &set,
                    "drop",
                ],
            );
        }
    }

    /// Every underlay link up and every drop rule gone.
    pub fn heal(&mut self) {
        let underlay = self.ident.name();
        for host in &self.hosts {
            run("ip", &["-n", &underlay, "link", "set", &host.port, "up"]);
            run(
                "nsenter",
                &[
                    &format!("--net={NETNS_DIR}/{}", host.netns),
                    "--",
                    "nft",
                    "flush",
                    "chain",
                    "inet",
                    NFT_TABLE,
                    "partition",
                ],
            );
        }
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Reap the daemons we spawned before the sweep, so none is left a zombie.
        for host in &mut self.hosts {
            host.daemon.kill9();
        }
        teardown(self.ident);
        live().remove(&self.ident.n);
    }
}

impl Host {
    /// `"IP:PORT"` of this host on the underlay.
    pub fn addr(&self, port: u16) -> String {
        format!("{}:{port}", self.ip)
    }

    /// Runs `shoal -H <this host's socket> ARGS…` (from the test's namespace: the socket is a
    /// file).
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.daemon.cli(args)
    }

    /// Runs a command inside the host's network namespace (`nsenter --net`, which leaves `/sys`
    /// and the cgroup hierarchies alone, unlike `ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> CliOutput {
        Command::new("nsenter")
            .arg(format!("--net={NETNS_DIR}/{}", self.netns))
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
            .into()
    }

    /// The host's network namespace, under `/run/netns`.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The daemon's `--cgroup-parent`.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// Runs `f` on a thread inside the host's network namespace: sockets it makes belong to
    /// the host, also after they are handed back.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("{NETNS_DIR}/{}", self.netns);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let netns =
                        std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                    // Only this thread moves: setns of a network namespace is per thread.
                    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A TCP listener on this host's address (`port` 0: any free port). Connections complete
    /// in the kernel's backlog without anyone accepting them.
    pub fn listen(&self, port: u16) -> TcpListener {
        let ip = self.ip;
        self.in_netns(move || TcpListener::bind((ip, port)))
            .unwrap_or_else(|e| panic!("listen on {ip}:{port} in {}: {e}", self.netns))
    }

    /// Whether a TCP connection from this host to `addr` (`IP:PORT`) completes within
    /// `limit`.
    pub fn can_connect(&self, addr: &str, limit: Duration) -> bool {
        let addr: SocketAddr = addr
            .parse()
            .unwrap_or_else(|e| panic!("{addr:?} is not IP:PORT: {e}"));
        self.in_netns(move || TcpStream::connect_timeout(&addr, limit).is_ok())
    }
}

/// Runs a command and panics with its output unless it succeeds.
#[track_caller]
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// The host's `shoal_test` table, made with the namespace so that connection tracking follows
/// every connection from the start: a partition then tells the host's own connections (cut)
/// from the replies in connections its peers opened (kept), whenever those were opened.
fn install_nft_table(netns: &str) {
    let script = format!(
        "table inet {NFT_TABLE} {{\n\
         \tchain partition {{\n\t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\tct direction reply accept\n\
         \t\tjump partition\n\
         \t}}\n\
         }}\n"
    );
    let mut child = Command::new("nsenter")
        .arg(format!("--net={NETNS_DIR}/{netns}"))
        .args(["--", "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes())
        .expect("write the nft script");
    let output = child.wait_with_output().expect("wait for nft");
    assert!(
        output.status.success(),
        "nft in {netns} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// Picks and records a subnet no live cluster holds, under a lock shared by every process;
/// sweeps the leftovers of dead runs first, under the same lock, so no two sweeps race.
fn reserve_subnet(ident: Ident) -> [u8; 2] {
    std::fs::create_dir_all(RESERVATIONS).unwrap_or_else(|e| panic!("create {RESERVATIONS}: {e}"));
    let lock_path = Path::new(RESERVATIONS).join("lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("lock {}: {e}", lock_path.display()));

    remove_leftovers();

    let mut taken = BTreeSet::new();
    for entry in std::fs::read_dir(RESERVATIONS)
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(entry.path())
            && let Some((x, y)) = text.trim().split_once('.')
            && let (Ok(x), Ok(y)) = (x.parse::<u8>(), y.parse::<u8>())
        {
            taken.insert([x, y]);
        }
    }
    let used = root_networks();
    // 10.1.0.0 to 10.254.255.0, starting somewhere this process and cluster make likely free.
    const CHOICES: u32 = 254 * 256;
    let start = (ident.pid.wrapping_mul(7919) ^ ident.n.wrapping_mul(104_729)) % CHOICES;
    let subnet = (0..CHOICES)
        .map(|i| (start + i) % CHOICES)
        .map(|k| [(k / 256 + 1) as u8, (k % 256) as u8])
        .find(|s| !taken.contains(s) && !used.iter().any(|net| overlaps(*s, *net)))
        .unwrap_or_else(|| {
            panic!("no free 10.x.y.0/24: every one is reserved or used here ({used:?})")
        });
    let path = ident.reservation();
    std::fs::write(&path, format!("{}.{}\n", subnet[0], subnet[1]))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    subnet
}

/// IPv4 networks on the interfaces of the test's own (the real) namespace.
fn root_networks() -> Vec<(Ipv4Addr, u8)> {
    let output = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("run ip addr show");
    assert!(output.status.success(), "ip -4 -o addr show failed");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut networks = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.any(|w| w == "inet")
            && let Some((addr, len)) = words.next().and_then(|cidr| cidr.split_once('/'))
            && let (Ok(addr), Ok(len)) = (addr.parse(), len.parse())
        {
            networks.push((addr, len));
        }
    }
    networks
}

/// Whether `10.x.y.0/24` and `net` share an address.
fn overlaps(subnet: [u8; 2], (addr, len): (Ipv4Addr, u8)) -> bool {
    let len = u32::from(len.min(24));
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let ours = u32::from(Ipv4Addr::new(10, subnet[0], subnet[1], 0));
    ours & mask == u32::from(addr) & mask
}

/// Tears down every set whose maker is gone: found by its namespaces, cgroups or reservation.
fn remove_leftovers() {
    let mut found = BTreeSet::new();
    for dir in [PathBuf::from(NETNS_DIR), PathBuf::from(RESERVATIONS)]
        .into_iter()
        .chain(cgroup_mounts())
    {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Some(ident) = entry.file_name().to_str().and_then(Ident::parse) {
                found.insert(ident);
            }
        }
    }
    for ident in found.into_iter().filter(|i| i.is_stale()) {
        teardown(ident);
    }
}

/// Removes everything one cluster made. Never panics (it runs in `Drop`, maybe while
/// unwinding) and waits at most [`CLEANUP_LIMIT`] per step.
fn teardown(ident: Ident) {
    let name = ident.name();
    let dir = ident.dir();
    let namespaces: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| *n == name || n.starts_with(&format!("{name}-")))
        .collect();

    // Daemons, shims and anything a test left running in a host: by namespace, or by a
    // command line naming the cluster's directory (shims may sit in no namespace of ours).
    let inodes: Vec<(u64, u64)> = namespaces
        .iter()
        .filter_map(|n| std::fs::metadata(Path::new(NETNS_DIR).join(n)).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    kill_until_gone(|| processes_of(&inodes, &dir));

    for mount in cgroup_mounts() {
        remove_cgroup_tree(&mount.join(&name));
    }
    unmount_under(&dir);
    for netns in &namespaces {
        let _ = Command::new("ip")
            .args(["netns", "delete", netns])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(ident.reservation());
}

/// Processes inside one of `inodes` (network namespaces) or whose command line names `dir`.
fn processes_of(inodes: &[(u64, u64)], dir: &Path) -> Vec<i32> {
    let own = std::process::id() as i32;
    let dir = dir.to_string_lossy().into_owned();
    let inside = format!("{dir}/");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == own || pid == 1 {
            continue;
        }
        let in_netns = std::fs::metadata(entry.path().join("ns/net"))
            .is_ok_and(|m| inodes.contains(&(m.dev(), m.ino())));
        let names_dir = std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| {
            cmdline.split(|b| *b == 0).any(|arg| {
                let arg = String::from_utf8_lossy(arg);
                arg.contains(&inside) || arg.ends_with(&dir)
            })
        });
        if in_netns || names_dir {
            pids.push(pid);
        }
    }
    pids
}

/// SIGKILLs what `find` returns until it returns nothing, for at most [`CLEANUP_LIMIT`].
fn kill_until_gone(mut find: impl FnMut() -> Vec<i32>) {
    let deadline = Instant::now() + CLEANUP_LIMIT;
    loop {
        let pids = find();
        if pids.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("shoal-testkit: processes {pids:?} survived SIGKILL for {CLEANUP_LIMIT:?}");
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mount points of every cgroup (v1) and cgroup2 hierarchy.
fn cgroup_mounts() -> Vec<PathBuf> {
    let mut mounts = Vec::new();
    for line in mountinfo().lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = post.split(' ').next().unwrap_or("");
        if (fstype == "cgroup" || fstype == "cgroup2")
            && let Some(point) = pre.split(' ').nth(4)
        {
            let point = PathBuf::from(unescape(point));
            if !mounts.contains(&point) {
                mounts.push(point);
            }
        }
    }
    mounts
}

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = field.get(i + 1..i + 4)
            && let Ok(value) = u8::from_str_radix(octal, 8)
        {
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Thaws and empties a cgroup directory and its descendants, then removes them.
fn remove_cgroup_tree(root: &Path) {
    if !root.is_dir() {
        return;
    }
    let mut dirs = Vec::new();
    collect_dirs(root, &mut dirs);
    // A frozen task does not die of SIGKILL until thawed.
    for dir in &dirs {
        let _ = write_existing(&dir.join("freezer.state"), "THAWED");
        let _ = write_existing(&dir.join("cgroup.freeze"), "0");
    }
    kill_until_gone(|| {
        dirs.iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    });
    // Children first; a cgroup whose last task is still exiting refuses rmdir for a moment.
    let deadline = Instant::now() + CLEANUP_LIMIT;
    for dir in &dirs {
        while std::fs::remove_dir(dir).is_err() && dir.exists() {
            if Instant::now() > deadline {
                eprintln!("shoal-testkit: cannot remove cgroup {}", dir.display());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Every directory under `dir`, deepest first, `dir` last.
fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out);
        }
    }
    out.push(dir.to_owned());
}

/// Writes to a control file that must already exist (cgroupfs makes no new files).
fn write_existing(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// Detaches every mount at or under `dir`, deepest first (overlays of containers whose
/// daemon was killed).
fn unmount_under(dir: &Path) {
    // Stacked mounts on one point need one pass each; a few passes are plenty.
    for _ in 0..8 {
        let mut points: Vec<PathBuf> = mountinfo()
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .map(|p| PathBuf::from(unescape(p)))
            .filter(|p| p.starts_with(dir))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in points {
            let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idents_parse_from_every_name_they_give() {
        let ident = Ident { pid: 4242, n: 7 };
        assert_eq!(Ident::parse(&ident.name()), Some(ident));
        assert_eq!(Ident::parse("shoaltk-4242-7-host-a"), Some(ident));
        assert_eq!(Ident::parse("shoaltk-x-7"), None);
        assert_eq!(Ident::parse("other-4242-7"), None);
        assert_eq!(Ident::parse("lock"), None);
    }

    #[test]
    fn scratch_directories_keep_shim_sockets_within_a_socket_path() {
        // The largest pid Linux hands out, a cluster number of two digits, host 35.
        let ident = Ident {
            pid: 4_194_304,
            n: 1295,
        };
        let exec_root = ident.dir().join(base36(35)).join("x");
        let shim_socket = exec_root
            .join("containers")
            .join("f".repeat(64))
            .join("shim.sock");
        assert!(shim_socket.as_os_str().len() <= 107, "{shim_socket:?}");
    }

    #[test]
    fn base36_counts() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }

    #[test]
    fn overlap_is_checked_both_ways() {
        let ten_eight = (Ipv4Addr::new(10, 0, 0, 1), 8);
        assert!(overlaps([3, 4], ten_eight));
        assert!(overlaps([3, 4], (Ipv4Addr::new(10, 3, 4, 200), 32)));
        assert!(!overlaps([3, 4], (Ipv4Addr::new(10, 3, 5, 1), 24)));
        assert!(!overlaps([3, 4], (Ipv4Addr::new(192, 0, 2, 2), 24)));
        assert!(overlaps([3, 4], (Ipv4Addr::new(0, 0, 0, 0), 0)));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
