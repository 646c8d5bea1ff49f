//! `load`: `docker save` tarballs (legacy `manifest.json`, and current Docker's combined form)
//! and OCI image layouts. The archive is first staged whole under `ingest/` (members keyed by
//! their normalised name, never extracted by it), then only what the metadata reaches is
//! verified by digest and moved into the store.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::{Deserialize, Serialize};
use tar::EntryType;

use crate::compression::{Compression, decompress, peek};
use crate::digest::{Digest, Hasher, LimitedReader};
use crate::error::{ImageError, Result};
use crate::fsutil::{TempTree, create_new_file};
use crate::reference::Reference;
use crate::store::{
    DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2, ImageStore, NewImage, Txn, check_size, parse_json,
};
use crate::types::LoadedImage;
use crate::unpack::normalize;

pub(crate) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub(crate) const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
const MAX_LINK_HOPS: usize = 16;

/// One entry of Docker's `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DockerManifestEntry {
    #[serde(rename = "Config")]
    pub(crate) config: String,
    #[serde(rename = "RepoTags", default)]
    pub(crate) repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    pub(crate) layers: Vec<String>,
}

/// A member of the archive, copied to a private file and hashed.
struct Staged {
    path: PathBuf,
    digest: Digest,
    size: u64,
}

/// The archive's regular files and links, by normalised member name.
struct Staging {
    dir: TempTree,
    /// Where adopted members went: a member moved into the store is read from there.
    blobs_dir: PathBuf,
    files: HashMap<PathBuf, Staged>,
    links: HashMap<PathBuf, PathBuf>,
    next: usize,
}

/// An image the archive describes, before it is registered.
struct Planned {
    manifest: Digest,
    config: Digest,
    refs: Vec<Reference>,
}

impl ImageStore {
    /// Loads every image of a `docker save` tarball or an OCI layout tar (optionally gzip-
    /// or zstd-compressed). All or nothing: a bad archive leaves the store unchanged.
    pub fn load(&self, archive: impl Read) -> Result<Vec<LoadedImage>> {
        self.transaction(|txn| {
            let staging = Staging::read(self, archive)?;
            let plan = plan(self, &staging, txn)?;
            let mut images = Vec::with_capacity(plan.len());
            for p in plan {
                let (id, record) = self.register(&p.manifest, txn)?;
                debug_assert_eq!(id, p.config);
                images.push(NewImage {
                    id,
                    record,
                    refs: p.refs,
                });
            }
            let loaded = self.commit_images(images)?;
            for l in &loaded {
                tracing::info!(id = %l.id, references = ?l.references, "image loaded");
            }
            Ok(loaded)
        })
    }
}

impl Staging {
    fn read(store: &ImageStore, archive: impl Read) -> Result<Staging> {
        let limits = &store.limits;
        let dir = TempTree::new_in(store.content.ingest_dir(), "load-")?;
        let mut staging = Staging {
            dir,
            blobs_dir: store.content.blobs_dir().to_path_buf(),
            files: HashMap::new(),
            links: HashMap::new(),
            next: 0,
        };
        let (_, stream) = decompress(archive)?;
        let stream = LimitedReader::new(stream, limits.max_archive_bytes, "archive size");
        let mut ar = tar::Archive::new(stream);
        let mut count = 0u64;
        {
            let entries = ar
                .entries()
                .map_err(ImageError::stream("reading archive"))?;
            for entry in entries {
                let mut entry = entry.map_err(ImageError::stream("reading archive"))?;
                count += 1;
                if count > limits.max_archive_entries {
                    return Err(ImageError::LimitExceeded {
                        what: "archive entry count",
                        limit: limits.max_archive_entries,
                    });
                }
                let raw = entry.path_bytes().into_owned();
                let path = normalize(&raw)?;
                match entry.header().entry_type() {
                    EntryType::Regular | EntryType::Continuous => {
                        if path.as_os_str().is_empty() {
                            return Err(ImageError::unsafe_path(&raw, "file entry without a name"));
                        }
                        let staged = staging.stage(&mut entry)?;
                        // The same member twice with the same bytes is harmless (tar
                        // writers do it); with different bytes it is ambiguous.
                        if let Some(prev) = staging.files.get(&path)
                            && prev.digest == staged.digest
                        {
                            let _ = std::fs::remove_file(&staged.path);
                            continue;
                        }
                        if staging.files.insert(path.clone(), staged).is_some()
                            || staging.links.contains_key(&path)
                        {
                            return Err(ImageError::InvalidArchive(format!(
                                "duplicate archive entry {}",
                                path.display()
                            )));
                        }
                    }
                    EntryType::Symlink => {
                        let target = entry
                            .link_name_bytes()
                            .map(|t| t.into_owned())
                            .unwrap_or_default();
                        let resolved = resolve_member_symlink(&path, &target)?;
                        staging.add_link(path, resolved)?;
                    }
                    EntryType::Link => {
                        let target = entry
                            .link_name_bytes()
                            .map(|t| t.into_owned())
                            .unwrap_or_default();
                        let resolved = normalize(&target)?;
                        staging.add_link(path, resolved)?;
                    }
                    EntryType::Directory
                    | EntryType::XGlobalHeader
                    | EntryType::XHeader
                    | EntryType::GNULongName
                    | EntryType::GNULongLink => {}
                    other => {
                        tracing::debug!(path = %path.display(), kind = ?other, "ignoring archive entry");
                    }
                }
            }
        }
        let mut rest = ar.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(ImageError::stream("reading archive"))?;
        Ok(staging)
    }

