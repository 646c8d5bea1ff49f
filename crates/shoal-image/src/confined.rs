//! Filesystem access confined to one directory that acts as `/`: resolving paths, `stat`,
//! archiving a subtree to tar and extracting a tar into it, all through file descriptors.
//!
//! The tree may belong to a running container that is hostile: it can plant symlinks such as
//! `/evil -> /` or `../../../../etc`, and rename things while we work. So:
//! - a path named by the caller is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)` from
//!   the root descriptor: `..`, absolute paths and absolute symlinks all stop at the root;
//! - an operation then acts on the last component relative to its resolved parent descriptor
//!   with "no follow" semantics (`O_NOFOLLOW|O_EXCL`, `AT_SYMLINK_NOFOLLOW`, `linkat` without
//!   follow), so swapping that component for a symlink after resolution gains nothing;
//! - walks re-open every directory with `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS` and never follow
//!   a symlink; files are read through the descriptor they were opened with (`O_NONBLOCK`, so a
//!   FIFO that replaced a file cannot hang the reader), and exactly the size announced in the
//!   tar header is written whatever the file does meanwhile;
//! - kernel pseudo filesystems (procfs, sysfs, cgroupfs, ...) mounted in the tree are archived
//!   as empty directories and are never written to;
//! - tar entries to extract are made relative (`..` refused), device nodes are refused, and an
//!   existing directory is never replaced by a non-directory or the other way round (the rule
//!   `docker cp` applies).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat};
use nix::sys::stat::{
    FileStat, Mode, SFlag, UtimensatFlags, fchmod, fstat, fstatat, futimens, major, minor, mkdirat,
    utimensat,
};
use nix::sys::statfs::{self, FsType, fstatfs};
use nix::sys::time::TimeSpec;
use nix::unistd::{
    Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, mkfifoat, symlinkat, unlinkat,
};
use tar::{EntryType, Header};

use crate::unpack::{OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX};

/// Why a confined operation failed; every message is one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// The path (as the caller named it) does not exist.
    #[error("no such file or directory: {0}")]
    NotFound(String),
    /// A directory was required.
    #[error("not a directory: {0}")]
    NotADirectory(String),
    /// The operation is refused on this path (overwrite rules, pseudo filesystems, devices).
    #[error("{0}")]
    Refused(String),
    /// An archive entry whose name would leave its destination.
    #[error("unsafe path {path:?} in archive: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    /// A system call on a named path failed.
    #[error("cannot {op} {path}: {}", reason(source))]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// Reading or writing the tar stream failed.
    #[error("{op}: {source}")]
    Stream {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// Content this code cannot represent faithfully.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

type Result<T, E = FsError> = std::result::Result<T, E>;

/// An OS error as users read it: `read-only file system`, without Rust's ` (os error 30)`.
fn reason(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

impl FsError {
    fn sys(op: &'static str, path: impl AsRef<Path>) -> impl FnOnce(Errno) -> FsError {
        let path = display(path.as_ref());
        move |errno| FsError::Io {
            op,
            path,
            source: io::Error::from(errno),
        }
    }

    fn io(op: &'static str, path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> FsError {
        let path = display(path.as_ref());
        move |source| FsError::Io { op, path, source }
    }
}

impl From<FsError> for crate::ImageError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::Io { op, path, source } => crate::ImageError::Io {
                op,
                path: PathBuf::from(path),
                source,
            },
            FsError::Stream { op, source } => crate::ImageError::Stream { op, source },
            FsError::UnsafePath { path, reason } => crate::ImageError::UnsafePath { path, reason },
            FsError::Unsupported(what) => crate::ImageError::Unsupported(what),
            other => crate::ImageError::Stream {
                op: "walking a directory tree",
                source: io::Error::other(other.to_string()),
            },
        }
    }
}

fn display(path: &Path) -> String {
    let text = path.to_string_lossy();
    if text.starts_with('/') {
        text.into_owned()
    } else {
        format!("/{text}")
    }
}

/// What `docker cp` shows of a path (Docker's `X-Docker-Container-Path-Stat`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathStat {
    /// The last component of the path as named (`.` for `dir/.`, `/` for the root).
    pub name: String,
    pub size: u64,
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// For a symlink, its target resolved inside the root, as an absolute path.
    pub link_target: String,
}

impl PathStat {
    pub fn is_dir(&self) -> bool {
        self.mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits()
    }

    pub fn is_symlink(&self) -> bool {
        self.mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits()
    }
}

