//! Copy-up: the image's content at a mount point copied into a new, empty volume, as Docker
//! does, keeping owners, modes, times, symlinks, hardlinks and device nodes.
//!
//! The image is hostile input. The mount point is resolved with `openat2(RESOLVE_IN_ROOT)`, so
//! a symlink on the way (`/data -> ../../../etc`) stays inside the image's root filesystem;
//! below it nothing is followed: every entry is opened relative to its parent's descriptor with
//! `O_NOFOLLOW`, and symlinks are recreated as symlinks, never read through. The destination is
//! written the same way, so a symlink planted in the volume cannot redirect a write either.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, open, openat, openat2, readlinkat};
use nix::sys::stat::{
    FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstat, fstatat, futimens, mkdirat,
    mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, symlinkat};

/// Deeper trees are refused: each level holds two descriptors open.
const MAX_DEPTH: usize = 200;

fn sys(op: &str, path: &Path, errno: Errno) -> io::Error {
    io::Error::new(
        io::Error::from(errno).kind(),
        format!("{op} {}: {}", path.display(), errno.desc()),
    )
}

/// Copies what `rootfs` holds at `target` (a path inside the container, resolved within
/// `rootfs` only) into `destination`, if `destination` is empty and `target` is a directory.
/// Returns whether anything was copied. On failure the destination is emptied again.
pub(crate) fn copy_image_content(
    rootfs: &Path,
    target: &str,
    destination: &Path,
) -> io::Result<bool> {
    let root = open(
        rootfs,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| sys("open", rootfs, e))?;
    let relative = target.trim_start_matches('/');
    let source = if relative.is_empty() {
        root
    } else {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_IN_ROOT
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        match openat2(&root, relative, how) {
            Ok(fd) => fd,
            // Nothing there, or not a directory: nothing to copy.
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(false),
            Err(e) => return Err(sys("open", &rootfs.join(relative), e)),
        }
    };
    let dest = open(
        destination,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| sys("open", destination, e))?;
    if !entry_names(dest.as_fd(), destination)?.is_empty() {
        return Ok(false);
    }
    let mut copier = Copier {
        dest_root: dest.try_clone()?,
        links: HashMap::new(),
    };
    let result = copier
        .copy_dir(source.as_fd(), dest.as_fd(), Path::new(""), 0)
        .and_then(|()| {
            let stat = fstat(&source).map_err(|e| sys("stat", Path::new(target), e))?;
            set_owner_mode_times(dest.as_fd(), &stat, destination)
        });
    match result {
        Ok(()) => Ok(true),
        Err(error) => {
            if let Err(cleanup) = empty_dir(dest.as_fd(), destination, 0) {
                tracing::warn!(path = %destination.display(), %cleanup, "cannot empty a volume after a failed copy-up");
            }
            Err(error)
        }
    }
}

/// The names in a directory, without `.` and `..`.
fn entry_names(dir: BorrowedFd<'_>, path: &Path) -> io::Result<Vec<CString>> {
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| sys("open", path, e))?;
    let mut listing = Dir::from_fd(fd).map_err(|e| sys("read", path, e))?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(|e| sys("read", path, e))?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn child_path(parent: &Path, name: &CStr) -> PathBuf {
    parent.join(OsStr::from_bytes(name.to_bytes()))
}

fn open_dir_nofollow(dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> io::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| sys("open", path, e))
}

fn times(stat: &FileStat) -> (TimeSpec, TimeSpec) {
    (
        TimeSpec::new(stat.st_atime, stat.st_atime_nsec),
        TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec),
    )
}

/// Owner before mode (a chown clears set-id bits), times last.
fn set_owner_mode_times(fd: BorrowedFd<'_>, stat: &FileStat, path: &Path) -> io::Result<()> {
    fchown(
        fd,
        Some(Uid::from_raw(stat.st_uid)),
        Some(Gid::from_raw(stat.st_gid)),
    )
    .map_err(|e| sys("chown", path, e))?;
    fchmod(fd, Mode::from_bits_truncate(stat.st_mode & 0o7777))
        .map_err(|e| sys("chmod", path, e))?;
    let (atime, mtime) = times(stat);
    futimens(fd, &atime, &mtime).map_err(|e| sys("set times of", path, e))
}

