//! Containers from OCI bundles: [`Bundle`] loading and writing, [`create`] (cgroup first, then the
//! init cloned into its namespaces and parked on the exec fifo), and the [`Container`] handle
//! (start, kill, state, delete) whose record lives in `<state_root>/<id>/state.json` so that any
//! process can pick the container up again with [`Container::load`].

pub(crate) mod init;
mod overlay;
mod rootfs;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, mkfifo, pipe2};
use oci_spec::runtime::{ContainerState, LinuxNamespaceType, Spec, State, StateBuilder};
use serde::{Deserialize, Serialize};

use crate::cgroups::{self, CgroupError, CgroupManager, CgroupPaths};
use crate::seccomp::{self, SeccompError};

pub use overlay::{OverlayRootfs, mount_overlay_rootfs, unmount_overlay_rootfs};

/// The file, inside a bundle, that asks `create` to mount an overlay rootfs.
pub const OVERLAY_FILE: &str = "shoal-overlay.json";

/// Errors creating or driving a container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid container id {0:?}: use letters, digits, '_', '-' and '.'")]
    InvalidId(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {id} is {status}")]
    InvalidState { id: String, status: String },
    #[error("invalid bundle: {0}")]
    Bundle(String),
    #[error("invalid bundle config: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: Errno,
    },
    /// A message from the container's init (or exec) process, e.g.
    /// `exec: "nosuch": executable file not found in $PATH`.
    #[error("{0}")]
    Init(String),
    #[error("overlay rootfs: {0}")]
    Overlay(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

impl ContainerError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        ContainerError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
    pub(crate) fn sys(op: &'static str, source: Errno) -> Self {
        ContainerError::Sys { op, source }
    }
}

/// An OCI bundle: `config.json` plus a root filesystem.
#[derive(Clone, Debug)]
pub struct Bundle {
    dir: PathBuf,
    spec: Spec,
    rootfs: PathBuf,
    overlay: Option<OverlayRootfs>,
}

impl Bundle {
    /// Reads `dir/config.json` (and `dir/shoal-overlay.json` when present).
    pub fn load(dir: &Path) -> Result<Bundle, ContainerError> {
        let dir =
            std::fs::canonicalize(dir).map_err(|e| ContainerError::io("open bundle", dir, e))?;
        let config = dir.join("config.json");
        let spec = Spec::load(&config)?;
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| ContainerError::Bundle("config.json has no root".into()))?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            dir.join(root.path())
        };
        let overlay_file = dir.join(OVERLAY_FILE);
        let overlay =
            match std::fs::read(&overlay_file) {
                Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                    ContainerError::Bundle(format!("{}: {e}", overlay_file.display()))
                })?),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(ContainerError::io("read", &overlay_file, e)),
            };
        Ok(Bundle {
            dir,
            spec,
            rootfs,
            overlay,
        })
    }

    /// Writes a bundle: `config.json`, the `rootfs` directory, and, for an overlay rootfs, the
    /// layer list that `create` mounts (and `delete` unmounts).
    pub fn write(
        dir: &Path,
        spec: &Spec,
        overlay: Option<&OverlayRootfs>,
    ) -> Result<Bundle, ContainerError> {
        std::fs::create_dir_all(dir).map_err(|e| ContainerError::io("mkdir", dir, e))?;
        let root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| PathBuf::from("rootfs"));
        let rootfs = if root.is_absolute() {
            root
        } else {
            dir.join(root)
        };
        std::fs::create_dir_all(&rootfs).map_err(|e| ContainerError::io("mkdir", &rootfs, e))?;
        spec.save(dir.join("config.json"))?;
        let overlay_file = dir.join(OVERLAY_FILE);
        match overlay {
            Some(o) => {
                let json = serde_json::to_vec_pretty(o)
                    .map_err(|e| ContainerError::Bundle(e.to_string()))?;
                std::fs::write(&overlay_file, json)
                    .map_err(|e| ContainerError::io("write", &overlay_file, e))?;
            }
            None => {
                let _ = std::fs::remove_file(&overlay_file);
            }
        }
        Bundle::load(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn spec(&self) -> &Spec {
        &self.spec
    }
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }
    pub fn overlay(&self) -> Option<&OverlayRootfs> {
        self.overlay.as_ref()
    }
}

