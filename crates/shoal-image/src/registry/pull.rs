//! Pulling: tag or digest → manifest (this host's entry when it is an index) → config and layer
//! blobs downloaded into the content store (resumable, bounded, verified by digest and size)
//! → the image and its references recorded through [`ImageStore::add_image`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use oci_client::RegistryOperation;
use oci_client::manifest::OciDescriptor;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;

use super::error::{Context, Operation, RegistryError};
use super::{Progress, ProgressSink, ProgressStatus, RegistryAuth, RegistryClient, oci_reference};
use crate::content::BlobWriter;
use crate::digest::Digest;
use crate::error::ImageError;
use crate::limits::Limits;
use crate::platform::{HOST_OS, host_arch, matches_host};
use crate::reference::Reference;
use crate::store::{
    DOCKER_CONFIG, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2, ImageStore, parse_json,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// What we ask the registry for, and all we accept.
const MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_V2,
    DOCKER_MANIFEST_LIST,
];
/// Layer media types whose blobs the store can unpack (compression is found by magic bytes).
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];
/// Least time between two `Downloading` reports of one layer.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// What a pull did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullResult {
    /// The reference that now names the image (the tag, or the digest reference).
    pub reference: Reference,
    /// What the reference resolved to at the registry (the index's digest for a
    /// multi-platform image): Docker's `Digest:` line.
    pub digest: Digest,
    pub image_id: Digest,
    /// False when the reference already named this very image (`Image is up to date`).
    pub downloaded_newer: bool,
}

/// One layer download: its digest and whether it was downloaded now.
type BlobFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(Digest, bool), RegistryError>> + Send + 'a>,
>;

/// A blob to fetch.
struct Blob {
    digest: Digest,
    size: u64,
    media_type: String,
    /// The progress id for layers; the config reports nothing.
    progress_id: Option<String>,
}

/// A manifest as fetched, before we know what it is.
struct Fetched {
    digest: Digest,
    bytes: Vec<u8>,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

enum Kind {
    Manifest,
    Index,
}

fn kind_of(bytes: &[u8]) -> Result<Kind, RegistryError> {
    let probe: Probe = parse_json("manifest", bytes)?;
    if probe.schema_version == Some(1) {
        return Err(ImageError::Unsupported("docker schema 1 manifests".to_owned()).into());
    }
    match probe.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => Ok(Kind::Index),
        Some(OCI_MANIFEST | DOCKER_MANIFEST_V2) => Ok(Kind::Manifest),
        Some(other) => Err(ImageError::Unsupported(format!("manifest media type {other}")).into()),
        // mediaType is optional in OCI documents: the shape tells.
        None if probe.manifests.is_some() => Ok(Kind::Index),
        None if probe.config.is_some() => Ok(Kind::Manifest),
        None => Err(ImageError::InvalidArchive(
            "the registry's manifest is neither an image manifest nor an index".to_owned(),
        )
        .into()),
    }
}

/// Runs store work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RegistryError::Internal(format!("store task failed: {e}")))?
        .map_err(RegistryError::from)
}

