//! Spec building: a high-level [`ContainerConfig`] becomes an OCI runtime `Spec` carrying Docker's
//! defaults (capabilities, mounts, masked and read-only paths, device rules, namespaces, seccomp).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use serde::{Deserialize, Serialize};

use crate::caps;
use crate::paths::secure_join;
use crate::seccomp;

/// Errors building a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid user {0:?}: expected uid[:gid] or name[:group]")]
    InvalidUser(String),
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("invalid capability {0:?}")]
    InvalidCapability(String),
    #[error("invalid rlimit {0:?}")]
    InvalidRlimit(String),
    #[error("invalid cpus value {0}: must be positive")]
    InvalidCpus(f64),
    #[error("the container needs a command")]
    NoCommand,
    #[error("building the spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

/// How the container is networked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// A new, empty network namespace (only `lo`, down). The network crate wires it afterwards.
    #[default]
    None,
    /// Share the host's network namespace.
    Host,
    /// Join the network namespace at this path (e.g. `/run/netns/<name>`).
    Path(PathBuf),
}

/// What a mount brings into the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum MountConfig {
    /// A host path (also how volumes arrive: the daemon resolves them to a directory).
    Bind {
        source: PathBuf,
        target: PathBuf,
        #[serde(default)]
        readonly: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        target: PathBuf,
        #[serde(default)]
        size_bytes: Option<u64>,
        #[serde(default)]
        mode: Option<u32>,
        #[serde(default)]
        readonly: bool,
    },
}

/// Resource limits, in Docker's terms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// Memory + swap limit in bytes (`-1`: unlimited swap). Unset with `memory` set means twice
    /// the memory limit, as Docker does.
    pub memory_swap: Option<i64>,
    /// Memory soft limit in bytes.
    pub memory_reservation: Option<i64>,
    /// CFS quota in microseconds per period.
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds (default 100000).
    pub cpu_period: Option<u64>,
    /// CPUs as a float (`--cpus 1.5`); overrides quota/period.
    pub cpus: Option<f64>,
    /// Relative CPU weight (v1 shares, 1024 is the default).
    pub cpu_shares: Option<u64>,
    /// Maximum number of tasks.
    pub pids_limit: Option<i64>,
    /// CPUs allowed, e.g. `0-1`.
    pub cpuset_cpus: Option<String>,
    /// Memory nodes allowed, e.g. `0`.
    pub cpuset_mems: Option<String>,
}

/// One resource limit (`nofile`, `RLIMIT_NOFILE`, `nproc`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// A user namespace mapping: container ids `0..size` map to host ids `host_uid..`/`host_gid..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsernsMapping {
    pub host_uid: u32,
    pub host_gid: u32,
    pub size: u32,
}

/// Which seccomp profile applies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    /// Docker's default allow-list.
    #[default]
    Default,
    /// No filter at all.
    Unconfined,
}

/// A container as the daemon describes it, before Docker's defaults are applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerConfig {
    /// The command and its arguments (entrypoint + cmd already joined).
    pub args: Vec<String>,
    /// `KEY=value` pairs. `PATH`, `HOSTNAME`, `HOME` and (with a tty) `TERM` are added when absent.
    pub env: Vec<String>,
    /// Working directory inside the container (default `/`).
    pub cwd: Option<String>,
    /// `uid[:gid]` or `name[:group]`, resolved against the rootfs `/etc/passwd` and `/etc/group`.
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub mounts: Vec<MountConfig>,
    pub resources: Resources,
    pub no_new_privileges: bool,
    pub network: NetworkMode,
    pub readonly_rootfs: bool,
    pub rlimits: Vec<Rlimit>,
    pub tty: bool,
    /// Capabilities added to Docker's default 14 (`ALL` adds every one).
    pub cap_add: Vec<String>,
    /// Capabilities removed (`ALL` removes every one before `cap_add` applies).
    pub cap_drop: Vec<String>,
    /// Size of `/dev/shm` (default 64 MiB).
    pub shm_size: Option<u64>,
    pub sysctls: BTreeMap<String, String>,
    pub seccomp: SeccompMode,
    pub userns: Option<UsernsMapping>,
    /// cgroup path; absolute is under each hierarchy's root, relative is under the runtime's own
    /// cgroup. Default `/shoal/<id>`.
    pub cgroups_path: Option<PathBuf>,
    pub annotations: BTreeMap<String, String>,
}

