//! The container's filesystem view, built inside its new mount namespace: the rootfs bind, the
//! spec's mounts in order, `/dev` nodes and links, `pivot_root`, then masked and read-only paths.
//! Everything here runs in the init child between `clone` and `execve`.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{Gid, Uid, chdir, chown, pivot_root};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use super::init::{InitError, Step};
use crate::cgroups::CgroupPaths;
use crate::paths::secure_join;

/// Parsed OCI mount options.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MountOptions {
    pub flags: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub bind: bool,
    pub data: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            propagation: Vec::new(),
            bind: false,
            data: Vec::new(),
        }
    }
}

pub(crate) fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions::default();
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "lazytime" => (MsFlags::MS_LAZYTIME, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                o.flags |= MsFlags::MS_REC;
                continue;
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let base = match opt.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                let rec = if opt.starts_with('r') && opt != "rw" {
                    MsFlags::MS_REC
                } else {
                    MsFlags::empty()
                };
                o.propagation.push(base | rec);
                continue;
            }
            // Options only other runtimes understand; harmless to drop.
            "tmpcopyup" | "idmap" | "ridmap" | "copy-symlink" => continue,
            other => {
                o.data.push(other.to_string());
                continue;
            }
        };
        o.flags = (o.flags | set) & !clear;
    }
    o
}

/// Everything the rootfs step needs from the caller.
pub(crate) struct RootfsPlan<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    pub cgroup: &'a CgroupPaths,
    /// Host path of the pty slave, bound at `/dev/console`.
    pub console: Option<&'a Path>,
    /// In a user namespace device nodes cannot be created: bind the host's instead.
    pub userns: bool,
    pub cwd: &'a Path,
}

fn errno_text(e: Errno) -> String {
    e.desc().to_lowercase()
}

/// Makes the rootfs the container's `/`.
pub(crate) fn prepare(plan: &RootfsPlan<'_>) -> Result<(), InitError> {
    let linux = plan.spec.linux().as_ref();
    let propagation = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        Some("shared") => MsFlags::MS_SHARED | MsFlags::MS_REC,
        Some("private") | Some("rprivate") => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        Some("unbindable") | Some("runbindable") => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    };
    // Nothing we mount from here on propagates back to the host.
    mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
        .step(|| "make / a slave mount".into())?;
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(plan.rootfs),
        plan.rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .step(|| format!("bind rootfs {}", plan.rootfs.display()))?;

    for m in plan.spec.mounts().as_deref().unwrap_or_default() {
        mount_entry(plan, m)?;
    }
    let dev_is_tmpfs = plan
        .spec
        .mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|m| m.destination() == Path::new("/dev") && m.typ().as_deref() != Some("bind"));
    if dev_is_tmpfs {
        create_devices(plan)?;
        dev_symlinks(plan.rootfs)?;
    }
    if let Some(console) = plan.console {
        let dst = plan.rootfs.join("dev/console");
        if !dst.exists() {
            std::fs::File::create(&dst).step(|| "create /dev/console".into())?;
        }
        mount(
            Some(console),
            &dst,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .step(|| format!("bind {} to /dev/console", console.display()))?;
    }

    chdir(plan.rootfs).step(|| "chdir to rootfs".into())?;
    pivot_root(".", ".").step(|| "pivot_root".into())?;
    // The old root sits on top of the new one: detach it without touching the host's mounts.
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .step(|| "make old root a slave".into())?;
    umount2(".", MntFlags::MNT_DETACH).step(|| "detach old root".into())?;
    chdir("/").step(|| "chdir /".into())?;

    // Created as root now, before the root may turn read-only and the user changes.
    let cwd = secure_join(Path::new("/"), plan.cwd).step(|| "resolve cwd".into())?;
    if !cwd.exists() {
        std::fs::create_dir_all(&cwd).step(|| format!("create cwd {}", plan.cwd.display()))?;
    }
    Ok(())
}

