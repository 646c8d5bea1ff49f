//! The host side of `cp`: Docker's rules for what a source and a destination path mean
//! (`CopyInfo`, `PrepareArchiveCopy`), tars of host paths streamed to the daemon, and the
//! extraction of a container's tar under a host directory. Extraction never writes outside
//! its directory: names are made relative (`..` refused), every parent is a real directory
//! inside it (a symlink on the way is refused), files are created anew (never through a
//! symlink), hard links must point inside, and device nodes are refused.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;
use tokio::sync::mpsc;

use crate::CliError;
use crate::error::io_reason;

/// A path's last component, as Docker's `SplitPathDirEntry` sees it: `.` for `dir/.`.
pub(crate) fn base_name(path: &str) -> OsString {
    if path == "." || path.ends_with("/.") {
        return OsString::from(".");
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return OsString::from("/");
    }
    Path::new(trimmed)
        .file_name()
        .map_or_else(|| OsString::from(trimmed), OsStr::to_owned)
}

/// The parent directory of a destination (`.` for a bare name).
pub(crate) fn parent_dir(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    match Path::new(trimmed).parent() {
        Some(p) if p.as_os_str().is_empty() => ".".to_owned(),
        Some(p) => p.to_string_lossy().into_owned(),
        None => "/".to_owned(),
    }
}

/// The path names a directory by its form (`dir/` or `dir/.`).
pub(crate) fn asserts_directory(path: &str) -> bool {
    path.ends_with('/') || path.ends_with("/.") || path == "."
}

/// What the destination of a copy is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Destination {
    /// The path after following a symlink at it.
    pub(crate) path: String,
    pub(crate) exists: bool,
    pub(crate) is_dir: bool,
}

/// Where an archive of a source goes: the directory to extract into, and the name its top
/// entry must take there (`None`: keep the archive's names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) dir: String,
    pub(crate) rename_to: Option<OsString>,
}

/// Docker's `PrepareArchiveCopy`: `source_is_dir` and the destination decide whether the
/// source lands inside the destination or becomes it.
pub(crate) fn place(
    source_is_dir: bool,
    dest: &Destination,
    shown_dest: &str,
) -> Result<Placement, CliError> {
    if dest.exists && dest.is_dir {
        return Ok(Placement {
            dir: dest.path.clone(),
            rename_to: None,
        });
    }
    if dest.exists && source_is_dir {
        return Err(CliError::usage(format!(
            "cannot copy a directory to {shown_dest}: it exists and is not a directory"
        )));
    }
    if !dest.exists && !source_is_dir && asserts_directory(&dest.path) {
        return Err(CliError::usage(format!(
            "destination directory {shown_dest} does not exist"
        )));
    }
    Ok(Placement {
        dir: parent_dir(&dest.path),
        rename_to: Some(base_name(&dest.path)),
    })
}

/// How names from an archive map to names under the extraction directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rename {
    /// The archive's top name (`None`: the archive holds a directory's contents only).
    pub(crate) from: Option<OsString>,
    /// The name it takes (`None`: unchanged).
    pub(crate) to: Option<OsString>,
}

impl Rename {
    /// The new relative name, or `None` for an entry outside the renamed top (kept as is).
    fn apply(&self, rel: &Path) -> PathBuf {
        let Some(to) = &self.to else {
            return rel.to_path_buf();
        };
        match &self.from {
            None => Path::new(to).join(rel),
            Some(from) => match rel.strip_prefix(from) {
                Ok(rest) if rest.as_os_str().is_empty() => PathBuf::from(to),
                Ok(rest) => Path::new(to).join(rest),
                Err(_) => rel.to_path_buf(),
            },
        }
    }
}

