//! Test harness: starts real `shoal daemon` processes, each with its own data root, exec root
//! and socket, drives them through the real CLI, and kills or restarts them on demand.
//! Everything it makes lives under one temporary directory that is removed afterwards.

pub mod cluster;
pub mod fixtures;
pub mod images;
pub mod registry;
pub mod swarm;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The `shoal` binary under test: `$SHOAL_BIN`, else the one cargo built beside the test.
pub fn shoal_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SHOAL_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test> → target/<profile>/shoal
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let candidate = profile_dir.join("shoal");
    assert!(
        candidate.exists(),
        "{} is missing: build it first (cargo build -p shoal) or set SHOAL_BIN",
        candidate.display()
    );
    candidate
}

/// One daemon in its own private directory.
pub struct Daemon {
    dir: PathBuf,
    exec_root: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
    netns: Option<String>,
}

/// A network namespace the test made (loopback up), deleted on drop: a host of its own, so
/// that nothing a test does reaches the machine's real network.
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    pub fn create(prefix: &str) -> TestNetns {
        let name = format!("{prefix}-{}-{}", std::process::id(), rand_suffix());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip netns add");
        assert!(status.success(), "ip netns add {name} failed");
        let netns = TestNetns { name };
        netns.exec(&["ip", "link", "set", "lo", "up"]);
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace and returns its output.
    pub fn exec(&self, args: &[&str]) -> CliOutput {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
            .into()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos % 100_000
}

/// What a CLI invocation gave back.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Panics with both streams unless the command succeeded; returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "command failed: stdout={:?} stderr={:?}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Panics unless the command failed with exactly one line on stderr; returns that line.
    #[track_caller]
    pub fn one_line_error(&self) -> &str {
        assert_ne!(
            self.code, 0,
            "command unexpectedly succeeded: {:?}",
            self.stdout
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line of error, got {:?}",
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "a panic is not an error message: {:?}",
            self.stderr
        );
        lines[0]
    }
}

impl From<Output> for CliOutput {
    fn from(output: Output) -> Self {
        CliOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Daemon {
    /// Starts a daemon whose roots live under `dir` (created if needed) and waits until its
    /// socket answers.
    pub fn start_in(dir: &Path, extra_args: &[&str]) -> Daemon {
        std::fs::create_dir_all(dir).expect("create daemon directory");
        let mut daemon = Daemon {
            dir: dir.to_owned(),
            exec_root: dir.join("exec"),
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            netns: None,
        };
        daemon.launch();
        daemon
    }

    /// Like [`Daemon::start_in`], with the daemon running inside `netns`.
    pub fn start_in_netns(dir: &Path, netns: &TestNetns, extra_args: &[&str]) -> Daemon {
        std::fs::create_dir_all(dir).expect("create daemon directory");
        let mut daemon = Daemon {
            dir: dir.to_owned(),
            exec_root: dir.join("exec"),
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            netns: Some(netns.name().to_owned()),
        };
        daemon.launch();
        daemon
    }

    /// A daemon inside the named namespace (under `/run/netns`) with its exec root at
    /// `exec_root`: the cluster harness keeps that path short, since shim sockets live under it
    /// and a unix socket path holds at most 107 bytes.
    pub(crate) fn start_in_named_netns(
        dir: &Path,
        exec_root: &Path,
        netns: &str,
        extra_args: &[String],
    ) -> Daemon {
        std::fs::create_dir_all(dir).expect("create daemon directory");
        let mut daemon = Daemon {
            dir: dir.to_owned(),
            exec_root: exec_root.to_owned(),
            child: None,
            extra_args: extra_args.to_vec(),
            netns: Some(netns.to_owned()),
        };
        daemon.launch();
        daemon
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_root(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn exec_root(&self) -> &Path {
        &self.exec_root
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("shoal.sock")
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// The daemon's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The command that starts this daemon, for tests that expect it to refuse to start.
    pub fn daemon_command(&self) -> Command {
        let mut command = match &self.netns {
            // Not `ip netns exec`: it also remounts /sys, hiding the cgroup hierarchies.
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--net=/run/netns/{netns}"))
                    .arg("--")
                    .arg(shoal_binary());
                command
            }
            None => Command::new(shoal_binary()),
        };
        command
            .arg("daemon")
            .arg("--data-root")
            .arg(self.data_root())
            .arg("--exec-root")
            .arg(&self.exec_root)
            .arg("-H")
            .arg(self.host())
            .arg("--log-level")
            .arg("debug")
            .args(&self.extra_args);
        command
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open daemon log");
        let child = self
            .daemon_command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn shoal daemon");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30));
    }

    fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "daemon exited during start ({status}); log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready after {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `shoal -H <this daemon> ARGS…`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_with_stdin(args, None)
    }

    /// Runs the CLI with `stdin` fed to it.
    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> CliOutput {
        run_cli(&self.host(), args, stdin)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash or power loss would stop it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon ignored SIGTERM for 20 s; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon again on the same roots.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// Starts it again after a stop (no kill).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "daemon is still running");
        self.launch();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the CLI against `host` with an optional stdin.
pub fn run_cli(host: &str, args: &[&str], stdin: Option<&[u8]>) -> CliOutput {
    use std::io::Write;
    let mut child = Command::new(shoal_binary())
        .arg("-H")
        .arg(host)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal CLI");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(bytes).expect("write CLI stdin");
    }
    child.wait_with_output().expect("wait for shoal CLI").into()
}
