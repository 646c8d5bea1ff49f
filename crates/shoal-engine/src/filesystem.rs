//! Container filesystems for `diff`, `export`, `commit` and `cp`: which view of a container's
//! root each operation works on, the temporary overlay mounts of stopped containers, the pause
//! around `commit`, and the chunked tar streams of the gRPC calls. The hostile-tree-safe work
//! itself (confined resolution, archive, extraction, changes, layers) is `shoal-image`'s.
//!
//! Views:
//! - `cp` and `stat` of a running container go through `/proc/<pid>/root`, so volumes, bind
//!   mounts and tmpfs mounts inside it are seen as the container sees them (checked to be the
//!   container's overlay root, so a recycled pid cannot redirect a copy);
//! - `export` of a running container reads its overlay at the bundle's `rootfs` (no volumes,
//!   as Docker's export);
//! - a stopped container gets a temporary overlay under `<exec-root>/fsviews/`: read-only
//!   reads stack its upper dir as one more lower layer (over a scratch upper, so nothing can
//!   reach its real upper), and `cp` into it mounts its own upper and work dirs, which makes
//!   `start` wait its turn. Every view is unmounted when dropped, and views a crash left are
//!   unmounted when the engine opens. Bind mounts and volumes of a stopped container are not
//!   mounted: `cp` sees the image's directories beneath them.

use std::collections::HashSet;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use shoal_api::v1::{ContainerInfo, ContainerSpec};
use shoal_image::{Change, CommitOptions, ConfinedRoot, ExtractOptions, FsError, ImageConfig};
use shoal_runtime::container::{mount_overlay_rootfs, unmount_overlay_rootfs};
use tokio::sync::mpsc;

use crate::chunks::ChunkReader;
use crate::{Engine, EngineError};

/// Containers whose filesystem is being changed through a temporary mount, or which are
/// being started: the two must never overlap, or two overlays would share one upper dir.
#[derive(Debug)]
pub(crate) struct FsOps {
    busy: Arc<Mutex<HashSet<String>>>,
    views: PathBuf,
}

/// Holds a container in [`FsOps`] until dropped.
#[derive(Debug)]
pub(crate) struct BusyGuard {
    busy: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl FsOps {
    /// Unmounts and removes the views a previous daemon left behind.
    pub(crate) fn new(exec_root: &Path) -> FsOps {
        let views = exec_root.join("fsviews");
        if let Ok(entries) = std::fs::read_dir(&views) {
            for entry in entries.flatten() {
                let dir = entry.path();
                tracing::info!(path = %dir.display(), "removing a stale filesystem view");
                remove_view_dir(&dir);
            }
        }
        FsOps {
            busy: Arc::default(),
            views,
        }
    }

    fn try_acquire(&self, id: &str) -> Option<BusyGuard> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.insert(id.to_owned()).then(|| BusyGuard {
            busy: self.busy.clone(),
            id: id.to_owned(),
        })
    }

    /// Taken by `start` for the length of a launch.
    pub(crate) fn begin_start(&self, id: &str) -> Result<BusyGuard, EngineError> {
        self.try_acquire(id).ok_or_else(|| {
            EngineError::Conflict(format!(
                "container {id} is busy (starting, or being copied into while stopped); retry"
            ))
        })
    }
}

/// Unmounts a view directory's mount point and removes what the view made. The mount point
/// is only ever `rmdir`ed, so a mount that would not go away is never recursed into.
fn remove_view_dir(dir: &Path) {
    let merged = dir.join("merged");
    let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
    if std::fs::remove_dir(&merged).is_err() && merged.exists() {
        tracing::warn!(path = %merged.display(), "filesystem view still mounted; leaving it");
        return;
    }
    for scratch in ["upper", "work"] {
        let _ = std::fs::remove_dir_all(dir.join(scratch));
    }
    let _ = std::fs::remove_dir(dir);
}

/// A temporary overlay mount, removed on drop.
#[derive(Debug)]
struct TempMount {
    dir: PathBuf,
}

impl TempMount {
    fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if let Err(error) = unmount_overlay_rootfs(&self.merged()) {
            tracing::warn!(path = %self.dir.display(), %error, "could not unmount a filesystem view");
        }
        remove_view_dir(&self.dir);
    }
}

/// One container's root, confined, and whatever keeps it available.
#[derive(Debug)]
pub(crate) struct RootView {
    root: ConfinedRoot,
    _mount: Option<TempMount>,
    _busy: Option<BusyGuard>,
}

