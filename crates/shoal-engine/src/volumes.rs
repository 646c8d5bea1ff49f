//! Volumes of the local driver: their storage under `<data-root>/volumes/<name>/` (`_data` is
//! what containers see, `volume.json` the metadata), the driver options (`type`, `device`,
//! `o`), tmpfs-backed volumes' mounts, the resolution of a container's mounts at create (named
//! and anonymous volumes, the image's VOLUMEs) with the copy-up of image content, and the
//! engine's volume operations behind the `Volumes` API.
//!
//! A volume appears on disk whole or not at all: it is built in a `.create-*` directory and
//! renamed into place, and a removal renames it to `.remove-*` before deleting, so a daemon
//! killed at any instant finds each volume as it was or gone; leftovers are swept at open.

mod copy_up;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};
use shoal_api::v1::{self, ContainerMount, ContainerSpec, MountSpec, mount_spec};
use shoal_runtime::spec::MountConfig;

use crate::{Engine, EngineError, Entry};

const METADATA_FILE: &str = "volume.json";
const DATA_DIR: &str = "_data";
const FORMAT: u32 = 1;
const DRIVER: &str = "local";
/// Prefixes of the directories a create or remove is working in; volume names never start
/// with a dot, so these never collide with a volume.
const CREATING: &str = ".create-";
const REMOVING: &str = ".remove-";

/// What `volume.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VolumeRecord {
    format: u32,
    pub(crate) name: String,
    /// RFC 3339, UTC.
    pub(crate) created_at: String,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) options: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) anonymous: bool,
}

/// Where a volume's data lives, from its driver options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Backing {
    /// `_data` itself.
    Directory,
    /// A tmpfs mounted on `_data` while containers use it (its content goes with the last).
    Tmpfs { flags: MsFlags, data: String },
    /// An existing host directory (`type=none,o=bind,device=/path`).
    Bind { device: PathBuf, read_only: bool },
}

fn invalid(message: String) -> EngineError {
    EngineError::InvalidArgument(message)
}

/// Docker's local driver options: `type`, `device` and `o`. Of the mount types, `tmpfs` and a
/// bind of an existing directory (`type=none` or `bind`, `o=bind`) are served; anything else is
/// refused here, at create, rather than when a container first mounts the volume.
pub(crate) fn parse_options(options: &BTreeMap<String, String>) -> Result<Backing, EngineError> {
    for key in options.keys() {
        if !matches!(key.as_str(), "type" | "device" | "o") {
            return Err(invalid(format!(
                "invalid volume option {key:?}: the local driver takes type, device and o"
            )));
        }
    }
    let get = |key: &str| options.get(key).map(String::as_str).unwrap_or("");
    let (kind, device, o) = (get("type"), get("device"), get("o"));
    let o_fields: Vec<&str> = o.split(',').filter(|f| !f.is_empty()).collect();
    match kind {
        "" if device.is_empty() && o.is_empty() => Ok(Backing::Directory),
        "" => Err(invalid(
            "volume option \"type\" is required with \"device\" or \"o\"".to_owned(),
        )),
        "tmpfs" => {
            if !matches!(device, "" | "tmpfs") {
                return Err(invalid(format!(
                    "invalid volume option device={device:?}: type=tmpfs takes device=tmpfs"
                )));
            }
            tmpfs_options(&o_fields)
        }
        "none" | "bind" => {
            let mut bind = false;
            let mut read_only = false;
            for field in &o_fields {
                match *field {
                    "bind" | "rbind" => bind = true,
                    "ro" => read_only = true,
                    "rw" => read_only = false,
                    other => {
                        return Err(invalid(format!(
                            "unsupported volume option o={other:?} for a bind: use bind, ro or rw"
                        )));
                    }
                }
            }
            if !bind && kind == "none" {
                return Err(invalid(
                    "volume option type=none needs o=bind (a bind of an existing host directory)"
                        .to_owned(),
                ));
            }
            if !device.starts_with('/') {
                return Err(invalid(format!(
                    "volume option device={device:?} must be an absolute host path"
                )));
            }
            Ok(Backing::Bind {
                device: PathBuf::from(device),
                read_only,
            })
        }
        other => Err(invalid(format!(
            "unsupported volume type {other:?}: the local driver here mounts type=tmpfs, or \
             type=none with o=bind and device=<host directory>"
        ))),
    }
}

