//! Safe extraction of one layer tar into an empty directory in overlayfs "upperdir" form.
//!
//! Safety rules (each refused with [`ImageError::UnsafePath`] unless noted):
//! - entry names are made relative (a leading `/` is stripped, as tar does); any `..`
//!   component is refused, so nothing is named outside the target;
//! - every parent directory is resolved component by component with `lstat` inside the
//!   target: a symlink (or a non-directory) on the way is refused, and so is a parent that
//!   the lower layers show as a symlink; files are created with `O_NOFOLLOW|O_EXCL`;
//! - hardlink targets must be earlier entries of this same layer, reached through real
//!   directories only, and not directories or whiteouts; the link itself is made with
//!   `linkat` without following, so a link to a symlink is a second symlink, never its target;
//! - symlinks may point anywhere: they are only ever followed inside the container;
//! - `.wh.X` becomes a char device 0:0 named X and `.wh..wh..opq` the xattr
//!   `trusted.overlay.opaque=y`, both need root ([`ImageError::NeedsRoot`] otherwise);
//! - device nodes in a layer are created only as root, and a literal char device 0:0 is
//!   skipped (it would act as a whiteout); unprivileged unpacks skip devices with a warning;
//! - ownership, setuid/setgid bits and `security.capability` are kept only as root;
//!   unprivileged unpacks strip setuid/setgid; only `user.*` and `security.capability` xattrs
//!   are applied, never `trusted.*` (a layer must not plant overlay redirects);
//! - entry count and written bytes are bounded by [`Limits`].
//!
//! The target is a fresh private directory under the store, so nobody but this unpacker
//! writes there while it runs: checking with `lstat` and then acting on the path is not racy.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use tar::EntryType;

use crate::error::{ImageError, Result};
use crate::fsutil::create_new_file;
use crate::limits::Limits;

pub(crate) const WHITEOUT_PREFIX: &str = ".wh.";
pub(crate) const OPAQUE_MARKER: &str = ".wh..wh..opq";
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PATH_MAX: usize = 4096;

/// What one unpack wrote.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UnpackStats {
    /// Bytes of regular-file data written.
    pub(crate) size: u64,
    /// Tar entries seen.
    pub(crate) entries: u64,
}

#[derive(Clone, Copy, Debug)]
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<i64>,
}

impl Attrs {
    const DEFAULT_DIR: Attrs = Attrs {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: None,
    };

    fn of(meta: &fs::Metadata) -> Attrs {
        Attrs {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: Some(meta.mtime()),
        }
    }
}

/// What the stack below shows at a path.
enum Lower {
    Missing,
    Dir(Attrs),
    Symlink,
    Other,
}

/// Extracts one layer; see the module docs for the rules it enforces.
pub(crate) struct Unpacker<'a> {
    root: &'a Path,
    /// The `fs` dirs of the layers below, nearest first.
    lowers: &'a [PathBuf],
    limits: &'a Limits,
    privileged: bool,
    /// Whiteout devices this layer created, so a later same-layer entry can replace them.
    whiteouts: BTreeSet<PathBuf>,
    /// Directory attributes, applied after all entries (children change mtimes, and a
    /// read-only mode would stop an unprivileged unpack from filling the directory).
    dirs: BTreeMap<PathBuf, Attrs>,
    stats: UnpackStats,
}

impl<'a> Unpacker<'a> {
    pub(crate) fn new(
        root: &'a Path,
        lowers: &'a [PathBuf],
        limits: &'a Limits,
        privileged: bool,
    ) -> Self {
        Unpacker {
            root,
            lowers,
            limits,
            privileged,
            whiteouts: BTreeSet::new(),
            dirs: BTreeMap::new(),
            stats: UnpackStats::default(),
        }
    }