/// The container's standard streams.
#[derive(Debug)]
pub enum Stdio {
    /// The caller's own 0, 1 and 2 (the OCI command line).
    Inherit,
    /// Descriptors that become the container's 0, 1 and 2.
    Fds {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A pty slave that becomes the controlling terminal and all three streams.
    Tty { slave: OwnedFd },
}

/// What `state.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pid: i32,
    /// `/proc/<pid>/stat` start time, so a recycled pid is not mistaken for the container.
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub annotations: HashMap<String, String>,
    pub cgroup: CgroupPaths,
    /// `create` mounted the rootfs (an overlay) and `delete` unmounts it.
    pub rootfs_mounted: bool,
}

/// A created container.
#[derive(Debug)]
pub struct Container {
    record: ContainerRecord,
    state_dir: PathBuf,
    /// The report pipe, kept by the creating process to learn whether `execve` worked.
    report: Option<File>,
    /// This process is the init's parent (and so the one to reap it).
    is_parent: bool,
}

fn validate_id(id: &str) -> Result<(), ContainerError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::InvalidId(id.to_string()))
    }
}

/// Undoes a half-done `create`.
struct CreateGuard {
    state_dir: PathBuf,
    cgroup: Option<CgroupPaths>,
    overlay: Option<PathBuf>,
    child: Option<Pid>,
    armed: bool,
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.child {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        if let Some(paths) = &self.cgroup
            && let Err(e) = cgroups::manager_for(paths).remove()
        {
            tracing::warn!(error = %e, "removing cgroup after failed create");
        }
        if let Some(target) = &self.overlay {
            let _ = unmount_overlay_rootfs(target);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn namespace_flag(t: LinuxNamespaceType) -> Option<CloneFlags> {
    Some(match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Time => return None,
    })
}

/// Reads one `\n`-terminated line from the report pipe; `None` at EOF.
fn read_report_line(f: &mut File) -> Result<Option<String>, ContainerError> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match f.read(&mut b) {
            Ok(0) => {
                return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()));
            }
            Ok(_) if b[0] == b'\n' => return Ok(Some(String::from_utf8_lossy(&line).into_owned())),
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ContainerError::io("read", Path::new("report pipe"), e)),
        }
    }
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        other => format!("{other:?}"),
    }
}

