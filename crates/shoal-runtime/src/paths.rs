//! Path resolution inside a container root: symlinks are followed as if `root` were `/`, so a
//! hostile image cannot point a mount, a masked path or `/etc/passwd` outside its rootfs.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

const MAX_SYMLINKS: u32 = 255;

/// Resolves `unsafe_path` under `root`, following symlinks without ever leaving `root`.
///
/// Components that do not exist are appended lexically, so the result can be created afterwards.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut pending: VecDeque<OsString> = components(unsafe_path);
    let mut current = PathBuf::new(); // relative to root
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == "." {
            continue;
        }
        if part == ".." {
            current.pop();
            continue;
        }
        let candidate = current.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::other(format!(
                        "too many symlinks resolving {}",
                        unsafe_path.display()
                    )));
                }
                let target = std::fs::read_link(&full)?;
                if target.is_absolute() {
                    current = PathBuf::new();
                }
                for c in components(&target).into_iter().rev() {
                    pending.push_front(c);
                }
            }
            Ok(_) => current = candidate,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                current = candidate;
                for rest in pending.drain(..) {
                    if rest == ".." {
                        current.pop();
                    } else if rest != "." {
                        current.push(rest);
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(root.join(current))
}

fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_stay_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/real")).unwrap();
        symlink("/etc/real", root.join("etc/abs")).unwrap();
        symlink("../../../../..", root.join("etc/up")).unwrap();
        symlink("/", root.join("rootlink")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/etc/abs/x")).unwrap(),
            root.join("etc/real/x")
        );
        assert_eq!(
            secure_join(root, Path::new("etc/up/passwd")).unwrap(),
            root.join("passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("/../../etc")).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            secure_join(root, Path::new("/rootlink/etc/real")).unwrap(),
            root.join("etc/real")
        );
        assert_eq!(
            secure_join(root, Path::new("/missing/a/../b")).unwrap(),
            root.join("missing/b")
        );
    }

    #[test]
    fn symlink_loops_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        assert!(secure_join(dir.path(), Path::new("/a/x")).is_err());
    }
}
