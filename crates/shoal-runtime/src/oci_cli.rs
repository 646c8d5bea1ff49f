//! The OCI runtime command line (`create`, `start`, `state`, `kill`, `delete`, plus `run` and
//! `exec`) as clap argument structs and [`run`], so a binary can expose `shoal runtime ...` and
//! tools that drive runc (runtime-tools validation, youki's contest) can drive us instead.
//!
//! [`run`] creates containers from the calling process: call it before any other thread starts.
#![allow(unsafe_code)]

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use nix::sys::signal::Signal;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use nix::sys::wait::waitpid;
use oci_spec::runtime::ContainerState;

use crate::container::{self, Bundle, Container, ContainerError, Stdio};
use crate::exec;

/// Where container state lives unless `--root` says otherwise.
pub const DEFAULT_ROOT: &str = "/run/shoal/runtime";

/// `shoal runtime [--root DIR] <command>`.
#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Directory holding the state of containers.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    #[command(subcommand)]
    pub command: RuntimeCommand,
}

/// The OCI verbs.
#[derive(Subcommand, Debug, Clone)]
pub enum RuntimeCommand {
    /// Create a container from a bundle; it waits for `start`.
    Create(CreateArgs),
    /// Run the created container's program.
    Start(IdArgs),
    /// Print the container's OCI state as JSON.
    State(IdArgs),
    /// Send a signal to the container's init.
    Kill(KillArgs),
    /// Remove a container.
    Delete(DeleteArgs),
    /// Create, start, wait and delete; exits with the container's status.
    Run(CreateArgs),
    /// Run another process in a running container and wait for it.
    Exec(ExecArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Bundle directory (holding config.json).
    #[arg(long, short = 'b', default_value = ".")]
    pub bundle: PathBuf,
    /// Write the init's pid here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to receive the pty master when the process has a terminal.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    pub id: String,
}

#[derive(Args, Debug, Clone)]
pub struct IdArgs {
    pub id: String,
}

#[derive(Args, Debug, Clone)]
pub struct KillArgs {
    pub id: String,
    /// Signal name (TERM, SIGKILL) or number.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

#[derive(Args, Debug, Clone)]
pub struct DeleteArgs {
    /// Kill the container first if it runs.
    #[arg(long, short = 'f')]
    pub force: bool,
    pub id: String,
}

#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// Allocate a pty.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Working directory.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Extra environment, KEY=VALUE.
    #[arg(long, short = 'e')]
    pub env: Vec<String>,
    /// uid[:gid].
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// The pty's size from the start, ROWSxCOLS (with --tty).
    #[arg(long, value_name = "ROWSxCOLS", value_parser = parse_console_size)]
    pub console_size: Option<(u16, u16)>,
    /// Stdin carries attach frames (input, resize) rather than raw input (with --tty; this is
    /// how the daemon resizes an exec's terminal).
    #[arg(long)]
    pub stdin_frames: bool,
    pub id: String,
    #[arg(trailing_var_arg = true, required = true)]
    pub args: Vec<String>,
}

fn parse_console_size(text: &str) -> Result<(u16, u16), String> {
    text.split_once('x')
        .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)))
        .ok_or_else(|| format!("{text:?} is not ROWSxCOLS"))
}

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("invalid signal {0:?}")]
    Signal(String),
    #[error("invalid user {0:?}")]
    User(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Sys(#[from] nix::errno::Errno),
}

/// Parses `TERM`, `SIGTERM`, `15`.
pub fn parse_signal(s: &str) -> Result<Signal, CliError> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| CliError::Signal(s.into()));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().map_err(|_| CliError::Signal(s.into()))
}

/// Runs one command; returns the process exit code.
pub fn run(args: RuntimeArgs) -> Result<i32, CliError> {
    let root = &args.root;
    match args.command {
        RuntimeCommand::Create(c) => {
            create(root, &c)?;
            Ok(0)
        }
        RuntimeCommand::Start(a) => {
            Container::load(root, &a.id)?.start()?;
            Ok(0)
        }
        RuntimeCommand::State(a) => {
            let state = Container::load(root, &a.id)?.state();
            let json = serde_json::to_string_pretty(&state).map_err(std::io::Error::other)?;
            println!("{json}");
            Ok(0)
        }
        RuntimeCommand::Kill(k) => {
            Container::load(root, &k.id)?.kill(parse_signal(&k.signal)?)?;
            Ok(0)
        }
        RuntimeCommand::Delete(d) => {
            match Container::load(root, &d.id) {
                Ok(c) => c.delete(d.force)?,
                // A half-created container leaves only its directory.
                Err(ContainerError::NotFound(_)) if root.join(&d.id).is_dir() => {
                    std::fs::remove_dir_all(root.join(&d.id))?;
                }
                Err(e) => return Err(e.into()),
            }
            Ok(0)
        }
        RuntimeCommand::Run(c) => {
            let mut container = create(root, &c)?;
            container.start()?;
            let status = container.wait()?;
            container.delete(true)?;
            Ok(exec::exit_code(status))
        }
        RuntimeCommand::Exec(e) => exec_cmd(root, &e),
    }
}

fn create(root: &Path, c: &CreateArgs) -> Result<Container, CliError> {
    let bundle = Bundle::load(&c.bundle)?;
    let tty = bundle
        .spec()
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let stdio = if tty {
        let pty = nix::pty::openpty(None, None)?;
        if let Some(sock) = &c.console_socket {
            send_fd(sock, pty.master.as_raw_fd())?;
        }
        Stdio::Tty { slave: pty.slave }
    } else {
        Stdio::Inherit
    };
    let container = container::create(&c.id, &bundle, root, stdio)?;
    if let Some(p) = &c.pid_file {
        std::fs::write(p, container.pid().as_raw().to_string())?;
    }
    Ok(container)
}

