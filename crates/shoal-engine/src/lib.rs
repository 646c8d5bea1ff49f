//! shoal-engine: the node-local container engine. It turns a container spec into a running
//! container: resolves the image, mounts its layers as an overlay, builds the OCI spec, starts
//! one shim per container, wires the container to the bridge network, records every state
//! change on disk, and re-adopts running shims after a daemon restart. It serves the local
//! `Containers`, `Images` and `Volumes` APIs.
//!
//! It knows nothing of clusters, tasks or Raft: the standalone verbs use it, and the agent will.

mod chunks;
mod containers;
mod filesystem;
mod images;
mod logs;
mod names;
mod records;
mod sessions;
mod volumes;
mod volumes_api;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shoal_api::v1::{
    ContainerInfo, ContainerNetwork, ContainerSpec, ContainerState, PublishedPort,
};
use shoal_image::ImageStore;
use shoal_net::{BridgeConfig, BridgeNetwork, Netns, PortMapping};
use shoal_runtime::shim::{LogOptions, ShimArgs, read_exit_record};
use shoal_runtime::{
    Bundle, ContainerConfig, ExitRecord, NetworkMode, OverlayRootfs, ShimClient, ShimOptions,
    build_spec, spawn_shim,
};
use tokio::sync::{Mutex, watch};

pub use containers::ContainersApi;
pub use filesystem::CommitRequest;
pub use images::ImagesApi;
pub use volumes_api::VolumesApi;

use records::RecordStore;

