//! `ImageStore`: the node's image store, tying blobs, unpacked layers and the reference index
//! together, and the operations on images (list, inspect, tag, remove, gc, resolve).
//!
//! Every mutating operation holds one store-wide lock and works as a transaction: new blobs
//! and layers are recorded as they appear and deleted again if the operation fails, and the
//! index is replaced only at the very end. A failed load therefore leaves the store as it was.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageManifest, MediaType};
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;

use crate::compression::decompress;
use crate::content::{Committed, ContentStore};
use crate::digest::{Digest, HashingReader, LimitedReader, chain_ids};
use crate::error::{ImageError, Result};
use crate::fsutil::{create_private_dir, is_privileged};
use crate::index::{ImageRecord, Index, LayerRecord};
use crate::layers::LayerStore;
use crate::limits::Limits;
use crate::reference::Reference;
use crate::types::{
    GcReport, HistoryEntry, ImageDetails, ImageSummary, LoadedImage, Removed, ResolvedImage,
};

pub(crate) const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const INDEX_FILE: &str = "repositories.json";

/// A partial download untouched this long belongs to an abandoned pull; `gc` removes it.
const ABANDONED_DOWNLOAD: std::time::Duration = std::time::Duration::from_secs(3600);

/// The node's image store. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct ImageStore {
    pub(crate) root: PathBuf,
    pub(crate) content: ContentStore,
    pub(crate) layers: LayerStore,
    index_path: PathBuf,
    index: RwLock<Index>,
    /// Serialises mutations (load, import, tag, remove, gc, save, layer repair).
    pub(crate) op_lock: Mutex<()>,
    pub(crate) limits: Limits,
    /// Held for the store's lifetime: two processes sharing a root would delete each
    /// other's in-flight temp files when cleaning up after crashes.
    _root_lock: nix::fcntl::Flock<File>,
}

/// New blobs and layers of an operation in progress, deleted again if it fails.
#[derive(Default)]
pub(crate) struct Txn {
    blobs: Vec<Digest>,
    layers: Vec<Digest>,
    /// (blob, DiffID) pairs this operation has already hashed.
    verified: HashSet<(Digest, Digest)>,
}

impl Txn {
    pub(crate) fn blob(&mut self, c: Committed) -> Digest {
        if c.created {
            self.blobs.push(c.digest.clone());
        }
        c.digest
    }

    pub(crate) fn adopted(&mut self, digest: &Digest, created: bool) {
        if created {
            self.blobs.push(digest.clone());
        }
    }

    fn rollback(self, store: &ImageStore) {
        for chain in self.layers.iter().rev() {
            if let Err(e) = store.layers.remove(chain) {
                tracing::warn!(chain_id = %chain, error = %e, "rollback: could not remove layer");
            }
        }
        for blob in &self.blobs {
            if let Err(e) = store.content.delete(blob) {
                tracing::warn!(digest = %blob, error = %e, "rollback: could not remove blob");
            }
        }
    }
}

/// An image ready to enter the index.
pub(crate) struct NewImage {
    pub(crate) id: Digest,
    pub(crate) record: ImageRecord,
    pub(crate) refs: Vec<Reference>,
}

impl ImageStore {
    /// Opens (creating if needed) the store under `root` with default [`Limits`].
    pub fn open(root: &Path) -> Result<ImageStore> {
        ImageStore::open_with_limits(root, Limits::default())
    }

