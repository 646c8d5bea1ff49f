//! cgroup v1: one directory per mounted hierarchy, limits written to each controller's files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};

use super::{
    CgroupError, CgroupFs, CgroupManager, CgroupPaths, RUNTIME_DEVICES, Stats, flat_keyed, io_err,
    read_pids, rmdir_retry, write_procs,
};

/// A container cgroup on v1 hierarchies.
pub struct V1Manager {
    dirs: BTreeMap<String, PathBuf>,
    fs: Box<dyn CgroupFs>,
}

impl V1Manager {
    pub fn new(dirs: BTreeMap<String, PathBuf>, fs: Box<dyn CgroupFs>) -> Self {
        V1Manager { dirs, fs }
    }

    /// The directory of the hierarchy holding `controller`, if mounted.
    pub fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(k, _)| k.split(',').any(|c| c == controller))
            .map(|(_, d)| d.as_path())
    }

    fn write(&self, controller: &str, file: &str, value: &str) -> Result<(), CgroupError> {
        let Some(dir) = self.dir(controller) else {
            tracing::warn!(
                controller,
                file,
                "cgroup v1 controller not mounted, limit ignored"
            );
            return Ok(());
        };
        let path = dir.join(file);
        self.fs
            .write(&path, value)
            .map_err(|e| io_err("write", &path, e))
    }

    fn read(&self, controller: &str, file: &str) -> Result<String, CgroupError> {
        let dir = self
            .dir(controller)
            .ok_or_else(|| CgroupError::MissingController(controller.to_string()))?;
        let path = dir.join(file);
        self.fs.read(&path).map_err(|e| io_err("read", &path, e))
    }

    fn has_file(&self, controller: &str, file: &str) -> bool {
        self.dir(controller)
            .is_some_and(|d| self.fs.exists(&d.join(file)))
    }

    /// cpuset starts empty in a new v1 cgroup and refuses tasks until filled: copy the parent's.
    fn init_cpuset(&self, dir: &Path) -> Result<(), CgroupError> {
        let mut chain = Vec::new();
        let mut cur = dir.to_path_buf();
        while !self.fs.exists(&cur.join("cpuset.cpus"))
            || self
                .fs
                .read(&cur.join("cpuset.cpus"))
                .map(|s| s.trim().is_empty())
                .unwrap_or(true)
        {
            chain.push(cur.clone());
            if !cur.pop() {
                break;
            }
        }
        for d in chain.into_iter().rev() {
            let Some(parent) = d.parent() else { continue };
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = self
                    .fs
                    .read(&parent.join(f))
                    .map_err(|e| io_err("read", &parent.join(f), e))?;
                let cur = self.fs.read(&d.join(f)).unwrap_or_default();
                if cur.trim().is_empty() && !v.trim().is_empty() {
                    self.fs
                        .write(&d.join(f), v.trim())
                        .map_err(|e| io_err("write", &d.join(f), e))?;
                }
            }
        }
        Ok(())
    }

    fn device_rule(rule: &LinuxDeviceCgroup) -> String {
        let typ = rule
            .typ()
            .map(|t| t.as_str().to_string())
            .unwrap_or("a".into());
        let num = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or("*".into());
        format!(
            "{typ} {}:{} {}",
            num(rule.major()),
            num(rule.minor()),
            rule.access().clone().unwrap_or_else(|| "rwm".into())
        )
    }

    fn procs_file(&self) -> Option<PathBuf> {
        ["pids", "freezer", "memory", "cpu"]
            .iter()
            .find_map(|c| self.dir(c))
            .or_else(|| self.dirs.values().next().map(PathBuf::as_path))
            .map(|d| d.join("cgroup.procs"))
    }
}

impl CgroupManager for V1Manager {
    fn create(&self) -> Result<(), CgroupError> {
        for (key, dir) in &self.dirs {
            self.fs
                .create_dir_all(dir)
                .map_err(|e| io_err("mkdir", dir, e))?;
            if key.split(',').any(|c| c == "cpuset") {
                self.init_cpuset(dir)?;
            }
        }
        Ok(())
    }

