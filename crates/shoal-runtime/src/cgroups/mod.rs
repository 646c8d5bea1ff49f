//! cgroups: hierarchy detection (v1, v2, hybrid), path resolution, and the [`CgroupManager`]
//! trait with v1 and v2 implementations written through cgroupfs behind [`CgroupFs`].

pub mod devices_bpf;
mod v1;
mod v2;

use std::io;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

pub use v1::V1Manager;
pub use v2::V2Manager;

/// Always allowed: mknod of anything (using a node is what the rules gate) and the default nodes
/// every container gets (runc's `AllowedDevices`).
pub(crate) const RUNTIME_DEVICES: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

/// Errors from cgroup operations.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup hierarchy is mounted at /sys/fs/cgroup")]
    NoHierarchy,
    #[error("cgroup v2 controller {0} is not available")]
    MissingController(String),
    #[error("cgroup {0} did not freeze in time")]
    FreezeTimeout(PathBuf),
    #[error("cgroup {0} still has processes after kill")]
    NotEmpty(PathBuf),
    #[error("invalid cgroup path {0}")]
    InvalidPath(PathBuf),
    #[error("invalid device rule {0}")]
    InvalidDeviceRule(String),
}

pub(crate) fn io_err(op: &'static str, path: &Path, source: io::Error) -> CgroupError {
    CgroupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Which cgroup layout the host has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupMode {
    /// Only v1 hierarchies.
    Legacy,
    /// v1 controllers, plus a controller-less v2 tree at `/sys/fs/cgroup/unified`.
    Hybrid,
    /// Only v2.
    Unified,
}

/// Detects the layout by `statfs`, as youki and runc do.
pub fn detect() -> Result<CgroupMode, CgroupError> {
    use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, TMPFS_MAGIC, statfs};
    let root = Path::new("/sys/fs/cgroup");
    let st = statfs(root).map_err(|e| io_err("statfs", root, e.into()))?;
    if st.filesystem_type() == CGROUP2_SUPER_MAGIC {
        return Ok(CgroupMode::Unified);
    }
    if st.filesystem_type() != TMPFS_MAGIC {
        return Err(CgroupError::NoHierarchy);
    }
    let unified = root.join("unified");
    match statfs(&unified) {
        Ok(u) if u.filesystem_type() == CGROUP2_SUPER_MAGIC => Ok(CgroupMode::Hybrid),
        _ => Ok(CgroupMode::Legacy),
    }
}

/// File access to cgroupfs. The real one talks to the kernel; tests put a fake tree in a tempdir.
pub trait CgroupFs: Send + Sync {
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Writes into an existing file (cgroupfs files are never created by writing).
    fn write(&self, path: &Path, data: &str) -> io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// `rmdir`: on cgroupfs this removes a cgroup whose only entries are its control files.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// Makes `program` the cgroup v2 device filter of the cgroup at `dir`.
    fn attach_device_filter(
        &self,
        dir: &Path,
        program: &[devices_bpf::Instruction],
    ) -> io::Result<()>;
}

/// The kernel's cgroupfs.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

impl CgroupFs for RealFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn write(&self, path: &Path, data: &str) -> io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(false)
            .open(path)?;
        f.write_all(data.as_bytes())
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn attach_device_filter(
        &self,
        dir: &Path,
        program: &[devices_bpf::Instruction],
    ) -> io::Result<()> {
        devices_bpf::attach(dir, program)
    }
}

/// Where a container's cgroup lives, once resolved (persisted in the container state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupPaths {
    /// One directory per v1 hierarchy, keyed by the hierarchy's controllers (`cpu,cpuacct`,
    /// `memory`, `name=systemd`).
    V1(std::collections::BTreeMap<String, PathBuf>),
    /// The v2 directory, and the v2 mount root.
    V2 { root: PathBuf, dir: PathBuf },
}

/// Usage figures for `docker stats`-like output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub memory_usage_bytes: u64,
    /// `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    pub pids_current: u64,
    pub cpu_usage_ns: u64,
    pub oom_kills: u64,
}

/// One container's cgroup.
pub trait CgroupManager {
    /// Creates the directories (and, on v2, enables controllers on the way down).
    fn create(&self) -> Result<(), CgroupError>;
    /// Writes the resource limits.
    fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError>;
    /// Moves `pid` in (retrying the EINVAL a task in TASK_NEW gets).
    fn add_task(&self, pid: Pid) -> Result<(), CgroupError>;
    /// Freezes or thaws every task.
    fn freeze(&self, frozen: bool) -> Result<(), CgroupError>;
    fn stats(&self) -> Result<Stats, CgroupError>;
    /// How many tasks the OOM killer has killed in this cgroup.
    fn oom_kill_count(&self) -> Result<u64, CgroupError>;
    fn pids(&self) -> Result<Vec<Pid>, CgroupError>;
    /// Kills what is left, then removes the directories. Missing directories are fine.
    fn remove(&self) -> Result<(), CgroupError>;
    fn paths(&self) -> CgroupPaths;
}

/// A manager for persisted paths, over the real cgroupfs.
pub fn manager_for(paths: &CgroupPaths) -> Box<dyn CgroupManager> {
    match paths {
        CgroupPaths::V1(dirs) => Box::new(V1Manager::new(dirs.clone(), Box::new(RealFs))),
        CgroupPaths::V2 { root, dir } => {
            Box::new(V2Manager::new(root.clone(), dir.clone(), Box::new(RealFs)))
        }
    }
}