    /// Opens the store with explicit bounds on untrusted input.
    pub fn open_with_limits(root: &Path, limits: Limits) -> Result<ImageStore> {
        create_private_dir(root)?;
        let root_lock = lock_root(root)?;
        let content = ContentStore::open(root)?;
        let layers = LayerStore::open(root, is_privileged())?;
        let index_path = root.join(INDEX_FILE);
        let index = Index::load(&index_path)?;
        // A crash between renaming a new index into place and nothing else can leave only
        // its temp file; it was never the index, so it goes.
        if let Ok(entries) = std::fs::read_dir(root) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        tracing::debug!(root = %root.display(), images = index.images.len(), "image store opened");
        Ok(ImageStore {
            root: root.to_path_buf(),
            content,
            layers,
            index_path,
            index: RwLock::new(index),
            op_lock: Mutex::new(()),
            limits,
            _root_lock: root_lock,
        })
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The bounds applied to untrusted input.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The blob store, for callers that ingest blobs themselves (registry pulls, peers).
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    /// Registers an image whose manifest, config and layer blobs are already in the blob
    /// store (the end of a pull), unpacking its layers and pointing `references` at it.
    pub fn add_image(&self, manifest: &Digest, references: &[Reference]) -> Result<LoadedImage> {
        let _guard = self.op_lock.lock();
        let mut txn = Txn::default();
        let result = self.register(manifest, &mut txn).and_then(|(id, record)| {
            let new = NewImage {
                id,
                record,
                refs: references.to_vec(),
            };
            self.commit_images(vec![new])
        });
        match result {
            Ok(mut loaded) => Ok(loaded.remove(0)),
            Err(e) => {
                txn.rollback(self);
                Err(e)
            }
        }
    }

    /// Runs a mutating operation as a transaction under the store lock.
    pub(crate) fn transaction<T>(&self, f: impl FnOnce(&mut Txn) -> Result<T>) -> Result<T> {
        let _guard = self.op_lock.lock();
        let mut txn = Txn::default();
        match f(&mut txn) {
            Ok(v) => Ok(v),
            Err(e) => {
                tracing::warn!(error = %e, "image store operation failed; rolling back");
                txn.rollback(self);
                Err(e)
            }
        }
    }

    pub(crate) fn index_snapshot(&self) -> Index {
        self.index.read().clone()
    }

    /// Adds images and references to the index in one atomic write. Caller holds `op_lock`.
    pub(crate) fn commit_images(&self, images: Vec<NewImage>) -> Result<Vec<LoadedImage>> {
        let mut index = self.index_snapshot();
        let mut out = Vec::new();
        for img in images {
            // An image already present keeps its record (and its original `added` time).
            index.images.entry(img.id.clone()).or_insert(img.record);
            let manifest = index.images[&img.id].manifest.clone();
            for r in &img.refs {
                if let Some(old) = index.refs.insert(r.to_string(), img.id.clone())
                    && old != img.id
                {
                    tracing::info!(reference = %r, old = %old, new = %img.id, "reference moved to another image");
                }
            }
            out.push(LoadedImage {
                id: img.id,
                references: img.refs.iter().map(Reference::familiar).collect(),
                manifest_digest: manifest,
            });
        }
        self.replace_index(index)?;
        Ok(out)
    }

    fn replace_index(&self, index: Index) -> Result<()> {
        index.save(&self.index_path)?;
        *self.index.write() = index;
        Ok(())
    }

    /// Registers the image whose manifest was just written (see [`register`](Self::register)),
    /// names it `reference`, and returns its summary: the last step of `import` and `commit`.
    /// Caller holds `op_lock`.
    pub(crate) fn record_new_image(
        &self,
        manifest_digest: &Digest,
        reference: Option<&Reference>,
        txn: &mut Txn,
    ) -> Result<ImageSummary> {
        let (id, record) = self.register(manifest_digest, txn)?;
        let summary = ImageSummary {
            id: id.clone(),
            repo_tags: reference.iter().map(|r| r.familiar()).collect(),
            repo_digests: Vec::new(),
            created: record.created.clone(),
            size: record.size,
            layers: record.layers.len(),
        };
        self.commit_images(vec![NewImage {
            id,
            record,
            refs: reference.into_iter().cloned().collect(),
        }])?;
        Ok(summary)
    }

    /// Reads and verifies a manifest from the blob store, then its config, then makes sure
    /// every layer is unpacked (verifying DiffIDs). Caller holds `op_lock`.
    pub(crate) fn register(
        &self,
        manifest_digest: &Digest,
        txn: &mut Txn,
    ) -> Result<(Digest, ImageRecord)> {
        let max = self.limits.max_json_bytes;
        let bytes = self.content.read_small(manifest_digest, max)?;
        let manifest: ImageManifest = parse_json("image manifest", &bytes)?;
        if manifest.schema_version() != 2 {
            return Err(ImageError::Unsupported(format!(
                "manifest schema version {}",
                manifest.schema_version()
            )));
        }
        let media_type = match manifest.media_type() {
            None | Some(MediaType::ImageManifest) => MediaType::ImageManifest.to_string(),
            Some(MediaType::Other(t)) if t == DOCKER_MANIFEST_V2 => t.clone(),
            Some(other) => {
                return Err(ImageError::Unsupported(format!(
                    "manifest media type {other}"
                )));
            }
        };
        let cfg_desc = manifest.config();
        match cfg_desc.media_type() {
            MediaType::ImageConfig => {}
            MediaType::Other(t) if t == DOCKER_CONFIG => {}
            other => {
                return Err(ImageError::Unsupported(format!(
                    "config media type {other}: not a container image"
                )));
            }
        }
        let id = Digest::from_oci(cfg_desc.digest())?;
        let cfg_bytes = self.content.read_small(&id, max)?;
        check_size("image config", cfg_desc.size(), cfg_bytes.len() as u64)?;
        let config: ImageConfiguration = parse_json("image config", &cfg_bytes)?;
        if config.rootfs().typ() != "layers" {
            return Err(ImageError::InvalidArchive(format!(
                "config rootfs type {:?} is not \"layers\"",
                config.rootfs().typ()
            )));
        }
        let diff_ids = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| Digest::parse(d))
            .collect::<Result<Vec<_>>>()?;
        if diff_ids.len() != manifest.layers().len() {
            return Err(ImageError::InvalidArchive(format!(
                "manifest has {} layers but config has {} diff_ids",
                manifest.layers().len(),
                diff_ids.len()
            )));
        }
        if diff_ids.len() > self.limits.max_layers {
            return Err(ImageError::LimitExceeded {
                what: "layers in an image",
                limit: self.limits.max_layers as u64,
            });
        }
        let chains = chain_ids(&diff_ids);
        let known = self.index_snapshot();
        let mut layers = Vec::with_capacity(diff_ids.len());
        for (i, desc) in manifest.layers().iter().enumerate() {
            let blob = Digest::from_oci(desc.digest())?;
            let blob_size = self
                .content
                .size(&blob)
                .map_err(|_| ImageError::InvalidArchive(format!("layer blob {blob} is missing")))?;
            check_size("layer blob", desc.size(), blob_size)?;
            let rec = LayerRecord {
                blob,
                media_type: desc.media_type().to_string(),
                blob_size,
                diff_id: diff_ids[i].clone(),
                chain_id: chains[i].clone(),
                size: 0,
                diff_size: 0,
            };
            let meta = self.ensure_layer(&rec, &chains[..i], &known, txn)?;
            layers.push(LayerRecord {
                size: meta.size,
                diff_size: meta.diff_size,
                ..rec
            });
        }
        let record = ImageRecord {
            manifest: manifest_digest.clone(),
            manifest_media_type: media_type,
            config_size: cfg_bytes.len() as u64,
            created: config.created().clone(),
            os: config.os().to_string(),
            architecture: config.architecture().to_string(),
            variant: config.variant().clone(),
            size: layers.iter().map(|l| l.size).sum(),
            layers,
            added: now_rfc3339(),
        };
        Ok((id, record))
    }

