//! Overlay root filesystems: mounting image layers plus a writable upper directory, within the
//! one-page limit of `mount(2)` options.
//!
//! When the option string would pass a page (minus 512 bytes of slack, as containerd keeps), the
//! paths are made relative to their longest common parent and the mount is done from a thread
//! that has `unshare(CLONE_FS)` and `chdir`ed there: the working directory of the rest of the
//! process is untouched, so this is safe from the async daemon as well as from the shim. If even
//! that is too long, numbered short symlinks to the layers (Docker's `l/` idea) stand in for them.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use serde::{Deserialize, Serialize};

use super::ContainerError;

/// The layers of an overlay rootfs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayRootfs {
    /// Read-only layers, topmost first (the order overlayfs's `lowerdir` wants).
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|n| n as usize)
        .unwrap_or(4096)
}

fn options(lower: &[PathBuf], upper: &Path, work: &Path) -> String {
    let lowers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    )
}

/// The longest directory all paths live under.
fn common_parent(paths: &[&Path]) -> PathBuf {
    let mut common: Option<PathBuf> = None;
    for p in paths {
        let parent = p.parent().unwrap_or(Path::new("/"));
        common = Some(match common {
            None => parent.to_path_buf(),
            Some(c) => c
                .components()
                .zip(parent.components())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a)
                .collect(),
        });
    }
    common.unwrap_or_else(|| PathBuf::from("/"))
}

/// Mounts an overlay of `lower_dirs` (topmost first) and `upper` at `target`.
pub fn mount_overlay_rootfs(
    lower_dirs: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), ContainerError> {
    if lower_dirs.is_empty() {
        return Err(ContainerError::Overlay("no lower layers".into()));
    }
    let all: Vec<&Path> = lower_dirs
        .iter()
        .map(PathBuf::as_path)
        .chain([upper, work])
        .collect();
    for p in &all {
        let s = p.to_string_lossy();
        if !p.is_absolute() || s.contains(':') || s.contains(',') {
            return Err(ContainerError::Overlay(format!(
                "layer path {s} must be absolute and free of ':' and ','"
            )));
        }
    }
    std::fs::create_dir_all(target).map_err(|e| ContainerError::io("mkdir", target, e))?;
    let limit = page_size() - 512;
    let data = options(lower_dirs, upper, work);
    if data.len() < limit {
        return mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| ContainerError::sys("mount overlay", e));
    }
    let target = if target.is_absolute() {
        target.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| ContainerError::io("getcwd", target, e))?
            .join(target)
    };
    let base = common_parent(&all);
    let rel = |p: &Path| p.strip_prefix(&base).unwrap_or(p).to_path_buf();
    let short_lower: Vec<PathBuf> = lower_dirs.iter().map(|p| rel(p)).collect();
    let short = options(&short_lower, &rel(upper), &rel(work));
    if short.len() < limit {
        tracing::debug!(base = %base.display(), bytes = short.len(), "overlay options past a page: mounting relative");
        return mount_from(base, target, short);
    }
    // Still too long: Docker's trick of short symlinks (`l/<id>`), here numbered, in a scratch
    // directory beside the target. overlayfs resolves them at mount time, so they go right after.
    let links = target.with_file_name(format!(
        ".{}-layers",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("rootfs")
    ));
    let _ = std::fs::remove_dir_all(&links);
    std::fs::create_dir_all(&links).map_err(|e| ContainerError::io("mkdir", &links, e))?;
    let mut names = Vec::new();
    for (i, p) in all.iter().enumerate() {
        let name = format!("{i:x}");
        std::os::unix::fs::symlink(p, links.join(&name))
            .map_err(|e| ContainerError::io("symlink", &links.join(&name), e))?;
        names.push(PathBuf::from(name));
    }
    let n = lower_dirs.len();
    let linked = options(&names[..n], &names[n], &names[n + 1]);
    let result = if linked.len() >= page_size() {
        Err(ContainerError::Overlay(format!(
            "{n} layers need {} bytes of mount options, more than a page",
            linked.len()
        )))
    } else {
        tracing::debug!(
            bytes = linked.len(),
            "overlay options past a page: mounting through short links"
        );
        mount_from(links.clone(), target, linked)
    };
    let _ = std::fs::remove_dir_all(&links);
    result
}

/// Mounts from a thread whose working directory is `dir`, so relative layer paths resolve there.
fn mount_from(dir: PathBuf, target: PathBuf, data: String) -> Result<(), ContainerError> {
    std::thread::spawn(move || -> Result<(), ContainerError> {
        unshare(CloneFlags::CLONE_FS).map_err(|e| ContainerError::sys("unshare CLONE_FS", e))?;
        std::env::set_current_dir(&dir).map_err(|e| ContainerError::io("chdir", &dir, e))?;
        mount(
            Some("overlay"),
            &target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| ContainerError::sys("mount overlay", e))
    })
    .join()
    .map_err(|_| ContainerError::Overlay("mount thread panicked".into()))?
}

/// Unmounts an overlay rootfs (lazily if something still holds it).
pub fn unmount_overlay_rootfs(target: &Path) -> Result<(), ContainerError> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => umount2(target, MntFlags::MNT_DETACH)
            .map_err(|e| ContainerError::sys("unmount rootfs", e)),
        Err(e) => Err(ContainerError::sys("unmount rootfs", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_parent_and_options() {
        let a = PathBuf::from("/var/lib/shoal/layers/aaa/diff");
        let b = PathBuf::from("/var/lib/shoal/layers/bbb/diff");
        let u = PathBuf::from("/var/lib/shoal/containers/c/upper");
        assert_eq!(
            common_parent(&[&a, &b, &u]),
            PathBuf::from("/var/lib/shoal")
        );
        assert_eq!(
            options(&[a.clone(), b.clone()], &u, Path::new("/w")),
            "lowerdir=/var/lib/shoal/layers/aaa/diff:/var/lib/shoal/layers/bbb/diff,upperdir=/var/lib/shoal/containers/c/upper,workdir=/w"
        );
    }

    #[test]
    fn refuses_separator_characters() {
        let t = tempfile::tempdir().unwrap();
        let bad = t.path().join("a:b");
        let err = mount_overlay_rootfs(&[bad], t.path(), t.path(), &t.path().join("m"));
        assert!(matches!(err, Err(ContainerError::Overlay(_))));
    }
}
