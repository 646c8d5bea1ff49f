//! The local `Containers` API over the engine: lifecycle calls, logs, attach, exec, top and
//! stats.

use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use shoal_api::v1::containers_server::{Containers, ContainersServer};
use shoal_api::v1::{
    ContainerInfo, ContainerRef, ContainerStateResponse, CreateContainerRequest,
    CreateContainerResponse, ExecSpec, KillContainerRequest, ListContainersRequest,
    ListContainersResponse, LogEntry, LogsRequest, RemoveContainerRequest, RemoveContainerResponse,
    StatsResponse, StdioInput, StdioOutput, StopContainerRequest, TopProcess, TopResponse,
    stdio_input, stdio_output,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{Engine, EngineError, logs};

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

/// Processes in the container's cgroup (v1 pids or memory controller, or unified).
fn container_pids(id: &str, init_pid: i32) -> Vec<i32> {
    let candidates = [
        format!("/sys/fs/cgroup/pids/shoal/{id}/cgroup.procs"),
        format!("/sys/fs/cgroup/memory/shoal/{id}/cgroup.procs"),
        format!("/sys/fs/cgroup/shoal/{id}/cgroup.procs"),
    ];
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
            .remove(&request.container, request.force)
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
        let id = self.engine.resolve(&target.container).await?;
        let info = self.engine.inspect(&id).await?;
        let spec = info.spec.clone().unwrap_or_default();
        if spec.open_stdin || spec.tty {
            return Err(Status::unimplemented(
                "interactive attach (-i/-t) is not supported yet: run the container detached (-d) and use \"shoal logs -f\"",
            ));
        }
        let engine = self.engine.clone();
        let mut exit_rx = self
            .engine
            .exit_watch(&id)
            .await
            .ok_or_else(|| EngineError::NoSuchContainer(id.clone()))?;
        let guard = self.engine.attach_guard(&id).await;
        let (tx, rx) = mpsc::channel::<Result<StdioOutput, Status>>(256);
        tokio::spawn(async move {
            let _guard = guard;
            // `run` attaches before it starts the container: wait for the start (bounded).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let started = loop {
                match engine.inspect(&id).await {
                    Ok(info) => {
                        let state = info.state.unwrap_or_default();
                        if state.status != "created" {
                            break state.started_at;
                        }
                    }
                    // Removed before it ran.
                    Err(_) => return,
                }
                if tokio::time::Instant::now() > deadline || tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let (log_tx, mut log_rx) = mpsc::channel(256);
            let follower = tokio::spawn(stream_logs(
                engine.clone(),
                id.clone(),
                -1,
                true,
                after(started),
                log_tx,
            ));
            while let Some(entry) = log_rx.recv().await {
                let output = match entry {
                    Ok(entry) if entry.stream == "stderr" => {
                        stdio_output::Output::Stderr(entry.line)
                    }
                    Ok(entry) => stdio_output::Output::Stdout(entry.line),
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if tx
                    .send(Ok(StdioOutput {
                        output: Some(output),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if follower.await.unwrap_or(false) {
                // The code survives `--rm` removing the container in the meantime.
                let code = loop {
                    if let Some(code) = *exit_rx.borrow_and_update() {
                        break Some(code);
                    }
                    if exit_rx.changed().await.is_err() {
                        break *exit_rx.borrow();
                    }
                };
                let code = code.unwrap_or(255);
                let _ = tx
                    .send(Ok(StdioOutput {
                        output: Some(stdio_output::Output::ExitCode(code)),
                    }))
                    .await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
        if spec.cmd.is_empty() {
            return Err(Status::invalid_argument("exec needs a command"));
        }
        let (id, _shim) = self.engine.shim(&spec.container).await?;
        let mut child = exec_command(&self.engine, &id, &spec)
            .spawn()
            .map_err(|e| Status::internal(format!("cannot start the exec helper: {e}")))?;
        let mut stdin = child.stdin.take();
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| Status::internal("no stdout"))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| Status::internal("no stderr"))?;
        let (tx, rx) = mpsc::channel::<Result<StdioOutput, Status>>(256);
        tokio::spawn(async move {
            while let Some(Ok(message)) = input.next().await {
                match message.input {
                    Some(stdio_input::Input::Stdin(data)) => {
                        if let Some(pipe) = stdin.as_mut()
                            && pipe.write_all(&data).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    Some(stdio_input::Input::CloseStdin(true)) => stdin = None,
                    _ => {}
                }
            }
        });
        let out_tx = tx.clone();
        let pump_out = tokio::spawn(async move {
            let mut buffer = vec![0u8; 32 * 1024];
            while let Ok(n) = stdout.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
                let message = StdioOutput {
                    output: Some(stdio_output::Output::Stdout(buffer[..n].to_vec())),
                };
                if out_tx.send(Ok(message)).await.is_err() {
                    break;
                }
            }
        });
        let err_tx = tx.clone();
        let pump_err = tokio::spawn(async move {
            let mut buffer = vec![0u8; 32 * 1024];
            while let Ok(n) = stderr.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
                let message = StdioOutput {
                    output: Some(stdio_output::Output::Stderr(buffer[..n].to_vec())),
                };
                if err_tx.send(Ok(message)).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = pump_out.await;
            let _ = pump_err.await;
            let code = match status {
                Ok(status) => status.code().unwrap_or(255),
                Err(_) => 255,
            };
            let _ = tx
                .send(Ok(StdioOutput {
                    output: Some(stdio_output::Output::ExitCode(code)),
                }))
                .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn top(&self, request: Request<ContainerRef>) -> Reply<TopResponse> {
        let info = self.engine.inspect(&request.get_ref().container).await?;
        let state = info.state.unwrap_or_default();
        if state.status != "running" && state.status != "paused" {
            return Err(
                EngineError::Conflict(format!("container {} is not running", info.id)).into(),
            );
        }
        let processes = container_pids(&info.id, state.pid)
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

/// `shoal runtime --root R exec …`: processes join a container from a single-threaded helper,
/// never from the async daemon.
fn exec_command(engine: &Engine, id: &str, spec: &ExecSpec) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(engine.shoal_binary());
    command
        .arg("runtime")
        .arg("--root")
        .arg(engine.runtime_root())
        .arg("exec");
    if spec.tty {
        command.arg("--tty");
    }
    if !spec.working_dir.is_empty() {
        command.arg("--cwd").arg(&spec.working_dir);
    }
    for env in &spec.env {
        command.arg("--env").arg(env);
    }
    if !spec.user.is_empty() {
        command.arg("--user").arg(&spec.user);
    }
    command
        .arg(id)
        .arg("--")
        .args(&spec.cmd)
        .stdin(if spec.open_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}