    /// Makes sure a layer is unpacked. An existing layer is trusted for a blob some image
    /// already vouched for; otherwise the blob's DiffID is checked even if the layer exists,
    /// so every blob that enters the store has been verified.
    fn ensure_layer(
        &self,
        rec: &LayerRecord,
        below: &[Digest],
        known: &Index,
        txn: &mut Txn,
    ) -> Result<crate::layers::LayerMeta> {
        if self.layers.exists(&rec.chain_id) {
            let pair = (rec.blob.clone(), rec.diff_id.clone());
            let vouched = txn.verified.contains(&pair)
                || known
                    .images
                    .values()
                    .flat_map(|r| &r.layers)
                    .any(|l| l.blob == rec.blob && l.diff_id == rec.diff_id);
            if !vouched {
                self.verify_diff_id(&rec.blob, &rec.diff_id)?;
                txn.verified.insert(pair);
            }
            let meta = self.layers.meta(&rec.chain_id)?;
            if meta.diff_id != rec.diff_id {
                return Err(ImageError::Corrupt(format!(
                    "layer {} records DiffID {} not {}",
                    rec.chain_id, meta.diff_id, rec.diff_id
                )));
            }
            return Ok(meta);
        }
        let lowers: Vec<PathBuf> = below.iter().rev().map(|c| self.layers.fs_path(c)).collect();
        if let Some(missing) = below.iter().find(|c| !self.layers.exists(c)) {
            return Err(ImageError::Corrupt(format!(
                "lower layer {missing} is missing"
            )));
        }
        let file = self.content.open_blob(&rec.blob)?;
        let (_, stream) = decompress(io::BufReader::new(file))?;
        let (meta, created) = self.layers.unpack(
            &rec.chain_id,
            below.last(),
            &rec.diff_id,
            &lowers,
            stream,
            &self.limits,
        )?;
        if created {
            txn.layers.push(rec.chain_id.clone());
            txn.verified.insert((rec.blob.clone(), rec.diff_id.clone()));
        }
        Ok(meta)
    }

