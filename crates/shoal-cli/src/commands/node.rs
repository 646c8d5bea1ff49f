//! `commands/node.rs`: `shoal node ls|inspect|update|promote|demote|rm`, with Docker's table,
//! its inspect JSON shape (PascalCase keys) and its `--pretty` view.

use std::collections::BTreeMap;

use serde::Serialize;
use shoal_api::v1::{self, Node, NodeAvailability, NodeRole, NodeState, Reachability};
use time::OffsetDateTime;

use super::{Out, VersionView, label_lines};
use crate::daemon::Daemon;
use crate::format::table::Table;
use crate::format::time::{human_date, rfc3339};
use crate::format::units::{bytes_size, cpus};
use crate::format::{JsonFormat, ListFormat, write_inspected, write_json_lines};
use crate::parse::{self, FilterTerm, Filters};
use crate::{CliError, GlobalArgs};

/// Manage swarm nodes.
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// List nodes in the swarm
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more nodes
    Inspect(InspectArgs),
    /// Update a node
    Update(UpdateArgs),
    /// Promote one or more nodes to manager in the swarm
    Promote(NodeRefs),
    /// Demote one or more nodes from manager in the swarm
    Demote(NodeRefs),
    /// Remove one or more nodes from the swarm
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only display IDs
    #[arg(short, long)]
    quiet: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    format: ListFormat,
    /// Filter output (name=, id=, label=, role=)
    #[arg(short, long = "filter", value_name = "KEY=VALUE", value_parser = parse::node_filter)]
    filter: Vec<FilterTerm>,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Print the information in a human friendly format
    #[arg(long, conflicts_with = "format")]
    pretty: bool,
    /// Output format (JSON is the default)
    #[arg(long, value_enum)]
    format: Option<JsonFormat>,
    /// Node IDs, ID prefixes or hostnames
    #[arg(value_name = "NODE", required = true)]
    nodes: Vec<String>,
}

/// Availability values as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AvailabilityArg {
    Active,
    Pause,
    Drain,
}