fn mount_entry(plan: &RootfsPlan<'_>, m: &Mount) -> Result<(), InitError> {
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m
        .typ()
        .as_deref()
        .unwrap_or(if opts.bind { "bind" } else { "none" });
    let dest = secure_join(plan.rootfs, m.destination())
        .step(|| format!("resolve mount destination {}", m.destination().display()))?;
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(plan, &dest, &opts);
    }
    let is_bind = opts.bind || typ == "bind";
    if is_bind {
        let source = m.source().clone().unwrap_or_default();
        let meta = std::fs::metadata(&source).step(|| {
            format!(
                "mount {} to {}",
                source.display(),
                m.destination().display()
            )
        })?;
        ensure_target(&dest, meta.is_dir())?;
        bind(&source, &dest, &opts, m.destination())?;
    } else {
        ensure_target(&dest, true)?;
        let data = opts.data.join(",");
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        let res = mount(
            Some(&source),
            &dest,
            Some(typ),
            opts.flags,
            (!data.is_empty()).then_some(data.as_str()),
        );
        match res {
            // sysfs cannot be mounted without owning the network namespace: borrow the host's.
            Err(Errno::EPERM) if typ == "sysfs" => {
                let mut ro = MountOptions {
                    flags: opts.flags | MsFlags::MS_REC,
                    ..Default::default()
                };
                ro.bind = true;
                bind(Path::new("/sys"), &dest, &ro, m.destination())?;
            }
            Err(e) => {
                return Err(InitError::msg(format!(
                    "mount {} ({typ}) to {}: {}",
                    source.display(),
                    m.destination().display(),
                    errno_text(e)
                )));
            }
            Ok(()) => {}
        }
    }
    for p in &opts.propagation {
        mount(None::<&str>, &dest, None::<&str>, *p, None::<&str>)
            .step(|| format!("set propagation of {}", m.destination().display()))?;
    }
    Ok(())
}

fn ensure_target(dest: &Path, dir: bool) -> Result<(), InitError> {
    if dir {
        if !dest.is_dir() {
            std::fs::create_dir_all(dest).step(|| format!("mkdir {}", dest.display()))?;
        }
    } else if !dest.exists() {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).step(|| format!("mkdir {}", parent.display()))?;
        }
        std::fs::File::create(dest).step(|| format!("create {}", dest.display()))?;
    }
    Ok(())
}

fn bind(source: &Path, dest: &Path, opts: &MountOptions, shown: &Path) -> Result<(), InitError> {
    let rec = opts.flags & MsFlags::MS_REC;
    mount(
        Some(source),
        dest,
        None::<&str>,
        MsFlags::MS_BIND | rec,
        None::<&str>,
    )
    .step(|| format!("bind {} to {}", source.display(), shown.display()))?;
    // A bind ignores every flag but MS_REC: the rest needs a remount.
    let extra = opts.flags & !(MsFlags::MS_REC | MsFlags::MS_BIND);
    if !extra.is_empty() {
        remount(dest, extra).step(|| format!("remount {}", shown.display()))?;
    }
    Ok(())
}

/// Remounts a bind with `flags`, keeping the flags the kernel locks (nosuid/nodev/noexec).
fn remount(dest: &Path, flags: MsFlags) -> nix::Result<()> {
    let mut keep = MsFlags::empty();
    if let Ok(st) = statvfs(dest) {
        let f = st.flags();
        for (fs, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if f.contains(fs) {
                keep |= ms;
            }
        }
    }
    mount(
        None::<&str>,
        dest,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | keep,
        None::<&str>,
    )
}

/// `/sys/fs/cgroup`: on v1 a tmpfs holding one bind per hierarchy, each of the container's own
/// cgroup directory (so `/sys/fs/cgroup/memory/memory.limit_in_bytes` is its limit); on v2 a
/// bind of its directory.
fn mount_cgroup(plan: &RootfsPlan<'_>, dest: &Path, opts: &MountOptions) -> Result<(), InitError> {
    let flags = opts.flags & !MsFlags::MS_RDONLY;
    let ro = opts.flags.contains(MsFlags::MS_RDONLY);
    ensure_target(dest, true)?;
    match plan.cgroup {
        CgroupPaths::V2 { dir, .. } => {
            let b = MountOptions {
                flags: opts.flags,
                ..Default::default()
            };
            bind(dir, dest, &b, Path::new("/sys/fs/cgroup"))
        }
        CgroupPaths::V1(dirs) => {
            mount(Some("tmpfs"), dest, Some("tmpfs"), flags, Some("mode=755"))
                .step(|| "mount tmpfs on /sys/fs/cgroup".into())?;
            for (key, host_dir) in dirs {
                let name = key.strip_prefix("name=").unwrap_or(key);
                let target = dest.join(name);
                std::fs::create_dir_all(&target).step(|| format!("mkdir cgroup {name}"))?;
                let b = MountOptions {
                    flags: flags
                        | if ro {
                            MsFlags::MS_RDONLY
                        } else {
                            MsFlags::empty()
                        },
                    ..Default::default()
                };
                bind(
                    host_dir,
                    &target,
                    &b,
                    &Path::new("/sys/fs/cgroup").join(name),
                )?;
                // Co-mounted controllers (`cpu,cpuacct`) are also reachable by each name.
                if key.contains(',') {
                    for c in key.split(',') {
                        let link = dest.join(c);
                        if !link.exists() {
                            symlink(name, &link).step(|| format!("symlink cgroup {c}"))?;
                        }
                    }
                }
            }
            if ro {
                remount(dest, flags | MsFlags::MS_RDONLY)
                    .step(|| "remount /sys/fs/cgroup read-only".into())?;
            }
            Ok(())
        }
    }
}

