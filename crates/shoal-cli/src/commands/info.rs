//! `commands/info.rs`: `shoal info` — this host and its swarm membership, as the Swarm part of
//! `docker info` shows it, or as JSON.

use serde::Serialize;
use shoal_api::v1::{InfoResponse, LocalNodeState, RaftInfo};

use super::Out;
use crate::daemon::Daemon;
use crate::format::time::rfc3339;
use crate::format::units::bytes_size;
use crate::format::{JsonFormat, write_json_pretty};
use crate::{CliError, GlobalArgs};

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Output format (human-readable unless json)
    #[arg(long, value_enum)]
    format: Option<JsonFormat>,
}

pub(crate) async fn run(global: &GlobalArgs, args: InfoArgs, out: Out<'_>) -> Result<(), CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let info = daemon.info().await?;
    match args.format {
        Some(JsonFormat::Json) => write_json_pretty(out, &InfoView::new(&info))?,
        None => write_info(out, &info)?,
    }
    Ok(())
}

fn state_name(state: LocalNodeState) -> &'static str {
    match state {
        LocalNodeState::Inactive => "inactive",
        LocalNodeState::Pending => "pending",
        LocalNodeState::Active => "active",
        LocalNodeState::Error => "error",
        LocalNodeState::Locked => "locked",
    }
}

fn write_info(out: Out<'_>, info: &InfoResponse) -> std::io::Result<()> {
    let mut lines = vec![
        format!("Server Version: {}", info.daemon_version),
        format!("Hostname: {}", info.hostname),
        format!("Operating System: {}", info.os),
        format!("Architecture: {}", info.architecture),
        format!("CPUs: {}", info.cpus),
        format!("Total Memory: {}", bytes_size(info.memory_bytes)),
        format!("Data Root: {}", info.data_root),
        format!("Exec Root: {}", info.exec_root),
    ];
    let state = info.state();
    lines.push(format!("Swarm: {}", state_name(state)));
    if state != LocalNodeState::Inactive {
        if !info.node_id.is_empty() {
            lines.push(format!(" NodeID: {}", info.node_id));
        }
        if !info.error.is_empty() {
            lines.push(format!(" Error: {}", info.error));
        }
        lines.push(format!(" Is Manager: {}", info.is_manager));
        // A locked manager knows nothing of the cluster until it is unlocked.
        if info.is_manager && state != LocalNodeState::Locked {
            lines.push(format!(" ClusterID: {}", info.cluster_id));
            lines.push(format!(" Managers: {}", info.managers));
            lines.push(format!(" Nodes: {}", info.nodes));
            if let Some(raft) = info.raft.as_ref() {
                lines.push(" Raft:".to_owned());
                lines.push(format!("  Raft ID: {}", raft.raft_id));
                lines.push(format!("  Term: {}", raft.term));
                lines.push(format!("  Last Log Index: {}", raft.last_log_index));
                lines.push(format!("  Applied Index: {}", raft.last_applied));
                let leader = match raft.leader_raft_id {
                    0 => "none".to_owned(),
                    id if id == raft.raft_id => format!("{id} (this node)"),
                    id => id.to_string(),
                };
                lines.push(format!("  Leader: {leader}"));
                lines.push(format!("  Voters: {}", raft.voters));
                lines.extend(compaction_lines(raft));
            }
        }
        if !info.node_addr.is_empty() {
            lines.push(format!(" Node Address: {}", info.node_addr));
        }
        if !info.remote_managers.is_empty() {
            lines.push(" Manager Addresses:".to_owned());
            let mut managers = info.remote_managers.clone();
            managers.sort();
            lines.extend(managers.into_iter().map(|m| format!("  {m}")));
        }
        if info.cert_expiry.is_some() {
            let expiry = crate::format::time::human_date(info.cert_expiry.as_ref());
            lines.push(format!(" Certificate Expiry: {expiry}"));
        }
    }
    // Plain lines, as `docker info` prints them: one space after the colon, no columns.
    lines.iter().try_for_each(|line| writeln!(out, "{line}"))
}

