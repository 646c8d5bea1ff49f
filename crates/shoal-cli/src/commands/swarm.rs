//! `commands/swarm.rs`: `shoal swarm init|join|join-token|leave|update|ca` — this host's
//! membership and the cluster-wide settings, with Docker's messages and join instructions.

use std::time::Duration;

use shoal_api::v1::{self, ClusterSpec, LocalNodeState};

use super::Out;
use crate::daemon::Daemon;
use crate::parse;
use crate::{CliError, GlobalArgs};

/// Manage the swarm.
#[derive(Debug, clap::Subcommand)]
pub enum SwarmCommand {
    /// Initialize a swarm
    Init(InitArgs),
    /// Join a swarm as a worker or a manager
    Join(JoinArgs),
    /// Manage join tokens
    JoinToken(JoinTokenArgs),
    /// Leave the swarm
    Leave(LeaveArgs),
    /// Update the swarm
    Update(UpdateArgs),
    /// Display the swarm's root CA certificate
    Ca(CaArgs),
    /// Unlock a locked manager
    Unlock(super::autolock::UnlockArgs),
    /// Manage the unlock key
    UnlockKey(super::autolock::UnlockKeyArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Advertised address (format: <ip>[:port]) [default: the address of the default route]
    #[arg(long, value_name = "ADDR[:PORT]")]
    advertise_addr: Option<String>,
    /// Listen address (format: <ip>[:port]) [default: 0.0.0.0:2377]
    #[arg(long, value_name = "ADDR[:PORT]")]
    listen_addr: Option<String>,
    /// Force create a new cluster from current state
    // It keeps the swarm's settings as they are: change them afterwards with `swarm update`.
    #[arg(long, conflicts_with_all = [
        "autolock",
        "cert_expiry",
        "task_history_limit",
        "snapshot_interval",
        "log_entries_for_slow_followers",
    ])]
    force_new_cluster: bool,
    /// Enable manager autolocking (requiring an unlock key to start a stopped manager)
    #[arg(long)]
    autolock: bool,
    #[command(flatten)]
    settings: ClusterSettings,
}

/// The cluster settings both `init` and `update` take.
#[derive(Debug, clap::Args)]
struct ClusterSettings {
    /// Validity period for node certificates (e.g. 90d, 2160h, 1h30m)
    #[arg(long, value_name = "DURATION", value_parser = parse::duration_secs)]
    cert_expiry: Option<Duration>,
    /// Task history retention limit (negative keeps all)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    task_history_limit: Option<i64>,
    /// Number of log entries between Raft snapshots [default: 10000]
    #[arg(long, value_name = "N", value_parser = parse::count_at_least_one)]
    snapshot_interval: Option<u64>,
    /// Number of log entries kept behind a snapshot for slow followers [default: 500]
    #[arg(long, value_name = "N", value_parser = parse::count_at_least_one)]
    log_entries_for_slow_followers: Option<u64>,
}

impl ClusterSettings {
    fn is_empty(&self) -> bool {
        self.cert_expiry.is_none()
            && self.task_history_limit.is_none()
            && self.snapshot_interval.is_none()
            && self.log_entries_for_slow_followers.is_none()
    }