impl RegistryClient {
    /// Pulls `reference` into `store`, reporting progress to `progress`.
    pub async fn pull(
        &self,
        store: &Arc<ImageStore>,
        reference: &Reference,
        auth: &RegistryAuth,
        progress: ProgressSink,
    ) -> Result<PullResult, RegistryError> {
        let started = Instant::now();
        let display = reference.familiar();
        let ctx = self.context(reference, &display, Operation::Pull, auth);
        let client = self.oci_client()?;
        let oref = oci_reference(reference);
        let oauth = auth.to_oci();
        let limits = store.limits().clone();
        tracing::info!(reference = %reference, auth = ?auth, "pulling image");

        // Fails fast, with the right words, on an unreachable registry or refused credentials.
        client
            .auth(&oref, &oauth, RegistryOperation::Pull)
            .await
            .map_err(|e| ctx.classify(e))?;
        let first_id = match (reference.digest(), reference.tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_owned(),
            (None, None) => crate::reference::DEFAULT_TAG.to_owned(),
        };
        progress(Progress::new(
            first_id,
            ProgressStatus::PullingFrom(reference.path().to_owned()),
        ));

        let top = fetch_manifest(&client, &oref, &oauth, &ctx, &limits, None).await?;
        if let Some(want) = reference.digest()
            && want != &top.digest
        {
            return Err(ImageError::DigestMismatch {
                what: format!("manifest of {display}"),
                expected: want.to_string(),
                actual: top.digest.to_string(),
            }
            .into());
        }
        let top_digest = top.digest.clone();
        let manifest = select_platform(&client, &oref, &oauth, &ctx, &limits, top).await?;
        let parsed: ImageManifest = parse_json("image manifest", &manifest.bytes)?;
        let (config, layers) = check_manifest(&parsed, &limits)?;

        let before = current_image(store, reference);
        let mut downloaded: Vec<Digest> = Vec::new();
        let result = async {
            let bytes = manifest.bytes.clone();
            let stored = {
                let store = store.clone();
                blocking(move || store.content().write_bytes(&bytes)).await?
            };
            if stored.digest != manifest.digest {
                return Err(RegistryError::Internal(
                    "stored manifest digest differs from the fetched one".to_owned(),
                ));
            }
            if stored.created {
                downloaded.push(stored.digest);
            }
            if self
                .fetch_blob(store, &client, &oref, &ctx, &config, &progress)
                .await?
            {
                downloaded.push(config.digest.clone());
            }
            for layer in &layers {
                let id = layer.progress_id.clone().unwrap_or_default();
                let status = if store.content().contains(&layer.digest) {
                    ProgressStatus::AlreadyExists
                } else {
                    ProgressStatus::PullingFsLayer
                };
                progress(Progress::new(id, status));
            }
            // Boxed with a named type: an async closure over borrowed layers here trips the
            // compiler's `Send` inference for the whole pull future (rust-lang/rust#102211).
            let downloads: Vec<BlobFuture<'_>> = layers
                .iter()
                .map(|layer| -> BlobFuture<'_> {
                    Box::pin(async {
                        let new = self
                            .fetch_blob(store, &client, &oref, &ctx, layer, &progress)
                            .await?;
                        Ok((layer.digest.clone(), new))
                    })
                })
                .collect();
            let fetched: Vec<(Digest, bool)> = futures::stream::iter(downloads)
                .buffered(self.config.concurrency.max(1))
                .try_collect()
                .await?;
            downloaded.extend(
                fetched
                    .iter()
                    .filter(|(_, new)| *new)
                    .map(|(d, _)| d.clone()),
            );

            let mut refs = Vec::new();
            if reference.digest().is_none() {
                refs.push(reference.clone());
            }
            refs.push(reference.with_digest(top_digest.clone()));
            let loaded = {
                let store = store.clone();
                let manifest_digest = manifest.digest.clone();
                blocking(move || store.add_image(&manifest_digest, &refs)).await?
            };
            for (digest, new) in &fetched {
                if *new {
                    progress(Progress::new(digest.short(), ProgressStatus::PullComplete));
                }
            }
            Ok(loaded)
        }
        .await;
        let loaded = match result {
            Ok(loaded) => loaded,
            Err(e) => {
                // Verified blobs stay for the next attempt, unless the image itself was bad:
                // then they would only make the next pull skip straight to the same failure.
                if matches!(e, RegistryError::Image(_)) {
                    discard_unreferenced(store, downloaded).await;
                }
                return Err(e);
            }
        };
        let recorded = if reference.digest().is_none() {
            reference.clone()
        } else {
            reference.with_digest(top_digest.clone())
        };
        tracing::info!(
            reference = %recorded,
            image = %loaded.id,
            digest = %top_digest,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "image pulled"
        );
        Ok(PullResult {
            reference: recorded,
            digest: top_digest,
            downloaded_newer: before.as_ref() != Some(&loaded.id),
            image_id: loaded.id,
        })
    }

    /// Makes sure one blob is in the store, downloading (and resuming) it if needed.
    /// Returns whether it was downloaded now.
    async fn fetch_blob(
        &self,
        store: &Arc<ImageStore>,
        client: &oci_client::Client,
        oref: &oci_client::Reference,
        ctx: &Context<'_>,
        blob: &Blob,
        progress: &ProgressSink,
    ) -> Result<bool, RegistryError> {
        let lock = self.blob_lock(&blob.digest);
        let _held = lock.lock().await;
        if store.content().contains(&blob.digest) {
            return Ok(false);
        }
        let key = blob.digest.to_string();
        let mut writer = {
            let (store, key) = (store.clone(), key.clone());
            blocking(move || store.content().resume(&key)).await?
        };
        if writer.offset() > blob.size {
            writer = restart(store, &key, writer).await?;
        } else if writer.offset() > 0 {
            tracing::info!(digest = %blob.digest, offset = writer.offset(), "resuming partial download");
        }
        let descriptor = OciDescriptor {
            media_type: blob.media_type.clone(),
            digest: blob.digest.to_string(),
            size: blob.size as i64,
            ..OciDescriptor::default()
        };
        let mut failures = 0u32;
        while writer.offset() < blob.size {
            let (w, outcome) = self
                .receive(
                    store,
                    client,
                    oref,
                    ctx,
                    &descriptor,
                    blob,
                    writer,
                    progress,
                )
                .await?;
            writer = w;
            if let Err(error) = outcome {
                failures += 1;
                if failures >= self.config.attempts.max(1) {
                    tracing::warn!(digest = %blob.digest, %error, "giving up; the partial download stays for the next pull");
                    return Err(error);
                }
                tracing::info!(digest = %blob.digest, offset = writer.offset(), %error, "download interrupted; resuming");
                if let Some(id) = &blob.progress_id {
                    progress(Progress::new(id.clone(), ProgressStatus::Retrying));
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
            }
        }
        if let Some(id) = &blob.progress_id {
            progress(Progress::new(id.clone(), ProgressStatus::VerifyingChecksum));
        }
        let (digest, size) = (blob.digest.clone(), blob.size);
        // A mismatch deletes the partial: bytes that hash wrong are worth nothing.
        blocking(move || writer.commit(Some(&digest), Some(size))).await?;
        if let Some(id) = &blob.progress_id {
            progress(Progress::new(id.clone(), ProgressStatus::DownloadComplete));
        }
        Ok(true)
    }

    /// One request for the rest of a blob. `Ok((writer, Err(_)))` is a failure worth
    /// retrying (the writer holds what arrived); `Err` is final.
    #[allow(clippy::too_many_arguments)]
    async fn receive(
        &self,
        store: &Arc<ImageStore>,
        client: &oci_client::Client,
        oref: &oci_client::Reference,
        ctx: &Context<'_>,
        descriptor: &OciDescriptor,
        blob: &Blob,
        writer: BlobWriter,
        progress: &ProgressSink,
    ) -> Result<(BlobWriter, Result<(), RegistryError>), RegistryError> {
        use oci_client::client::BlobResponse;
        let offset = writer.offset();
        let response = if offset == 0 {
            client
                .pull_blob_stream(oref, descriptor)
                .await
                .map(BlobResponse::Full)
        } else {
            client
                .pull_blob_stream_partial(oref, descriptor, offset, None)
                .await
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                let e = ctx.classify(e);
                return if e.is_transient() {
                    Ok((writer, Err(e)))
                } else {
                    Err(e)
                };
            }
        };
        let (writer, stream) = match response {
            BlobResponse::Partial(stream) => (writer, stream),
            BlobResponse::Full(stream) if offset > 0 => {
                tracing::info!(digest = %blob.digest, "registry ignored the Range request; starting over");
                (
                    restart(store, &blob.digest.to_string(), writer).await?,
                    stream,
                )
            }
            BlobResponse::Full(stream) => (writer, stream),
        };
        let mut received = writer.offset();

        // The file writes run on a blocking thread fed through a small queue.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
        let sink = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut writer = writer;
            while let Some(chunk) = rx.blocking_recv() {
                if let Err(e) = writer.write_all(&chunk) {
                    return (writer, Err(e));
                }
            }
            (writer, Ok(()))
        });
        let mut outcome: Result<(), RegistryError> = Ok(());
        let mut fatal: Option<RegistryError> = None;
        let mut last_report = Instant::now();
        let mut stream = stream.stream;
        while let Some(item) = stream.next().await {
            match item {
                Ok(bytes) => {
                    received += bytes.len() as u64;
                    if received > blob.size {
                        fatal = Some(
                            ImageError::SizeMismatch {
                                what: format!("blob {}", blob.digest),
                                expected: blob.size,
                                actual: received,
                            }
                            .into(),
                        );
                        break;
                    }
                    if tx.send(bytes).await.is_err() {
                        break;
                    }
                    if let Some(id) = &blob.progress_id
                        && last_report.elapsed() >= PROGRESS_INTERVAL
                    {
                        last_report = Instant::now();
                        progress(Progress {
                            id: id.clone(),
                            status: ProgressStatus::Downloading,
                            current: received,
                            total: blob.size,
                        });
                    }
                }
                // All bytes are in: the commit's own digest check has the last word (the
                // client's verifying stream reports a mismatch here, after the data).
                Err(_) if received == blob.size => break,
                Err(e) => {
                    outcome = Err(RegistryError::Interrupted {
                        what: format!("blob {}", blob.digest.short()),
                        registry: ctx.registry.to_owned(),
                        reason: super::error::one_line(&e.to_string()),
                    });
                    break;
                }
            }
        }
        drop(tx);
        let (writer, written) = sink
            .await
            .map_err(|e| RegistryError::Internal(format!("blob writer task failed: {e}")))?;
        written.map_err(|source| ImageError::Stream {
            op: "writing a downloaded blob",
            source,
        })?;
        if let Some(error) = fatal {
            let key = blob.digest.to_string();
            drop(writer);
            let store = store.clone();
            blocking(move || store.content().abort(&key)).await?;
            return Err(error);
        }
        if outcome.is_ok() && writer.offset() < blob.size {
            outcome = Err(RegistryError::Interrupted {
                what: format!("blob {}", blob.digest.short()),
                registry: ctx.registry.to_owned(),
                reason: "the connection closed early".to_owned(),
            });
        }
        if let Some(id) = &blob.progress_id {
            progress(Progress {
                id: id.clone(),
                status: ProgressStatus::Downloading,
                current: writer.offset(),
                total: blob.size,
            });
        }
        Ok((writer, outcome))
    }
}