/// How [`ConfinedRoot::extract`] treats what it writes.
#[derive(Clone, Debug, Default)]
pub struct ExtractOptions {
    /// Keep the uid/gid of the archive entries (`cp -a`); otherwise everything belongs to
    /// root (0:0), as `docker cp` does.
    pub keep_ownership: bool,
}

/// What an extraction wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtractStats {
    pub entries: u64,
    pub bytes: u64,
}

/// A directory treated as `/` for every path given to it.
#[derive(Debug)]
pub struct ConfinedRoot {
    root: OwnedFd,
}

/// The object a path names, ready to be archived.
#[derive(Debug)]
pub struct ArchiveSource {
    stat: PathStat,
    /// Name of the top entry in the tar; `None` archives the directory's children only
    /// (the source was `dir/.` or `/`).
    top: Option<OsString>,
    object: Object,
    display: String,
}

#[derive(Debug)]
enum Object {
    /// A directory, by an `O_PATH` descriptor.
    Dir(OwnedFd),
    /// Anything else, by its parent and name (never followed).
    Leaf { parent: OwnedFd, name: OsString },
}

const MAX_SYMLINKS: usize = 40;

fn in_root() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

fn beneath_no_symlinks() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

fn open_how(flags: OFlag, resolve: ResolveFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(resolve)
}

/// `openat2` that retries the EAGAIN the kernel returns when a rename raced the resolution.
fn openat2_retry(dir: BorrowedFd<'_>, path: &Path, how: OpenHow) -> nix::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let mut tries = 0;
    loop {
        match openat2(dir, path, how) {
            Err(Errno::EAGAIN) if tries < 16 => tries += 1,
            other => return other,
        }
    }
}

/// A caller's path, cleaned lexically as Docker does (`filepath.Join("/", p)`).
struct CleanPath {
    components: Vec<OsString>,
    /// The path ended in `/` or `/.`: its last symlink is followed and it must be a directory.
    follow_last: bool,
    /// It ended in `/.`: archive the directory's contents, not the directory.
    contents_only: bool,
}

fn clean(path: &str) -> CleanPath {
    let mut components: Vec<OsString> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                components.pop();
            }
            p => components.push(OsString::from(p)),
        }
    }
    let contents_only = path == "." || path.ends_with("/.");
    CleanPath {
        follow_last: path.ends_with('/') || contents_only,
        contents_only,
        components,
    }
}

