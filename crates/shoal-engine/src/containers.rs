//! The local `Containers` API over the engine: lifecycle calls, logs, attach, exec, top and
//! stats.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use shoal_api::v1::containers_server::{Containers, ContainersServer};
use shoal_api::v1::{
    ContainerInfo, ContainerRef, ContainerStateResponse, CreateContainerRequest,
    CreateContainerResponse, KillContainerRequest, ListContainersRequest, ListContainersResponse,
    LogEntry, LogsRequest, RemoveContainerRequest, RemoveContainerResponse, StatsResponse,
    StdioInput, StdioOutput, StopContainerRequest, TopProcess, TopResponse, stdio_input,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::filesystem::api as fs_api;
use crate::{Engine, EngineError, logs, sessions};
use shoal_api::v1::{
    ArchiveChunk, CommitContainerRequest, CommitContainerResponse, ContainerChangesResponse,
    ContainerPathRequest, ContainerPathStat, CopyFromChunk, CopyToChunk, CopyToResponse,
};

type Reply<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The `shoal.v1.Containers` service.
pub struct ContainersApi {
    engine: Arc<Engine>,
}

impl ContainersApi {
    pub fn server(engine: Arc<Engine>) -> ContainersServer<ContainersApi> {
        ContainersServer::new(ContainersApi { engine })
    }
}

fn state_response(info: ContainerInfo) -> Response<ContainerStateResponse> {
    Response::new(ContainerStateResponse {
        id: info.id,
        state: info.state,
    })
}

/// How often a follower looks for new log lines.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(50);

/// Streams log entries of `id` to `tx`: those already written (filtered by `keep`), then, when
/// `follow`, every new one until the container has exited and its last lines are read.
async fn stream_logs(
    engine: Arc<Engine>,
    id: String,
    tail: i64,
    follow: bool,
    keep: impl Fn(&LogEntry) -> bool + Send + 'static,
    tx: mpsc::Sender<Result<LogEntry, Status>>,
) -> bool {
    let info = match engine.inspect(&id).await {
        Ok(info) => info,
        Err(error) => {
            let _ = tx.send(Err(error.into())).await;
            return false;
        }
    };
    let live = std::path::PathBuf::from(&info.log_path);
    let mut exit_rx = engine.exit_watch(&id).await;
    let (existing, mut offset) = {
        let live = live.clone();
        tokio::task::spawn_blocking(move || logs::read_existing(&live, tail))
            .await
            .unwrap_or_default()
    };
    for entry in existing.into_iter().filter(|e| keep(e)) {
        if tx.send(Ok(entry)).await.is_err() {
            return false;
        }
    }
    if !follow {
        return true;
    }
    loop {
        let running = matches!(
            engine.inspect(&id).await.ok().and_then(|i| i.state).map(|s| s.status),
            Some(ref s) if s == "running" || s == "paused"
        );
        let (entries, next) = {
            let live = live.clone();
            tokio::task::spawn_blocking(move || logs::read_from(&live, offset))
                .await
                .unwrap_or((Vec::new(), offset))
        };
        offset = next;
        for entry in entries.into_iter().filter(|e| keep(e)) {
            if tx.send(Ok(entry)).await.is_err() {
                return false;
            }
        }
        if !running {
            return true;
        }
        match exit_rx.as_mut() {
            Some(rx) => {
                tokio::select! {
                    _ = rx.changed() => {}
                    _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                    _ = tx.closed() => return false,
                }
            }
            None => tokio::time::sleep(FOLLOW_INTERVAL).await,
        }
    }
}

fn after(start: Option<prost_types::Timestamp>) -> impl Fn(&LogEntry) -> bool {
    move |entry: &LogEntry| match (start, entry.time) {
        (Some(start), Some(time)) => (time.seconds, time.nanos) >= (start.seconds, start.nanos),
        _ => true,
    }
}

/// Processes in the container's cgroup (v1 pids or memory controller, or unified) under the
/// daemon's cgroup parent.
fn container_pids(cgroup_parent: &std::path::Path, id: &str, init_pid: i32) -> Vec<i32> {
    let relative = cgroup_parent
        .strip_prefix("/")
        .unwrap_or(cgroup_parent)
        .join(id)
        .join("cgroup.procs");
    let candidates = [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup",
    ]
    .map(|root| std::path::Path::new(root).join(&relative));
    for path in candidates {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if !pids.is_empty() {
                return pids;
            }
        }
    }
    if init_pid > 0 {
        vec![init_pid]
    } else {
        Vec::new()
    }
}