/// Throws a partial download away and starts a fresh one under the same key.
async fn restart(
    store: &Arc<ImageStore>,
    key: &str,
    writer: BlobWriter,
) -> Result<BlobWriter, RegistryError> {
    drop(writer);
    let (store, key) = (store.clone(), key.to_owned());
    blocking(move || {
        store.content().abort(&key)?;
        store.content().resume(&key)
    })
    .await
}

/// GETs a manifest (by tag, or by the digest given) and checks its bounds and digest.
async fn fetch_manifest(
    client: &oci_client::Client,
    oref: &oci_client::Reference,
    auth: &oci_client::secrets::RegistryAuth,
    ctx: &Context<'_>,
    limits: &Limits,
    by_digest: Option<&Descriptor>,
) -> Result<Fetched, RegistryError> {
    let target = match by_digest {
        Some(d) => {
            if d.size() > limits.max_json_bytes {
                return Err(ImageError::LimitExceeded {
                    what: "manifest size",
                    limit: limits.max_json_bytes,
                }
                .into());
            }
            oref.clone_with_digest(d.digest().to_string())
        }
        None => oref.clone(),
    };
    let (bytes, _) = client
        .pull_manifest_raw(&target, auth, MANIFEST_TYPES)
        .await
        .map_err(|e| ctx.classify(e))?;
    if bytes.len() as u64 > limits.max_json_bytes {
        return Err(ImageError::LimitExceeded {
            what: "manifest size",
            limit: limits.max_json_bytes,
        }
        .into());
    }
    let digest = Digest::of(&bytes);
    if let Some(d) = by_digest {
        let want = Digest::from_oci(d.digest())?;
        if want != digest {
            return Err(ImageError::DigestMismatch {
                what: "manifest".to_owned(),
                expected: want.to_string(),
                actual: digest.to_string(),
            }
            .into());
        }
        crate::store::check_size("manifest", d.size(), bytes.len() as u64)?;
    }
    Ok(Fetched {
        digest,
        bytes: bytes.to_vec(),
    })
}