/// The environment every container gets when its image says nothing.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `/proc` entries Docker hides (`moby:daemon/pkg/oci/defaults.go`).
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// `/proc` entries Docker makes read-only.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Builds the OCI spec for container `id`. `rootfs` is only read (for user and group names).
pub fn build_spec(id: &str, config: &ContainerConfig, rootfs: &Path) -> Result<Spec, SpecError> {
    if config.args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    let user = resolve_user(rootfs, config.user.as_deref())?;
    let caps = capability_set(&config.cap_add, &config.cap_drop)?;

    let mut env = config.env.clone();
    let has = |env: &[String], key: &str| env.iter().any(|e| e.starts_with(&format!("{key}=")));
    if !has(&env, "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if let Some(h) = &config.hostname
        && !has(&env, "HOSTNAME")
    {
        env.push(format!("HOSTNAME={h}"));
    }
    if config.tty && !has(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={}", user.home));
    }

    let mut rlimits = Vec::new();
    for r in &config.rlimits {
        rlimits.push(
            PosixRlimitBuilder::default()
                .typ(parse_rlimit(&r.name)?)
                .soft(r.soft)
                .hard(r.hard)
                .build()?,
        );
    }

    let cap_set: Capabilities = caps.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(cap_set.clone())
        .effective(cap_set.clone())
        .permitted(cap_set.clone())
        // Docker leaves inheritable empty since CVE-2022-24769.
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()?;

    let process = ProcessBuilder::default()
        .terminal(config.tty)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids.clone())
                .build()?,
        )
        .args(config.args.clone())
        .env(env)
        .cwd(config.cwd.clone().unwrap_or_else(|| "/".into()))
        .capabilities(capabilities)
        .rlimits(rlimits)
        .no_new_privileges(config.no_new_privileges)
        .build()?;

    let mut namespaces = vec![
        ns(LinuxNamespaceType::Mount, None)?,
        ns(LinuxNamespaceType::Uts, None)?,
        ns(LinuxNamespaceType::Ipc, None)?,
        ns(LinuxNamespaceType::Pid, None)?,
    ];
    match &config.network {
        NetworkMode::None => namespaces.push(ns(LinuxNamespaceType::Network, None)?),
        NetworkMode::Host => {}
        NetworkMode::Path(p) => namespaces.push(ns(LinuxNamespaceType::Network, Some(p))?),
    }
    let mut linux = LinuxBuilder::default();
    if let Some(m) = config.userns {
        namespaces.push(ns(LinuxNamespaceType::User, None)?);
        linux = linux
            .uid_mappings(vec![
                LinuxIdMappingBuilder::default()
                    .container_id(0u32)
                    .host_id(m.host_uid)
                    .size(m.size)
                    .build()?,
            ])
            .gid_mappings(vec![
                LinuxIdMappingBuilder::default()
                    .container_id(0u32)
                    .host_id(m.host_gid)
                    .size(m.size)
                    .build()?,
            ]);
    }

    let mut masked: Vec<String> = MASKED_PATHS.iter().map(|s| s.to_string()).collect();
    masked.extend(thermal_throttle_paths());

    let seccomp_profile = match config.seccomp {
        SeccompMode::Default => Some(seccomp::default_profile(&cap_set)),
        SeccompMode::Unconfined => None,
    };

    let mut linux = linux
        .namespaces(namespaces)
        .resources(resources(&config.resources)?)
        .cgroups_path(
            config
                .cgroups_path
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("/shoal/{id}"))),
        )
        .masked_paths(masked)
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .sysctl(
            config
                .sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<std::collections::HashMap<_, _>>(),
        );
    if let Some(p) = seccomp_profile {
        linux = linux.seccomp(p);
    }

    let mut builder = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(config.readonly_rootfs)
                .build()?,
        )
        .process(process)
        .mounts(mounts(config)?)
        .linux(linux.build()?)
        .annotations(
            config
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<std::collections::HashMap<_, _>>(),
        );
    if let Some(h) = &config.hostname {
        builder = builder.hostname(h.clone());
    }
    Ok(builder.build()?)
}

fn ns(typ: LinuxNamespaceType, path: Option<&PathBuf>) -> Result<LinuxNamespace, SpecError> {
    let mut b = LinuxNamespaceBuilder::default().typ(typ);
    if let Some(p) = path {
        b = b.path(p.clone());
    }
    Ok(b.build()?)
}

fn thermal_throttle_paths() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu") else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("cpu") && n[3..].chars().all(|c| c.is_ascii_digit()) && n.len() > 3
        })
        .map(|e| e.path().join("thermal_throttle"))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    out.sort();
    out
}

