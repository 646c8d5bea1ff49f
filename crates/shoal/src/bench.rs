//! `shoal-bench`: replicated writes per second and commit latency through the real control API,
//! with and without group commit, measured side by side in one run.
//!
//! Each mode gets a fresh swarm of `--managers` daemons (the `shoal` binary beside this one),
//! each in a temporary root: `swarm init` on the first, `swarm join` of the others as managers
//! (on distinct loopback addresses 127.0.0.x), then `--clients` concurrent clients each create
//! configs over the leader's unix socket (or a follower's with `--via-follower`, which forwards
//! every write to the leader over mutual TLS) until `--writes` writes are done or `--seconds`
//! have passed. Every daemon is killed and its root removed when the mode ends, also on errors.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use shoal_api::v1::control_client::ControlClient;
use shoal_api::v1::swarm_client::SwarmClient;
use shoal_api::v1::{
    Annotations, ConfigSpec, CreateConfigRequest, GetClusterRequest, InfoRequest, InitRequest,
    JoinRequest, ListNodesRequest, RaftInfo,
};
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, Parser)]
#[command(
    name = "shoal-bench",
    about = "Replicated write throughput and latency through the control API"
)]
struct Args {
    /// Writes per mode.
    #[arg(long, default_value_t = 20_000)]
    writes: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Upper bound on each mode's run time.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Managers in the swarm: 1, 3 or 5.
    #[arg(long, default_value_t = 1, value_parser = parse_managers)]
    managers: usize,
    /// Send the writes to a follower, which forwards them to the leader (needs --managers 3 or 5).
    #[arg(long)]
    via_follower: bool,
    /// The shoal binary to benchmark (default: the one beside shoal-bench).
    #[arg(long)]
    shoal: Option<PathBuf>,
}

fn parse_managers(value: &str) -> Result<usize, String> {
    // Odd sizes only: an even count adds a voter without adding fault tolerance.
    match value.parse() {
        Ok(n @ (1 | 3 | 5)) => Ok(n),
        _ => Err(format!("{value:?}: expected 1, 3 or 5")),
    }
}

/// Bound on forming a swarm and on any single control call outside the measured load.
const SETUP_LIMIT: Duration = Duration::from_secs(60);
/// Bound on one write: a stuck write must fail the run, not hang it.
const WRITE_LIMIT: Duration = Duration::from_secs(30);