impl RootView {
    pub(crate) fn root(&self) -> &ConfinedRoot {
        &self.root
    }
}

/// What a view is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// `cp`/`stat` reads: a running container as it sees itself.
    Read,
    /// `cp` into the container.
    Write,
    /// `export`: the overlay only.
    Export,
}

fn is_running(info: &ContainerInfo) -> Option<i32> {
    let state = info.state.as_ref()?;
    (matches!(state.status.as_str(), "running" | "paused") && state.pid > 0).then_some(state.pid)
}

fn blocking_err(e: tokio::task::JoinError) -> EngineError {
    EngineError::Internal(e.to_string())
}

impl Engine {
    fn upper_dir(&self, id: &str) -> PathBuf {
        self.records.container_dir(id).join("fs").join("upper")
    }

    fn work_dir(&self, id: &str) -> PathBuf {
        self.records.container_dir(id).join("fs").join("work")
    }

    fn bundle_rootfs(&self, id: &str) -> PathBuf {
        self.container_exec_dir(id).join("bundle").join("rootfs")
    }

    /// The image layer dirs of a container, nearest first (overlay's `lowerdir` order).
    async fn lower_dirs(&self, info: &ContainerInfo) -> Result<Vec<PathBuf>, EngineError> {
        let images = self.images.clone();
        let image = if info.image_id.is_empty() {
            info.image.clone()
        } else {
            info.image_id.clone()
        };
        let resolved = tokio::task::spawn_blocking(move || images.resolve(&image))
            .await
            .map_err(blocking_err)??;
        Ok(resolved.layer_dirs.into_iter().rev().collect())
    }

    /// The container's changes to its image (`docker diff`).
    pub async fn diff(&self, reference: &str) -> Result<Vec<Change>, EngineError> {
        let info = self.inspect(reference).await?;
        let lowers = self.lower_dirs(&info).await?;
        let upper = self.upper_dir(&info.id);
        if !upper.exists() {
            // Never started: nothing changed.
            return Ok(Vec::new());
        }
        tokio::task::spawn_blocking(move || shoal_image::changes(&upper, &lowers))
            .await
            .map_err(blocking_err)?
            .map_err(EngineError::from)
    }

    async fn view(&self, reference: &str, purpose: Purpose) -> Result<RootView, EngineError> {
        let info = self.inspect(reference).await?;
        let id = info.id.clone();
        if let Some(pid) = is_running(&info)
            && let Some(view) = self.live_view(&id, pid, purpose)?
        {
            return Ok(view);
        }
        let lowers = self.lower_dirs(&info).await?;
        let busy = if purpose == Purpose::Write {
            let guard = self.fs_ops.try_acquire(&id).ok_or_else(|| {
                EngineError::Conflict(format!(
                    "container {} is starting or being copied into; retry",
                    info.name
                ))
            })?;
            // It may have started between the look above and taking the guard.
            let again = self.inspect(&id).await?;
            if let Some(pid) = is_running(&again) {
                drop(guard);
                return self.live_view(&id, pid, purpose)?.ok_or_else(|| {
                    EngineError::Conflict(format!("container {} is starting; retry", info.name))
                });
            }
            Some(guard)
        } else {
            None
        };
        let upper = self.upper_dir(&id);
        let work = self.work_dir(&id);
        let views = self.fs_ops.views.clone();
        let writable = purpose == Purpose::Write;
        let mount = tokio::task::spawn_blocking(move || {
            mount_view(&views, &id, &lowers, &upper, &work, writable)
        })
        .await
        .map_err(blocking_err)??;
        let root = ConfinedRoot::open(&mount.merged())?;
        Ok(RootView {
            root,
            _mount: Some(mount),
            _busy: busy,
        })
    }