impl From<AvailabilityArg> for NodeAvailability {
    fn from(arg: AvailabilityArg) -> Self {
        match arg {
            AvailabilityArg::Active => NodeAvailability::Active,
            AvailabilityArg::Pause => NodeAvailability::Pause,
            AvailabilityArg::Drain => NodeAvailability::Drain,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RoleArg {
    Worker,
    Manager,
}

impl From<RoleArg> for NodeRole {
    fn from(arg: RoleArg) -> Self {
        match arg {
            RoleArg::Worker => NodeRole::Worker,
            RoleArg::Manager => NodeRole::Manager,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// Availability of the node
    #[arg(long, value_enum)]
    availability: Option<AvailabilityArg>,
    /// Add or update a node label
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse::label)]
    label_add: Vec<(String, String)>,
    /// Remove a node label
    #[arg(long, value_name = "KEY", value_parser = parse::label_key)]
    label_rm: Vec<String>,
    /// Role of the node
    #[arg(long, value_enum)]
    role: Option<RoleArg>,
    /// Node ID, ID prefix or hostname
    #[arg(value_name = "NODE")]
    node: String,
}

#[derive(Debug, clap::Args)]
pub struct NodeRefs {
    /// Node IDs, ID prefixes or hostnames
    #[arg(value_name = "NODE", required = true)]
    nodes: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Force remove a node from the swarm
    #[arg(short, long)]
    force: bool,
    /// Node IDs, ID prefixes or hostnames
    #[arg(value_name = "NODE", required = true)]
    nodes: Vec<String>,
}

pub(crate) async fn run(
    global: &GlobalArgs,
    command: NodeCommand,
    out: Out<'_>,
) -> Result<(), CliError> {
    match command {
        NodeCommand::Ls(args) => ls(global, args, out).await,
        NodeCommand::Inspect(args) => inspect(global, args, out).await,
        NodeCommand::Update(args) => update(global, args, out).await,
        NodeCommand::Promote(refs) => set_role(global, refs, NodeRole::Manager, out).await,
        NodeCommand::Demote(refs) => set_role(global, refs, NodeRole::Worker, out).await,
        NodeCommand::Rm(args) => {
            let mut daemon = Daemon::connect(&global.host).await?;
            let mut errors = Vec::new();
            for reference in &args.nodes {
                // The request takes an ID; resolve hostnames and prefixes first.
                let result = match daemon.get_node(reference).await {
                    Ok(node) => daemon.remove_node(&node.id, args.force).await,
                    Err(err) => Err(err),
                };
                match result {
                    Ok(()) => writeln!(out, "{reference}")?,
                    Err(err) => errors.push(err),
                }
            }
            CliError::collect(errors)
        }
    }
}

async fn ls(global: &GlobalArgs, args: LsArgs, out: Out<'_>) -> Result<(), CliError> {
    let filters = Filters::new(&args.filter);
    let mut daemon = Daemon::connect(&global.host).await?;
    let self_id = daemon.info().await?.node_id;
    let mut nodes = daemon.list_nodes(filters.to_wire()).await?;
    nodes.retain(|n| filters.matches_node(n));
    nodes.sort_by(|a, b| (hostname(a), &a.id).cmp(&(hostname(b), &b.id)));
    if args.quiet {
        for node in &nodes {
            writeln!(out, "{}", node.id)?;
        }
        return Ok(());
    }
    let rows: Vec<NodeRow> = nodes.iter().map(|n| NodeRow::new(n, &self_id)).collect();
    match args.format {
        ListFormat::Table => write_node_table(out, &rows)?,
        ListFormat::Json => write_json_lines(out, &rows)?,
    }
    Ok(())
}

async fn inspect(global: &GlobalArgs, args: InspectArgs, out: Out<'_>) -> Result<(), CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for reference in &args.nodes {
        match daemon.get_node(reference).await {
            Ok(node) => found.push(node),
            Err(err) => errors.push(err),
        }
    }
    write_inspected(
        out,
        &found,
        args.pretty,
        |out, node| write_node_pretty(out, node),
        NodeView::new,
    )?;
    CliError::collect(errors)
}

async fn update(global: &GlobalArgs, args: UpdateArgs, out: Out<'_>) -> Result<(), CliError> {
    if args.availability.is_none()
        && args.role.is_none()
        && args.label_add.is_empty()
        && args.label_rm.is_empty()
    {
        return Err(CliError::usage(
            "nothing to update: give --availability, --role, --label-add or --label-rm",
        ));
    }
    let mut daemon = Daemon::connect(&global.host).await?;
    let node = daemon.get_node(&args.node).await?;
    let mut spec = node.spec.clone().unwrap_or_default();
    apply_update(&mut spec, &args)?;
    let version = node.meta.as_ref().map_or(0, |m| m.version);
    let updated = daemon.update_node(&node.id, version, spec).await?;
    writeln!(out, "{}", updated.id)?;
    Ok(())
}

/// Docker's order: labels are added, then removed; removing a label the node lacks is an error.
fn apply_update(spec: &mut v1::NodeSpec, args: &UpdateArgs) -> Result<(), CliError> {
    if let Some(availability) = args.availability {
        spec.set_availability(availability.into());
    }
    if let Some(role) = args.role {
        spec.set_desired_role(role.into());
    }
    let labels = &mut spec.annotations.get_or_insert_default().labels;
    labels.extend(args.label_add.iter().cloned());
    for key in &args.label_rm {
        if labels.remove(key).is_none() {
            return Err(CliError::usage(format!(
                "label {key:?} is not set on node {}",
                args.node
            )));
        }
    }
    Ok(())
}

async fn set_role(
    global: &GlobalArgs,
    refs: NodeRefs,
    role: NodeRole,
    out: Out<'_>,
) -> Result<(), CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let mut errors = Vec::new();
    for reference in &refs.nodes {
        let node = match daemon.get_node(reference).await {
            Ok(node) => node,
            Err(err) => {
                errors.push(err);
                continue;
            }
        };
        let mut spec = node.spec.clone().unwrap_or_default();
        if spec.desired_role() == role {
            let noun = role_name(role);
            writeln!(out, "Node {reference} is already a {noun}.")?;
            continue;
        }
        spec.set_desired_role(role);
        let version = node.meta.as_ref().map_or(0, |m| m.version);
        match daemon.update_node(&node.id, version, spec).await {
            Ok(_) if role == NodeRole::Manager => {
                writeln!(out, "Node {reference} promoted to a manager in the swarm.")?;
            }
            Ok(_) => writeln!(out, "Manager {reference} demoted in the swarm.")?,
            Err(err) => errors.push(err),
        }
    }
    CliError::collect(errors)
}

fn hostname(node: &Node) -> &str {
    node.description
        .as_ref()
        .map_or("", |d| d.hostname.as_str())
}

fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Worker => "worker",
        NodeRole::Manager => "manager",
    }
}