/// The capability list after Docker's tweaks: defaults, minus drops, plus adds.
pub fn capability_set(add: &[String], drop: &[String]) -> Result<Vec<Capability>, SpecError> {
    use oci_spec::runtime::Capability;
    let is_all = |s: &String| s.eq_ignore_ascii_case("all");
    let mut set: Vec<Capability> = if drop.iter().any(is_all) {
        Vec::new()
    } else {
        caps::DOCKER_DEFAULTS.to_vec()
    };
    for d in drop.iter().filter(|s| !is_all(s)) {
        let c = caps::parse(d).ok_or_else(|| SpecError::InvalidCapability(d.clone()))?;
        set.retain(|x| *x != c);
    }
    if add.iter().any(is_all) {
        set = caps::ALL.iter().map(|(c, _)| *c).collect();
    }
    for a in add.iter().filter(|s| !is_all(s)) {
        let c = caps::parse(a).ok_or_else(|| SpecError::InvalidCapability(a.clone()))?;
        if !set.contains(&c) {
            set.push(c);
        }
    }
    Ok(set)
}

use oci_spec::runtime::Capability;

fn parse_rlimit(name: &str) -> Result<PosixRlimitType, SpecError> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("RLIMIT_").unwrap_or(&upper);
    let full = format!("RLIMIT_{bare}");
    serde_json::from_value(serde_json::Value::String(full))
        .map_err(|_| SpecError::InvalidRlimit(name.to_string()))
}

fn resources(r: &Resources) -> Result<oci_spec::runtime::LinuxResources, SpecError> {
    let mut b = LinuxResourcesBuilder::default().devices(default_device_rules());
    if r.memory.is_some() || r.memory_swap.is_some() || r.memory_reservation.is_some() {
        let mut m = LinuxMemoryBuilder::default();
        if let Some(limit) = r.memory {
            m = m.limit(limit);
            // Docker: no --memory-swap means as much swap as memory.
            let swap = r.memory_swap.unwrap_or(limit.saturating_mul(2));
            m = m.swap(swap);
        } else if let Some(swap) = r.memory_swap {
            m = m.swap(swap);
        }
        if let Some(res) = r.memory_reservation {
            m = m.reservation(res);
        }
        b = b.memory(m.build()?);
    }
    let mut cpu = LinuxCpuBuilder::default();
    let mut any_cpu = false;
    if let Some(cpus) = r.cpus {
        if cpus <= 0.0 || !cpus.is_finite() {
            return Err(SpecError::InvalidCpus(cpus));
        }
        let period = r.cpu_period.unwrap_or(100_000);
        cpu = cpu
            .period(period)
            .quota((cpus * period as f64).round() as i64);
        any_cpu = true;
    } else {
        if let Some(q) = r.cpu_quota {
            cpu = cpu.quota(q);
            any_cpu = true;
        }
        if let Some(p) = r.cpu_period {
            cpu = cpu.period(p);
            any_cpu = true;
        }
    }
    if let Some(s) = r.cpu_shares {
        cpu = cpu.shares(s);
        any_cpu = true;
    }
    if let Some(c) = &r.cpuset_cpus {
        cpu = cpu.cpus(c.clone());
        any_cpu = true;
    }
    if let Some(m) = &r.cpuset_mems {
        cpu = cpu.mems(m.clone());
        any_cpu = true;
    }
    if any_cpu {
        b = b.cpu(cpu.build()?);
    }
    if let Some(p) = r.pids_limit {
        b = b.pids(LinuxPidsBuilder::default().limit(p).build()?);
    }
    Ok(b.build()?)
}

fn dev_rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .typ(typ)
        .access(access.to_string());
    if let Some(m) = major {
        b = b.major(m);
    }
    if let Some(m) = minor {
        b = b.minor(m);
    }
    b.build().expect("every field of a device rule is set")
}

