//! The local `Images` API over the image store. The store's I/O is blocking, so streams are
//! bridged: chunks from the client feed a blocking reader, and a blocking writer feeds chunks
//! back. Pull and push run the registry client in a task of their own and stream its progress.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use shoal_api::v1::images_server::{Images, ImagesServer};
use shoal_api::v1::{
    DataChunk, HistoryEntry, ImageHistoryResponse, ImageInfo, ImageProgress, ImageRef,
    ImageSummary, ImportChunk, ListImagesRequest, ListImagesResponse, LoadImagesResponse,
    PruneImagesRequest, PruneImagesResponse, PullImageRequest, PulledImage, PushImageRequest,
    PushedImage, RegistryLoginRequest, RegistryLoginResponse, RemoveImageRequest,
    RemoveImageResponse, RemovedImage, SaveImagesRequest, TagImageRequest, TagImageResponse,
    import_chunk,
};
use shoal_image::registry::{Progress, ProgressSink, RegistryAuth, RegistryError};
use shoal_image::{ImageError, Reference, Removed};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::Engine;
use crate::chunks::ChunkReader;

type Reply<T> = Result<Response<T>, Status>;

/// The `shoal.v1.Images` service.
pub struct ImagesApi {
    engine: Arc<Engine>,
}

impl ImagesApi {
    pub fn server(engine: Arc<Engine>) -> ImagesServer<ImagesApi> {
        ImagesServer::new(ImagesApi { engine })
    }
}

fn status(error: ImageError) -> Status {
    status_of_image(&error)
}

fn registry_status(error: RegistryError) -> Status {
    let code = match &error {
        RegistryError::Image(e) => return status_of_image(e),
        RegistryError::ManifestUnknown { .. } | RegistryError::NotLocal(_) => Code::NotFound,
        RegistryError::BadCredentials { .. } | RegistryError::AuthenticationRequired { .. } => {
            Code::Unauthenticated
        }
        RegistryError::Denied { .. } => Code::PermissionDenied,
        RegistryError::InvalidArgument(_) => Code::InvalidArgument,
        RegistryError::Internal(_) => Code::Internal,
        // Not Unavailable: the CLI reads that code as "the daemon is gone".
        _ => Code::FailedPrecondition,
    };
    Status::new(code, error.to_string())
}

fn status_of_image(error: &ImageError) -> Status {
    let message = error.to_string();
    let code = if message.starts_with("no such image") {
        Code::NotFound
    } else if message.contains("invalid") || message.contains("refused") {
        Code::InvalidArgument
    } else {
        Code::FailedPrecondition
    };
    Status::new(code, message)
}

/// The credentials a request carries; none means anonymous.
fn registry_auth(auth: Option<shoal_api::v1::RegistryAuth>) -> RegistryAuth {
    let Some(auth) = auth else {
        return RegistryAuth::Anonymous;
    };
    if !auth.registry_token.is_empty() {
        RegistryAuth::Bearer(auth.registry_token)
    } else if !auth.username.is_empty() || !auth.password.is_empty() {
        RegistryAuth::Basic {
            username: auth.username,
            password: auth.password,
        }
    } else {
        RegistryAuth::Anonymous
    }
}

fn progress_message(progress: Progress) -> ImageProgress {
    ImageProgress {
        id: progress.id,
        status: progress.status.to_string(),
        current: progress.current,
        total: progress.total,
        pulled: None,
        pushed: None,
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<ImageProgress, Status>> + Send + 'static>>;

/// Runs a registry operation in its own task, streaming its progress and then its last
/// message (or its error). The operation finishes even if the client goes away, so a
/// download is never left half-recorded.
fn progress_stream<F, Fut>(operation: F) -> ProgressStream
where
    F: FnOnce(ProgressSink) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<ImageProgress, Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let progress_tx = tx.clone();
    let sink: ProgressSink = Arc::new(move |p: Progress| {
        let _ = progress_tx.send(Ok(progress_message(p)));
    });
    tokio::spawn(async move {
        let last = operation(sink).await;
        let _ = tx.send(last);
    });
    Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
}

fn parse_reference(image: &str) -> Result<Reference, Status> {
    if image.is_empty() {
        return Err(Status::invalid_argument("an image name is required"));
    }
    Reference::parse(image).map_err(|e| Status::invalid_argument(e.to_string()))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)
}

fn timestamp(text: &Option<String>) -> Option<prost_types::Timestamp> {
    text.as_deref().and_then(crate::parse_rfc3339)
}

fn summary(image: shoal_image::ImageSummary) -> ImageSummary {
    ImageSummary {
        id: image.id.to_string(),
        repo_tags: image.repo_tags,
        repo_digests: image.repo_digests,
        created: timestamp(&image.created),
        size: image.size,
    }
}

/// A blocking writer that sends 1 MiB chunks to async code.
struct ChunkWriter {
    tx: mpsc::Sender<Result<DataChunk, Status>>,
    buffer: Vec<u8>,
}

