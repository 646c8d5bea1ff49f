//! The local `Volumes` API over the engine's volume operations.

use std::sync::Arc;

use shoal_api::v1::volumes_server::{Volumes, VolumesServer};
use shoal_api::v1::{
    CreateVolumeRequest, ListVolumesRequest, ListVolumesResponse, PruneVolumesRequest,
    PruneVolumesResponse, RemoveVolumeRequest, RemoveVolumeResponse, Volume, VolumeRef,
};
use tonic::{Request, Response, Status};

use crate::Engine;

type Reply<T> = Result<Response<T>, Status>;

/// The `shoal.v1.Volumes` service.
pub struct VolumesApi {
    engine: Arc<Engine>,
}

impl VolumesApi {
    pub fn server(engine: Arc<Engine>) -> VolumesServer<VolumesApi> {
        VolumesServer::new(VolumesApi { engine })
    }
}

#[tonic::async_trait]
impl Volumes for VolumesApi {
    async fn create(&self, request: Request<CreateVolumeRequest>) -> Reply<Volume> {
        Ok(Response::new(
            self.engine.create_volume(request.into_inner()).await?,
        ))
    }

    async fn inspect(&self, request: Request<VolumeRef>) -> Reply<Volume> {
        Ok(Response::new(
            self.engine.inspect_volume(&request.get_ref().name).await?,
        ))
    }

    async fn list(&self, request: Request<ListVolumesRequest>) -> Reply<ListVolumesResponse> {
        Ok(Response::new(ListVolumesResponse {
            volumes: self.engine.list_volumes(&request.get_ref().filters).await?,
        }))
    }

    async fn remove(&self, request: Request<RemoveVolumeRequest>) -> Reply<RemoveVolumeResponse> {
        let request = request.into_inner();
        self.engine
            .remove_volume(&request.name, request.force)
            .await?;
        Ok(Response::new(RemoveVolumeResponse {}))
    }

    async fn prune(&self, request: Request<PruneVolumesRequest>) -> Reply<PruneVolumesResponse> {
        Ok(Response::new(
            self.engine.prune_volumes(request.get_ref().all).await?,
        ))
    }
}
