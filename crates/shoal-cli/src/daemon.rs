//! `daemon.rs`: the requests the verbs send, with every failure mapped to a `CliError` that
//! names the daemon's address, and every missing response field refused instead of defaulted.

use std::future::Future;

use shoal_api::v1::{
    self, Cluster, Config, ContainerInfo, Node, containers_client::ContainersClient,
    control_client::ControlClient, images_client::ImagesClient, swarm_client::SwarmClient,
    volumes_client::VolumesClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::CliError;
use crate::connect::{connect, display_host};
use crate::error::io_reason;

/// Largest message accepted from the daemon: image and log chunks may be big.
const MAX_MESSAGE: usize = 64 << 20;

/// Every service of one daemon, over one channel.
pub(crate) struct Daemon {
    host: String,
    control: ControlClient<Channel>,
    swarm: SwarmClient<Channel>,
    containers: ContainersClient<Channel>,
    images: ImagesClient<Channel>,
    volumes: VolumesClient<Channel>,
}

/// One state change `stop`, `kill`, `pause`… asks of a container.
#[derive(Debug, Clone)]
pub(crate) enum Lifecycle {
    Start,
    Stop { timeout_secs: i32 },
    Restart { timeout_secs: i32 },
    Kill { signal: String },
    Pause,
    Unpause,
    Remove { force: bool, volumes: bool },
}

impl Daemon {
    pub(crate) async fn connect(host: &str) -> Result<Self, CliError> {
        let channel = connect(host).await?;
        Ok(Daemon {
            host: display_host(host),
            control: ControlClient::new(channel.clone()),
            swarm: SwarmClient::new(channel.clone()),
            containers: ContainersClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE),
            images: ImagesClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE),
            volumes: VolumesClient::new(channel),
        })
    }

    /// A failed request or stream, as one line naming this daemon where that helps.
    pub(crate) fn fail(&self, status: tonic::Status) -> CliError {
        CliError::from_status(&self.host, status)
    }

    // Swarm service --------------------------------------------------------------------------

    pub(crate) async fn init(
        &mut self,
        req: v1::InitRequest,
    ) -> Result<v1::InitResponse, CliError> {
        let res = self.swarm.init(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    pub(crate) async fn join(
        &mut self,
        req: v1::JoinRequest,
    ) -> Result<v1::JoinResponse, CliError> {
        let res = self.swarm.join(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    pub(crate) async fn leave(&mut self, force: bool) -> Result<(), CliError> {
        let req = v1::LeaveRequest { force };
        self.swarm.leave(req).await.map_err(|s| self.fail(s))?;
        Ok(())
    }

    pub(crate) async fn info(&mut self) -> Result<v1::InfoResponse, CliError> {
        let res = self
            .swarm
            .info(v1::InfoRequest {})
            .await
            .map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    pub(crate) async fn unlock(&mut self, key: &str) -> Result<(), CliError> {
        let req = v1::UnlockRequest {
            unlock_key: key.to_owned(),
        };
        self.swarm.unlock(req).await.map_err(|s| self.fail(s))?;
        Ok(())
    }

    // Control service: cluster ---------------------------------------------------------------

    pub(crate) async fn get_unlock_key(&mut self) -> Result<String, CliError> {
        let res = self
            .control
            .get_unlock_key(v1::GetUnlockKeyRequest {})
            .await
            .map_err(|s| self.fail(s))?;
        let key = res.into_inner().unlock_key;
        if key.is_empty() {
            return Err(CliError::Protocol("GetUnlockKey returned no key"));
        }
        Ok(key)
    }

    pub(crate) async fn rotate_unlock_key(&mut self) -> Result<String, CliError> {
        let res = self
            .control
            .rotate_unlock_key(v1::RotateUnlockKeyRequest {})
            .await
            .map_err(|s| self.fail(s))?;
        let key = res.into_inner().unlock_key;
        if key.is_empty() {
            return Err(CliError::Protocol("RotateUnlockKey returned no key"));
        }
        Ok(key)
    }

    pub(crate) async fn get_cluster(&mut self) -> Result<Cluster, CliError> {
        let res = self
            .control
            .get_cluster(v1::GetClusterRequest {})
            .await
            .map_err(|s| self.fail(s))?;
        res.into_inner()
            .cluster
            .ok_or(CliError::Protocol("GetCluster returned no cluster"))
    }

    pub(crate) async fn update_cluster(
        &mut self,
        req: v1::UpdateClusterRequest,
    ) -> Result<Cluster, CliError> {
        let res = self
            .control
            .update_cluster(req)
            .await
            .map_err(|s| self.fail(s))?;
        res.into_inner()
            .cluster
            .ok_or(CliError::Protocol("UpdateCluster returned no cluster"))
    }

    // Control service: nodes -----------------------------------------------------------------

    pub(crate) async fn get_node(&mut self, reference: &str) -> Result<Node, CliError> {
        // `self` names the node this daemon runs, as in Docker; only this host knows which.
        let node = if reference == "self" {
            let info = self.info().await?;
            if info.node_id.is_empty() {
                return Err(CliError::Usage(
                    "this node is not part of a swarm, so it has no node to name as \"self\""
                        .to_owned(),
                ));
            }
            info.node_id
        } else {
            reference.to_owned()
        };
        let req = v1::GetNodeRequest { node };
        let res = self.control.get_node(req).await.map_err(|s| self.fail(s))?;
        res.into_inner()
            .node
            .ok_or(CliError::Protocol("GetNode returned no node"))
    }

    pub(crate) async fn list_nodes(
        &mut self,
        filters: v1::ListFilters,
    ) -> Result<Vec<Node>, CliError> {
        let req = v1::ListNodesRequest {
            filters: Some(filters),
        };
        let res = self
            .control
            .list_nodes(req)
            .await
            .map_err(|s| self.fail(s))?;
        Ok(res.into_inner().nodes)
    }

    pub(crate) async fn update_node(
        &mut self,
        node_id: &str,
        version: u64,
        spec: v1::NodeSpec,
    ) -> Result<Node, CliError> {
        let req = v1::UpdateNodeRequest {
            node_id: node_id.to_owned(),
            version,
            spec: Some(spec),
        };
        let res = self
            .control
            .update_node(req)
            .await
            .map_err(|s| self.fail(s))?;
        res.into_inner()
            .node
            .ok_or(CliError::Protocol("UpdateNode returned no node"))
    }

    pub(crate) async fn remove_node(&mut self, node_id: &str, force: bool) -> Result<(), CliError> {
        let req = v1::RemoveNodeRequest {
            node_id: node_id.to_owned(),
            force,
        };
        self.control
            .remove_node(req)
            .await
            .map_err(|s| self.fail(s))?;
        Ok(())
    }

    // Control service: configs ---------------------------------------------------------------

    pub(crate) async fn create_config(&mut self, spec: v1::ConfigSpec) -> Result<Config, CliError> {
        let req = v1::CreateConfigRequest { spec: Some(spec) };
        let res = self
            .control
            .create_config(req)
            .await
            .map_err(|s| self.fail(s))?;
        res.into_inner()
            .config
            .ok_or(CliError::Protocol("CreateConfig returned no config"))
    }

    pub(crate) async fn get_config(&mut self, reference: &str) -> Result<Config, CliError> {
        let req = v1::GetConfigRequest {
            config: reference.to_owned(),
        };
        let res = self
            .control
            .get_config(req)
            .await
            .map_err(|s| self.fail(s))?;
        res.into_inner()
            .config
            .ok_or(CliError::Protocol("GetConfig returned no config"))
    }

    pub(crate) async fn list_configs(
        &mut self,
        filters: v1::ListFilters,
    ) -> Result<Vec<Config>, CliError> {
        let req = v1::ListConfigsRequest {
            filters: Some(filters),
        };
        let res = self
            .control
            .list_configs(req)
            .await
            .map_err(|s| self.fail(s))?;
        Ok(res.into_inner().configs)
    }

    pub(crate) async fn remove_config(&mut self, config_id: &str) -> Result<(), CliError> {
        let req = v1::RemoveConfigRequest {
            config_id: config_id.to_owned(),
        };
        self.control
            .remove_config(req)
            .await
            .map_err(|s| self.fail(s))?;
        Ok(())
    }

    // Containers service ----------------------------------------------------------------------

    pub(crate) async fn create_container(
        &mut self,
        spec: v1::ContainerSpec,
    ) -> Result<v1::CreateContainerResponse, CliError> {
        let req = v1::CreateContainerRequest { spec: Some(spec) };
        let res = self
            .containers
            .create(req)
            .await
            .map_err(|s| self.fail(s))?;
        let res = res.into_inner();
        if res.id.is_empty() {
            return Err(CliError::Protocol("Create returned no container ID"));
        }
        Ok(res)
    }

    /// Starts, stops, kills, pauses, unpauses or removes one container.
    pub(crate) async fn lifecycle(
        &mut self,
        container: &str,
        op: &Lifecycle,
    ) -> Result<(), CliError> {
        let reference = || v1::ContainerRef {
            container: container.to_owned(),
        };
        let c = &mut self.containers;
        let result = match op.clone() {
            Lifecycle::Start => c.start(reference()).await.map(drop),
            Lifecycle::Stop { timeout_secs } => c
                .stop(v1::StopContainerRequest {
                    container: container.to_owned(),
                    timeout_secs,
                })
                .await
                .map(drop),
            Lifecycle::Restart { timeout_secs } => c
                .restart(v1::StopContainerRequest {
                    container: container.to_owned(),
                    timeout_secs,
                })
                .await
                .map(drop),
            Lifecycle::Kill { signal } => c
                .kill(v1::KillContainerRequest {
                    container: container.to_owned(),
                    signal,
                })
                .await
                .map(drop),
            Lifecycle::Pause => c.pause(reference()).await.map(drop),
            Lifecycle::Unpause => c.unpause(reference()).await.map(drop),
            Lifecycle::Remove { force, volumes } => c
                .remove(v1::RemoveContainerRequest {
                    container: container.to_owned(),
                    force,
                    remove_volumes: volumes,
                })
                .await
                .map(drop),
        };
        result.map_err(|s| self.fail(s))
    }

    /// Blocks until the container stops; its final state.
    pub(crate) async fn wait_container(
        &mut self,
        container: &str,
    ) -> Result<v1::ContainerState, CliError> {
        let req = v1::ContainerRef {
            container: container.to_owned(),
        };
        let res = self.containers.wait(req).await.map_err(|s| self.fail(s))?;
        res.into_inner()
            .state
            .ok_or(CliError::Protocol("Wait returned no container state"))
    }

    pub(crate) async fn list_containers(
        &mut self,
        all: bool,
    ) -> Result<Vec<ContainerInfo>, CliError> {
        let req = v1::ListContainersRequest { all };
        let res = self.containers.list(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner().containers)
    }

    pub(crate) async fn inspect_container(
        &mut self,
        container: &str,
    ) -> Result<ContainerInfo, CliError> {
        let req = v1::ContainerRef {
            container: container.to_owned(),
        };
        let res = self
            .containers
            .inspect(req)
            .await
            .map_err(|s| self.fail(s))?;
        let info = res.into_inner();
        if info.id.is_empty() {
            return Err(CliError::Protocol("Inspect returned no container ID"));
        }
        Ok(info)
    }

    pub(crate) async fn logs(
        &mut self,
        req: v1::LogsRequest,
    ) -> Result<Streaming<v1::LogEntry>, CliError> {
        let res = self.containers.logs(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    /// Opens an Attach or an Exec stream (which one, the first input message says).
    pub(crate) async fn stdio(
        &mut self,
        exec: bool,
        input: mpsc::Receiver<v1::StdioInput>,
    ) -> Result<Streaming<v1::StdioOutput>, CliError> {
        let input = ReceiverStream::new(input);
        let res = if exec {
            self.containers.exec(input).await
        } else {
            self.containers.attach(input).await
        };
        Ok(res.map_err(|s| self.fail(s))?.into_inner())
    }

    pub(crate) async fn top(&mut self, container: &str) -> Result<v1::TopResponse, CliError> {
        let req = v1::ContainerRef {
            container: container.to_owned(),
        };
        let res = self.containers.top(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    pub(crate) async fn stats(&mut self, container: &str) -> Result<v1::StatsResponse, CliError> {
        let req = v1::ContainerRef {
            container: container.to_owned(),
        };
        let res = self.containers.stats(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    // Containers service: filesystems (diff, export, commit, cp) ----------------------------

    pub(crate) async fn container_changes(
        &mut self,
        container: &str,
    ) -> Result<Vec<v1::ContainerChange>, CliError> {
        let req = v1::ContainerRef {
            container: container.to_owned(),
        };
        let res = self.containers.diff(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner().changes)
    }

    pub(crate) async fn export_container(
        &mut self,
        container: &str,
    ) -> Result<Streaming<v1::ArchiveChunk>, CliError> {
        let req = v1::ContainerRef {
            container: container.to_owned(),
        };
        let res = self
            .containers
            .export(req)
            .await
            .map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    pub(crate) async fn commit_container(
        &mut self,
        req: v1::CommitContainerRequest,
    ) -> Result<v1::CommitContainerResponse, CliError> {
        let res = self
            .containers
            .commit(req)
            .await
            .map_err(|s| self.fail(s))?;
        let res = res.into_inner();
        if res.id.is_empty() {
            return Err(CliError::Protocol("Commit returned no image ID"));
        }
        Ok(res)
    }

    pub(crate) async fn stat_container_path(
        &mut self,
        container: &str,
        path: &str,
    ) -> Result<v1::ContainerPathStat, CliError> {
        let req = v1::ContainerPathRequest {
            container: container.to_owned(),
            path: path.to_owned(),
        };
        let res = self
            .containers
            .stat_path(req)
            .await
            .map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    pub(crate) async fn copy_from_container(
        &mut self,
        container: &str,
        path: &str,
    ) -> Result<Streaming<v1::CopyFromChunk>, CliError> {
        let req = v1::ContainerPathRequest {
            container: container.to_owned(),
            path: path.to_owned(),
        };
        let res = self
            .containers
            .copy_from(req)
            .await
            .map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    /// Streams `spec`, then the tar in `chunks` (read from `source`), as a `CopyTo`; returns
    /// the bytes sent.
    pub(crate) async fn copy_to_container(
        &mut self,
        spec: v1::CopyToSpec,
        chunks: mpsc::Receiver<std::io::Result<Vec<u8>>>,
        source: &str,
    ) -> Result<u64, CliError> {
        let (tx, rx) = mpsc::channel(2);
        let first = v1::CopyToChunk {
            part: Some(v1::copy_to_chunk::Part::Spec(spec)),
        };
        tx.send(first)
            .await
            .map_err(|_| CliError::Protocol("the copy stream closed before it started"))?;
        let sent = std::sync::atomic::AtomicU64::new(0);
        let mut client = self.containers.clone();
        let rpc = client.copy_to(ReceiverStream::new(rx));
        let res = upload(rpc, tx, chunks, source, |data| {
            sent.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            v1::CopyToChunk {
                part: Some(v1::copy_to_chunk::Part::Data(data)),
            }
        })
        .await;
        res.map_err(|err| err.into_cli(self))?;
        Ok(sent.into_inner())
    }

    // Images service --------------------------------------------------------------------------

    pub(crate) async fn list_images(
        &mut self,
        all: bool,
    ) -> Result<Vec<v1::ImageSummary>, CliError> {
        let req = v1::ListImagesRequest { all };
        let res = self.images.list(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner().images)
    }

    pub(crate) async fn inspect_image(&mut self, image: &str) -> Result<v1::ImageInfo, CliError> {
        let req = v1::ImageRef {
            image: image.to_owned(),
        };
        let res = self.images.inspect(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    pub(crate) async fn image_history(
        &mut self,
        image: &str,
    ) -> Result<Vec<v1::HistoryEntry>, CliError> {
        let req = v1::ImageRef {
            image: image.to_owned(),
        };
        let res = self.images.history(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner().entries)
    }

    pub(crate) async fn tag_image(&mut self, source: &str, target: &str) -> Result<(), CliError> {
        let req = v1::TagImageRequest {
            source: source.to_owned(),
            target: target.to_owned(),
        };
        self.images.tag(req).await.map_err(|s| self.fail(s))?;
        Ok(())
    }

    pub(crate) async fn remove_image(
        &mut self,
        image: &str,
        force: bool,
    ) -> Result<Vec<v1::RemovedImage>, CliError> {
        let req = v1::RemoveImageRequest {
            image: image.to_owned(),
            force,
        };
        let res = self.images.remove(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner().removed)
    }

    /// Streams `chunks` (read from `source`) as a `Load`.
    pub(crate) async fn load_images(
        &mut self,
        chunks: mpsc::Receiver<std::io::Result<Vec<u8>>>,
        source: &str,
    ) -> Result<v1::LoadImagesResponse, CliError> {
        let (tx, rx) = mpsc::channel(2);
        let mut client = self.images.clone();
        let rpc = client.load(ReceiverStream::new(rx));
        let res = upload(rpc, tx, chunks, source, |data| v1::DataChunk { data }).await;
        res.map_err(|err| err.into_cli(self))
    }

    pub(crate) async fn save_images(
        &mut self,
        images: Vec<String>,
    ) -> Result<Streaming<v1::DataChunk>, CliError> {
        let req = v1::SaveImagesRequest { images };
        let res = self.images.save(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    /// Streams `spec`, then `chunks` (read from `source`), as an `Import`.
    pub(crate) async fn import_image(
        &mut self,
        spec: v1::ImportSpec,
        chunks: mpsc::Receiver<std::io::Result<Vec<u8>>>,
        source: &str,
    ) -> Result<v1::ImageSummary, CliError> {
        let (tx, rx) = mpsc::channel(2);
        let first = v1::ImportChunk {
            part: Some(v1::import_chunk::Part::Spec(spec)),
        };
        tx.send(first)
            .await
            .map_err(|_| CliError::Protocol("the import stream closed before it started"))?;
        let mut client = self.images.clone();
        let rpc = client.import(ReceiverStream::new(rx));
        let res = upload(rpc, tx, chunks, source, |data| v1::ImportChunk {
            part: Some(v1::import_chunk::Part::Data(data)),
        })
        .await;
        res.map_err(|err| err.into_cli(self))
    }

    /// Starts a pull; progress and then the result arrive on the stream.
    pub(crate) async fn pull_image(
        &mut self,
        image: &str,
        auth: Option<v1::RegistryAuth>,
    ) -> Result<Streaming<v1::ImageProgress>, CliError> {
        let req = v1::PullImageRequest {
            image: image.to_owned(),
            auth,
        };
        let res = self.images.pull(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    /// Starts a push; progress and then the result arrive on the stream.
    pub(crate) async fn push_image(
        &mut self,
        image: &str,
        auth: Option<v1::RegistryAuth>,
    ) -> Result<Streaming<v1::ImageProgress>, CliError> {
        let req = v1::PushImageRequest {
            image: image.to_owned(),
            auth,
        };
        let res = self.images.push(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    /// Has the daemon check credentials against a registry.
    pub(crate) async fn registry_login(
        &mut self,
        req: v1::RegistryLoginRequest,
    ) -> Result<v1::RegistryLoginResponse, CliError> {
        let res = self.images.login(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    pub(crate) async fn prune_images(&mut self) -> Result<v1::PruneImagesResponse, CliError> {
        let res = self
            .images
            .prune(v1::PruneImagesRequest {})
            .await
            .map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }
}

impl Daemon {
    // Volumes service -------------------------------------------------------------------------

    pub(crate) async fn create_volume(
        &mut self,
        req: v1::CreateVolumeRequest,
    ) -> Result<v1::Volume, CliError> {
        let res = self.volumes.create(req).await.map_err(|s| self.fail(s))?;
        let volume = res.into_inner();
        if volume.name.is_empty() {
            return Err(CliError::Protocol("CreateVolume returned no volume name"));
        }
        Ok(volume)
    }

    pub(crate) async fn inspect_volume(&mut self, name: &str) -> Result<v1::Volume, CliError> {
        let req = v1::VolumeRef {
            name: name.to_owned(),
        };
        let res = self.volumes.inspect(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }

    pub(crate) async fn list_volumes(
        &mut self,
        filters: Vec<v1::VolumeFilter>,
    ) -> Result<Vec<v1::Volume>, CliError> {
        let req = v1::ListVolumesRequest { filters };
        let res = self.volumes.list(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner().volumes)
    }

    pub(crate) async fn remove_volume(&mut self, name: &str, force: bool) -> Result<(), CliError> {
        let req = v1::RemoveVolumeRequest {
            name: name.to_owned(),
            force,
        };
        self.volumes.remove(req).await.map_err(|s| self.fail(s))?;
        Ok(())
    }

    pub(crate) async fn prune_volumes(
        &mut self,
        all: bool,
    ) -> Result<v1::PruneVolumesResponse, CliError> {
        let req = v1::PruneVolumesRequest { all };
        let res = self.volumes.prune(req).await.map_err(|s| self.fail(s))?;
        Ok(res.into_inner())
    }
}

/// Why an upload failed: the daemon said so, or our input could not be read.
enum UploadError {
    Status(tonic::Status),
    Read(CliError),
}

impl UploadError {
    fn into_cli(self, daemon: &Daemon) -> CliError {
        match self {
            UploadError::Status(status) => daemon.fail(status),
            UploadError::Read(err) => err,
        }
    }
}

/// Feeds `chunks` into a client-streaming `rpc` through `tx`; an early answer from the daemon
/// (a refusal) ends it at once.
///
/// A read error must not look like the end of the tarball. Closing `tx` would end the stream
/// cleanly, and so, in effect, would dropping `rpc`: that resets the HTTP/2 stream with CANCEL,
/// which hyper's server reports to the handler as a normal end of body. So on a read error both
/// are leaked: the stream stays open until this process exits (right after printing the error),
/// and the daemon then sees the connection drop mid-upload, which is an error.
async fn upload<T, R>(
    rpc: impl Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    tx: mpsc::Sender<T>,
    mut chunks: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    source: &str,
    wrap: impl Fn(Vec<u8>) -> T,
) -> Result<R, UploadError> {
    let mut rpc = Box::pin(rpc);
    loop {
        tokio::select! {
            res = &mut rpc => return res.map(tonic::Response::into_inner).map_err(UploadError::Status),
            chunk = chunks.recv() => match chunk {
                Some(Ok(data)) => {
                    tokio::select! {
                        res = &mut rpc => {
                            return res.map(tonic::Response::into_inner).map_err(UploadError::Status);
                        }
                        sent = tx.send(wrap(data)) => {
                            if sent.is_err() {
                                break;
                            }
                        }
                    }
                }
                Some(Err(err)) => {
                    // See above: neither a clean end nor a CANCEL reset may reach the daemon.
                    std::mem::forget(rpc);
                    std::mem::forget(tx);
                    return Err(UploadError::Read(CliError::ReadInput {
                        path: source.to_owned(),
                        reason: io_reason(&err).to_lowercase(),
                    }));
                }
                None => break,
            },
        }
    }
    drop(tx);
    rpc.await
        .map(tonic::Response::into_inner)
        .map_err(UploadError::Status)
}
