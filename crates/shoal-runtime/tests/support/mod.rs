//! Shared test fixtures: a busybox rootfs, bundles built through the public spec API, shims
//! started the way the daemon starts them, and a guard that shuts every shim down.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_runtime::shim::{LogOptions, ShimArgs, ShimOptions, SpawnedShim};
use shoal_runtime::{Bundle, ContainerConfig, ShimClient, ShimError, build_spec, spawn_shim};

pub const SHIM: &str = env!("CARGO_BIN_EXE_shoal-shim");
pub const CLI: &str = env!("CARGO_BIN_EXE_shoal-runtime");

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns early from a test that needs root, saying so.
#[macro_export]
macro_rules! require_root {
    () => {
        if !support::is_root() {
            eprintln!("skipped: this test needs root");
            return;
        }
        if !std::path::Path::new("/bin/busybox").exists() {
            eprintln!("skipped: needs /bin/busybox (apt-get install busybox-static)");
            return;
        }
    };
}

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "id", "hostname", "ls", "true", "false", "grep", "head", "tail",
    "dd", "unshare", "touch", "test", "seq", "wc", "tty", "kill", "mount", "env", "pwd", "mkdir",
    "ps", "stat", "readlink", "tr", "cut", "stty",
];

/// A rootfs of /bin/busybox plus applet links and minimal /etc files.
pub fn make_rootfs(dir: &Path) {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

/// One test's scratch space.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub state_root: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("shoal-rt-")
            .tempdir()
            .unwrap();
        let state_root = dir.path().join("state");
        Env { dir, state_root }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A bundle for `config` with its own busybox rootfs, and a cgroup nested under ours.
    pub fn bundle(&self, id: &str, mut config: ContainerConfig) -> PathBuf {
        let bdir = self.path().join(format!("bundle-{id}"));
        let rootfs = bdir.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        make_rootfs(&rootfs);
        if config.cgroups_path.is_none() {
            config.cgroups_path = Some(PathBuf::from(format!("shoal-test-{id}")));
        }
        let spec = build_spec(id, &config, &rootfs).unwrap();
        Bundle::write(&bdir, &spec, None).unwrap();
        bdir
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.path().join(format!("{id}.log"))
    }

    pub fn shim_args(&self, id: &str, bundle: &Path, tty: bool) -> ShimArgs {
        ShimArgs {
            id: id.to_string(),
            bundle: bundle.to_owned(),
            state_root: self.state_root.clone(),
            log: LogOptions {
                path: self.log_path(id),
                max_size: None,
                max_files: 1,
            },
            tty,
            open_stdin: false,
            console_size: None,
            socket: self.path().join(format!("{id}.sock")),
            exit_timeout: Duration::from_secs(60),
        }
    }

    /// Starts a shim for `config` (created, not started).
    pub fn spawn(&self, id: &str, config: ContainerConfig) -> Result<Running, ShimError> {
        let tty = config.tty;
        let bundle = self.bundle(id, config);
        self.spawn_args(self.shim_args(id, &bundle, tty))
    }

    pub fn spawn_args(&self, args: ShimArgs) -> Result<Running, ShimError> {
        // SHOAL_SHIM_BIN measures another build (say, release) of the same shim.
        let binary =
            std::env::var_os("SHOAL_SHIM_BIN").map_or_else(|| PathBuf::from(SHIM), PathBuf::from);
        let shim = spawn_shim(&ShimOptions { binary, args })?;
        Ok(Running { shim, done: false })
    }

    /// Runs `args` to completion; returns the exit record and the log's `log` fields.
    pub fn run(
        &self,
        id: &str,
        config: ContainerConfig,
    ) -> (shoal_runtime::ExitRecord, Vec<(String, String)>) {
        let mut r = self.spawn(id, config).expect("spawn shim");
        r.client().start().expect("start");
        let exit = r.client().wait().expect("wait");
        r.shutdown();
        (exit, read_log(&self.log_path(id)))
    }
}

pub fn config(args: &[&str]) -> ContainerConfig {
    ContainerConfig {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// `(stream, log)` of every line of a json-file log.
pub fn read_log(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            assert!(v["time"].as_str().unwrap().ends_with('Z'));
            (
                v["stream"].as_str().unwrap().to_string(),
                v["log"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub fn stdout_of(log: &[(String, String)]) -> String {
    log.iter()
        .filter(|(s, _)| s == "stdout")
        .map(|(_, l)| l.as_str())
        .collect()
}

pub fn stderr_of(log: &[(String, String)]) -> String {
    log.iter()
        .filter(|(s, _)| s == "stderr")
        .map(|(_, l)| l.as_str())
        .collect()
}

/// A started shim that is shut down (forcefully) when the test ends, pass or fail.
#[derive(Debug)]
pub struct Running {
    pub shim: SpawnedShim,
    done: bool,
}

impl Running {
    pub fn client(&self) -> &ShimClient {
        &self.shim.client
    }

    pub fn shutdown(&mut self) {
        if !self.done {
            self.done = true;
            self.shim.client.shutdown(true).expect("shutdown");
            wait_gone(self.shim.shim_pid);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            let _ = self.shim.client.shutdown(true);
            wait_gone(self.shim.shim_pid);
        }
    }
}

/// Waits (up to 10 s) for a process that is not our child to disappear.
pub fn wait_gone(pid: i32) {
    for _ in 0..1000 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("process {pid} did not exit");
}