/// Turns a tar name into a relative path: leading `/` and `.` dropped, `..` refused.
fn relative(raw: &[u8]) -> Result<PathBuf, CliError> {
    let mut out = PathBuf::new();
    for comp in Path::new(OsStr::from_bytes(raw)).components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::ParentDir => {
                return Err(CliError::usage(format!(
                    "refusing archive entry {:?}: it leaves the destination",
                    String::from_utf8_lossy(raw)
                )));
            }
            _ => {}
        }
    }
    Ok(out)
}

fn io_err(op: &str, path: &Path, err: &io::Error) -> CliError {
    CliError::usage(format!(
        "cannot {op} {}: {}",
        path.display(),
        io_reason(err).to_lowercase()
    ))
}

/// The host destination of a copy out of a container (Docker's `CopyInfoDestinationPath`):
/// a symlink at it is followed; a missing one needs an existing parent directory.
pub(crate) fn host_destination(path: &str) -> Result<Destination, CliError> {
    let mut current = PathBuf::from(path);
    for _ in 0..10 {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&current).map_err(|e| io_err("read", &current, &e))?;
                current = match current.parent() {
                    Some(parent) if target.is_relative() => parent.join(target),
                    _ => target,
                };
            }
            Ok(meta) => {
                let mut shown = current.to_string_lossy().into_owned();
                if asserts_directory(path) && !shown.ends_with('/') {
                    shown.push('/');
                }
                return Ok(Destination {
                    path: shown,
                    exists: true,
                    is_dir: meta.is_dir(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let shown = if current.as_os_str() == OsStr::new(path) {
                    path.to_owned()
                } else {
                    current.to_string_lossy().into_owned()
                };
                let parent = parent_dir(&shown);
                match fs::metadata(&parent) {
                    Ok(m) if m.is_dir() => {}
                    _ => {
                        return Err(CliError::usage(format!(
                            "cannot copy to {path}: directory {parent} does not exist"
                        )));
                    }
                }
                return Ok(Destination {
                    path: shown,
                    exists: false,
                    is_dir: false,
                });
            }
            Err(e) => return Err(io_err("stat", &current, &e)),
        }
    }
    Err(CliError::usage(format!(
        "cannot copy to {path}: too many levels of symbolic links"
    )))
}

/// A host path to copy into a container.
#[derive(Clone, Debug)]
pub(crate) struct HostSource {
    /// The path to read (a followed symlink's target with `-L`).
    pub(crate) path: PathBuf,
    pub(crate) is_dir: bool,
    /// The name the copy takes: the path's own last component (the link's, with `-L`), or
    /// `.` for `dir/.`.
    pub(crate) base: OsString,
}

/// Docker's `CopyInfoSourcePath`: the source must exist; `-L` follows a symlink at it.
pub(crate) fn host_source(path: &str, follow_link: bool) -> Result<HostSource, CliError> {
    let meta = if follow_link {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    };
    let meta = meta.map_err(|e| io_err("copy", Path::new(path), &e))?;
    let base = base_name(path);
    if base == "." && !meta.is_dir() {
        return Err(CliError::usage(format!("{path} is not a directory")));
    }
    let path_buf = if follow_link {
        fs::canonicalize(path).map_err(|e| io_err("resolve", Path::new(path), &e))?
    } else {
        PathBuf::from(path.trim_end_matches("/.").trim_end_matches('/'))
    };
    let path_buf = if path_buf.as_os_str().is_empty() {
        PathBuf::from("/")
    } else {
        path_buf
    };
    Ok(HostSource {
        path: path_buf,
        is_dir: meta.is_dir(),
        base,
    })
}

/// Sends what is written in chunks of up to 1 MiB; a failure is sent as an error so the
/// upload is abandoned rather than ended cleanly with half an archive.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
    buffer: Vec<u8>,
    sent: u64,
}

const CHUNK: usize = 1 << 20;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.buffer);
        self.sent += data.len() as u64;
        self.tx
            .blocking_send(Ok(data))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload ended"))
    }
}