    fn verify_diff_id(&self, blob: &Digest, diff_id: &Digest) -> Result<()> {
        let file = self.content.open_blob(blob)?;
        let (_, stream) = decompress(io::BufReader::new(file))?;
        let mut hashing = HashingReader::new(LimitedReader::new(
            stream,
            self.limits.max_layer_bytes,
            "layer uncompressed size",
        ));
        io::copy(&mut hashing, &mut io::sink())
            .map_err(ImageError::stream("reading layer blob"))?;
        let (actual, _) = hashing.finish();
        if &actual != diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("DiffID of layer blob {blob}"),
                expected: diff_id.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }

    /// Finds the image a reference or (short) id names.
    pub(crate) fn lookup(&self, index: &Index, s: &str) -> Result<(Digest, Option<Reference>)> {
        if let Some(hex) = s.strip_prefix("sha256:") {
            return by_id_prefix(index, hex, s).map(|d| (d, None));
        }
        match Reference::parse(s) {
            Ok(r) => {
                if let Some(id) = find_by_ref(index, &r) {
                    return Ok((id, Some(r)));
                }
                // `abc123` is both a valid name and a short id: the name wins, as in Docker.
                if is_hex(s) {
                    return by_id_prefix(index, s, s).map(|d| (d, None));
                }
                Err(ImageError::NotFound(s.to_owned()))
            }
            Err(e) if is_hex(s) => by_id_prefix(index, s, s).map(|d| (d, None)).map_err(|_| e),
            Err(e) => Err(e),
        }
    }