fn join(components: &[OsString]) -> PathBuf {
    components.iter().collect()
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn is_dir(st: &FileStat) -> bool {
    file_type(st) == SFlag::S_IFDIR
}

/// A character device 0:0 is an overlay whiteout.
pub(crate) fn is_whiteout_stat(st: &FileStat) -> bool {
    file_type(st) == SFlag::S_IFCHR && st.st_rdev == 0
}

/// Filesystems whose files are kernel interfaces, not data: never archived into, never written.
fn is_pseudo_fs(fd: BorrowedFd<'_>) -> bool {
    const PSEUDO: [FsType; 10] = [
        statfs::PROC_SUPER_MAGIC,
        statfs::SYSFS_MAGIC,
        statfs::CGROUP_SUPER_MAGIC,
        statfs::CGROUP2_SUPER_MAGIC,
        statfs::DEVPTS_SUPER_MAGIC,
        statfs::DEBUGFS_MAGIC,
        statfs::SECURITYFS_MAGIC,
        statfs::TRACEFS_MAGIC,
        statfs::BPF_FS_MAGIC,
        statfs::NSFS_MAGIC,
    ];
    fstatfs(fd).is_ok_and(|s| PSEUDO.contains(&s.filesystem_type()))
}

impl ConfinedRoot {
    /// Opens `dir` (a trusted host path) as the root.
    pub fn open(dir: &Path) -> Result<ConfinedRoot> {
        let fd = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(FsError::sys("open", dir))?;
        Ok(ConfinedRoot { root: fd })
    }

    /// Uses an already opened directory (e.g. `/proc/<pid>/root`) as the root.
    pub fn from_fd(fd: OwnedFd) -> ConfinedRoot {
        ConfinedRoot { root: fd }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The root's own metadata (identity checks by callers).
    pub fn root_stat(&self) -> Result<FileStat> {
        fstat(&self.root).map_err(FsError::sys("stat", "/"))
    }

    /// Opens `path` (relative to the root) inside the root, following symlinks in scope.
    fn resolve(&self, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
        openat2_retry(self.root.as_fd(), path, open_how(flags, in_root()))
    }

    /// The directory `path` names (symlinks followed in scope).
    fn dir(&self, path: &Path) -> Result<OwnedFd> {
        self.resolve(path, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(|e| match e {
                Errno::ENOENT => FsError::NotFound(display(path)),
                Errno::ENOTDIR => FsError::NotADirectory(display(path)),
                e => FsError::sys("open", path)(e),
            })
    }

    /// What `path` names, as `docker cp` sees it: the last component is not followed unless
    /// the path ends in `/` or `/.`.
    pub fn stat(&self, path: &str) -> Result<PathStat> {
        Ok(self.source(path)?.stat)
    }

    /// Resolves `path` for archiving; see [`ArchiveSource::write_tar`].
    pub fn source(&self, path: &str) -> Result<ArchiveSource> {
        let clean = clean(path);
        let full = join(&clean.components);
        let shown = display(&full);
        let name = if clean.contents_only {
            ".".to_owned()
        } else {
            clean
                .components
                .last()
                .map_or_else(|| "/".to_owned(), |c| c.to_string_lossy().into_owned())
        };
        if clean.components.is_empty() || clean.follow_last {
            let fd = self.dir(&full)?;
            let st = fstat(&fd).map_err(FsError::sys("stat", &full))?;
            let top = (!clean.contents_only && !clean.components.is_empty())
                .then(|| clean.components.last().cloned())
                .flatten();
            return Ok(ArchiveSource {
                stat: path_stat(name, &st, String::new()),
                top,
                object: Object::Dir(fd),
                display: shown,
            });
        }
        let (last, parents) = clean.components.split_last().expect("not empty");
        let parent = self.dir(&join(parents)).map_err(|e| match e {
            FsError::NotADirectory(_) => FsError::NotFound(shown.clone()),
            e => e,
        })?;
        let st = match fstatat(&parent, last.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Err(FsError::NotFound(shown)),
            Err(e) => return Err(FsError::sys("stat", &full)(e)),
        };
        let link_target = if file_type(&st) == SFlag::S_IFLNK {
            self.follow_in_scope(&full)?
        } else {
            String::new()
        };
        let object = if is_dir(&st) {
            let fd = openat(
                &parent,
                last.as_os_str(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(FsError::sys("open", &full))?;
            Object::Dir(fd)
        } else {
            Object::Leaf {
                parent,
                name: last.clone(),
            }
        };
        Ok(ArchiveSource {
            stat: path_stat(name, &st, link_target),
            top: Some(last.clone()),
            object,
            display: shown,
        })
    }

    /// Resolves every symlink of `path` inside the root and returns the absolute path it
    /// lands on (the missing tail, if any, is kept as named). Used to report link targets;
    /// nothing is opened through the result.
    pub fn follow_in_scope(&self, path: &Path) -> Result<String> {
        let mut resolved: Vec<OsString> = Vec::new();
        let mut pending: std::collections::VecDeque<OsString> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_owned()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect();
        let mut links = 0;
        while let Some(part) = pending.pop_front() {
            if part == ".." {
                resolved.pop();
                continue;
            }
            let parent = match self.resolve(&join(&resolved), OFlag::O_PATH | OFlag::O_DIRECTORY) {
                Ok(fd) => fd,
                Err(_) => {
                    // Past a missing or non-directory component the rest is only lexical.
                    resolved.push(part);
                    resolved.extend(pending.drain(..).filter(|p| p != ".."));
                    break;
                }
            };
            match fstatat(&parent, part.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if file_type(&st) == SFlag::S_IFLNK => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(FsError::sys("resolve", path)(Errno::ELOOP));
                    }
                    let target = readlinkat(&parent, part.as_os_str())
                        .map_err(FsError::sys("readlink", path))?;
                    let target = Path::new(&target);
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    for c in target.components().rev() {
                        match c {
                            Component::Normal(n) => pending.push_front(n.to_owned()),
                            Component::ParentDir => pending.push_front(OsString::from("..")),
                            _ => {}
                        }
                    }
                }
                _ => resolved.push(part),
            }
        }
        Ok(display(&join(&resolved)))
    }

    /// Writes the whole tree as a tar (names relative, no `./` entry), as `docker export`.
    pub fn export<W: Write>(&self, out: W) -> Result<W> {
        let mut tar = TarOut::new(out, TarMode::Plain);
        walk(self.root.as_fd(), |rel, parent, name, st| {
            tar.add(rel, parent, name, st)
        })?;
        tar.finish()
    }

    /// Extracts a tar stream (plain, gzip or zstd) into the directory `dir` names (it must
    /// exist; symlinks are followed in scope). See the module docs for the rules.
    pub fn extract<R: Read>(
        &self,
        dir: &str,
        stream: R,
        options: &ExtractOptions,
    ) -> Result<ExtractStats> {
        let dest = join(&clean(dir).components);
        let dest_fd = self.dir(&dest)?;
        refuse_pseudo_fs(dest_fd.as_fd(), &dest)?;
        drop(dest_fd);
        let (_, stream) = crate::compression::decompress(stream).map_err(|e| FsError::Stream {
            op: "reading the archive",
            source: io::Error::other(e.to_string()),
        })?;
        let mut extractor = Extractor {
            root: self,
            dest,
            options,
            dirs: Vec::new(),
            stats: ExtractStats::default(),
        };
        let mut archive = tar::Archive::new(stream);
        let entries = archive.entries().map_err(|source| FsError::Stream {
            op: "reading the archive",
            source,
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|source| FsError::Stream {
                op: "reading the archive",
                source,
            })?;
            extractor.entry(&mut entry)?;
        }
        extractor.finish_dirs()?;
        Ok(extractor.stats)
    }
}

fn path_stat(name: String, st: &FileStat, link_target: String) -> PathStat {
    PathStat {
        name,
        size: u64::try_from(st.st_size).unwrap_or(0),
        mode: st.st_mode,
        mtime: st.st_mtime,
        link_target,
    }
}

fn refuse_pseudo_fs(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    if is_pseudo_fs(fd) {
        return Err(FsError::Refused(format!(
            "cannot write into {}: it is a kernel pseudo filesystem",
            display(path)
        )));
    }
    Ok(())
}

impl ArchiveSource {
    pub fn stat(&self) -> &PathStat {
        &self.stat
    }

    /// Writes the object as a tar: entries named after the last component of the path
    /// (`name`, `name/child`, …), or only the children when the path was `dir/.` or `/`.
    pub fn write_tar<W: Write>(self, out: W) -> Result<W> {
        let mut tar = TarOut::new(out, TarMode::Plain);
        let top_rel = self.top.as_ref().map(PathBuf::from).unwrap_or_default();
        match &self.object {
            Object::Leaf { parent, name } => {
                tar.add(&top_rel, parent.as_fd(), name, &self.fstatat(parent, name)?)?;
            }
            Object::Dir(fd) => {
                if self.top.is_some() {
                    let st = fstat(fd).map_err(FsError::sys("stat", &self.display))?;
                    tar.add_dir_header(&top_rel, &st, None)?;
                }
                walk(fd.as_fd(), |rel, parent, name, st| {
                    tar.add(&top_rel.join(rel), parent, name, st)
                })?;
            }
        }
        tar.finish()
    }

    fn fstatat(&self, parent: &OwnedFd, name: &OsStr) -> Result<FileStat> {
        fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| match e {
            Errno::ENOENT => FsError::NotFound(self.display.clone()),
            e => FsError::sys("stat", &self.display)(e),
        })
    }
}

/// Visits every entry below `base` (not `base` itself), each directory's children in name
/// order and every directory before its contents, never following a symlink. `visit` gets
/// the entry's path relative to `base`, its parent directory and name, and its `lstat`, and
/// says whether to descend (directories only). Entries that vanish meanwhile are skipped.
pub(crate) fn walk(
    base: BorrowedFd<'_>,
    mut visit: impl FnMut(&Path, BorrowedFd<'_>, &OsStr, &FileStat) -> Result<bool>,
) -> Result<()> {
    // Only paths are kept between directories, never descriptors: a hostile tree can be
    // arbitrarily deep without exhausting the daemon's descriptors or stack.
    let mut pending: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let how = open_how(
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            beneath_no_symlinks(),
        );
        let dir = match openat2_retry(base, &rel, how) {
            Ok(fd) => fd,
            // Replaced by a symlink or removed since it was listed: it is not part of the tree.
            Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV)
                if !rel.as_os_str().is_empty() =>
            {
                continue;
            }
            Err(e) => return Err(FsError::sys("open", &rel)(e)),
        };
        if is_pseudo_fs(dir.as_fd()) {
            continue;
        }
        let mut names = list_dir(&dir, &rel)?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let st = match fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(FsError::sys("stat", rel.join(&name))(e)),
            };
            let child = rel.join(&name);
            if visit(&child, dir.as_fd(), &name, &st)? && is_dir(&st) {
                subdirs.push(child);
            }
        }
        pending.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

fn list_dir(dir: &OwnedFd, rel: &Path) -> Result<Vec<OsString>> {
    let dup = dir.try_clone().map_err(FsError::io("open", rel))?;
    let mut listing = nix::dir::Dir::from_fd(dup).map_err(FsError::sys("read", rel))?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(FsError::sys("read", rel))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    Ok(names)
}

/// What a tar is for: a plain copy of files, or an OCI layer made from an overlay upper dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TarMode {
    /// Files as they are; sockets skipped.
    Plain,
    /// Whiteout devices become `.wh.<name>`, opaque directories get `.wh..wh..opq`, and the
    /// `user.*` and `security.capability` extended attributes are kept.
    Layer,
}