/// `size=64m,mode=1777,uid=…,gid=…,nr_inodes=…` and the mount flags a tmpfs takes.
fn tmpfs_options(fields: &[&str]) -> Result<Backing, EngineError> {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    let digits = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    let sized = |v: &str| {
        let number = v
            .strip_suffix(['k', 'K', 'm', 'M', 'g', 'G', '%'])
            .unwrap_or(v);
        digits(number)
    };
    for field in fields {
        let (key, value) = field.split_once('=').unwrap_or((field, ""));
        let ok = match key {
            "size" | "nr_blocks" | "nr_inodes" => sized(value),
            "mode" => !value.is_empty() && value.bytes().all(|b| (b'0'..=b'7').contains(&b)),
            "uid" | "gid" => digits(value),
            "ro" | "rw" | "nosuid" | "suid" | "nodev" | "dev" | "noexec" | "exec" => {
                if !value.is_empty() {
                    false
                } else {
                    match key {
                        "ro" => flags |= MsFlags::MS_RDONLY,
                        "rw" => flags &= !MsFlags::MS_RDONLY,
                        "nosuid" => flags |= MsFlags::MS_NOSUID,
                        "suid" => flags &= !MsFlags::MS_NOSUID,
                        "nodev" => flags |= MsFlags::MS_NODEV,
                        "dev" => flags &= !MsFlags::MS_NODEV,
                        "noexec" => flags |= MsFlags::MS_NOEXEC,
                        _ => flags &= !MsFlags::MS_NOEXEC,
                    }
                    continue;
                }
            }
            _ => {
                return Err(invalid(format!(
                    "unsupported tmpfs volume option o={field:?}: use size, mode, uid, gid, \
                     nr_inodes, nr_blocks, ro, nosuid, nodev or noexec"
                )));
            }
        };
        if !ok {
            return Err(invalid(format!("invalid tmpfs volume option o={field:?}")));
        }
        data.push((*field).to_owned());
    }
    Ok(Backing::Tmpfs {
        flags,
        data: data.join(","),
    })
}

/// A volume the store holds, with the containers whose mount of it is live now.
#[derive(Debug)]
struct Held {
    record: VolumeRecord,
    backing: Backing,
    mounted_for: HashSet<String>,
}

/// The volumes of this host, on disk and in memory.
#[derive(Debug)]
pub(crate) struct VolumeStore {
    root: PathBuf,
    /// Scratch mounts of image root filesystems for copy-up.
    scratch: PathBuf,
    held: Mutex<HashMap<String, Held>>,
    /// One copy-up at a time, so two containers created at once never both fill a volume.
    copy_up: tokio::sync::Mutex<()>,
}

/// Now, to the second, as Docker shows a volume's CreatedAt.
fn now_text() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn new_volume_name() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether `path` is a mount point, from this process's mount table.
fn is_mount_point(path: &Path) -> bool {
    let Ok(table) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    table.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|field| unescape_mountinfo(field) == wanted)
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unmount(path: &Path) {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(error) => tracing::warn!(path = %path.display(), %error, "cannot unmount a volume"),
    }
}

/// Bytes in the regular files under `path` (what removing it gives back), links not followed.
fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| tree_size(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

fn remove_tree(path: &Path) {
    // A tmpfs left mounted by a crash must not be deleted through.
    unmount(&path.join(DATA_DIR));
    if let Err(error) = fs::remove_dir_all(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "cannot delete a removed volume");
    }
}

