//! `commands/`: the clap tree of client verbs and the dispatch from a parsed verb to its
//! handler. Handlers check every user input before connecting, then write to an injected
//! writer so their output is testable.

pub mod autolock;
pub mod config;
pub mod container;
pub mod filesystem;
pub mod image;
pub mod info;
pub mod node;
pub mod registry;
pub mod run;
pub mod swarm;
pub mod volume;

use std::io::Write;

use crate::daemon::Lifecycle;
use crate::stdio::Stdio;
use crate::{CliError, GlobalArgs};

/// Where a handler writes its results (stdout in the binary, a buffer in tests).
pub(crate) type Out<'a> = &'a mut (dyn Write + Send);

/// Every client verb: the binary flattens this into its top-level subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create and run a new container from an image
    // `-h` is --hostname, as in Docker; help stays on --help.
    #[command(
        disable_help_flag = true,
        override_usage = "shoal run [OPTIONS] IMAGE [COMMAND] [ARG...]"
    )]
    Run(Box<run::RunArgs>),
    /// Create a new container
    #[command(
        disable_help_flag = true,
        override_usage = "shoal create [OPTIONS] IMAGE [COMMAND] [ARG...]"
    )]
    Create(Box<run::CreateArgs>),
    /// Start one or more stopped containers
    Start(run::StartArgs),
    /// Attach local standard input, output, and error streams to a running container
    Attach(run::AttachArgs),
    /// List containers
    Ps(container::PsArgs),
    /// Fetch the logs of a container
    Logs(container::LogsArgs),
    /// Execute a command in a running container
    #[command(override_usage = "shoal exec [OPTIONS] CONTAINER COMMAND [ARG...]")]
    Exec(container::ExecArgs),
    /// Stop one or more running containers
    Stop(container::StopArgs),
    /// Restart one or more containers
    Restart(container::StopArgs),
    /// Kill one or more running containers
    Kill(container::KillArgs),
    /// Pause all processes within one or more containers
    Pause(container::ContainerRefs),
    /// Unpause all processes within one or more containers
    Unpause(container::ContainerRefs),
    /// Remove one or more containers
    Rm(container::RmArgs),
    /// Block until one or more containers stop, then print their exit codes
    Wait(container::ContainerRefs),
    /// Display detailed information on one or more containers
    Inspect(container::InspectArgs),
    /// Display the running processes of a container
    Top(container::TopArgs),
    /// Display a live stream of container(s) resource usage statistics
    Stats(container::StatsArgs),
    /// List port mappings or a specific mapping for the container
    Port(container::PortArgs),
    /// Copy files/folders between a container and the local filesystem
    Cp(filesystem::CpArgs),
    /// Inspect changes to files or directories on a container's filesystem
    Diff(filesystem::DiffArgs),
    /// Export a container's filesystem as a tar archive
    Export(filesystem::ExportArgs),
    /// Create a new image from a container's changes
    Commit(filesystem::CommitArgs),
    /// Manage containers
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Manage images
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// List images
    Images(image::LsArgs),
    /// Remove one or more images
    Rmi(image::RmArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(image::TagArgs),
    /// Show the history of an image
    History(image::HistoryArgs),
    /// Load an image from a tar archive or STDIN
    Load(image::LoadArgs),
    /// Save one or more images to a tar archive (streamed to STDOUT by default)
    Save(image::SaveArgs),
    /// Import the contents from a tarball to create a filesystem image
    Import(image::ImportArgs),
    /// Download an image from a registry
    Pull(image::PullArgs),
    /// Upload an image to a registry
    Push(image::PushArgs),
    /// Log in to a registry
    Login(registry::LoginArgs),
    /// Log out from a registry
    Logout(registry::LogoutArgs),
    /// Manage volumes
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
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

/// `shoal container …`: the container verbs under Docker's management command.
#[derive(Debug, clap::Subcommand)]
pub enum ContainerCommand {
    /// Attach local standard input, output, and error streams to a running container
    Attach(run::AttachArgs),
    /// Create a new image from a container's changes
    Commit(filesystem::CommitArgs),
    /// Copy files/folders between a container and the local filesystem
    Cp(filesystem::CpArgs),
    /// Create a new container
    #[command(
        disable_help_flag = true,
        override_usage = "shoal container create [OPTIONS] IMAGE [COMMAND] [ARG...]"
    )]
    Create(Box<run::CreateArgs>),
    /// Inspect changes to files or directories on a container's filesystem
    Diff(filesystem::DiffArgs),
    /// Execute a command in a running container
    #[command(override_usage = "shoal container exec [OPTIONS] CONTAINER COMMAND [ARG...]")]
    Exec(container::ExecArgs),
    /// Export a container's filesystem as a tar archive
    Export(filesystem::ExportArgs),
    /// Display detailed information on one or more containers
    Inspect(container::InspectArgs),
    /// Kill one or more running containers
    Kill(container::KillArgs),
    /// Fetch the logs of a container
    Logs(container::LogsArgs),
    /// List containers
    #[command(visible_aliases = ["list", "ps"])]
    Ls(container::PsArgs),
    /// Pause all processes within one or more containers
    Pause(container::ContainerRefs),
    /// List port mappings or a specific mapping for the container
    Port(container::PortArgs),
    /// Restart one or more containers
    Restart(container::StopArgs),
    /// Remove one or more containers
    #[command(visible_alias = "remove")]
    Rm(container::RmArgs),
    /// Create and run a new container from an image
    #[command(
        disable_help_flag = true,
        override_usage = "shoal container run [OPTIONS] IMAGE [COMMAND] [ARG...]"
    )]
    Run(Box<run::RunArgs>),
    /// Start one or more stopped containers
    Start(run::StartArgs),
    /// Display a live stream of container(s) resource usage statistics
    Stats(container::StatsArgs),
    /// Stop one or more running containers
    Stop(container::StopArgs),
    /// Display the running processes of a container
    Top(container::TopArgs),
    /// Unpause all processes within one or more containers
    Unpause(container::ContainerRefs),
    /// Block until one or more containers stop, then print their exit codes
    Wait(container::ContainerRefs),
}

