//! `commands/container.rs`: the verbs on existing containers — `ps`, `logs`, `exec`, `stop`,
//! `restart`, `kill`, `pause`, `unpause`, `rm`, `wait`, `inspect`, `top`, `stats`, `port` —
//! with Docker's tables, inspect JSON shape and messages.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use shoal_api::v1::{self, ContainerInfo, mount_spec, stdio_input};
use time::OffsetDateTime;

use crate::attach::{Ended, Session, exit_status};
use crate::daemon::{Daemon, Lifecycle};
use crate::error::io_reason;
use crate::format::container::{
    command_cell, is_running, port_lines, ports_cell, short_id, status_cell,
};
use crate::format::table::Table;
use crate::format::time::{ago, rfc3339, rfc3339_nano_fixed};
use crate::format::units::{bytes_size, human_size};
use crate::format::{JsonFormat, ListFormat, write_json_lines, write_json_pretty};
use crate::parse::container as pc;
use crate::stdio::{Stdio, terminal_size};
use crate::{CliError, GlobalArgs};

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    all: bool,
    /// Only display container IDs
    #[arg(short, long)]
    quiet: bool,
    /// Don't truncate output
    #[arg(long)]
    no_trunc: bool,
    /// Show n last created containers (includes all states)
    #[arg(short = 'n', long, value_name = "N")]
    last: Option<usize>,
    /// Show the latest created container (includes all states)
    #[arg(short, long)]
    latest: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    format: ListFormat,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short, long)]
    follow: bool,
    /// Number of lines to show from the end of the logs, or "all"
    #[arg(short = 'n', long, value_name = "N|all", default_value = "all", value_parser = pc::tail)]
    tail: i64,
    /// Show timestamps
    #[arg(short, long)]
    timestamps: bool,
    /// Show logs since a timestamp (e.g. 2024-05-01T12:00:00Z) or relative (e.g. 42m)
    #[arg(long, value_name = "TIME", value_parser = pc::since_arg)]
    since: Option<String>,
    /// Container ID, ID prefix or name
    #[arg(value_name = "CONTAINER")]
    container: String,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Keep STDIN open even if not attached
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    tty: bool,
    /// Set environment variables (KEY alone takes our value)
    #[arg(short, long = "env", value_name = "KEY[=VALUE]", value_parser = pc::env_var)]
    env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long, value_name = "FILE")]
    env_file: Vec<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short, long, value_name = "USER")]
    user: Option<String>,
    /// Working directory inside the container
    #[arg(short, long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// Give extended privileges to the command
    #[arg(long)]
    privileged: bool,
    /// Override the key sequence for detaching a container (default ctrl-p,ctrl-q)
    #[arg(long, value_name = "KEYS")]
    detach_keys: Option<String>,
    /// The container, then the command and its arguments (flags after CONTAINER are the
    /// command's)
    #[arg(
        value_name = "CONTAINER",
        required = true,
        num_args = 2..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Seconds to wait before killing the container
    #[arg(
        short = 't',
        long = "time",
        visible_alias = "timeout",
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    time: Option<i32>,
    /// Container IDs, ID prefixes or names
    #[arg(value_name = "CONTAINER", required = true)]
    containers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// Signal to send to the container
    #[arg(short, long, value_name = "SIGNAL", default_value = "KILL")]
    signal: String,
    /// Container IDs, ID prefixes or names
    #[arg(value_name = "CONTAINER", required = true)]
    containers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ContainerRefs {
    /// Container IDs, ID prefixes or names
    #[arg(value_name = "CONTAINER", required = true)]
    containers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL)
    #[arg(short, long)]
    force: bool,
    /// Remove anonymous volumes associated with the container
    #[arg(short, long)]
    volumes: bool,
    /// Container IDs, ID prefixes or names
    #[arg(value_name = "CONTAINER", required = true)]
    containers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Output format (JSON is the default and only one)
    #[arg(long, value_enum)]
    format: Option<JsonFormat>,
    /// Container IDs, ID prefixes or names
    #[arg(value_name = "CONTAINER", required = true)]
    containers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Container ID, ID prefix or name
    #[arg(value_name = "CONTAINER")]
    container: String,
}

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    all: bool,
    /// Disable streaming stats and only pull the first result
    #[arg(long)]
    no_stream: bool,
    /// Do not truncate output
    #[arg(long)]
    no_trunc: bool,
    /// Container IDs, ID prefixes or names (default: all running)
    #[arg(value_name = "CONTAINER")]
    containers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct PortArgs {
    /// Container ID, ID prefix or name
    #[arg(value_name = "CONTAINER")]
    container: String,
    /// A container port, optionally with its protocol (80, 53/udp)
    #[arg(value_name = "PRIVATE_PORT[/PROTO]", value_parser = pc::port_and_protocol)]
    port: Option<(u32, String)>,
}