    /// Writes the given settings into `spec`, leaving the rest as read.
    fn apply(&self, spec: &mut ClusterSpec) {
        if let Some(expiry) = self.cert_expiry {
            spec.ca.get_or_insert_default().node_cert_expiry_secs = expiry.as_secs();
        }
        if let Some(limit) = self.task_history_limit {
            spec.orchestration
                .get_or_insert_default()
                .task_history_retention_limit = limit;
        }
        if let Some(n) = self.snapshot_interval {
            spec.raft.get_or_insert_default().snapshot_interval = n;
        }
        if let Some(n) = self.log_entries_for_slow_followers {
            spec.raft
                .get_or_insert_default()
                .log_entries_for_slow_followers = n;
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// Token for entry into the swarm
    #[arg(long, required = true)]
    token: String,
    /// Advertised address (format: <ip>[:port])
    #[arg(long, value_name = "ADDR[:PORT]")]
    advertise_addr: Option<String>,
    /// Listen address (format: <ip>[:port]) [default: 0.0.0.0:2377]
    #[arg(long, value_name = "ADDR[:PORT]")]
    listen_addr: Option<String>,
    /// Address of a manager of the swarm (port 2377 unless given)
    #[arg(value_name = "HOST[:PORT]", value_parser = parse::cluster_addr)]
    remote: String,
}

/// Which join token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TokenRole {
    Worker,
    Manager,
}

impl TokenRole {
    fn noun(self) -> &'static str {
        match self {
            TokenRole::Worker => "worker",
            TokenRole::Manager => "manager",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct JoinTokenArgs {
    /// Only display the token
    #[arg(short, long)]
    quiet: bool,
    /// Rotate the join token
    #[arg(long)]
    rotate: bool,
    /// Which token to show
    #[arg(value_enum)]
    role: TokenRole,
}

#[derive(Debug, clap::Args)]
pub struct LeaveArgs {
    /// Force this node to leave the swarm, ignoring warnings
    #[arg(short, long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
pub struct CaArgs {
    /// Rotate the swarm's root CA (not supported yet)
    #[arg(long)]
    rotate: bool,
}

#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    settings: ClusterSettings,
    /// Change manager autolocking setting (true|false)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    autolock: Option<bool>,
}

pub(crate) async fn run(
    global: &GlobalArgs,
    command: SwarmCommand,
    out: Out<'_>,
) -> Result<(), CliError> {
    match command {
        SwarmCommand::Init(args) => init(global, args, out).await,
        SwarmCommand::Join(args) => join(global, args, out).await,
        SwarmCommand::JoinToken(args) => join_token(global, args, out).await,
        SwarmCommand::Ca(args) => ca(global, args, out).await,
        SwarmCommand::UnlockKey(args) => super::autolock::unlock_key(global, args, out).await,
        SwarmCommand::Unlock(_) => unreachable!("swarm unlock is run with its standard input"),
        SwarmCommand::Leave(args) => {
            let mut daemon = Daemon::connect(&global.host).await?;
            daemon.leave(args.force).await?;
            writeln!(out, "Node left the swarm.")?;
            Ok(())
        }
        SwarmCommand::Update(args) => {
            let mut daemon = Daemon::connect(&global.host).await?;
            let cluster = daemon.get_cluster().await?;
            let mut spec = cluster.spec.unwrap_or_default();
            let was_autolocked = spec
                .encryption
                .as_ref()
                .is_some_and(|e| e.auto_lock_managers);
            args.settings.apply(&mut spec);
            if let Some(autolock) = args.autolock {
                spec.encryption.get_or_insert_default().auto_lock_managers = autolock;
            }
            daemon
                .update_cluster(v1::UpdateClusterRequest {
                    cluster_id: cluster.id,
                    version: cluster.meta.map_or(0, |m| m.version),
                    spec: Some(spec),
                    ..Default::default()
                })
                .await?;
            writeln!(out, "Swarm updated.")?;
            if args.autolock == Some(true) && !was_autolocked {
                let key = daemon.get_unlock_key().await?;
                write!(out, "{}", super::autolock::unlock_notice(&key))?;
            }
            Ok(())
        }
    }
}

async fn init(global: &GlobalArgs, args: InitArgs, out: Out<'_>) -> Result<(), CliError> {
    // No flags, no spec: the daemon's defaults apply, not zeroes.
    let spec = (!args.settings.is_empty() || args.autolock).then(|| {
        let mut spec = ClusterSpec::default();
        args.settings.apply(&mut spec);
        if args.autolock {
            spec.encryption = Some(v1::EncryptionSettings {
                auto_lock_managers: true,
            });
        }
        spec
    });
    let mut daemon = Daemon::connect(&global.host).await?;
    let res = daemon
        .init(v1::InitRequest {
            advertise_addr: args.advertise_addr.unwrap_or_default(),
            listen_addr: args.listen_addr.unwrap_or_default(),
            force_new_cluster: args.force_new_cluster,
            spec,
        })
        .await?;
    writeln!(
        out,
        "Swarm initialized: current node ({}) is now a manager.\n",
        res.node_id
    )?;
    let cluster = daemon.get_cluster().await?;
    let token = join_token_of(&cluster, TokenRole::Worker)?;
    let addr = manager_addr(&mut daemon, &res.node_id).await?;
    write!(
        out,
        "{}",
        join_instructions(TokenRole::Worker, &token, &addr)
    )?;
    write!(
        out,
        "To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n\n"
    )?;
    if args.autolock {
        let key = daemon.get_unlock_key().await?;
        write!(out, "{}", super::autolock::unlock_notice(&key))?;
    }
    Ok(())
}

async fn join(global: &GlobalArgs, args: JoinArgs, out: Out<'_>) -> Result<(), CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    daemon
        .join(v1::JoinRequest {
            remote_addrs: vec![args.remote],
            join_token: args.token,
            advertise_addr: args.advertise_addr.unwrap_or_default(),
            listen_addr: args.listen_addr.unwrap_or_default(),
        })
        .await?;
    // The token decides the role; the daemon knows which it was, so ask it, as Docker does.
    let info = daemon.info().await?;
    let role = if info.is_manager { "manager" } else { "worker" };
    writeln!(out, "This node joined a swarm as a {role}.")?;
    Ok(())
}

async fn join_token(
    global: &GlobalArgs,
    args: JoinTokenArgs,
    out: Out<'_>,
) -> Result<(), CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let info = daemon.info().await?;
    require_manager(&info)?;
    let mut cluster = daemon.get_cluster().await?;
    if args.rotate {
        cluster = daemon
            .update_cluster(v1::UpdateClusterRequest {
                cluster_id: cluster.id.clone(),
                version: cluster.meta.as_ref().map_or(0, |m| m.version),
                spec: cluster.spec.clone(),
                rotate_worker_token: args.role == TokenRole::Worker,
                rotate_manager_token: args.role == TokenRole::Manager,
            })
            .await?;
        if !args.quiet {
            write!(
                out,
                "Successfully rotated {} join token.\n\n",
                args.role.noun()
            )?;
        }
    }
    let token = join_token_of(&cluster, args.role)?;
    if args.quiet {
        writeln!(out, "{token}")?;
        return Ok(());
    }
    let addr = manager_addr(&mut daemon, &info.node_id).await?;
    write!(out, "{}", join_instructions(args.role, &token, &addr))?;
    Ok(())
}

/// Prints the root CA certificate as the cluster object holds it (the control API never
/// returns its key).
async fn ca(global: &GlobalArgs, args: CaArgs, out: Out<'_>) -> Result<(), CliError> {
    if args.rotate {
        return Err(CliError::usage(
            "rotating the root CA is not supported yet: the swarm keeps its current root",
        ));
    }
    let mut daemon = Daemon::connect(&global.host).await?;
    let info = daemon.info().await?;
    require_manager(&info)?;
    let cluster = daemon.get_cluster().await?;
    let pem = cluster
        .root_ca
        .as_ref()
        .map(|ca| String::from_utf8_lossy(&ca.ca_cert).into_owned())
        .filter(|pem| pem.contains("-----BEGIN CERTIFICATE-----"))
        .ok_or(CliError::Protocol("the cluster has no root CA certificate"))?;
    write!(out, "{pem}")?;
    if !pem.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(())
}

/// Refuses, with a hint, on hosts that cannot hand out tokens.
pub(crate) fn require_manager(info: &v1::InfoResponse) -> Result<(), CliError> {
    if info.state() == LocalNodeState::Locked {
        return Err(CliError::usage(
            "this manager is locked: run shoal swarm unlock",
        ));
    }
    if info.state() != LocalNodeState::Active {
        return Err(CliError::usage(
            "this node is not part of a swarm: run 'shoal swarm init' or 'shoal swarm join' first",
        ));
    }
    if !info.is_manager {
        return Err(CliError::usage(
            "this node is not a swarm manager: run this command on a manager, or promote this node first",
        ));
    }
    Ok(())
}

fn join_token_of(cluster: &v1::Cluster, role: TokenRole) -> Result<String, CliError> {
    let tokens = cluster
        .root_ca
        .as_ref()
        .and_then(|ca| ca.join_tokens.as_ref())
        .ok_or(CliError::Protocol("the cluster has no join tokens"))?;
    let token = match role {
        TokenRole::Worker => &tokens.worker,
        TokenRole::Manager => &tokens.manager,
    };
    if token.is_empty() {
        return Err(CliError::Protocol("the cluster has an empty join token"));
    }
    Ok(token.clone())
}

/// The address other hosts join through: this manager's listener as the cluster knows it,
/// else (a node record not yet complete) its node address on the default port.
async fn manager_addr(daemon: &mut Daemon, node_id: &str) -> Result<String, CliError> {
    let node = daemon.get_node(node_id).await?;
    if let Some(status) = node.manager_status.as_ref()
        && !status.addr.is_empty()
    {
        return Ok(status.addr.clone());
    }
    let info = daemon.info().await?;
    if info.node_addr.is_empty() {
        return Err(CliError::Protocol(
            "the daemon did not report this manager's address",
        ));
    }
    parse::cluster_addr(&info.node_addr)
        .map_err(|_| CliError::Protocol("the daemon reported an unusable address for this manager"))
}

/// Docker's join instructions, blank lines included.
fn join_instructions(role: TokenRole, token: &str, addr: &str) -> String {
    format!(
        "To add a {} to this swarm, run the following command:\n\n    shoal swarm join --token {token} {addr}\n\n",
        role.noun()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_command_text() {
        assert_eq!(
            join_instructions(TokenRole::Worker, "SHTKN-1-abc-def", "10.0.0.1:2377"),
            "To add a worker to this swarm, run the following command:\n\
             \n    shoal swarm join --token SHTKN-1-abc-def 10.0.0.1:2377\n\n"
        );
        assert!(
            join_instructions(TokenRole::Manager, "T", "[::1]:2377")
                .starts_with("To add a manager to this swarm")
        );
    }

    #[test]
    fn settings_touch_only_what_was_given() {
        let mut spec = ClusterSpec {
            orchestration: Some(v1::OrchestrationSettings {
                task_history_retention_limit: 5,
            }),
            ..Default::default()
        };
        let settings = ClusterSettings {
            cert_expiry: Some(Duration::from_secs(90 * 86400)),
            task_history_limit: None,
            snapshot_interval: None,
            log_entries_for_slow_followers: None,
        };
        assert!(!settings.is_empty());
        settings.apply(&mut spec);
        assert_eq!(spec.ca.unwrap().node_cert_expiry_secs, 90 * 86400);
        assert_eq!(spec.orchestration.unwrap().task_history_retention_limit, 5);
        assert!(spec.raft.is_none());
    }

    #[test]
    fn raft_settings_keep_the_other_raft_fields() {
        let mut spec = ClusterSpec {
            raft: Some(v1::RaftSettings {
                snapshot_interval: 10_000,
                log_entries_for_slow_followers: 500,
                heartbeat_interval_ms: 100,
                ..Default::default()
            }),
            ..Default::default()
        };
        let settings = ClusterSettings {
            cert_expiry: None,
            task_history_limit: None,
            snapshot_interval: Some(50),
            log_entries_for_slow_followers: None,
        };
        assert!(!settings.is_empty());
        settings.apply(&mut spec);
        let raft = spec.raft.unwrap();
        assert_eq!(
            (
                raft.snapshot_interval,
                raft.log_entries_for_slow_followers,
                raft.heartbeat_interval_ms
            ),
            (50, 500, 100)
        );
    }

    #[test]
    fn tokens_come_from_the_root_ca() {
        let cluster = v1::Cluster {
            root_ca: Some(v1::RootCa {
                join_tokens: Some(v1::JoinTokens {
                    worker: "W".into(),
                    manager: "M".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(join_token_of(&cluster, TokenRole::Worker).unwrap(), "W");
        assert_eq!(join_token_of(&cluster, TokenRole::Manager).unwrap(), "M");
        assert!(join_token_of(&v1::Cluster::default(), TokenRole::Worker).is_err());
    }

    #[test]
    fn only_active_managers_hand_out_tokens() {
        let mut info = v1::InfoResponse::default();
        assert!(
            require_manager(&info)
                .unwrap_err()
                .to_string()
                .contains("not part of a swarm")
        );
        info.set_state(LocalNodeState::Active);
        assert!(
            require_manager(&info)
                .unwrap_err()
                .to_string()
                .contains("not a swarm manager")
        );
        info.is_manager = true;
        require_manager(&info).unwrap();
    }
}