    fn add_link(&mut self, path: PathBuf, target: PathBuf) -> Result<()> {
        if self.files.contains_key(&path) || self.links.insert(path.clone(), target).is_some() {
            return Err(ImageError::InvalidArchive(format!(
                "duplicate archive entry {}",
                path.display()
            )));
        }
        Ok(())
    }

    fn stage<R: Read>(&mut self, entry: &mut R) -> Result<Staged> {
        // Numbered names: the member's own name never touches the filesystem.
        let path = self.dir.path().join(self.next.to_string());
        self.next += 1;
        let mut file = create_new_file(&path, 0o600).map_err(ImageError::io("create", &path))?;
        let mut hasher = Hasher::default();
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ImageError::stream("reading archive")(e)),
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(ImageError::io("write", &path))?;
        }
        let (digest, size) = hasher.finish();
        Ok(Staged { path, digest, size })
    }

    fn exists(&self, name: &str) -> bool {
        self.find(Path::new(name)).is_some()
    }

    fn find(&self, path: &Path) -> Option<&Staged> {
        let mut cur = path.to_path_buf();
        for _ in 0..MAX_LINK_HOPS {
            if let Some(f) = self.files.get(&cur) {
                return Some(f);
            }
            cur = self.links.get(&cur)?.clone();
        }
        None
    }

    /// A member named by archive metadata; the name must stay inside the archive.
    fn lookup(&self, name: &str) -> Result<&Staged> {
        let path = metadata_path(name)?;
        self.find(&path)
            .ok_or_else(|| ImageError::InvalidArchive(format!("archive has no file {name:?}")))
    }

    /// A blob of an OCI layout, found by digest and verified against it.
    fn blob(&self, digest: &Digest, size: Option<u64>) -> Result<&Staged> {
        let name = format!("blobs/sha256/{}", digest.hex());
        let staged = self.lookup(&name)?;
        verify_staged(&name, staged, digest, size)?;
        Ok(staged)
    }

    fn read_small(&self, staged: &Staged, what: &'static str, max: u64) -> Result<Vec<u8>> {
        if staged.size > max {
            return Err(ImageError::LimitExceeded { what, limit: max });
        }
        let mut bytes = Vec::new();
        self.open(staged)?
            .read_to_end(&mut bytes)
            .map_err(ImageError::io("read", &staged.path))?;
        Ok(bytes)
    }

    fn open(&self, staged: &Staged) -> Result<File> {
        match File::open(&staged.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let path = self.blobs_dir.join(staged.digest.hex());
                File::open(&path).map_err(ImageError::io("open", &path))
            }
            other => other.map_err(ImageError::io("open", &staged.path)),
        }
    }
}

