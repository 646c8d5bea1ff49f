//! Pushing: an image from the store goes up as stored — each layer blob and the config (skipped
//! when a HEAD finds the registry has it), then the stored manifest, byte for byte, under the tag.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use oci_client::RegistryOperation;
use oci_spec::image::ImageManifest;
use tokio::io::AsyncReadExt;

use super::error::{Context, Operation, RegistryError};
use super::pull::blocking;
use super::{Progress, ProgressSink, ProgressStatus, RegistryAuth, RegistryClient, oci_reference};
use crate::digest::Digest;
use crate::error::ImageError;
use crate::reference::Reference;
use crate::store::{ImageStore, parse_json};

/// Bytes read from a blob file per upload chunk.
const READ_CHUNK: usize = 256 * 1024;

/// What a push did: Docker's `TAG: digest: sha256:… size: N` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushResult {
    pub tag: String,
    /// The manifest's digest, now resolvable at the registry.
    pub digest: Digest,
    /// The manifest's size in bytes.
    pub size: u64,
}

type UploadFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RegistryError>> + Send + 'a>>;

/// One blob to upload.
struct Upload {
    digest: Digest,
    size: u64,
    /// Layers report progress; the config does not.
    progress_id: Option<String>,
}

impl RegistryClient {
    /// Pushes the image `reference` names in `store` to `reference`'s registry and tag.
    pub async fn push(
        &self,
        store: &Arc<ImageStore>,
        reference: &Reference,
        auth: &RegistryAuth,
        progress: ProgressSink,
    ) -> Result<PushResult, RegistryError> {
        let display = reference.familiar();
        if reference.digest().is_some() {
            return Err(RegistryError::InvalidArgument(format!(
                "cannot push {display}: push a tag, not a digest"
            )));
        }
        let tag = reference
            .tag()
            .unwrap_or(crate::reference::DEFAULT_TAG)
            .to_owned();
        let (manifest_bytes, media_type) = {
            let store = store.clone();
            let key = reference.to_string();
            let shown = display.clone();
            tokio::task::spawn_blocking(move || local_manifest(&store, &key, &shown))
                .await
                .map_err(|e| RegistryError::Internal(format!("store task failed: {e}")))??
        };
        let manifest: ImageManifest = parse_json("image manifest", &manifest_bytes)?;
        let mut uploads: Vec<Upload> = Vec::new();
        for layer in manifest.layers() {
            let digest = Digest::from_oci(layer.digest())?;
            if uploads.iter().any(|u| u.digest == digest) {
                continue;
            }
            uploads.push(Upload {
                progress_id: Some(digest.short().to_owned()),
                digest,
                size: layer.size(),
            });
        }
        let config = Upload {
            digest: Digest::from_oci(manifest.config().digest())?,
            size: manifest.config().size(),
            progress_id: None,
        };
        for blob in uploads.iter().chain([&config]) {
            if !store.content().contains(&blob.digest) {
                return Err(ImageError::Corrupt(format!(
                    "blob {} of {display} is missing from the store",
                    blob.digest
                ))
                .into());
            }
        }

        let ctx = self.context(reference, &display, Operation::Push, auth);
        let client = self.oci_client()?;
        let oref = oci_reference(reference);
        let oauth = auth.to_oci();
        tracing::info!(reference = %reference, auth = ?auth, "pushing image");
        client
            .auth(&oref, &oauth, RegistryOperation::Push)
            .await
            .map_err(|e| ctx.classify(e))?;
        progress(Progress::new(
            "",
            ProgressStatus::PushRefersTo(reference.familiar_repository()),
        ));
        // Docker lists the top layer first.
        for blob in uploads.iter().rev() {
            let id = blob.progress_id.clone().unwrap_or_default();
            progress(Progress::new(id, ProgressStatus::Preparing));
        }
        // Boxed with a named type, for the same `Send` inference reason as in pull.
        let transfers: Vec<UploadFuture<'_>> = uploads
            .iter()
            .rev()
            .chain([&config])
            .map(|blob| -> UploadFuture<'_> {
                Box::pin(self.upload(store, &client, &oref, &ctx, blob, &progress))
            })
            .collect();
        futures::stream::iter(transfers)
            .buffer_unordered(self.config.concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;

        let size = manifest_bytes.len() as u64;
        let digest = Digest::of(&manifest_bytes);
        let content_type = media_type.parse().map_err(|_| {
            ImageError::Corrupt(format!("stored manifest media type {media_type:?}"))
        })?;
        client
            .push_manifest_raw(&oref, manifest_bytes, content_type)
            .await
            .map_err(|e| ctx.classify(e))?;
        tracing::info!(reference = %reference, %digest, size, "image pushed");
        Ok(PushResult { tag, digest, size })
    }

    async fn upload(
        &self,
        store: &Arc<ImageStore>,
        client: &oci_client::Client,
        oref: &oci_client::Reference,
        ctx: &Context<'_>,
        blob: &Upload,
        progress: &ProgressSink,
    ) -> Result<(), RegistryError> {
        let report = |status| {
            if let Some(id) = &blob.progress_id {
                progress(Progress::new(id.clone(), status));
            }
        };
        let exists = client
            .blob_exists(oref, blob.digest.as_str())
            .await
            .map_err(|e| ctx.classify(e))?;
        if exists {
            report(ProgressStatus::LayerAlreadyExists);
            return Ok(());
        }
        let file = {
            let store = store.clone();
            let digest = blob.digest.clone();
            blocking(move || store.content().open_blob(&digest)).await?
        };
        let file = tokio::fs::File::from_std(file);
        let sent = Arc::new(AtomicU64::new(0));
        let stream = {
            let sent = sent.clone();
            let progress = progress.clone();
            let id = blob.progress_id.clone();
            let total = blob.size;
            let mut last_report = Instant::now();
            futures::stream::try_unfold(file, |mut file| async move {
                let mut buf = vec![0u8; READ_CHUNK];
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some((bytes::Bytes::from(buf), file)))
            })
            .map_ok(move |chunk: bytes::Bytes| {
                let done =
                    sent.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
                if let Some(id) = &id
                    && (last_report.elapsed() >= std::time::Duration::from_millis(100)
                        || done == total)
                {
                    last_report = Instant::now();
                    progress(Progress {
                        id: id.clone(),
                        status: ProgressStatus::Pushing,
                        current: done,
                        total,
                    });
                }
                chunk
            })
            .map_err(oci_client::errors::OciDistributionError::IoError)
        };
        client
            .push_blob_stream(oref, stream, blob.digest.as_str(), Some(blob.size))
            .await
            .map_err(|e| ctx.classify(e))?;
        let sent = sent.load(Ordering::Relaxed);
        if sent != blob.size {
            return Err(ImageError::SizeMismatch {
                what: format!("stored blob {}", blob.digest),
                expected: blob.size,
                actual: sent,
            }
            .into());
        }
        report(ProgressStatus::Pushed);
        Ok(())
    }
}

/// The stored manifest (bytes and media type) of the image `key` names.
fn local_manifest(
    store: &ImageStore,
    key: &str,
    display: &str,
) -> Result<(Vec<u8>, String), RegistryError> {
    let index = store.index_snapshot();
    let (id, _) = store
        .lookup(&index, key)
        .map_err(|_| RegistryError::NotLocal(display.to_owned()))?;
    let record = &index.images[&id];
    let bytes = store
        .content()
        .read_small(&record.manifest, store.limits().max_json_bytes)?;
    Ok((bytes, record.manifest_media_type.clone()))
}