/// `stop`, `restart`, `kill`, `pause`, `unpause`, `rm`, `start`: one request per reference,
/// each printed when it worked; the failures together are the error.
pub(crate) async fn each(
    global: &GlobalArgs,
    references: &[String],
    op: Lifecycle,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let mut errors = Vec::new();
    for reference in references {
        match daemon.lifecycle(reference, &op).await {
            Ok(()) => writeln!(io.out, "{reference}")?,
            Err(err) => errors.push(err),
        }
    }
    CliError::collect(errors).map(|()| 0)
}

pub(crate) fn stop_timeout(time: Option<i32>) -> i32 {
    // Negative asks the daemon for the container's own timeout.
    time.unwrap_or(-1)
}

pub(crate) fn stop_op(args: &StopArgs) -> Lifecycle {
    Lifecycle::Stop {
        timeout_secs: stop_timeout(args.time),
    }
}

pub(crate) fn restart_op(args: &StopArgs) -> Lifecycle {
    Lifecycle::Restart {
        timeout_secs: stop_timeout(args.time),
    }
}

impl StopArgs {
    pub(crate) fn containers(&self) -> &[String] {
        &self.containers
    }
}

impl KillArgs {
    pub(crate) fn op(&self) -> (Lifecycle, &[String]) {
        let op = Lifecycle::Kill {
            signal: self.signal.clone(),
        };
        (op, &self.containers)
    }
}

impl ContainerRefs {
    pub(crate) fn containers(&self) -> &[String] {
        &self.containers
    }
}

impl RmArgs {
    pub(crate) fn op(&self) -> (Lifecycle, &[String]) {
        let op = Lifecycle::Remove {
            force: self.force,
            volumes: self.volumes,
        };
        (op, &self.containers)
    }
}

// ps ----------------------------------------------------------------------------------------

pub(crate) async fn ps(
    global: &GlobalArgs,
    args: PsArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let all = args.all || args.latest || args.last.is_some();
    let mut daemon = Daemon::connect(&global.host).await?;
    let mut containers = daemon.list_containers(all).await?;
    if !all {
        containers.retain(|c| is_running(c.state.as_ref()));
    }
    sort_newest_first(&mut containers);
    let keep = if args.latest { Some(1) } else { args.last };
    if let Some(n) = keep {
        containers.truncate(n);
    }
    if args.quiet {
        for c in &containers {
            let id = if args.no_trunc {
                c.id.clone()
            } else {
                short_id(&c.id)
            };
            writeln!(io.out, "{id}")?;
        }
        return Ok(0);
    }
    let now = OffsetDateTime::now_utc();
    let rows: Vec<PsRow> = containers
        .iter()
        .map(|c| PsRow::new(c, now, !args.no_trunc))
        .collect();
    match args.format {
        ListFormat::Table => write_ps_table(io.out, &rows)?,
        ListFormat::Json => write_json_lines(io.out, &rows)?,
    }
    Ok(0)
}

fn sort_newest_first(containers: &mut [ContainerInfo]) {
    containers.sort_by(|a, b| {
        let key = |c: &ContainerInfo| c.created.map(|t| (t.seconds, t.nanos));
        key(b).cmp(&key(a)).then_with(|| a.id.cmp(&b.id))
    });
}

/// A container's name as people see it: without Docker's leading `/`.
fn display_name(info: &ContainerInfo) -> &str {
    info.name.strip_prefix('/').unwrap_or(&info.name)
}

/// The image as given when it was created, else its short ID.
fn display_image(info: &ContainerInfo) -> String {
    if !info.image.is_empty() {
        info.image.clone()
    } else if let Some(image) = info
        .spec
        .as_ref()
        .map(|s| &s.image)
        .filter(|i| !i.is_empty())
    {
        image.clone()
    } else {
        short_id(&info.image_id)
    }
}

fn published(info: &ContainerInfo) -> &[v1::PublishedPort] {
    info.network.as_ref().map_or(&[], |n| n.ports.as_slice())
}

/// One line of `ps`; also its `--format json` object (Docker's keys).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct PsRow {
    #[serde(rename = "ID")]
    id: String,
    image: String,
    command: String,
    created_at: String,
    running_for: String,
    ports: String,
    state: String,
    status: String,
    names: String,
    labels: String,
}