    /// Every image, newest first.
    pub fn list(&self) -> Vec<ImageSummary> {
        let index = self.index.read();
        let mut out: Vec<ImageSummary> = index
            .images
            .iter()
            .map(|(id, rec)| {
                let (repo_tags, repo_digests) = display_refs(&index, id);
                ImageSummary {
                    id: id.clone(),
                    repo_tags,
                    repo_digests,
                    created: rec.created.clone(),
                    size: rec.size,
                    layers: rec.layers.len(),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            let ta = a.created.as_deref().and_then(parse_time);
            let tb = b.created.as_deref().and_then(parse_time);
            tb.cmp(&ta).then_with(|| a.id.cmp(&b.id))
        });
        out
    }

    /// Full details of one image.
    pub fn inspect(&self, reference: &str) -> Result<ImageDetails> {
        let index = self.index_snapshot();
        let (id, _) = self.lookup(&index, reference)?;
        let rec = &index.images[&id];
        let config = self.config_of(&id)?;
        let (repo_tags, repo_digests) = display_refs(&index, &id);
        Ok(ImageDetails {
            id: id.clone(),
            repo_tags,
            repo_digests,
            manifest_digest: rec.manifest.clone(),
            manifest_media_type: rec.manifest_media_type.clone(),
            created: rec.created.clone(),
            os: rec.os.clone(),
            architecture: rec.architecture.clone(),
            variant: rec.variant.clone(),
            config,
            diff_ids: rec.layers.iter().map(|l| l.diff_id.clone()).collect(),
            chain_ids: rec.layers.iter().map(|l| l.chain_id.clone()).collect(),
            size: rec.size,
            added: rec.added.clone(),
        })
    }

    fn config_of(&self, id: &Digest) -> Result<ImageConfiguration> {
        let bytes = self.content.read_small(id, self.limits.max_json_bytes)?;
        parse_json("image config", &bytes)
    }

    /// The build steps of an image, newest first, as `docker history` shows them.
    pub fn history(&self, reference: &str) -> Result<Vec<HistoryEntry>> {
        let index = self.index_snapshot();
        let (id, _) = self.lookup(&index, reference)?;
        let rec = &index.images[&id];
        let config = self.config_of(&id)?;
        let mut layer_sizes = rec.layers.iter().map(|l| l.size);
        let mut out: Vec<HistoryEntry> = Vec::new();
        for h in config.history().clone().unwrap_or_default() {
            let empty = h.empty_layer().unwrap_or(false);
            let size = if empty {
                0
            } else {
                layer_sizes.next().unwrap_or(0)
            };
            out.push(HistoryEntry {
                id: None,
                created: h.created().clone(),
                created_by: h.created_by().clone().unwrap_or_default(),
                comment: h.comment().clone().unwrap_or_default(),
                empty_layer: empty,
                size,
            });
        }
        // Layers the history does not describe still show up, as Docker does.
        for size in layer_sizes {
            out.push(HistoryEntry {
                id: None,
                created: None,
                created_by: String::new(),
                comment: String::new(),
                empty_layer: false,
                size,
            });
        }
        out.reverse();
        if let Some(first) = out.first_mut() {
            first.id = Some(id);
        }
        Ok(out)
    }

    /// Points `target` (a `name[:tag]`) at the image `source` names, moving it if it
    /// named another image.
    pub fn tag(&self, source: &str, target: &str) -> Result<()> {
        let target_ref = Reference::parse(target)?;
        if target_ref.digest().is_some() {
            return Err(ImageError::InvalidReference {
                reference: target.to_owned(),
                reason: "a tag target cannot carry a digest".to_owned(),
            });
        }
        let _guard = self.op_lock.lock();
        let mut index = self.index_snapshot();
        let (id, _) = self.lookup(&index, source)?;
        index.refs.insert(target_ref.to_string(), id.clone());
        self.replace_index(index)?;
        tracing::info!(reference = %target_ref, %id, "image tagged");
        Ok(())
    }

    /// Removes a reference, and the image once no reference is left. An image id removes
    /// the image with its references, but one with several tags only when `force`d.
    /// Blobs and layers stay until [`ImageStore::gc`].
    pub fn remove(&self, reference: &str, force: bool) -> Result<Vec<Removed>> {
        let _guard = self.op_lock.lock();
        let mut index = self.index_snapshot();
        let (id, by_name) = self.lookup(&index, reference)?;
        let mut out = Vec::new();
        let explicit_key = by_name
            .as_ref()
            .map(ref_key)
            .filter(|k| index.refs.contains_key(k));
        if let (Some(r), Some(key)) = (&by_name, explicit_key) {
            index.refs.remove(&key);
            out.push(Removed::Untagged(r.familiar()));
            // As Docker: once a repository's last tag goes, its digest references (recorded
            // by pulls) go too, or `rmi name:tag` would leave a pulled image behind.
            let remaining = index.refs_of(&id);
            let same_repo = |o: &Reference| o.repository() == r.repository();
            if r.digest().is_none()
                && !remaining
                    .iter()
                    .any(|o| o.digest().is_none() && same_repo(o))
            {
                for d in remaining
                    .iter()
                    .filter(|o| o.digest().is_some() && same_repo(o))
                {
                    index.refs.remove(&d.to_string());
                    out.push(Removed::Untagged(d.familiar()));
                }
            }
        } else {
            let refs = index.refs_of(&id);
            let tags: Vec<&Reference> = refs.iter().filter(|r| r.digest().is_none()).collect();
            let single_repo = refs.iter().all(|r| {
                tags.first()
                    .is_none_or(|t| t.repository() == r.repository())
            });
            if !force && (tags.len() > 1 || !single_repo) {
                return Err(ImageError::Conflict(format!(
                    "unable to delete {} (must be forced): image is referenced in multiple repositories",
                    id.short()
                )));
            }
            for r in refs {
                index.refs.remove(&r.to_string());
                out.push(Removed::Untagged(r.familiar()));
            }
        }
        if !index.refs.values().any(|v| v == &id) {
            index.images.remove(&id);
            out.push(Removed::Deleted(id.clone()));
        }
        self.replace_index(index)?;
        tracing::info!(reference, removed = out.len(), "image reference removed");
        Ok(out)
    }

    /// Deletes blobs no image needs and layers neither an image nor `in_use` (the ChainIDs
    /// containers still mount, `sha256:<hex>` or bare hex) needs; the parents of an in-use
    /// layer are kept too.
    pub fn gc(&self, in_use: &HashSet<String>) -> Result<GcReport> {
        let _guard = self.op_lock.lock();
        let index = self.index_snapshot();
        let keep_blobs = index.referenced_blobs();
        let mut keep_chains = index.referenced_chains();
        for s in in_use {
            let parsed = Digest::parse(s).or_else(|_| Digest::from_hex(s));
            let Ok(mut chain) = parsed else {
                tracing::warn!(chain_id = %s, "gc: ignoring malformed in-use chain id");
                continue;
            };
            // The daemon may pass only the top of a stack; everything below it is mounted too.
            loop {
                if !keep_chains.insert(chain.clone()) {
                    break;
                }
                match self.layers.meta(&chain).ok().and_then(|m| m.parent) {
                    Some(p) => chain = p,
                    None => break,
                }
            }
        }
        let mut report = GcReport::default();
        for blob in self.content.list()? {
            if !keep_blobs.contains(&blob)
                && let Some(size) = self.content.delete(&blob)?
            {
                report.reclaimed_bytes += size;
                report.removed_blobs.push(blob);
            }
        }
        for chain in self.layers.list()? {
            if !keep_chains.contains(&chain) {
                report.reclaimed_bytes += self.layers.remove(&chain)?;
                report.removed_layers.push(chain);
            }
        }
        self.content.clean_temporaries()?;
        self.layers.clean_temporaries()?;
        report.reclaimed_bytes += self.content.prune_partials(ABANDONED_DOWNLOAD)?;
        tracing::info!(
            blobs = report.removed_blobs.len(),
            layers = report.removed_layers.len(),
            bytes = report.reclaimed_bytes,
            "image gc done"
        );
        Ok(report)
    }

    /// What the runtime needs to build a container's root filesystem. Layers that went
    /// missing from disk are unpacked again from their blobs.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage> {
        let index = self.index_snapshot();
        let (id, _) = self.lookup(&index, reference)?;
        let rec = index.images[&id].clone();
        let config = self.config_of(&id)?;
        if rec.layers.iter().any(|l| !self.layers.exists(&l.chain_id)) {
            self.transaction(|txn| {
                let known = self.index_snapshot();
                let chains: Vec<Digest> = rec.layers.iter().map(|l| l.chain_id.clone()).collect();
                for (i, l) in rec.layers.iter().enumerate() {
                    self.ensure_layer(l, &chains[..i], &known, txn)?;
                }
                Ok(())
            })?;
        }
        Ok(ResolvedImage {
            id,
            config,
            layer_dirs: rec
                .layers
                .iter()
                .map(|l| self.layers.fs_path(&l.chain_id))
                .collect(),
            chain_ids: rec.layers.iter().map(|l| l.chain_id.clone()).collect(),
        })
    }