fn send_fd(socket: &Path, fd: i32) -> Result<(), CliError> {
    let stream = UnixStream::connect(socket)?;
    let fds = [fd];
    let iov = [std::io::IoSlice::new(b"/dev/ptmx")];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

fn exec_cmd(root: &Path, e: &ExecArgs) -> Result<i32, CliError> {
    let container = Container::load(root, &e.id)?;
    if container.status() != ContainerState::Running {
        return Err(ContainerError::InvalidState {
            id: e.id.clone(),
            status: container.status().to_string(),
        }
        .into());
    }
    let mut process = exec::process_for(&container, e.args.clone(), e.tty)?;
    if let Some(cwd) = &e.cwd {
        process.set_cwd(cwd.clone());
    }
    if !e.env.is_empty() {
        let mut env = process.env().clone().unwrap_or_default();
        for kv in &e.env {
            let key = kv.split('=').next().unwrap_or_default();
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        process.set_env(Some(env));
    }
    if let Some(u) = &e.user {
        let (uid, gid) = match u.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (u.as_str(), None),
        };
        let mut user = process.user().clone();
        user.set_uid(uid.parse().map_err(|_| CliError::User(u.clone()))?);
        user.set_gid(match gid {
            Some(g) => g.parse().map_err(|_| CliError::User(u.clone()))?,
            None => 0,
        });
        user.set_additional_gids(None);
        process.set_user(user);
    }
    if !e.tty {
        let pid = exec::exec(&container, &process, Stdio::Inherit)?;
        return Ok(exec::exit_code(waitpid(pid, None)?));
    }
    let size = e.console_size.map(|(rows, cols)| nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty = nix::pty::openpty(size.as_ref(), None)?;
    let pid = exec::exec(&container, &process, Stdio::Tty { slave: pty.slave })?;
    relay_pty(&pty.master, e.stdin_frames);
    Ok(exec::exit_code(waitpid(pid, None)?))
}

/// Copies our stdin to the pty (decoding attach frames when `frames`) and the pty to our
/// stdout until the pty closes. The master is non-blocking with a buffer in front, so a process
/// that does not read its input cannot stop its output from flowing.
fn relay_pty(master: &std::os::fd::OwnedFd, frames: bool) {
    use nix::errno::Errno;
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    use crate::shim::attach::{Frame, FrameDecoder};

    if let Ok(bits) = fcntl(master, FcntlArg::F_GETFL) {
        let _ = fcntl(
            master,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(bits) | OFlag::O_NONBLOCK),
        );
    }
    let stdin = std::io::stdin();
    let mut stdin_open = true;
    let mut decoder = FrameDecoder::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let mut master_events = PollFlags::POLLIN;
        if !pending.is_empty() {
            master_events |= PollFlags::POLLOUT;
        }
        let reading = stdin_open && pending.len() < 64 * 1024;
        let mut fds = vec![PollFd::new(master.as_fd(), master_events)];
        if reading {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
        let events: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        if events[0].intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match nix::unistd::read(master, &mut buf) {
                // EIO: every holder of the slave is gone.
                Ok(0) => return,
                Ok(n) => {
                    let mut out = std::io::stdout();
                    if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                        return;
                    }
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(_) => return,
            }
        }
        if events[0].contains(PollFlags::POLLOUT) {
            match nix::unistd::write(master, &pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(_) => pending.clear(),
            }
        }
        if events.get(1).is_some_and(|r| !r.is_empty()) {
            match nix::unistd::read(stdin.as_fd(), &mut buf) {
                Ok(0) => stdin_open = false,
                Ok(n) if !frames => pending.extend_from_slice(&buf[..n]),
                Ok(n) => {
                    decoder.push(&buf[..n]);
                    loop {
                        match decoder.next_frame() {
                            Ok(Some(Frame::Stdin(data))) => pending.extend_from_slice(&data),
                            Ok(Some(Frame::Resize { rows, cols })) => {
                                let _ = crate::shim::server::set_winsize(master, rows, cols);
                            }
                            // A terminal's input ends with the ^D typed on it, not here.
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(_) => {
                                stdin_open = false;
                                break;
                            }
                        }
                    }
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(_) => stdin_open = false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        rt: RuntimeArgs,
    }

    #[test]
    fn parses_runc_style_command_lines() {
        let c = Cli::parse_from([
            "x",
            "--root",
            "/r",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "c1",
        ]);
        assert_eq!(c.rt.root, PathBuf::from("/r"));
        match c.rt.command {
            RuntimeCommand::Create(a) => {
                assert_eq!(a.id, "c1");
                assert_eq!(a.bundle, PathBuf::from("/b"));
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::parse_from(["x", "kill", "c1", "KILL"]);
        assert_eq!(c.rt.root, PathBuf::from(DEFAULT_ROOT));
        match c.rt.command {
            RuntimeCommand::Kill(k) => {
                assert_eq!(parse_signal(&k.signal).unwrap(), Signal::SIGKILL)
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::parse_from(["x", "exec", "-t", "c1", "sh", "-c", "echo hi"]);
        match c.rt.command {
            RuntimeCommand::Exec(e) => assert_eq!(e.args, ["sh", "-c", "echo hi"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_signal("15").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert!(parse_signal("NOPE").is_err());
    }
}