/// The nodes every container gets (runtime-spec "Default Devices").
fn default_devices() -> Vec<(&'static str, u64, u64)> {
    vec![
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
}

fn create_devices(plan: &RootfsPlan<'_>) -> Result<(), InitError> {
    let dev = plan.rootfs.join("dev");
    let mut nodes: Vec<(PathBuf, SFlag, u64, u64, u32, u32, u32)> = default_devices()
        .into_iter()
        .map(|(n, maj, min)| (dev.join(n), SFlag::S_IFCHR, maj, min, 0o666, 0, 0))
        .collect();
    let extra: &[LinuxDevice] = plan
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_deref())
        .unwrap_or_default();
    for d in extra {
        let kind = match d.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        let path = secure_join(plan.rootfs, d.path()).step(|| "resolve device path".into())?;
        nodes.push((
            path,
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        ));
    }
    for (path, kind, major, minor, mode, uid, gid) in nodes {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).step(|| format!("mkdir {}", parent.display()))?;
        }
        if path.exists() {
            let _ = std::fs::remove_file(&path);
        }
        if plan.userns {
            let host = Path::new("/dev").join(path.file_name().unwrap_or_default());
            std::fs::File::create(&path).step(|| format!("create {}", path.display()))?;
            mount(
                Some(&host),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .step(|| format!("bind device {}", host.display()))?;
            continue;
        }
        mknod(
            &path,
            kind,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        )
        .step(|| format!("mknod {}", path.display()))?;
        // mknod honours the umask; the spec's mode is exact.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
            .step(|| format!("chmod {}", path.display()))?;
        chown(&path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .step(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

fn dev_symlinks(rootfs: &Path) -> Result<(), InitError> {
    let dev = rootfs.join("dev");
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        let p = dev.join(name);
        if p.symlink_metadata().is_err() {
            symlink(target, &p).step(|| format!("symlink /dev/{name}"))?;
        }
    }
    let ptmx = dev.join("ptmx");
    if ptmx.symlink_metadata().is_ok() {
        std::fs::remove_file(&ptmx).step(|| "remove /dev/ptmx".into())?;
    }
    symlink("pts/ptmx", &ptmx).step(|| "symlink /dev/ptmx".into())?;
    Ok(())
}

/// Read-only and masked paths, then the read-only root, after `pivot_root`.
pub(crate) fn finish(spec: &Spec) -> Result<(), InitError> {
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.readonly_paths().as_deref())
        .unwrap_or_default()
    {
        let path = Path::new(p);
        match mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Err(Errno::ENOENT) => continue,
            r => r.step(|| format!("bind readonly path {p}"))?,
        }
        remount(
            path,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )
        .step(|| format!("remount {p} read-only"))?;
    }
    for p in linux
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or_default()
    {
        let path = Path::new(p);
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let res = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0k"),
            )
        } else {
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        res.step(|| format!("mask {p}"))?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        remount(Path::new("/"), MsFlags::MS_RDONLY).step(|| "remount / read-only".into())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_like_runc() {
        let o = parse_options(&[
            "nosuid".into(),
            "noexec".into(),
            "mode=755".into(),
            "size=65536k".into(),
            "ro".into(),
            "rw".into(),
        ]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
        assert_eq!(o.data, ["mode=755", "size=65536k"]);
        let o = parse_options(&["rbind".into(), "rprivate".into(), "ro".into()]);
        assert!(o.bind);
        assert_eq!(o.flags, MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert_eq!(o.propagation, [MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        let o = parse_options(&["slave".into()]);
        assert_eq!(o.propagation, [MsFlags::MS_SLAVE]);
    }
}