struct Copier {
    dest_root: OwnedFd,
    /// Files with several links already copied, by source (device, inode): their path under
    /// the destination, so the next link becomes a hardlink again.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Copier {
    fn copy_dir(
        &mut self,
        source: BorrowedFd<'_>,
        dest: BorrowedFd<'_>,
        relative: &Path,
        depth: usize,
    ) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(io::Error::other(format!(
                "{} is nested more than {MAX_DEPTH} directories deep",
                relative.display()
            )));
        }
        for name in entry_names(source, relative)? {
            let path = child_path(relative, &name);
            let stat = fstatat(source, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| sys("stat", &path, e))?;
            let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
            match kind {
                SFlag::S_IFDIR => {
                    mkdirat(dest, name.as_c_str(), Mode::from_bits_truncate(0o700))
                        .map_err(|e| sys("create", &path, e))?;
                    let from = open_dir_nofollow(source, &name, &path)?;
                    let to = open_dir_nofollow(dest, &name, &path)?;
                    self.copy_dir(from.as_fd(), to.as_fd(), &path, depth + 1)?;
                    set_owner_mode_times(to.as_fd(), &stat, &path)?;
                }
                SFlag::S_IFREG => self.copy_file(source, dest, &name, &path, &stat)?,
                SFlag::S_IFLNK => {
                    let link = readlinkat(source, name.as_c_str())
                        .map_err(|e| sys("read link", &path, e))?;
                    symlinkat(link.as_os_str(), dest, name.as_c_str())
                        .map_err(|e| sys("create", &path, e))?;
                    fchownat(
                        dest,
                        name.as_c_str(),
                        Some(Uid::from_raw(stat.st_uid)),
                        Some(Gid::from_raw(stat.st_gid)),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| sys("chown", &path, e))?;
                    let (atime, mtime) = times(&stat);
                    utimensat(
                        dest,
                        name.as_c_str(),
                        &atime,
                        &mtime,
                        UtimensatFlags::NoFollowSymlink,
                    )
                    .map_err(|e| sys("set times of", &path, e))?;
                }
                SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO => {
                    let mode = Mode::from_bits_truncate(stat.st_mode & 0o7777);
                    mknodat(dest, name.as_c_str(), kind, mode, stat.st_rdev)
                        .map_err(|e| sys("create", &path, e))?;
                    fchownat(
                        dest,
                        name.as_c_str(),
                        Some(Uid::from_raw(stat.st_uid)),
                        Some(Gid::from_raw(stat.st_gid)),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| sys("chown", &path, e))?;
                    // mknod's mode went through the umask; this is what the image says.
                    fchmodat(
                        dest,
                        name.as_c_str(),
                        mode,
                        nix::sys::stat::FchmodatFlags::FollowSymlink,
                    )
                    .map_err(|e| sys("chmod", &path, e))?;
                }
                // Sockets belong to a process that is gone.
                _ => {}
            }
        }
        Ok(())
    }

    fn copy_file(
        &mut self,
        source: BorrowedFd<'_>,
        dest: BorrowedFd<'_>,
        name: &CStr,
        path: &Path,
        stat: &FileStat,
    ) -> io::Result<()> {
        let key = (stat.st_dev, stat.st_ino);
        if stat.st_nlink > 1
            && let Some(first) = self.links.get(&key)
        {
            let parent = first.parent().unwrap_or(Path::new(""));
            let base = first.file_name().unwrap_or_default();
            let parent_fd = if parent.as_os_str().is_empty() {
                self.dest_root.try_clone()?
            } else {
                // Only directories this copy made lie on the way: refuse anything else.
                let how = OpenHow::new()
                    .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                    .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
                openat2(&self.dest_root, parent, how).map_err(|e| sys("open", parent, e))?
            };
            linkat(&parent_fd, base, dest, name, AtFlags::empty())
                .map_err(|e| sys("link", path, e))?;
            return Ok(());
        }
        let from = openat(
            source,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| sys("open", path, e))?;
        let to = openat(
            dest,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| sys("create", path, e))?;
        let (mut from, mut to) = (File::from(from), File::from(to));
        io::copy(&mut from, &mut to)
            .map_err(|e| io::Error::new(e.kind(), format!("copy {}: {e}", path.display())))?;
        set_owner_mode_times(to.as_fd(), stat, path)?;
        if stat.st_nlink > 1 {
            self.links.insert(key, path.to_owned());
        }
        Ok(())
    }
}

