//! The fake daemon's local container service, and the container verbs driven against it.
//! A fake container "runs" its command as a script: `out:TEXT` and `err:TEXT` print a line,
//! `echo-stdin` copies stdin to stdout until it closes, `exit:N` sets the exit code,
//! `fail:MSG` ends the stream with an error and `no-exit-code` ends it without a code.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use prost_types::Timestamp;
use shoal_api::v1::{
    self, ContainerInfo, StdioOutput, containers_server::Containers, stdio_input, stdio_output,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Fake, Harness};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The local containers the fake holds, and what the verbs sent it.
#[derive(Default)]
pub(super) struct Local {
    pub(super) containers: Vec<ContainerInfo>,
    pub(super) logs: HashMap<String, Vec<v1::LogEntry>>,
    pub(super) next_id: u64,
    pub(super) created: Vec<v1::ContainerSpec>,
    pub(super) stdin_seen: Vec<u8>,
    pub(super) stdin_closed: bool,
    pub(super) execs: Vec<v1::ExecSpec>,
    pub(super) kills: Vec<(String, String)>,
    pub(super) removed: Vec<String>,
    pub(super) stats_calls: u64,
    pub(super) last_logs: Option<v1::LogsRequest>,
}

fn now() -> Option<Timestamp> {
    Some(Timestamp::from(SystemTime::now()))
}

fn ago(secs: u64) -> Option<Timestamp> {
    Some(Timestamp::from(
        SystemTime::now() - Duration::from_secs(secs),
    ))
}

impl Local {
    fn find(&self, reference: &str) -> Result<usize, Status> {
        self.containers
            .iter()
            .position(|c| {
                c.id == reference
                    || c.name == reference
                    || (reference.len() >= 3 && c.id.starts_with(reference))
            })
            .ok_or_else(|| Status::not_found(format!("No such container: {reference}")))
    }

    fn status(&self, i: usize) -> &str {
        self.containers[i]
            .state
            .as_ref()
            .map_or("", |s| s.status.as_str())
    }

    fn set_status(&mut self, i: usize, status: &str, exit_code: i32) {
        let state = self.containers[i].state.get_or_insert_default();
        state.status = status.to_owned();
        match status {
            "running" => {
                state.started_at = now();
                state.pid = 4242;
            }
            "exited" => {
                state.finished_at = now();
                state.exit_code = exit_code;
                state.pid = 0;
            }
            _ => {}
        }
    }

