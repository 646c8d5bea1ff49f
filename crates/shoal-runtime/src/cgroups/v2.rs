//! cgroup v2: one directory in the unified tree; controllers enabled in every ancestor's
//! `cgroup.subtree_control` (never the leaf, which holds the tasks), limits in the v2 files.

use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use super::devices_bpf::{self, DeviceRule};
use super::{
    CgroupError, CgroupFs, CgroupManager, CgroupPaths, RUNTIME_DEVICES, Stats, flat_keyed, io_err,
    read_pids, rmdir_retry, write_procs,
};
use crate::spec::shares_to_weight;

const WANTED_CONTROLLERS: &[&str] = &["cpuset", "cpu", "io", "memory", "hugetlb", "pids"];

/// A container cgroup in the unified hierarchy.
pub struct V2Manager {
    root: PathBuf,
    dir: PathBuf,
    fs: Box<dyn CgroupFs>,
}

impl V2Manager {
    pub fn new(root: PathBuf, dir: PathBuf, fs: Box<dyn CgroupFs>) -> Self {
        V2Manager { root, dir, fs }
    }

    fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.dir.join(file);
        self.fs.write(&path, value).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                CgroupError::MissingController(file.split('.').next().unwrap_or(file).to_string())
            }
            _ => io_err("write", &path, e),
        })
    }

    fn read(&self, file: &str) -> Result<String, CgroupError> {
        let path = self.dir.join(file);
        self.fs.read(&path).map_err(|e| io_err("read", &path, e))
    }

    /// Ancestors from the root down to the leaf's parent.
    fn ancestors(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut cur = self.dir.clone();
        while cur.pop() && cur.starts_with(&self.root) {
            out.push(cur.clone());
        }
        out.reverse();
        out
    }

    fn populated(&self) -> bool {
        match self.fs.read(&self.dir.join("cgroup.events")) {
            Ok(t) => flat_keyed(&t, "populated").unwrap_or(0) != 0,
            Err(_) => !self.pids().unwrap_or_default().is_empty(),
        }
    }
}

impl CgroupManager for V2Manager {
    fn create(&self) -> Result<(), CgroupError> {
        self.fs
            .create_dir_all(&self.dir)
            .map_err(|e| io_err("mkdir", &self.dir, e))?;
        for dir in self.ancestors() {
            let available_path = dir.join("cgroup.controllers");
            let available = self
                .fs
                .read(&available_path)
                .map_err(|e| io_err("read", &available_path, e))?;
            let enabled = self
                .fs
                .read(&dir.join("cgroup.subtree_control"))
                .unwrap_or_default();
            let missing: Vec<String> = WANTED_CONTROLLERS
                .iter()
                .filter(|c| available.split_whitespace().any(|a| a == **c))
                .filter(|c| !enabled.split_whitespace().any(|a| a == **c))
                .map(|c| format!("+{c}"))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let path = dir.join("cgroup.subtree_control");
            self.fs
                .write(&path, &missing.join(" "))
                .map_err(|e| io_err("write", &path, e))?;
        }
        Ok(())
    }

