//! `commands/run.rs`: `shoal run`, `create`, `start` and `attach` — Docker's container flags
//! turned into a `ContainerSpec` (every value checked before anything is sent), and the
//! attached session whose exit code becomes ours.

use std::collections::HashMap;

use clap::ArgAction;
use shoal_api::v1::{self, ContainerSpec, MountSpec, RestartPolicySpec, stdio_input};
use shoal_api::validate;

use crate::attach::{Ended, Session, detach_keys, exit_status, status_after};
use crate::commands::image;
use crate::daemon::{Daemon, Lifecycle};
use crate::error::io_reason;
use crate::parse::{self, container as pc};
use crate::stdio::{Stdio, terminal_size};
use crate::{CliError, GlobalArgs};

/// The flags `run` and `create` share: everything that goes into the container's spec.
#[derive(Debug, clap::Args)]
pub struct ContainerOptions {
    /// Keep STDIN open even if not attached
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    tty: bool,
    /// Automatically remove the container when it exits
    #[arg(long)]
    rm: bool,
    /// Assign a name to the container
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Set environment variables (KEY alone takes our value)
    #[arg(short, long = "env", value_name = "KEY[=VALUE]", value_parser = pc::env_var)]
    env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long, value_name = "FILE")]
    env_file: Vec<String>,
    /// Publish a container's port(s) to the host
    #[arg(short, long = "publish", value_name = "[IP:]HOST:CONTAINER[/PROTO]", value_parser = pc::publish)]
    publish: Vec<pc::PortSpec>,
    /// Publish all exposed ports to random ports
    #[arg(short = 'P', long)]
    publish_all: bool,
    /// Bind mount a host path or mount a named volume
    #[arg(short, long = "volume", value_name = "[SOURCE:]TARGET[:ro]", value_parser = pc::volume)]
    volume: Vec<MountSpec>,
    /// Attach a filesystem mount to the container
    #[arg(long = "mount", value_name = "type=…,source=…,target=…[,readonly]", value_parser = pc::mount)]
    mount: Vec<MountSpec>,
    /// Mount a tmpfs directory
    #[arg(long, value_name = "PATH[:size=…]", value_parser = pc::tmpfs)]
    tmpfs: Vec<MountSpec>,
    /// Working directory inside the container
    #[arg(short, long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short, long, value_name = "USER")]
    user: Option<String>,
    /// Container host name
    #[arg(short = 'h', long, value_name = "NAME")]
    hostname: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image ("" clears it)
    #[arg(long, value_name = "COMMAND")]
    entrypoint: Option<String>,
    /// Memory limit (e.g. 64m, 1g)
    #[arg(short, long, value_name = "BYTES", value_parser = pc::size)]
    memory: Option<i64>,
    /// Memory plus swap limit (e.g. 1g); -1 for unlimited swap
    #[arg(long, value_name = "BYTES", value_parser = pc::memory_swap, allow_hyphen_values = true)]
    memory_swap: Option<i64>,
    /// Number of CPUs (e.g. 1.5)
    #[arg(long, value_name = "DECIMAL", value_parser = pc::nano_cpus)]
    cpus: Option<i64>,
    /// Tune container pids limit (-1 for unlimited)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pids_limit: Option<i64>,
    /// Network mode of the container
    #[arg(long, visible_alias = "net", value_name = "MODE", value_parser = ["none", "host", "bridge"])]
    network: Option<String>,
    /// Restart policy: no, always, on-failure[:N] or unless-stopped
    #[arg(long, value_name = "POLICY", value_parser = pc::restart_policy)]
    restart: Option<RestartPolicySpec>,
    /// Signal to stop the container
    #[arg(long, value_name = "SIGNAL")]
    stop_signal: Option<String>,
    /// Timeout (in seconds) to stop a container
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    stop_timeout: Option<i32>,
    /// Security options (no-new-privileges)
    #[arg(long, value_name = "OPTION", value_parser = pc::security_opt)]
    security_opt: Vec<bool>,
    /// Mount the container's root filesystem as read only
    #[arg(long)]
    read_only: bool,
    /// Set metadata on a container
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse::label)]
    label: Vec<(String, String)>,
    /// Pull the image before creating the container: always, missing or never
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = PullPolicy::Missing)]
    pull: PullPolicy,
    /// Print help (-h is --hostname, as in Docker)
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    /// The image, then the command and its arguments (flags after IMAGE are the command's)
    #[arg(
        value_name = "IMAGE",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Run container in background and print container ID
    #[arg(short, long)]
    detach: bool,
    /// Proxy received signals to the process (without a TTY)
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        action = ArgAction::Set
    )]
    sig_proxy: bool,
    /// Override the key sequence for detaching a container (default ctrl-p,ctrl-q)
    #[arg(long, value_name = "KEYS")]
    detach_keys: Option<String>,
    #[command(flatten)]
    options: ContainerOptions,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    options: ContainerOptions,
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Attach STDOUT/STDERR and forward signals
    #[arg(short, long)]
    attach: bool,
    /// Attach container's STDIN
    #[arg(short, long)]
    interactive: bool,
    /// Override the key sequence for detaching a container (default ctrl-p,ctrl-q)
    #[arg(long, value_name = "KEYS")]
    detach_keys: Option<String>,
    /// Container IDs, ID prefixes or names
    #[arg(value_name = "CONTAINER", required = true)]
    containers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// Do not attach STDIN
    #[arg(long)]
    no_stdin: bool,
    /// Proxy all received signals to the process
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        action = ArgAction::Set
    )]
    sig_proxy: bool,
    /// Override the key sequence for detaching a container (default ctrl-p,ctrl-q)
    #[arg(long, value_name = "KEYS")]
    detach_keys: Option<String>,
    /// Container ID, ID prefix or name
    #[arg(value_name = "CONTAINER")]
    container: String,
}