/// Errors of the engine; every one is a single line a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error("no such volume: {0}")]
    NoSuchVolume(String),
    #[error("container reference {reference:?} is ambiguous: it matches {count} containers")]
    Ambiguous { reference: String, count: usize },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Image(#[from] shoal_image::ImageError),
    #[error(transparent)]
    Filesystem(#[from] shoal_image::FsError),
    #[error(transparent)]
    Network(#[from] shoal_net::NetError),
    #[error(transparent)]
    Runtime(#[from] shoal_runtime::Error),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl EngineError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> EngineError {
        EngineError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

impl From<shoal_runtime::ShimError> for EngineError {
    fn from(error: shoal_runtime::ShimError) -> Self {
        EngineError::Runtime(error.into())
    }
}

impl From<shoal_runtime::SpecError> for EngineError {
    fn from(error: shoal_runtime::SpecError) -> Self {
        EngineError::Runtime(error.into())
    }
}

impl From<shoal_runtime::ContainerError> for EngineError {
    fn from(error: shoal_runtime::ContainerError) -> Self {
        EngineError::Runtime(error.into())
    }
}

impl From<EngineError> for tonic::Status {
    fn from(error: EngineError) -> tonic::Status {
        use tonic::Code;
        let code = match &error {
            EngineError::NoSuchContainer(_) | EngineError::NoSuchVolume(_) => Code::NotFound,
            EngineError::Image(e) if e.to_string().starts_with("no such image") => Code::NotFound,
            EngineError::Filesystem(shoal_image::FsError::NotFound(_)) => Code::NotFound,
            EngineError::Filesystem(
                shoal_image::FsError::NotADirectory(_)
                | shoal_image::FsError::Refused(_)
                | shoal_image::FsError::UnsafePath { .. },
            ) => Code::InvalidArgument,
            EngineError::Ambiguous { .. } | EngineError::InvalidArgument(_) => {
                Code::InvalidArgument
            }
            EngineError::Conflict(_) => Code::FailedPrecondition,
            _ => Code::Internal,
        };
        tonic::Status::new(code, error.to_string())
    }
}

/// Where the engine keeps things and which programs it runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `<data-root>`: images under `images/`, containers under `containers/`.
    pub data_root: PathBuf,
    /// `<exec-root>`: bundles, shim sockets and runtime state, under `containers/` and
    /// `runtime/`.
    pub exec_root: PathBuf,
    /// The `shoal-shim` executable.
    pub shim_binary: PathBuf,
    /// The `shoal` executable (its `runtime exec` runs processes in containers).
    pub shoal_binary: PathBuf,
    /// The default bridge network; `None` leaves bridge networking off.
    pub bridge: Option<BridgeConfig>,
    /// Log rotation of every container.
    pub log_max_size: Option<u64>,
    pub log_max_files: u32,
    /// `HOST[:PORT]` of registries reached over plain HTTP; all others are HTTPS.
    pub insecure_registries: Vec<String>,
    /// PEM CA certificates trusted for HTTPS registries besides the system's roots.
    pub registry_ca_pems: Vec<Vec<u8>>,
    /// Absolute cgroup path every container's cgroup is made under (`<parent>/<id>`), so that
    /// daemons sharing one machine never share a cgroup subtree. The daemon's default is
    /// `/shoal`.
    pub cgroup_parent: PathBuf,
}

/// One container the engine knows.
struct Entry {
    info: ContainerInfo,
    shim: Option<Arc<ShimClient>>,
    /// The exit code of the last run, published when the container exits (waiters and log
    /// followers watch it; it outlives the entry when `--rm` removes the container).
    exited: watch::Sender<Option<i32>>,
    /// Set by an explicit stop so `unless-stopped`/`always` do not restart it.
    stopped_by_user: bool,
    /// Attached clients still reading its output; `--rm` waits for them before removing.
    attached: Arc<std::sync::atomic::AtomicUsize>,
    /// The delay before the next policy restart; see [`next_restart_delay`].
    restart_delay: Duration,
}

impl Entry {
    /// `created`, `running`, `paused`, `exited`, … (empty when never recorded).
    fn status(&self) -> String {
        self.info
            .state
            .as_ref()
            .map(|s| s.status.clone())
            .unwrap_or_default()
    }
}

/// Counts an attached client for as long as it lives.
pub(crate) struct AttachGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for AttachGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The container engine of one host.
pub struct Engine {
    config: EngineConfig,
    images: Arc<ImageStore>,
    records: RecordStore,
    network: Option<BridgeNetwork>,
    containers: Mutex<HashMap<String, Entry>>,
    /// Temporary filesystem views of stopped containers, and the starts they must not overlap.
    fs_ops: filesystem::FsOps,
    /// Attaches waiting for their container's next start.
    pending_attaches: sessions::PendingAttaches,
    volumes: volumes::VolumeStore,
    registry: shoal_image::registry::RegistryClient,
}

fn now_rfc3339() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

fn parse_rfc3339(text: &str) -> Option<prost_types::Timestamp> {
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(prost_types::Timestamp {
        seconds: parsed.unix_timestamp(),
        nanos: parsed.nanosecond() as i32,
    })
}

fn new_container_id() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

impl Engine {
    /// Opens the stores, sets up the bridge network, and re-adopts every container whose shim
    /// still runs (the others are recorded as exited, with the status their shim left).
    pub async fn open(config: EngineConfig) -> Result<Arc<Engine>, EngineError> {
        let images_root = config.data_root.join("images");
        let images = {
            let root = images_root.clone();
            tokio::task::spawn_blocking(move || ImageStore::open(&root))
                .await
                .map_err(|e| EngineError::Internal(e.to_string()))??
        };
        let records = RecordStore::open(&config.data_root.join("containers"))?;
        let volumes = volumes::VolumeStore::open(
            &config.data_root.join("volumes"),
            &config.exec_root.join("volumes"),
        )?;
        for dir in [config.exec_root.join("containers"), runtime_root(&config)] {
            std::fs::create_dir_all(&dir).map_err(|e| EngineError::io("create", &dir, e))?;
        }
        let network = match &config.bridge {
            Some(bridge) => {
                let net = BridgeNetwork::on_host(bridge.clone(), config.data_root.join("network"))?;
                Some(net)
            }
            None => None,
        };
        let registry =
            shoal_image::registry::RegistryClient::new(shoal_image::registry::RegistryConfig {
                insecure: config.insecure_registries.clone(),
                extra_roots_pem: config.registry_ca_pems.clone(),
                ..Default::default()
            });
        let fs_ops = filesystem::FsOps::new(&config.exec_root);
        let engine = Arc::new(Engine {
            config,
            fs_ops,
            images: Arc::new(images),
            records,
            network,
            containers: Mutex::new(HashMap::new()),
            pending_attaches: Default::default(),
            volumes,
            registry,
        });
        engine.recover().await?;
        Ok(engine)
    }

    pub fn images(&self) -> &Arc<ImageStore> {
        &self.images
    }

    /// The client that pulls from and pushes to registries.
    pub fn registry(&self) -> &shoal_image::registry::RegistryClient {
        &self.registry
    }

    fn container_exec_dir(&self, id: &str) -> PathBuf {
        self.config.exec_root.join("containers").join(id)
    }

    /// Where the shim of container `id` listens; see [`check_socket_room`].
    fn socket_path(&self, id: &str) -> PathBuf {
        self.container_exec_dir(id).join("shim.sock")
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.records
            .container_dir(id)
            .join(format!("{id}-json.log"))
    }

    /// Re-adopts live shims and settles the rest, then reconciles the network.
    async fn recover(self: &Arc<Self>) -> Result<(), EngineError> {
        let mut live = Vec::new();
        let records = self.records.load_all();
        let mut table = self.containers.lock().await;
        for mut info in records {
            let id = info.id.clone();
            let status = info
                .state
                .as_ref()
                .map(|s| s.status.clone())
                .unwrap_or_default();
            let mut shim = None;
            if status == "running" || status == "paused" {
                match ShimClient::connect(self.socket_path(&id)) {
                    Ok(client) => {
                        tracing::info!(container = %id, "re-adopted running container");
                        shim = Some(Arc::new(client));
                        if let Some(net) = info.network.clone() {
                            live.push((id.clone(), net));
                        }
                    }
                    Err(_) => {
                        let exit = read_exit_record(&runtime_root(&self.config), &id)
                            .ok()
                            .flatten();
                        settle_exit(&mut info, exit.as_ref());
                        let _ = self.records.save(&info);
                        self.cleanup_runtime(&id);
                    }
                }
            }
            let (exited, _) = watch::channel(None);
            table.insert(
                id.clone(),
                Entry {
                    info,
                    shim: shim.clone(),
                    exited,
                    stopped_by_user: false,
                    attached: Default::default(),
                    restart_delay: Duration::ZERO,
                },
            );
            if let Some(client) = shim {
                self.spawn_waiter(id, client);
            }
        }
        self.settle_volume_mounts(&table);
        drop(table);
        if let Some(network) = &self.network {
            let live: Vec<shoal_net::ContainerAttachmentRecord> = live
                .into_iter()
                .map(|(id, _)| shoal_net::ContainerAttachmentRecord::from(id))
                .collect();
            match network.reconcile(&live).await {
                Ok(report) => tracing::info!(?report, "bridge network reconciled"),
                Err(error) => tracing::warn!(%error, "bridge network reconcile failed"),
            }
        }
        Ok(())
    }

    /// Resolves an ID, unique ID prefix or name to a container ID.
    pub async fn resolve(&self, reference: &str) -> Result<String, EngineError> {
        let table = self.containers.lock().await;
        resolve_in(&table, reference)
    }

    pub async fn create(&self, mut spec: ContainerSpec) -> Result<ContainerInfo, EngineError> {
        check_socket_room(&self.config.exec_root)?;
        if spec.image.is_empty() {
            return Err(EngineError::InvalidArgument("an image is required".into()));
        }
        let images = self.images.clone();
        let reference = spec.image.clone();
        let image = tokio::task::spawn_blocking(move || images.resolve(&reference))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))??;
        let command = command_line(&spec, image.config.config().as_ref())?;
        match spec.network_mode.as_str() {
            // Without a bridge (`--bridge none`), containers get no network unless asked.
            "" if self.network.is_some() => spec.network_mode = "bridge".into(),
            "" => spec.network_mode = "none".into(),
            "none" | "host" | "bridge" => {}
            other => {
                return Err(EngineError::InvalidArgument(format!(
                    "invalid network mode {other:?}: use none, host or bridge"
                )));
            }
        }
        if spec.network_mode == "bridge" && self.network.is_none() {
            return Err(EngineError::InvalidArgument(
                "bridge networking is disabled on this daemon: use --network none or host".into(),
            ));
        }
        if spec.network_mode != "bridge" && (!spec.ports.is_empty() || spec.publish_all) {
            return Err(EngineError::InvalidArgument(format!(
                "ports can only be published with the bridge network, not {:?}",
                spec.network_mode
            )));
        }
        for port in &spec.ports {
            port_mapping(port)?;
        }
        let restart = spec.restart_policy.clone().unwrap_or_default();
        if !matches!(
            restart.name.as_str(),
            "" | "no" | "always" | "on-failure" | "unless-stopped"
        ) {
            return Err(EngineError::InvalidArgument(format!(
                "invalid restart policy {:?}: use no, always, on-failure[:N] or unless-stopped",
                restart.name
            )));
        }
        if spec.auto_remove && !matches!(restart.name.as_str(), "" | "no") {
            return Err(EngineError::InvalidArgument(
                "--rm and a restart policy cannot be combined".into(),
            ));
        }
        let mut table = self.containers.lock().await;
        let name = if spec.name.is_empty() {
            names::random_name(|n| table.values().any(|e| e.info.name == n))
        } else {
            let name = names::validate(&spec.name)
                .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
            if let Some(other) = table.values().find(|e| e.info.name == name) {
                return Err(EngineError::Conflict(format!(
                    "the container name \"/{name}\" is already in use by container {}: remove or rename that container to reuse the name",
                    other.info.id
                )));
            }
            name
        };
        spec.name = name.clone();
        let image_volumes = image
            .config
            .config()
            .as_ref()
            .and_then(|c| c.volumes().clone())
            .unwrap_or_default();
        let resolved = self.resolve_mounts(&spec, &image_volumes)?;
        let id = new_container_id();
        let info = ContainerInfo {
            id: id.clone(),
            name,
            image: spec.image.clone(),
            image_id: image.id.to_string(),
            spec: Some(spec),
            state: Some(ContainerState {
                status: "created".into(),
                ..Default::default()
            }),
            created: Some(now_rfc3339()),
            network: None,
            log_path: self.log_path(&id).display().to_string(),
            command,
            mounts: resolved.mounts.clone(),
        };
        if let Err(error) = self.records.save(&info) {
            self.discard_volumes(&resolved.created);
            return Err(error);
        }
        let (exited, _) = watch::channel(None);
        table.insert(
            id.clone(),
            Entry {
                info: info.clone(),
                shim: None,
                exited,
                stopped_by_user: false,
                attached: Default::default(),
                restart_delay: Duration::ZERO,
            },
        );
        drop(table);
        // After the container is recorded, so its volumes count as in use meanwhile.
        if let Err(error) = self.copy_up(&resolved, &image.layer_dirs).await {
            let _ = self.remove_with_volumes(&id, true, true).await;
            return Err(error);
        }
        Ok(info)
    }

    /// Starts a created or exited container: mounts its rootfs, starts its shim, wires its
    /// network, and lets it run.
    pub async fn start(self: &Arc<Self>, reference: &str) -> Result<ContainerInfo, EngineError> {
        let mut table = self.containers.lock().await;
        let id = resolve_in(&table, reference)?;
        let entry = table.get_mut(&id).expect("resolved");
        let status = entry.status();
        if status == "running" || status == "paused" {
            return Ok(entry.info.clone());
        }
        // A copy into the stopped container mounts its upper dir: never both at once.
        let _launching = self.fs_ops.begin_start(&id)?;
        entry.stopped_by_user = false;
        entry.exited.send_replace(None);
        let info = entry.info.clone();
        drop(table);
        // Taken before the launch: the container's first log lines may precede its end.
        let started_at = now_rfc3339();
        let result = self.launch(&info).await;
        let mut table = self.containers.lock().await;
        let entry = table
            .get_mut(&id)
            .ok_or_else(|| EngineError::NoSuchContainer(id.clone()))?;
        match result {
            Ok((client, pid, network)) => {
                let state = entry.info.state.get_or_insert_with(Default::default);
                state.status = "running".into();
                state.pid = pid;
                state.exit_code = 0;
                state.oom_killed = false;
                state.error.clear();
                state.started_at = Some(started_at);
                state.finished_at = None;
                entry.info.network = Some(network);
                entry.shim = Some(client.clone());
                self.records.save(&entry.info)?;
                let info = entry.info.clone();
                drop(table);
                // Those that came in line while the shim was being set up.
                self.serve_pending_attaches(&id, &client).await;
                self.spawn_waiter(id, client);
                Ok(info)
            }
            Err(error) => {
                let state = entry.info.state.get_or_insert_with(Default::default);
                state.error = error.to_string();
                if state.status != "exited" {
                    state.status = "created".into();
                }
                let _ = self.records.save(&entry.info);
                drop(table);
                self.cleanup_runtime(&id);
                self.volumes.release(&id);
                Err(error)
            }
        }
    }

    async fn launch(
        &self,
        info: &ContainerInfo,
    ) -> Result<(Arc<ShimClient>, i32, ContainerNetwork), EngineError> {
        let spec = info.spec.clone().unwrap_or_default();
        let id = info.id.clone();
        let images = self.images.clone();
        let image_ref = if info.image_id.is_empty() {
            info.image.clone()
        } else {
            info.image_id.clone()
        };
        let image = tokio::task::spawn_blocking(move || images.resolve(&image_ref))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))??;
        let image_config = image.config.config().clone().unwrap_or_default();

        let persistent = self.records.container_dir(&id);
        let upper = persistent.join("fs").join("upper");
        let work = persistent.join("fs").join("work");
        for dir in [&upper, &work] {
            std::fs::create_dir_all(dir).map_err(|e| EngineError::io("create", dir, e))?;
        }
        let bundle_dir = self.container_exec_dir(&id).join("bundle");
        let mut lower = image.layer_dirs.clone();
        lower.reverse();
        let overlay = OverlayRootfs { lower, upper, work };

        let mut env = image_config.env().clone().unwrap_or_default();
        for kv in &spec.env {
            let key = kv.split('=').next().unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        let network = match spec.network_mode.as_str() {
            "host" => NetworkMode::Host,
            _ => NetworkMode::None,
        };
        // Volumes come resolved from create; tmpfs-backed ones get mounted for this run.
        let mut mounts = self.volume_mounts(&id, &info.mounts)?;
        for mount in &spec.mounts {
            if mount.kind() != shoal_api::v1::mount_spec::Kind::Volume {
                mounts.push(mount_config(mount)?);
            }
        }
        // Parents before children, as Docker orders them, so `/data/cache` lands inside `/data`.
        mounts.sort_by_key(|m| {
            let target = match m {
                shoal_runtime::spec::MountConfig::Bind { target, .. }
                | shoal_runtime::spec::MountConfig::Tmpfs { target, .. } => target,
            };
            target.components().count()
        });
        let user = if spec.user.is_empty() {
            image_config.user().clone().filter(|u| !u.is_empty())
        } else {
            Some(spec.user.clone())
        };
        let cwd = if spec.working_dir.is_empty() {
            image_config.working_dir().clone().filter(|w| !w.is_empty())
        } else {
            Some(spec.working_dir.clone())
        };
        let container_config = ContainerConfig {
            args: info.command.clone(),
            env,
            cwd,
            user,
            hostname: Some(if spec.hostname.is_empty() {
                id[..12].to_owned()
            } else {
                spec.hostname.clone()
            }),
            mounts,
            resources: shoal_runtime::spec::Resources {
                memory: (spec.memory_bytes > 0).then_some(spec.memory_bytes),
                memory_swap: (spec.memory_swap_bytes != 0).then_some(spec.memory_swap_bytes),
                cpus: (spec.nano_cpus > 0).then(|| spec.nano_cpus as f64 / 1e9),
                pids_limit: (spec.pids_limit > 0).then_some(spec.pids_limit),
                ..Default::default()
            },
            no_new_privileges: spec.no_new_privileges,
            network,
            readonly_rootfs: spec.read_only,
            tty: spec.tty,
            cgroups_path: Some(self.config.cgroup_parent.join(&id)),
            ..Default::default()
        };
        let rootfs = bundle_dir.join("rootfs");
        let probe_root = image
            .layer_dirs
            .last()
            .cloned()
            .unwrap_or_else(|| rootfs.clone());
        let oci_spec = build_spec(&id, &container_config, &probe_root)?;
        let shim_args = ShimArgs {
            id: id.clone(),
            bundle: bundle_dir.clone(),
            state_root: runtime_root(&self.config),
            log: LogOptions {
                path: self.log_path(&id),
                max_size: self.config.log_max_size,
                max_files: self.config.log_max_files.max(1),
            },
            tty: spec.tty,
            open_stdin: spec.open_stdin,
            console_size: spec
                .console_size
                .as_ref()
                .filter(|s| spec.tty && s.rows > 0 && s.cols > 0)
                .map(|s| {
                    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
                    (clamp(s.rows), clamp(s.cols))
                }),
            socket: self.socket_path(&id),
            exit_timeout: Duration::from_secs(300),
        };
        let options = ShimOptions {
            binary: self.config.shim_binary.clone(),
            args: shim_args,
        };
        // A previous run's runtime state would make the shim refuse the id.
        self.cleanup_runtime(&id);
        let spawned = tokio::task::spawn_blocking(move || {
            Bundle::write(&bundle_dir, &oci_spec, Some(&overlay))?;
            spawn_shim(&options).map_err(EngineError::from)
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))??;
        let client = Arc::new(spawned.client);
        let pid = spawned.container_pid;

        let mut container_network = ContainerNetwork {
            mode: spec.network_mode.clone(),
            ..Default::default()
        };
        if spec.network_mode == "bridge"
            && let Some(net) = &self.network
        {
            let mut ports = Vec::new();
            for port in &spec.ports {
                ports.push(port_mapping(port)?);
            }
            if spec.publish_all {
                for exposed in image_config.exposed_ports().clone().unwrap_or_default() {
                    let (port, proto) = exposed.split_once('/').unwrap_or((&exposed, "tcp"));
                    if let Ok(port) = port.parse::<u16>()
                        && !ports.iter().any(|p: &PortMapping| p.container_port == port)
                    {
                        ports.push(PortMapping::parse(&format!("{port}/{proto}"))?);
                    }
                }
            }
            match net.attach(&id, &Netns::pid(pid as u32), &ports).await {
                Ok(attachment) => {
                    container_network.ip_address = attachment.ip.to_string();
                    container_network.gateway = attachment.gateway.to_string();
                    container_network.mac_address = attachment.mac.to_string();
                    container_network.ports = attachment
                        .ports
                        .iter()
                        .map(|p| PublishedPort {
                            host_ip: p.host_ip.to_string(),
                            host_port: u32::from(p.host_port),
                            container_port: u32::from(p.container_port),
                            protocol: p.protocol.to_string(),
                        })
                        .collect();
                }
                Err(error) => {
                    let shim = client.clone();
                    let _ = tokio::task::spawn_blocking(move || shim.shutdown(true)).await;
                    return Err(error.into());
                }
            }
        }
        // Attached clients are connected before the container runs: they miss none of it.
        self.serve_pending_attaches(&id, &client).await;
        let starter = client.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || starter.start())
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?
        {
            if let Some(net) = &self.network {
                let _ = net.detach(&id).await;
            }
            let shim = client.clone();
            let _ = tokio::task::spawn_blocking(move || shim.shutdown(true)).await;
            return Err(error.into());
        }
        Ok((client, pid, container_network))
    }

    /// Waits (on a blocking thread) for the container to exit, then records it and applies
    /// the restart policy or `--rm`.
    fn spawn_waiter(self: &Arc<Self>, id: String, client: Arc<ShimClient>) {
        let engine = self.clone();
        tokio::spawn(async move {
            let waited = {
                let client = client.clone();
                tokio::task::spawn_blocking(move || client.wait()).await
            };
            let exit = match waited {
                Ok(Ok(exit)) => Some(exit),
                _ => read_exit_record(&runtime_root(&engine.config), &id)
                    .ok()
                    .flatten(),
            };
            engine.on_exit(&id, exit, &client).await;
        });
    }

    async fn on_exit(self: &Arc<Self>, id: &str, exit: Option<ExitRecord>, client: &ShimClient) {
        // Socket calls, unmounts and rmdirs: off the async workers.
        let shim = client.clone();
        let _ = tokio::task::spawn_blocking(move || shim.shutdown(true)).await;
        if let Some(net) = &self.network
            && let Err(error) = net.detach(id).await
        {
            tracing::warn!(container = %id, %error, "detaching from the bridge failed");
        }
        let (engine, gone) = (self.clone(), id.to_owned());
        let _ = tokio::task::spawn_blocking(move || {
            engine.cleanup_runtime(&gone);
            engine.volumes.release(&gone);
        })
        .await;
        let mut table = self.containers.lock().await;
        let Some(entry) = table.get_mut(id) else {
            return;
        };
        entry.shim = None;
        settle_exit(&mut entry.info, exit.as_ref());
        if let Some(network) = entry.info.network.as_mut() {
            network.ip_address.clear();
            network.ports.clear();
        }
        let _ = self.records.save(&entry.info);
        let code = entry.info.state.as_ref().map_or(0, |s| s.exit_code);
        entry.exited.send_replace(Some(code));
        let spec = entry.info.spec.clone().unwrap_or_default();
        let exit_code = entry.info.state.as_ref().map_or(0, |s| s.exit_code);
        let restarts = entry.info.state.as_ref().map_or(0, |s| s.restart_count);
        let policy = spec.restart_policy.unwrap_or_default();
        let stopped_by_user = entry.stopped_by_user;
        let attached = entry.attached.clone();
        let run_time = entry.info.state.as_ref().and_then(|s| {
            let started = std::time::SystemTime::try_from(s.started_at?).ok()?;
            let finished = std::time::SystemTime::try_from(s.finished_at?).ok()?;
            finished.duration_since(started).ok()
        });
        entry.restart_delay = next_restart_delay(entry.restart_delay, run_time);
        let delay = entry.restart_delay;
        drop(table);
        tracing::info!(container = %id, exit_code, "container exited");
        if spec.auto_remove {
            // Let attached clients read the last output before it goes (bounded).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while attached.load(std::sync::atomic::Ordering::SeqCst) > 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Like Docker's --rm, its anonymous volumes go with it.
            let _ = self.remove_with_volumes(id, true, true).await;
            return;
        }
        let restart = !stopped_by_user
            && match policy.name.as_str() {
                "always" | "unless-stopped" => true,
                "on-failure" => {
                    exit_code != 0
                        && (policy.maximum_retry_count == 0
                            || restarts < policy.maximum_retry_count)
                }
                _ => false,
            };
        if restart {
            let engine = self.clone();
            let id = id.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                {
                    let mut table = engine.containers.lock().await;
                    match table.get_mut(&id) {
                        Some(entry) if !entry.stopped_by_user => {
                            if let Some(state) = entry.info.state.as_mut() {
                                state.restart_count += 1;
                            }
                        }
                        _ => return,
                    }
                }
                if let Err(error) = engine.start(&id).await {
                    tracing::warn!(container = %id, %error, "restart failed");
                }
            });
        }
    }

    /// Removes the runtime's state, bundle and mounts of a container that no longer runs.
    fn cleanup_runtime(&self, id: &str) {
        if let Ok(container) = shoal_runtime::Container::load(&runtime_root(&self.config), id) {
            let _ = container.delete(true);
        }
        let bundle_rootfs = self.container_exec_dir(id).join("bundle").join("rootfs");
        // Normally the runtime's delete unmounts it; this covers a runtime state that was lost.
        let _ = nix::mount::umount2(&bundle_rootfs, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(runtime_root(&self.config).join(id));
    }

    pub async fn wait(&self, reference: &str) -> Result<ContainerInfo, EngineError> {
        let (id, mut rx) = {
            let table = self.containers.lock().await;
            let id = resolve_in(&table, reference)?;
            let entry = table.get(&id).expect("resolved");
            let status = entry
                .info
                .state
                .as_ref()
                .map(|s| s.status.as_str())
                .unwrap_or("");
            if status != "running" && status != "paused" {
                return Ok(entry.info.clone());
            }
            (id, entry.exited.subscribe())
        };
        // The sender lives as long as the entry; a removed entry ends the wait too.
        let _ = rx.changed().await;
        self.inspect(&id).await
    }

    pub async fn stop(
        self: &Arc<Self>,
        reference: &str,
        timeout_secs: i32,
    ) -> Result<ContainerInfo, EngineError> {
        let (id, client, signal, grace) = {
            let mut table = self.containers.lock().await;
            let id = resolve_in(&table, reference)?;
            let entry = table.get_mut(&id).expect("resolved");
            entry.stopped_by_user = true;
            let spec = entry.info.spec.clone().unwrap_or_default();
            let grace = if timeout_secs >= 0 {
                timeout_secs
            } else if spec.stop_timeout_secs > 0 {
                spec.stop_timeout_secs
            } else {
                10
            };
            let signal = parse_signal(if spec.stop_signal.is_empty() {
                "SIGTERM"
            } else {
                &spec.stop_signal
            })?;
            (id, entry.shim.clone(), signal, grace)
        };
        if let Some(client) = client {
            let grace = Duration::from_secs(grace as u64);
            let _ = tokio::task::spawn_blocking(move || client.stop(signal, grace)).await;
            return self.wait(&id).await;
        }
        self.inspect(&id).await
    }

    pub async fn kill(&self, reference: &str, signal: &str) -> Result<ContainerInfo, EngineError> {
        let signal = parse_signal(if signal.is_empty() { "SIGKILL" } else { signal })?;
        let (id, client) = {
            let mut table = self.containers.lock().await;
            let id = resolve_in(&table, reference)?;
            let entry = table.get_mut(&id).expect("resolved");
            entry.stopped_by_user = true;
            (id, entry.shim.clone())
        };
        let client = client
            .ok_or_else(|| EngineError::Conflict(format!("container {id} is not running")))?;
        tokio::task::spawn_blocking(move || client.kill(signal))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))??;
        self.inspect(&id).await
    }

    pub async fn pause(&self, reference: &str, pause: bool) -> Result<ContainerInfo, EngineError> {
        let mut table = self.containers.lock().await;
        let id = resolve_in(&table, reference)?;
        let entry = table.get_mut(&id).expect("resolved");
        let client = entry
            .shim
            .clone()
            .ok_or_else(|| EngineError::Conflict(format!("container {id} is not running")))?;
        let status = entry.status();
        if pause && status == "paused" {
            return Err(EngineError::Conflict(format!(
                "container {id} is already paused"
            )));
        }
        if !pause && status != "paused" {
            return Err(EngineError::Conflict(format!(
                "container {id} is not paused"
            )));
        }
        let result = tokio::task::spawn_blocking(move || {
            if pause {
                client.pause()
            } else {
                client.resume()
            }
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))?;
        result?;
        if let Some(state) = entry.info.state.as_mut() {
            state.status = if pause { "paused" } else { "running" }.into();
        }
        self.records.save(&entry.info)?;
        Ok(entry.info.clone())
    }

    pub async fn remove(&self, reference: &str, force: bool) -> Result<(), EngineError> {
        self.remove_with_volumes(reference, force, false).await
    }

    /// Removes a container; with `volumes` (`rm -v`), also its anonymous volumes that no
    /// other container uses. Named volumes always stay.
    pub async fn remove_with_volumes(
        &self,
        reference: &str,
        force: bool,
        volumes: bool,
    ) -> Result<(), EngineError> {
        let (id, client, mounts) = {
            let mut table = self.containers.lock().await;
            let id = resolve_in(&table, reference)?;
            let entry = table.get_mut(&id).expect("resolved");
            let status = entry.status();
            if (status == "running" || status == "paused") && !force {
                return Err(EngineError::Conflict(format!(
                    "cannot remove container {}: it is {status}; stop it first or use --force",
                    entry.info.name
                )));
            }
            entry.stopped_by_user = true;
            (id, entry.shim.clone(), entry.info.mounts.clone())
        };
        if let Some(client) = client {
            let mut exited = self.exit_watch(&id).await;
            let _ = tokio::task::spawn_blocking(move || client.shutdown(true)).await;
            // The waiter records the exit in the container's directory (and would create it
            // again): let it finish before the directory goes.
            if let Some(exited) = exited.as_mut() {
                let recorded = exited.wait_for(|code| code.is_some());
                let _ = tokio::time::timeout(Duration::from_secs(10), recorded).await;
            }
        }
        if let Some(net) = &self.network {
            let _ = net.detach(&id).await;
        }
        self.cleanup_runtime(&id);
        self.volumes.release(&id);
        let _ = std::fs::remove_dir_all(self.container_exec_dir(&id));
        self.records.remove(&id)?;
        self.containers.lock().await.remove(&id);
        if volumes {
            self.remove_anonymous_volumes(&mounts).await;
        }
        Ok(())
    }

    pub async fn inspect(&self, reference: &str) -> Result<ContainerInfo, EngineError> {
        let table = self.containers.lock().await;
        let id = resolve_in(&table, reference)?;
        Ok(table.get(&id).expect("resolved").info.clone())
    }

    pub async fn list(&self, all: bool) -> Vec<ContainerInfo> {
        let table = self.containers.lock().await;
        let mut list: Vec<ContainerInfo> = table
            .values()
            .map(|e| e.info.clone())
            .filter(|info| {
                all || matches!(
                    info.state.as_ref().map(|s| s.status.as_str()),
                    Some("running" | "paused" | "restarting")
                )
            })
            .collect();
        list.sort_by(|a, b| {
            let key = |i: &ContainerInfo| i.created.map(|t| (t.seconds, t.nanos));
            key(b).cmp(&key(a))
        });
        list
    }

    /// The live shim of a running container.
    pub(crate) async fn shim(
        &self,
        reference: &str,
    ) -> Result<(String, Arc<ShimClient>), EngineError> {
        let table = self.containers.lock().await;
        let id = resolve_in(&table, reference)?;
        let entry = table.get(&id).expect("resolved");
        let client = entry
            .shim
            .clone()
            .ok_or_else(|| EngineError::Conflict(format!("container {id} is not running")))?;
        Ok((id, client))
    }

    /// Registers an attached client of container `id`.
    pub(crate) async fn attach_guard(&self, id: &str) -> Option<AttachGuard> {
        let table = self.containers.lock().await;
        let entry = table.get(id)?;
        entry
            .attached
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(AttachGuard(entry.attached.clone()))
    }

    /// A receiver that changes when the container exits (for log followers).
    pub(crate) async fn exit_watch(&self, id: &str) -> Option<watch::Receiver<Option<i32>>> {
        let table = self.containers.lock().await;
        table.get(id).map(|e| e.exited.subscribe())
    }

    /// Chain IDs of layers that containers still use (for image garbage collection).
    pub async fn layers_in_use(&self) -> std::collections::HashSet<String> {
        // Collect under the lock, resolve (blocking store I/O) outside it.
        let image_ids: std::collections::HashSet<String> = {
            let table = self.containers.lock().await;
            table.values().map(|e| e.info.image_id.clone()).collect()
        };
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || {
            image_ids
                .iter()
                .filter_map(|id| images.resolve(id).ok())
                .flat_map(|image| image.chain_ids.into_iter().map(|c| c.to_string()))
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    pub(crate) fn runtime_root(&self) -> PathBuf {
        runtime_root(&self.config)
    }

    pub(crate) fn shoal_binary(&self) -> &Path {
        &self.config.shoal_binary
    }
}

fn runtime_root(config: &EngineConfig) -> PathBuf {
    config.exec_root.join("runtime")
}

fn resolve_in(table: &HashMap<String, Entry>, reference: &str) -> Result<String, EngineError> {
    if reference.is_empty() {
        return Err(EngineError::InvalidArgument(
            "a container reference is required".into(),
        ));
    }
    if table.contains_key(reference) {
        return Ok(reference.to_owned());
    }
    let bare = reference.strip_prefix('/').unwrap_or(reference);
    if let Some(entry) = table.values().find(|e| e.info.name == bare) {
        return Ok(entry.info.id.clone());
    }
    let matches: Vec<&String> = table
        .keys()
        .filter(|id| id.starts_with(reference))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(EngineError::NoSuchContainer(reference.to_owned())),
        many => Err(EngineError::Ambiguous {
            reference: reference.to_owned(),
            count: many.len(),
        }),
    }
}

