//! `commands/registry.rs`: `shoal login` and `shoal logout`. Login has the daemon check the
//! credentials (so its `--insecure-registry` list applies), then keeps them in the client's
//! credentials file; logout forgets them. Docker's flags, prompts and messages.

use std::io::{BufRead, Read};

use shoal_api::v1;

use crate::credentials::{ConfigFile, Credentials, DOCKER_HUB_KEY, config_path, server_key};
use crate::daemon::Daemon;
use crate::error::io_reason;
use crate::stdio::Stdio;
use crate::{CliError, GlobalArgs};

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Username
    #[arg(short, long, value_name = "USER")]
    username: Option<String>,
    /// Password (visible to other users of this machine: prefer --password-stdin)
    #[arg(short, long, value_name = "PASS", conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Take the password from stdin
    #[arg(long)]
    password_stdin: bool,
    /// The registry: HOST[:PORT] (Docker Hub if omitted)
    #[arg(value_name = "SERVER")]
    server: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The registry: HOST[:PORT] (Docker Hub if omitted)
    #[arg(value_name = "SERVER")]
    server: Option<String>,
}

fn read_failed(err: &std::io::Error) -> CliError {
    CliError::ReadInput {
        path: "standard input".to_owned(),
        reason: io_reason(err).to_lowercase(),
    }
}

/// One line from the terminal, with the echo off while it is typed.
fn prompt_secret(prompt: &str, io: &mut Stdio<'_>) -> Result<String, CliError> {
    use nix::sys::termios::{self, LocalFlags, SetArg};
    write!(io.out, "{prompt}")?;
    io.out.flush()?;
    let stdin = std::io::stdin();
    let saved = termios::tcgetattr(&stdin).map_err(|e| read_failed(&e.into()))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    termios::tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(|e| read_failed(&e.into()))?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = termios::tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    writeln!(io.out)?;
    read.map_err(|e| read_failed(&e))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn prompt_line(prompt: &str, io: &mut Stdio<'_>) -> Result<String, CliError> {
    write!(io.out, "{prompt}")?;
    io.out.flush()?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| read_failed(&e))?;
    Ok(line.trim().to_owned())
}

pub(crate) async fn login(
    global: &GlobalArgs,
    args: LoginArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let server = args
        .server
        .clone()
        .unwrap_or_else(|| DOCKER_HUB_KEY.to_owned());
    let interactive = io.stdin_tty && io.input.is_process();
    if args.password.is_some() {
        writeln!(
            io.err,
            "WARNING! Using --password via the CLI is insecure. Use --password-stdin."
        )?;
    }
    let password_from_stdin = if args.password_stdin {
        if args.username.is_none() {
            return Err(CliError::usage(
                "must provide --username with --password-stdin",
            ));
        }
        let mut text = String::new();
        io.input
            .take_reader()
            .read_to_string(&mut text)
            .map_err(|e| read_failed(&e))?;
        Some(text.trim_end_matches(['\r', '\n']).to_owned())
    } else {
        None
    };
    let username = match args.username.clone() {
        Some(u) => u,
        None if interactive => prompt_line("Username: ", io)?,
        None => {
            return Err(CliError::usage(
                "cannot perform an interactive login from a non TTY device: use -u and --password-stdin",
            ));
        }
    };
    let password = match (password_from_stdin, args.password.clone()) {
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) if interactive => prompt_secret("Password: ", io)?,
        (None, None) => {
            return Err(CliError::usage(
                "cannot perform an interactive login from a non TTY device: use --password-stdin",
            ));
        }
    };
    if username.is_empty() {
        return Err(CliError::usage("username is empty"));
    }
    if password.is_empty() {
        return Err(CliError::usage("password is empty"));
    }
    // Read before asking the daemon, so a broken file fails without a network round trip.
    let path = config_path()?;
    let mut file = ConfigFile::load(&path)?;
    let mut daemon = Daemon::connect(&global.host).await?;
    let answer = daemon
        .registry_login(v1::RegistryLoginRequest {
            server: server.clone(),
            username: username.clone(),
            password: password.clone(),
        })
        .await?;
    file.set(&server, &Credentials { username, password });
    file.save()?;
    writeln!(
        io.err,
        "WARNING! Your password will be stored unencrypted in {}.",
        path.display()
    )?;
    writeln!(io.out, "{}", answer.status)?;
    Ok(0)
}

pub(crate) async fn logout(args: LogoutArgs, io: &mut Stdio<'_>) -> Result<u8, CliError> {
    let server = args
        .server
        .clone()
        .unwrap_or_else(|| DOCKER_HUB_KEY.to_owned());
    let path = config_path()?;
    let mut file = ConfigFile::load(&path)?;
    if !file.remove(&server) {
        writeln!(io.out, "Not logged in to {server}")?;
        return Ok(0);
    }
    writeln!(
        io.out,
        "Removing login credentials for {}",
        server_key(&server)
    )?;
    file.save()?;
    Ok(0)
}