/// Resolves a spec's `cgroupsPath` on this host: absolute under each hierarchy's root, relative
/// under the calling process's own cgroup (as runc does).
pub fn resolve(cgroups_path: &Path) -> Result<CgroupPaths, CgroupError> {
    if cgroups_path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(CgroupError::InvalidPath(cgroups_path.to_owned()));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| io_err("read", Path::new("/proc/self/mountinfo"), e))?;
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| io_err("read", Path::new("/proc/self/cgroup"), e))?;
    match detect()? {
        CgroupMode::Unified => {
            let root = PathBuf::from("/sys/fs/cgroup");
            let base = if cgroups_path.is_absolute() {
                PathBuf::from("/")
            } else {
                own_cgroup(&own, "").unwrap_or_else(|| PathBuf::from("/"))
            };
            let dir = join_under(&root, &base.join(cgroups_path));
            Ok(CgroupPaths::V2 { root, dir })
        }
        CgroupMode::Legacy | CgroupMode::Hybrid => {
            let mut dirs = std::collections::BTreeMap::new();
            for h in v1_hierarchies(&mountinfo) {
                let base = if cgroups_path.is_absolute() {
                    PathBuf::from("/")
                } else {
                    let own_path = own_cgroup(&own, &h.key).unwrap_or_else(|| PathBuf::from("/"));
                    // Inside a cgroup namespace the mount root is already our cgroup.
                    own_path
                        .strip_prefix(&h.root)
                        .map(|p| Path::new("/").join(p))
                        .unwrap_or(own_path)
                };
                dirs.insert(
                    h.key.clone(),
                    join_under(&h.mountpoint, &base.join(cgroups_path)),
                );
            }
            if dirs.is_empty() {
                return Err(CgroupError::NoHierarchy);
            }
            Ok(CgroupPaths::V1(dirs))
        }
    }
}

fn join_under(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// A mounted v1 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hierarchy {
    /// Controllers, comma-joined in mount order (`cpu,cpuacct`, `name=systemd`).
    pub key: String,
    pub mountpoint: PathBuf,
    pub root: PathBuf,
}

const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "blkio",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

pub(crate) fn v1_hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if post.first() != Some(&"cgroup") || pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let controllers: Vec<&str> = post[2]
            .split(',')
            .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
            .collect();
        if controllers.is_empty() {
            continue;
        }
        let key = controllers.join(",");
        if out.iter().any(|h| h.key == key) {
            continue; // the same hierarchy mounted twice
        }
        out.push(Hierarchy {
            key,
            mountpoint: PathBuf::from(unescape(pre[4])),
            root: PathBuf::from(unescape(pre[3])),
        });
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The calling process's cgroup for hierarchy `key` (`""` is the v2 one).
pub(crate) fn own_cgroup(proc_cgroup: &str, key: &str) -> Option<PathBuf> {
    let wanted: Vec<&str> = key.split(',').filter(|s| !s.is_empty()).collect();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let have: Vec<&str> = ctrls.split(',').filter(|s| !s.is_empty()).collect();
        let same = have.len() == wanted.len() && wanted.iter().all(|w| have.contains(w));
        if same {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// Writes `pid` to a `cgroup.procs`, retrying EINVAL (a task still in TASK_NEW) 5× 30 ms.
pub(crate) fn write_procs(fs: &dyn CgroupFs, procs: &Path, pid: Pid) -> Result<(), CgroupError> {
    let mut tries = 0;
    loop {
        match fs.write(procs, &pid.as_raw().to_string()) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && tries < 5 => {
                tries += 1;
                sleep(Duration::from_millis(30));
            }
            Err(e) => return Err(io_err("write", procs, e)),
        }
    }
}

pub(crate) fn read_pids(fs: &dyn CgroupFs, procs: &Path) -> Result<Vec<Pid>, CgroupError> {
    match fs.read(procs) {
        Ok(s) => Ok(s
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .map(Pid::from_raw)
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("read", procs, e)),
    }
}

/// rmdir with a few retries: right after the last task exits the kernel can still say EBUSY.
pub(crate) fn rmdir_retry(fs: &dyn CgroupFs, dir: &Path) -> Result<(), CgroupError> {
    let mut tries = 0;
    loop {
        match fs.remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                tries += 1;
                sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io_err("rmdir", dir, e)),
        }
    }
}

/// Parses `key value` lines (`memory.events`, `cpu.stat`, `memory.oom_control`).
pub(crate) fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:6 - cgroup cgroup rw,xattr,name=systemd
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,memory
";

    #[test]
    fn parses_v1_hierarchies_and_own_cgroup() {
        let h = v1_hierarchies(MOUNTINFO);
        let keys: Vec<&str> = h.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["name=systemd", "cpu,cpuacct", "memory"]);
        assert_eq!(h[1].mountpoint, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        let own = "12:memory:/a/b\n3:cpu,cpuacct:/\n1:name=systemd:/user\n0::/x\n";
        assert_eq!(own_cgroup(own, "memory"), Some(PathBuf::from("/a/b")));
        assert_eq!(own_cgroup(own, "cpuacct,cpu"), Some(PathBuf::from("/")));
        assert_eq!(own_cgroup(own, ""), Some(PathBuf::from("/x")));
        assert_eq!(
            flat_keyed("oom_kill_disable 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
    }
}