/// Creates container `id` from `bundle`: its cgroup, its namespaces and its init, which waits for
/// [`Container::start`] before it runs the user's program.
///
/// Must be called from a single-threaded process (the shim or the `shoal runtime` command): the
/// init is cloned from this process and runs Rust code before `execve`.
pub fn create(
    id: &str,
    bundle: &Bundle,
    state_root: &Path,
    stdio: Stdio,
) -> Result<Container, ContainerError> {
    validate_id(id)?;
    std::fs::create_dir_all(state_root).map_err(|e| ContainerError::io("mkdir", state_root, e))?;
    let state_dir = state_root.join(id);
    match std::fs::create_dir(&state_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(ContainerError::Exists(id.to_string()));
        }
        Err(e) => return Err(ContainerError::io("mkdir", &state_dir, e)),
    }
    let mut guard = CreateGuard {
        state_dir: state_dir.clone(),
        cgroup: None,
        overlay: None,
        child: None,
        armed: true,
    };
    let spec = bundle.spec();
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| ContainerError::Bundle("config.json has no linux section".into()))?;
    if spec.process().is_none() {
        return Err(ContainerError::Bundle("config.json has no process".into()));
    }

    if let Some(o) = bundle.overlay() {
        mount_overlay_rootfs(&o.lower, &o.upper, &o.work, bundle.rootfs())?;
        guard.overlay = Some(bundle.rootfs().to_owned());
    }
    if !bundle.rootfs().is_dir() {
        return Err(ContainerError::Bundle(format!(
            "rootfs {} is not a directory",
            bundle.rootfs().display()
        )));
    }

    let fifo_path = state_dir.join("exec.fifo");
    mkfifo(&fifo_path, Mode::from_bits_truncate(0o622))
        .map_err(|e| ContainerError::sys("mkfifo", e))?;
    // mkfifo honours the umask; the init may run as any user (or a remapped root) and must be
    // able to open it for writing.
    std::fs::set_permissions(
        &fifo_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o622),
    )
    .map_err(|e| ContainerError::io("chmod", &fifo_path, e))?;
    let fifo = open(&fifo_path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| ContainerError::sys("open exec fifo", e))?;

    // The cgroup exists, with its limits, before any process of the container does.
    let cg_path = linux
        .cgroups_path()
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/shoal/{id}")));
    let cg_paths = cgroups::resolve(&cg_path)?;
    let cg = cgroups::manager_for(&cg_paths);
    cg.create()?;
    guard.cgroup = Some(cg_paths.clone());
    if let Some(r) = linux.resources() {
        cg.apply(r)?;
    }

    let mut flags = CloneFlags::empty();
    let mut join: Vec<(CloneFlags, OwnedFd)> = Vec::new();
    for ns in linux.namespaces().as_deref().unwrap_or_default() {
        let Some(flag) = namespace_flag(ns.typ()) else {
            tracing::debug!(ns = ?ns.typ(), "namespace type not supported, skipped");
            continue;
        };
        match ns.path() {
            None => flags |= flag,
            Some(p) => {
                if flag == CloneFlags::CLONE_NEWPID || flag == CloneFlags::CLONE_NEWUSER {
                    return Err(ContainerError::Unsupported(format!(
                        "joining an existing {:?} namespace",
                        ns.typ()
                    )));
                }
                let f = File::open(p).map_err(|e| ContainerError::io("open namespace", p, e))?;
                join.push((flag, f.into()));
            }
        }
    }
    let filters = linux.seccomp().as_ref().map(seccomp::compile).transpose()?;

    let (go_r, go_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| ContainerError::sys("pipe", e))?;
    let (rep_r, rep_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| ContainerError::sys("pipe", e))?;

    let console = match &stdio {
        Stdio::Tty { slave } => Some(
            std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))
                .map_err(|e| ContainerError::io("readlink", Path::new("pty slave"), e))?,
        ),
        _ => None,
    };
    let child_stdio = match &stdio {
        Stdio::Inherit => init::ChildStdio::Inherit,
        Stdio::Fds {
            stdin,
            stdout,
            stderr,
        } => init::ChildStdio::Fds([stdin.as_fd(), stdout.as_fd(), stderr.as_fd()]),
        Stdio::Tty { slave } => init::ChildStdio::Tty(slave.as_fd()),
    };
    let plan = init::InitPlan {
        spec,
        rootfs: bundle.rootfs(),
        stdio: child_stdio,
        go: go_r.as_raw_fd(),
        report: rep_w.as_raw_fd(),
        fifo: fifo.as_raw_fd(),
        cgroup: &cg_paths,
        filters: filters.as_ref(),
        join: &join,
        flags,
        console: console.as_deref(),
    };
    let pid = init::spawn(&plan).map_err(|e| ContainerError::sys("clone", e))?;
    guard.child = Some(pid);
    drop((go_r, rep_w, fifo, join, stdio));
    tracing::debug!(id, pid = pid.as_raw(), "container init cloned");

    if flags.contains(CloneFlags::CLONE_NEWUSER) {
        write_id_maps(pid, spec)?;
    }
    cg.add_task(pid)?;
    nix::unistd::write(&go_w, b"1").map_err(|e| ContainerError::sys("signal init", e))?;
    drop(go_w);

    let mut report = File::from(rep_r);
    match read_report_line(&mut report)? {
        Some(l) if l == "ready" => {}
        Some(l) => {
            let msg = l.strip_prefix("error ").unwrap_or(&l).to_string();
            return Err(ContainerError::Init(msg));
        }
        None => {
            let status = waitpid(pid, None).map_err(|e| ContainerError::sys("waitpid", e))?;
            guard.child = None;
            return Err(ContainerError::Init(format!(
                "container init {} before it was ready",
                describe(status)
            )));
        }
    }

    let record = ContainerRecord {
        id: id.to_string(),
        pid: pid.as_raw(),
        pid_start: proc_start_time(pid).unwrap_or(0),
        bundle: bundle.dir().to_owned(),
        rootfs: bundle.rootfs().to_owned(),
        created: crate::timefmt::now(),
        annotations: spec.annotations().clone().unwrap_or_default(),
        cgroup: cg_paths,
        rootfs_mounted: bundle.overlay().is_some(),
    };
    write_record(&state_dir, &record)?;
    guard.armed = false;
    tracing::info!(id, pid = pid.as_raw(), "container created");
    Ok(Container {
        record,
        state_dir,
        report: Some(report),
        is_parent: true,
    })
}