/// Docker's device cgroup rules plus the nodes runc always allows (`AllowedDevices`).
///
/// Docker's trailing "deny c 10:229" (fuse) is left out: after "deny all" it changes nothing, and
/// runc's v1 device emulator rejects a deny that would punch a hole in the `c *:* m` wildcard.
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{A, B, C};
    vec![
        dev_rule(false, A, None, None, "rwm"),
        // mknod of anything is allowed; using the node is what the rules below gate.
        dev_rule(true, C, None, None, "m"),
        dev_rule(true, B, None, None, "m"),
        dev_rule(true, C, Some(1), Some(3), "rwm"), // null
        dev_rule(true, C, Some(1), Some(5), "rwm"), // zero
        dev_rule(true, C, Some(1), Some(7), "rwm"), // full
        dev_rule(true, C, Some(1), Some(8), "rwm"), // random
        dev_rule(true, C, Some(1), Some(9), "rwm"), // urandom
        dev_rule(true, C, Some(5), Some(0), "rwm"), // tty
        dev_rule(true, C, Some(5), Some(1), "rwm"), // console
        dev_rule(true, C, Some(5), Some(2), "rwm"), // ptmx
        dev_rule(true, C, Some(136), None, "rwm"),  // pts
    ]
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn mounts(config: &ContainerConfig) -> Result<Vec<Mount>, SpecError> {
    let shm = config.shm_size.unwrap_or(64 << 20);
    let mut out = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["ro", "nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &[
                "nosuid",
                "noexec",
                "nodev",
                "mode=1777",
                &format!("size={shm}"),
            ],
        )?,
    ];
    for m in &config.mounts {
        match m {
            MountConfig::Bind {
                source,
                target,
                readonly,
            } => {
                let mut opts = vec!["rbind", "rprivate"];
                opts.push(if *readonly { "ro" } else { "rw" });
                out.push(mount(
                    &target.to_string_lossy(),
                    "bind",
                    &source.to_string_lossy(),
                    &opts,
                )?);
            }
            MountConfig::Tmpfs {
                target,
                size_bytes,
                mode,
                readonly,
            } => {
                let mut opts = vec![
                    "nosuid".to_string(),
                    "nodev".to_string(),
                    "noexec".to_string(),
                ];
                if let Some(s) = size_bytes {
                    opts.push(format!("size={s}"));
                }
                if let Some(m) = mode {
                    opts.push(format!("mode={m:o}"));
                }
                if *readonly {
                    opts.push("ro".into());
                }
                let refs: Vec<&str> = opts.iter().map(String::as_str).collect();
                out.push(mount(&target.to_string_lossy(), "tmpfs", "tmpfs", &refs)?);
            }
        }
    }
    Ok(out)
}

/// A user as resolved against the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn read_image_file(rootfs: &Path, path: &str) -> String {
    secure_join(rootfs, Path::new(path))
        .and_then(std::fs::read_to_string)
        .unwrap_or_default()
}

fn passwd(rootfs: &Path) -> Vec<PasswdEntry> {
    read_image_file(rootfs, "/etc/passwd")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 || l.starts_with('#') {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn groups(rootfs: &Path) -> Vec<(String, u32, Vec<String>)> {
    read_image_file(rootfs, "/etc/group")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || l.starts_with('#') {
                return None;
            }
            let members = f[3]
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            Some((f[0].to_string(), f[2].parse().ok()?, members))
        })
        .collect()
}