fn process_row(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let close = stat.rfind(')')?;
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ppid = fields.get(1).copied().unwrap_or("0");
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let cpu: u64 = fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    let seconds = cpu / ticks.max(1);
    let time = format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        (seconds / 60) % 60,
        seconds % 60
    );
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        })
        .unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmd = cmdline
        .split(|b| *b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    Some(vec![uid, pid.to_string(), ppid.to_owned(), time, cmd])
}

#[tonic::async_trait]
impl Containers for ContainersApi {
    async fn create(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Reply<CreateContainerResponse> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("missing container spec"))?;
        let info = self.engine.create(spec).await?;
        Ok(Response::new(CreateContainerResponse {
            id: info.id,
            warnings: Vec::new(),
        }))
    }

    async fn start(&self, request: Request<ContainerRef>) -> Reply<ContainerStateResponse> {
        Ok(state_response(
            self.engine.start(&request.get_ref().container).await?,
        ))
    }

    async fn wait(&self, request: Request<ContainerRef>) -> Reply<ContainerStateResponse> {
        Ok(state_response(
            self.engine.wait(&request.get_ref().container).await?,
        ))
    }

    async fn stop(&self, request: Request<StopContainerRequest>) -> Reply<ContainerStateResponse> {
        let request = request.into_inner();
        Ok(state_response(
            self.engine
                .stop(&request.container, request.timeout_secs)
                .await?,
        ))
    }

    async fn kill(&self, request: Request<KillContainerRequest>) -> Reply<ContainerStateResponse> {
        let request = request.into_inner();
        Ok(state_response(
            self.engine
                .kill(&request.container, &request.signal)
                .await?,
        ))
    }

    async fn restart(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Reply<ContainerStateResponse> {
        let request = request.into_inner();
        self.engine
            .stop(&request.container, request.timeout_secs)
            .await?;
        Ok(state_response(self.engine.start(&request.container).await?))
    }

    async fn pause(&self, request: Request<ContainerRef>) -> Reply<ContainerStateResponse> {
        Ok(state_response(
            self.engine
                .pause(&request.get_ref().container, true)
                .await?,
        ))
    }

    async fn unpause(&self, request: Request<ContainerRef>) -> Reply<ContainerStateResponse> {
        Ok(state_response(
            self.engine
                .pause(&request.get_ref().container, false)
                .await?,
        ))
    }

    async fn remove(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Reply<RemoveContainerResponse> {
        let request = request.into_inner();
        self.engine
            .remove_with_volumes(&request.container, request.force, request.remove_volumes)
            .await?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn list(&self, request: Request<ListContainersRequest>) -> Reply<ListContainersResponse> {
        Ok(Response::new(ListContainersResponse {
            containers: self.engine.list(request.get_ref().all).await,
        }))
    }

    async fn inspect(&self, request: Request<ContainerRef>) -> Reply<ContainerInfo> {
        Ok(Response::new(
            self.engine.inspect(&request.get_ref().container).await?,
        ))
    }

    type LogsStream = BoxStream<LogEntry>;

    async fn logs(&self, request: Request<LogsRequest>) -> Reply<Self::LogsStream> {
        let request = request.into_inner();
        let id = self.engine.resolve(&request.container).await?;
        let (tx, rx) = mpsc::channel(256);
        let engine = self.engine.clone();
        let since = request.since;
        tokio::spawn(async move {
            stream_logs(engine, id, request.tail, request.follow, after(since), tx).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type AttachStream = BoxStream<StdioOutput>;

    async fn attach(&self, request: Request<Streaming<StdioInput>>) -> Reply<Self::AttachStream> {
        let mut input = request.into_inner();
        let first = input
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("attach needs a first message"))??;
        let Some(stdio_input::Input::Attach(target)) = first.input else {
            return Err(Status::invalid_argument(
                "the first attach message must name the container",
            ));
        };
        let output = sessions::attach(self.engine.clone(), input, &target.container).await?;
        Ok(Response::new(output))
    }

    type ExecStream = BoxStream<StdioOutput>;

    async fn exec(&self, request: Request<Streaming<StdioInput>>) -> Reply<Self::ExecStream> {
        let mut input = request.into_inner();
        let first = input
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("exec needs a first message"))??;
        let Some(stdio_input::Input::Exec(spec)) = first.input else {
            return Err(Status::invalid_argument(
                "the first exec message must carry the exec spec",
            ));
        };
        Ok(Response::new(
            sessions::exec(self.engine.clone(), input, spec).await?,
        ))
    }

    async fn top(&self, request: Request<ContainerRef>) -> Reply<TopResponse> {
        let info = self.engine.inspect(&request.get_ref().container).await?;
        let state = info.state.unwrap_or_default();
        if state.status != "running" && state.status != "paused" {
            return Err(
                EngineError::Conflict(format!("container {} is not running", info.id)).into(),
            );
        }
        let processes = container_pids(&self.engine.config.cgroup_parent, &info.id, state.pid)
            .into_iter()
            .filter_map(process_row)
            .map(|fields| TopProcess { fields })
            .collect();
        Ok(Response::new(TopResponse {
            titles: ["UID", "PID", "PPID", "TIME", "CMD"]
                .map(str::to_owned)
                .to_vec(),
            processes,
        }))
    }

    async fn stats(&self, request: Request<ContainerRef>) -> Reply<StatsResponse> {
        let (id, shim) = self.engine.shim(&request.get_ref().container).await?;
        let info = self.engine.inspect(&id).await?;
        let stats = tokio::task::spawn_blocking(move || shim.stats())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(EngineError::from)?;
        Ok(Response::new(StatsResponse {
            id,
            name: info.name,
            cpu_usage_nanos: stats.cpu_usage_ns,
            system_cpu_usage_nanos: system_cpu_nanos(),
            online_cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_usage_bytes: stats.memory_usage_bytes,
            // Docker shows the host's memory when no limit is set.
            memory_limit_bytes: stats.memory_limit_bytes.unwrap_or_else(host_memory_bytes),
            pids_current: stats.pids_current,
            ..Default::default()
        }))
    }

    // Filesystem calls (`diff`, `export`, `commit`, `cp`): see `filesystem::api`.

    async fn diff(&self, request: Request<ContainerRef>) -> Reply<ContainerChangesResponse> {
        fs_api::diff(&self.engine, request.into_inner()).await
    }

    type ExportStream = BoxStream<ArchiveChunk>;

    async fn export(&self, request: Request<ContainerRef>) -> Reply<Self::ExportStream> {
        fs_api::export(&self.engine, request.into_inner()).await
    }

    async fn commit(
        &self,
        request: Request<CommitContainerRequest>,
    ) -> Reply<CommitContainerResponse> {
        fs_api::commit(&self.engine, request.into_inner()).await
    }

    async fn stat_path(&self, request: Request<ContainerPathRequest>) -> Reply<ContainerPathStat> {
        fs_api::stat_path(&self.engine, request.into_inner()).await
    }

    type CopyFromStream = BoxStream<CopyFromChunk>;

    async fn copy_from(
        &self,
        request: Request<ContainerPathRequest>,
    ) -> Reply<Self::CopyFromStream> {
        fs_api::copy_from(&self.engine, request.into_inner()).await
    }

    async fn copy_to(&self, request: Request<Streaming<CopyToChunk>>) -> Reply<CopyToResponse> {
        fs_api::copy_to(&self.engine, request.into_inner()).await
    }
}

/// Time all CPUs of the host have spent, from the `cpu` line of /proc/stat (the reference
/// `stats` divides a container's CPU time by, as Docker does).
fn system_cpu_nanos() -> u64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as u64;
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| {
            text.lines().next().map(|line| {
                line.split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse::<u64>().ok())
                    .sum::<u64>()
            })
        })
        .map_or(0, |total| total * (1_000_000_000 / ticks))
}

fn host_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}