/// Streams a tar of `source` from a plain thread: its top entry named `top` (or only its
/// contents when `top` is `None`). Symlinks inside are archived as symlinks.
pub(crate) fn archive_host_path(
    source: HostSource,
    top: Option<OsString>,
) -> mpsc::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(2);
    std::thread::spawn(move || {
        let writer = ChannelWriter {
            tx: tx.clone(),
            buffer: Vec::new(),
            sent: 0,
        };
        let mut builder = tar::Builder::new(writer);
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Complete);
        let result = (|| {
            match (&top, source.is_dir) {
                (Some(name), true) => append_tree(&mut builder, &source.path, Path::new(name))?,
                (None, _) => append_tree(&mut builder, &source.path, Path::new(""))?,
                (Some(name), false) => builder.append_path_with_name(&source.path, name)?,
            }
            let mut writer = builder.into_inner()?;
            writer.flush()
        })();
        if let Err(err) = result {
            let _ = tx.blocking_send(Err(err));
        }
    });
    rx
}

/// Appends the directory `dir` as `name` (the empty name: only its contents) and everything
/// below it, in a stable order. Sockets are skipped, as `docker cp` does: a tar cannot carry
/// them and they mean nothing away from their listener.
fn append_tree<W: Write>(builder: &mut tar::Builder<W>, dir: &Path, name: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if !name.as_os_str().is_empty() {
        builder.append_path_with_name(dir, name)?;
    }
    let mut entries = std::fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let kind = entry.file_type()?;
        let path = entry.path();
        let entry_name = name.join(entry.file_name());
        if kind.is_socket() {
            continue;
        }
        if kind.is_dir() {
            append_tree(builder, &path, &entry_name)?;
        } else {
            builder.append_path_with_name(&path, &entry_name)?;
        }
    }
    Ok(())
}

/// A directory's attributes from the archive, applied once everything inside it is written
/// (writing children changes a directory's mtime).
struct DirAttrs {
    path: PathBuf,
    mode: u32,
    mtime: u64,
    owner: Option<(u64, u64)>,
}

/// Extracts a tar under `dir` (an existing host directory) with `rename` applied to its
/// names; see the module docs for what is refused. Returns the bytes of file data written.
pub(crate) fn extract_to_host(
    reader: impl Read,
    dir: &Path,
    rename: &Rename,
    keep_ownership: bool,
) -> Result<u64, CliError> {
    let stream_err =
        |e: io::Error| CliError::usage(format!("reading the archive: {}", io_reason(&e)));
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(keep_ownership);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    let mut dirs: Vec<DirAttrs> = Vec::new();
    let mut bytes = 0u64;
    for entry in archive.entries().map_err(stream_err)? {
        let mut entry = entry.map_err(stream_err)?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            continue;
        }
        let rel = rename.apply(&relative(&entry.path_bytes())?);
        if rel.as_os_str().is_empty() {
            // The extraction directory itself keeps its own attributes.
            if kind == EntryType::Directory {
                continue;
            }
            return Err(CliError::usage(format!(
                "cannot overwrite directory {} with a file",
                dir.display()
            )));
        }
        let target = dir.join(&rel);
        ensure_parents(dir, &rel)?;
        let existing = fs::symlink_metadata(&target).ok();
        match kind {
            EntryType::Directory => {
                match &existing {
                    Some(m) if m.is_dir() => {}
                    Some(_) => {
                        return Err(CliError::usage(format!(
                            "cannot overwrite non-directory {} with a directory",
                            target.display()
                        )));
                    }
                    None => fs::create_dir(&target).map_err(|e| io_err("create", &target, &e))?,
                }
                let header = entry.header();
                let owner = keep_ownership
                    .then(|| Some((header.uid().ok()?, header.gid().ok()?)))
                    .flatten();
                dirs.push(DirAttrs {
                    path: target,
                    mode: header.mode().unwrap_or(0o755) & 0o7777,
                    mtime: header.mtime().unwrap_or(0),
                    owner,
                });
                continue;
            }
            EntryType::Char | EntryType::Block => {
                return Err(CliError::usage(format!(
                    "refusing to create device node {}",
                    target.display()
                )));
            }
            _ => {}
        }
        if let Some(m) = &existing {
            if m.is_dir() {
                return Err(CliError::usage(format!(
                    "cannot overwrite directory {} with a non-directory",
                    target.display()
                )));
            }
            fs::remove_file(&target).map_err(|e| io_err("replace", &target, &e))?;
        }
        if kind == EntryType::Link {
            let link = entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default();
            let source_rel = rename.apply(&relative(&link)?);
            ensure_parents(dir, &source_rel)?;
            let source = dir.join(&source_rel);
            match fs::symlink_metadata(&source) {
                Ok(m) if !m.is_dir() => {}
                _ => {
                    return Err(CliError::usage(format!(
                        "refusing hard link {} to {}: not a file of this archive",
                        target.display(),
                        source.display()
                    )));
                }
            }
            fs::hard_link(&source, &target).map_err(|e| io_err("link", &target, &e))?;
            continue;
        }
        bytes += entry.header().size().unwrap_or(0);
        entry
            .unpack(&target)
            .map_err(|e| io_err("write", &target, &e))?;
    }
    for DirAttrs {
        path,
        mode,
        mtime,
        owner,
    } in dirs.iter().rev()
    {
        // Only ever a directory made or merged above, never a symlink put there since.
        if !fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(path, u32::try_from(*uid).ok(), u32::try_from(*gid).ok())
                .map_err(|e| io_err("chown", path, &e))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(*mode))
            .map_err(|e| io_err("chmod", path, &e))?;
        let time = nix::sys::time::TimeSpec::new(i64::try_from(*mtime).unwrap_or(0), 0);
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &time,
            &time,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok(bytes)
}