/// Resolves `uid[:gid]` / `name[:group]` the way Docker does: a numeric uid absent from
/// `/etc/passwd` is fine (gid 0, home `/`), a name must exist; supplementary groups come from the
/// groups that list the user by name.
pub fn resolve_user(rootfs: &Path, user: Option<&str>) -> Result<ResolvedUser, SpecError> {
    let spec = user.unwrap_or("").trim();
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if g.is_some_and(str::is_empty) || (u.is_empty() && g.is_some()) {
        return Err(SpecError::InvalidUser(spec.to_string()));
    }
    let users = passwd(rootfs);
    let (uid, mut gid, home, name) = if u.is_empty() {
        let root = users.iter().find(|e| e.uid == 0);
        (
            0,
            root.map(|e| e.gid).unwrap_or(0),
            root.map(|e| e.home.clone())
                .unwrap_or_else(|| "/root".into()),
            root.map(|e| e.name.clone()),
        )
    } else if let Ok(uid) = u32::from_str(u) {
        match users.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, e.home.clone(), Some(e.name.clone())),
            None => (uid, 0, "/".into(), None),
        }
    } else {
        let e = users
            .iter()
            .find(|e| e.name == u)
            .ok_or_else(|| SpecError::UnknownUser(u.to_string()))?;
        (e.uid, e.gid, e.home.clone(), Some(e.name.clone()))
    };
    let all_groups = groups(rootfs);
    if let Some(g) = g {
        gid = match u32::from_str(g) {
            Ok(n) => n,
            Err(_) => all_groups
                .iter()
                .find(|(n, _, _)| n == g)
                .map(|(_, id, _)| *id)
                .ok_or_else(|| SpecError::UnknownGroup(g.to_string()))?,
        };
    }
    let mut additional: Vec<u32> = Vec::new();
    if let Some(name) = &name {
        let mut seen = HashSet::new();
        for (_, id, members) in &all_groups {
            if members.iter().any(|m| m == name) && *id != gid && seen.insert(*id) {
                additional.push(*id);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

/// Shares → v2 weight, opencontainers/cgroups#20 (runc ≥ 1.3.2, crun ≥ 1.23): 1024 → 100.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    if shares <= 2 {
        return 1;
    }
    if shares >= 262_144 {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    (10f64.powf(exponent).ceil() as u64).clamp(1, 10_000)
}

/// The formula runc used before 1.3.2 (maps 1024 to 39); kept to document the difference.
pub fn shares_to_weight_legacy(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.saturating_sub(2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nwheel:x:10:app\nnogroup:x:65534:\napp:x:1000:\naudio:x:29:app,other\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn users_resolve_like_docker() {
        let r = rootfs();
        let u = resolve_user(r.path(), None).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        let u = resolve_user(r.path(), Some("app")).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![10, 29]);
        let u = resolve_user(r.path(), Some("65534:65534")).unwrap();
        assert_eq!((u.uid, u.gid), (65534, 65534));
        let u = resolve_user(r.path(), Some("4242")).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
        let u = resolve_user(r.path(), Some("app:nogroup")).unwrap();
        assert_eq!(u.gid, 65534);
        assert!(matches!(
            resolve_user(r.path(), Some("ghost")),
            Err(SpecError::UnknownUser(_))
        ));
        assert!(matches!(
            resolve_user(r.path(), Some("app:ghosts")),
            Err(SpecError::UnknownGroup(_))
        ));
    }

    #[test]
    fn spec_carries_docker_defaults() {
        let r = rootfs();
        let cfg = ContainerConfig {
            args: vec!["sh".into()],
            hostname: Some("box".into()),
            resources: Resources {
                memory: Some(8 << 20),
                cpus: Some(1.5),
                pids_limit: Some(64),
                ..Default::default()
            },
            ..Default::default()
        };
        let spec = build_spec("c1", &cfg, r.path()).unwrap();
        let p = spec.process().as_ref().unwrap();
        let c = p.capabilities().as_ref().unwrap();
        assert_eq!(caps::mask(c.effective().as_ref().unwrap()), 0xa804_25fb);
        assert!(c.inheritable().as_ref().unwrap().is_empty());
        let env = p.env().as_ref().unwrap();
        assert!(env.iter().any(|e| e.starts_with("PATH=")));
        assert!(env.contains(&"HOSTNAME=box".to_string()));
        let linux = spec.linux().as_ref().unwrap();
        let types: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(types.contains(&LinuxNamespaceType::Network));
        assert!(types.contains(&LinuxNamespaceType::Pid));
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().unwrap().limit(), Some(8 << 20));
        assert_eq!(res.memory().unwrap().swap(), Some(16 << 20));
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(150_000));
        assert_eq!(res.pids().unwrap().limit(), 64);
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/shoal/c1"))
        );
        assert!(linux.seccomp().is_some());
        let dests: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
        ] {
            assert!(dests.contains(&d.to_string()), "missing {d}");
        }
        // Serialises as a runc-compatible config.json.
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
    }

    #[test]
    fn host_network_and_caps_tweaks() {
        let r = rootfs();
        let cfg = ContainerConfig {
            args: vec!["sh".into()],
            network: NetworkMode::Host,
            cap_add: vec!["NET_ADMIN".into()],
            cap_drop: vec!["CAP_MKNOD".into()],
            rlimits: vec![Rlimit {
                name: "nofile".into(),
                soft: 100,
                hard: 200,
            }],
            ..Default::default()
        };
        let spec = build_spec("c2", &cfg, r.path()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(
            !linux
                .namespaces()
                .as_ref()
                .unwrap()
                .iter()
                .any(|n| n.typ() == LinuxNamespaceType::Network)
        );
        let p = spec.process().as_ref().unwrap();
        let eff = p
            .capabilities()
            .as_ref()
            .unwrap()
            .effective()
            .clone()
            .unwrap();
        assert!(eff.contains(&Capability::NetAdmin));
        assert!(!eff.contains(&Capability::Mknod));
        assert_eq!(
            p.rlimits().as_ref().unwrap()[0].typ(),
            PosixRlimitType::RlimitNofile
        );
        assert!(build_spec("c3", &ContainerConfig::default(), r.path()).is_err());
    }

    #[test]
    fn shares_to_weight_formulas() {
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 0);
        assert!(shares_to_weight(512) < 100 && shares_to_weight(2048) > 100);
        assert_eq!(shares_to_weight_legacy(1024), 39);
        // Monotonic over the whole range.
        let mut last = 0;
        for s in (2..262_144).step_by(97) {
            let w = shares_to_weight(s);
            assert!(w >= last, "{s}");
            last = w;
        }
    }
}