    fn apply(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        if let Some(m) = r.memory() {
            if let Some(limit) = m.limit() {
                let v = if limit < 0 {
                    "max".into()
                } else {
                    limit.to_string()
                };
                self.write("memory.max", &v)?;
                // The spec's swap is memory+swap; v2 wants swap alone.
                if let Some(swap) = m.swap() {
                    let v = if swap < 0 || limit < 0 {
                        "max".into()
                    } else {
                        swap.saturating_sub(limit).max(0).to_string()
                    };
                    if self.fs.exists(&self.dir.join("memory.swap.max")) {
                        self.write("memory.swap.max", &v)?;
                    }
                }
            }
            if let Some(res) = m.reservation() {
                self.write("memory.low", &res.to_string())?;
            }
            if m.disable_oom_killer() == Some(true) {
                tracing::warn!("cgroup v2 cannot disable the OOM killer, ignored");
            }
        }
        if let Some(cpu) = r.cpu() {
            if let Some(s) = cpu.shares() {
                self.write("cpu.weight", &shares_to_weight(s).to_string())?;
            }
            if cpu.quota().is_some() || cpu.period().is_some() {
                let quota = match cpu.quota() {
                    Some(q) if q > 0 => q.to_string(),
                    _ => "max".into(),
                };
                let period = cpu.period().unwrap_or(100_000);
                self.write("cpu.max", &format!("{quota} {period}"))?;
            }
            if let Some(c) = cpu.cpus() {
                self.write("cpuset.cpus", c)?;
            }
            if let Some(m) = cpu.mems() {
                self.write("cpuset.mems", m)?;
            }
        }
        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            self.write("pids.max", &v)?;
        }
        if let Some(b) = r.block_io()
            && let Some(w) = b.weight()
        {
            // blkio weight 10..1000 → io.weight 1..10000 (runc's linear map).
            let v = 1 + (u64::from(w).saturating_sub(10) * 9999) / 990;
            self.write("io.weight", &format!("default {v}"))?;
        }
        if let Some(unified) = r.unified() {
            for (k, v) in unified {
                if k.contains('/') || k.starts_with('.') {
                    return Err(CgroupError::InvalidPath(PathBuf::from(k)));
                }
                self.write(k, v)?;
            }
        }
        if let Some(devices) = r.devices()
            && !devices.is_empty()
        {
            let mut rules = Vec::with_capacity(devices.len() + RUNTIME_DEVICES.len());
            for rule in devices {
                match DeviceRule::from_oci(rule) {
                    Some(rule) => rules.push(rule),
                    None => {
                        return Err(CgroupError::InvalidDeviceRule(format!("{rule:?}")));
                    }
                }
            }
            // The runtime creates these nodes itself, whatever the spec allows (as v1 does).
            rules.extend(
                RUNTIME_DEVICES
                    .iter()
                    .filter_map(|text| DeviceRule::parse(text, true)),
            );
            let program = devices_bpf::compile(&rules);
            self.fs
                .attach_device_filter(&self.dir, &program)
                .map_err(|e| io_err("attach device filter to", &self.dir, e))?;
        }
        Ok(())
    }

    fn add_task(&self, pid: Pid) -> Result<(), CgroupError> {
        write_procs(self.fs.as_ref(), &self.dir.join("cgroup.procs"), pid)
    }

    fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let events = self.read("cgroup.events").unwrap_or_default();
            if flat_keyed(&events, "frozen") == Some(u64::from(frozen)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CgroupError::FreezeTimeout(self.dir.clone()));
            }
            sleep(Duration::from_millis(1));
        }
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let num = |f: &str| -> Option<u64> { self.read(f).ok()?.trim().parse().ok() };
        let cpu = self.read("cpu.stat").unwrap_or_default();
        Ok(Stats {
            memory_usage_bytes: num("memory.current").unwrap_or(0),
            memory_limit_bytes: num("memory.max"),
            pids_current: num("pids.current").unwrap_or(0),
            cpu_usage_ns: flat_keyed(&cpu, "usage_usec").unwrap_or(0) * 1000,
            oom_kills: self.oom_kill_count().unwrap_or(0),
        })
    }

    fn oom_kill_count(&self) -> Result<u64, CgroupError> {
        let text = self.read("memory.events")?;
        Ok(flat_keyed(&text, "oom_kill").unwrap_or(0))
    }

    fn pids(&self) -> Result<Vec<Pid>, CgroupError> {
        read_pids(self.fs.as_ref(), &self.dir.join("cgroup.procs"))
    }

    fn remove(&self) -> Result<(), CgroupError> {
        if !self.fs.exists(&self.dir) {
            return Ok(());
        }
        let kill_file = self.dir.join("cgroup.kill");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.populated() {
            if Instant::now() > deadline {
                return Err(CgroupError::NotEmpty(self.dir.clone()));
            }
            // cgroup.kill (5.14+) kills the whole subtree atomically; otherwise one by one.
            if self.fs.exists(&kill_file) {
                self.fs
                    .write(&kill_file, "1")
                    .map_err(|e| io_err("write", &kill_file, e))?;
            } else {
                for p in self.pids()? {
                    let _ = kill(p, Signal::SIGKILL);
                }
            }
            sleep(Duration::from_millis(5));
        }
        rmdir_retry(self.fs.as_ref(), &self.dir)
    }

    fn paths(&self) -> CgroupPaths {
        CgroupPaths::V2 {
            root: self.root.clone(),
            dir: self.dir.clone(),
        }
    }
}