struct Figures {
    writes: usize,
    /// Raft log entries the writes took (each entry is one fsync'd append at most).
    log_entries: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Figures {
    fn per_second(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }
}

/// One daemon; dropping it kills the process and then removes its root (fields drop after
/// `drop`), so every exit path, panics included, cleans up.
struct DaemonProcess {
    child: Child,
    _dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon(
    shoal: &Path,
    group_commit: bool,
    extra_args: &[&str],
) -> anyhow::Result<DaemonProcess> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("shoal.sock");
    let child = Command::new(shoal)
        .arg("daemon")
        .arg("--data-root")
        .arg(dir.path().join("data"))
        .arg("--exec-root")
        .arg(dir.path().join("exec"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .arg("--log-level")
        .arg("warn")
        .arg("--raft-group-commit")
        .arg(group_commit.to_string())
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", shoal.display()))?;
    // Guard first, so that a daemon that never comes up is still killed.
    let mut daemon = DaemonProcess {
        child,
        _dir: dir,
        socket,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&daemon.socket).is_err() {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            bail!("daemon exited during start ({status})");
        }
        if Instant::now() > deadline {
            bail!("daemon did not come up within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(daemon)
}

async fn channel(socket: &Path) -> anyhow::Result<Channel> {
    let socket = socket.to_owned();
    Ok(Endpoint::try_from("http://shoal.local")?
        .connect_timeout(Duration::from_secs(5))
        .timeout(WRITE_LIMIT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?)
}

/// A free TCP port on `ip`. The daemon binds it a moment later; the small race is acceptable
/// here and avoids clashing with test suites that use the fixed port 2377 on loopback.
fn free_addr(ip: Ipv4Addr) -> anyhow::Result<String> {
    let listener = TcpListener::bind(SocketAddr::from((ip, 0)))
        .with_context(|| format!("cannot bind {ip}:0"))?;
    Ok(listener.local_addr()?.to_string())
}

/// A formed swarm: its daemons, one channel to each, and which one leads.
struct Swarm {
    /// Held only so that dropping the swarm kills every daemon.
    _daemons: Vec<DaemonProcess>,
    channels: Vec<Channel>,
    leader: usize,
}

async fn form_swarm(shoal: &Path, group_commit: bool, managers: usize) -> anyhow::Result<Swarm> {
    if managers == 1 {
        // The one-manager setup as it always was, so earlier figures stay comparable.
        let daemon = start_daemon(shoal, group_commit, &[])?;
        let channel = channel(&daemon.socket).await?;
        SwarmClient::new(channel.clone())
            .init(InitRequest {
                advertise_addr: "127.0.0.1:2377".to_owned(),
                listen_addr: "127.0.0.1:2377".to_owned(),
                ..Default::default()
            })
            .await
            .context("swarm init")?;
        return Ok(Swarm {
            _daemons: vec![daemon],
            channels: vec![channel],
            leader: 0,
        });
    }
    let mut daemons = Vec::new();
    let mut channels = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..managers {
        // 127.0.0.101.., away from the 127.0.0.2x the cluster tests use.
        addrs.push(free_addr(Ipv4Addr::new(127, 0, 0, 101 + i as u8))?);
        let daemon = start_daemon(shoal, group_commit, &["--bridge", "none"])?;
        channels.push(channel(&daemon.socket).await?);
        daemons.push(daemon);
    }
    let setup = async {
        SwarmClient::new(channels[0].clone())
            .init(InitRequest {
                advertise_addr: addrs[0].clone(),
                listen_addr: addrs[0].clone(),
                ..Default::default()
            })
            .await
            .context("swarm init")?;
        let cluster = ControlClient::new(channels[0].clone())
            .get_cluster(GetClusterRequest {})
            .await
            .context("get cluster")?
            .into_inner()
            .cluster
            .context("no cluster")?;
        let token = cluster
            .root_ca
            .and_then(|ca| ca.join_tokens)
            .map(|t| t.manager)
            .filter(|t| !t.is_empty())
            .context("no manager join token")?;
        for (i, channel) in channels.iter().enumerate().skip(1) {
            SwarmClient::new(channel.clone())
                .join(JoinRequest {
                    remote_addrs: vec![addrs[0].clone()],
                    join_token: token.clone(),
                    advertise_addr: addrs[i].clone(),
                    listen_addr: addrs[i].clone(),
                })
                .await
                .with_context(|| format!("swarm join of manager {}", i + 1))?;
        }
        wait_for_voters(&channels, managers).await
    };
    let leader = tokio::time::timeout(SETUP_LIMIT, setup)
        .await
        .context("the swarm did not form within 60 s")??;
    Ok(Swarm {
        _daemons: daemons,
        channels,
        leader,
    })
}

/// Waits until every manager counts `managers` voters and names the same leader, and the
/// leader's node list shows `managers` managers with exactly one Leader; returns the leader.
async fn wait_for_voters(channels: &[Channel], managers: usize) -> anyhow::Result<usize> {
    // Unbounded here; the caller bounds the whole setup with SETUP_LIMIT.
    loop {
        if let Some(leader) = settled_leader(channels, managers).await {
            // A failed list while the leader settles is retried like any other not-yet.
            let nodes = match ControlClient::new(channels[leader].clone())
                .list_nodes(ListNodesRequest::default())
                .await
            {
                Ok(response) => response.into_inner().nodes,
                Err(_) => Vec::new(),
            };
            let statuses: Vec<_> = nodes
                .iter()
                .filter_map(|n| n.manager_status.as_ref())
                .collect();
            if statuses.len() == managers && statuses.iter().filter(|s| s.leader).count() == 1 {
                return Ok(leader);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn settled_leader(channels: &[Channel], managers: usize) -> Option<usize> {
    let mut rafts = Vec::new();
    for channel in channels {
        rafts.push(
            raft_info(&mut SwarmClient::new(channel.clone()))
                .await
                .ok()?,
        );
    }
    let leader_id = rafts[0].leader_raft_id;
    let agreed = leader_id != 0
        && rafts
            .iter()
            .all(|r| r.voters as usize == managers && r.leader_raft_id == leader_id);
    agreed
        .then(|| rafts.iter().position(|r| r.raft_id == leader_id))
        .flatten()
}

async fn raft_info(swarm: &mut SwarmClient<Channel>) -> anyhow::Result<RaftInfo> {
    let info = swarm.info(InfoRequest {}).await?.into_inner();
    info.raft.context("no raft status")
}

async fn measure(args: &Args, shoal: &Path, group_commit: bool) -> anyhow::Result<Figures> {
    let swarm = form_swarm(shoal, group_commit, args.managers).await?;
    let target = if args.via_follower {
        (swarm.leader + 1) % swarm.channels.len()
    } else {
        swarm.leader
    };
    let channel = swarm.channels[target].clone();
    // Log entries are counted on the leader: it is where the writes are batched, also when a
    // follower forwards them.
    let mut leader = SwarmClient::new(swarm.channels[swarm.leader].clone());
    let entries_before = raft_info(&mut leader).await?.last_log_index;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut workers = Vec::new();
    for _ in 0..args.clients {
        // A few connections shared by the clients, as many CLI processes would open.
        let mut client = ControlClient::new(channel.clone());
        let next = next.clone();
        let total = args.writes;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total || Instant::now() > deadline {
                    break;
                }
                let request = CreateConfigRequest {
                    spec: Some(ConfigSpec {
                        annotations: Some(Annotations {
                            name: format!("bench-{n}"),
                            labels: Default::default(),
                        }),
                        data: vec![b'x'; 64],
                    }),
                };
                let begun = Instant::now();
                client.create_config(request).await?;
                latencies.push(begun.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    let log_entries = raft_info(&mut leader).await?.last_log_index - entries_before;
    drop(swarm);
    latencies.sort();
    if latencies.is_empty() {
        bail!("no write completed");
    }
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    Ok(Figures {
        writes: latencies.len(),
        log_entries,
        elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
    })
}

fn print(label: &str, f: &Figures) {
    println!(
        "{label:<18} {:>7} writes in {:>5.2} s = {:>7.0} writes/s   p50 {:>6.2} ms   p99 {:>6.2} ms   {:>6} log entries ({:.1} writes/entry)",
        f.writes,
        f.elapsed.as_secs_f64(),
        f.per_second(),
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3,
        f.log_entries,
        f.writes as f64 / f.log_entries.max(1) as f64,
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.via_follower && args.managers == 1 {
        bail!("--via-follower needs --managers 3 or 5: one manager has no follower");
    }
    let shoal = match &args.shoal {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("shoal-bench has no directory")?
            .join("shoal"),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let managers = match args.managers {
        1 => "one manager".to_owned(),
        n if args.via_follower => format!("{n} managers, writes sent to a follower"),
        n => format!("{n} managers, writes sent to the leader"),
    };
    println!(
        "replicated writes through the control API (CreateConfig), {managers}, {} clients, {} writes per mode",
        args.clients, args.writes
    );
    let grouped = runtime.block_on(measure(&args, &shoal, true))?;
    print("group commit on", &grouped);
    let single = runtime.block_on(measure(&args, &shoal, false))?;
    print("group commit off", &single);
    println!(
        "group commit speed-up: {:.2}x writes/s, p99 {:.2}x lower",
        grouped.per_second() / single.per_second(),
        single.p99.as_secs_f64() / grouped.p99.as_secs_f64()
    );
    Ok(())
}
