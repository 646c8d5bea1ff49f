//! `commands/autolock.rs`: `shoal swarm unlock` and `shoal swarm unlock-key`, and the unlock-key
//! notice `swarm init --autolock` and `swarm update --autolock=true` print — Docker's words.

use std::io::{BufRead, Read};

use shoal_api::v1::LocalNodeState;

use super::Out;
use crate::daemon::Daemon;
use crate::error::io_reason;
use crate::stdio::Stdio;
use crate::{CliError, GlobalArgs};

#[derive(Debug, clap::Args)]
pub struct UnlockArgs {}

#[derive(Debug, clap::Args)]
pub struct UnlockKeyArgs {
    /// Only display the key
    #[arg(short, long)]
    quiet: bool,
    /// Rotate the unlock key
    #[arg(long)]
    rotate: bool,
}

/// What to do with the key, blank lines included, as Docker prints it.
pub(crate) fn unlock_notice(key: &str) -> String {
    format!(
        "To unlock a swarm manager after it restarts, run the `shoal swarm unlock`\n\
         command and provide the following key:\n\n    {key}\n\n\
         Remember to store this key in a password manager, since without it you\n\
         will not be able to restart the manager.\n"
    )
}

fn read_failed(err: &std::io::Error) -> CliError {
    CliError::ReadInput {
        path: "standard input".to_owned(),
        reason: io_reason(err).to_lowercase(),
    }
}

/// One line typed at the terminal with the echo off.
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
    Ok(line)
}

/// Refuses, with what to do, on a host that has no manager to unlock or to ask.
fn require_locked(info: &shoal_api::v1::InfoResponse) -> Result<(), CliError> {
    match info.state() {
        LocalNodeState::Locked => Ok(()),
        LocalNodeState::Inactive => Err(CliError::usage("this node is not part of a swarm")),
        _ => Err(CliError::usage("this node is not locked")),
    }
}

/// `swarm unlock`: the key from the terminal (not echoed), or from standard input.
pub(crate) async fn unlock(
    global: &GlobalArgs,
    _args: UnlockArgs,
    io: &mut Stdio<'_>,
) -> Result<(), CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    // Asked first, so nobody types a key into a node that has nothing to unlock.
    require_locked(&daemon.info().await?)?;
    let key = if io.stdin_tty && io.input.is_process() {
        prompt_secret("Enter unlock key: ", io)?
    } else {
        let mut text = String::new();
        // A key is one short line: more than a little text is not one.
        io.input
            .take_reader()
            .take(4096)
            .read_to_string(&mut text)
            .map_err(|e| read_failed(&e))?;
        text
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(CliError::usage(
            "no unlock key given: type it at the prompt, or pipe it to standard input",
        ));
    }
    daemon.unlock(key).await
}

/// `swarm unlock-key [-q] [--rotate]`.
pub(crate) async fn unlock_key(
    global: &GlobalArgs,
    args: UnlockKeyArgs,
    out: Out<'_>,
) -> Result<(), CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let info = daemon.info().await?;
    super::swarm::require_manager(&info)?;
    let key = if args.rotate {
        let key = daemon.rotate_unlock_key().await?;
        if !args.quiet {
            write!(out, "Successfully rotated manager unlock key.\n\n")?;
        }
        key
    } else {
        daemon.get_unlock_key().await?
    };
    if args.quiet {
        writeln!(out, "{key}")?;
    } else {
        write!(out, "{}", unlock_notice(&key))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_names_the_command_and_the_key() {
        let text = unlock_notice("SHLKEY-1-abc");
        assert!(text.contains("`shoal swarm unlock`"), "{text}");
        assert!(text.contains("\n\n    SHLKEY-1-abc\n\n"), "{text}");
        assert!(text.ends_with("restart the manager.\n"), "{text}");
    }

    #[test]
    fn only_a_locked_node_is_unlocked() {
        let mut info = shoal_api::v1::InfoResponse::default();
        let err = require_locked(&info).unwrap_err().to_string();
        assert!(err.contains("not part of a swarm"), "{err}");
        info.set_state(LocalNodeState::Active);
        let err = require_locked(&info).unwrap_err().to_string();
        assert_eq!(err, "this node is not locked");
        info.set_state(LocalNodeState::Locked);
        require_locked(&info).unwrap();
    }
}