fn availability_name(availability: NodeAvailability) -> &'static str {
    match availability {
        NodeAvailability::Active => "active",
        NodeAvailability::Pause => "pause",
        NodeAvailability::Drain => "drain",
    }
}

fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Unknown => "unknown",
        NodeState::Down => "down",
        NodeState::Ready => "ready",
        NodeState::Disconnected => "disconnected",
    }
}

fn reachability_name(reachability: Reachability) -> &'static str {
    match reachability {
        Reachability::Unknown => "unknown",
        Reachability::Unreachable => "unreachable",
        Reachability::Reachable => "reachable",
    }
}

/// `ready` → `Ready`: tables and pretty views capitalise what inspect JSON keeps lowercase.
fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn node_state(node: &Node) -> NodeState {
    node.status
        .as_ref()
        .map_or(NodeState::Unknown, |s| s.state())
}

fn node_availability(node: &Node) -> NodeAvailability {
    node.spec
        .as_ref()
        .map_or(NodeAvailability::Active, |s| s.availability())
}

/// `Leader`, else the reachability; empty for workers (no manager status), as Docker.
fn manager_status_text(node: &Node) -> String {
    match node.manager_status.as_ref() {
        None => String::new(),
        Some(ms) if ms.leader => "Leader".to_owned(),
        Some(ms) => capitalized(reachability_name(ms.reachability())),
    }
}

/// One line of `node ls`; also its `--format json` object.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
struct NodeRow {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Self")]
    is_self: bool,
    hostname: String,
    status: String,
    availability: String,
    manager_status: String,
    engine_version: String,
}

impl NodeRow {
    fn new(node: &Node, self_id: &str) -> Self {
        NodeRow {
            id: node.id.clone(),
            is_self: !self_id.is_empty() && node.id == self_id,
            hostname: hostname(node).to_owned(),
            status: capitalized(state_name(node_state(node))),
            availability: capitalized(availability_name(node_availability(node))),
            manager_status: manager_status_text(node),
            engine_version: node
                .description
                .as_ref()
                .map_or(String::new(), |d| d.engine_version.clone()),
        }
    }
}

fn write_node_table(out: Out<'_>, rows: &[NodeRow]) -> std::io::Result<()> {
    let mut table = Table::with_header(&[
        "ID",
        "HOSTNAME",
        "STATUS",
        "AVAILABILITY",
        "MANAGER STATUS",
        "ENGINE VERSION",
    ]);
    for row in rows {
        // The star marks the node this daemon runs on, after its full ID, as Docker.
        let id = if row.is_self {
            format!("{} *", row.id)
        } else {
            row.id.clone()
        };
        table.row(vec![
            id,
            row.hostname.clone(),
            row.status.clone(),
            row.availability.clone(),
            row.manager_status.clone(),
            row.engine_version.clone(),
        ]);
    }
    table.write(out)
}