/// The longest path a unix socket can bind (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Refuses an exec root so long that a shim's socket (`<exec-root>/containers/<64-hex
/// id>/shim.sock`) could not be bound: said when a container is created, before anything is
/// written, instead of as the shim's bind error at start. A daemon that runs no containers (a
/// manager only) is not affected.
fn check_socket_room(exec_root: &Path) -> Result<(), EngineError> {
    let longest = exec_root
        .join("containers")
        .join("0".repeat(64))
        .join("shim.sock")
        .as_os_str()
        .len();
    if longest > MAX_SOCKET_PATH {
        return Err(EngineError::InvalidArgument(format!(
            "exec root {} is too long: a container's socket path would be {longest} bytes, the \
             limit is {MAX_SOCKET_PATH}; use an exec root of at most {} bytes",
            exec_root.display(),
            exec_root.as_os_str().len() - (longest - MAX_SOCKET_PATH)
        )));
    }
    Ok(())
}

/// A run at least this long counts as healthy and resets the restart back-off.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

/// Docker's restart back-off: 100 ms after a healthy run (or the first exit), doubling after
/// each run shorter than [`HEALTHY_RUN`], capped at a minute, so a crash loop neither spins the
/// host nor leaves a recovered service waiting minutes after its next failure.
fn next_restart_delay(previous: Duration, run_time: Option<Duration>) -> Duration {
    let healthy = run_time.is_none_or(|t| t >= HEALTHY_RUN);
    if healthy || previous.is_zero() {
        FIRST_RESTART_DELAY
    } else {
        (previous * 2).min(MAX_RESTART_DELAY)
    }
}