    /// Unpacks the tar stream, then reads it to the end so the caller's hash covers
    /// the whole stream (the DiffID includes the end-of-archive padding).
    pub(crate) fn unpack<R: Read>(mut self, stream: R) -> Result<UnpackStats> {
        // The layer root shadows the root of the layers below: without an explicit `./`
        // entry it must keep their attributes, or a layer would silently chmod `/`.
        let root_attrs = match self.lowers.first() {
            Some(l) => fs::symlink_metadata(l)
                .map(|m| Attrs::of(&m))
                .unwrap_or(Attrs::DEFAULT_DIR),
            None => Attrs::DEFAULT_DIR,
        };
        self.dirs.insert(PathBuf::new(), root_attrs);

        let mut archive = tar::Archive::new(stream);
        {
            let entries = archive
                .entries()
                .map_err(ImageError::stream("reading layer tar"))?;
            for entry in entries {
                let mut entry = entry.map_err(ImageError::stream("reading layer tar"))?;
                self.stats.entries += 1;
                if self.stats.entries > self.limits.max_layer_entries {
                    return Err(ImageError::LimitExceeded {
                        what: "layer entry count",
                        limit: self.limits.max_layer_entries,
                    });
                }
                self.entry(&mut entry)?;
            }
        }
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(ImageError::stream("reading layer tar"))?;
        self.finish_dirs()?;
        Ok(self.stats)
    }

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
        let rel = normalize(&raw)?;
        let attrs = header_attrs(entry.header())?;

        if let Some(name) = rel.file_name().map(OsStr::as_bytes)
            && name.starts_with(WHITEOUT_PREFIX.as_bytes())
        {
            let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            if name == OPAQUE_MARKER.as_bytes() {
                return self.opaque(&parent);
            }
            if name.starts_with(b".wh..wh.") {
                // aufs bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`), never content.
                tracing::debug!(path = %rel.display(), "skipping aufs metadata entry");
                return Ok(());
            }
            let victim = OsStr::from_bytes(&name[WHITEOUT_PREFIX.len()..]);
            return self.whiteout(&parent, victim, &attrs);
        }