    fn apply(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        if let Some(m) = r.memory() {
            if let Some(limit) = m.limit() {
                let swap = m.swap();
                let has_memsw = self.has_file("memory", "memory.memsw.limit_in_bytes");
                // memsw must stay >= the limit: raise it first when growing, last when shrinking.
                let write_limit =
                    || self.write("memory", "memory.limit_in_bytes", &limit.to_string());
                match (swap, has_memsw) {
                    (Some(s), true) => {
                        let s = if s < 0 {
                            "-1".to_string()
                        } else {
                            s.to_string()
                        };
                        if write_limit().is_err() {
                            self.write("memory", "memory.memsw.limit_in_bytes", &s)?;
                            write_limit()?;
                        } else {
                            self.write("memory", "memory.memsw.limit_in_bytes", &s)?;
                        }
                    }
                    (Some(_), false) => {
                        tracing::debug!("no swap accounting on this kernel, memory+swap ignored");
                        write_limit()?;
                    }
                    (None, _) => write_limit()?,
                }
            }
            if let Some(res) = m.reservation() {
                self.write("memory", "memory.soft_limit_in_bytes", &res.to_string())?;
            }
            if let Some(sw) = m.swappiness() {
                self.write("memory", "memory.swappiness", &sw.to_string())?;
            }
            if m.disable_oom_killer() == Some(true) {
                self.write("memory", "memory.oom_control", "1")?;
            }
        }
        if let Some(cpu) = r.cpu() {
            if let Some(s) = cpu.shares() {
                self.write("cpu", "cpu.shares", &s.to_string())?;
            }
            if let Some(p) = cpu.period() {
                self.write("cpu", "cpu.cfs_period_us", &p.to_string())?;
            }
            if let Some(q) = cpu.quota() {
                self.write("cpu", "cpu.cfs_quota_us", &q.to_string())?;
            }
            if let Some(c) = cpu.cpus() {
                self.write("cpuset", "cpuset.cpus", c)?;
            }
            if let Some(m) = cpu.mems() {
                self.write("cpuset", "cpuset.mems", m)?;
            }
        }
        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            self.write("pids", "pids.max", &v)?;
        }
        if let Some(devices) = r.devices()
            && !devices.is_empty()
            && self.dir("devices").is_some()
        {
            for d in devices {
                let file = if d.allow() {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                self.write("devices", file, &Self::device_rule(d))?;
            }
            // The runtime creates these nodes itself, whatever the spec allows (as runc does).
            for rule in RUNTIME_DEVICES {
                self.write("devices", "devices.allow", rule)?;
            }
        }
        if let Some(b) = r.block_io()
            && let Some(w) = b.weight()
        {
            if self.has_file("blkio", "blkio.weight") {
                self.write("blkio", "blkio.weight", &w.to_string())?;
            } else if self.has_file("blkio", "blkio.bfq.weight") {
                self.write("blkio", "blkio.bfq.weight", &w.to_string())?;
            }
        }
        Ok(())
    }

    fn add_task(&self, pid: Pid) -> Result<(), CgroupError> {
        for dir in self.dirs.values() {
            write_procs(self.fs.as_ref(), &dir.join("cgroup.procs"), pid)?;
        }
        Ok(())
    }

    fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let state = if frozen { "FROZEN" } else { "THAWED" };
        self.write("freezer", "freezer.state", state)?;
        if self.dir("freezer").is_none() {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.read("freezer", "freezer.state")?;
            if now.trim() == state {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CgroupError::FreezeTimeout(
                    self.dir("freezer").unwrap_or(Path::new("")).to_owned(),
                ));
            }
            // FREEZING → FROZEN needs another write to make progress on some kernels.
            self.write("freezer", "freezer.state", state)?;
            sleep(Duration::from_millis(1));
        }
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let num = |c: &str, f: &str| -> u64 {
            self.read(c, f)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        let limit = num("memory", "memory.limit_in_bytes");
        Ok(Stats {
            memory_usage_bytes: num("memory", "memory.usage_in_bytes"),
            // The kernel reports "unlimited" as a page-rounded i64::MAX.
            memory_limit_bytes: (limit > 0 && limit < (1 << 62)).then_some(limit),
            pids_current: num("pids", "pids.current"),
            cpu_usage_ns: num("cpuacct", "cpuacct.usage"),
            oom_kills: self.oom_kill_count().unwrap_or(0),
        })
    }

    fn oom_kill_count(&self) -> Result<u64, CgroupError> {
        let text = self.read("memory", "memory.oom_control")?;
        Ok(flat_keyed(&text, "oom_kill").unwrap_or(0))
    }

    fn pids(&self) -> Result<Vec<Pid>, CgroupError> {
        match self.procs_file() {
            Some(p) => read_pids(self.fs.as_ref(), &p),
            None => Ok(Vec::new()),
        }
    }

    fn remove(&self) -> Result<(), CgroupError> {
        let Some(procs) = self.procs_file() else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = read_pids(self.fs.as_ref(), &procs)?;
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(CgroupError::NotEmpty(procs));
            }
            // Frozen tasks cannot fork between our read and our kill.
            let frozen = self.dir("freezer").is_some() && self.freeze(true).is_ok();
            for p in &pids {
                let _ = kill(*p, Signal::SIGKILL);
            }
            if frozen {
                let _ = self.freeze(false);
            }
            sleep(Duration::from_millis(5));
        }
        for dir in self.dirs.values() {
            rmdir_retry(self.fs.as_ref(), dir)?;
        }
        Ok(())
    }

    fn paths(&self) -> CgroupPaths {
        CgroupPaths::V1(self.dirs.clone())
    }
}