/// A v2 tree in a tempdir: control files are plain files, `rmdir` removes the directory whole.
#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };
    use std::io;
    use std::path::Path;

    struct FakeFs;

    impl CgroupFs for FakeFs {
        fn read(&self, path: &Path) -> io::Result<String> {
            std::fs::read_to_string(path)
        }
        fn write(&self, path: &Path, data: &str) -> io::Result<()> {
            if !path.exists() {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
            // subtree_control accumulates like the kernel's; everything else is replaced.
            if path.ends_with("cgroup.subtree_control") {
                let mut cur = std::fs::read_to_string(path)?;
                for c in data.split_whitespace() {
                    cur.push_str(c.trim_start_matches('+'));
                    cur.push(' ');
                }
                return std::fs::write(path, cur);
            }
            std::fs::write(path, data)
        }
        fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            std::fs::create_dir_all(path)?;
            // A new cgroup gets its control files, as the kernel would create them.
            for f in [
                "cgroup.procs",
                "cgroup.controllers",
                "cgroup.subtree_control",
                "cgroup.kill",
                "memory.max",
                "memory.swap.max",
                "memory.low",
                "memory.events",
                "cpu.max",
                "cpu.weight",
                "pids.max",
                "cpuset.cpus",
                "cpuset.mems",
            ] {
                if !path.join(f).exists() {
                    std::fs::write(path.join(f), "")?;
                }
            }
            std::fs::write(path.join("cgroup.events"), "populated 0\nfrozen 0\n")?;
            Ok(())
        }
        fn remove_dir(&self, path: &Path) -> io::Result<()> {
            std::fs::remove_dir_all(path)
        }
        fn exists(&self, path: &Path) -> bool {
            path.exists()
        }
        fn attach_device_filter(
            &self,
            dir: &Path,
            program: &[devices_bpf::Instruction],
        ) -> io::Result<()> {
            // Records the program's length where a test can see it was attached.
            std::fs::write(dir.join("devices.bpf"), program.len().to_string())
        }
    }

    fn tree() -> (tempfile::TempDir, V2Manager) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        FakeFs.create_dir_all(&root).unwrap();
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("shoal")).unwrap();
        std::fs::write(
            root.join("shoal/cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        std::fs::write(root.join("shoal/cgroup.subtree_control"), "").unwrap();
        let m = V2Manager::new(root.clone(), root.join("shoal/c1"), Box::new(FakeFs));
        (t, m)
    }

    #[test]
    fn create_enables_controllers_in_ancestors_only() {
        let (t, m) = tree();
        m.create().unwrap();
        let root_sc = std::fs::read_to_string(t.path().join("cgroup.subtree_control")).unwrap();
        let mid_sc =
            std::fs::read_to_string(t.path().join("shoal/cgroup.subtree_control")).unwrap();
        for c in ["cpu", "memory", "pids", "cpuset", "io"] {
            assert!(root_sc.split_whitespace().any(|x| x == c), "root lacks {c}");
            assert!(mid_sc.split_whitespace().any(|x| x == c), "shoal lacks {c}");
        }
        let leaf_sc =
            std::fs::read_to_string(t.path().join("shoal/c1/cgroup.subtree_control")).unwrap();
        assert!(
            leaf_sc.is_empty(),
            "the leaf holds tasks: no subtree_control"
        );
    }

    #[test]
    fn apply_writes_v2_files() {
        let (t, m) = tree();
        m.create().unwrap();
        let res = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .swap(96i64 << 20)
                    .reservation(32i64 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(1024u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .cpus("0")
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(42i64).build().unwrap())
            .build()
            .unwrap();
        m.apply(&res).unwrap();
        let leaf = t.path().join("shoal/c1");
        let read = |f: &str| std::fs::read_to_string(leaf.join(f)).unwrap();
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), (32u64 << 20).to_string());
        assert_eq!(read("memory.low"), (32u64 << 20).to_string());
        assert_eq!(read("cpu.weight"), "100");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("cpuset.cpus"), "0");
        assert_eq!(read("pids.max"), "42");

        let unlimited = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(1i64 << 30)
                    .swap(-1i64)
                    .build()
                    .unwrap(),
            )
            .cpu(LinuxCpuBuilder::default().quota(-1i64).build().unwrap())
            .pids(LinuxPidsBuilder::default().limit(0i64).build().unwrap())
            .build()
            .unwrap();
        m.apply(&unlimited).unwrap();
        assert_eq!(read("memory.swap.max"), "max");
        assert_eq!(read("cpu.max"), "max 100000");
        assert_eq!(read("pids.max"), "max");
        assert!(
            !leaf.join("devices.bpf").exists(),
            "no device rules, no program"
        );

        let devices = LinuxResourcesBuilder::default()
            .devices(vec![
                oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
                    .allow(false)
                    .access("rwm")
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        m.apply(&devices).unwrap();
        let program_len: usize = read("devices.bpf").parse().unwrap();
        assert!(
            program_len > 8 + RUNTIME_DEVICES.len(),
            "the spec's rules and the runtime's nodes compile into the program"
        );
    }

    #[test]
    fn add_task_stats_oom_and_remove() {
        let (t, m) = tree();
        m.create().unwrap();
        m.add_task(Pid::from_raw(4242)).unwrap();
        let leaf = t.path().join("shoal/c1");
        assert_eq!(
            std::fs::read_to_string(leaf.join("cgroup.procs")).unwrap(),
            "4242"
        );
        std::fs::write(
            leaf.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(leaf.join("memory.current"), "123\n").unwrap();
        std::fs::write(leaf.join("pids.current"), "2\n").unwrap();
        std::fs::write(leaf.join("cpu.stat"), "usage_usec 7\nuser_usec 5\n").unwrap();
        assert_eq!(m.oom_kill_count().unwrap(), 1);
        let s = m.stats().unwrap();
        assert_eq!(
            (
                s.memory_usage_bytes,
                s.pids_current,
                s.cpu_usage_ns,
                s.oom_kills
            ),
            (123, 2, 7000, 1)
        );
        // Freezing waits for cgroup.events to say so: a fake kernel that complies at once.
        std::fs::write(leaf.join("cgroup.freeze"), "").unwrap();
        std::fs::write(leaf.join("cgroup.events"), "populated 0\nfrozen 1\n").unwrap();
        m.freeze(true).unwrap();
        assert_eq!(
            std::fs::read_to_string(leaf.join("cgroup.freeze")).unwrap(),
            "1"
        );
        std::fs::write(leaf.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        m.remove().unwrap();
        assert!(!leaf.exists());
        // Removing twice is fine.
        m.remove().unwrap();
        assert_eq!(
            m.paths(),
            CgroupPaths::V2 {
                root: t.path().to_path_buf(),
                dir: leaf
            }
        );
    }

    #[test]
    fn unified_keys_cannot_escape() {
        let (_t, m) = tree();
        m.create().unwrap();
        let mut map = std::collections::HashMap::new();
        map.insert("../../etc/passwd".to_string(), "x".to_string());
        let res = LinuxResourcesBuilder::default()
            .unified(map)
            .build()
            .unwrap();
        assert!(matches!(m.apply(&res), Err(CgroupError::InvalidPath(_))));
    }
}