/// A tar being written from a confined walk.
pub(crate) struct TarOut<W: Write> {
    builder: tar::Builder<W>,
    mode: TarMode,
    /// First tar name of every multiply-linked file, so later links become hardlink entries.
    links: HashMap<(u64, u64), PathBuf>,
    pub(crate) entries: u64,
    pub(crate) file_bytes: u64,
}

impl<W: Write> TarOut<W> {
    pub(crate) fn new(out: W, mode: TarMode) -> Self {
        let mut builder = tar::Builder::new(out);
        builder.mode(tar::HeaderMode::Complete);
        TarOut {
            builder,
            mode,
            links: HashMap::new(),
            entries: 0,
            file_bytes: 0,
        }
    }

    pub(crate) fn finish(self) -> Result<W> {
        self.builder.into_inner().map_err(|source| FsError::Stream {
            op: "writing the archive",
            source,
        })
    }

    fn stream_err(source: io::Error) -> FsError {
        FsError::Stream {
            op: "writing the archive",
            source,
        }
    }

    /// Adds the entry `name` (found as `child` in `parent`) under the tar name `rel`;
    /// returns whether a walk should descend into it.
    pub(crate) fn add(
        &mut self,
        rel: &Path,
        parent: BorrowedFd<'_>,
        child: &OsStr,
        st: &FileStat,
    ) -> Result<bool> {
        match file_type(st) {
            SFlag::S_IFDIR => {
                let dir = if self.mode == TarMode::Layer {
                    match openat(
                        parent,
                        child,
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    ) {
                        Ok(fd) => Some(File::from(fd)),
                        Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => return Ok(false),
                        Err(e) => return Err(FsError::sys("open", rel)(e)),
                    }
                } else {
                    None
                };
                self.add_dir_header(rel, st, dir.as_ref())?;
                Ok(true)
            }
            SFlag::S_IFREG => {
                self.add_file(rel, parent, child)?;
                Ok(false)
            }
            SFlag::S_IFLNK => {
                let target = match readlinkat(parent, child) {
                    Ok(t) => t,
                    Err(Errno::ENOENT | Errno::EINVAL) => return Ok(false),
                    Err(e) => return Err(FsError::sys("readlink", rel)(e)),
                };
                let mut header = self.header(EntryType::Symlink, st);
                self.builder
                    .append_link(&mut header, rel, Path::new(&target))
                    .map_err(Self::stream_err)?;
                self.entries += 1;
                Ok(false)
            }
            SFlag::S_IFCHR if st.st_rdev == 0 && self.mode == TarMode::Layer => {
                let name = whiteout_name(rel);
                let mut header = self.header(EntryType::Regular, st);
                header.set_mode(0o600);
                self.append(&mut header, &name, io::empty())?;
                Ok(false)
            }
            kind @ (SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO) => {
                let entry_type = match kind {
                    SFlag::S_IFCHR => EntryType::Char,
                    SFlag::S_IFBLK => EntryType::Block,
                    _ => EntryType::Fifo,
                };
                let mut header = self.header(entry_type, st);
                if kind != SFlag::S_IFIFO {
                    let set = header
                        .set_device_major(major(st.st_rdev) as u32)
                        .and_then(|()| header.set_device_minor(minor(st.st_rdev) as u32));
                    set.map_err(Self::stream_err)?;
                }
                self.append(&mut header, rel, io::empty())?;
                Ok(false)
            }
            // Sockets cannot be archived (tar has no type for them), as in Docker.
            _ => Ok(false),
        }
    }

