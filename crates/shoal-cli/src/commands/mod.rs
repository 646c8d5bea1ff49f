//! `commands/`: the clap tree of client verbs and the dispatch from a parsed verb to its
//! handler. Handlers check every user input before connecting, then write to an injected
//! writer so their output is testable.

pub mod config;
pub mod info;
pub mod node;
pub mod swarm;

use std::io::Write;

use crate::{CliError, GlobalArgs};

/// Where a handler writes its results (stdout in the binary, a buffer in tests).
pub(crate) type Out<'a> = &'a mut (dyn Write + Send);

/// Every client verb: the binary flattens this into its top-level subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Manage the swarm
    #[command(subcommand)]
    Swarm(swarm::SwarmCommand),
    /// Manage swarm nodes
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Manage swarm configs
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Display system-wide information
    Info(info::InfoArgs),
}

pub(crate) async fn run_to(
    global: &GlobalArgs,
    command: Command,
    out: Out<'_>,
) -> Result<(), CliError> {
    match command {
        Command::Swarm(cmd) => swarm::run(global, cmd, out).await,
        Command::Node(cmd) => node::run(global, cmd, out).await,
        Command::Config(cmd) => config::run(global, cmd, out).await,
        Command::Info(args) => info::run(global, args, out).await,
    }
}

/// `"Version": {"Index": n}` in inspect views, as Docker nests the object version.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct VersionView {
    pub(crate) index: u64,
}

/// `- key=value` lines (or `- key` for an empty value), sorted, as Docker's pretty views
/// list labels.
pub(crate) fn label_lines(labels: &std::collections::HashMap<String, String>) -> Vec<String> {
    let mut sorted: Vec<_> = labels.iter().collect();
    sorted.sort();
    sorted
        .into_iter()
        .map(|(k, v)| {
            if v.is_empty() {
                format!(" - {k}")
            } else {
                format!(" - {k}={v}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

    use super::*;

    /// The shape the binary uses, with a stand-in for its daemon verb.
    #[derive(Debug, Parser)]
    #[command(name = "shoal")]
    struct TestCli {
        #[command(flatten)]
        global: GlobalArgs,
        #[command(subcommand)]
        command: TopLevel,
    }

    #[derive(Debug, Subcommand)]
    enum TopLevel {
        Daemon {
            #[arg(long)]
            data_root: Option<String>,
        },
        #[command(flatten)]
        Client(Command),
    }

    #[test]
    fn the_whole_tree_is_consistent() {
        TestCli::command().debug_assert();
        // And on its own, as `augment_subcommands` builds it.
        let cmd = Command::augment_subcommands(clap::Command::new("shoal"));
        cmd.debug_assert();
    }

    fn parse(args: &[&str]) -> Result<TestCli, clap::Error> {
        let mut argv = vec!["shoal"];
        argv.extend_from_slice(args);
        TestCli::try_parse_from(argv)
    }

    #[test]
    fn host_flag_and_default() {
        let cli = parse(&["-H", "/tmp/x.sock", "info"]).unwrap();
        assert_eq!(cli.global.host, "/tmp/x.sock");
        let cli = TestCli::from_arg_matches(
            &TestCli::command()
                .try_get_matches_from(["shoal", "node", "ls"])
                .unwrap(),
        )
        .unwrap();
        // SHOAL_HOST may be set where tests run; otherwise the default applies.
        if std::env::var_os("SHOAL_HOST").is_none() {
            assert_eq!(cli.global.host, crate::DEFAULT_HOST);
        }
    }

    #[test]
    fn usage_errors_are_clap_errors() {
        let usage = |args: &[&str]| parse(args).unwrap_err().exit_code();
        assert_eq!(usage(&["node", "inspect"]), 2);
        assert_eq!(usage(&["swarm", "init", "--cert-expiry", "soon"]), 2);
        assert_eq!(usage(&["node", "update", "--label-add", "=x", "n1"]), 2);
        assert_eq!(usage(&["node", "ls", "-f", "colour=red"]), 2);
        assert_eq!(usage(&["swarm", "join-token", "admin"]), 2);
        assert_eq!(usage(&["swarm", "join", "10.0.0.1"]), 2);
        assert_eq!(
            usage(&["node", "inspect", "--pretty", "--format", "json", "n"]),
            2
        );
    }

    #[test]
    fn docker_shaped_invocations_parse() {
        for args in [
            &[
                "swarm",
                "init",
                "--advertise-addr",
                "10.0.0.1",
                "--cert-expiry",
                "90d",
            ][..],
            &["swarm", "init", "--task-history-limit", "-1"],
            &["swarm", "join", "--token", "SHTKN-1-x", "10.0.0.1:2377"],
            &["swarm", "join-token", "-q", "--rotate", "manager"],
            &["swarm", "leave", "--force"],
            &["swarm", "update", "--cert-expiry", "1h30m"],
            &["info", "--format", "json"],
            &[
                "node",
                "ls",
                "-q",
                "-f",
                "role=manager",
                "--filter",
                "name=a",
            ],
            &["node", "list", "--format", "json"],
            &["node", "inspect", "--pretty", "self", "n2"],
            &[
                "node",
                "update",
                "--availability",
                "drain",
                "--label-add",
                "a=b",
                "n1",
            ],
            &["node", "promote", "n1", "n2"],
            &["node", "rm", "-f", "n1"],
            &["config", "create", "-l", "env=prod", "app", "-"],
            &["config", "ls", "-f", "label=env"],
            &["config", "inspect", "app"],
            &["config", "rm", "app", "other"],
        ] {
            parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }
}