/// Makes every parent of `rel` under `dir` a real directory (creating missing ones);
/// a symlink or a file on the way is refused.
fn ensure_parents(dir: &Path, rel: &Path) -> Result<(), CliError> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut current = dir.to_path_buf();
    for comp in parent.components() {
        current.push(comp);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(CliError::usage(format!(
                    "refusing to write through {}: it is not a directory",
                    current.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(|e| io_err("create", &current, &e))?;
            }
            Err(e) => return Err(io_err("stat", &current, &e)),
        }
    }
    Ok(())
}

/// Copies a tar from `reader` to `out`, renaming its entries (for `cp -L CONTAINER:LINK -`).
pub(crate) fn rename_archive(
    reader: impl Read,
    out: impl Write,
    rename: &Rename,
) -> Result<(), CliError> {
    let stream_err =
        |e: io::Error| CliError::usage(format!("rewriting the archive: {}", io_reason(&e)));
    let mut archive = tar::Archive::new(reader);
    let mut builder = tar::Builder::new(out);
    for entry in archive.entries().map_err(stream_err)? {
        let mut entry = entry.map_err(stream_err)?;
        let rel = rename.apply(&relative(&entry.path_bytes())?);
        let mut header = entry.header().clone();
        let kind = header.entry_type();
        if matches!(kind, EntryType::Symlink | EntryType::Link) {
            let link = entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default();
            let link = if kind == EntryType::Link {
                rename.apply(&relative(&link)?)
            } else {
                PathBuf::from(OsStr::from_bytes(&link))
            };
            builder
                .append_link(&mut header, &rel, &link)
                .map_err(stream_err)?;
        } else {
            builder
                .append_data(&mut header, &rel, &mut entry)
                .map_err(stream_err)?;
        }
    }
    builder.into_inner().map_err(stream_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn names_and_placement_follow_docker() {
        assert_eq!(base_name("/a/b"), "b");
        assert_eq!(base_name("/a/b/"), "b");
        assert_eq!(base_name("/a/b/."), ".");
        assert_eq!(base_name("/"), "/");
        assert_eq!(parent_dir("/a/b"), "/a");
        assert_eq!(parent_dir("b"), ".");
        assert_eq!(parent_dir("/b/"), "/");
        let dest = |path: &str, exists, is_dir| Destination {
            path: path.to_owned(),
            exists,
            is_dir,
        };
        // Into an existing directory: names kept.
        let p = place(false, &dest("/tmp", true, true), "/tmp").unwrap();
        assert_eq!((p.dir.as_str(), p.rename_to), ("/tmp", None));
        // Onto an existing file, or a new name: the parent, renamed.
        let p = place(false, &dest("/etc/f", true, false), "/etc/f").unwrap();
        assert_eq!((p.dir.as_str(), p.rename_to), ("/etc", Some("f".into())));
        let p = place(true, &dest("/new", false, false), "/new").unwrap();
        assert_eq!((p.dir.as_str(), p.rename_to), ("/", Some("new".into())));
        // A directory onto a file, a file to a missing directory: refused.
        assert!(place(true, &dest("/etc/f", true, false), "/etc/f").is_err());
        assert!(place(false, &dest("/nodir/", false, false), "/nodir/").is_err());
    }

    #[test]
    fn directories_with_sockets_archive_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("app");
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::write(root.join("config"), b"x").unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(root.join("run/app.sock")).unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        append_tree(&mut builder, &root, Path::new("app")).unwrap();
        let bytes = builder.into_inner().unwrap();
        let mut names: Vec<String> = tar::Archive::new(&bytes[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["app", "app/config", "app/run"]);
    }

    #[test]
    fn renames_only_the_top() {
        let r = Rename {
            from: Some("src".into()),
            to: Some("dst".into()),
        };
        assert_eq!(r.apply(Path::new("src")), Path::new("dst"));
        assert_eq!(r.apply(Path::new("src/a/b")), Path::new("dst/a/b"));
        assert_eq!(r.apply(Path::new("srcx")), Path::new("srcx"));
        let contents = Rename {
            from: None,
            to: Some("dst".into()),
        };
        assert_eq!(contents.apply(Path::new("a")), Path::new("dst/a"));
        assert_eq!(Rename::default().apply(Path::new("a")), Path::new("a"));
    }

    fn tar_of(entries: &[(&str, EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            {
                let old = h.as_old_mut();
                old.name[..name.len()].copy_from_slice(name.as_bytes());
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn host_extraction_stays_inside_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&dest).unwrap();
        fs::create_dir_all(&outside).unwrap();
        let none = Rename::default();
        let bad = [
            tar_of(&[("../outside/x", EntryType::Regular, b"x", "")]),
            tar_of(&[
                ("l", EntryType::Symlink, b"", "../outside"),
                ("l/x", EntryType::Regular, b"x", ""),
            ]),
            tar_of(&[("h", EntryType::Link, b"", "../outside/secret")]),
            tar_of(&[("sda", EntryType::Block, b"", "")]),
        ];
        fs::write(outside.join("secret"), b"s").unwrap();
        for archive in bad {
            assert!(extract_to_host(&archive[..], &dest, &none, false).is_err());
        }
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
        assert_eq!(fs::metadata(outside.join("secret")).unwrap().nlink(), 1);
        // Absolute names land inside; a renamed top and its hard links follow the rename.
        let good = tar_of(&[
            ("/top", EntryType::Directory, b"", ""),
            ("/top/f", EntryType::Regular, b"data", ""),
            ("top/h", EntryType::Link, b"", "top/f"),
        ]);
        let rename = Rename {
            from: Some("top".into()),
            to: Some("renamed".into()),
        };
        let written = extract_to_host(&good[..], &dest, &rename, false).unwrap();
        assert_eq!(written, 4);
        assert_eq!(fs::read(dest.join("renamed/f")).unwrap(), b"data");
        assert_eq!(fs::metadata(dest.join("renamed/h")).unwrap().nlink(), 2);
    }
}
