//! `shoal daemon`: opens the data root, resumes this host's role, and serves the local API on
//! a unix socket until SIGTERM or SIGINT.

mod autolock;
mod cluster;
mod data_root;
mod host;
mod socket;
mod swarm;

use std::path::PathBuf;

use anyhow::Context;
use shoal_manager::control::{ControlApi, ManagerSlot};
use tokio::signal::unix::{SignalKind, signal};

use crate::observability;

/// Options of `shoal daemon`.
#[derive(Debug, clap::Args)]
pub(crate) struct DaemonArgs {
    /// Unix socket to serve the API on (unix:///path); defaults to the global -H, then
    /// unix:///run/shoal/shoal.sock.
    #[arg(short = 'H', long = "host", value_name = "HOST")]
    pub(crate) host: Option<String>,

    /// Directory for persistent state: swarm membership, certificates, the replicated log.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/shoal")]
    pub(crate) data_root: PathBuf,

    /// Directory for runtime state that does not survive a reboot.
    #[arg(long, value_name = "DIR", default_value = "/run/shoal")]
    pub(crate) exec_root: PathBuf,

    /// Group allowed to use the API socket (mode 0660); without it the socket is root-only (0600).
    #[arg(long, value_name = "GROUP")]
    pub(crate) group: Option<String>,

    /// Least severe log level written to stderr: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info",
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub(crate) log_level: String,

    /// Group concurrent writes into one replicated log entry. Turning it off exists for
    /// benchmarks that measure what grouping buys.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) raft_group_commit: bool,

    /// Bridge for containers' default network (created if missing), or `none` to give
    /// containers no network unless they ask for `--network host`.
    #[arg(long, value_name = "NAME|none", default_value = "shoal0")]
    pub(crate) bridge: String,

    /// Subnet of the default bridge.
    #[arg(long, value_name = "CIDR", default_value = "172.30.0.0/16")]
    pub(crate) bridge_subnet: String,

    /// cgroup every container's cgroup is made under (`PATH/<id>`, in each hierarchy). Daemons
    /// sharing a machine give different ones so their containers never share a subtree.
    #[arg(long, value_name = "PATH", default_value = "/shoal", value_parser = parse_cgroup_parent)]
    pub(crate) cgroup_parent: PathBuf,

    /// Rotate a container's log when it reaches this many bytes (0: never).
    #[arg(long, value_name = "BYTES", default_value_t = 10 * 1024 * 1024)]
    pub(crate) log_max_size: u64,

    /// Log files kept per container, the live one included.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub(crate) log_max_files: u32,

    /// Registry reached over plain HTTP instead of HTTPS (repeatable). Only for registries on
    /// a trusted network: nothing protects what travels to them.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]",
          value_parser = parse_insecure_registry)]
    pub(crate) insecure_registries: Vec<String>,

    /// PEM file of CA certificates trusted for HTTPS registries besides the system's roots
    /// (repeatable), e.g. a registry behind a private CA.
    #[arg(long = "registry-ca", value_name = "FILE")]
    pub(crate) registry_cas: Vec<PathBuf>,
}

/// Reads a `--registry-ca` file now, so a bad one stops the daemon with one line instead of
/// failing every pull later.
fn read_registry_ca(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read --registry-ca {}", path.display()))?;
    let mut count = 0;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        certificate.map_err(|e| {
            anyhow::anyhow!(
                "--registry-ca {}: not a PEM certificate: {e}",
                path.display()
            )
        })?;
        count += 1;
    }
    if count == 0 {
        anyhow::bail!(
            "--registry-ca {}: no PEM certificate in the file",
            path.display()
        );
    }
    Ok(pem)
}

fn parse_insecure_registry(value: &str) -> Result<String, String> {
    shoal_image::registry::parse_insecure_registry(value).map_err(|e| e.to_string())
}

/// An absolute cgroup path without `..` (which would escape the hierarchy) and not the root
/// itself (containers would land beside every other cgroup of the machine).
fn parse_cgroup_parent(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    if !path.is_absolute() {
        return Err(format!(
            "{value:?} is not absolute: use a path such as /shoal"
        ));
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("{value:?} contains \"..\""));
    }
    if path.parent().is_none() {
        return Err("the cgroup root cannot be the parent: use a path such as /shoal".into());
    }
    Ok(path)
}

fn engine_config(args: &DaemonArgs) -> anyhow::Result<shoal_engine::EngineConfig> {
    let shoal_binary = std::env::current_exe().context("cannot locate the shoal executable")?;
    let shim_binary = shoal_binary
        .parent()
        .map(|dir| dir.join("shoal-shim"))
        .context("the shoal executable has no directory")?;
    if !shim_binary.exists() {
        anyhow::bail!(
            "{} is missing: install shoal-shim beside shoal",
            shim_binary.display()
        );
    }
    let bridge = if args.bridge == "none" {
        None
    } else {
        let subnet = args.bridge_subnet.parse().map_err(|_| {
            anyhow::anyhow!(
                "invalid --bridge-subnet {:?}: expected a CIDR such as 172.30.0.0/16",
                args.bridge_subnet
            )
        })?;
        Some(shoal_net::BridgeConfig {
            bridge: args.bridge.clone(),
            subnet,
            ..Default::default()
        })
    };
    Ok(shoal_engine::EngineConfig {
        data_root: args.data_root.clone(),
        exec_root: args.exec_root.clone(),
        shim_binary,
        shoal_binary,
        bridge,
        log_max_size: (args.log_max_size > 0).then_some(args.log_max_size),
        log_max_files: args.log_max_files.max(1),
        insecure_registries: args.insecure_registries.clone(),
        registry_ca_pems: args
            .registry_cas
            .iter()
            .map(|path| read_registry_ca(path))
            .collect::<anyhow::Result<_>>()?,
        cgroup_parent: args.cgroup_parent.clone(),
    })
}

pub(crate) async fn run(args: DaemonArgs, host: &str) -> anyhow::Result<()> {
    observability::init(&args.log_level)?;
    // One crypto provider for every TLS configuration built in this process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let socket_path = socket::path_of(host)?;

    std::fs::create_dir_all(&args.exec_root)
        .with_context(|| format!("cannot create exec root {}", args.exec_root.display()))?;
    let data_root = data_root::DataRoot::open(&args.data_root)?;
    let slot = ManagerSlot::default();
    let membership = swarm::Membership::start(
        data_root,
        args.exec_root.clone(),
        swarm::ManagerOptions {
            group_commit: args.raft_group_commit,
        },
        slot.clone(),
    )
    .await?;
    let engine = shoal_engine::Engine::open(engine_config(&args)?)
        .await
        .context("cannot start the container engine")?;
    let listener = socket::bind(&socket_path, args.group.as_deref())?;
    tracing::info!(socket = %socket_path.display(), data_root = %args.data_root.display(), "daemon ready");

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
        }
    };
    let served = tonic::transport::Server::builder()
        .add_service(swarm::SwarmApi::server(membership.clone()))
        .add_service(ControlApi::new(slot).into_server())
        .add_service(shoal_engine::ContainersApi::server(engine.clone()))
        .add_service(shoal_engine::ImagesApi::server(engine.clone()))
        .add_service(shoal_engine::VolumesApi::server(engine.clone()))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await;
    membership.shutdown().await;
    let _ = std::fs::remove_file(&socket_path);
    served.context("the API server failed")?;
    tracing::info!("daemon stopped");
    Ok(())
}