    pub(crate) fn add_dir_header(
        &mut self,
        rel: &Path,
        st: &FileStat,
        dir: Option<&File>,
    ) -> Result<()> {
        let mut opaque = false;
        if let Some(dir) = dir {
            check_overlay_features(dir, rel)?;
            self.append_xattrs(dir, rel)?;
            opaque =
                matches!(xattr::FileExt::get_xattr(dir, OPAQUE_XATTR), Ok(Some(v)) if v == b"y");
        }
        let mut header = self.header(EntryType::Directory, st);
        self.append(&mut header, rel, io::empty())?;
        if opaque {
            let mut marker = self.header(EntryType::Regular, st);
            marker.set_mode(0o600);
            self.append(&mut marker, &rel.join(OPAQUE_MARKER), io::empty())?;
        }
        Ok(())
    }

    fn add_file(&mut self, rel: &Path, parent: BorrowedFd<'_>, child: &OsStr) -> Result<()> {
        let fd = match openat(
            parent,
            child,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // Gone, or swapped for a symlink, since the directory was listed.
            Err(Errno::ENOENT | Errno::ELOOP) => return Ok(()),
            Err(e) => return Err(FsError::sys("open", rel)(e)),
        };
        let st = fstat(&fd).map_err(FsError::sys("stat", rel))?;
        if file_type(&st) != SFlag::S_IFREG {
            // It changed type since the directory was listed: it is left out.
            return Ok(());
        }
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key).cloned() {
                let mut header = self.header(EntryType::Link, &st);
                header.set_size(0);
                self.builder
                    .append_link(&mut header, rel, &first)
                    .map_err(Self::stream_err)?;
                self.entries += 1;
                return Ok(());
            }
            self.links.insert(key, rel.to_path_buf());
        }
        let file = File::from(fd);
        if self.mode == TarMode::Layer {
            check_overlay_features(&file, rel)?;
            self.append_xattrs(&file, rel)?;
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let mut header = self.header(EntryType::Regular, &st);
        header.set_size(size);
        self.append(
            &mut header,
            rel,
            ExactSize {
                inner: file,
                left: size,
            },
        )?;
        self.file_bytes += size;
        Ok(())
    }

    fn header(&self, kind: EntryType, st: &FileStat) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(st.st_mode & 0o7777);
        header.set_uid(u64::from(st.st_uid));
        header.set_gid(u64::from(st.st_gid));
        header.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
        header.set_size(0);
        header
    }

    fn append(&mut self, header: &mut Header, name: &Path, data: impl Read) -> Result<()> {
        self.builder
            .append_data(header, name, data)
            .map_err(Self::stream_err)?;
        self.entries += 1;
        Ok(())
    }

    /// `user.*` and `security.capability` go into a PAX header before the entry (layers
    /// only); `trusted.*` never does, so a committed layer cannot plant overlay metadata.
    fn append_xattrs(&mut self, file: &File, rel: &Path) -> Result<()> {
        if self.mode != TarMode::Layer {
            return Ok(());
        }
        let names = match xattr::FileExt::list_xattr(file) {
            Ok(names) => names,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => return Ok(()),
            Err(e) => return Err(FsError::io("list xattrs of", rel)(e)),
        };
        let mut records = Vec::new();
        for name in names {
            let bytes = name.as_bytes();
            if !(bytes.starts_with(b"user.") || bytes == b"security.capability") {
                continue;
            }
            if let Ok(Some(value)) = xattr::FileExt::get_xattr(file, &name) {
                let mut key = b"SCHILY.xattr.".to_vec();
                key.extend_from_slice(bytes);
                records.extend(pax_record(&key, &value));
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::XHeader);
        header.set_mode(0o644);
        header.set_size(records.len() as u64);
        header.set_path("PaxHeader").map_err(Self::stream_err)?;
        header.set_cksum();
        self.builder
            .append(&header, records.as_slice())
            .map_err(Self::stream_err)
    }
}