    /// Adds a container as if created earlier; `status` with times `hours` ago.
    pub(super) fn add(&mut self, name: &str, image: &str, command: &[&str]) -> String {
        self.next_id += 1;
        let id = format!("{:02x}", self.next_id).repeat(32);
        self.containers.push(ContainerInfo {
            id: id.clone(),
            name: name.to_owned(),
            image: image.to_owned(),
            image_id: format!("sha256:{}", "ab".repeat(32)),
            spec: Some(v1::ContainerSpec {
                image: image.to_owned(),
                name: name.to_owned(),
                cmd: command.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            state: Some(v1::ContainerState {
                status: "created".into(),
                ..Default::default()
            }),
            created: now(),
            network: Some(v1::ContainerNetwork::default()),
            log_path: String::new(),
            command: command.iter().map(|s| s.to_string()).collect(),
            mounts: Vec::new(),
        });
        id
    }
}

impl Fake {
    fn local<T>(&self, call: &'static str, f: impl FnOnce(&mut Local) -> T) -> T {
        self.with(call, |s| f(&mut s.local))
    }
}

/// Replays a script on `tx`; `input` feeds `echo-stdin`.
async fn play(
    fake: Fake,
    id: String,
    script: Vec<String>,
    mut input: Streaming<v1::StdioInput>,
    tx: mpsc::Sender<Result<StdioOutput, Status>>,
) {
    let send = |output| StdioOutput {
        output: Some(output),
    };
    let mut code = 0;
    for step in &script {
        if let Some(text) = step.strip_prefix("out:") {
            let _ = tx
                .send(Ok(send(stdio_output::Output::Stdout(
                    format!("{text}\n").into_bytes(),
                ))))
                .await;
        } else if let Some(text) = step.strip_prefix("err:") {
            let _ = tx
                .send(Ok(send(stdio_output::Output::Stderr(
                    format!("{text}\n").into_bytes(),
                ))))
                .await;
        } else if let Some(n) = step.strip_prefix("exit:") {
            code = n.parse().unwrap();
        } else if let Some(message) = step.strip_prefix("fail:") {
            let _ = tx.send(Err(Status::internal(message.to_owned()))).await;
            return;
        } else if step == "echo-stdin" {
            while let Ok(Some(message)) = input.message().await {
                match message.input {
                    Some(stdio_input::Input::Stdin(bytes)) => {
                        fake.local("stdin", |l| l.stdin_seen.extend(&bytes));
                        let _ = tx.send(Ok(send(stdio_output::Output::Stdout(bytes)))).await;
                    }
                    Some(stdio_input::Input::CloseStdin(_)) => {
                        fake.local("close_stdin", |l| l.stdin_closed = true);
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
    if !id.is_empty() {
        fake.local("exited", |l| {
            if let Ok(i) = l.find(&id) {
                l.set_status(i, "exited", code);
            }
        });
    }
    if !script.iter().any(|s| s == "no-exit-code") {
        let _ = tx
            .send(Ok(send(stdio_output::Output::ExitCode(code))))
            .await;
    }
}

fn state_response(l: &Local, i: usize) -> Response<v1::ContainerStateResponse> {
    Response::new(v1::ContainerStateResponse {
        id: l.containers[i].id.clone(),
        state: l.containers[i].state.clone(),
    })
}

#[tonic::async_trait]
impl Containers for Fake {
    async fn create(
        &self,
        req: Request<v1::CreateContainerRequest>,
    ) -> Result<Response<v1::CreateContainerResponse>, Status> {
        let spec = req.into_inner().spec.unwrap_or_default();
        self.local("Create", |l| {
            if spec.image == "missing:latest" {
                return Err(Status::not_found("No such image: missing:latest"));
            }
            let name = if spec.name.is_empty() {
                format!("fake_{}", l.next_id + 1)
            } else {
                spec.name.clone()
            };
            let cmd: Vec<&str> = spec.cmd.iter().map(String::as_str).collect();
            let id = l.add(&name, &spec.image, &cmd);
            let i = l.find(&id)?;
            l.containers[i].spec = Some(spec.clone());
            l.created.push(spec.clone());
            let warnings = if spec.labels.contains_key("warn") {
                vec!["your kernel does not support swap limit capabilities".to_owned()]
            } else {
                vec![]
            };
            Ok(Response::new(v1::CreateContainerResponse { id, warnings }))
        })
    }

    async fn start(
        &self,
        req: Request<v1::ContainerRef>,
    ) -> Result<Response<v1::ContainerStateResponse>, Status> {
        self.local("Start", |l| {
            let i = l.find(&req.into_inner().container)?;
            if l.status(i) == "running" {
                return Err(Status::failed_precondition("container is already running"));
            }
            l.set_status(i, "running", 0);
            Ok(state_response(l, i))
        })
    }

    async fn wait(
        &self,
        req: Request<v1::ContainerRef>,
    ) -> Result<Response<v1::ContainerStateResponse>, Status> {
        let reference = req.into_inner().container;
        for _ in 0..500 {
            let done = self.local("Wait", |l| {
                let i = l.find(&reference)?;
                Ok::<_, Status>((l.status(i) != "running").then(|| state_response(l, i)))
            })?;
            if let Some(response) = done {
                return Ok(response);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(Status::deadline_exceeded("still running"))
    }

    async fn stop(
        &self,
        req: Request<v1::StopContainerRequest>,
    ) -> Result<Response<v1::ContainerStateResponse>, Status> {
        self.local("Stop", |l| {
            let i = l.find(&req.into_inner().container)?;
            l.set_status(i, "exited", 0);
            Ok(state_response(l, i))
        })
    }

    async fn kill(
        &self,
        req: Request<v1::KillContainerRequest>,
    ) -> Result<Response<v1::ContainerStateResponse>, Status> {
        self.local("Kill", |l| {
            let req = req.into_inner();
            let i = l.find(&req.container)?;
            if l.status(i) != "running" {
                return Err(Status::failed_precondition(format!(
                    "container {} is not running",
                    req.container
                )));
            }
            l.kills.push((req.container, req.signal));
            l.set_status(i, "exited", 137);
            Ok(state_response(l, i))
        })
    }

    async fn restart(
        &self,
        req: Request<v1::StopContainerRequest>,
    ) -> Result<Response<v1::ContainerStateResponse>, Status> {
        self.local("Restart", |l| {
            let i = l.find(&req.into_inner().container)?;
            l.set_status(i, "running", 0);
            Ok(state_response(l, i))
        })
    }

    async fn pause(
        &self,
        req: Request<v1::ContainerRef>,
    ) -> Result<Response<v1::ContainerStateResponse>, Status> {
        self.local("Pause", |l| {
            let i = l.find(&req.into_inner().container)?;
            l.set_status(i, "paused", 0);
            Ok(state_response(l, i))
        })
    }

    async fn unpause(
        &self,
        req: Request<v1::ContainerRef>,
    ) -> Result<Response<v1::ContainerStateResponse>, Status> {
        self.local("Unpause", |l| {
            let i = l.find(&req.into_inner().container)?;
            l.containers[i].state.get_or_insert_default().status = "running".into();
            Ok(state_response(l, i))
        })
    }

    async fn remove(
        &self,
        req: Request<v1::RemoveContainerRequest>,
    ) -> Result<Response<v1::RemoveContainerResponse>, Status> {
        self.local("Remove", |l| {
            let req = req.into_inner();
            let i = l.find(&req.container)?;
            if l.status(i) == "running" && !req.force {
                return Err(Status::failed_precondition(format!(
                    "cannot remove running container {}: stop it first or use --force",
                    req.container
                )));
            }
            let removed = l.containers.remove(i);
            l.removed.push(removed.name);
            Ok(Response::new(v1::RemoveContainerResponse {}))
        })
    }

    async fn list(
        &self,
        req: Request<v1::ListContainersRequest>,
    ) -> Result<Response<v1::ListContainersResponse>, Status> {
        // Ignores `all` on purpose: the client must still show only running containers.
        let _ = req;
        self.local("List", |l| {
            Ok(Response::new(v1::ListContainersResponse {
                containers: l.containers.clone(),
            }))
        })
    }

    async fn inspect(
        &self,
        req: Request<v1::ContainerRef>,
    ) -> Result<Response<ContainerInfo>, Status> {
        self.local("Inspect", |l| {
            let i = l.find(&req.into_inner().container)?;
            Ok(Response::new(l.containers[i].clone()))
        })
    }

    type LogsStream = BoxStream<v1::LogEntry>;

    async fn logs(
        &self,
        req: Request<v1::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = req.into_inner();
        let (entries, broken) = self.local("Logs", |l| {
            let i = l.find(&req.container)?;
            l.last_logs = Some(req.clone());
            let name = l.containers[i].name.clone();
            let all = l.logs.get(&name).cloned().unwrap_or_default();
            let skip = match usize::try_from(req.tail) {
                Ok(n) => all.len().saturating_sub(n),
                Err(_) => 0,
            };
            Ok::<_, Status>((all[skip..].to_vec(), name == "broken"))
        })?;
        let mut items: Vec<Result<v1::LogEntry, Status>> = entries.into_iter().map(Ok).collect();
        if broken {
            items.push(Err(Status::data_loss("log file truncated")));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    type AttachStream = BoxStream<StdioOutput>;

    async fn attach(
        &self,
        req: Request<Streaming<v1::StdioInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut input = req.into_inner();
        let first = input.message().await?.and_then(|m| m.input);
        let Some(stdio_input::Input::Attach(reference)) = first else {
            return Err(Status::invalid_argument(
                "the first message must name the container",
            ));
        };
        let (id, script) = self.local("Attach", |l| {
            let i = l.find(&reference.container)?;
            let c = &l.containers[i];
            Ok::<_, Status>((c.id.clone(), c.spec.clone().unwrap_or_default().cmd))
        })?;
        let (tx, rx) = mpsc::channel(16);
        let fake = self.clone();
        tokio::spawn(async move {
            // The process starts when the container does.
            for _ in 0..500 {
                let running = {
                    let s = fake.0.lock().unwrap();
                    s.local
                        .find(&id)
                        .is_ok_and(|i| s.local.status(i) == "running")
                };
                if running {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            play(fake, id, script, input, tx).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ExecStream = BoxStream<StdioOutput>;

    async fn exec(
        &self,
        req: Request<Streaming<v1::StdioInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut input = req.into_inner();
        let first = input.message().await?.and_then(|m| m.input);
        let Some(stdio_input::Input::Exec(spec)) = first else {
            return Err(Status::invalid_argument(
                "the first message must carry the exec spec",
            ));
        };
        self.local("Exec", |l| {
            let i = l.find(&spec.container)?;
            if l.status(i) != "running" {
                return Err(Status::failed_precondition(format!(
                    "container {} is not running",
                    spec.container
                )));
            }
            l.execs.push(spec.clone());
            Ok(())
        })?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(play(self.clone(), String::new(), spec.cmd, input, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn top(
        &self,
        req: Request<v1::ContainerRef>,
    ) -> Result<Response<v1::TopResponse>, Status> {
        self.local("Top", |l| {
            l.find(&req.into_inner().container)?;
            let process = |fields: &[&str]| v1::TopProcess {
                fields: fields.iter().map(|f| f.to_string()).collect(),
            };
            Ok(Response::new(v1::TopResponse {
                titles: vec!["UID".into(), "PID".into(), "CMD".into()],
                processes: vec![
                    process(&["root", "4242", "nginx: master process"]),
                    process(&["nginx", "4250", "nginx: worker process"]),
                ],
            }))
        })
    }

    async fn stats(
        &self,
        req: Request<v1::ContainerRef>,
    ) -> Result<Response<v1::StatsResponse>, Status> {
        self.local("Stats", |l| {
            let i = l.find(&req.into_inner().container)?;
            l.stats_calls += 1;
            let n = l.stats_calls;
            let c = &l.containers[i];
            Ok(Response::new(v1::StatsResponse {
                id: c.id.clone(),
                name: c.name.clone(),
                cpu_usage_nanos: n * 200_000_000,
                system_cpu_usage_nanos: n * 1_000_000_000,
                online_cpus: 2,
                memory_usage_bytes: 1_572_864,
                memory_limit_bytes: 2_087_354_368,
                pids_current: 2,
                net_rx_bytes: 1234,
                net_tx_bytes: 648,
                block_read_bytes: 4_260_000,
                block_write_bytes: 0,
            }))
        })
    }

    // The filesystem calls are faked in `filesystem.rs`.

    async fn diff(
        &self,
        req: Request<v1::ContainerRef>,
    ) -> Result<Response<v1::ContainerChangesResponse>, Status> {
        super::filesystem::diff(self, req.into_inner())
    }

    type ExportStream = BoxStream<v1::ArchiveChunk>;

    async fn export(
        &self,
        req: Request<v1::ContainerRef>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        super::filesystem::export(self, req.into_inner())
    }

    async fn commit(
        &self,
        req: Request<v1::CommitContainerRequest>,
    ) -> Result<Response<v1::CommitContainerResponse>, Status> {
        super::filesystem::commit(self, req.into_inner())
    }

    async fn stat_path(
        &self,
        req: Request<v1::ContainerPathRequest>,
    ) -> Result<Response<v1::ContainerPathStat>, Status> {
        super::filesystem::stat_path(self, req.into_inner())
    }

    type CopyFromStream = BoxStream<v1::CopyFromChunk>;

    async fn copy_from(
        &self,
        req: Request<v1::ContainerPathRequest>,
    ) -> Result<Response<Self::CopyFromStream>, Status> {
        super::filesystem::copy_from(self, req.into_inner())
    }

    async fn copy_to(
        &self,
        req: Request<Streaming<v1::CopyToChunk>>,
    ) -> Result<Response<v1::CopyToResponse>, Status> {
        super::filesystem::copy_to(self, req.into_inner()).await
    }
}

// Tests -------------------------------------------------------------------------------------

/// The fake's view of one container, by name.
fn container(h: &Harness, name: &str) -> Option<ContainerInfo> {
    let state = h.fake.0.lock().unwrap();
    state
        .local
        .containers
        .iter()
        .find(|c| c.name == name)
        .cloned()
}

#[tokio::test]
async fn run_detached_prints_the_id() {
    let h = Harness::start().await;
    let out = h
        .ok(&[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            "8080:80",
            "-m",
            "64m",
            "nginx:1.25",
        ])
        .await;
    let web = container(&h, "web").unwrap();
    assert_eq!(out, format!("{}\n", web.id));
    assert_eq!(web.id.len(), 64);
    assert_eq!(web.state.unwrap().status, "running");
    let spec = web.spec.unwrap();
    assert_eq!(spec.ports[0].host_port, 8080);
    assert_eq!(spec.memory_bytes, 64 << 20);
    assert!(h.fake.calls().ends_with(&["Create", "Start"]));
}

#[tokio::test]
async fn run_attached_relays_output_and_exit_code() {
    let h = Harness::start().await;
    let outcome = h
        .run_io(
            &[
                "run",
                "--rm",
                "--name",
                "job",
                "alpine",
                "out:hello",
                "err:oops",
                "exit:3",
            ],
            b"",
            false,
            false,
        )
        .await;
    assert_eq!(outcome.out(), "hello\n");
    assert_eq!(outcome.err(), "oops\n");
    assert_eq!(outcome.result.unwrap(), 3);
    // Attached before it started, so nothing was lost; removed after (--rm).
    let calls = h.fake.calls();
    let at = |name| calls.iter().position(|c| *c == name).unwrap();
    assert!(at("Attach") < at("Start"), "{calls:?}");
    assert!(container(&h, "job").is_none());
    assert_eq!(h.fake.0.lock().unwrap().local.removed, ["job"]);

    // A zero exit is a zero status; the container stays without --rm.
    let outcome = h
        .run_io(
            &["run", "--name", "ok", "alpine", "out:fine"],
            b"",
            false,
            false,
        )
        .await;
    assert_eq!(
        (outcome.out(), outcome.result.unwrap()),
        ("fine\n".into(), 0)
    );
    assert_eq!(container(&h, "ok").unwrap().state.unwrap().status, "exited");
}

#[tokio::test]
async fn run_interactive_forwards_stdin() {
    let h = Harness::start().await;
    let outcome = h
        .run_io(
            &["run", "-i", "alpine", "echo-stdin", "exit:0"],
            b"typed\n",
            false,
            false,
        )
        .await;
    assert_eq!(outcome.out(), "typed\n");
    assert_eq!(outcome.result.unwrap(), 0);
    let local = &h.fake.0.lock().unwrap().local;
    assert_eq!(local.stdin_seen, b"typed\n");
    assert!(local.stdin_closed);
    assert!(local.created[0].open_stdin && !local.created[0].tty);
}

#[tokio::test]
async fn run_edge_cases() {
    let h = Harness::start().await;
    // -it needs a terminal on stdin; nothing is sent without one.
    let outcome = h.run_io(&["run", "-it", "alpine"], b"", false, false).await;
    assert_eq!(outcome.error(), "the input device is not a TTY");
    assert!(h.fake.calls().is_empty());
    // A daemon refusal is one line.
    let outcome = h
        .run_io(&["run", "missing:latest"], b"", false, false)
        .await;
    assert_eq!(outcome.error(), "No such image: missing:latest");
    // A stream the daemon ends with an error is that error, on one line.
    let outcome = h
        .run_io(
            &["run", "alpine", "out:partial", "fail:runtime went away"],
            b"",
            false,
            false,
        )
        .await;
    assert_eq!(outcome.out(), "partial\n");
    assert_eq!(outcome.error(), "runtime went away");
    // No code on the stream: Wait supplies it.
    let outcome = h
        .run_io(
            &["run", "alpine", "exit:5", "no-exit-code"],
            b"",
            false,
            false,
        )
        .await;
    assert_eq!(outcome.result.unwrap(), 5);
    // Warnings go to stderr; -d still prints only the ID.
    let outcome = h
        .run_io(&["run", "-d", "-l", "warn", "alpine"], b"", false, false)
        .await;
    assert_eq!(
        outcome.err(),
        "WARNING: your kernel does not support swap limit capabilities\n"
    );
    assert_eq!(outcome.out().trim().len(), 64);
    // create prints the ID and starts nothing.
    let id = h.ok(&["create", "--name", "idle", "alpine"]).await;
    assert_eq!(container(&h, "idle").unwrap().id, id.trim());
    assert_eq!(
        container(&h, "idle").unwrap().state.unwrap().status,
        "created"
    );
}

#[tokio::test]
async fn start_attach_and_exec_exit_codes() {
    let h = Harness::start().await;
    h.ok(&[
        "create",
        "--name",
        "job",
        "alpine",
        "out:from job",
        "exit:2",
    ])
    .await;
    let outcome = h.run_io(&["start", "-a", "job"], b"", false, false).await;
    assert_eq!(
        (outcome.out(), outcome.result.unwrap()),
        ("from job\n".into(), 2)
    );
    let outcome = h
        .run_io(&["start", "-a", "job", "other"], b"", false, false)
        .await;
    assert_eq!(
        outcome.error(),
        "you cannot start and attach multiple containers at once"
    );

    h.ok(&["run", "-d", "--name", "web", "nginx"]).await;
    let outcome = h
        .run_io(
            &[
                "exec", "-e", "A=1", "-u", "root", "-w", "/tmp", "web", "out:ran", "-t", "exit:7",
            ],
            b"",
            false,
            false,
        )
        .await;
    assert_eq!(outcome.out(), "ran\n");
    assert_eq!(outcome.result.unwrap(), 7);
    let outcome = h
        .run_io(&["exec", "-i", "web", "echo-stdin"], b"abc", false, false)
        .await;
    assert_eq!((outcome.out(), outcome.result.unwrap()), ("abc".into(), 0));
    let spec = h.fake.0.lock().unwrap().local.execs[0].clone();
    // Flags after the container are the command's, as in Docker.
    assert_eq!(spec.cmd, ["out:ran", "-t", "exit:7"]);
    assert!(!spec.tty);
    assert_eq!(spec.env, ["A=1"]);
    assert_eq!(
        (spec.user.as_str(), spec.working_dir.as_str()),
        ("root", "/tmp")
    );
    let outcome = h.run_io(&["exec", "job", "true"], b"", false, false).await;
    assert_eq!(outcome.error(), "container job is not running");
}

#[tokio::test]
async fn ps_tables_and_quiet() {
    let h = Harness::start().await;
    {
        let local = &mut h.fake.0.lock().unwrap().local;
        let web = local.add(
            "web",
            "nginx:1.25",
            &["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"],
        );
        let db = local.add("db", "postgres:16", &["postgres"]);
        let old = local.add("old", "alpine", &["sh"]);
        local.add("fresh", "alpine", &["sh"]);
        for c in &mut local.containers {
            c.created = ago(5 * 3600);
        }
        let i = local.find(&web).unwrap();
        let c = &mut local.containers[i];
        c.created = ago(4 * 3600);
        c.state = Some(v1::ContainerState {
            status: "running".into(),
            started_at: ago(3 * 3600),
            ..Default::default()
        });
        c.network = Some(v1::ContainerNetwork {
            ports: vec![v1::PublishedPort {
                host_ip: "0.0.0.0".into(),
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
            }],
            ..Default::default()
        });
        let i = local.find(&db).unwrap();
        local.containers[i].state = Some(v1::ContainerState {
            status: "paused".into(),
            started_at: ago(2 * 3600),
            ..Default::default()
        });
        let i = local.find(&old).unwrap();
        local.containers[i].state = Some(v1::ContainerState {
            status: "exited".into(),
            exit_code: 137,
            started_at: ago(3 * 3600),
            finished_at: ago(2 * 3600),
            ..Default::default()
        });
    }
    assert_eq!(
        h.ok(&["ps"]).await,
        "\
CONTAINER ID   IMAGE         COMMAND                  CREATED       STATUS                PORTS                  NAMES
010101010101   nginx:1.25    \"/docker-entrypoint.…\"   4 hours ago   Up 3 hours            0.0.0.0:8080->80/tcp   web
020202020202   postgres:16   \"postgres\"               5 hours ago   Up 2 hours (Paused)                          db
"
    );
    let all = h.ok(&["ps", "-a"]).await;
    assert_eq!(all.lines().count(), 5, "{all}");
    assert!(all.contains("   Exited (137) 2 hours ago   "), "{all}");
    assert!(all.contains("   Created   "), "{all}");
    assert_eq!(h.ok(&["ps", "-q"]).await, "010101010101\n020202020202\n");
    let full = h.ok(&["ps", "-aq", "--no-trunc"]).await;
    assert_eq!(full.lines().count(), 4);
    assert!(full.lines().all(|l| l.len() == 64));
    let wide = h.ok(&["ps", "--no-trunc"]).await;
    assert!(
        wide.contains("\"/docker-entrypoint.sh nginx -g daemon off;\""),
        "{wide}"
    );
    let json = h.ok(&["ps", "--format", "json"]).await;
    let row: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(row["Names"], "web");
    assert_eq!(row["Ports"], "0.0.0.0:8080->80/tcp");
    assert_eq!(row["Status"], "Up 3 hours");
    assert_eq!(h.ok(&["ps", "-l", "-q"]).await.lines().count(), 1);
    assert_eq!(
        h.ok(&["container", "ls", "-n", "3", "-q"])
            .await
            .lines()
            .count(),
        3
    );
}

#[tokio::test]
async fn logs_tail_timestamps_and_streams() {
    let h = Harness::start().await;
    {
        let local = &mut h.fake.0.lock().unwrap().local;
        local.add("web", "nginx", &["nginx"]);
        local.add("broken", "nginx", &["nginx"]);
        let entry = |stream: &str, line: &str, second: i64| v1::LogEntry {
            stream: stream.into(),
            line: line.as_bytes().to_vec(),
            time: Some(Timestamp {
                seconds: 1_700_000_000 + second,
                nanos: 500,
            }),
        };
        local.logs.insert(
            "web".into(),
            vec![
                entry("stdout", "one\n", 0),
                entry("stdout", "two\n", 1),
                entry("stderr", "warn three\n", 2),
                entry("stdout", "four", 3),
            ],
        );
        local
            .logs
            .insert("broken".into(), vec![entry("stdout", "first\n", 0)]);
    }
    let outcome = h.run_io(&["logs", "web"], b"", false, false).await;
    assert_eq!(outcome.out(), "one\ntwo\nfour\n");
    assert_eq!(outcome.err(), "warn three\n");
    let outcome = h
        .run_io(&["logs", "--tail", "2", "-t", "web"], b"", false, false)
        .await;
    assert_eq!(outcome.out(), "2023-11-14T22:13:23.000000500Z four\n");
    assert_eq!(outcome.err(), "2023-11-14T22:13:22.000000500Z warn three\n");
    let req = h.fake.0.lock().unwrap().local.last_logs.clone().unwrap();
    assert_eq!((req.tail, req.timestamps, req.follow), (2, true, false));
    h.ok(&["logs", "-f", "-n", "all", "--since", "10m", "web"])
        .await;
    let req = h.fake.0.lock().unwrap().local.last_logs.clone().unwrap();
    assert_eq!((req.tail, req.follow), (-1, true));
    assert!(req.since.is_some());

    let outcome = h.run_io(&["logs", "broken"], b"", false, false).await;
    assert_eq!(outcome.out(), "first\n");
    assert_eq!(outcome.error(), "log file truncated");
    let outcome = h.run_io(&["logs", "ghost"], b"", false, false).await;
    assert_eq!(outcome.error(), "No such container: ghost");
}

#[tokio::test]
async fn lifecycle_verbs_print_references_and_collect_failures() {
    let h = Harness::start().await;
    h.ok(&["run", "-d", "--name", "web", "nginx"]).await;
    h.ok(&["run", "-d", "--name", "api", "nginx"]).await;
    h.ok(&["create", "--name", "idle", "alpine"]).await;

    assert_eq!(h.ok(&["pause", "web"]).await, "web\n");
    assert_eq!(h.ok(&["unpause", "web"]).await, "web\n");
    assert_eq!(h.ok(&["kill", "-s", "HUP", "web"]).await, "web\n");
    assert_eq!(
        h.fake.0.lock().unwrap().local.kills,
        [("web".to_owned(), "HUP".to_owned())]
    );
    assert_eq!(h.ok(&["restart", "-t", "3", "web"]).await, "web\n");
    assert_eq!(h.ok(&["stop", "web"]).await, "web\n");
    assert_eq!(h.ok(&["start", "web", "idle"]).await, "web\nidle\n");

    // rm: the running one needs -f; the missing one fails; the rest are printed.
    let (out, result) = h.run(&["rm", "idle", "ghost", "api"]).await;
    assert_eq!(out, "");
    let err = result.unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot remove running container idle: stop it first or use --force; \
         No such container: ghost; \
         cannot remove running container api: stop it first or use --force"
    );
    assert_eq!(err.exit_code(), 1);
    let (out, result) = h.run(&["rm", "-f", "idle", "ghost"]).await;
    assert_eq!(out, "idle\n");
    assert_eq!(result.unwrap_err().to_string(), "No such container: ghost");
    assert_eq!(h.ok(&["container", "rm", "-fv", "api"]).await, "api\n");

    h.ok(&["stop", "web"]).await;
    assert_eq!(h.ok(&["wait", "web"]).await, "0\n");
}

#[tokio::test]
async fn inspect_has_docker_keys() {
    let h = Harness::start().await;
    h.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "127.0.0.1:8080:80",
        "-e",
        "A=1",
        "--restart",
        "always",
        "nginx:1.25",
        "nginx",
        "-g",
        "daemon off;",
    ])
    .await;
    let (out, result) = h.run(&["inspect", "web", "ghost"]).await;
    assert_eq!(result.unwrap_err().to_string(), "No such container: ghost");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let c = &v.as_array().unwrap()[0];
    let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    for key in [
        "Id",
        "Created",
        "State",
        "Image",
        "Name",
        "Config",
        "HostConfig",
        "NetworkSettings",
        "LogPath",
        "Mounts",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    assert_eq!(c["Name"], "/web");
    assert_eq!(c["State"]["Status"], "running");
    assert_eq!(c["State"]["Running"], true);
    for key in [
        "Paused",
        "Pid",
        "ExitCode",
        "OOMKilled",
        "StartedAt",
        "FinishedAt",
        "Error",
    ] {
        assert!(c["State"].get(key).is_some(), "State.{key}");
    }
    assert_eq!(c["Config"]["Image"], "nginx:1.25");
    assert_eq!(c["Config"]["Cmd"][2], "daemon off;");
    assert_eq!(c["Config"]["Env"][0], "A=1");
    for key in [
        "Entrypoint",
        "WorkingDir",
        "User",
        "Hostname",
        "Tty",
        "OpenStdin",
        "Labels",
    ] {
        assert!(c["Config"].get(key).is_some(), "Config.{key}");
    }
    assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "always");
    assert_eq!(
        c["HostConfig"]["PortBindings"]["80/tcp"][0]["HostIp"],
        "127.0.0.1"
    );
    for key in [
        "Memory",
        "MemorySwap",
        "NanoCpus",
        "PidsLimit",
        "NetworkMode",
        "AutoRemove",
        "ReadonlyRootfs",
        "Binds",
        "SecurityOpt",
    ] {
        assert!(c["HostConfig"].get(key).is_some(), "HostConfig.{key}");
    }
    for key in ["IPAddress", "Gateway", "MacAddress", "Ports"] {
        assert!(
            c["NetworkSettings"].get(key).is_some(),
            "NetworkSettings.{key}"
        );
    }
}

#[tokio::test]
async fn top_port_and_stats() {
    let h = Harness::start().await;
    h.ok(&["run", "-d", "--name", "web", "nginx"]).await;
    {
        let local = &mut h.fake.0.lock().unwrap().local;
        local.containers[0].network = Some(v1::ContainerNetwork {
            ports: vec![
                v1::PublishedPort {
                    host_ip: "0.0.0.0".into(),
                    host_port: 8080,
                    container_port: 80,
                    protocol: "tcp".into(),
                },
                v1::PublishedPort {
                    host_ip: "::".into(),
                    host_port: 8080,
                    container_port: 80,
                    protocol: "tcp".into(),
                },
            ],
            ..Default::default()
        });
    }
    assert_eq!(
        h.ok(&["top", "web"]).await,
        "\
UID       PID       CMD
root      4242      nginx: master process
nginx     4250      nginx: worker process
"
    );
    assert_eq!(
        h.ok(&["port", "web"]).await,
        "80/tcp -> 0.0.0.0:8080\n80/tcp -> [::]:8080\n"
    );
    assert_eq!(
        h.ok(&["port", "web", "80/tcp"]).await,
        "0.0.0.0:8080\n[::]:8080\n"
    );
    let (_, result) = h.run(&["port", "web", "81"]).await;
    assert_eq!(
        result.unwrap_err().to_string(),
        "no public port '81/tcp' published for web"
    );

    let stats = h.ok(&["stats", "--no-stream"]).await;
    let id = &container(&h, "web").unwrap().id[..12];
    assert_eq!(
        stats,
        format!(
            "\
CONTAINER ID   NAME      CPU %     MEM USAGE / LIMIT   MEM %     NET I/O         BLOCK I/O     PIDS
{id}   web       40.00%    1.5MiB / 1.944GiB   0.08%     1.23kB / 648B   4.26MB / 0B   2
"
        )
    );
    let (_, result) = h.run(&["stats", "--no-stream", "ghost"]).await;
    assert_eq!(result.unwrap_err().to_string(), "No such container: ghost");
}

#[tokio::test]
async fn run_it_detach_keys_leave_the_container_running() {
    let h = Harness::start().await;
    // Ctrl-P Ctrl-Q typed on the terminal: the session ends, the container is neither waited
    // for nor removed (even with --rm), and its stdin stays open.
    let outcome = h
        .run_io(
            &[
                "run",
                "-it",
                "--rm",
                "--name",
                "shell",
                "alpine",
                "echo-stdin",
            ],
            b"ls\x10\x11",
            true,
            false,
        )
        .await;
    assert_eq!(outcome.err(), "read escape sequence\n");
    assert_eq!(outcome.result.unwrap(), 0);
    {
        let local = &h.fake.0.lock().unwrap().local;
        assert!(local.removed.is_empty());
        assert!(!local.stdin_closed);
        assert!(local.created[0].tty && local.created[0].open_stdin);
    }
    // Keys of one's own; the default ones are then plain input.
    let outcome = h
        .run_io(
            &[
                "run",
                "-it",
                "--detach-keys",
                "ctrl-a,d",
                "alpine",
                "echo-stdin",
            ],
            b"\x10\x11\x01d",
            true,
            false,
        )
        .await;
    assert_eq!(outcome.err(), "read escape sequence\n");
    assert_eq!(outcome.result.unwrap(), 0);
    // Bad keys are refused on one line before anything is sent.
    let calls = h.fake.calls().len();
    let outcome = h
        .run_io(
            &["run", "-it", "--detach-keys", "ctrl-", "alpine"],
            b"",
            true,
            false,
        )
        .await;
    assert!(
        outcome.error().starts_with("invalid detach keys \"ctrl-\""),
        "{}",
        outcome.error()
    );
    assert_eq!(h.fake.calls().len(), calls);
}