fn write_id_maps(pid: Pid, spec: &Spec) -> Result<(), ContainerError> {
    let linux = spec.linux().as_ref();
    let fmt = |maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| -> String {
        maps.map(|m| {
            m.iter()
                .map(|e| format!("{} {} {}\n", e.container_id(), e.host_id(), e.size()))
                .collect()
        })
        .unwrap_or_default()
    };
    for (file, maps) in [
        ("uid_map", linux.and_then(|l| l.uid_mappings().as_ref())),
        ("gid_map", linux.and_then(|l| l.gid_mappings().as_ref())),
    ] {
        let text = fmt(maps);
        if text.is_empty() {
            return Err(ContainerError::Bundle(format!(
                "a user namespace needs {file} entries"
            )));
        }
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&path, text).map_err(|e| ContainerError::io("write", &path, e))?;
    }
    Ok(())
}

fn write_record(state_dir: &Path, record: &ContainerRecord) -> Result<(), ContainerError> {
    let tmp = state_dir.join("state.json.tmp");
    let json =
        serde_json::to_vec_pretty(record).map_err(|e| ContainerError::Bundle(e.to_string()))?;
    std::fs::write(&tmp, json).map_err(|e| ContainerError::io("write", &tmp, e))?;
    let dst = state_dir.join("state.json");
    std::fs::rename(&tmp, &dst).map_err(|e| ContainerError::io("rename", &dst, e))
}

/// Field 22 of `/proc/<pid>/stat`, and the state letter (field 3).
fn proc_stat(pid: Pid) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn proc_start_time(pid: Pid) -> Option<u64> {
    proc_stat(pid).map(|(_, s)| s)
}