impl VolumeStore {
    /// Opens `root` (created 0700 if missing), sweeps what an interrupted create or remove
    /// left, and loads every volume. A volume whose metadata cannot be read is reported and
    /// left on disk untouched.
    pub(crate) fn open(root: &Path, scratch: &Path) -> Result<VolumeStore, EngineError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| EngineError::io("create", root, e))?;
        let mut held = HashMap::new();
        let entries = fs::read_dir(root).map_err(|e| EngineError::io("read", root, e))?;
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(CREATING) || name.starts_with(REMOVING) {
                tracing::info!(path = %path.display(), "removing what an interrupted volume create or remove left");
                remove_tree(&path);
                continue;
            }
            match load_record(&path, &name) {
                Ok((record, backing)) => {
                    held.insert(
                        name,
                        Held {
                            record,
                            backing,
                            mounted_for: HashSet::new(),
                        },
                    );
                }
                Err(why) => {
                    tracing::error!(path = %path.display(), %why, "volume ignored");
                }
            }
        }
        sweep_scratch(scratch);
        Ok(VolumeStore {
            root: root.to_owned(),
            scratch: scratch.to_owned(),
            held: Mutex::new(held),
            copy_up: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        // A panic while holding the lock leaves a consistent map (every change is one insert
        // or remove), so carry on with it.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn volume_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `<data-root>/volumes/<name>/_data`.
    pub(crate) fn mountpoint(&self, name: &str) -> PathBuf {
        self.volume_dir(name).join(DATA_DIR)
    }

    /// Creates a volume (a random name when `name` is `None`), or returns the existing one of
    /// that name when it was asked for with the same options and labels (or none). The bool
    /// says whether it was created.
    pub(crate) fn create(
        &self,
        name: Option<&str>,
        labels: BTreeMap<String, String>,
        options: BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<(VolumeRecord, bool), EngineError> {
        let name = match name {
            Some(name) => {
                shoal_api::validate::volume_name(name).map_err(|e| invalid(e.to_string()))?;
                name.to_owned()
            }
            None => new_volume_name(),
        };
        for key in labels.keys() {
            shoal_api::validate::label_key(key).map_err(|e| invalid(e.to_string()))?;
        }
        let backing = parse_options(&options)?;
        if let Backing::Bind { device, .. } = &backing {
            check_device(device)?;
        }
        let mut held = self.lock();
        if let Some(existing) = held.get(&name) {
            let same = (options.is_empty() || options == existing.record.options)
                && (labels.is_empty() || labels == existing.record.labels);
            if !same {
                return Err(EngineError::Conflict(format!(
                    "volume {name} already exists with other options or labels: remove it first or choose another name"
                )));
            }
            return Ok((existing.record.clone(), false));
        }
        let record = VolumeRecord {
            format: FORMAT,
            name: name.clone(),
            created_at: now_text(),
            labels,
            options,
            anonymous,
        };
        self.write_new(&record)?;
        held.insert(
            name,
            Held {
                record: record.clone(),
                backing,
                mounted_for: HashSet::new(),
            },
        );
        tracing::info!(volume = %record.name, anonymous, "volume created");
        Ok((record, true))
    }

    /// Builds the volume in a scratch directory and renames it into place, never over another.
    fn write_new(&self, record: &VolumeRecord) -> Result<(), EngineError> {
        let staging = self.root.join(format!("{CREATING}{}", new_volume_name()));
        let target = self.volume_dir(&record.name);
        let build = || -> std::io::Result<()> {
            fs::DirBuilder::new().mode(0o755).create(&staging)?;
            fs::DirBuilder::new()
                .mode(0o755)
                .create(staging.join(DATA_DIR))?;
            let json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
            let mut file = OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(staging.join(METADATA_FILE))?;
            file.write_all(&json)?;
            file.sync_all()?;
            fsync_dir(&staging)?;
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &staging,
                nix::fcntl::AT_FDCWD,
                &target,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )
            .map_err(std::io::Error::from)?;
            fsync_dir(&self.root)
        };
        build().map_err(|e| {
            let _ = fs::remove_dir_all(&staging);
            EngineError::io("create volume", &target, e)
        })
    }

    pub(crate) fn get(&self, name: &str) -> Result<VolumeRecord, EngineError> {
        self.lock()
            .get(name)
            .map(|h| h.record.clone())
            .ok_or_else(|| EngineError::NoSuchVolume(name.to_owned()))
    }

    pub(crate) fn list(&self) -> Vec<VolumeRecord> {
        let mut list: Vec<VolumeRecord> = self.lock().values().map(|h| h.record.clone()).collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Takes the volume out of the store (the caller has checked that no container uses it)
    /// and returns its directory, renamed aside, for the caller to delete off the async path.
    pub(crate) fn detach(&self, name: &str) -> Result<PathBuf, EngineError> {
        let mut held = self.lock();
        let Some(volume) = held.get(name) else {
            return Err(EngineError::NoSuchVolume(name.to_owned()));
        };
        if !volume.mounted_for.is_empty() {
            return Err(EngineError::Conflict(format!(
                "remove {name}: volume is in use"
            )));
        }
        if matches!(volume.backing, Backing::Tmpfs { .. }) {
            unmount(&self.mountpoint(name));
        }
        let aside = self
            .root
            .join(format!("{REMOVING}{name}-{}", &new_volume_name()[..12]));
        fs::rename(self.volume_dir(name), &aside)
            .and_then(|()| fsync_dir(&self.root))
            .map_err(|e| EngineError::io("remove volume", &self.volume_dir(name), e))?;
        held.remove(name);
        tracing::info!(volume = %name, "volume removed");
        Ok(aside)
    }

    /// The host directory container `id` binds for volume `name`, mounting a tmpfs-backed
    /// volume for its first user; the bool says the volume itself is read-only.
    fn acquire(&self, name: &str, id: &str) -> Result<(PathBuf, bool), EngineError> {
        let mut held = self.lock();
        let volume = held
            .get_mut(name)
            .ok_or_else(|| EngineError::NoSuchVolume(name.to_owned()))?;
        let mountpoint = self.mountpoint(name);
        match &volume.backing {
            Backing::Directory => Ok((mountpoint, false)),
            Backing::Bind { device, read_only } => {
                check_device(device)?;
                Ok((device.clone(), *read_only))
            }
            Backing::Tmpfs { flags, data } => {
                if volume.mounted_for.is_empty() && !is_mount_point(&mountpoint) {
                    let data = (!data.is_empty()).then_some(data.as_str());
                    nix::mount::mount(Some("tmpfs"), &mountpoint, Some("tmpfs"), *flags, data)
                        .map_err(|e| {
                            EngineError::Internal(format!(
                                "cannot mount the tmpfs of volume {name}: {}",
                                e.desc()
                            ))
                        })?;
                }
                volume.mounted_for.insert(id.to_owned());
                Ok((mountpoint, flags.contains(MsFlags::MS_RDONLY)))
            }
        }
    }

    /// Container `id` no longer runs: a tmpfs-backed volume it was the last user of is
    /// unmounted (its content goes, as with Docker's local driver).
    pub(crate) fn release(&self, id: &str) {
        let mut held = self.lock();
        for (name, volume) in held.iter_mut() {
            if volume.mounted_for.remove(id)
                && volume.mounted_for.is_empty()
                && matches!(volume.backing, Backing::Tmpfs { .. })
            {
                unmount(&self.mountpoint(name));
            }
        }
    }

    /// After a restart: re-counts the live users of tmpfs-backed volumes and unmounts the
    /// ones nobody uses any more.
    fn settle_mounts(&self, live: &HashMap<String, Vec<String>>) {
        let mut held = self.lock();
        for (name, volume) in held.iter_mut() {
            if !matches!(volume.backing, Backing::Tmpfs { .. }) {
                continue;
            }
            volume.mounted_for = live.get(name).into_iter().flatten().cloned().collect();
            let mountpoint = self.mountpoint(name);
            if volume.mounted_for.is_empty() && is_mount_point(&mountpoint) {
                unmount(&mountpoint);
            }
        }
    }

    /// Where copy-up writes for this volume, when it may: not into a tmpfs (its content would
    /// vanish before any container saw it).
    fn copy_up_destination(&self, name: &str) -> Option<PathBuf> {
        let held = self.lock();
        match &held.get(name)?.backing {
            Backing::Directory => Some(self.mountpoint(name)),
            Backing::Bind { device, .. } => Some(device.clone()),
            Backing::Tmpfs { .. } => None,
        }
    }
}

/// Copy-up views a crash left mounted: unmounted first, so deleting never reaches through.
fn sweep_scratch(scratch: &Path) {
    let Ok(entries) = fs::read_dir(scratch) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        unmount(&path.join("rootfs"));
        if let Err(error) = fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), %error, "cannot remove a copy-up scratch directory");
        }
    }
}