impl From<ContainerCommand> for Command {
    fn from(command: ContainerCommand) -> Self {
        match command {
            ContainerCommand::Attach(a) => Command::Attach(a),
            ContainerCommand::Commit(a) => Command::Commit(a),
            ContainerCommand::Cp(a) => Command::Cp(a),
            ContainerCommand::Diff(a) => Command::Diff(a),
            ContainerCommand::Export(a) => Command::Export(a),
            ContainerCommand::Create(a) => Command::Create(a),
            ContainerCommand::Exec(a) => Command::Exec(a),
            ContainerCommand::Inspect(a) => Command::Inspect(a),
            ContainerCommand::Kill(a) => Command::Kill(a),
            ContainerCommand::Logs(a) => Command::Logs(a),
            ContainerCommand::Ls(a) => Command::Ps(a),
            ContainerCommand::Pause(a) => Command::Pause(a),
            ContainerCommand::Port(a) => Command::Port(a),
            ContainerCommand::Restart(a) => Command::Restart(a),
            ContainerCommand::Rm(a) => Command::Rm(a),
            ContainerCommand::Run(a) => Command::Run(a),
            ContainerCommand::Start(a) => Command::Start(a),
            ContainerCommand::Stats(a) => Command::Stats(a),
            ContainerCommand::Stop(a) => Command::Stop(a),
            ContainerCommand::Top(a) => Command::Top(a),
            ContainerCommand::Unpause(a) => Command::Unpause(a),
            ContainerCommand::Wait(a) => Command::Wait(a),
        }
    }
}

