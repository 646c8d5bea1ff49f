//! `shoal-bench`: replicated writes per second and commit latency through the real control API
//! of one manager, with and without group commit, measured side by side in one run.
//!
//! Each mode gets a fresh daemon (the `shoal` binary beside this one) in a temporary root,
//! `swarm init`, then `--clients` concurrent clients each create configs over the unix socket
//! until `--writes` writes are done or `--seconds` have passed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use shoal_api::v1::control_client::ControlClient;
use shoal_api::v1::swarm_client::SwarmClient;
use shoal_api::v1::{Annotations, ConfigSpec, CreateConfigRequest, InitRequest};
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, Parser)]
#[command(
    name = "shoal-bench",
    about = "Replicated write throughput and latency of one manager"
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
    /// The shoal binary to benchmark (default: the one beside shoal-bench).
    #[arg(long)]
    shoal: Option<PathBuf>,
}

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

fn start_daemon(shoal: &Path, group_commit: bool) -> anyhow::Result<DaemonProcess> {
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
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", shoal.display()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if Instant::now() > deadline {
            bail!("daemon did not come up within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(DaemonProcess {
        child,
        _dir: dir,
        socket,
    })
}

async fn channel(socket: &Path) -> anyhow::Result<Channel> {
    let socket = socket.to_owned();
    Ok(Endpoint::try_from("http://shoal.local")?
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

async fn measure(args: &Args, shoal: &Path, group_commit: bool) -> anyhow::Result<Figures> {
    let daemon = start_daemon(shoal, group_commit)?;
    let channel = channel(&daemon.socket).await?;
    SwarmClient::new(channel.clone())
        .init(InitRequest {
            advertise_addr: "127.0.0.1:2377".to_owned(),
            listen_addr: "127.0.0.1:2377".to_owned(),
            ..Default::default()
        })
        .await
        .context("swarm init")?;

    let mut swarm = SwarmClient::new(channel.clone());
    let entries_before = log_index(&mut swarm).await?;
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
    let log_entries = log_index(&mut swarm).await? - entries_before;
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    if latencies.is_empty() {
        bail!("no write completed");
    }
    Ok(Figures {
        writes: latencies.len(),
        log_entries,
        elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
    })
}

async fn log_index(swarm: &mut SwarmClient<Channel>) -> anyhow::Result<u64> {
    let info = swarm
        .info(shoal_api::v1::InfoRequest {})
        .await?
        .into_inner();
    Ok(info.raft.map_or(0, |r| r.last_log_index))
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
    let shoal = match &args.shoal {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("shoal-bench has no directory")?
            .join("shoal"),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "replicated writes through the control API (CreateConfig), one manager, {} clients, {} writes per mode",
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