fn check_device(device: &Path) -> Result<(), EngineError> {
    match fs::metadata(device) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(invalid(format!(
            "volume device {} is not a directory",
            device.display()
        ))),
        Err(_) => Err(invalid(format!(
            "volume device {} does not exist",
            device.display()
        ))),
    }
}

fn load_record(dir: &Path, name: &str) -> Result<(VolumeRecord, Backing), String> {
    let path = dir.join(METADATA_FILE);
    let bytes = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let record: VolumeRecord = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is corrupt: {e}", path.display()))?;
    if record.format != FORMAT {
        return Err(format!(
            "{} has format {}, this daemon reads {FORMAT}",
            path.display(),
            record.format
        ));
    }
    if record.name != name || shoal_api::validate::volume_name(name).is_err() {
        return Err(format!(
            "{} names volume {:?}, not {name:?}",
            path.display(),
            record.name
        ));
    }
    let backing = parse_options(&record.options).map_err(|e| e.to_string())?;
    Ok((record, backing))
}

// Engine: container mounts --------------------------------------------------------------------

/// A container's mounts as resolved at create, and what to copy into new volumes.
pub(crate) struct ResolvedMounts {
    pub(crate) mounts: Vec<ContainerMount>,
    /// (volume, destination) pairs to fill from the image when the volume is empty.
    copy_up: Vec<(String, String)>,
    /// Volumes this create made, removed again if the create fails.
    pub(crate) created: Vec<String>,
}