/// Runs one verb; `Ok` carries the exit status (a container's or process's for `run`,
/// `start -a`, `attach` and `exec`, else 0).
pub(crate) async fn run_to(
    global: &GlobalArgs,
    command: Command,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let done = |result: Result<(), CliError>| result.map(|()| 0);
    let command = match command {
        Command::Container(cmd) => cmd.into(),
        other => other,
    };
    match command {
        Command::Run(args) => run::run(global, *args, io).await,
        Command::Create(args) => run::create(global, *args, io).await,
        Command::Start(args) => run::start(global, args, io).await,
        Command::Attach(args) => run::attach(global, args, io).await,
        Command::Ps(args) => container::ps(global, args, io).await,
        Command::Logs(args) => container::logs(global, args, io).await,
        Command::Exec(args) => container::exec(global, args, io).await,
        Command::Stop(args) => {
            let op = container::stop_op(&args);
            container::each(global, args.containers(), op, io).await
        }
        Command::Restart(args) => {
            let op = container::restart_op(&args);
            container::each(global, args.containers(), op, io).await
        }
        Command::Kill(args) => {
            let (op, refs) = args.op();
            container::each(global, refs, op, io).await
        }
        Command::Pause(args) => {
            container::each(global, args.containers(), Lifecycle::Pause, io).await
        }
        Command::Unpause(args) => {
            container::each(global, args.containers(), Lifecycle::Unpause, io).await
        }
        Command::Rm(args) => {
            let (op, refs) = args.op();
            container::each(global, refs, op, io).await
        }
        Command::Wait(args) => container::wait(global, args, io).await,
        Command::Inspect(args) => container::inspect(global, args, io).await,
        Command::Top(args) => container::top(global, args, io).await,
        Command::Stats(args) => container::stats(global, args, io).await,
        Command::Port(args) => container::port(global, args, io).await,
        Command::Cp(args) => filesystem::cp(global, args, io).await,
        Command::Diff(args) => filesystem::diff(global, args, io).await,
        Command::Export(args) => filesystem::export(global, args, io).await,
        Command::Commit(args) => filesystem::commit(global, args, io).await,
        Command::Container(_) => unreachable!("container verbs are mapped to top-level ones above"),
        Command::Image(cmd) => image::run(global, cmd, io).await,
        Command::Images(args) => image::run(global, image::ImageCommand::Ls(args), io).await,
        Command::Rmi(args) => image::run(global, image::ImageCommand::Rm(args), io).await,
        Command::Tag(args) => image::run(global, image::ImageCommand::Tag(args), io).await,
        Command::History(args) => image::run(global, image::ImageCommand::History(args), io).await,
        Command::Load(args) => image::run(global, image::ImageCommand::Load(args), io).await,
        Command::Save(args) => image::run(global, image::ImageCommand::Save(args), io).await,
        Command::Import(args) => image::run(global, image::ImageCommand::Import(args), io).await,
        Command::Pull(args) => image::run(global, image::ImageCommand::Pull(args), io).await,
        Command::Push(args) => image::run(global, image::ImageCommand::Push(args), io).await,
        Command::Login(args) => registry::login(global, args, io).await,
        Command::Logout(args) => registry::logout(args, io).await,
        Command::Volume(cmd) => volume::run(global, cmd, io).await,
        Command::Swarm(swarm::SwarmCommand::Unlock(args)) => {
            done(autolock::unlock(global, args, io).await)
        }
        Command::Swarm(cmd) => done(swarm::run(global, cmd, io.out).await),
        Command::Node(cmd) => done(node::run(global, cmd, io.out).await),
        Command::Config(cmd) => done(config::run(global, cmd, io.out).await),
        Command::Info(args) => done(info::run(global, args, io.out).await),
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
/// Docker's prune prompt: prints `warning` and "Are you sure you want to continue? [y/N] ",
/// and answers whether the user typed y or yes.
pub(crate) fn confirm(io: &mut Stdio<'_>, warning: &str) -> Result<bool, CliError> {
    use std::io::BufRead;
    write!(
        io.out,
        "WARNING! {warning}\nAre you sure you want to continue? [y/N] "
    )?;
    io.out.flush()?;
    let mut answer = String::new();
    std::io::BufReader::new(io.input.take_reader())
        .read_line(&mut answer)
        .map_err(|err| CliError::ReadInput {
            path: "standard input".to_owned(),
            reason: crate::error::io_reason(&err).to_lowercase(),
        })?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// Docker's prune report: a heading and one line per removed object (nothing when none), then
/// the space reclaimed.
pub(crate) fn print_pruned(
    io: &mut Stdio<'_>,
    heading: &str,
    removed: impl IntoIterator<Item = String>,
    reclaimed_bytes: u64,
) -> Result<(), CliError> {
    let mut removed = removed.into_iter().peekable();
    if removed.peek().is_some() {
        writeln!(io.out, "{heading}")?;
        for line in removed {
            writeln!(io.out, "{line}")?;
        }
        writeln!(io.out)?;
    }
    writeln!(
        io.out,
        "Total reclaimed space: {}",
        crate::format::units::human_size(reclaimed_bytes)
    )?;
    Ok(())
}

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
        // A forced new cluster keeps the swarm's settings: `swarm update` changes them.
        assert_eq!(
            usage(&["swarm", "init", "--force-new-cluster", "--autolock"]),
            2
        );
        assert_eq!(
            usage(&[
                "swarm",
                "init",
                "--force-new-cluster",
                "--cert-expiry",
                "2h"
            ]),
            2
        );
        assert_eq!(
            usage(&["node", "inspect", "--pretty", "--format", "json", "n"]),
            2
        );
    }

    #[test]
    fn container_and_image_usage_errors_are_clap_errors() {
        let usage = |args: &[&str]| parse(args).unwrap_err().exit_code();
        for args in [
            &["run"][..],
            &["run", "-m", "lots", "alpine"],
            &["run", "--cpus", "1.5.2", "alpine"],
            &["run", "-p", "80:80:80:80", "alpine"],
            &["run", "--restart", "sometimes", "alpine"],
            &["create", "--network", "overlay", "alpine"],
            &["exec", "web"],
            &["stop"],
            &["kill", "-s", "HUP"],
            &["ps", "--format", "yaml"],
            &["logs", "--tail", "ten", "web"],
            &["logs", "--since", "yesterday", "web"],
            &["port", "web", "80-81"],
            &["import", "-c", "RUN make", "rootfs.tar"],
            &["image", "rm"],
            &["tag", "only-one"],
            &["cp", "only-one"],
            &["commit"],
            &["commit", "-c", "RUN make", "web"],
            &["commit", "--pause=maybe", "web"],
            &["export"],
            &["pull"],
            &["push", "a", "b"],
            &["login", "-p", "x", "--password-stdin", "-u", "me"],
            &["run", "--pull", "sometimes", "alpine"],
            &["container", "ls", "--bogus"],
        ] {
            assert_eq!(usage(args), 2, "{args:?}");
        }
        // `-h` is the hostname for run and create, as in Docker; --help still helps.
        let err = parse(&["run", "--help"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        assert_eq!(usage(&["run", "-h"]), 2);
    }

    #[test]
    fn docker_shaped_container_and_image_invocations_parse() {
        for args in [
            &["run", "-it", "--rm", "-h", "box", "alpine", "sh"][..],
            &[
                "run",
                "-d",
                "-p",
                "8080:80",
                "-v",
                "data:/data",
                "--name",
                "web",
                "nginx",
            ],
            &["run", "--sig-proxy=false", "alpine", "sleep", "1"],
            &["create", "-e", "A=1", "--env-file", "app.env", "alpine"],
            &["start", "-ai", "web"],
            &["attach", "--no-stdin", "web"],
            &["ps", "-aq", "--no-trunc"],
            &["container", "ls", "--format", "json"],
            &["container", "ps", "-n", "2"],
            &["container", "run", "--rm", "alpine", "true"],
            &["logs", "-f", "-n", "10", "-t", "--since", "10m", "web"],
            &[
                "exec", "-it", "-u", "root", "-w", "/", "web", "sh", "-c", "ls -la",
            ],
            &["stop", "-t", "5", "web", "api"],
            &["restart", "--timeout", "0", "web"],
            &["kill", "-s", "HUP", "web"],
            &["rm", "-fv", "web"],
            &["wait", "web"],
            &["inspect", "web", "api"],
            &["top", "web"],
            &["stats", "--no-stream", "-a"],
            &["port", "web", "53/udp"],
            &["image", "ls", "-a"],
            &["images", "-q", "alpine"],
            &["image", "rm", "-f", "alpine"],
            &["rmi", "alpine", "nginx"],
            &["image", "inspect", "alpine"],
            &["tag", "alpine", "base:1"],
            &["history", "--no-trunc", "alpine"],
            &["load", "-i", "images.tar"],
            &["image", "load", "-q"],
            &["save", "-o", "out.tar", "alpine", "nginx"],
            &[
                "import",
                "-c",
                "CMD [\"/bin/sh\"]",
                "-m",
                "msg",
                "-",
                "base:1",
            ],
            &["image", "prune", "-f"],
            &["cp", "-a", "web:/etc/passwd", "."],
            &["cp", "-", "web:/tmp"],
            &["cp", "web:/var/log", "-"],
            &["container", "cp", "-L", "-q", "./x:y", "web:/x"],
            &["diff", "web"],
            &["container", "diff", "web"],
            &["export", "-o", "out.tar", "web"],
            &["container", "export", "web"],
            &[
                "commit",
                "-m",
                "msg",
                "-a",
                "me",
                "-c",
                "CMD [\"sh\"]",
                "--pause=false",
                "web",
                "img:1",
            ],
            &["container", "commit", "-p", "web"],
            &["pull", "-q", "busybox"],
            &["image", "pull", "localhost:5000/app@sha256:abc"],
            &["push", "localhost:5000/app:1"],
            &["image", "push", "-q", "app"],
            &["login", "-u", "me", "--password-stdin", "localhost:5000"],
            &["login", "-u", "me", "-p", "secret"],
            &["logout", "localhost:5000"],
            &["logout"],
            &["run", "--pull", "always", "--rm", "alpine"],
            &["create", "--pull=never", "alpine"],
            &[
                "volume",
                "create",
                "--label",
                "a=b",
                "-o",
                "type=tmpfs",
                "data",
            ],
            &["volume", "create"],
            &[
                "volume",
                "ls",
                "-q",
                "-f",
                "dangling=true",
                "--filter",
                "label=a",
            ],
            &["volume", "list", "--format", "json"],
            &["volume", "inspect", "data", "logs"],
            &["volume", "rm", "-f", "data"],
            &["volume", "prune", "-af"],
            &["run", "--rm", "-v", "data:/data:ro,nocopy", "alpine"],
            &[
                "run",
                "--mount",
                "type=volume,source=data,target=/data,readonly,volume-nocopy",
                "alpine",
            ],
        ] {
            parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
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