impl PsRow {
    fn new(info: &ContainerInfo, now: OffsetDateTime, truncate: bool) -> Self {
        let labels: BTreeMap<_, _> = info
            .spec
            .as_ref()
            .map(|s| s.labels.iter().collect())
            .unwrap_or_default();
        PsRow {
            id: if truncate {
                short_id(&info.id)
            } else {
                info.id.clone()
            },
            image: display_image(info),
            command: command_cell(&info.command, !truncate),
            created_at: rfc3339(info.created.as_ref()),
            running_for: ago(info.created.as_ref(), now),
            ports: ports_cell(published(info)),
            state: info
                .state
                .as_ref()
                .map_or_else(String::new, |s| s.status.clone()),
            status: status_cell(info.state.as_ref(), now),
            names: display_name(info).to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

fn write_ps_table(out: &mut dyn std::io::Write, rows: &[PsRow]) -> std::io::Result<()> {
    let mut table = Table::with_header(&[
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ]);
    for row in rows {
        table.row(vec![
            row.id.clone(),
            row.image.clone(),
            row.command.clone(),
            row.running_for.clone(),
            row.status.clone(),
            row.ports.clone(),
            row.names.clone(),
        ]);
    }
    table.write(out)
}

// logs --------------------------------------------------------------------------------------

pub(crate) async fn logs(
    global: &GlobalArgs,
    args: LogsArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let since = match &args.since {
        Some(text) => Some(pc::since(text, OffsetDateTime::now_utc()).map_err(CliError::Usage)?),
        None => None,
    };
    let mut daemon = Daemon::connect(&global.host).await?;
    let mut stream = daemon
        .logs(v1::LogsRequest {
            container: args.container.clone(),
            follow: args.follow,
            tail: args.tail,
            timestamps: args.timestamps,
            since,
        })
        .await?;
    loop {
        let entry = match stream.message().await {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(0),
            Err(status) => return Err(daemon.fail(status)),
        };
        let out: &mut dyn std::io::Write = if entry.stream == "stderr" {
            &mut *io.err
        } else {
            &mut *io.out
        };
        write_log_line(out, &entry, args.timestamps)?;
    }
}

/// One entry: the line as logged (a newline added if it has none), after its time with `-t`.
fn write_log_line(
    out: &mut dyn std::io::Write,
    entry: &v1::LogEntry,
    timestamps: bool,
) -> std::io::Result<()> {
    if timestamps && let Some(time) = &entry.time {
        write!(out, "{} ", rfc3339_nano_fixed(time))?;
    }
    out.write_all(&entry.line)?;
    if !entry.line.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.flush()
}

// exec --------------------------------------------------------------------------------------

pub(crate) async fn exec(
    global: &GlobalArgs,
    args: ExecArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let Some((container, cmd)) = args.args.split_first().filter(|(_, cmd)| !cmd.is_empty()) else {
        return Err(CliError::usage("exec needs a container and a command"));
    };
    let lookup = |key: &str| std::env::var(key).ok();
    let mut env = Vec::new();
    for path in &args.env_file {
        let text = std::fs::read_to_string(path).map_err(|err| CliError::ReadInput {
            path: path.clone(),
            reason: io_reason(&err).to_lowercase(),
        })?;
        env.extend(pc::env_file(path, &text, &lookup).map_err(CliError::Usage)?);
    }
    env.extend(args.env.iter().filter_map(|e| pc::resolve_env(e, &lookup)));
    if args.tty && args.interactive && !io.stdin_tty {
        return Err(CliError::usage("the input device is not a TTY"));
    }
    let keys = crate::attach::detach_keys(args.detach_keys.as_deref().unwrap_or_default())?;
    let mut daemon = Daemon::connect(&global.host).await?;
    let session = Session {
        first: stdio_input::Input::Exec(v1::ExecSpec {
            container: container.clone(),
            cmd: cmd.to_vec(),
            env,
            user: args.user.clone().unwrap_or_default(),
            working_dir: args.workdir.clone().unwrap_or_default(),
            tty: args.tty,
            open_stdin: args.interactive,
            privileged: args.privileged,
            console_size: if args.tty && io.input.is_process() {
                terminal_size()
            } else {
                None
            },
        }),
        stdin: args.interactive,
        tty: args.tty,
        start: None,
        sig_proxy: None,
        detach_keys: keys,
        close_stdin: true,
    };
    match session.run(&mut daemon, io).await? {
        Ended::Exited(code) => Ok(exit_status(code)),
        Ended::Closed => Err(CliError::Protocol(
            "the exec stream ended without an exit code",
        )),
        // The process runs on, as after `docker exec -it` and the detach keys.
        Ended::Detached => Ok(0),
        Ended::Signal(number) => Ok(exit_status(128 + number)),
    }
}

// wait --------------------------------------------------------------------------------------

pub(crate) async fn wait(
    global: &GlobalArgs,
    args: ContainerRefs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let mut errors = Vec::new();
    for reference in &args.containers {
        match daemon.wait_container(reference).await {
            Ok(state) => writeln!(io.out, "{}", state.exit_code)?,
            Err(err) => errors.push(err),
        }
    }
    CliError::collect(errors).map(|()| 0)
}

// inspect -----------------------------------------------------------------------------------

pub(crate) async fn inspect(
    global: &GlobalArgs,
    args: InspectArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let _ = args.format;
    let mut daemon = Daemon::connect(&global.host).await?;
    let mut views = Vec::new();
    let mut errors = Vec::new();
    for reference in &args.containers {
        match daemon.inspect_container(reference).await {
            Ok(info) => views.push(ContainerView::new(&info)),
            Err(err) => errors.push(err),
        }
    }
    write_json_pretty(io.out, &views)?;
    CliError::collect(errors).map(|()| 0)
}

/// Docker's `docker container inspect` shape (the fields the contract carries), so jq paths
/// like `.[0].State.ExitCode` or `.[0].NetworkSettings.Ports` carry over.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerView {
    id: String,
    created: String,
    path: String,
    args: Vec<String>,
    state: StateView,
    image: String,
    log_path: String,
    name: String,
    restart_count: u32,
    host_config: HostConfigView,
    mounts: Vec<MountView>,
    config: ConfigView,
    network_settings: NetworkSettingsView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct StateView {
    status: String,
    running: bool,
    paused: bool,
    restarting: bool,
    #[serde(rename = "OOMKilled")]
    oom_killed: bool,
    dead: bool,
    pid: i32,
    exit_code: i32,
    error: String,
    started_at: String,
    finished_at: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct HostConfigView {
    binds: Option<Vec<String>>,
    network_mode: String,
    port_bindings: BTreeMap<String, Vec<HostPortView>>,
    restart_policy: RestartPolicyView,
    auto_remove: bool,
    publish_all_ports: bool,
    readonly_rootfs: bool,
    security_opt: Option<Vec<String>>,
    memory: i64,
    memory_swap: i64,
    nano_cpus: i64,
    pids_limit: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RestartPolicyView {
    name: String,
    maximum_retry_count: u32,
}

#[derive(Debug, Serialize)]
struct HostPortView {
    #[serde(rename = "HostIp")]
    host_ip: String,
    #[serde(rename = "HostPort")]
    host_port: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct MountView {
    #[serde(rename = "Type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    source: String,
    destination: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver: Option<String>,
    #[serde(rename = "RW")]
    rw: bool,
}

impl MountView {
    /// A mount as the daemon resolved it at create (volumes by name and host directory).
    fn resolved(mount: &v1::ContainerMount) -> Self {
        MountView {
            kind: match mount.r#type.as_str() {
                "volume" => "volume",
                "tmpfs" => "tmpfs",
                _ => "bind",
            },
            name: (!mount.name.is_empty()).then(|| mount.name.clone()),
            source: mount.source.clone(),
            destination: mount.destination.clone(),
            driver: (!mount.driver.is_empty()).then(|| mount.driver.clone()),
            rw: mount.rw,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ConfigView {
    hostname: String,
    user: String,
    tty: bool,
    open_stdin: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    exposed_ports: BTreeMap<String, EmptyObject>,
    env: Vec<String>,
    cmd: Option<Vec<String>>,
    image: String,
    working_dir: String,
    entrypoint: Option<Vec<String>>,
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    stop_signal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_timeout: Option<i32>,
}

/// `{}`, as Docker writes each exposed port.
#[derive(Debug, Serialize)]
struct EmptyObject {}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkSettingsView {
    #[serde(rename = "IPAddress")]
    ip_address: String,
    gateway: String,
    mac_address: String,
    ports: BTreeMap<String, Option<Vec<HostPortView>>>,
}

fn port_key(port: u32, protocol: &str) -> String {
    let protocol = if protocol.is_empty() { "tcp" } else { protocol };
    format!("{port}/{protocol}")
}

fn none_if_empty(values: &[String]) -> Option<Vec<String>> {
    (!values.is_empty()).then(|| values.to_vec())
}

impl ContainerView {
    fn new(info: &ContainerInfo) -> Self {
        let spec = info.spec.clone().unwrap_or_default();
        let state = info.state.clone().unwrap_or_default();
        let network = info.network.clone().unwrap_or_default();
        let status = if state.status.is_empty() {
            "created".to_owned()
        } else {
            state.status.clone()
        };
        let mut port_bindings: BTreeMap<String, Vec<HostPortView>> = BTreeMap::new();
        for p in &spec.ports {
            port_bindings
                .entry(port_key(p.container_port, &p.protocol))
                .or_default()
                .push(HostPortView {
                    host_ip: p.host_ip.clone(),
                    host_port: if p.host_port == 0 {
                        String::new()
                    } else {
                        p.host_port.to_string()
                    },
                });
        }
        let mut ports: BTreeMap<String, Option<Vec<HostPortView>>> = BTreeMap::new();
        for p in &network.ports {
            let entry = ports
                .entry(port_key(p.container_port, &p.protocol))
                .or_default();
            if p.host_port != 0 {
                entry.get_or_insert_default().push(HostPortView {
                    host_ip: if p.host_ip.is_empty() {
                        "0.0.0.0".to_owned()
                    } else {
                        p.host_ip.clone()
                    },
                    host_port: p.host_port.to_string(),
                });
            }
        }
        let binds: Vec<String> = spec
            .mounts
            .iter()
            .filter(|m| m.kind() != mount_spec::Kind::Tmpfs && !m.source.is_empty())
            .map(|m| {
                let ro = if m.read_only { ":ro" } else { "" };
                format!("{}:{}{ro}", m.source, m.target)
            })
            .collect();
        // Containers created before mounts were recorded show what their spec asked for.
        let mounts = if !info.mounts.is_empty() {
            info.mounts.iter().map(MountView::resolved).collect()
        } else {
            spec.mounts
                .iter()
                .map(|m| MountView {
                    kind: match m.kind() {
                        mount_spec::Kind::Bind => "bind",
                        mount_spec::Kind::Volume => "volume",
                        mount_spec::Kind::Tmpfs => "tmpfs",
                    },
                    name: (m.kind() == mount_spec::Kind::Volume && !m.source.is_empty())
                        .then(|| m.source.clone()),
                    source: m.source.clone(),
                    destination: m.target.clone(),
                    driver: None,
                    rw: !m.read_only,
                })
                .collect()
        };
        let restart = spec.restart_policy.clone().unwrap_or_default();
        let name = info.name.strip_prefix('/').unwrap_or(&info.name);
        ContainerView {
            id: info.id.clone(),
            created: rfc3339(info.created.as_ref()),
            path: info.command.first().cloned().unwrap_or_default(),
            args: info.command.iter().skip(1).cloned().collect(),
            state: StateView {
                running: matches!(status.as_str(), "running" | "paused" | "restarting"),
                paused: status == "paused",
                restarting: status == "restarting",
                oom_killed: state.oom_killed,
                dead: status == "dead",
                pid: state.pid,
                exit_code: state.exit_code,
                error: state.error.clone(),
                started_at: rfc3339(state.started_at.as_ref()),
                finished_at: rfc3339(state.finished_at.as_ref()),
                status,
            },
            image: info.image_id.clone(),
            log_path: info.log_path.clone(),
            name: format!("/{name}"),
            restart_count: state.restart_count,
            host_config: HostConfigView {
                binds: none_if_empty(&binds),
                network_mode: if spec.network_mode.is_empty() {
                    network.mode.clone()
                } else {
                    spec.network_mode.clone()
                },
                port_bindings,
                restart_policy: RestartPolicyView {
                    name: if restart.name.is_empty() {
                        "no".to_owned()
                    } else {
                        restart.name
                    },
                    maximum_retry_count: restart.maximum_retry_count,
                },
                auto_remove: spec.auto_remove,
                publish_all_ports: spec.publish_all,
                readonly_rootfs: spec.read_only,
                security_opt: spec
                    .no_new_privileges
                    .then(|| vec!["no-new-privileges".to_owned()]),
                memory: spec.memory_bytes,
                memory_swap: spec.memory_swap_bytes,
                nano_cpus: spec.nano_cpus,
                pids_limit: (spec.pids_limit != 0).then_some(spec.pids_limit),
            },
            mounts,
            config: ConfigView {
                hostname: spec.hostname.clone(),
                user: spec.user.clone(),
                tty: spec.tty,
                open_stdin: spec.open_stdin,
                exposed_ports: spec
                    .ports
                    .iter()
                    .map(|p| (port_key(p.container_port, &p.protocol), EmptyObject {}))
                    .collect(),
                env: spec.env.clone(),
                cmd: none_if_empty(&spec.cmd),
                image: if spec.image.is_empty() {
                    info.image.clone()
                } else {
                    spec.image.clone()
                },
                working_dir: spec.working_dir.clone(),
                entrypoint: none_if_empty(&spec.entrypoint),
                labels: spec.labels.clone().into_iter().collect(),
                stop_signal: spec.stop_signal.clone(),
                stop_timeout: (spec.stop_timeout_secs != 0).then_some(spec.stop_timeout_secs),
            },
            network_settings: NetworkSettingsView {
                ip_address: network.ip_address.clone(),
                gateway: network.gateway.clone(),
                mac_address: network.mac_address.clone(),
                ports,
            },
        }
    }
}

// top ---------------------------------------------------------------------------------------

pub(crate) async fn top(
    global: &GlobalArgs,
    args: TopArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let top = daemon.top(&args.container).await?;
    let titles: Vec<&str> = top.titles.iter().map(String::as_str).collect();
    let mut table = Table::with_header(&titles);
    for process in top.processes {
        table.row(process.fields);
    }
    table.write(io.out)?;
    Ok(0)
}

// port --------------------------------------------------------------------------------------

pub(crate) async fn port(
    global: &GlobalArgs,
    args: PortArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let info = daemon.inspect_container(&args.container).await?;
    let only = args.port.as_ref().map(|(p, proto)| (*p, proto.as_str()));
    let lines = port_lines(published(&info), only);
    if let Some((port, proto)) = only
        && lines.is_empty()
    {
        return Err(CliError::usage(format!(
            "no public port '{port}/{proto}' published for {}",
            args.container
        )));
    }
    for line in lines {
        writeln!(io.out, "{line}")?;
    }
    Ok(0)
}

// stats -------------------------------------------------------------------------------------

/// How far apart the two samples of one CPU % reading are.
const CPU_SAMPLE_GAP: Duration = Duration::from_millis(500);

/// `stats`: CPU % comes from two samples [`CPU_SAMPLE_GAP`] apart (Docker's formula: the
/// container's share of the host's CPU time, times the CPUs online). Streaming redraws the
/// table about once a second (clearing the screen on a terminal) until interrupted.
pub(crate) async fn stats(
    global: &GlobalArgs,
    args: StatsArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let mut previous: BTreeMap<String, v1::StatsResponse> = BTreeMap::new();
    loop {
        let targets: Vec<String> = if args.containers.is_empty() {
            let mut listed = daemon.list_containers(args.all).await?;
            if !args.all {
                listed.retain(|c| is_running(c.state.as_ref()));
            }
            sort_newest_first(&mut listed);
            listed.into_iter().map(|c| c.id).collect()
        } else {
            args.containers.clone()
        };
        let mut errors = Vec::new();
        if previous.is_empty() {
            for target in &targets {
                if let Ok(sample) = daemon.stats(target).await {
                    previous.insert(target.clone(), sample);
                }
            }
            tokio::time::sleep(CPU_SAMPLE_GAP).await;
        }
        let mut rows = Vec::new();
        let mut current = BTreeMap::new();
        for target in &targets {
            match daemon.stats(target).await {
                Ok(sample) => {
                    rows.push(StatsRow::new(previous.get(target), &sample, !args.no_trunc));
                    current.insert(target.clone(), sample);
                }
                Err(err) => errors.push(err),
            }
        }
        if !args.no_stream && io.stdout_tty {
            // Docker's redraw: clear the screen, cursor home.
            write!(io.out, "\x1b[2J\x1b[H")?;
        }
        write_stats_table(io.out, &rows)?;
        io.out.flush()?;
        if args.no_stream || (!errors.is_empty() && rows.is_empty()) {
            return CliError::collect(errors).map(|()| 0);
        }
        previous = current;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
struct StatsRow {
    id: String,
    name: String,
    cpu: String,
    memory: String,
    memory_percent: String,
    net: String,
    block: String,
    pids: String,
}

impl StatsRow {
    fn new(before: Option<&v1::StatsResponse>, now: &v1::StatsResponse, truncate: bool) -> Self {
        let cpu = before.map_or_else(|| "--".to_owned(), |b| cpu_percent(b, now));
        let memory_percent = if now.memory_limit_bytes == 0 {
            "0.00%".to_owned()
        } else {
            let percent = now.memory_usage_bytes as f64 / now.memory_limit_bytes as f64 * 100.0;
            format!("{percent:.2}%")
        };
        StatsRow {
            id: if truncate {
                short_id(&now.id)
            } else {
                now.id.clone()
            },
            name: now.name.strip_prefix('/').unwrap_or(&now.name).to_owned(),
            cpu,
            memory: format!(
                "{} / {}",
                bytes_size(now.memory_usage_bytes),
                bytes_size(now.memory_limit_bytes)
            ),
            memory_percent,
            net: format!(
                "{} / {}",
                human_size(now.net_rx_bytes),
                human_size(now.net_tx_bytes)
            ),
            block: format!(
                "{} / {}",
                human_size(now.block_read_bytes),
                human_size(now.block_write_bytes)
            ),
            pids: now.pids_current.to_string(),
        }
    }
}

/// Docker's CPU %: the container's CPU time over the host's between two samples, scaled by
/// the CPUs online (so one busy core of four reads 100%).
fn cpu_percent(before: &v1::StatsResponse, now: &v1::StatsResponse) -> String {
    let cpu = now.cpu_usage_nanos.saturating_sub(before.cpu_usage_nanos) as f64;
    let system = now
        .system_cpu_usage_nanos
        .saturating_sub(before.system_cpu_usage_nanos) as f64;
    let cpus = f64::from(now.online_cpus.max(1));
    let percent = if system > 0.0 && cpu > 0.0 {
        cpu / system * cpus * 100.0
    } else {
        0.0
    };
    format!("{percent:.2}%")
}

fn write_stats_table(out: &mut dyn std::io::Write, rows: &[StatsRow]) -> std::io::Result<()> {
    let mut table = Table::with_header(&[
        "CONTAINER ID",
        "NAME",
        "CPU %",
        "MEM USAGE / LIMIT",
        "MEM %",
        "NET I/O",
        "BLOCK I/O",
        "PIDS",
    ]);
    for row in rows {
        table.row(vec![
            row.id.clone(),
            row.name.clone(),
            row.cpu.clone(),
            row.memory.clone(),
            row.memory_percent.clone(),
            row.net.clone(),
            row.block.clone(),
            row.pids.clone(),
        ]);
    }
    table.write(out)
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;

    use super::*;

    fn at(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    fn sample_info() -> ContainerInfo {
        ContainerInfo {
            id: "4f1c2b3a5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708".into(),
            name: "/web".into(),
            image: "nginx:1.25".into(),
            image_id: "sha256:aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999"
                .into(),
            spec: Some(v1::ContainerSpec {
                image: "nginx:1.25".into(),
                cmd: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
                env: vec!["A=1".into()],
                ports: vec![v1::PortBinding {
                    host_ip: String::new(),
                    host_port: 8080,
                    container_port: 80,
                    protocol: "tcp".into(),
                }],
                mounts: vec![
                    v1::MountSpec {
                        kind: mount_spec::Kind::Bind as i32,
                        source: "/srv".into(),
                        target: "/usr/share/nginx/html".into(),
                        read_only: true,
                        tmpfs_size_bytes: 0,
                        ..Default::default()
                    },
                    v1::MountSpec {
                        kind: mount_spec::Kind::Tmpfs as i32,
                        source: String::new(),
                        target: "/run".into(),
                        read_only: false,
                        tmpfs_size_bytes: 0,
                        ..Default::default()
                    },
                ],
                restart_policy: Some(v1::RestartPolicySpec {
                    name: "on-failure".into(),
                    maximum_retry_count: 3,
                }),
                memory_bytes: 64 << 20,
                nano_cpus: 1_500_000_000,
                no_new_privileges: true,
                labels: [("tier".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            state: Some(v1::ContainerState {
                status: "running".into(),
                pid: 4242,
                started_at: at(1_700_000_000 - 3 * 3600),
                ..Default::default()
            }),
            created: at(1_700_000_000 - 4 * 3600),
            network: Some(v1::ContainerNetwork {
                mode: "bridge".into(),
                ip_address: "10.88.0.2".into(),
                gateway: "10.88.0.1".into(),
                mac_address: "02:42:0a:58:00:02".into(),
                ports: vec![
                    v1::PublishedPort {
                        host_ip: "0.0.0.0".into(),
                        host_port: 8080,
                        container_port: 80,
                        protocol: "tcp".into(),
                    },
                    v1::PublishedPort {
                        host_ip: String::new(),
                        host_port: 0,
                        container_port: 443,
                        protocol: "tcp".into(),
                    },
                ],
            }),
            log_path: "/var/lib/shoal/containers/4f1c/json.log".into(),
            command: vec![
                "/docker-entrypoint.sh".into(),
                "nginx".into(),
                "-g".into(),
                "daemon off;".into(),
            ],
            mounts: Vec::new(),
        }
    }

    #[test]
    fn ps_table_has_docker_columns() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut out = Vec::new();
        write_ps_table(&mut out, &[PsRow::new(&sample_info(), now, true)]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\
CONTAINER ID   IMAGE        COMMAND                  CREATED       STATUS       PORTS                           NAMES
4f1c2b3a5d6e   nginx:1.25   \"/docker-entrypoint.…\"   4 hours ago   Up 3 hours   443/tcp, 0.0.0.0:8080->80/tcp   web
"
        );
        let row = serde_json::to_value(PsRow::new(&sample_info(), now, false)).unwrap();
        assert_eq!(row["ID"].as_str().unwrap().len(), 64);
        assert_eq!(
            row["Command"],
            "\"/docker-entrypoint.sh nginx -g daemon off;\""
        );
        assert_eq!(row["State"], "running");
        assert_eq!(row["Labels"], "tier=web");
        assert_eq!(row["Names"], "web");
    }

    #[test]
    fn inspect_view_has_docker_shape() {
        let v = serde_json::to_value(ContainerView::new(&sample_info())).unwrap();
        assert_eq!(v["Name"], "/web");
        assert_eq!(v["Path"], "/docker-entrypoint.sh");
        assert_eq!(v["Args"][2], "daemon off;");
        assert_eq!(v["Image"].as_str().unwrap().len(), 71);
        assert_eq!(v["State"]["Status"], "running");
        assert_eq!(v["State"]["Running"], true);
        assert_eq!(v["State"]["Pid"], 4242);
        assert_eq!(v["State"]["FinishedAt"], "0001-01-01T00:00:00Z");
        assert_eq!(v["Config"]["Image"], "nginx:1.25");
        assert_eq!(v["Config"]["Cmd"][0], "nginx");
        assert!(v["Config"]["Entrypoint"].is_null());
        assert_eq!(v["Config"]["ExposedPorts"]["80/tcp"], serde_json::json!({}));
        assert_eq!(v["HostConfig"]["Memory"], 64 << 20);
        assert_eq!(v["HostConfig"]["NanoCpus"], 1_500_000_000i64);
        assert!(v["HostConfig"]["PidsLimit"].is_null());
        assert_eq!(v["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
        assert_eq!(v["HostConfig"]["RestartPolicy"]["MaximumRetryCount"], 3);
        assert_eq!(v["HostConfig"]["Binds"][0], "/srv:/usr/share/nginx/html:ro");
        assert_eq!(v["HostConfig"]["SecurityOpt"][0], "no-new-privileges");
        assert_eq!(
            v["HostConfig"]["PortBindings"]["80/tcp"][0],
            serde_json::json!({"HostIp": "", "HostPort": "8080"})
        );
        assert_eq!(
            v["NetworkSettings"]["Ports"]["80/tcp"][0],
            serde_json::json!({"HostIp": "0.0.0.0", "HostPort": "8080"})
        );
        assert!(v["NetworkSettings"]["Ports"]["443/tcp"].is_null());
        assert_eq!(v["NetworkSettings"]["IPAddress"], "10.88.0.2");
        assert_eq!(v["Mounts"][1]["Type"], "tmpfs");
        assert_eq!(v["Mounts"][0]["RW"], false);
    }

    #[test]
    fn log_lines_and_timestamps() {
        let entry = |line: &[u8]| v1::LogEntry {
            stream: "stdout".into(),
            line: line.to_vec(),
            time: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 120_000_000,
            }),
        };
        let mut out = Vec::new();
        write_log_line(&mut out, &entry(b"hello\n"), false).unwrap();
        write_log_line(&mut out, &entry(b"no newline"), true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "hello\n2023-11-14T22:13:20.120000000Z no newline\n"
        );
    }

    #[test]
    fn stats_rows() {
        let sample = |cpu: u64, system: u64| v1::StatsResponse {
            id: sample_info().id,
            name: "/web".into(),
            cpu_usage_nanos: cpu,
            system_cpu_usage_nanos: system,
            online_cpus: 4,
            memory_usage_bytes: 1_572_864,
            memory_limit_bytes: 2_087_354_368,
            pids_current: 3,
            net_rx_bytes: 1234,
            net_tx_bytes: 648,
            block_read_bytes: 4_260_000,
            block_write_bytes: 0,
        };
        let row = StatsRow::new(
            Some(&sample(0, 0)),
            &sample(250_000_000, 2_000_000_000),
            true,
        );
        assert_eq!(
            row,
            StatsRow {
                id: "4f1c2b3a5d6e".into(),
                name: "web".into(),
                cpu: "50.00%".into(),
                memory: "1.5MiB / 1.944GiB".into(),
                memory_percent: "0.08%".into(),
                net: "1.23kB / 648B".into(),
                block: "4.26MB / 0B".into(),
                pids: "3".into(),
            }
        );
        assert_eq!(StatsRow::new(None, &sample(1, 1), true).cpu, "--");
        let mut out = Vec::new();
        write_stats_table(&mut out, &[row]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("CONTAINER ID   NAME      CPU %     MEM USAGE / LIMIT   MEM %"),
            "{text}"
        );
    }
}