/// Our environment, for `-e KEY` and bare keys in env files.
fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

impl ContainerOptions {
    /// The spec these flags describe. Reads `--env-file`s; `lookup` resolves bare keys.
    fn spec(&self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<ContainerSpec, CliError> {
        let (image, cmd) = self
            .args
            .split_first()
            .ok_or_else(|| CliError::usage("an image is required"))?;
        if image.is_empty() {
            return Err(CliError::usage("the image name is empty"));
        }
        if let Some(name) = &self.name {
            validate::object_name("container", name)?;
        }
        let restart = self.restart.clone();
        if self.rm && restart.as_ref().is_some_and(|r| r.name != "no") {
            return Err(CliError::usage(
                "conflicting options: --restart and --rm (a removed container cannot restart)",
            ));
        }
        let mut env = Vec::new();
        for path in &self.env_file {
            let text = std::fs::read(path).map_err(|err| CliError::ReadInput {
                path: path.clone(),
                reason: io_reason(&err).to_lowercase(),
            })?;
            let text = String::from_utf8(text).map_err(|_| CliError::ReadInput {
                path: path.clone(),
                reason: "it is not UTF-8 text".to_owned(),
            })?;
            env.extend(pc::env_file(path, &text, lookup).map_err(CliError::Usage)?);
        }
        env.extend(self.env.iter().filter_map(|e| pc::resolve_env(e, lookup)));
        let mut mounts = self.volume.clone();
        mounts.extend(self.mount.iter().cloned());
        mounts.extend(self.tmpfs.iter().cloned());
        let labels: HashMap<String, String> = parse::label_map(&self.label);
        Ok(ContainerSpec {
            image: image.clone(),
            name: self.name.clone().unwrap_or_default(),
            cmd: cmd.to_vec(),
            entrypoint: self
                .entrypoint
                .iter()
                .filter(|e| !e.is_empty())
                .cloned()
                .collect(),
            entrypoint_set: self.entrypoint.is_some(),
            env,
            working_dir: self.workdir.clone().unwrap_or_default(),
            user: self.user.clone().unwrap_or_default(),
            hostname: self.hostname.clone().unwrap_or_default(),
            tty: self.tty,
            open_stdin: self.interactive,
            labels,
            mounts,
            ports: self.publish.iter().flat_map(|p| p.0.clone()).collect(),
            publish_all: self.publish_all,
            network_mode: self.network.clone().unwrap_or_default(),
            restart_policy: restart,
            memory_bytes: self.memory.unwrap_or(0),
            memory_swap_bytes: self.memory_swap.unwrap_or(0),
            nano_cpus: self.cpus.unwrap_or(0),
            pids_limit: self.pids_limit.unwrap_or(0),
            auto_remove: self.rm,
            stop_signal: self.stop_signal.clone().unwrap_or_default(),
            stop_timeout_secs: self.stop_timeout.unwrap_or(0),
            no_new_privileges: self.security_opt.last().copied().unwrap_or(false),
            read_only: self.read_only,
            // The caller knows the terminal (see `run`).
            console_size: None,
        })
    }
}

/// Docker refuses `-it` when stdin is not a terminal, rather than garble it.
fn require_tty_input(tty: bool, stdin: bool, io: &Stdio<'_>) -> Result<(), CliError> {
    if tty && stdin && !io.stdin_tty {
        return Err(CliError::usage("the input device is not a TTY"));
    }
    Ok(())
}

/// When `run` and `create` pull their image, as Docker's `--pull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    Always,
    Missing,
    Never,
}