        match kind {
            EntryType::Directory => self.directory(&rel, attrs, entry),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.regular(&rel, attrs, entry)
            }
            EntryType::Symlink => self.symlink(&rel, attrs, entry),
            EntryType::Link => self.hardlink(&rel, entry),
            EntryType::Char | EntryType::Block => self.device(&rel, kind, attrs, entry),
            EntryType::Fifo => self.fifo(&rel, attrs, entry),
            other => Err(ImageError::InvalidArchive(format!(
                "unsupported tar entry type {other:?} at {}",
                rel.display()
            ))),
        }
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    fn directory<R: Read>(
        &mut self,
        rel: &Path,
        attrs: Attrs,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<()> {
        if rel.as_os_str().is_empty() {
            self.dirs.insert(PathBuf::new(), attrs);
            return self.apply_xattrs(self.root, entry);
        }
        self.ensure_parent(rel)?;
        let full = self.full(rel);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                let was_whiteout = self.clear(rel)?;
                mkdir(&full)?;
                if was_whiteout {
                    // The layer deleted the lower X and made a new X: only an opaque dir
                    // expresses "same name, none of the old children".
                    self.set_opaque(&full)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => mkdir(&full)?,
            Err(e) => return Err(ImageError::io("stat", &full)(e)),
        }
        self.dirs.insert(rel.to_path_buf(), attrs);
        self.apply_xattrs(&full, entry)
    }

    fn regular<R: Read>(
        &mut self,
        rel: &Path,
        attrs: Attrs,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<()> {
        let full = self.prepare_leaf(rel)?;
        let mut file = create_new_file(&full, 0o600).map_err(ImageError::io("create", &full))?;
        let budget = self.limits.max_layer_bytes.saturating_sub(self.stats.size);
        let written = copy_capped(entry, &mut file, budget).map_err(|e| match e {
            CopyError::Read(e) => ImageError::stream("reading layer tar")(e),
            CopyError::Write(e) => ImageError::io("write", &full)(e),
            CopyError::Limit => ImageError::LimitExceeded {
                what: "layer unpacked bytes",
                limit: self.limits.max_layer_bytes,
            },
        })?;
        self.stats.size += written;
        drop(file);
        self.apply_attrs(&full, attrs, false)?;
        self.apply_xattrs(&full, entry)?;
        set_mtime(&full, attrs)
    }

    fn symlink<R: Read>(
        &mut self,
        rel: &Path,
        attrs: Attrs,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<()> {
        let target = match entry.link_name_bytes() {
            Some(t) if !t.is_empty() => OsString::from_vec(t.into_owned()),
            _ => {
                return Err(ImageError::unsafe_path(
                    rel.as_os_str().as_bytes(),
                    "symlink without a target",
                ));
            }
        };
        if rel.as_os_str().is_empty() {
            return Err(ImageError::unsafe_path(
                b"/",
                "the layer root cannot be a symlink",
            ));
        }
        let full = self.prepare_leaf(rel)?;
        std::os::unix::fs::symlink(&target, &full).map_err(ImageError::io("symlink", &full))?;
        self.apply_attrs(&full, attrs, true)?;
        set_mtime(&full, attrs)
    }

    fn hardlink<R: Read>(&mut self, rel: &Path, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = match entry.link_name_bytes() {
            Some(t) if !t.is_empty() => t.into_owned(),
            _ => {
                return Err(ImageError::unsafe_path(
                    rel.as_os_str().as_bytes(),
                    "hardlink without a target",
                ));
            }
        };
        let target_rel = normalize(&raw)?;
        if target_rel.as_os_str().is_empty() || target_rel == rel {
            return Err(ImageError::unsafe_path(
                &raw,
                "hardlink to the layer root or to itself",
            ));
        }
        let source = self.resolve_existing(&target_rel).map_err(|_| {
            ImageError::unsafe_path(
                &raw,
                "hardlink target is not an earlier entry of this layer",
            )
        })?;
        let meta = fs::symlink_metadata(&source).map_err(ImageError::io("stat", &source))?;
        if meta.is_dir() || is_whiteout(&meta) || self.whiteouts.contains(&target_rel) {
            return Err(ImageError::unsafe_path(
                &raw,
                "hardlink target is a directory or a whiteout",
            ));
        }
        let full = self.prepare_leaf(rel)?;
        // std's hard_link is linkat(..., 0): a symlink source is linked, not followed.
        fs::hard_link(&source, &full).map_err(ImageError::io("hardlink", &full))
    }

    fn device<R: Read>(
        &mut self,
        rel: &Path,
        kind: EntryType,
        attrs: Attrs,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<()> {
        let header = entry.header();
        let major = header.device_major().ok().flatten().unwrap_or(0);
        let minor = header.device_minor().ok().flatten().unwrap_or(0);
        if kind == EntryType::Char && major == 0 && minor == 0 {
            tracing::warn!(path = %rel.display(), "skipping char device 0:0 in layer: it would act as an overlay whiteout");
            return Ok(());
        }
        if !self.privileged {
            tracing::warn!(path = %rel.display(), "skipping device node: creating it needs root");
            return Ok(());
        }
        let full = self.prepare_leaf(rel)?;
        let sflag = if kind == EntryType::Char {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        mknod(
            &full,
            sflag,
            Mode::from_bits_truncate(0o600),
            makedev(major.into(), minor.into()),
        )
        .map_err(|e| ImageError::io("mknod", &full)(e.into()))?;
        self.apply_attrs(&full, attrs, false)?;
        set_mtime(&full, attrs)
    }

    fn fifo<R: Read>(
        &mut self,
        rel: &Path,
        attrs: Attrs,
        _entry: &mut tar::Entry<'_, R>,
    ) -> Result<()> {
        let full = self.prepare_leaf(rel)?;
        nix::unistd::mkfifo(&full, Mode::from_bits_truncate(0o600))
            .map_err(|e| ImageError::io("mkfifo", &full)(e.into()))?;
        self.apply_attrs(&full, attrs, false)?;
        set_mtime(&full, attrs)
    }

    fn whiteout(&mut self, parent: &Path, victim: &OsStr, attrs: &Attrs) -> Result<()> {
        if victim.is_empty() || victim == "." || victim == ".." {
            return Err(ImageError::unsafe_path(
                victim.as_bytes(),
                "whiteout of an invalid name",
            ));
        }
        let rel = parent.join(victim);
        if !self.privileged {
            return Err(ImageError::NeedsRoot(format!(
                "whiteout for {} (mknod 0:0)",
                rel.display()
            )));
        }
        self.ensure_parent(&rel)?;
        let full = self.full(&rel);
        match fs::symlink_metadata(&full) {
            // Whiteouts hide only lower layers; this layer's own entry survives, but a
            // directory must stop showing the lower directory's children.
            Ok(m) if m.is_dir() => self.set_opaque(&full),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                mknod(&full, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(|e| ImageError::io("mknod whiteout", &full)(e.into()))?;
                std::os::unix::fs::lchown(&full, Some(attrs.uid), Some(attrs.gid))
                    .map_err(ImageError::io("chown", &full))?;
                self.whiteouts.insert(rel);
                Ok(())
            }
            Err(e) => Err(ImageError::io("stat", &full)(e)),
        }
    }

    fn opaque(&mut self, dir: &Path) -> Result<()> {
        if !self.privileged {
            return Err(ImageError::NeedsRoot(format!(
                "opaque directory {} (trusted.overlay.opaque xattr)",
                dir.display()
            )));
        }
        if !dir.as_os_str().is_empty() {
            self.ensure_dir(dir)?;
        }
        let full = self.full(dir);
        self.set_opaque(&full)
    }

    fn set_opaque(&self, full: &Path) -> Result<()> {
        if !self.privileged {
            return Err(ImageError::NeedsRoot(format!(
                "opaque directory {}",
                full.display()
            )));
        }
        xattr::set(full, OPAQUE_XATTR, b"y").map_err(ImageError::io("set opaque xattr on", full))
    }

    /// Ensures the parent exists as a real directory and clears whatever is at `rel`.
    fn prepare_leaf(&mut self, rel: &Path) -> Result<PathBuf> {
        if rel.as_os_str().is_empty() {
            return Err(ImageError::unsafe_path(
                b"/",
                "non-directory entry for the layer root",
            ));
        }
        self.ensure_parent(rel)?;
        self.clear(rel)?;
        Ok(self.full(rel))
    }

    /// Removes an earlier same-layer entry at `rel` (a duplicate path: last one wins).
    /// Returns whether it was a whiteout this layer made.
    fn clear(&mut self, rel: &Path) -> Result<bool> {
        let full = self.full(rel);
        let meta = match fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(ImageError::io("stat", &full)(e)),
        };
        if meta.is_dir() {
            crate::fsutil::remove_tree(&full).map_err(ImageError::io("remove", &full))?;
            // Descendants sort right after their ancestor, so this is a range, not a scan
            // (a layer replacing many directories must not cost quadratic time).
            let dirs: Vec<PathBuf> = self
                .dirs
                .range(rel.to_path_buf()..)
                .take_while(|(p, _)| p.starts_with(rel))
                .map(|(p, _)| p.clone())
                .collect();
            for p in dirs {
                self.dirs.remove(&p);
            }
            let whiteouts: Vec<PathBuf> = self
                .whiteouts
                .range(rel.to_path_buf()..)
                .take_while(|p| p.starts_with(rel))
                .cloned()
                .collect();
            for p in whiteouts {
                self.whiteouts.remove(&p);
            }
            Ok(false)
        } else {
            fs::remove_file(&full).map_err(ImageError::io("remove", &full))?;
            Ok(self.whiteouts.remove(rel))
        }
    }

    fn ensure_parent(&mut self, rel: &Path) -> Result<()> {
        match rel.parent() {
            Some(p) if !p.as_os_str().is_empty() => self.ensure_dir(p),
            _ => Ok(()),
        }
    }

    /// Walks `rel` from the root, creating missing directories and refusing symlinks.
    fn ensure_dir(&mut self, rel: &Path) -> Result<()> {
        let mut cur = PathBuf::new();
        for comp in rel.components() {
            cur.push(comp);
            let full = self.full(&cur);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(ImageError::unsafe_path(
                        cur.as_os_str().as_bytes(),
                        "parent directory is a symlink",
                    ));
                }
                Ok(_) if self.whiteouts.contains(&cur) => {
                    // `.wh.a` then `a/b` in one layer: a new `a` replacing the lower one.
                    fs::remove_file(&full).map_err(ImageError::io("remove", &full))?;
                    self.whiteouts.remove(&cur);
                    mkdir(&full)?;
                    self.set_opaque(&full)?;
                    self.dirs.insert(cur.clone(), Attrs::DEFAULT_DIR);
                }
                Ok(_) => {
                    return Err(ImageError::unsafe_path(
                        cur.as_os_str().as_bytes(),
                        "parent path is not a directory",
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let attrs = match self.lower_lookup(&cur) {
                        Lower::Symlink => {
                            return Err(ImageError::unsafe_path(
                                cur.as_os_str().as_bytes(),
                                "parent directory is a symlink in a lower layer",
                            ));
                        }
                        // An implicit directory shadows the lower one in the merged view,
                        // so it takes over its mode and owner rather than a default.
                        Lower::Dir(a) => a,
                        Lower::Missing | Lower::Other => Attrs::DEFAULT_DIR,
                    };
                    mkdir(&full)?;
                    self.dirs.insert(cur.clone(), attrs);
                }
                Err(e) => return Err(ImageError::io("stat", &full)(e)),
            }
        }
        Ok(())
    }

    /// Resolves an existing path of this layer through real directories only.
    fn resolve_existing(&self, rel: &Path) -> Result<PathBuf> {
        let mut cur = self.root.to_path_buf();
        let comps: Vec<_> = rel.components().collect();
        for (i, comp) in comps.iter().enumerate() {
            cur.push(comp);
            let m = fs::symlink_metadata(&cur).map_err(ImageError::io("stat", &cur))?;
            if i + 1 < comps.len() && !m.file_type().is_dir() {
                return Err(ImageError::unsafe_path(
                    rel.as_os_str().as_bytes(),
                    "path goes through a non-directory",
                ));
            }
        }
        Ok(cur)
    }

    /// What the merged view of the lower layers has at `rel`, honouring their whiteouts
    /// and opaque directories, without ever following a symlink on the host.
    fn lower_lookup(&self, rel: &Path) -> Lower {
        let comps: Vec<_> = rel.components().collect();
        for lower in self.lowers {
            let mut cur = lower.clone();
            let mut opaque_above = false;
            for (i, comp) in comps.iter().enumerate() {
                cur.push(comp);
                let last = i + 1 == comps.len();
                match fs::symlink_metadata(&cur) {
                    Err(_) => {
                        if opaque_above {
                            return Lower::Missing;
                        }
                        break;
                    }
                    Ok(m) if is_whiteout(&m) => return Lower::Missing,
                    Ok(m) if m.file_type().is_symlink() => return Lower::Symlink,
                    Ok(m) if m.is_dir() => {
                        if last {
                            return Lower::Dir(Attrs::of(&m));
                        }
                        if is_opaque(&cur) {
                            opaque_above = true;
                        }
                    }
                    Ok(_) => return if last { Lower::Other } else { Lower::Missing },
                }
            }
        }
        Lower::Missing
    }

    fn apply_attrs(&self, full: &Path, attrs: Attrs, is_symlink: bool) -> Result<()> {
        if self.privileged {
            // chown clears setuid/setgid and file capabilities, so it goes first.
            std::os::unix::fs::lchown(full, Some(attrs.uid), Some(attrs.gid))
                .map_err(ImageError::io("chown", full))?;
        }
        if !is_symlink {
            let mode = if self.privileged {
                attrs.mode
            } else {
                attrs.mode & !0o6000
            };
            fs::set_permissions(full, fs::Permissions::from_mode(mode))
                .map_err(ImageError::io("chmod", full))?;
        }
        Ok(())
    }

    fn apply_xattrs<R: Read>(&self, full: &Path, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let Some(exts) = entry
            .pax_extensions()
            .map_err(ImageError::stream("reading pax headers"))?
        else {
            return Ok(());
        };
        for ext in exts {
            let ext = ext.map_err(ImageError::stream("reading pax headers"))?;
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            let allowed =
                name.starts_with(b"user.") || (self.privileged && name == b"security.capability");
            if !allowed {
                tracing::debug!(name = %String::from_utf8_lossy(name), path = %full.display(), "skipping xattr from layer");
                continue;
            }
            xattr::set(full, OsStr::from_bytes(name), ext.value_bytes())
                .map_err(ImageError::io("set xattr on", full))?;
        }
        Ok(())
    }

    /// Applies directory attributes children first, so setting a parent's mtime is last.
    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (rel, attrs) in dirs.iter().rev() {
            let full = self.full(rel);
            // chmod follows symlinks; every entry here is a directory this unpack made,
            // but a mode is never applied through anything else.
            if !fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            self.apply_attrs(&full, *attrs, false)?;
            set_mtime(&full, *attrs)?;
        }
        Ok(())
    }
}

/// Turns a tar name into a relative path: leading `/` and `.` components dropped, `..` refused.
pub(crate) fn normalize(raw: &[u8]) -> Result<PathBuf> {
    if raw.len() > PATH_MAX {
        return Err(ImageError::unsafe_path(
            &raw[..64],
            "path longer than PATH_MAX",
        ));
    }
    if raw.contains(&0) {
        return Err(ImageError::unsafe_path(raw, "NUL byte in path"));
    }
    let mut out = PathBuf::new();
    for comp in Path::new(OsStr::from_bytes(raw)).components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(ImageError::unsafe_path(raw, "'..' component")),
        }
    }
    Ok(out)
}