impl Container {
    /// Loads a container another process created.
    pub fn load(state_root: &Path, id: &str) -> Result<Container, ContainerError> {
        validate_id(id)?;
        let state_dir = state_root.join(id);
        let path = state_dir.join("state.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ContainerError::NotFound(id.to_string()));
            }
            Err(e) => return Err(ContainerError::io("read", &path, e)),
        };
        let record: ContainerRecord = serde_json::from_slice(&bytes)
            .map_err(|e| ContainerError::Bundle(format!("{}: {e}", path.display())))?;
        Ok(Container {
            record,
            state_dir,
            report: None,
            is_parent: false,
        })
    }

    pub fn id(&self) -> &str {
        &self.record.id
    }
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.record.pid)
    }
    pub fn bundle(&self) -> &Path {
        &self.record.bundle
    }
    pub fn record(&self) -> &ContainerRecord {
        &self.record
    }
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The container's cgroup.
    pub fn cgroup(&self) -> Box<dyn CgroupManager> {
        cgroups::manager_for(&self.record.cgroup)
    }

    /// Whether the init process is still ours: alive (not a zombie) with the recorded start time.
    fn alive(&self) -> bool {
        match proc_stat(self.pid()) {
            Some((state, start)) => {
                state != 'Z'
                    && state != 'X'
                    && (self.record.pid_start == 0 || start == self.record.pid_start)
            }
            None => false,
        }
    }

    /// created (parked on the fifo), running, or stopped.
    pub fn status(&self) -> ContainerState {
        if !self.alive() {
            ContainerState::Stopped
        } else if self.state_dir.join("exec.fifo").exists() {
            ContainerState::Created
        } else {
            ContainerState::Running
        }
    }

    /// The OCI state document.
    pub fn state(&self) -> State {
        let status = self.status();
        let mut b = StateBuilder::default()
            .version("1.0.2")
            .id(self.record.id.clone())
            .status(status)
            .bundle(self.record.bundle.clone())
            .annotations(self.record.annotations.clone());
        if status != ContainerState::Stopped {
            b = b.pid(self.record.pid);
        }
        b.build().expect("every state field is set")
    }

    fn invalid(&self, status: ContainerState) -> ContainerError {
        ContainerError::InvalidState {
            id: self.record.id.clone(),
            status: status.to_string(),
        }
    }

    /// Lets the init `execve` the user's program. In the creating process this also waits for the
    /// `execve` and reports its failure.
    pub fn start(&mut self) -> Result<(), ContainerError> {
        let status = self.status();
        if status != ContainerState::Created {
            return Err(self.invalid(status));
        }
        let fifo = self.state_dir.join("exec.fifo");
        let fd = open(
            &fifo,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ContainerError::sys("open exec fifo", e))?;
        let mut buf = [0u8; 1];
        loop {
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(50u16)) {
                Ok(0) | Err(Errno::EINTR) => {}
                Ok(_) => match nix::unistd::read(&fd, &mut buf) {
                    Ok(1) => break,
                    Ok(_) | Err(Errno::EAGAIN) => {}
                    Err(e) => return Err(ContainerError::sys("read exec fifo", e)),
                },
                Err(e) => return Err(ContainerError::sys("poll exec fifo", e)),
            }
            if !self.alive() {
                return Err(ContainerError::Init(
                    self.init_error()
                        .unwrap_or_else(|| "container init exited before start".into()),
                ));
            }
        }
        let _ = std::fs::remove_file(&fifo);
        if let Some(mut report) = self.report.take()
            && let Some(line) = read_report_line(&mut report)?
        {
            let msg = line.strip_prefix("error ").unwrap_or(&line).to_string();
            return Err(ContainerError::Init(msg));
        }
        tracing::info!(id = %self.record.id, "container started");
        Ok(())
    }

    /// Why the init died before `execve`, when this process created it and the init said so.
    /// Call it only once the init has exited (it reads the report pipe to its end).
    pub fn init_error(&mut self) -> Option<String> {
        let mut report = self.report.take()?;
        let line = read_report_line(&mut report).ok().flatten()?;
        Some(line.strip_prefix("error ").unwrap_or(&line).to_string())
    }

    /// Sends `signal` to the init process.
    pub fn kill(&self, signal: Signal) -> Result<(), ContainerError> {
        if !self.alive() {
            return Err(self.invalid(ContainerState::Stopped));
        }
        kill(self.pid(), signal).map_err(|e| ContainerError::sys("kill", e))
    }

    /// Freezes every process of the container.
    pub fn pause(&self) -> Result<(), ContainerError> {
        Ok(self.cgroup().freeze(true)?)
    }

    /// Thaws a paused container.
    pub fn resume(&self) -> Result<(), ContainerError> {
        Ok(self.cgroup().freeze(false)?)
    }

    /// Waits for the init to exit. Only the creating process (its parent) can do this.
    pub fn wait(&self) -> Result<WaitStatus, ContainerError> {
        if !self.is_parent {
            return Err(ContainerError::Unsupported(
                "waiting on a container this process did not create".into(),
            ));
        }
        loop {
            match waitpid(self.pid(), None) {
                Err(Errno::EINTR) => continue,
                r => return r.map_err(|e| ContainerError::sys("waitpid", e)),
            }
        }
    }

    /// Kills what runs (a running container only with `force`), removes the cgroup, unmounts an
    /// overlay rootfs `create` mounted, and removes the state directory.
    pub fn delete(self, force: bool) -> Result<(), ContainerError> {
        let status = self.status();
        if status == ContainerState::Running && !force {
            return Err(self.invalid(status));
        }
        if status != ContainerState::Stopped {
            let _ = kill(self.pid(), Signal::SIGKILL);
            self.wait_gone(Duration::from_secs(10));
        }
        self.cgroup().remove()?;
        if self.record.rootfs_mounted {
            unmount_overlay_rootfs(&self.record.rootfs)?;
        }
        match std::fs::remove_dir_all(&self.state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ContainerError::io("remove", &self.state_dir, e)),
        }
        tracing::info!(id = %self.record.id, "container deleted");
        Ok(())
    }

    fn wait_gone(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.is_parent {
                match waitpid(self.pid(), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {}
                    _ => return,
                }
            } else if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