/// The daemon's refusal to create a container from an image it does not hold.
fn is_missing_image(err: &CliError) -> bool {
    matches!(err, CliError::Rpc(status)
        if status.code() == tonic::Code::NotFound && status.message().starts_with("no such image"))
}

/// Creates the container, pulling its image first as `pull` says (progress on stderr, so
/// stdout stays the container's).
async fn create_container(
    daemon: &mut Daemon,
    spec: ContainerSpec,
    pull: PullPolicy,
    io: &mut Stdio<'_>,
) -> Result<String, CliError> {
    if pull == PullPolicy::Always {
        image::pull_with_progress(daemon, &spec.image, false, false, io.err).await?;
    }
    let created = match daemon.create_container(spec.clone()).await {
        Err(err) if pull == PullPolicy::Missing && is_missing_image(&err) => {
            writeln!(
                io.err,
                "Unable to find image '{}' locally",
                image::with_default_tag(&spec.image)
            )?;
            image::pull_with_progress(daemon, &spec.image, false, false, io.err).await?;
            daemon.create_container(spec).await?
        }
        other => other?,
    };
    for warning in &created.warnings {
        writeln!(io.err, "WARNING: {warning}")?;
    }
    Ok(created.id)
}

pub(crate) async fn create(
    global: &GlobalArgs,
    args: CreateArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let spec = args.options.spec(&process_env)?;
    let mut daemon = Daemon::connect(&global.host).await?;
    let id = create_container(&mut daemon, spec, args.options.pull, io).await?;
    writeln!(io.out, "{id}")?;
    Ok(0)
}

pub(crate) async fn run(
    global: &GlobalArgs,
    args: RunArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let mut spec = args.options.spec(&process_env)?;
    let keys = detach_keys(args.detach_keys.as_deref().unwrap_or_default())?;
    if !args.detach {
        require_tty_input(spec.tty, spec.open_stdin, io)?;
    }
    if spec.tty && !args.detach && io.input.is_process() {
        spec.console_size = terminal_size();
    }
    let (tty, stdin, auto_remove) = (spec.tty, spec.open_stdin, spec.auto_remove);
    let mut daemon = Daemon::connect(&global.host).await?;
    let id = create_container(&mut daemon, spec, args.options.pull, io).await?;
    if args.detach {
        daemon.lifecycle(&id, &Lifecycle::Start).await?;
        writeln!(io.out, "{id}")?;
        return Ok(0);
    }
    let session = Session {
        first: stdio_input::Input::Attach(v1::ContainerRef {
            container: id.clone(),
        }),
        stdin,
        tty,
        start: Some(&id),
        sig_proxy: (args.sig_proxy && !tty).then_some(id.as_str()),
        detach_keys: keys,
        close_stdin: true,
    };
    let result = match session.run(&mut daemon, io).await {
        Ok(Ended::Exited(code)) => Ok(code),
        // The stream ended without the code (the daemon closed it): ask for it.
        Ok(Ended::Closed) => daemon.wait_container(&id).await.map(|s| s.exit_code),
        // The container runs on (`--rm` removes it when it exits).
        Ok(ended @ (Ended::Detached | Ended::Signal(_))) => {
            return status_after(ended, &mut daemon, &id).await;
        }
        Err(err) => Err(err),
    };
    if auto_remove {
        // The daemon removes it too (auto_remove); whichever is first wins, quietly. Like
        // Docker's --rm, its anonymous volumes go with it.
        let remove = Lifecycle::Remove {
            force: true,
            volumes: true,
        };
        let _ = daemon.lifecycle(&id, &remove).await;
    }
    result.map(exit_status)
}