/// `/a//b/./c/` → `/a/b/c`; `None` for a relative path or one that climbs with `..`.
fn clean_target(target: &str) -> Option<String> {
    if !target.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            other => parts.push(other),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// Container IDs by the volumes they use.
fn volume_users(table: &HashMap<String, Entry>) -> HashMap<String, Vec<String>> {
    let mut users: HashMap<String, Vec<String>> = HashMap::new();
    for entry in table.values() {
        for mount in entry.info.mounts.iter().filter(|m| m.r#type == "volume") {
            users
                .entry(mount.name.clone())
                .or_default()
                .push(entry.info.id.clone());
        }
    }
    for ids in users.values_mut() {
        ids.sort();
        ids.dedup();
    }
    users
}

impl Engine {
    /// Checks the spec's mounts and makes the volumes they name (and the image's VOLUMEs not
    /// covered by a mount). Called with the container table locked, so no `volume rm` slips
    /// between the volume being made and the container that uses it being recorded.
    pub(crate) fn resolve_mounts(
        &self,
        spec: &ContainerSpec,
        image_volumes: &[String],
    ) -> Result<ResolvedMounts, EngineError> {
        let mut seen = HashSet::new();
        let mut targets = Vec::new();
        for mount in &spec.mounts {
            let target = clean_target(&mount.target).ok_or_else(|| {
                invalid(format!(
                    "invalid mount config: the destination {:?} must be an absolute path without '..'",
                    mount.target
                ))
            })?;
            if target == "/" {
                return Err(invalid(
                    "invalid mount config: the destination can't be '/'".to_owned(),
                ));
            }
            if !seen.insert(target.clone()) {
                return Err(invalid(format!("duplicate mount point: {target}")));
            }
            check_mount(mount)?;
            targets.push(target);
        }
        let mut resolved = ResolvedMounts {
            mounts: Vec::new(),
            copy_up: Vec::new(),
            created: Vec::new(),
        };
        let result = self.make_volumes(spec, &targets, image_volumes, &seen, &mut resolved);
        if let Err(error) = result {
            self.discard_volumes(&resolved.created);
            return Err(error);
        }
        Ok(resolved)
    }

    fn make_volumes(
        &self,
        spec: &ContainerSpec,
        targets: &[String],
        image_volumes: &[String],
        explicit: &HashSet<String>,
        resolved: &mut ResolvedMounts,
    ) -> Result<(), EngineError> {
        for (mount, target) in spec.mounts.iter().zip(targets) {
            let mut entry = ContainerMount {
                destination: target.clone(),
                rw: !mount.read_only,
                ..Default::default()
            };
            match mount.kind() {
                mount_spec::Kind::Bind => {
                    entry.r#type = "bind".into();
                    entry.source = mount.source.clone();
                }
                mount_spec::Kind::Tmpfs => entry.r#type = "tmpfs".into(),
                mount_spec::Kind::Volume => {
                    let anonymous = mount.source.is_empty();
                    let name = (!anonymous).then_some(mount.source.as_str());
                    let (record, created) =
                        self.volumes
                            .create(name, BTreeMap::new(), BTreeMap::new(), anonymous)?;
                    if created {
                        resolved.created.push(record.name.clone());
                    }
                    if !mount.volume_nocopy {
                        resolved.copy_up.push((record.name.clone(), target.clone()));
                    }
                    entry.r#type = "volume".into();
                    entry.source = self.volumes.mountpoint(&record.name).display().to_string();
                    entry.name = record.name;
                    entry.driver = DRIVER.into();
                    entry.anonymous = anonymous;
                }
            }
            resolved.mounts.push(entry);
        }
        for path in image_volumes {
            let Some(target) = clean_target(path).filter(|t| t != "/") else {
                tracing::warn!(path, "the image's VOLUME is not an absolute path; ignored");
                continue;
            };
            if explicit.contains(&target) || resolved.mounts.iter().any(|m| m.destination == target)
            {
                continue;
            }
            let (record, _) = self
                .volumes
                .create(None, BTreeMap::new(), BTreeMap::new(), true)?;
            resolved.created.push(record.name.clone());
            resolved.copy_up.push((record.name.clone(), target.clone()));
            resolved.mounts.push(ContainerMount {
                r#type: "volume".into(),
                source: self.volumes.mountpoint(&record.name).display().to_string(),
                name: record.name,
                destination: target,
                rw: true,
                driver: DRIVER.into(),
                anonymous: true,
            });
        }
        Ok(())
    }

    /// Removes volumes a failed create made (nothing can use them yet).
    pub(crate) fn discard_volumes(&self, names: &[String]) {
        for name in names {
            if let Ok(aside) = self.volumes.detach(name) {
                remove_tree(&aside);
            }
        }
    }

    /// Fills each new, empty volume from the image's content at its mount point, through a
    /// read-only view of the image's layers mounted for the purpose.
    pub(crate) async fn copy_up(
        &self,
        resolved: &ResolvedMounts,
        layer_dirs: &[PathBuf],
    ) -> Result<(), EngineError> {
        if resolved.copy_up.is_empty() || layer_dirs.is_empty() {
            return Ok(());
        }
        let _one_at_a_time = self.volumes.copy_up.lock().await;
        let work: Vec<(PathBuf, String)> = resolved
            .copy_up
            .iter()
            .filter_map(|(name, target)| {
                let destination = self.volumes.copy_up_destination(name)?;
                let empty = fs::read_dir(&destination)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
                empty.then(|| (destination, target.clone()))
            })
            .collect();
        if work.is_empty() {
            return Ok(());
        }
        let scratch = self
            .volumes
            .scratch
            .join(format!("copy-up-{}", &new_volume_name()[..16]));
        let mut lower = layer_dirs.to_vec();
        lower.reverse();
        tokio::task::spawn_blocking(move || copy_up_blocking(&scratch, &lower, &work))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?
    }

    /// The bind mounts of container `id`'s volumes, mounting tmpfs-backed ones as needed.
    pub(crate) fn volume_mounts(
        &self,
        id: &str,
        mounts: &[ContainerMount],
    ) -> Result<Vec<MountConfig>, EngineError> {
        let mut configs = Vec::new();
        for mount in mounts.iter().filter(|m| m.r#type == "volume") {
            let (source, read_only) = self.volumes.acquire(&mount.name, id)?;
            configs.push(MountConfig::Bind {
                source,
                target: mount.destination.clone().into(),
                readonly: read_only || !mount.rw,
            });
        }
        Ok(configs)
    }

    /// Removes the anonymous volumes of a removed container that no other container uses.
    pub(crate) async fn remove_anonymous_volumes(&self, mounts: &[ContainerMount]) {
        let mut removed = Vec::new();
        {
            let table = self.containers.lock().await;
            let users = volume_users(&table);
            for mount in mounts
                .iter()
                .filter(|m| m.r#type == "volume" && m.anonymous)
            {
                if users.contains_key(&mount.name) {
                    continue;
                }
                match self.volumes.detach(&mount.name) {
                    Ok(aside) => removed.push(aside),
                    Err(EngineError::NoSuchVolume(_)) => {}
                    Err(error) => {
                        tracing::warn!(volume = %mount.name, %error, "cannot remove an anonymous volume")
                    }
                }
            }
        }
        if !removed.is_empty() {
            let _ =
                tokio::task::spawn_blocking(move || removed.iter().for_each(|p| remove_tree(p)))
                    .await;
        }
    }

    /// After a restart: tmpfs-backed volumes stay mounted for the containers still running.
    pub(crate) fn settle_volume_mounts(&self, table: &HashMap<String, Entry>) {
        let mut live: HashMap<String, Vec<String>> = HashMap::new();
        for entry in table.values().filter(|e| e.shim.is_some()) {
            for mount in entry.info.mounts.iter().filter(|m| m.r#type == "volume") {
                live.entry(mount.name.clone())
                    .or_default()
                    .push(entry.info.id.clone());
            }
        }
        self.volumes.settle_mounts(&live);
    }

    // The Volumes API ------------------------------------------------------------------------

    fn volume_view(&self, record: VolumeRecord, used_by: Vec<String>) -> v1::Volume {
        v1::Volume {
            mountpoint: self.volumes.mountpoint(&record.name).display().to_string(),
            name: record.name,
            driver: DRIVER.into(),
            created_at: crate::parse_rfc3339(&record.created_at),
            labels: record.labels.into_iter().collect(),
            options: record.options.into_iter().collect(),
            scope: "local".into(),
            anonymous: record.anonymous,
            used_by,
        }
    }

    pub async fn create_volume(
        &self,
        request: v1::CreateVolumeRequest,
    ) -> Result<v1::Volume, EngineError> {
        if !matches!(request.driver.as_str(), "" | DRIVER) {
            return Err(invalid(format!(
                "volume driver {:?} is not supported: only the local driver is",
                request.driver
            )));
        }
        let table = self.containers.lock().await;
        let name = (!request.name.is_empty()).then_some(request.name.as_str());
        let (record, _) = self.volumes.create(
            name,
            request.labels.into_iter().collect(),
            request.options.into_iter().collect(),
            false,
        )?;
        let users = volume_users(&table)
            .remove(&record.name)
            .unwrap_or_default();
        Ok(self.volume_view(record, users))
    }

    pub async fn inspect_volume(&self, name: &str) -> Result<v1::Volume, EngineError> {
        let table = self.containers.lock().await;
        let record = self.volumes.get(name)?;
        let users = volume_users(&table).remove(name).unwrap_or_default();
        Ok(self.volume_view(record, users))
    }

    pub async fn list_volumes(
        &self,
        filters: &[v1::VolumeFilter],
    ) -> Result<Vec<v1::Volume>, EngineError> {
        let filter = VolumeFilters::parse(filters)?;
        let table = self.containers.lock().await;
        let mut users = volume_users(&table);
        drop(table);
        Ok(self
            .volumes
            .list()
            .into_iter()
            .map(|record| {
                let used_by = users.remove(&record.name).unwrap_or_default();
                self.volume_view(record, used_by)
            })
            .filter(|volume| filter.matches(volume))
            .collect())
    }

    /// Refused while any container, running or not, uses the volume.
    pub async fn remove_volume(&self, name: &str, force: bool) -> Result<(), EngineError> {
        let aside = {
            let table = self.containers.lock().await;
            if let Some(ids) = volume_users(&table).get(name) {
                return Err(EngineError::Conflict(format!(
                    "remove {name}: volume is in use - [{}]",
                    ids.join(", ")
                )));
            }
            match self.volumes.detach(name) {
                Ok(aside) => aside,
                Err(EngineError::NoSuchVolume(_)) if force => return Ok(()),
                Err(error) => return Err(error),
            }
        };
        tokio::task::spawn_blocking(move || remove_tree(&aside))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))
    }

    /// Removes the volumes no container uses: anonymous ones, or all when `all`.
    pub async fn prune_volumes(&self, all: bool) -> Result<v1::PruneVolumesResponse, EngineError> {
        let mut removed = Vec::new();
        {
            let table = self.containers.lock().await;
            let users = volume_users(&table);
            for record in self.volumes.list() {
                if users.contains_key(&record.name) || !(all || record.anonymous) {
                    continue;
                }
                match self.volumes.detach(&record.name) {
                    Ok(aside) => removed.push((record.name, aside)),
                    Err(error) => {
                        tracing::warn!(volume = %record.name, %error, "prune skipped a volume")
                    }
                }
            }
        }
        tokio::task::spawn_blocking(move || {
            let mut response = v1::PruneVolumesResponse::default();
            for (name, aside) in removed {
                response.reclaimed_bytes += tree_size(&aside.join(DATA_DIR));
                remove_tree(&aside);
                response.deleted.push(name);
            }
            response
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))
    }
}