fn settle_exit(info: &mut ContainerInfo, exit: Option<&ExitRecord>) {
    let state = info.state.get_or_insert_with(Default::default);
    state.status = "exited".into();
    state.pid = 0;
    match exit {
        Some(exit) => {
            state.exit_code = exit.exit_code;
            state.oom_killed = exit.oom_killed;
            state.finished_at = parse_rfc3339(&exit.finished_at).or_else(|| Some(now_rfc3339()));
        }
        None => {
            // The shim died without a record (e.g. the host rebooted): Docker reports 255.
            state.exit_code = 255;
            state.finished_at = Some(now_rfc3339());
            if state.error.is_empty() {
                state.error = "the container's supervisor disappeared".into();
            }
        }
    }
}

/// Entrypoint and command after the image's defaults, as Docker combines them.
fn command_line(
    spec: &ContainerSpec,
    image: Option<&shoal_image::ImageConfig>,
) -> Result<Vec<String>, EngineError> {
    let image_entrypoint = image
        .and_then(|c| c.entrypoint().clone())
        .unwrap_or_default();
    let image_cmd = image.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let entrypoint = if spec.entrypoint_set {
        spec.entrypoint.clone()
    } else {
        image_entrypoint
    };
    let cmd = if !spec.cmd.is_empty() {
        spec.cmd.clone()
    } else if spec.entrypoint_set {
        Vec::new()
    } else {
        image_cmd
    };
    let mut args = entrypoint;
    args.extend(cmd);
    if args.is_empty() {
        return Err(EngineError::InvalidArgument(
            "no command specified: the image has no CMD or ENTRYPOINT; give one after the image name".into(),
        ));
    }
    Ok(args)
}