pub(crate) async fn start(
    global: &GlobalArgs,
    args: StartArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    if !(args.attach || args.interactive) {
        let mut daemon = Daemon::connect(&global.host).await?;
        let mut errors = Vec::new();
        for reference in &args.containers {
            match daemon.lifecycle(reference, &Lifecycle::Start).await {
                Ok(()) => writeln!(io.out, "{reference}")?,
                Err(err) => errors.push(err),
            }
        }
        return CliError::collect(errors).map(|()| 0);
    }
    let [reference] = args.containers.as_slice() else {
        return Err(CliError::usage(
            "you cannot start and attach multiple containers at once",
        ));
    };
    let keys = detach_keys(args.detach_keys.as_deref().unwrap_or_default())?;
    let mut daemon = Daemon::connect(&global.host).await?;
    let info = daemon.inspect_container(reference).await?;
    let spec = info.spec.clone().unwrap_or_default();
    let stdin = args.interactive && spec.open_stdin;
    require_tty_input(spec.tty, stdin, io)?;
    let session = Session {
        first: stdio_input::Input::Attach(v1::ContainerRef {
            container: info.id.clone(),
        }),
        stdin,
        tty: spec.tty,
        start: Some(&info.id),
        sig_proxy: (!spec.tty).then_some(info.id.as_str()),
        detach_keys: keys,
        close_stdin: true,
    };
    let ended = session.run(&mut daemon, io).await?;
    status_after(ended, &mut daemon, &info.id).await
}