fn header_attrs(h: &tar::Header) -> Result<Attrs> {
    let bad = |what: &str| ImageError::InvalidArchive(format!("bad {what} in tar header"));
    let id = |v: u64, what: &str| u32::try_from(v).map_err(|_| bad(what));
    Ok(Attrs {
        mode: h.mode().map_err(|_| bad("mode"))? & 0o7777,
        uid: id(h.uid().map_err(|_| bad("uid"))?, "uid")?,
        gid: id(h.gid().map_err(|_| bad("gid"))?, "gid")?,
        mtime: h.mtime().ok().and_then(|t| i64::try_from(t).ok()),
    })
}

fn mkdir(full: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(full)
        .map_err(ImageError::io("mkdir", full))
}

fn set_mtime(full: &Path, attrs: Attrs) -> Result<()> {
    if let Some(t) = attrs.mtime {
        let ft = filetime::FileTime::from_unix_time(t, 0);
        filetime::set_symlink_file_times(full, ft, ft)
            .map_err(ImageError::io("set times on", full))?;
    }
    Ok(())
}

pub(crate) fn is_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

pub(crate) fn is_opaque(dir: &Path) -> bool {
    matches!(xattr::get(dir, OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
    Limit,
}

/// Copies at most `budget` bytes; more is an error (a sparse entry can claim far more
/// output than its bytes in the stream).
fn copy_capped<R: Read, W: Write>(r: &mut R, w: &mut W, budget: u64) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        total += n as u64;
        if total > budget {
            return Err(CopyError::Limit);
        }
        w.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_roots_and_refuses_parents() {
        assert_eq!(
            normalize(b"/etc/passwd").unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(normalize(b"./a/./b/").unwrap(), PathBuf::from("a/b"));
        assert_eq!(normalize(b"./").unwrap(), PathBuf::new());
        assert_eq!(normalize(b"//a//b").unwrap(), PathBuf::from("a/b"));
        assert!(normalize(b"../x").is_err());
        assert!(normalize(b"a/../../x").is_err());
        assert!(normalize(b"a/..").is_err());
        assert!(normalize(b"/..").is_err());
    }
}