/// Removes everything inside `dir` (not `dir` itself), never following a symlink.
fn empty_dir(dir: BorrowedFd<'_>, path: &Path, depth: usize) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(io::Error::other(format!(
            "{} is nested too deep to empty",
            path.display()
        )));
    }
    for name in entry_names(dir, path)? {
        let child = child_path(path, &name);
        let stat = fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| sys("stat", &child, e))?;
        let is_dir = stat.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits();
        if is_dir {
            let fd = open_dir_nofollow(dir, &name, &child)?;
            empty_dir(fd.as_fd(), &child, depth + 1)?;
        }
        nix::unistd::unlinkat(
            dir,
            name.as_c_str(),
            if is_dir {
                nix::unistd::UnlinkatFlags::RemoveDir
            } else {
                nix::unistd::UnlinkatFlags::NoRemoveDir
            },
        )
        .map_err(|e| sys("remove", &child, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    use super::*;

    fn rootfs_with_data() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("file"), b"hello").unwrap();
        std::fs::set_permissions(data.join("file"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        std::fs::hard_link(data.join("file"), data.join("sub/again")).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o1777)).unwrap();
        symlink("file", data.join("relative")).unwrap();
        root
    }

    #[test]
    fn copies_content_modes_symlinks_and_hardlinks() {
        let root = rootfs_with_data();
        let volume = tempfile::tempdir().unwrap();
        assert!(copy_image_content(root.path(), "/data", volume.path()).unwrap());
        let dest = volume.path();
        assert_eq!(std::fs::read(dest.join("file")).unwrap(), b"hello");
        let meta = std::fs::metadata(dest.join("file")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!(
            meta.ino(),
            std::fs::metadata(dest.join("sub/again")).unwrap().ino(),
            "a hardlink stays a hardlink"
        );
        assert_eq!(
            std::fs::read_link(dest.join("relative")).unwrap(),
            Path::new("file")
        );
        assert_eq!(
            std::fs::metadata(dest).unwrap().mode() & 0o7777,
            0o1777,
            "the volume takes the mode of the image's directory"
        );
        // Not empty any more: a second copy does nothing.
        assert!(!copy_image_content(root.path(), "/data", volume.path()).unwrap());
    }

    #[test]
    fn missing_or_non_directory_targets_copy_nothing() {
        let root = rootfs_with_data();
        let volume = tempfile::tempdir().unwrap();
        assert!(!copy_image_content(root.path(), "/nowhere", volume.path()).unwrap());
        assert!(!copy_image_content(root.path(), "/data/file", volume.path()).unwrap());
        assert!(std::fs::read_dir(volume.path()).unwrap().next().is_none());
    }

    #[test]
    fn hostile_symlinks_never_reach_outside_the_rootfs() {
        // Outside the image: what a hostile image would like to copy into a volume.
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), b"host secret").unwrap();
        let root = tempfile::tempdir().unwrap();
        let up = "../".repeat(30);
        let host_rel = format!(
            "{up}{}",
            host.path().display().to_string().trim_start_matches('/')
        );
        // The mount point itself points out, absolutely and relatively.
        symlink(host.path(), root.path().join("absolute")).unwrap();
        symlink(&host_rel, root.path().join("relative")).unwrap();
        // Inside a real directory, links out are kept as links, not followed.
        let data = root.path().join("data");
        std::fs::create_dir(&data).unwrap();
        symlink(host.path().join("secret"), data.join("leak")).unwrap();
        symlink(&host_rel, data.join("dir-leak")).unwrap();

        for target in ["/absolute", "/relative"] {
            let volume = tempfile::tempdir().unwrap();
            // Resolved inside the rootfs, the links lead nowhere: nothing is copied.
            assert!(!copy_image_content(root.path(), target, volume.path()).unwrap());
            assert!(!volume.path().join("secret").exists(), "{target}");
        }
        let volume = tempfile::tempdir().unwrap();
        assert!(copy_image_content(root.path(), "/data", volume.path()).unwrap());
        let leak = volume.path().join("leak");
        assert!(
            std::fs::symlink_metadata(&leak)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(
            std::fs::symlink_metadata(volume.path().join("dir-leak"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // In the rootfs a relative link resolves to its root: the path inside the rootfs.
        let relative_inside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/inside"), b"image file").unwrap();
        symlink("../../../../../../etc", root.path().join("up")).unwrap();
        assert!(copy_image_content(root.path(), "/up", relative_inside.path()).unwrap());
        assert_eq!(
            std::fs::read(relative_inside.path().join("inside")).unwrap(),
            b"image file"
        );
    }

    #[test]
    fn a_symlink_planted_in_the_volume_is_not_written_through() {
        let root = rootfs_with_data();
        let outside = tempfile::tempdir().unwrap();
        let volume = tempfile::tempdir().unwrap();
        // The volume is not empty, so nothing is copied, and the link target is untouched.
        symlink(outside.path(), volume.path().join("file")).unwrap();
        assert!(!copy_image_content(root.path(), "/data", volume.path()).unwrap());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        // A destination that is itself a symlink is refused.
        let link = volume.path().join("as-link");
        symlink(outside.path(), &link).unwrap();
        assert!(copy_image_content(root.path(), "/data", &link).is_err());
    }
}