/// Follows indexes down to this host's image manifest.
async fn select_platform(
    client: &oci_client::Client,
    oref: &oci_client::Reference,
    auth: &oci_client::secrets::RegistryAuth,
    ctx: &Context<'_>,
    limits: &Limits,
    mut current: Fetched,
) -> Result<Fetched, RegistryError> {
    let mut depth = 0;
    loop {
        match kind_of(&current.bytes)? {
            Kind::Manifest => return Ok(current),
            Kind::Index => {
                if depth >= limits.max_index_depth {
                    return Err(ImageError::LimitExceeded {
                        what: "image index nesting",
                        limit: limits.max_index_depth as u64,
                    }
                    .into());
                }
                let index: ImageIndex = parse_json("image index", &current.bytes)?;
                let usable = |d: &&Descriptor| {
                    let t = d.media_type().to_string();
                    MANIFEST_TYPES.contains(&t.as_str())
                };
                let chosen = index
                    .manifests()
                    .iter()
                    .filter(usable)
                    .find(|d| d.platform().as_ref().is_some_and(matches_host))
                    .or_else(|| {
                        index
                            .manifests()
                            .iter()
                            .filter(usable)
                            .find(|d| d.platform().is_none())
                    })
                    .ok_or_else(|| {
                        ImageError::NoMatchingPlatform(format!("{HOST_OS}/{}", host_arch()))
                    })?
                    .clone();
                tracing::debug!(digest = %chosen.digest(), "index entry chosen for this platform");
                current = fetch_manifest(client, oref, auth, ctx, limits, Some(&chosen)).await?;
                depth += 1;
            }
        }
    }
}