    /// The `(tag reference, image id)` pairs that `save` writes for `references`.
    pub(crate) fn save_set(
        &self,
        index: &Index,
        references: &[&str],
    ) -> Result<Vec<(Digest, Vec<Reference>)>> {
        let mut out: Vec<(Digest, Vec<Reference>)> = Vec::new();
        for s in references {
            let (id, r) = self.lookup(index, s)?;
            let tag = r.filter(|r| r.digest().is_none());
            match out.iter_mut().find(|(i, _)| i == &id) {
                Some((_, tags)) => tags.extend(tag.filter(|t| !tags.contains(t))),
                None => out.push((id, tag.into_iter().collect())),
            }
        }
        Ok(out)
    }

    pub(crate) fn blob_reader(&self, digest: &Digest) -> Result<File> {
        self.content.open_blob(digest)
    }

    pub(crate) fn write_blob(&self, bytes: &[u8], txn: &mut Txn) -> Result<Digest> {
        Ok(txn.blob(self.content.write_bytes(bytes)?))
    }
}

fn lock_root(root: &Path) -> Result<nix::fcntl::Flock<File>> {
    let path = root.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(ImageError::io("open", &path))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                ImageError::Conflict(format!(
                    "image store {} is in use by another process",
                    root.display()
                ))
            } else {
                ImageError::io("lock", &path)(errno.into())
            }
        },
    )
}