fn port_mapping(port: &shoal_api::v1::PortBinding) -> Result<PortMapping, EngineError> {
    let protocol = if port.protocol.is_empty() {
        "tcp"
    } else {
        port.protocol.as_str()
    };
    let mut text = String::new();
    if !port.host_ip.is_empty() {
        text.push_str(&port.host_ip);
        text.push(':');
    }
    if port.host_port != 0 {
        text.push_str(&port.host_port.to_string());
        text.push(':');
    } else if !port.host_ip.is_empty() {
        text.push(':');
    }
    text.push_str(&format!("{}/{protocol}", port.container_port));
    Ok(PortMapping::parse(&text)?)
}

fn mount_config(
    mount: &shoal_api::v1::MountSpec,
) -> Result<shoal_runtime::spec::MountConfig, EngineError> {
    use shoal_api::v1::mount_spec::Kind;
    use shoal_runtime::spec::MountConfig;
    if !mount.target.starts_with('/') {
        return Err(EngineError::InvalidArgument(format!(
            "mount target {:?} must be an absolute path",
            mount.target
        )));
    }
    match Kind::try_from(mount.kind).unwrap_or(Kind::Bind) {
        Kind::Tmpfs => Ok(MountConfig::Tmpfs {
            target: mount.target.clone().into(),
            size_bytes: (mount.tmpfs_size_bytes > 0).then_some(mount.tmpfs_size_bytes),
            mode: None,
            readonly: mount.read_only,
        }),
        Kind::Bind => {
            if !Path::new(&mount.source).is_absolute() {
                return Err(EngineError::InvalidArgument(format!(
                    "bind source {:?} must be an absolute path",
                    mount.source
                )));
            }
            if !Path::new(&mount.source).exists() {
                if !mount.create_source {
                    return Err(EngineError::InvalidArgument(format!(
                        "invalid mount config for type \"bind\": bind source path does not exist: {}",
                        mount.source
                    )));
                }
                // `-v /host/path:/path` makes a missing host directory, as Docker does.
                std::os::unix::fs::DirBuilderExt::mode(
                    std::fs::DirBuilder::new().recursive(true),
                    0o755,
                )
                .create(&mount.source)
                .map_err(|e| EngineError::io("create", Path::new(&mount.source), e))?;
            }
            Ok(MountConfig::Bind {
                source: mount.source.clone().into(),
                target: mount.target.clone().into(),
                readonly: mount.read_only,
            })
        }
        // Resolved at create to a volume's directory; see `Engine::volume_mounts`.
        Kind::Volume => Err(EngineError::Internal(
            "a volume mount reached the bind/tmpfs path unresolved".into(),
        )),
    }
}