/// Overlay features that keep data outside the upper dir (renamed directories, metadata-only
/// copy-ups): a layer made from such an upper dir would silently lose files.
fn check_overlay_features(file: &File, rel: &Path) -> Result<()> {
    for name in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
        if matches!(xattr::FileExt::get_xattr(file, name), Ok(Some(_))) {
            return Err(FsError::Unsupported(format!(
                "{} uses overlayfs {name}: mount overlays with redirect_dir=off,metacopy=off",
                display(rel)
            )));
        }
    }
    Ok(())
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `len` counts the whole record.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len = len.to_string().len() + rest;
    }
    let mut out = len.to_string().into_bytes();
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

fn whiteout_name(rel: &Path) -> PathBuf {
    let mut name = OsString::from(WHITEOUT_PREFIX);
    name.push(rel.file_name().unwrap_or_default());
    rel.with_file_name(name)
}

/// Yields exactly `left` bytes: the file's, then zeros if it shrank meanwhile; never more.
struct ExactSize<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactSize<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    buf[..want].fill(0);
                    break want;
                }
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// Turns a tar name into a relative path: leading `/` and `.` dropped, `..` refused.
fn normalize_entry(raw: &[u8]) -> Result<PathBuf> {
    let unsafe_path = |reason| FsError::UnsafePath {
        path: String::from_utf8_lossy(raw).into_owned(),
        reason,
    };
    if raw.contains(&0) {
        return Err(unsafe_path("NUL byte in name"));
    }
    let mut out = PathBuf::new();
    for comp in Path::new(OsStr::from_bytes(raw)).components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(unsafe_path("'..' component")),
        }
    }
    Ok(out)
}