fn ref_key(r: &Reference) -> String {
    match r.digest() {
        Some(d) => r.with_digest(d.clone()).to_string(),
        None => r.to_string(),
    }
}

fn find_by_ref(index: &Index, r: &Reference) -> Option<Digest> {
    if let Some(id) = index.refs.get(&ref_key(r)) {
        return Some(id.clone());
    }
    let d = r.digest()?;
    // A digest reference also finds an image by manifest (or config) digest when the image
    // has a tag in the same repository: what a user sees after loading an OCI layout.
    index
        .images
        .iter()
        .find(|(id, rec)| {
            (&rec.manifest == d || *id == d)
                && index
                    .refs_of(id)
                    .iter()
                    .any(|t| t.repository() == r.repository())
        })
        .map(|(id, _)| id.clone())
}

fn by_id_prefix(index: &Index, hex: &str, original: &str) -> Result<Digest> {
    if hex.is_empty() || !is_hex(hex) {
        return Err(ImageError::NotFound(original.to_owned()));
    }
    let mut matches = index.images.keys().filter(|id| id.hex().starts_with(hex));
    match (matches.next(), matches.next()) {
        (Some(id), None) => Ok(id.clone()),
        (Some(_), Some(_)) => Err(ImageError::Ambiguous(original.to_owned())),
        _ => Err(ImageError::NotFound(original.to_owned())),
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn display_refs(index: &Index, id: &Digest) -> (Vec<String>, Vec<String>) {
    let mut tags = BTreeSet::new();
    let mut digests = BTreeSet::new();
    for r in index.refs_of(id) {
        if r.digest().is_some() {
            digests.insert(r.familiar());
        } else {
            tags.insert(r.familiar());
        }
    }
    (tags.into_iter().collect(), digests.into_iter().collect())
}

pub(crate) fn parse_json<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::InvalidJson { what, source })
}

pub(crate) fn check_size(what: &str, expected: u64, actual: u64) -> Result<()> {
    if expected != actual {
        return Err(ImageError::SizeMismatch {
            what: what.to_owned(),
            expected,
            actual,
        });
    }
    Ok(())
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}