// Inspect views: Docker's `docker node inspect` shape, so jq paths carry over. ------------

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeView {
    #[serde(rename = "ID")]
    id: String,
    version: VersionView,
    created_at: String,
    updated_at: String,
    spec: NodeSpecView,
    description: DescriptionView,
    status: StatusView,
    #[serde(skip_serializing_if = "Option::is_none")]
    manager_status: Option<ManagerStatusView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<CertificateView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeSpecView {
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    labels: BTreeMap<String, String>,
    role: &'static str,
    availability: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct DescriptionView {
    hostname: String,
    platform: PlatformView,
    resources: ResourcesView,
    engine: EngineView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct PlatformView {
    architecture: String,
    #[serde(rename = "OS")]
    os: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ResourcesView {
    #[serde(rename = "NanoCPUs")]
    nano_cpus: i64,
    memory_bytes: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct EngineView {
    engine_version: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct StatusView {
    state: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
    addr: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ManagerStatusView {
    // Docker omits `Leader` unless true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    leader: bool,
    reachability: &'static str,
    addr: String,
}

/// shoal's own addition: the node certificate the CA issued (Docker has no equivalent).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct CertificateView {
    state: &'static str,
    role: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    serial: String,
    not_after: String,
}

fn issuance_name(state: v1::IssuanceState) -> &'static str {
    match state {
        v1::IssuanceState::Unknown => "unknown",
        v1::IssuanceState::Pending => "pending",
        v1::IssuanceState::Issued => "issued",
        v1::IssuanceState::Renew => "renew",
        v1::IssuanceState::Failed => "failed",
    }
}

impl NodeView {
    fn new(node: &Node) -> Self {
        let meta = node.meta.unwrap_or_default();
        let spec = node.spec.clone().unwrap_or_default();
        let annotations = spec.annotations.clone().unwrap_or_default();
        let description = node.description.clone().unwrap_or_default();
        let platform = description.platform.unwrap_or_default();
        let resources = description.resources.unwrap_or_default();
        let status = node.status.clone().unwrap_or_default();
        NodeView {
            id: node.id.clone(),
            version: VersionView {
                index: meta.version,
            },
            created_at: rfc3339(meta.created_at.as_ref()),
            updated_at: rfc3339(meta.updated_at.as_ref()),
            spec: NodeSpecView {
                name: annotations.name,
                labels: annotations.labels.into_iter().collect(),
                role: role_name(spec.desired_role()),
                availability: availability_name(spec.availability()),
            },
            description: DescriptionView {
                hostname: description.hostname,
                platform: PlatformView {
                    architecture: platform.architecture,
                    os: platform.os,
                },
                resources: ResourcesView {
                    nano_cpus: resources.nano_cpus,
                    memory_bytes: resources.memory_bytes,
                },
                engine: EngineView {
                    engine_version: description.engine_version,
                },
            },
            status: StatusView {
                state: state_name(status.state()),
                message: status.message,
                addr: status.addr,
            },
            manager_status: node.manager_status.as_ref().map(|ms| ManagerStatusView {
                leader: ms.leader,
                reachability: reachability_name(ms.reachability()),
                addr: ms.addr.clone(),
            }),
            certificate: node.certificate.as_ref().map(|cert| CertificateView {
                state: issuance_name(cert.state()),
                role: role_name(cert.role()),
                serial: cert.serial.clone(),
                not_after: rfc3339(cert.not_after.as_ref()),
            }),
        }
    }
}

/// `node inspect --pretty`, laid out as Docker's.
fn write_node_pretty(out: Out<'_>, node: &Node) -> std::io::Result<()> {
    let spec = node.spec.clone().unwrap_or_default();
    let annotations = spec.annotations.clone().unwrap_or_default();
    let description = node.description.clone().unwrap_or_default();
    let platform = description.platform.clone().unwrap_or_default();
    let resources = description.resources.unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();

    let mut t = Table::new();
    t.kv("ID:", node.id.clone());
    if !annotations.name.is_empty() {
        t.kv("Name:", annotations.name.clone());
    }
    if !annotations.labels.is_empty() {
        t.line("Labels:");
        label_lines(&annotations.labels)
            .into_iter()
            .for_each(|l| t.line(l));
    }
    t.kv("Hostname:", description.hostname.clone());
    let created = node.meta.as_ref().and_then(|m| m.created_at.as_ref());
    t.kv("Joined at:", human_date(created));
    t.line("Status:");
    t.kv(" State:", capitalized(state_name(status.state())));
    if !status.message.is_empty() {
        t.kv(" Message:", status.message.clone());
    }
    let availability = availability_name(spec.availability());
    t.kv(" Availability:", capitalized(availability));
    if !status.addr.is_empty() {
        t.kv(" Address:", status.addr.clone());
    }
    if let Some(ms) = node.manager_status.as_ref() {
        t.line("Manager Status:");
        t.kv(" Address:", ms.addr.clone());
        t.kv(
            " Raft Status:",
            capitalized(reachability_name(ms.reachability())),
        );
        t.kv(" Leader:", if ms.leader { "Yes" } else { "No" });
    }
    t.line("Platform:");
    t.kv(" Operating System:", platform.os);
    t.kv(" Architecture:", platform.architecture);
    t.line("Resources:");
    t.kv(" CPUs:", cpus(resources.nano_cpus));
    let memory = u64::try_from(resources.memory_bytes).unwrap_or(0);
    t.kv(" Memory:", bytes_size(memory));
    t.kv("Engine Version:", description.engine_version.clone());
    if let Some(cert) = node.certificate.as_ref() {
        t.line("TLS Info:");
        t.kv(" Certificate:", capitalized(issuance_name(cert.state())));
        if !cert.serial.is_empty() {
            t.kv(" Serial:", cert.serial.clone());
        }
        if let Some(not_after) = cert.not_after.as_ref() {
            t.kv(
                " Expires:",
                expiry_text(not_after, OffsetDateTime::now_utc()),
            );
        }
    }
    t.write(out)
}

/// `2024-05-01 12:00:00 +0000 UTC (in 89 days)`, or `(expired)`.
fn expiry_text(not_after: &prost_types::Timestamp, now: OffsetDateTime) -> String {
    let date = human_date(Some(not_after));
    match crate::format::time::to_datetime(not_after) {
        Some(at) if at > now => {
            let left = std::time::Duration::try_from(at - now).unwrap_or_default();
            let left = crate::format::time::human_duration(left).to_lowercase();
            format!("{date} (in {left})")
        }
        Some(_) => format!("{date} (expired)"),
        None => date,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    fn sample_node(id: &str, host: &str, manager: Option<(bool, Reachability)>) -> Node {
        Node {
            id: id.into(),
            meta: Some(v1::Meta {
                version: 12,
                created_at: Some(Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                updated_at: Some(Timestamp {
                    seconds: 1_700_000_100,
                    nanos: 0,
                }),
            }),
            spec: Some(v1::NodeSpec {
                annotations: Some(v1::Annotations {
                    name: String::new(),
                    labels: [("zone".to_string(), "a".to_string())].into(),
                }),
                desired_role: if manager.is_some() {
                    NodeRole::Manager as i32
                } else {
                    NodeRole::Worker as i32
                },
                availability: NodeAvailability::Drain as i32,
            }),
            description: Some(v1::NodeDescription {
                hostname: host.into(),
                platform: Some(v1::Platform {
                    os: "linux".into(),
                    architecture: "x86_64".into(),
                }),
                resources: Some(v1::Resources {
                    nano_cpus: 2_000_000_000,
                    memory_bytes: 2_087_354_368,
                }),
                engine_version: "0.1.0".into(),
            }),
            status: Some(v1::NodeStatus {
                state: NodeState::Ready as i32,
                message: String::new(),
                addr: "10.0.0.1".into(),
            }),
            manager_status: manager.map(|(leader, reach)| v1::ManagerStatus {
                raft_id: 1,
                addr: "10.0.0.1:2377".into(),
                leader,
                reachability: reach as i32,
            }),
            certificate: None,
            role: 0,
        }
    }

    fn render_table(rows: &[NodeRow]) -> String {
        let mut out = Vec::new();
        write_node_table(&mut out, rows).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ls_rows_mark_self_leader_and_workers() {
        let leader = sample_node(
            "aaaaaaaaaaaaaaaaaaaaaaaaa",
            "mgr1",
            Some((true, Reachability::Reachable)),
        );
        let follower = sample_node(
            "bbbbbbbbbbbbbbbbbbbbbbbbb",
            "mgr2",
            Some((false, Reachability::Reachable)),
        );
        let lost = sample_node(
            "ccccccccccccccccccccccccc",
            "mgr3",
            Some((false, Reachability::Unreachable)),
        );
        let mut worker = sample_node("ddddddddddddddddddddddddd", "w1", None);
        worker.status.as_mut().unwrap().state = NodeState::Down as i32;
        worker.spec.as_mut().unwrap().availability = NodeAvailability::Active as i32;
        let self_id = "bbbbbbbbbbbbbbbbbbbbbbbbb";
        let rows: Vec<_> = [&leader, &follower, &lost, &worker]
            .iter()
            .map(|n| NodeRow::new(n, self_id))
            .collect();
        assert_eq!(rows[0].manager_status, "Leader");
        assert!(!rows[0].is_self && rows[1].is_self);
        assert_eq!(rows[1].manager_status, "Reachable");
        assert_eq!(rows[2].manager_status, "Unreachable");
        assert_eq!(rows[3].manager_status, "");
        assert_eq!(rows[3].status, "Down");
        assert_eq!(rows[3].availability, "Active");
        assert_eq!(rows[0].availability, "Drain");
        assert_eq!(
            render_table(&rows),
            "\
ID                            HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION
aaaaaaaaaaaaaaaaaaaaaaaaa     mgr1       Ready     Drain          Leader           0.1.0
bbbbbbbbbbbbbbbbbbbbbbbbb *   mgr2       Ready     Drain          Reachable        0.1.0
ccccccccccccccccccccccccc     mgr3       Ready     Drain          Unreachable      0.1.0
ddddddddddddddddddddddddd     w1         Down      Active                          0.1.0
"
        );
    }

    #[test]
    fn ls_json_rows_have_docker_keys() {
        let node = sample_node(
            "aaaaaaaaaaaaaaaaaaaaaaaaa",
            "mgr1",
            Some((true, Reachability::Reachable)),
        );
        let value = serde_json::to_value(NodeRow::new(&node, &node.id)).unwrap();
        let keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        for key in [
            "ID",
            "Self",
            "Hostname",
            "Status",
            "Availability",
            "ManagerStatus",
            "EngineVersion",
        ] {
            assert!(
                keys.contains(&key.to_string()),
                "{key} missing from {keys:?}"
            );
        }
        assert_eq!(value["Self"], true);
        assert_eq!(value["ID"], "aaaaaaaaaaaaaaaaaaaaaaaaa");
    }

    #[test]
    fn inspect_view_has_docker_shape() {
        let mut node = sample_node("n1", "mgr1", Some((true, Reachability::Reachable)));
        let v = serde_json::to_value(NodeView::new(&node)).unwrap();
        assert_eq!(v["ID"], "n1");
        assert_eq!(v["Version"]["Index"], 12);
        assert_eq!(v["CreatedAt"], "2023-11-14T22:13:20Z");
        assert_eq!(v["UpdatedAt"], "2023-11-14T22:15:00Z");
        assert_eq!(v["Spec"]["Labels"]["zone"], "a");
        assert_eq!(v["Spec"]["Role"], "manager");
        assert_eq!(v["Spec"]["Availability"], "drain");
        assert!(v["Spec"].get("Name").is_none());
        assert_eq!(v["Description"]["Hostname"], "mgr1");
        assert_eq!(v["Description"]["Platform"]["Architecture"], "x86_64");
        assert_eq!(v["Description"]["Platform"]["OS"], "linux");
        assert_eq!(v["Description"]["Resources"]["NanoCPUs"], 2_000_000_000_i64);
        assert_eq!(
            v["Description"]["Resources"]["MemoryBytes"],
            2_087_354_368_i64
        );
        assert_eq!(v["Description"]["Engine"]["EngineVersion"], "0.1.0");
        assert_eq!(v["Status"]["State"], "ready");
        assert_eq!(v["Status"]["Addr"], "10.0.0.1");
        assert!(v["Status"].get("Message").is_none());
        assert_eq!(v["ManagerStatus"]["Leader"], true);
        assert_eq!(v["ManagerStatus"]["Reachability"], "reachable");
        assert_eq!(v["ManagerStatus"]["Addr"], "10.0.0.1:2377");
        assert!(v.get("Certificate").is_none());

        node.manager_status.as_mut().unwrap().leader = false;
        node.certificate = Some(v1::NodeCertificate {
            state: v1::IssuanceState::Issued as i32,
            serial: "0a1b".into(),
            ..Default::default()
        });
        let v = serde_json::to_value(NodeView::new(&node)).unwrap();
        assert!(v["ManagerStatus"].get("Leader").is_none());
        assert_eq!(v["Certificate"]["State"], "issued");

        let worker = sample_node("w", "w1", None);
        let v = serde_json::to_value(NodeView::new(&worker)).unwrap();
        assert!(v.get("ManagerStatus").is_none());
        assert_eq!(v["Spec"]["Role"], "worker");
    }

    #[test]
    fn pretty_view() {
        let mut node = sample_node("n1", "mgr1", Some((true, Reachability::Reachable)));
        node.certificate = Some(v1::NodeCertificate {
            state: v1::IssuanceState::Issued as i32,
            serial: "0a1b".into(),
            not_after: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        });
        let mut out = Vec::new();
        write_node_pretty(&mut out, &node).unwrap();
        let text = String::from_utf8(out).unwrap();
        let expected = "\
ID:                  n1
Labels:
 - zone=a
Hostname:            mgr1
Joined at:           2023-11-14 22:13:20 +0000 UTC
Status:
 State:              Ready
 Availability:       Drain
 Address:            10.0.0.1
Manager Status:
 Address:            10.0.0.1:2377
 Raft Status:        Reachable
 Leader:             Yes
Platform:
 Operating System:   linux
 Architecture:       x86_64
Resources:
 CPUs:               2
 Memory:             1.944GiB
Engine Version:      0.1.0
TLS Info:
 Certificate:        Issued
 Serial:             0a1b
 Expires:            2023-11-14 22:13:20 +0000 UTC (expired)
";
        assert_eq!(text, expected);
    }

    #[test]
    fn expiry_reads_ahead() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let later = Timestamp {
            seconds: 1_700_000_000 + 89 * 86400,
            nanos: 0,
        };
        assert!(expiry_text(&later, now).ends_with("(in 2 months)"));
    }

    #[test]
    fn update_edits_the_spec_docker_style() {
        let node = sample_node("n1", "mgr1", None);
        let mut spec = node.spec.unwrap();
        let args = UpdateArgs {
            availability: Some(AvailabilityArg::Pause),
            label_add: vec![("tier".into(), "web".into())],
            label_rm: vec!["zone".into()],
            role: Some(RoleArg::Manager),
            node: "n1".into(),
        };
        apply_update(&mut spec, &args).unwrap();
        assert_eq!(spec.availability(), NodeAvailability::Pause);
        assert_eq!(spec.desired_role(), NodeRole::Manager);
        let labels = &spec.annotations.as_ref().unwrap().labels;
        assert_eq!(labels.get("tier").map(String::as_str), Some("web"));
        assert!(!labels.contains_key("zone"));

        let missing = UpdateArgs {
            availability: None,
            label_add: vec![],
            label_rm: vec!["nope".into()],
            role: None,
            node: "n1".into(),
        };
        let err = apply_update(&mut spec, &missing).unwrap_err();
        assert_eq!(err.to_string(), "label \"nope\" is not set on node n1");
    }
}
