//! What a container changed, read from its overlay upper dir: the `docker diff` list, and the
//! OCI layer tar that `commit` stores (whiteout devices become `.wh.<name>` entries, opaque
//! directories get a `.wh..wh..opq` entry).
//!
//! The upper dir belongs to a container that may still run and be hostile, so it is only ever
//! read through the confined walk (no symlink is followed, nothing outside it is opened). The
//! lower layers are this store's own unpacked layers, read by path without following symlinks.
//!
//! Reporting follows Docker's overlay2 driver: an entry absent from the layers below is `A`,
//! a whiteout is `D`, anything else present below is `C` except a directory whose mode, owner
//! and mtime are unchanged (it is only there because something inside it changed), and the
//! directory holding any reported entry is `C` (Docker does this for `A` and `D`; we do it
//! for `C` too, so `/etc` shows up with `/etc/passwd` whatever the filesystem's directory
//! sizes, which Docker also compares and which make its output vary between hosts). One departure: Docker reports an opaque
//! directory (one deleted and re-created in the container) as `D`; here it is `C`, and every
//! entry of the layers below that it hides is listed as `D`, which says what really happened.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag};

use crate::confined::{ConfinedRoot, TarMode, TarOut, is_whiteout_stat, walk};
use crate::error::Result;
use crate::unpack::{OPAQUE_XATTR, is_opaque};

/// The kind of one change, with Docker's letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// `C`: present below and changed (or a directory whose contents changed).
    Modified,
    /// `A`: not present in the image.
    Added,
    /// `D`: present in the image, deleted in the container.
    Deleted,
}

impl ChangeKind {
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Modified => 'C',
            ChangeKind::Added => 'A',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One line of `docker diff`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    /// Absolute path inside the container.
    pub path: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.letter(), self.path)
    }
}

/// What the walk of the upper dir records of each entry.
struct UpperEntry {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    whiteout: bool,
    opaque: bool,
}

impl UpperEntry {
    fn is_dir(&self) -> bool {
        self.mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits()
    }
}

/// The changes of a container whose upper dir is `upper`, on top of the image layers
/// `lowers` (their `fs` dirs, nearest first), sorted by path component by component (the
/// order of a depth-first walk, so a directory comes right before its contents).
pub fn changes(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>> {
    let root = ConfinedRoot::open(upper)?;
    let mut entries: BTreeMap<PathBuf, UpperEntry> = BTreeMap::new();
    walk(root.fd(), |rel, parent, name, st| {
        let opaque = file_is_dir(st)
            && openat(
                parent,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .ok()
            .is_some_and(|fd| {
                let file = fs::File::from(fd);
                matches!(xattr::FileExt::get_xattr(&file, OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
            });
        entries.insert(
            rel.to_path_buf(),
            UpperEntry {
                mode: st.st_mode,
                uid: st.st_uid,
                gid: st.st_gid,
                mtime: (st.st_mtime, st.st_mtime_nsec),
                whiteout: is_whiteout_stat(st),
                opaque,
            },
        );
        Ok(true)
    })?;

    let mut out: BTreeMap<PathBuf, ChangeKind> = BTreeMap::new();
    for (rel, entry) in &entries {
        let kind = if entry.whiteout {
            Some(ChangeKind::Deleted)
        } else {
            let below = lower_view(lowers, rel);
            match below.top {
                None => Some(ChangeKind::Added),
                Some(_) if entry.opaque => {
                    for child in merged_children(&below.dirs) {
                        let hidden = rel.join(&child);
                        if !entries.contains_key(&hidden) {
                            out.insert(hidden, ChangeKind::Deleted);
                        }
                    }
                    Some(ChangeKind::Modified)
                }
                Some(lower) => {
                    let unchanged_dir = entry.is_dir()
                        && lower.is_dir()
                        && entry.mode == lower.mode()
                        && entry.uid == lower.uid()
                        && entry.gid == lower.gid()
                        && entry.mtime == (lower.mtime(), lower.mtime_nsec());
                    (!unchanged_dir).then_some(ChangeKind::Modified)
                }
            }
        };
        if let Some(kind) = kind {
            out.insert(rel.clone(), kind);
            // The directory holding a change is changed too (Docker's overlay2 rule).
            if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                out.entry(parent.to_path_buf())
                    .or_insert(ChangeKind::Modified);
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|(rel, kind)| Change {
            kind,
            path: format!("/{}", rel.display()),
        })
        .collect())
}

fn file_is_dir(st: &FileStat) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits()
}

/// What the layers below show at one path.
struct LowerView {
    /// The entry the merged view shows (`None`: absent or whited out).
    top: Option<fs::Metadata>,
    /// When it is a directory: the layer directories merged into it, nearest first.
    dirs: Vec<PathBuf>,
}

/// Looks `rel` up through the layers nearest first, honouring their whiteouts and opaque
/// directories, without following any symlink.
fn lower_view(lowers: &[PathBuf], rel: &Path) -> LowerView {
    let comps: Vec<_> = rel.components().collect();
    let mut view = LowerView {
        top: None,
        dirs: Vec::new(),
    };
    'layers: for lower in lowers {
        let mut cur = lower.clone();
        let mut opaque_above = false;
        for (i, comp) in comps.iter().enumerate() {
            cur.push(comp);
            let last = i + 1 == comps.len();
            let meta = match fs::symlink_metadata(&cur) {
                Ok(m) => m,
                // Absent here: deeper layers show through unless an opaque parent hides them.
                Err(_) if opaque_above => return view,
                Err(_) => continue 'layers,
            };
            let whiteout = meta.file_type().is_char_device() && meta.rdev() == 0;
            if whiteout || !meta.is_dir() {
                if last && !whiteout && view.top.is_none() {
                    view.top = Some(meta);
                }
                return view;
            }
            if last {
                if view.top.is_none() {
                    view.top = Some(meta);
                }
                view.dirs.push(cur.clone());
                if is_opaque(&cur) || opaque_above {
                    return view;
                }
                continue 'layers;
            }
            opaque_above |= is_opaque(&cur);
        }
    }
    view
}

/// The names the merged directory made of `dirs` (nearest first) shows.
fn merged_children(dirs: &[PathBuf]) -> BTreeSet<OsString> {
    let mut seen: BTreeMap<OsString, bool> = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let visible = e
                .metadata()
                .map(|m| !(m.file_type().is_char_device() && m.rdev() == 0))
                .unwrap_or(false);
            seen.entry(e.file_name()).or_insert(visible);
        }
    }
    seen.into_iter()
        .filter_map(|(name, visible)| visible.then_some(name))
        .collect()
}

/// Writes the upper dir as an OCI layer tar; returns the writer and the number of entries
/// (0: the container changed nothing).
pub(crate) fn write_layer<W: Write>(upper: &Path, out: W) -> Result<(W, u64)> {
    let root = ConfinedRoot::open(upper)?;
    let mut tar = TarOut::new(out, TarMode::Layer);
    walk(root.fd(), |rel, parent, name, st| {
        tar.add(rel, parent, name, st)
    })?;
    let entries = tar.entries;
    Ok((tar.finish()?, entries))
}
