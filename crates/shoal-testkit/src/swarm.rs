//! Helpers the swarm end-to-end tests share: bounded waits and CLI calls, and forming a swarm
//! of loopback daemons (`127.0.0.N:2377`) by `swarm init` and `swarm join`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{CliOutput, Daemon};

/// Polls `probe` every 100 ms until it gives a value, and panics naming `what` after `limit`.
#[track_caller]
pub fn wait_for<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the CLI against `host` (a `-H` value) with `stdin`, killing it after `limit`: a hung
/// CLI must fail the test rather than stall it. Returns the output and how long it took.
pub fn cli_within(
    host: &str,
    args: &[&str],
    stdin: &[u8],
    limit: Duration,
) -> (CliOutput, Duration) {
    let started = Instant::now();
    let mut child = Command::new(crate::shoal_binary())
        .arg("-H")
        .arg(host)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal CLI");
    {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let _ = pipe.write_all(stdin);
    }
    // The outputs here are a few lines: they fit the pipes, so polling cannot deadlock.
    while child.try_wait().expect("poll shoal CLI").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output: CliOutput = child.wait_with_output().expect("wait for shoal CLI").into();
    (output, started.elapsed())
}

/// A daemon in `dir/name` without the default bridge (nothing touches the machine's network).
pub fn start(dir: &Path, name: &str) -> Daemon {
    Daemon::start_in(&dir.join(name), &["--bridge", "none"])
}

/// The cluster address of loopback host `n`: `127.0.0.n:2377`.
pub fn addr(n: u8) -> String {
    format!("127.0.0.{n}:2377")
}

/// `swarm init` on `daemon`, advertising and listening on [`addr`]`(n)`.
pub fn init(daemon: &Daemon, n: u8) {
    daemon
        .cli(&[
            "swarm",
            "init",
            "--advertise-addr",
            &addr(n),
            "--listen-addr",
            &addr(n),
        ])
        .ok();
}

/// The join token for `role` (`worker` or `manager`), from a manager.
pub fn token(manager: &Daemon, role: &str) -> String {
    manager
        .cli(&["swarm", "join-token", "-q", role])
        .ok()
        .trim()
        .to_owned()
}

/// `swarm join` of `daemon` at [`addr`]`(n)` through the manager at [`addr`]`(via)`.
pub fn join(daemon: &Daemon, token: &str, n: u8, via: u8) -> CliOutput {
    daemon.cli(&[
        "swarm",
        "join",
        "--token",
        token,
        "--advertise-addr",
        &addr(n),
        "--listen-addr",
        &addr(n),
        &addr(via),
    ])
}