struct Extractor<'a> {
    root: &'a ConfinedRoot,
    /// The destination directory, relative to the root.
    dest: PathBuf,
    options: &'a ExtractOptions,
    /// Directories written, with the mode and mtime to apply once their children are in.
    dirs: Vec<(PathBuf, u32, u64)>,
    stats: ExtractStats,
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let rel = normalize_entry(&raw)?;
        self.stats.entries += 1;
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = header.mtime().unwrap_or(0);
        let owner = if self.options.keep_ownership {
            let id = |v: io::Result<u64>| v.ok().and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
            (id(header.uid()), id(header.gid()))
        } else {
            (0, 0)
        };
        let Some(name) = rel.file_name().map(OsStr::to_owned) else {
            // The destination itself: its own mode and owner are left alone (Docker would
            // re-mode it, so `cp dir/. c:/` could chmod the container's `/`).
            if kind == EntryType::Directory {
                return Ok(());
            }
            return Err(FsError::Refused(format!(
                "cannot overwrite directory {} with a non-directory",
                display(&self.dest)
            )));
        };
        let full = self.dest.join(&rel);
        let parent = self.ensure_dir(rel.parent().unwrap_or(Path::new("")), owner)?;
        refuse_pseudo_fs(parent.as_fd(), &full)?;
        let existing = match fstatat(&parent, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(FsError::sys("stat", &full)(e)),
        };
        let shown = String::from_utf8_lossy(&raw).into_owned();
        if kind == EntryType::Directory {
            match existing {
                Some(st) if is_dir(&st) => {}
                Some(_) => {
                    return Err(FsError::Refused(format!(
                        "cannot overwrite non-directory {:?} with directory {shown:?}",
                        display(&full)
                    )));
                }
                None => match mkdirat(&parent, name.as_os_str(), Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(FsError::sys("mkdir", &full)(e)),
                },
            }
            let dir = openat(
                &parent,
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(FsError::sys("open", &full))?;
            fchown(
                &dir,
                Some(Uid::from_raw(owner.0)),
                Some(Gid::from_raw(owner.1)),
            )
            .map_err(FsError::sys("chown", &full))?;
            self.dirs.push((rel, mode, mtime));
            return Ok(());
        }
        if let Some(st) = existing {
            if is_dir(&st) {
                return Err(FsError::Refused(format!(
                    "cannot overwrite directory {:?} with non-directory {shown:?}",
                    display(&full)
                )));
            }
            unlinkat(&parent, name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(FsError::sys("remove", &full))?;
        }
        let uid = Some(Uid::from_raw(owner.0));
        let gid = Some(Gid::from_raw(owner.1));
        let time = TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let fd = openat(
                    &parent,
                    name.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(FsError::sys("create", &full))?;
                let mut file = File::from(fd);
                let n = io::copy(entry, &mut file).map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => FsError::Stream {
                        op: "reading the archive",
                        source: e,
                    },
                    _ => FsError::io("write", &full)(e),
                })?;
                self.stats.bytes += n;
                // chown clears setuid/setgid, so the mode goes after it.
                fchown(&file, uid, gid).map_err(FsError::sys("chown", &full))?;
                fchmod(&file, Mode::from_bits_truncate(mode))
                    .map_err(FsError::sys("chmod", &full))?;
                futimens(&file, &time, &time).map_err(FsError::sys("set times on", &full))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| FsError::UnsafePath {
                        path: shown.clone(),
                        reason: "symlink without a target",
                    })?;
                // Symlinks may point anywhere: they are only ever followed inside the root.
                symlinkat(OsStr::from_bytes(&target), &parent, name.as_os_str())
                    .map_err(FsError::sys("symlink", &full))?;
                fchownat(
                    &parent,
                    name.as_os_str(),
                    uid,
                    gid,
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(FsError::sys("chown", &full))?;
                utimensat(
                    &parent,
                    name.as_os_str(),
                    &time,
                    &time,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(FsError::sys("set times on", &full))?;
            }
            EntryType::Link => {
                let raw_target = entry
                    .link_name_bytes()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| FsError::UnsafePath {
                        path: shown.clone(),
                        reason: "hardlink without a target",
                    })?
                    .into_owned();
                let target = normalize_entry(&raw_target)?;
                let (Some(target_name), Some(target_parent)) =
                    (target.file_name(), target.parent())
                else {
                    return Err(FsError::UnsafePath {
                        path: shown,
                        reason: "hardlink to the destination itself",
                    });
                };
                let source_dir = self.root.dir(&self.dest.join(target_parent))?;
                // linkat without AT_SYMLINK_FOLLOW: a symlink source is linked, not followed.
                linkat(
                    &source_dir,
                    target_name,
                    &parent,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(FsError::sys("hardlink", &full))?;
            }
            EntryType::Fifo => {
                mkfifoat(&parent, name.as_os_str(), Mode::from_bits_truncate(0o600))
                    .map_err(FsError::sys("mkfifo", &full))?;
                // Opening a FIFO non-blocking for reading never waits, and gives a descriptor
                // to set its attributes through without following anything.
                let fd = openat(
                    &parent,
                    name.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(FsError::sys("open", &full))?;
                fchown(&fd, uid, gid).map_err(FsError::sys("chown", &full))?;
                fchmod(&fd, Mode::from_bits_truncate(mode))
                    .map_err(FsError::sys("chmod", &full))?;
            }
            EntryType::Char | EntryType::Block => {
                return Err(FsError::Refused(format!(
                    "refusing to create device node {}",
                    display(&full)
                )));
            }
            other => {
                return Err(FsError::Unsupported(format!(
                    "tar entry type {other:?} at {shown}"
                )));
            }
        }
        Ok(())
    }

    /// Opens `dest/rel`, creating the missing directories (mode 0755) on the way; symlinks
    /// on the way are followed inside the root.
    fn ensure_dir(&self, rel: &Path, owner: (u32, u32)) -> Result<OwnedFd> {
        let full = self.dest.join(rel);
        match self.root.dir(&full) {
            Err(FsError::NotFound(_)) => {}
            other => return other,
        }
        let mut cur = self.dest.clone();
        let mut fd = self.root.dir(&cur)?;
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                continue;
            };
            cur.push(name);
            match self.root.dir(&cur) {
                Ok(next) => fd = next,
                Err(FsError::NotFound(_)) => {
                    match mkdirat(&fd, name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) => {
                            fchownat(
                                &fd,
                                name,
                                Some(Uid::from_raw(owner.0)),
                                Some(Gid::from_raw(owner.1)),
                                AtFlags::AT_SYMLINK_NOFOLLOW,
                            )
                            .map_err(FsError::sys("chown", &cur))?;
                        }
                        Err(Errno::EEXIST) => {}
                        Err(e) => return Err(FsError::sys("mkdir", &cur)(e)),
                    }
                    fd = self.root.dir(&cur)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(fd)
    }

    /// Directory modes and times go last: children being written change a directory's mtime.
    fn finish_dirs(&mut self) -> Result<()> {
        for (rel, mode, mtime) in self.dirs.iter().rev() {
            let full = self.dest.join(rel);
            let fd = match self.root.resolve(
                &full,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            ) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => continue,
                Err(e) => return Err(FsError::sys("open", &full)(e)),
            };
            fchmod(&fd, Mode::from_bits_truncate(*mode)).map_err(FsError::sys("chmod", &full))?;
            let time = TimeSpec::new(i64::try_from(*mtime).unwrap_or(0), 0);
            futimens(&fd, &time, &time).map_err(FsError::sys("set times on", &full))?;
        }
        Ok(())
    }
}
