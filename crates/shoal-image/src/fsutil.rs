//! Small filesystem helpers: durable atomic writes, directory fsync, and temp trees that clean up.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{ImageError, Result};

/// Flushes a directory so a rename inside it survives a crash.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(ImageError::io("fsync", dir))
}

/// Writes `bytes` to `path` through a temp file in the same directory, fsynced, then renamed,
/// so readers see the old content or the new, never a torn file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(ImageError::io("create temp file in", dir))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(ImageError::io("write", tmp.path()))?;
    tmp.persist(path).map_err(|e| ImageError::Io {
        op: "rename into place",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    fsync_dir(dir)
}

/// Creates a directory (and parents) readable only by the owner.
pub(crate) fn create_private_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(ImageError::io("create directory", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(ImageError::io("chmod", path))
}

/// Opens a new file that must not exist yet, never following a symlink at `path`.
pub(crate) fn create_new_file(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Removes a tree even where an unprivileged unpack left directories without write
/// permission (root ignores modes; a plain user could not delete children of a 0555 dir).
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(path);
            fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

fn make_writable(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            make_writable(&e.path());
        }
    }
}

/// A directory deleted on drop unless kept: the unit of "all or nothing" for unpacks and staging.
pub(crate) struct TempTree {
    path: PathBuf,
    keep: bool,
}

impl TempTree {
    pub(crate) fn new_in(parent: &Path, prefix: &str) -> Result<TempTree> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .map_err(ImageError::io("create temp directory in", parent))?;
        Ok(TempTree {
            path: dir.keep(),
            keep: false,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the drop from deleting the tree (it has been renamed into place).
    pub(crate) fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = remove_tree(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove temp tree");
        }
    }
}

/// Whether the process can do what unpacking images needs root for (mknod, chown, trusted xattrs).
pub(crate) fn is_privileged() -> bool {
    nix::unistd::geteuid().is_root()
}