pub(crate) async fn attach(
    global: &GlobalArgs,
    args: AttachArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let keys = detach_keys(args.detach_keys.as_deref().unwrap_or_default())?;
    let mut daemon = Daemon::connect(&global.host).await?;
    let info = daemon.inspect_container(&args.container).await?;
    let status = info.state.as_ref().map_or("", |s| s.status.as_str());
    if !matches!(status, "running" | "paused" | "restarting") {
        return Err(CliError::usage(format!(
            "you cannot attach to a stopped container, start it first: {}",
            args.container
        )));
    }
    let spec = info.spec.clone().unwrap_or_default();
    let stdin = spec.open_stdin && !args.no_stdin;
    require_tty_input(spec.tty, stdin, io)?;
    let session = Session {
        first: stdio_input::Input::Attach(v1::ContainerRef {
            container: info.id.clone(),
        }),
        stdin,
        tty: spec.tty,
        start: None,
        sig_proxy: (args.sig_proxy && !spec.tty).then_some(info.id.as_str()),
        detach_keys: keys,
        close_stdin: false,
    };
    let ended = session.run(&mut daemon, io).await?;
    status_after(ended, &mut daemon, &info.id).await
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use shoal_api::v1::mount_spec;

    use super::*;

    #[derive(Debug, Parser)]
    #[command(disable_help_flag = true)]
    struct Run {
        #[command(flatten)]
        args: RunArgs,
    }

    fn options(argv: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut full = vec!["run"];
        full.extend_from_slice(argv);
        Run::try_parse_from(full).map(|r| r.args)
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn every_flag_reaches_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let env_file = dir.path().join("app.env");
        std::fs::write(&env_file, "# db\nDB=postgres\nHOME\n").unwrap();
        let args = options(&[
            "-d",
            "-it",
            "--name",
            "web",
            "-e",
            "A=1",
            "-e",
            "HOME",
            "--env-file",
            env_file.to_str().unwrap(),
            "-p",
            "127.0.0.1:8080:80",
            "-p",
            "53:53/udp",
            "-P",
            "-v",
            "/srv:/srv:ro",
            "--mount",
            "type=tmpfs,target=/run",
            "--tmpfs",
            "/tmp",
            "-w",
            "/app",
            "-u",
            "1000:1000",
            "-h",
            "box",
            "--entrypoint",
            "/bin/sh",
            "-m",
            "64m",
            "--memory-swap",
            "-1",
            "--cpus",
            "1.5",
            "--pids-limit",
            "-1",
            "--network",
            "host",
            "--restart",
            "on-failure:3",
            "--stop-signal",
            "SIGQUIT",
            "--stop-timeout",
            "20",
            "--security-opt",
            "no-new-privileges",
            "--read-only",
            "-l",
            "tier=web",
            "nginx:1.25",
            "nginx",
            "-g",
            "daemon off;",
        ])
        .unwrap();
        assert!(args.detach && args.sig_proxy);
        let lookup = |k: &str| (k == "HOME").then(|| "/home/me".to_owned());
        let spec = args.options.spec(&lookup).unwrap();
        assert_eq!(spec.image, "nginx:1.25");
        assert_eq!(spec.cmd, ["nginx", "-g", "daemon off;"]);
        assert_eq!(spec.name, "web");
        assert_eq!(
            spec.env,
            ["DB=postgres", "HOME=/home/me", "A=1", "HOME=/home/me"]
        );
        assert_eq!(spec.ports.len(), 2);
        assert_eq!(spec.ports[1].protocol, "udp");
        assert!(spec.publish_all && spec.tty && spec.open_stdin);
        let kinds: Vec<_> = spec.mounts.iter().map(|m| m.kind()).collect();
        assert_eq!(
            kinds,
            [
                mount_spec::Kind::Bind,
                mount_spec::Kind::Tmpfs,
                mount_spec::Kind::Tmpfs
            ]
        );
        assert_eq!(spec.working_dir, "/app");
        assert_eq!(spec.user, "1000:1000");
        assert_eq!(spec.hostname, "box");
        assert_eq!(spec.entrypoint, ["/bin/sh"]);
        assert!(spec.entrypoint_set);
        assert_eq!(spec.memory_bytes, 64 << 20);
        assert_eq!(spec.memory_swap_bytes, -1);
        assert_eq!(spec.nano_cpus, 1_500_000_000);
        assert_eq!(spec.pids_limit, -1);
        assert_eq!(spec.network_mode, "host");
        let restart = spec.restart_policy.unwrap();
        assert_eq!(
            (restart.name.as_str(), restart.maximum_retry_count),
            ("on-failure", 3)
        );
        assert_eq!(spec.stop_signal, "SIGQUIT");
        assert_eq!(spec.stop_timeout_secs, 20);
        assert!(spec.no_new_privileges && spec.read_only && !spec.auto_remove);
        assert_eq!(spec.labels["tier"], "web");
    }

    #[test]
    fn the_command_starts_at_the_image() {
        let spec = |argv: &[&str]| options(argv).unwrap().options.spec(&no_env).unwrap();
        assert_eq!(spec(&["alpine", "ls", "-la"]).cmd, ["ls", "-la"]);
        assert_eq!(spec(&["alpine", "-la"]).cmd, ["-la"]);
        assert_eq!(spec(&["--rm", "alpine", "--rm"]).cmd, ["--rm"]);
        assert!(spec(&["--rm", "alpine"]).auto_remove);
        assert!(spec(&["alpine"]).cmd.is_empty());
        let cleared = spec(&["--entrypoint", "", "alpine"]);
        assert!(cleared.entrypoint.is_empty() && cleared.entrypoint_set);
        assert!(!spec(&["alpine"]).entrypoint_set);
        assert!(options(&[]).is_err());
        assert!(!options(&["--sig-proxy=false", "alpine"]).unwrap().sig_proxy);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for argv in [
            &["-m", "lots", "alpine"][..],
            &["--cpus", "-1", "alpine"],
            &["-p", "99999:80", "alpine"],
            &["-v", "rel/path:/x", "alpine"],
            &["--mount", "type=nfs,target=/x", "alpine"],
            &["--network", "overlay", "alpine"],
            &["--restart", "always:2", "alpine"],
            &["--security-opt", "seccomp=unconfined", "alpine"],
            &["-e", "=x", "alpine"],
            &["-l", "=x", "alpine"],
        ] {
            let err = options(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
        let err = options(&["--rm", "--restart", "always", "alpine"])
            .unwrap()
            .options
            .spec(&no_env)
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("conflicting options: --restart and --rm")
        );
        let err = options(&["--name", "bad name", "alpine"])
            .unwrap()
            .options
            .spec(&no_env)
            .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid container name"),
            "{err}"
        );
        let err = options(&["--env-file", "/nonexistent/env", "alpine"])
            .unwrap()
            .options
            .spec(&no_env)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read /nonexistent/env: no such file or directory"
        );
    }
}