fn verify_staged(name: &str, staged: &Staged, digest: &Digest, size: Option<u64>) -> Result<()> {
    if &staged.digest != digest {
        return Err(ImageError::DigestMismatch {
            what: format!("archive member {name}"),
            expected: digest.to_string(),
            actual: staged.digest.to_string(),
        });
    }
    if let Some(size) = size {
        check_size(&format!("archive member {name}"), size, staged.size)?;
    }
    Ok(())
}

/// Paths inside metadata (`manifest.json`'s `Config`/`Layers`) must be relative and free of `..`.
fn metadata_path(name: &str) -> Result<PathBuf> {
    if name.starts_with('/') {
        return Err(ImageError::unsafe_path(
            name,
            "absolute path in archive metadata",
        ));
    }
    if Path::new(name)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(ImageError::unsafe_path(
            name,
            "'..' in archive metadata path",
        ));
    }
    let p = normalize(name.as_bytes())?;
    if p.as_os_str().is_empty() {
        return Err(ImageError::unsafe_path(
            name,
            "empty path in archive metadata",
        ));
    }
    Ok(p)
}

/// Old `docker save` deduplicated layers with relative symlinks (`../<id>/layer.tar`);
/// they are resolved lexically and must not climb out of the archive.
fn resolve_member_symlink(path: &Path, target: &[u8]) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if target.is_empty() || target.starts_with(b"/") {
        return Err(ImageError::unsafe_path(
            target,
            "archive symlink must be relative",
        ));
    }
    let mut out: Vec<std::ffi::OsString> = path
        .parent()
        .map(|p| p.components().map(|c| c.as_os_str().to_owned()).collect())
        .unwrap_or_default();
    for c in Path::new(std::ffi::OsStr::from_bytes(target)).components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                if out.pop().is_none() {
                    return Err(ImageError::unsafe_path(
                        target,
                        "archive symlink points outside the archive",
                    ));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ImageError::unsafe_path(
                    target,
                    "archive symlink must be relative",
                ));
            }
        }
    }
    Ok(out.iter().collect())
}

fn plan(store: &ImageStore, staging: &Staging, txn: &mut Txn) -> Result<Vec<Planned>> {
    let max = store.limits.max_json_bytes;
    let docker = if staging.exists("manifest.json") {
        let staged = staging.lookup("manifest.json")?;
        let bytes = staging.read_small(staged, "manifest.json", max)?;
        Some(parse_json::<Vec<DockerManifestEntry>>(
            "manifest.json",
            &bytes,
        )?)
    } else {
        None
    };
    let mut planned = Vec::new();
    if staging.exists("oci-layout") && staging.exists("index.json") {
        check_layout(staging, max)?;
        oci_plan(store, staging, txn, &mut planned)?;
        if let Some(entries) = docker {
            // Current `docker save` writes both forms; its RepoTags name the same configs.
            for e in entries {
                let config = staging.lookup(&e.config)?.digest.clone();
                match planned.iter_mut().find(|p| p.config == config) {
                    Some(p) => merge_refs(&mut p.refs, tags(&e)?),
                    None => planned.push(docker_image(store, staging, txn, &e)?),
                }
            }
        }
    } else if let Some(entries) = docker {
        for e in &entries {
            let p = docker_image(store, staging, txn, e)?;
            match planned
                .iter_mut()
                .find(|q: &&mut Planned| q.manifest == p.manifest)
            {
                Some(q) => merge_refs(&mut q.refs, p.refs),
                None => planned.push(p),
            }
        }
    } else {
        return Err(ImageError::InvalidArchive(
            "neither an OCI layout (oci-layout, index.json) nor a docker manifest.json".to_owned(),
        ));
    }
    if planned.is_empty() {
        return Err(ImageError::InvalidArchive(
            "archive holds no image".to_owned(),
        ));
    }
    Ok(planned)
}

fn merge_refs(into: &mut Vec<Reference>, more: Vec<Reference>) {
    for r in more {
        if !into.contains(&r) {
            into.push(r);
        }
    }
}