/// Refuses a mount the daemon cannot serve, before anything is made for it.
fn check_mount(mount: &MountSpec) -> Result<(), EngineError> {
    match mount.kind() {
        mount_spec::Kind::Bind => {
            if !Path::new(&mount.source).is_absolute() {
                return Err(invalid(format!(
                    "invalid mount config for type \"bind\": the source {:?} must be an absolute path",
                    mount.source
                )));
            }
            // Docker's -v makes a missing source directory; --mount refuses it.
            if !mount.create_source && !Path::new(&mount.source).exists() {
                return Err(invalid(format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {}",
                    mount.source
                )));
            }
            if mount.volume_nocopy {
                return Err(invalid(
                    "invalid mount config for type \"bind\": volume-nocopy applies only to volumes"
                        .to_owned(),
                ));
            }
        }
        mount_spec::Kind::Volume if !mount.source.is_empty() => {
            shoal_api::validate::volume_name(&mount.source).map_err(|e| invalid(e.to_string()))?;
        }
        _ => {}
    }
    Ok(())
}

fn copy_up_blocking(
    scratch: &Path,
    lower: &[PathBuf],
    work: &[(PathBuf, String)],
) -> Result<(), EngineError> {
    let rootfs = scratch.join("rootfs");
    let upper = scratch.join("upper");
    let workdir = scratch.join("work");
    for dir in [&rootfs, &upper, &workdir] {
        fs::create_dir_all(dir).map_err(|e| EngineError::io("create", dir, e))?;
    }
    let result = shoal_runtime::container::mount_overlay_rootfs(lower, &upper, &workdir, &rootfs)
        .map_err(EngineError::from)
        .and_then(|()| {
            // The view is only read: no write reaches the layers or the scratch upper dir.
            let _ = nix::mount::mount(
                None::<&str>,
                &rootfs,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
            let copied = work.iter().try_for_each(|(destination, target)| {
                match copy_up::copy_image_content(&rootfs, target, destination) {
                    Ok(true) => {
                        tracing::debug!(target, volume = %destination.display(), "copied image content into a new volume");
                        Ok(())
                    }
                    Ok(false) => Ok(()),
                    Err(e) => Err(EngineError::Internal(format!(
                        "cannot copy the image's {target} into its volume: {e}"
                    ))),
                }
            });
            unmount(&rootfs);
            copied
        });
    let _ = fs::remove_dir_all(scratch);
    result
}

/// `volume ls --filter`: keys combine with AND, values of one key with OR, as Docker's.
#[derive(Debug, Default)]
struct VolumeFilters {
    dangling: Option<bool>,
    names: Vec<String>,
    labels: Vec<(String, Option<String>)>,
    drivers: Vec<String>,
}

impl VolumeFilters {
    fn parse(filters: &[v1::VolumeFilter]) -> Result<VolumeFilters, EngineError> {
        let mut parsed = VolumeFilters::default();
        for filter in filters {
            let value = filter.value.clone();
            match filter.key.as_str() {
                "dangling" => {
                    let dangling = match value.to_ascii_lowercase().as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(invalid(format!(
                                "invalid filter 'dangling={value}': use true or false"
                            )));
                        }
                    };
                    if parsed.dangling.is_some_and(|d| d != dangling) {
                        return Err(invalid(
                            "filters dangling=true and dangling=false cannot be combined".into(),
                        ));
                    }
                    parsed.dangling = Some(dangling);
                }
                "name" => parsed.names.push(value),
                "label" => parsed.labels.push(match value.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (value, None),
                }),
                "driver" => parsed.drivers.push(value),
                other => {
                    return Err(invalid(format!(
                        "invalid filter {other:?}: use dangling, name, label or driver"
                    )));
                }
            }
        }
        Ok(parsed)
    }

    fn matches(&self, volume: &v1::Volume) -> bool {
        self.dangling.is_none_or(|d| d == volume.used_by.is_empty())
            && (self.names.is_empty()
                || self.names.iter().any(|n| volume.name.contains(n.as_str())))
            && self.labels.iter().all(|(key, value)| match value {
                Some(value) => volume.labels.get(key) == Some(value),
                None => volume.labels.contains_key(key),
            })
            && (self.drivers.is_empty() || self.drivers.contains(&volume.driver))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn store(dir: &Path) -> VolumeStore {
        VolumeStore::open(&dir.join("volumes"), &dir.join("scratch")).unwrap()
    }

    #[test]
    fn metadata_survives_reopen_and_interrupted_work_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let volumes = store(dir.path());
        let labels = options(&[("tier", "db")]);
        let (record, created) = volumes
            .create(Some("data"), labels.clone(), BTreeMap::new(), false)
            .unwrap();
        assert!(created);
        assert!(dir.path().join("volumes/data/_data").is_dir());
        let (anonymous, _) = volumes
            .create(None, BTreeMap::new(), BTreeMap::new(), true)
            .unwrap();
        assert_eq!(anonymous.name.len(), 64);
        assert!(anonymous.name.bytes().all(|b| b.is_ascii_hexdigit()));
        // The same request again is the same volume; other labels are a conflict.
        let (again, created) = volumes
            .create(Some("data"), BTreeMap::new(), BTreeMap::new(), false)
            .unwrap();
        assert!(!created);
        assert_eq!(again, record);
        assert!(matches!(
            volumes.create(Some("data"), options(&[("x", "y")]), BTreeMap::new(), false),
            Err(EngineError::Conflict(_))
        ));

        // What a kill -9 in the middle of a create or remove leaves.
        fs::create_dir_all(dir.path().join("volumes/.create-abc/_data")).unwrap();
        fs::create_dir_all(dir.path().join("volumes/.remove-old-123/_data")).unwrap();
        // A volume whose metadata is damaged is ignored, not deleted.
        fs::create_dir_all(dir.path().join("volumes/broken/_data")).unwrap();
        fs::write(dir.path().join("volumes/broken/volume.json"), b"{not json").unwrap();
        drop(volumes);

        let volumes = store(dir.path());
        let names: Vec<String> = volumes.list().into_iter().map(|r| r.name).collect();
        let mut expected = vec!["data".to_owned(), anonymous.name.clone()];
        expected.sort();
        assert_eq!(names, expected);
        assert_eq!(volumes.get("data").unwrap(), record);
        assert!(volumes.get(&anonymous.name).unwrap().anonymous);
        assert!(!dir.path().join("volumes/.create-abc").exists());
        assert!(!dir.path().join("volumes/.remove-old-123").exists());
        assert!(dir.path().join("volumes/broken/volume.json").exists());

        let aside = volumes.detach("data").unwrap();
        remove_tree(&aside);
        assert!(!dir.path().join("volumes/data").exists());
        assert!(matches!(
            volumes.get("data"),
            Err(EngineError::NoSuchVolume(_))
        ));
        drop(volumes);
        assert!(store(dir.path()).get("data").is_err());
    }

    #[test]
    fn names_are_validated_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let volumes = store(dir.path());
        for bad in ["a", "-x", ".hidden", "a/b", "..", "a b", &"x".repeat(256)] {
            let err = volumes
                .create(Some(bad), BTreeMap::new(), BTreeMap::new(), false)
                .unwrap_err();
            assert!(
                err.to_string().starts_with("invalid volume name"),
                "{bad}: {err}"
            );
        }
        assert!(volumes.list().is_empty());
        let entries: Vec<_> = fs::read_dir(dir.path().join("volumes")).unwrap().collect();
        assert!(entries.is_empty());
    }

    #[test]
    fn driver_options_follow_the_local_driver() {
        assert_eq!(parse_options(&options(&[])).unwrap(), Backing::Directory);
        let tmpfs = parse_options(&options(&[
            ("type", "tmpfs"),
            ("device", "tmpfs"),
            ("o", "size=64m,uid=1000,mode=1777,noexec"),
        ]))
        .unwrap();
        assert_eq!(
            tmpfs,
            Backing::Tmpfs {
                flags: MsFlags::MS_NOEXEC,
                data: "size=64m,uid=1000,mode=1777".into()
            }
        );
        let bind = parse_options(&options(&[
            ("type", "none"),
            ("o", "bind,ro"),
            ("device", "/srv/data"),
        ]))
        .unwrap();
        assert_eq!(
            bind,
            Backing::Bind {
                device: "/srv/data".into(),
                read_only: true
            }
        );
        let refused = [
            (vec![("colour", "blue")], "invalid volume option \"colour\""),
            (vec![("device", "/x")], "\"type\" is required"),
            (
                vec![("type", "nfs"), ("o", "addr=1.2.3.4")],
                "unsupported volume type \"nfs\"",
            ),
            (
                vec![("type", "tmpfs"), ("o", "size=lots")],
                "invalid tmpfs volume option",
            ),
            (
                vec![("type", "tmpfs"), ("o", "exec,huge=1")],
                "unsupported tmpfs volume option",
            ),
            (
                vec![("type", "tmpfs"), ("device", "/dev/sda")],
                "takes device=tmpfs",
            ),
            (vec![("type", "none"), ("device", "/srv")], "needs o=bind"),
            (
                vec![("type", "none"), ("o", "bind"), ("device", "rel")],
                "absolute host path",
            ),
        ];
        for (pairs, want) in refused {
            let err = parse_options(&options(&pairs)).unwrap_err().to_string();
            assert!(err.contains(want), "{pairs:?}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn a_bind_volume_needs_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let volumes = store(dir.path());
        let missing = dir.path().join("missing");
        let err = volumes
            .create(
                Some("bound"),
                BTreeMap::new(),
                options(&[
                    ("type", "none"),
                    ("o", "bind"),
                    ("device", missing.to_str().unwrap()),
                ]),
                false,
            )
            .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let device = dir.path().join("device");
        fs::create_dir(&device).unwrap();
        let bind = options(&[
            ("type", "none"),
            ("o", "bind"),
            ("device", device.to_str().unwrap()),
        ]);
        volumes
            .create(Some("bound"), BTreeMap::new(), bind, false)
            .unwrap();
        assert_eq!(
            volumes.acquire("bound", "c1").unwrap(),
            (device.clone(), false)
        );
        assert_eq!(volumes.copy_up_destination("bound"), Some(device));
    }

    #[test]
    fn filters() {
        let volume = |name: &str, used: bool, labels: &[(&str, &str)]| v1::Volume {
            name: name.into(),
            driver: "local".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            used_by: if used { vec!["c".into()] } else { vec![] },
            ..Default::default()
        };
        let f = |pairs: &[(&str, &str)]| {
            VolumeFilters::parse(
                &pairs
                    .iter()
                    .map(|(k, v)| v1::VolumeFilter {
                        key: k.to_string(),
                        value: v.to_string(),
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let db = volume("db-data", false, &[("tier", "db")]);
        let web = volume("web", true, &[]);
        let dangling = f(&[("dangling", "true")]).unwrap();
        assert!(dangling.matches(&db) && !dangling.matches(&web));
        let named = f(&[("name", "data"), ("name", "we")]).unwrap();
        assert!(named.matches(&db) && named.matches(&web));
        let labelled = f(&[("label", "tier=db")]).unwrap();
        assert!(labelled.matches(&db) && !labelled.matches(&web));
        assert!(f(&[("label", "tier")]).unwrap().matches(&db));
        assert!(!f(&[("label", "tier=web")]).unwrap().matches(&db));
        assert!(f(&[("colour", "x")]).is_err());
        assert!(f(&[("dangling", "maybe")]).is_err());
    }

    #[test]
    fn targets_are_cleaned() {
        assert_eq!(clean_target("/data/").as_deref(), Some("/data"));
        assert_eq!(clean_target("//a/./b").as_deref(), Some("/a/b"));
        assert_eq!(clean_target("/").as_deref(), Some("/"));
        assert_eq!(clean_target("rel"), None);
        assert_eq!(clean_target("/a/../b"), None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
    }
}
