//! End-to-end tests of the verbs: parsed argv → requests over a real unix socket → a fake
//! daemon (in-memory, this file and its children) → the exact text a user sees.

mod autolock;
mod containers;
mod filesystem;
mod images;
mod volumes;

use std::sync::{Arc, Mutex};

use clap::Parser;
use prost_types::Timestamp;
use shoal_api::v1::{
    self, containers_server::ContainersServer, control_server::Control,
    control_server::ControlServer, images_server::ImagesServer, swarm_server::Swarm,
    swarm_server::SwarmServer, volumes_server::VolumesServer,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::commands::{Command, run_to};
use crate::stdio::{Input, Stdio};
use crate::{CliError, GlobalArgs};

#[derive(Debug, Parser)]
#[command(disable_help_flag = true)]
struct Argv {
    #[command(subcommand)]
    command: Command,
}

#[derive(Default)]
struct State {
    info: v1::InfoResponse,
    cluster: v1::Cluster,
    nodes: Vec<v1::Node>,
    configs: Vec<v1::Config>,
    next_version: u64,
    /// Requests seen, by method name, so tests can say what was (not) sent.
    calls: Vec<&'static str>,
    /// Autolock's key while the fake cluster is autolocked (see `autolock`).
    unlock_key: Option<String>,
    /// The local container and image services' state (see the child modules).
    local: containers::Local,
    files: filesystem::Files,
    images: images::Store,
    volumes: volumes::Store,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn with<T>(&self, call: &'static str, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.0.lock().unwrap();
        state.calls.push(call);
        f(&mut state)
    }

    fn calls(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().calls.clone()
    }
}

impl State {
    fn bump(&mut self) -> v1::Meta {
        self.next_version += 1;
        v1::Meta {
            version: self.next_version,
            created_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            updated_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        }
    }

    fn find_node(&self, reference: &str) -> Result<usize, Status> {
        self.nodes
            .iter()
            .position(|n| {
                n.id == reference
                    || n.description
                        .as_ref()
                        .is_some_and(|d| d.hostname == reference)
                    || (reference.len() >= 3 && n.id.starts_with(reference))
            })
            .ok_or_else(|| Status::not_found(format!("node {reference} not found")))
    }

    fn find_config(&self, reference: &str) -> Result<usize, Status> {
        self.configs
            .iter()
            .position(|c| {
                c.id == reference
                    || c.spec
                        .as_ref()
                        .and_then(|s| s.annotations.as_ref())
                        .is_some_and(|a| a.name == reference)
            })
            .ok_or_else(|| Status::not_found(format!("config {reference} not found")))
    }
}

fn node(id: &str, host: &str, manager: Option<bool>) -> v1::Node {
    v1::Node {
        id: id.into(),
        meta: Some(v1::Meta {
            version: 3,
            ..Default::default()
        }),
        spec: Some(v1::NodeSpec {
            desired_role: if manager.is_some() { 1 } else { 0 },
            ..Default::default()
        }),
        description: Some(v1::NodeDescription {
            hostname: host.into(),
            engine_version: "0.1.0".into(),
            ..Default::default()
        }),
        status: Some(v1::NodeStatus {
            state: v1::NodeState::Ready as i32,
            message: String::new(),
            addr: "10.0.0.1".into(),
        }),
        manager_status: manager.map(|leader| v1::ManagerStatus {
            raft_id: 1,
            addr: format!("{host}.test:2377"),
            leader,
            reachability: v1::Reachability::Reachable as i32,
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Swarm for Fake {
    async fn init(
        &self,
        req: Request<v1::InitRequest>,
    ) -> Result<Response<v1::InitResponse>, Status> {
        self.with("Init", |s| {
            let req = req.into_inner();
            if req.spec.is_some() {
                s.cluster.spec = req.spec;
            }
            autolock::follow_spec(s);
            s.info.set_state(v1::LocalNodeState::Active);
            s.info.is_manager = true;
            s.info.node_id = "self0000000000000000000000".into();
            s.nodes
                .push(node("self0000000000000000000000", "mgr1", Some(true)));
            s.cluster.id = "cluster1".into();
            s.cluster.meta = Some(s.bump());
            s.cluster.root_ca = Some(v1::RootCa {
                join_tokens: Some(v1::JoinTokens {
                    worker: "SHTKN-1-aaa-worker".into(),
                    manager: "SHTKN-1-aaa-manager".into(),
                }),
                ..Default::default()
            });
            Ok(Response::new(v1::InitResponse {
                node_id: s.info.node_id.clone(),
                cluster_id: "cluster1".into(),
            }))
        })
    }

    async fn join(
        &self,
        req: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        self.with("Join", |s| {
            let req = req.into_inner();
            if req.remote_addrs != ["10.0.0.9:2377"] {
                return Err(Status::invalid_argument(format!(
                    "bad remote {:?}",
                    req.remote_addrs
                )));
            }
            s.info.set_state(v1::LocalNodeState::Active);
            s.info.is_manager = req.join_token.ends_with("manager");
            Ok(Response::new(v1::JoinResponse::default()))
        })
    }

    async fn leave(
        &self,
        req: Request<v1::LeaveRequest>,
    ) -> Result<Response<v1::LeaveResponse>, Status> {
        self.with("Leave", |s| {
            if s.info.is_manager && !req.into_inner().force {
                return Err(Status::failed_precondition(
                    "this node is a manager: leaving would cost the cluster its quorum; use --force to leave anyway",
                ));
            }
            Ok(Response::new(v1::LeaveResponse {}))
        })
    }

    async fn info(
        &self,
        _: Request<v1::InfoRequest>,
    ) -> Result<Response<v1::InfoResponse>, Status> {
        self.with("Info", |s| Ok(Response::new(s.info.clone())))
    }

    async fn unlock(
        &self,
        req: Request<v1::UnlockRequest>,
    ) -> Result<Response<v1::UnlockResponse>, Status> {
        self.with("Unlock", |s| autolock::unlock(s, &req.into_inner()))
    }
}

#[tonic::async_trait]
impl Control for Fake {
    async fn get_node(
        &self,
        req: Request<v1::GetNodeRequest>,
    ) -> Result<Response<v1::GetNodeResponse>, Status> {
        self.with("GetNode", |s| {
            let i = s.find_node(&req.into_inner().node)?;
            Ok(Response::new(v1::GetNodeResponse {
                node: Some(s.nodes[i].clone()),
            }))
        })
    }

    async fn list_nodes(
        &self,
        _: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        // Ignores filters on purpose: the client must still honour them.
        self.with("ListNodes", |s| {
            Ok(Response::new(v1::ListNodesResponse {
                nodes: s.nodes.clone(),
            }))
        })
    }

    async fn update_node(
        &self,
        req: Request<v1::UpdateNodeRequest>,
    ) -> Result<Response<v1::UpdateNodeResponse>, Status> {
        self.with("UpdateNode", |s| {
            let req = req.into_inner();
            let i = s.find_node(&req.node_id)?;
            if s.nodes[i].meta.as_ref().map_or(0, |m| m.version) != req.version {
                return Err(Status::failed_precondition("update out of sequence"));
            }
            let meta = s.bump();
            let n = &mut s.nodes[i];
            n.spec = req.spec;
            n.meta = Some(meta);
            Ok(Response::new(v1::UpdateNodeResponse {
                node: Some(n.clone()),
            }))
        })
    }

    async fn remove_node(
        &self,
        req: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::RemoveNodeResponse>, Status> {
        self.with("RemoveNode", |s| {
            let req = req.into_inner();
            let i = s.find_node(&req.node_id)?;
            if s.nodes[i].id != req.node_id {
                return Err(Status::invalid_argument("RemoveNode takes an ID"));
            }
            s.nodes.remove(i);
            Ok(Response::new(v1::RemoveNodeResponse {}))
        })
    }

    async fn get_unlock_key(
        &self,
        _: Request<v1::GetUnlockKeyRequest>,
    ) -> Result<Response<v1::GetUnlockKeyResponse>, Status> {
        self.with("GetUnlockKey", autolock::get_unlock_key)
    }

    async fn rotate_unlock_key(
        &self,
        _: Request<v1::RotateUnlockKeyRequest>,
    ) -> Result<Response<v1::RotateUnlockKeyResponse>, Status> {
        self.with("RotateUnlockKey", autolock::rotate_unlock_key)
    }

    async fn get_cluster(
        &self,
        _: Request<v1::GetClusterRequest>,
    ) -> Result<Response<v1::GetClusterResponse>, Status> {
        self.with("GetCluster", |s| {
            Ok(Response::new(v1::GetClusterResponse {
                cluster: Some(s.cluster.clone()),
            }))
        })
    }

    async fn update_cluster(
        &self,
        req: Request<v1::UpdateClusterRequest>,
    ) -> Result<Response<v1::UpdateClusterResponse>, Status> {
        self.with("UpdateCluster", |s| {
            let req = req.into_inner();
            if s.cluster.meta.as_ref().map_or(0, |m| m.version) != req.version {
                return Err(Status::failed_precondition("update out of sequence"));
            }
            s.cluster.spec = req.spec;
            autolock::follow_spec(s);
            let meta = s.bump();
            s.cluster.meta = Some(meta);
            let tokens = s
                .cluster
                .root_ca
                .get_or_insert_default()
                .join_tokens
                .get_or_insert_default();
            if req.rotate_worker_token {
                tokens.worker = "SHTKN-1-aaa-rotated".into();
            }
            if req.rotate_manager_token {
                tokens.manager = "SHTKN-1-aaa-rotated-m".into();
            }
            Ok(Response::new(v1::UpdateClusterResponse {
                cluster: Some(s.cluster.clone()),
            }))
        })
    }

    async fn create_config(
        &self,
        req: Request<v1::CreateConfigRequest>,
    ) -> Result<Response<v1::CreateConfigResponse>, Status> {
        self.with("CreateConfig", |s| {
            let spec = req.into_inner().spec;
            let name = spec
                .as_ref()
                .and_then(|s| s.annotations.as_ref())
                .map(|a| a.name.clone());
            if s.find_config(name.as_deref().unwrap_or("")).is_ok() {
                return Err(Status::already_exists("config app already exists"));
            }
            let config = v1::Config {
                id: format!("cfg{:022}", s.configs.len() + 1),
                meta: Some(s.bump()),
                spec,
            };
            s.configs.push(config.clone());
            Ok(Response::new(v1::CreateConfigResponse {
                config: Some(config),
            }))
        })
    }

    async fn get_config(
        &self,
        req: Request<v1::GetConfigRequest>,
    ) -> Result<Response<v1::GetConfigResponse>, Status> {
        self.with("GetConfig", |s| {
            let i = s.find_config(&req.into_inner().config)?;
            Ok(Response::new(v1::GetConfigResponse {
                config: Some(s.configs[i].clone()),
            }))
        })
    }

    async fn update_config(
        &self,
        _: Request<v1::UpdateConfigRequest>,
    ) -> Result<Response<v1::UpdateConfigResponse>, Status> {
        Err(Status::unimplemented("not used by the CLI"))
    }

    async fn list_configs(
        &self,
        _: Request<v1::ListConfigsRequest>,
    ) -> Result<Response<v1::ListConfigsResponse>, Status> {
        self.with("ListConfigs", |s| {
            Ok(Response::new(v1::ListConfigsResponse {
                configs: s.configs.clone(),
            }))
        })
    }

    async fn remove_config(
        &self,
        req: Request<v1::RemoveConfigRequest>,
    ) -> Result<Response<v1::RemoveConfigResponse>, Status> {
        self.with("RemoveConfig", |s| {
            let id = req.into_inner().config_id;
            let i = s.find_config(&id)?;
            s.configs.remove(i);
            Ok(Response::new(v1::RemoveConfigResponse {}))
        })
    }
}

/// What one verb wrote and returned.
struct Outcome {
    out: Vec<u8>,
    err: Vec<u8>,
    result: Result<u8, CliError>,
}

impl Outcome {
    fn out(&self) -> String {
        String::from_utf8(self.out.clone()).unwrap()
    }

    fn err(&self) -> String {
        String::from_utf8(self.err.clone()).unwrap()
    }

    fn error(&self) -> String {
        match &self.result {
            Err(err) => err.to_string(),
            Ok(status) => panic!("expected an error, got status {status}"),
        }
    }
}

/// A fake daemon on a socket in a fresh directory; dropped with the test.
struct Harness {
    fake: Fake,
    global: GlobalArgs,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let fake = Fake::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(SwarmServer::new(fake.clone()))
            .add_service(ControlServer::new(fake.clone()))
            .add_service(ContainersServer::new(fake.clone()))
            .add_service(ImagesServer::new(fake.clone()))
            .add_service(VolumesServer::new(fake.clone()))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = stopped.await;
            });
        let server = tokio::spawn(async move {
            server.await.unwrap();
        });
        Harness {
            fake,
            global: GlobalArgs {
                host: format!("unix://{}", path.display()),
            },
            _dir: dir,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Runs one verb with `input` as stdin and the given terminal flags.
    async fn run_io(
        &self,
        args: &[&str],
        input: &[u8],
        stdin_tty: bool,
        stdout_tty: bool,
    ) -> Outcome {
        let input = Input::Bytes(input.to_vec());
        self.run_input(args, input, stdin_tty, stdout_tty).await
    }

    /// Runs one verb with `input` as stdin and the given terminal flags.
    async fn run_input(
        &self,
        args: &[&str],
        input: Input,
        stdin_tty: bool,
        stdout_tty: bool,
    ) -> Outcome {
        let mut argv = vec!["shoal"];
        argv.extend_from_slice(args);
        let command = Argv::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut io = Stdio {
            out: &mut out,
            err: &mut err,
            input,
            stdin_tty,
            stdout_tty,
        };
        let result = run_to(&self.global, command, &mut io).await;
        Outcome { out, err, result }
    }

    async fn run(&self, args: &[&str]) -> (String, Result<u8, CliError>) {
        let outcome = self.run_io(args, b"", false, false).await;
        (outcome.out(), outcome.result)
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (out, result) = self.run(args).await;
        match result {
            Ok(0) => out,
            Ok(status) => panic!("{args:?} exited {status}\noutput: {out}"),
            Err(err) => panic!("{args:?} failed: {err}\noutput: {out}"),
        }
    }

    async fn stop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.take().unwrap().await.unwrap();
    }
}

#[tokio::test]
async fn swarm_init_prints_docker_instructions() {
    let h = Harness::start().await;
    let out = h
        .ok(&[
            "swarm",
            "init",
            "--advertise-addr",
            "10.0.0.1",
            "--task-history-limit",
            "-1",
        ])
        .await;
    assert_eq!(
        out,
        "\
Swarm initialized: current node (self0000000000000000000000) is now a manager.

To add a worker to this swarm, run the following command:

    shoal swarm join --token SHTKN-1-aaa-worker mgr1.test:2377

To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.

"
    );
    let spec = h.fake.0.lock().unwrap().cluster.spec.clone().unwrap();
    assert_eq!(spec.orchestration.unwrap().task_history_retention_limit, -1);
    assert!(spec.ca.is_none(), "unset flags stay unset");
}

#[tokio::test]
async fn join_token_and_rotation() {
    let h = Harness::start().await;
    h.ok(&["swarm", "init"]).await;
    assert_eq!(
        h.ok(&["swarm", "join-token", "manager"]).await,
        "To add a manager to this swarm, run the following command:\n\n    \
         shoal swarm join --token SHTKN-1-aaa-manager mgr1.test:2377\n\n"
    );
    assert_eq!(
        h.ok(&["swarm", "join-token", "-q", "worker"]).await,
        "SHTKN-1-aaa-worker\n"
    );
    assert_eq!(
        h.ok(&["swarm", "join-token", "--rotate", "worker"]).await,
        "Successfully rotated worker join token.\n\n\
         To add a worker to this swarm, run the following command:\n\n    \
         shoal swarm join --token SHTKN-1-aaa-rotated mgr1.test:2377\n\n"
    );
    assert_eq!(
        h.ok(&["swarm", "join-token", "-q", "--rotate", "manager"])
            .await,
        "SHTKN-1-aaa-rotated-m\n"
    );
}

#[tokio::test]
async fn swarm_ca_prints_the_root_certificate_and_refuses_rotation() {
    let h = Harness::start().await;
    let (_, err) = h.run(&["swarm", "ca"]).await;
    assert!(err.unwrap_err().to_string().contains("not part of a swarm"));
    h.ok(&["swarm", "init"]).await;
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    h.fake
        .0
        .lock()
        .unwrap()
        .cluster
        .root_ca
        .as_mut()
        .unwrap()
        .ca_cert = pem.into();
    assert_eq!(h.ok(&["swarm", "ca"]).await, pem);

    let before = h.fake.calls().len();
    let (out, err) = h.run(&["swarm", "ca", "--rotate"]).await;
    assert_eq!(out, "");
    assert_eq!(
        err.unwrap_err().to_string(),
        "rotating the root CA is not supported yet: the swarm keeps its current root"
    );
    assert_eq!(
        h.fake.calls().len(),
        before,
        "nothing was asked of the daemon"
    );

    // A worker has no cluster object to read.
    h.fake.0.lock().unwrap().info.is_manager = false;
    let (_, err) = h.run(&["swarm", "ca"]).await;
    assert!(err.unwrap_err().to_string().contains("not a swarm manager"));
}

#[tokio::test]
async fn join_leave_and_update() {
    let h = Harness::start().await;
    let (_, err) = h.run(&["swarm", "join-token", "worker"]).await;
    assert!(err.unwrap_err().to_string().contains("not part of a swarm"));
    assert_eq!(
        h.ok(&["swarm", "join", "--token", "SHTKN-1-x-manager", "10.0.0.9"])
            .await,
        "This node joined a swarm as a manager.\n"
    );
    let (_, err) = h.run(&["swarm", "leave"]).await;
    assert_eq!(
        err.unwrap_err().to_string(),
        "this node is a manager: leaving would cost the cluster its quorum; use --force to leave anyway"
    );
    assert_eq!(
        h.ok(&["swarm", "leave", "--force"]).await,
        "Node left the swarm.\n"
    );

    h.ok(&["swarm", "init"]).await;
    assert_eq!(
        h.ok(&["swarm", "update", "--cert-expiry", "90d"]).await,
        "Swarm updated.\n"
    );
    let spec = h.fake.0.lock().unwrap().cluster.spec.clone().unwrap();
    assert_eq!(spec.ca.unwrap().node_cert_expiry_secs, 90 * 86400);
}

#[tokio::test]
async fn node_ls_inspect_update_rm() {
    let h = Harness::start().await;
    h.ok(&["swarm", "init"]).await;
    {
        let mut s = h.fake.0.lock().unwrap();
        s.nodes
            .push(node("wrk00000000000000000000001", "alpha", None));
        s.nodes
            .push(node("mgr00000000000000000000002", "zulu", Some(false)));
    }
    assert_eq!(
        h.ok(&["node", "ls"]).await,
        "\
ID                             HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION
wrk00000000000000000000001     alpha      Ready     Active                          0.1.0
self0000000000000000000000 *   mgr1       Ready     Active         Leader           0.1.0
mgr00000000000000000000002     zulu       Ready     Active         Reachable        0.1.0
"
    );
    assert_eq!(
        h.ok(&["node", "ls", "-q", "-f", "role=manager"]).await,
        "self0000000000000000000000\nmgr00000000000000000000002\n"
    );
    let json = h
        .ok(&["node", "ls", "--format", "json", "-f", "name=alpha"])
        .await;
    let row: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(row["Hostname"], "alpha");
    assert_eq!(row["Self"], false);

    // Partial failure: the found node is printed, the missing one is the error.
    let (out, result) = h.run(&["node", "inspect", "alpha", "nope"]).await;
    let views: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(views.as_array().unwrap().len(), 1);
    assert_eq!(views[0]["Description"]["Hostname"], "alpha");
    let err = result.unwrap_err();
    assert_eq!(err.to_string(), "node nope not found");
    assert_eq!(err.exit_code(), 1);
    let (out, result) = h.run(&["node", "inspect", "nope1", "nope2"]).await;
    assert_eq!(out, "[]\n");
    assert_eq!(
        result.unwrap_err().to_string(),
        "node nope1 not found; node nope2 not found"
    );
    let pretty = h.ok(&["node", "inspect", "--pretty", "zulu"]).await;
    assert!(pretty.starts_with("ID:"), "{pretty}");
    assert!(pretty.contains("Manager Status:\n"), "{pretty}");

    assert_eq!(
        h.ok(&[
            "node",
            "update",
            "--availability",
            "drain",
            "--label-add",
            "ssd",
            "alpha"
        ])
        .await,
        "wrk00000000000000000000001\n"
    );
    let ls = h.ok(&["node", "ls", "-f", "label=ssd"]).await;
    assert!(ls.contains("alpha      Ready     Drain"), "{ls}");
    let (_, result) = h
        .run(&["node", "update", "--label-rm", "gpu", "alpha"])
        .await;
    assert_eq!(
        result.unwrap_err().to_string(),
        "label \"gpu\" is not set on node alpha"
    );

    assert_eq!(
        h.ok(&["node", "promote", "alpha", "zulu"]).await,
        "Node alpha promoted to a manager in the swarm.\nNode zulu is already a manager.\n"
    );
    assert_eq!(
        h.ok(&["node", "demote", "alpha"]).await,
        "Manager alpha demoted in the swarm.\n"
    );

    let (out, result) = h.run(&["node", "rm", "wrk0", "ghost"]).await;
    assert_eq!(out, "wrk0\n");
    assert_eq!(result.unwrap_err().to_string(), "node ghost not found");
    assert!(!h.ok(&["node", "ls"]).await.contains("alpha"));
}

#[tokio::test]
async fn config_lifecycle() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.conf");
    std::fs::write(&file, b"port=80\n").unwrap();
    let file = file.to_str().unwrap();

    let id = h
        .ok(&["config", "create", "-l", "env=prod", "app", file])
        .await;
    assert_eq!(id, "cfg0000000000000000000001\n");
    let (_, result) = h.run(&["config", "create", "app", file]).await;
    assert_eq!(result.unwrap_err().to_string(), "config app already exists");

    let ls = h.ok(&["config", "ls"]).await;
    let mut lines = ls.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("ID                          NAME      CREATED")
    );
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("cfg0000000000000000000001   app       ")
    );
    assert_eq!(
        h.ok(&["config", "ls", "-q", "-f", "label=env=dev"]).await,
        ""
    );

    let out = h.ok(&["config", "inspect", "app"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["Spec"]["Data"], "cG9ydD04MAo=");
    assert_eq!(v[0]["Spec"]["Labels"]["env"], "prod");
    assert!(
        h.ok(&["config", "inspect", "--pretty", "app"])
            .await
            .ends_with("Data:\nport=80\n")
    );

    assert_eq!(h.ok(&["config", "rm", "app"]).await, "app\n");
    assert_eq!(h.ok(&["config", "ls", "-q"]).await, "");
}

#[tokio::test]
async fn bad_input_sends_nothing() {
    let h = Harness::start().await;
    let (_, result) = h.run(&["config", "create", "bad/name", "-"]).await;
    assert_eq!(
        result.unwrap_err().to_string(),
        "invalid config name \"bad/name\": may contain only letters, digits, '_', '.' and '-'"
    );
    let (_, result) = h.run(&["config", "create", "app", "/nonexistent/x"]).await;
    assert_eq!(
        result.unwrap_err().to_string(),
        "cannot read /nonexistent/x: no such file or directory"
    );
    let (_, result) = h.run(&["node", "update", "n1"]).await;
    assert!(
        result
            .unwrap_err()
            .to_string()
            .starts_with("nothing to update")
    );
    assert!(h.fake.calls().is_empty(), "{:?}", h.fake.calls());
}

#[tokio::test]
async fn daemon_gone_reads_as_not_running() {
    let mut h = Harness::start().await;
    let mut daemon = crate::daemon::Daemon::connect(&h.global.host)
        .await
        .unwrap();
    daemon.info().await.unwrap();
    h.stop().await;
    std::fs::remove_file(crate::socket_path(&h.global.host).unwrap()).unwrap();
    let err = daemon.info().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot connect to the shoal daemon at {}: is the daemon running?",
            h.global.host
        )
    );
    let (_, result) = h.run(&["info"]).await;
    assert!(matches!(result, Err(CliError::DaemonNotRunning { .. })));
}

#[test]
fn run_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let global = GlobalArgs::default();
    let command = Argv::try_parse_from(["shoal", "config", "create", "a", "-"])
        .unwrap()
        .command;
    let future = crate::run(&global, command);
    assert_send(&future);
}