fn check_layout(staging: &Staging, max: u64) -> Result<()> {
    #[derive(Deserialize)]
    struct Layout {
        #[serde(rename = "imageLayoutVersion")]
        version: String,
    }
    let staged = staging.lookup("oci-layout")?;
    let layout: Layout = parse_json(
        "oci-layout",
        &staging.read_small(staged, "oci-layout", max)?,
    )?;
    if !layout.version.starts_with("1.") {
        return Err(ImageError::Unsupported(format!(
            "OCI layout version {}",
            layout.version
        )));
    }
    Ok(())
}

fn oci_plan(
    store: &ImageStore,
    staging: &Staging,
    txn: &mut Txn,
    planned: &mut Vec<Planned>,
) -> Result<()> {
    let max = store.limits.max_json_bytes;
    let staged = staging.lookup("index.json")?;
    let index: ImageIndex = parse_json(
        "index.json",
        &staging.read_small(staged, "index.json", max)?,
    )?;
    for desc in index.manifests() {
        let refs = annotation_refs(desc)?;
        let Some(manifest) = select_manifest(store, staging, txn, desc, 0)? else {
            tracing::warn!(media_type = %desc.media_type(), "skipping index entry of unknown media type");
            continue;
        };
        match planned.iter_mut().find(|p| p.manifest == manifest) {
            Some(p) => merge_refs(&mut p.refs, refs),
            None => {
                let bytes = store.content.read_small(&manifest, max)?;
                let m: ImageManifest = parse_json("image manifest", &bytes)?;
                planned.push(Planned {
                    config: Digest::from_oci(m.config().digest())?,
                    manifest,
                    refs,
                });
            }
        }
    }
    Ok(())
}

/// Tags of an index entry: containerd's full-name annotation, or an OCI `ref.name` that is a
/// whole reference. A bare tag (`latest`) has no repository to live in, so it is dropped.
fn annotation_refs(desc: &Descriptor) -> Result<Vec<Reference>> {
    let Some(ann) = desc.annotations() else {
        return Ok(Vec::new());
    };
    let name = match (ann.get(ANNOTATION_IMAGE_NAME), ann.get(ANNOTATION_REF_NAME)) {
        (Some(full), _) => full,
        (None, Some(rn)) if rn.contains(['/', ':', '@']) => rn,
        (None, Some(rn)) => {
            tracing::warn!(ref_name = %rn, "index entry names only a tag; the image stays untagged");
            return Ok(Vec::new());
        }
        (None, None) => return Ok(Vec::new()),
    };
    let r = Reference::parse(name)?;
    Ok(match r.tag() {
        Some(t) if r.digest().is_some() => vec![r.with_tag(t)?],
        Some(_) => vec![r],
        None => Vec::new(),
    })
}

/// Follows an index entry down to the image manifest for this platform, moving the manifest,
/// its config and its layers into the store. `None` for media types that are not images.
fn select_manifest(
    store: &ImageStore,
    staging: &Staging,
    txn: &mut Txn,
    desc: &Descriptor,
    depth: usize,
) -> Result<Option<Digest>> {
    let digest = Digest::from_oci(desc.digest())?;
    let media = desc.media_type().to_string();
    let is_manifest = *desc.media_type() == MediaType::ImageManifest || media == DOCKER_MANIFEST_V2;
    let is_index = *desc.media_type() == MediaType::ImageIndex || media == DOCKER_MANIFEST_LIST;
    if media.starts_with("application/vnd.docker.distribution.manifest.v1") {
        return Err(ImageError::Unsupported(
            "docker schema 1 manifests".to_owned(),
        ));
    }
    let max = store.limits.max_json_bytes;
    if is_manifest {
        adopt(store, staging, txn, &digest, Some(desc.size()))?;
        let m: ImageManifest =
            parse_json("image manifest", &store.content.read_small(&digest, max)?)?;
        let cfg = m.config();
        adopt(
            store,
            staging,
            txn,
            &Digest::from_oci(cfg.digest())?,
            Some(cfg.size()),
        )?;
        for l in m.layers() {
            adopt(
                store,
                staging,
                txn,
                &Digest::from_oci(l.digest())?,
                Some(l.size()),
            )?;
        }
        return Ok(Some(digest));
    }
    if !is_index {
        return Ok(None);
    }
    if depth >= store.limits.max_index_depth {
        return Err(ImageError::LimitExceeded {
            what: "image index nesting",
            limit: store.limits.max_index_depth as u64,
        });
    }
    let staged = staging.blob(&digest, Some(desc.size()))?;
    let index: ImageIndex = parse_json(
        "image index",
        &staging.read_small(staged, "image index", max)?,
    )?;
    let (os, arch) = (crate::platform::HOST_OS, crate::platform::host_arch());
    let candidates = index
        .manifests()
        .iter()
        .filter(|m| {
            m.platform()
                .as_ref()
                .is_some_and(crate::platform::matches_host)
        })
        .chain(index.manifests().iter().filter(|m| m.platform().is_none()));
    for m in candidates {
        if let Some(found) = select_manifest(store, staging, txn, m, depth + 1)? {
            return Ok(Some(found));
        }
    }
    Err(ImageError::NoMatchingPlatform(format!("{os}/{arch}")))
}