    /// The root of a running container, or `None` when it is no longer there.
    fn live_view(
        &self,
        id: &str,
        pid: i32,
        purpose: Purpose,
    ) -> Result<Option<RootView>, EngineError> {
        let overlay = self.bundle_rootfs(id);
        let overlay_root = match nix::fcntl::open(
            &overlay,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(_) => return Ok(None),
        };
        let overlay_stat = nix::sys::stat::fstat(&overlay_root).ok();
        let is_overlay = nix::sys::statfs::fstatfs(&overlay_root)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC);
        if !is_overlay {
            return Ok(None);
        }
        if purpose == Purpose::Export {
            return Ok(Some(RootView {
                root: ConfinedRoot::from_fd(overlay_root),
                _mount: None,
                _busy: None,
            }));
        }
        let proc_root = format!("/proc/{pid}/root");
        let fd: OwnedFd = match nix::fcntl::open(
            proc_root.as_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(_) => return Ok(None),
        };
        let root = ConfinedRoot::from_fd(fd);
        // The pid is the container's only while its root is the container's overlay.
        let same = match (root.root_stat(), overlay_stat) {
            (Ok(a), Some(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        };
        if !same {
            return Ok(None);
        }
        Ok(Some(RootView {
            root,
            _mount: None,
            _busy: None,
        }))
    }

    /// A view for `cp` out of (or `stat` in) a container.
    pub(crate) async fn read_view(&self, reference: &str) -> Result<RootView, EngineError> {
        self.view(reference, Purpose::Read).await
    }

    /// A view for `cp` into a container.
    pub(crate) async fn write_view(&self, reference: &str) -> Result<RootView, EngineError> {
        self.view(reference, Purpose::Write).await
    }

    /// A view of the container's own filesystem, without volumes, for `export`.
    pub(crate) async fn export_view(&self, reference: &str) -> Result<RootView, EngineError> {
        self.view(reference, Purpose::Export).await
    }

    /// A new image from the container's changes, as `docker commit`: the image's config with
    /// the container's settings and `changes` on top. A running container is paused while its
    /// changes are read, unless `pause` is false.
    pub async fn commit(
        &self,
        reference: &str,
        request: CommitRequest,
    ) -> Result<shoal_image::ImageSummary, EngineError> {
        let info = self.inspect(reference).await?;
        let id = info.id.clone();
        let images = self.images.clone();
        let image_ref = if info.image_id.is_empty() {
            info.image.clone()
        } else {
            info.image_id.clone()
        };
        let image = {
            let images = images.clone();
            let image_ref = image_ref.clone();
            tokio::task::spawn_blocking(move || images.resolve(&image_ref))
                .await
                .map_err(blocking_err)??
        };
        let spec = info.spec.clone().unwrap_or_default();
        let config = committed_config(&spec, image.config.config().as_ref());
        let options = CommitOptions {
            base: image.id.to_string(),
            created_by: config.cmd().clone().unwrap_or_default().join(" "),
            config,
            changes: request.changes,
            author: request.author,
            comment: request.comment,
            reference: request.reference,
        };
        let upper = self.upper_dir(&id);
        std::fs::create_dir_all(&upper).map_err(|e| EngineError::io("create", &upper, e))?;
        let status = info
            .state
            .as_ref()
            .map(|s| s.status.clone())
            .unwrap_or_default();
        let paused = if request.pause && status == "running" {
            self.pause(&id, true).await?;
            true
        } else {
            false
        };
        let result = tokio::task::spawn_blocking(move || images.commit(&upper, &options))
            .await
            .map_err(blocking_err);
        if paused && let Err(error) = self.pause(&id, false).await {
            tracing::warn!(container = %id, %error, "could not unpause after commit");
        }
        Ok(result??)
    }
}

/// `commit`'s settings besides the container.
#[derive(Clone, Debug, Default)]
pub struct CommitRequest {
    pub reference: Option<String>,
    pub author: Option<String>,
    pub comment: Option<String>,
    pub changes: Vec<String>,
    pub pause: bool,
}

/// Mounts a view of a stopped container under `views` (see the module docs).
fn mount_view(
    views: &Path,
    id: &str,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    writable: bool,
) -> Result<TempMount, EngineError> {
    std::fs::create_dir_all(views).map_err(|e| EngineError::io("create", views, e))?;
    let dir = views.join(format!(
        "{}-{:08x}",
        &id[..12.min(id.len())],
        rand::random::<u32>()
    ));
    let mount = TempMount { dir: dir.clone() };
    let merged = mount.merged();
    std::fs::create_dir_all(&merged).map_err(|e| EngineError::io("create", &merged, e))?;
    for d in [upper, work] {
        std::fs::create_dir_all(d).map_err(|e| EngineError::io("create", d, e))?;
    }
    if writable {
        mount_overlay_rootfs(lowers, upper, work, &merged)?;
    } else {
        let (scratch_upper, scratch_work) = (dir.join("upper"), dir.join("work"));
        for d in [&scratch_upper, &scratch_work] {
            std::fs::create_dir(d).map_err(|e| EngineError::io("create", d, e))?;
        }
        let mut stack = vec![upper.to_path_buf()];
        stack.extend(lowers.iter().cloned());
        mount_overlay_rootfs(&stack, &scratch_upper, &scratch_work, &merged)?;
        // Only reads go through this view; read-only makes sure of it.
        let remount = nix::mount::mount(
            None::<&str>,
            &merged,
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        );
        if let Err(error) = remount {
            tracing::debug!(%error, "could not remount a filesystem view read-only");
        }
    }
    tracing::debug!(container = %id, path = %merged.display(), writable, "filesystem view mounted");
    Ok(mount)
}

/// The configuration `commit` gives the new image: the image's, overridden by what the
/// container was created with, as Docker merges them.
fn committed_config(spec: &ContainerSpec, image: Option<&ImageConfig>) -> ImageConfig {
    let mut config = image.cloned().unwrap_or_default();
    if spec.entrypoint_set {
        config.set_entrypoint((!spec.entrypoint.is_empty()).then(|| spec.entrypoint.clone()));
        config.set_cmd((!spec.cmd.is_empty()).then(|| spec.cmd.clone()));
    } else if !spec.cmd.is_empty() {
        config.set_cmd(Some(spec.cmd.clone()));
    }
    if !spec.env.is_empty() {
        let mut env = config.env().clone().unwrap_or_default();
        for kv in &spec.env {
            let key = kv.split('=').next().unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        config.set_env(Some(env));
    }
    if !spec.working_dir.is_empty() {
        config.set_working_dir(Some(spec.working_dir.clone()));
    }
    if !spec.user.is_empty() {
        config.set_user(Some(spec.user.clone()));
    }
    if !spec.stop_signal.is_empty() {
        config.set_stop_signal(Some(spec.stop_signal.clone()));
    }
    if !spec.ports.is_empty() {
        let mut ports = config.exposed_ports().clone().unwrap_or_default();
        for p in &spec.ports {
            let proto = if p.protocol.is_empty() {
                "tcp"
            } else {
                p.protocol.as_str()
            };
            let port = format!("{}/{proto}", p.container_port);
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        config.set_exposed_ports(Some(ports));
    }
    if !spec.labels.is_empty() {
        let mut labels = config.labels().clone().unwrap_or_default();
        labels.extend(spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        config.set_labels(Some(labels));
    }
    config
}

/// The status of a failed `cp`/`stat`: a missing path gets Docker's message.
pub(crate) fn path_status(error: EngineError, path: &str, container: &str) -> tonic::Status {
    match error {
        EngineError::Filesystem(FsError::NotFound(_)) => tonic::Status::not_found(format!(
            "Could not find the file {path} in container {container}"
        )),
        other => other.into(),
    }
}

// Streams ------------------------------------------------------------------------------------

/// A blocking writer that sends chunks of up to 1 MiB to async code, each wrapped by `wrap`.
pub(crate) struct ChunkWriter<T> {
    tx: mpsc::Sender<Result<T, tonic::Status>>,
    wrap: fn(Vec<u8>) -> T,
    buffer: Vec<u8>,
}

const CHUNK: usize = 1 << 20;

impl<T> ChunkWriter<T> {
    pub(crate) fn new(tx: mpsc::Sender<Result<T, tonic::Status>>, wrap: fn(Vec<u8>) -> T) -> Self {
        ChunkWriter {
            tx,
            wrap,
            buffer: Vec::with_capacity(CHUNK),
        }
    }
}

impl<T> Write for ChunkWriter<T> {
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
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok((self.wrap)(data)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

/// Streams a tar made on a blocking thread by `produce` (which writes into the given writer)
/// to `tx`; a failure midway ends the stream with its status.
pub(crate) fn spawn_tar_stream<T: Send + 'static>(
    tx: mpsc::Sender<Result<T, tonic::Status>>,
    wrap: fn(Vec<u8>) -> T,
    produce: impl FnOnce(&mut ChunkWriter<T>) -> Result<(), EngineError> + Send + 'static,
) {
    tokio::task::spawn_blocking(move || {
        let mut writer = ChunkWriter::new(tx.clone(), wrap);
        match produce(&mut writer).and_then(|()| {
            writer
                .flush()
                .map_err(|e| EngineError::Internal(e.to_string()))
        }) {
            Ok(()) => {}
            Err(error) => {
                tracing::debug!(%error, "tar stream ended early");
                let _ = tx.blocking_send(Err(error.into()));
            }
        }
    });
}

/// Extracts a tar arriving in `rx` into `dir` of the view, on a blocking thread.
pub(crate) async fn extract_stream(
    view: RootView,
    dir: String,
    keep_ownership: bool,
    rx: mpsc::Receiver<Vec<u8>>,
) -> Result<shoal_image::ExtractStats, EngineError> {
    tokio::task::spawn_blocking(move || {
        let options = ExtractOptions { keep_ownership };
        let result = view.root().extract(&dir, ChunkReader::new(rx), &options);
        drop(view);
        result.map_err(EngineError::from)
    })
    .await
    .map_err(blocking_err)?
}

/// The gRPC side of the filesystem calls: requests in, chunked tar streams out and in.
pub(crate) mod api {
    use std::pin::Pin;
    use std::sync::Arc;

    use futures::Stream;
    use shoal_api::v1::{
        ArchiveChunk, CommitContainerRequest, CommitContainerResponse, ContainerChange,
        ContainerChangesResponse, ContainerPathRequest, ContainerPathStat, ContainerRef,
        CopyFromChunk, CopyToChunk, CopyToResponse, copy_from_chunk, copy_to_chunk,
    };
    use tokio::sync::mpsc;
    use tokio_stream::StreamExt;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::{Response, Status, Streaming};

    use super::{CommitRequest, extract_stream, path_status, spawn_tar_stream};
    use crate::{Engine, EngineError};

    type Reply<T> = Result<Response<T>, Status>;
    type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

    fn stat_message(stat: &shoal_image::PathStat) -> ContainerPathStat {
        ContainerPathStat {
            name: stat.name.clone(),
            size: stat.size,
            mode: stat.mode,
            mtime_seconds: stat.mtime,
            link_target: stat.link_target.clone(),
        }
    }

    pub(crate) async fn diff(
        engine: &Engine,
        request: ContainerRef,
    ) -> Reply<ContainerChangesResponse> {
        let changes = engine.diff(&request.container).await?;
        Ok(Response::new(ContainerChangesResponse {
            changes: changes
                .into_iter()
                .map(|c| ContainerChange {
                    kind: c.kind.letter().to_string(),
                    path: c.path,
                })
                .collect(),
        }))
    }

    pub(crate) async fn export(
        engine: &Arc<Engine>,
        request: ContainerRef,
    ) -> Reply<BoxStream<ArchiveChunk>> {
        let view = engine.export_view(&request.container).await?;
        let (tx, rx) = mpsc::channel(4);
        spawn_tar_stream(
            tx,
            |data| ArchiveChunk { data },
            move |out| {
                view.root().export(out)?;
                Ok(())
            },
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    pub(crate) async fn commit(
        engine: &Engine,
        request: CommitContainerRequest,
    ) -> Reply<CommitContainerResponse> {
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        let summary = engine
            .commit(
                &request.container,
                CommitRequest {
                    reference: nonempty(request.reference),
                    author: nonempty(request.author),
                    comment: nonempty(request.comment),
                    changes: request.changes,
                    pause: request.pause,
                },
            )
            .await
            .map_err(|e| match e {
                EngineError::Image(shoal_image::ImageError::InvalidChange { .. })
                | EngineError::Image(shoal_image::ImageError::InvalidReference { .. }) => {
                    Status::invalid_argument(e.to_string())
                }
                e => e.into(),
            })?;
        Ok(Response::new(CommitContainerResponse {
            id: summary.id.to_string(),
        }))
    }

    pub(crate) async fn stat_path(
        engine: &Engine,
        request: ContainerPathRequest,
    ) -> Reply<ContainerPathStat> {
        let fail = |e: EngineError| path_status(e, &request.path, &request.container);
        let view = engine.read_view(&request.container).await.map_err(fail)?;
        let path = request.path.clone();
        let stat = tokio::task::spawn_blocking(move || view.root().stat(&path))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| fail(e.into()))?;
        Ok(Response::new(stat_message(&stat)))
    }

    pub(crate) async fn copy_from(
        engine: &Arc<Engine>,
        request: ContainerPathRequest,
    ) -> Reply<BoxStream<CopyFromChunk>> {
        let fail = |e: EngineError| path_status(e, &request.path, &request.container);
        let view = engine.read_view(&request.container).await.map_err(fail)?;
        let path = request.path.clone();
        // Resolved before the stream starts, so a missing path is the call's error.
        let (view, source) = tokio::task::spawn_blocking(move || {
            let source = view.root().source(&path);
            (view, source)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let source = source.map_err(|e| fail(e.into()))?;
        let (tx, rx) = mpsc::channel(4);
        let first = CopyFromChunk {
            part: Some(copy_from_chunk::Part::Stat(stat_message(source.stat()))),
        };
        tx.send(Ok(first))
            .await
            .map_err(|_| Status::cancelled("the client went away"))?;
        spawn_tar_stream(
            tx,
            |data| CopyFromChunk {
                part: Some(copy_from_chunk::Part::Data(data)),
            },
            move |out| {
                source.write_tar(out)?;
                drop(view);
                Ok(())
            },
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    pub(crate) async fn copy_to(
        engine: &Engine,
        mut input: Streaming<CopyToChunk>,
    ) -> Reply<CopyToResponse> {
        let first = input
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("copy needs a first message"))??;
        let Some(copy_to_chunk::Part::Spec(spec)) = first.part else {
            return Err(Status::invalid_argument(
                "the first copy message must carry the target",
            ));
        };
        let fail = |e: EngineError| path_status(e, &spec.path, &spec.container);
        let view = engine.write_view(&spec.container).await.map_err(fail)?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
        let extractor = tokio::spawn(extract_stream(
            view,
            spec.path.clone(),
            spec.copy_uid_gid,
            rx,
        ));
        while let Some(chunk) = input.next().await {
            if let Some(copy_to_chunk::Part::Data(data)) = chunk?.part
                && tx.send(data).await.is_err()
            {
                // The extractor stopped early: its error is the answer.
                break;
            }
        }
        drop(tx);
        let stats = extractor
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(fail)?;
        tracing::info!(container = %spec.container, path = %spec.path, entries = stats.entries, bytes = stats.bytes, "copied into container");
        Ok(Response::new(CopyToResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_config_merges_like_docker() {
        let image: ImageConfig = serde_json::from_str(
            r#"{"Entrypoint":["/init"],"Cmd":["serve"],"Env":["PATH=/bin","A=1"],"ExposedPorts":{"80/tcp":{}},"WorkingDir":"/srv"}"#,
        )
        .unwrap();
        let spec = ContainerSpec {
            cmd: vec!["sh".into(), "-c".into(), "work".into()],
            env: vec!["A=2".into(), "B=3".into()],
            user: "app".into(),
            ports: vec![shoal_api::v1::PortBinding {
                container_port: 53,
                protocol: "udp".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let c = committed_config(&spec, Some(&image));
        assert_eq!(c.entrypoint().clone().unwrap(), ["/init"]);
        assert_eq!(c.cmd().clone().unwrap(), ["sh", "-c", "work"]);
        assert_eq!(c.env().clone().unwrap(), ["PATH=/bin", "A=2", "B=3"]);
        assert_eq!(c.user().as_deref(), Some("app"));
        assert_eq!(c.working_dir().as_deref(), Some("/srv"));
        assert_eq!(c.exposed_ports().clone().unwrap(), ["80/tcp", "53/udp"]);
        // --entrypoint clears the image's CMD unless a command is given.
        let spec = ContainerSpec {
            entrypoint: vec!["/bin/sh".into()],
            entrypoint_set: true,
            ..Default::default()
        };
        let c = committed_config(&spec, Some(&image));
        assert_eq!(c.entrypoint().clone().unwrap(), ["/bin/sh"]);
        assert!(c.cmd().is_none());
    }

    #[test]
    fn stale_views_are_removed_and_starts_wait_for_copies() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("fsviews/abc-1");
        std::fs::create_dir_all(stale.join("merged")).unwrap();
        std::fs::create_dir_all(stale.join("upper/x")).unwrap();
        let ops = FsOps::new(dir.path());
        assert!(!stale.exists());
        let copy = ops.try_acquire("c1").unwrap();
        assert!(ops.begin_start("c1").is_err());
        assert!(ops.begin_start("c2").is_ok());
        drop(copy);
        assert!(ops.begin_start("c1").is_ok());
    }
}