/// The compaction policy and where this manager's log stands: snapshot, first entry kept.
fn compaction_lines(raft: &RaftInfo) -> Vec<String> {
    let mut lines = vec![
        format!("  Snapshot Interval: {}", raft.snapshot_interval),
        format!(
            "  Log Entries For Slow Followers: {}",
            raft.log_entries_for_slow_followers
        ),
    ];
    if raft.snapshot_index == 0 {
        lines.push("  Snapshot Index: none".to_owned());
    } else {
        lines.push(format!("  Snapshot Index: {}", raft.snapshot_index));
    }
    lines.push(format!("  First Log Index: {}", raft.first_log_index));
    if raft.snapshot_bytes > 0 {
        let built = if raft.snapshot_build_ms > 0 {
            format!(", built in {} ms", raft.snapshot_build_ms)
        } else {
            String::new()
        };
        lines.push(format!(
            "  Snapshot Size: {}{built}",
            bytes_size(raft.snapshot_bytes)
        ));
    }
    lines
}

/// `info --format json`, with `docker info`'s key names where the fields are the same.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct InfoView {
    server_version: String,
    name: String,
    operating_system: String,
    architecture: String,
    #[serde(rename = "NCPU")]
    ncpu: u32,
    mem_total: u64,
    data_root: String,
    exec_root: String,
    swarm: SwarmView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct SwarmView {
    #[serde(rename = "NodeID")]
    node_id: String,
    node_addr: String,
    local_node_state: &'static str,
    control_available: bool,
    error: String,
    remote_managers: Vec<RemoteManagerView>,
    nodes: u32,
    managers: u32,
    #[serde(rename = "ClusterID")]
    cluster_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    raft: Option<RaftView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_expiry: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RemoteManagerView {
    addr: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RaftView {
    #[serde(rename = "RaftID")]
    raft_id: u64,
    term: u64,
    last_log_index: u64,
    last_applied: u64,
    #[serde(rename = "LeaderRaftID")]
    leader_raft_id: u64,
    voters: u32,
    snapshot_interval: u64,
    log_entries_for_slow_followers: u64,
    snapshot_index: u64,
    first_log_index: u64,
    snapshot_bytes: u64,
    snapshot_build_ms: u64,
}

impl InfoView {
    fn new(info: &InfoResponse) -> Self {
        InfoView {
            server_version: info.daemon_version.clone(),
            name: info.hostname.clone(),
            operating_system: info.os.clone(),
            architecture: info.architecture.clone(),
            ncpu: info.cpus,
            mem_total: info.memory_bytes,
            data_root: info.data_root.clone(),
            exec_root: info.exec_root.clone(),
            swarm: SwarmView {
                node_id: info.node_id.clone(),
                node_addr: info.node_addr.clone(),
                local_node_state: state_name(info.state()),
                control_available: info.is_manager && info.state() == LocalNodeState::Active,
                error: info.error.clone(),
                remote_managers: info
                    .remote_managers
                    .iter()
                    .map(|addr| RemoteManagerView { addr: addr.clone() })
                    .collect(),
                nodes: info.nodes,
                managers: info.managers,
                cluster_id: info.cluster_id.clone(),
                raft: info.raft.as_ref().map(|r| RaftView {
                    raft_id: r.raft_id,
                    term: r.term,
                    last_log_index: r.last_log_index,
                    last_applied: r.last_applied,
                    leader_raft_id: r.leader_raft_id,
                    voters: r.voters,
                    snapshot_interval: r.snapshot_interval,
                    log_entries_for_slow_followers: r.log_entries_for_slow_followers,
                    snapshot_index: r.snapshot_index,
                    first_log_index: r.first_log_index,
                    snapshot_bytes: r.snapshot_bytes,
                    snapshot_build_ms: r.snapshot_build_ms,
                }),
                cert_expiry: info.cert_expiry.as_ref().map(|t| rfc3339(Some(t))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager_info() -> InfoResponse {
        let mut info = InfoResponse {
            daemon_version: "0.1.0".into(),
            hostname: "mgr1".into(),
            os: "linux".into(),
            architecture: "x86_64".into(),
            cpus: 2,
            memory_bytes: 25_769_803_776,
            data_root: "/var/lib/shoal".into(),
            exec_root: "/run/shoal".into(),
            node_id: "n1".into(),
            cluster_id: "c1".into(),
            is_manager: true,
            node_addr: "10.0.0.1".into(),
            remote_managers: vec!["10.0.0.2:2377".into(), "10.0.0.1:2377".into()],
            nodes: 3,
            managers: 2,
            raft: Some(RaftInfo {
                raft_id: 1,
                term: 4,
                last_log_index: 90,
                last_applied: 90,
                leader_raft_id: 1,
                voters: 2,
                snapshot_interval: 10_000,
                log_entries_for_slow_followers: 500,
                snapshot_index: 80,
                first_log_index: 31,
                snapshot_bytes: 52_428_800,
                snapshot_build_ms: 412,
            }),
            ..Default::default()
        };
        info.set_state(LocalNodeState::Active);
        info
    }

    fn render(info: &InfoResponse) -> String {
        let mut out = Vec::new();
        write_info(&mut out, info).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn human_block_for_a_manager() {
        assert_eq!(
            render(&manager_info()),
            "\
Server Version: 0.1.0
Hostname: mgr1
Operating System: linux
Architecture: x86_64
CPUs: 2
Total Memory: 24GiB
Data Root: /var/lib/shoal
Exec Root: /run/shoal
Swarm: active
 NodeID: n1
 Is Manager: true
 ClusterID: c1
 Managers: 2
 Nodes: 3
 Raft:
  Raft ID: 1
  Term: 4
  Last Log Index: 90
  Applied Index: 90
  Leader: 1 (this node)
  Voters: 2
  Snapshot Interval: 10000
  Log Entries For Slow Followers: 500
  Snapshot Index: 80
  First Log Index: 31
  Snapshot Size: 50MiB, built in 412 ms
 Node Address: 10.0.0.1
 Manager Addresses:
  10.0.0.1:2377
  10.0.0.2:2377
"
        );
    }

    #[test]
    fn inactive_host_shows_no_swarm_details() {
        let info = InfoResponse {
            hostname: "h".into(),
            ..Default::default()
        };
        let text = render(&info);
        assert!(text.ends_with("Swarm: inactive\n"), "{text}");
    }

    #[test]
    fn a_locked_manager_shows_only_who_it_is() {
        let mut info = InfoResponse {
            node_id: "n1".into(),
            cluster_id: "c1".into(),
            is_manager: true,
            node_addr: "10.0.0.1".into(),
            ..Default::default()
        };
        info.set_state(LocalNodeState::Locked);
        let text = render(&info);
        assert!(
            text.contains(
                "Swarm: locked\n NodeID: n1\n Is Manager: true\n Node Address: 10.0.0.1\n"
            ),
            "{text}"
        );
        assert!(!text.contains("Managers:"), "{text}");
        let v = serde_json::to_value(InfoView::new(&info)).unwrap();
        assert_eq!(v["Swarm"]["LocalNodeState"], "locked");
        assert_eq!(v["Swarm"]["ControlAvailable"], false);
    }

    #[test]
    fn json_view_keys() {
        let v = serde_json::to_value(InfoView::new(&manager_info())).unwrap();
        assert_eq!(v["NCPU"], 2);
        assert_eq!(v["MemTotal"], 25_769_803_776_u64);
        assert_eq!(v["Swarm"]["NodeID"], "n1");
        assert_eq!(v["Swarm"]["LocalNodeState"], "active");
        assert_eq!(v["Swarm"]["ControlAvailable"], true);
        assert_eq!(v["Swarm"]["RemoteManagers"][0]["Addr"], "10.0.0.2:2377");
        assert_eq!(v["Swarm"]["Raft"]["LeaderRaftID"], 1);
        assert_eq!(v["Swarm"]["Raft"]["SnapshotIndex"], 80);
        assert_eq!(v["Swarm"]["Raft"]["FirstLogIndex"], 31);
        assert_eq!(v["Swarm"]["Raft"]["SnapshotBytes"], 52_428_800);
        assert!(v["Swarm"].get("CertExpiry").is_none());
    }
}