/// `SIGTERM`, `TERM`, `15` → the signal number.
fn parse_signal(text: &str) -> Result<i32, EngineError> {
    if let Ok(number) = text.parse::<i32>() {
        if (1..=64).contains(&number) {
            return Ok(number);
        }
    } else {
        let upper = text.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        if let Ok(signal) = name.parse::<nix::sys::signal::Signal>() {
            return Ok(signal as i32);
        }
    }
    Err(EngineError::InvalidArgument(format!(
        "invalid signal {text:?}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_root_too_long_for_shim_sockets_is_refused() {
        assert!(check_socket_room(Path::new("/run/shoal")).is_ok());
        let long = format!("/tmp/{}", "x".repeat(40));
        let err = check_socket_room(Path::new(&long)).unwrap_err().to_string();
        assert!(
            err.contains("is too long") && err.contains("at most 21 bytes"),
            "{err}"
        );
    }

    #[test]
    fn restart_backoff_doubles_on_quick_exits_and_resets_after_a_healthy_run() {
        let quick = Some(Duration::from_secs(1));
        let mut delay = next_restart_delay(Duration::ZERO, quick);
        assert_eq!(delay, Duration::from_millis(100));
        for expected in [200, 400, 800] {
            delay = next_restart_delay(delay, quick);
            assert_eq!(delay, Duration::from_millis(expected));
        }
        for _ in 0..20 {
            delay = next_restart_delay(delay, quick);
        }
        assert_eq!(delay, Duration::from_secs(60));
        delay = next_restart_delay(delay, Some(Duration::from_secs(10)));
        assert_eq!(delay, Duration::from_millis(100));
        assert_eq!(
            next_restart_delay(Duration::from_secs(5), None),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("0").is_err());
    }

    #[test]
    fn command_lines_follow_docker() {
        let spec = |cmd: &[&str], entrypoint: Option<&[&str]>| ContainerSpec {
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            entrypoint: entrypoint
                .unwrap_or_default()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            entrypoint_set: entrypoint.is_some(),
            ..Default::default()
        };
        let image: shoal_image::ImageConfig =
            serde_json::from_str(r#"{"Entrypoint":["/bin/tini","--"],"Cmd":["sh"]}"#).unwrap();
        assert_eq!(
            command_line(&spec(&[], None), Some(&image)).unwrap(),
            ["/bin/tini", "--", "sh"]
        );
        assert_eq!(
            command_line(&spec(&["echo", "hi"], None), Some(&image)).unwrap(),
            ["/bin/tini", "--", "echo", "hi"]
        );
        assert_eq!(
            command_line(&spec(&[], Some(&["/bin/echo"])), Some(&image)).unwrap(),
            ["/bin/echo"]
        );
        assert!(command_line(&spec(&[], None), None).is_err());
    }
}