const CHUNK: usize = 1 << 20;

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.buffer);
        self.tx
            .blocking_send(Ok(DataChunk { data }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

#[tonic::async_trait]
impl Images for ImagesApi {
    async fn list(&self, _request: Request<ListImagesRequest>) -> Reply<ListImagesResponse> {
        let store = self.engine.images().clone();
        let images = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ListImagesResponse {
            images: images.into_iter().map(summary).collect(),
        }))
    }

    async fn inspect(&self, request: Request<ImageRef>) -> Reply<ImageInfo> {
        let store = self.engine.images().clone();
        let reference = request.into_inner().image;
        let details = blocking(move || store.inspect(&reference)).await?;
        let config_json = serde_json::to_vec(&details.config).unwrap_or_default();
        Ok(Response::new(ImageInfo {
            summary: Some(ImageSummary {
                id: details.id.to_string(),
                repo_tags: details.repo_tags,
                repo_digests: details.repo_digests,
                created: timestamp(&details.created),
                size: details.size,
            }),
            architecture: details.architecture,
            os: details.os,
            config_json,
            layers: details.diff_ids.iter().map(|d| d.to_string()).collect(),
        }))
    }

    async fn history(&self, request: Request<ImageRef>) -> Reply<ImageHistoryResponse> {
        let store = self.engine.images().clone();
        let reference = request.into_inner().image;
        let entries = blocking(move || store.history(&reference)).await?;
        Ok(Response::new(ImageHistoryResponse {
            entries: entries
                .into_iter()
                .map(|e| HistoryEntry {
                    id: e.id.map(|d| d.to_string()).unwrap_or_default(),
                    created: timestamp(&e.created),
                    created_by: e.created_by,
                    size: e.size,
                    comment: e.comment,
                    empty_layer: e.empty_layer,
                })
                .collect(),
        }))
    }

    async fn tag(&self, request: Request<TagImageRequest>) -> Reply<TagImageResponse> {
        let store = self.engine.images().clone();
        let request = request.into_inner();
        blocking(move || store.tag(&request.source, &request.target)).await?;
        Ok(Response::new(TagImageResponse {}))
    }

    async fn remove(&self, request: Request<RemoveImageRequest>) -> Reply<RemoveImageResponse> {
        let request = request.into_inner();
        if !request.force {
            // An image a container was made from stays while the container exists.
            let resolved = {
                let store = self.engine.images().clone();
                let reference = request.image.clone();
                tokio::task::spawn_blocking(move || store.resolve(&reference))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
            };
            if let Ok(image) = resolved {
                let image_id = image.id.to_string();
                let users: Vec<String> = self
                    .engine
                    .list(true)
                    .await
                    .into_iter()
                    .filter(|c| c.image_id == image_id)
                    .map(|c| c.name)
                    .collect();
                let only_tag = {
                    let store = self.engine.images().clone();
                    let reference = request.image.clone();
                    tokio::task::spawn_blocking(move || {
                        store
                            .inspect(&reference)
                            .map(|d| d.repo_tags.len() <= 1)
                            .unwrap_or(true)
                    })
                    .await
                    .unwrap_or(true)
                };
                if !users.is_empty() && only_tag {
                    return Err(Status::failed_precondition(format!(
                        "image {} is used by containers {}: remove them first or use --force",
                        request.image,
                        users.join(", ")
                    )));
                }
            }
        }
        let store = self.engine.images().clone();
        let removed = blocking(move || store.remove(&request.image, request.force)).await?;
        Ok(Response::new(RemoveImageResponse {
            removed: removed
                .into_iter()
                .map(|r| match r {
                    Removed::Untagged(tag) => RemovedImage {
                        untagged: tag,
                        deleted: String::new(),
                    },
                    Removed::Deleted(id) => RemovedImage {
                        untagged: String::new(),
                        deleted: id.to_string(),
                    },
                })
                .collect(),
        }))
    }

    async fn load(&self, request: Request<Streaming<DataChunk>>) -> Reply<LoadImagesResponse> {
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
        let store = self.engine.images().clone();
        let loader = tokio::task::spawn_blocking(move || store.load(ChunkReader::new(rx)));
        while let Some(chunk) = input.next().await {
            let chunk = chunk?;
            if tx.send(chunk.data).await.is_err() {
                break;
            }
        }
        drop(tx);
        let loaded = loader
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status)?;
        let store = self.engine.images().clone();
        let all = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let loaded = loaded
            .into_iter()
            .map(|image| {
                let id = image.id.to_string();
                all.iter()
                    .find(|s| s.id.to_string() == id)
                    .cloned()
                    .map(summary)
                    .unwrap_or(ImageSummary {
                        id,
                        repo_tags: image.references,
                        ..Default::default()
                    })
            })
            .collect();
        Ok(Response::new(LoadImagesResponse { loaded }))
    }

    type SaveStream = Pin<Box<dyn Stream<Item = Result<DataChunk, Status>> + Send + 'static>>;

    async fn save(&self, request: Request<SaveImagesRequest>) -> Reply<Self::SaveStream> {
        let images = request.into_inner().images;
        if images.is_empty() {
            return Err(Status::invalid_argument("name at least one image to save"));
        }
        // Resolve first, so an unknown image is a clean error rather than a broken stream.
        for reference in &images {
            let store = self.engine.images().clone();
            let reference = reference.clone();
            blocking(move || store.resolve(&reference).map(drop)).await?;
        }
        let (tx, rx) = mpsc::channel(4);
        let store = self.engine.images().clone();
        tokio::task::spawn_blocking(move || {
            let mut writer = ChunkWriter {
                tx: tx.clone(),
                buffer: Vec::new(),
            };
            let refs: Vec<&str> = images.iter().map(String::as_str).collect();
            let result = store.save(&refs, &mut writer);
            match result {
                Ok(()) => {
                    let _ = writer.flush();
                }
                Err(error) => {
                    let _ = tx.blocking_send(Err(status(error)));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn import(&self, request: Request<Streaming<ImportChunk>>) -> Reply<ImageSummary> {
        let mut input = request.into_inner();
        let first = input
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("import needs a first message"))??;
        let Some(import_chunk::Part::Spec(spec)) = first.part else {
            return Err(Status::invalid_argument(
                "the first import message must carry the import spec",
            ));
        };
        let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
        let store = self.engine.images().clone();
        let reference = (!spec.reference.is_empty()).then(|| spec.reference.clone());
        let changes = spec.changes.clone();
        let importer = tokio::task::spawn_blocking(move || {
            store.import(ChunkReader::new(rx), reference.as_deref(), &changes)
        });
        while let Some(chunk) = input.next().await {
            if let Some(import_chunk::Part::Data(data)) = chunk?.part
                && tx.send(data).await.is_err()
            {
                break;
            }
        }
        drop(tx);
        let imported = importer
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status)?;
        Ok(Response::new(summary(imported)))
    }

    type PullStream = ProgressStream;

    async fn pull(&self, request: Request<PullImageRequest>) -> Reply<Self::PullStream> {
        let request = request.into_inner();
        let reference = parse_reference(&request.image)?;
        let auth = registry_auth(request.auth);
        let engine = self.engine.clone();
        Ok(Response::new(progress_stream(move |sink| async move {
            let store = engine.images().clone();
            let pulled = engine
                .registry()
                .pull(&store, &reference, &auth, sink)
                .await
                .map_err(registry_status)?;
            Ok(ImageProgress {
                pulled: Some(PulledImage {
                    reference: pulled.reference.to_string(),
                    digest: pulled.digest.to_string(),
                    image_id: pulled.image_id.to_string(),
                    downloaded_newer: pulled.downloaded_newer,
                    familiar: pulled.reference.familiar(),
                }),
                ..Default::default()
            })
        })))
    }

    type PushStream = ProgressStream;

    async fn push(&self, request: Request<PushImageRequest>) -> Reply<Self::PushStream> {
        let request = request.into_inner();
        let reference = parse_reference(&request.image)?;
        let auth = registry_auth(request.auth);
        let engine = self.engine.clone();
        Ok(Response::new(progress_stream(move |sink| async move {
            let store = engine.images().clone();
            let pushed = engine
                .registry()
                .push(&store, &reference, &auth, sink)
                .await
                .map_err(registry_status)?;
            Ok(ImageProgress {
                pushed: Some(PushedImage {
                    tag: pushed.tag,
                    digest: pushed.digest.to_string(),
                    size: pushed.size,
                }),
                ..Default::default()
            })
        })))
    }

    async fn login(&self, request: Request<RegistryLoginRequest>) -> Reply<RegistryLoginResponse> {
        let request = request.into_inner();
        if request.username.is_empty() || request.password.is_empty() {
            return Err(Status::invalid_argument(
                "login needs a username and a password",
            ));
        }
        self.engine
            .registry()
            .login(&request.server, &request.username, &request.password)
            .await
            .map_err(registry_status)?;
        Ok(Response::new(RegistryLoginResponse {
            status: "Login Succeeded".to_owned(),
        }))
    }

    async fn prune(&self, _request: Request<PruneImagesRequest>) -> Reply<PruneImagesResponse> {
        let in_use = self.engine.layers_in_use().await;
        let store = self.engine.images().clone();
        let report = blocking(move || store.gc(&in_use)).await?;
        Ok(Response::new(PruneImagesResponse {
            deleted: report
                .removed_blobs
                .iter()
                .chain(report.removed_layers.iter())
                .map(|d| d.to_string())
                .collect(),
            reclaimed_bytes: report.reclaimed_bytes,
        }))
    }
}