/// Moves a verified staged blob into the store, unless the store has it already.
fn adopt(
    store: &ImageStore,
    staging: &Staging,
    txn: &mut Txn,
    digest: &Digest,
    size: Option<u64>,
) -> Result<()> {
    if store.content.contains(digest) {
        // Still require the archive to carry it intact: a bad archive is refused whole.
        staging.blob(digest, size)?;
        return Ok(());
    }
    let staged = staging.blob(digest, size)?;
    let created = store.content.adopt(&staged.path, digest)?;
    txn.adopted(digest, created);
    Ok(())
}

fn tags(e: &DockerManifestEntry) -> Result<Vec<Reference>> {
    let mut out = Vec::new();
    for t in e.repo_tags.iter().flatten() {
        let r = Reference::parse(t)?;
        if r.digest().is_some() {
            return Err(ImageError::InvalidArchive(format!(
                "RepoTags entry {t:?} has a digest"
            )));
        }
        out.push(r);
    }
    Ok(out)
}

/// An image from a `manifest.json` entry: the config and layers are found by path, hashed,
/// and a manifest is written for them (the Docker form has none).
fn docker_image(
    store: &ImageStore,
    staging: &Staging,
    txn: &mut Txn,
    e: &DockerManifestEntry,
) -> Result<Planned> {
    let max = store.limits.max_json_bytes;
    let cfg = staging.lookup(&e.config)?;
    let cfg_bytes = staging.read_small(cfg, "image config", max)?;
    let config: ImageConfiguration = parse_json("image config", &cfg_bytes)?;
    let n = config.rootfs().diff_ids().len();
    if e.layers.len() != n {
        return Err(ImageError::InvalidArchive(format!(
            "manifest.json lists {} layers but the config has {n} diff_ids",
            e.layers.len()
        )));
    }
    let cfg_digest = cfg.digest.clone();
    store_staged(store, txn, cfg)?;
    let mut layers = Vec::with_capacity(n);
    for path in &e.layers {
        let staged = staging.lookup(path)?;
        let file = staging.open(staged)?;
        let (prefix, _) = peek(file, 8).map_err(ImageError::io("read", &staged.path))?;
        let compression = Compression::detect(&prefix)?;
        store_staged(store, txn, staged)?;
        layers.push(Descriptor::new(
            MediaType::from(compression.layer_media_type()),
            staged.size,
            staged.digest.to_oci(),
        ));
    }
    let manifest = crate::save::oci_manifest(
        Descriptor::new(MediaType::ImageConfig, cfg.size, cfg_digest.to_oci()),
        layers,
    )?;
    let manifest = store.write_blob(&manifest, txn)?;
    Ok(Planned {
        manifest,
        config: cfg_digest,
        refs: tags(e)?,
    })
}

fn store_staged(store: &ImageStore, txn: &mut Txn, staged: &Staged) -> Result<()> {
    if !store.content.contains(&staged.digest) {
        let created = store.content.adopt(&staged.path, &staged.digest)?;
        txn.adopted(&staged.digest, created);
    }
    Ok(())
}