/// The blobs an image manifest names, after checking it against the store's bounds.
fn check_manifest(
    manifest: &ImageManifest,
    limits: &Limits,
) -> Result<(Blob, Vec<Blob>), RegistryError> {
    let cfg = manifest.config();
    match cfg.media_type() {
        MediaType::ImageConfig => {}
        MediaType::Other(t) if t == DOCKER_CONFIG => {}
        other => {
            return Err(ImageError::Unsupported(format!(
                "config media type {other}: not a container image"
            ))
            .into());
        }
    }
    if cfg.size() > limits.max_json_bytes {
        return Err(ImageError::LimitExceeded {
            what: "image config size",
            limit: limits.max_json_bytes,
        }
        .into());
    }
    if manifest.layers().len() > limits.max_layers {
        return Err(ImageError::LimitExceeded {
            what: "layers in an image",
            limit: limits.max_layers as u64,
        }
        .into());
    }
    let config = Blob {
        digest: Digest::from_oci(cfg.digest())?,
        size: cfg.size(),
        media_type: cfg.media_type().to_string(),
        progress_id: None,
    };
    let mut layers = Vec::with_capacity(manifest.layers().len());
    for l in manifest.layers() {
        let media_type = l.media_type().to_string();
        if !LAYER_TYPES.contains(&media_type.as_str()) {
            return Err(ImageError::Unsupported(format!("layer media type {media_type}")).into());
        }
        if l.size() > limits.max_layer_bytes {
            return Err(ImageError::LimitExceeded {
                what: "layer blob size",
                limit: limits.max_layer_bytes,
            }
            .into());
        }
        let digest = Digest::from_oci(l.digest())?;
        // The same blob twice in one image is legal; it is fetched once.
        if layers.iter().any(|b: &Blob| b.digest == digest) {
            continue;
        }
        layers.push(Blob {
            progress_id: Some(digest.short().to_owned()),
            digest,
            size: l.size(),
            media_type,
        });
    }
    Ok((config, layers))
}

/// The image `reference` names in the store now, if any.
fn current_image(store: &ImageStore, reference: &Reference) -> Option<Digest> {
    let index = store.index_snapshot();
    store
        .lookup(&index, &reference.to_string())
        .ok()
        .map(|(id, _)| id)
}

/// Deletes blobs this pull brought that no image references.
async fn discard_unreferenced(store: &Arc<ImageStore>, blobs: Vec<Digest>) {
    if blobs.is_empty() {
        return;
    }
    let store = store.clone();
    let _ = blocking(move || {
        let _guard = store.op_lock.lock();
        let keep = store.index_snapshot().referenced_blobs();
        for blob in blobs.iter().filter(|b| !keep.contains(b)) {
            if let Err(e) = store.content.delete(blob) {
                tracing::warn!(digest = %blob, error = %e, "could not discard a pulled blob");
            }
        }
        Ok(())
    })
    .await;
}
