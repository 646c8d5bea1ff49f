//! The gRPC peer transport (`shoal.v1.Raft`): `RaftGrpcService`, mounted by the daemon on its
//! cluster listener, and `GrpcNetwork`, the client side, which keeps one channel per peer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use shoal_api::v1::raft_client::RaftClient;
use shoal_api::v1::raft_server::RaftServer;
use shoal_api::v1::{RaftMessage, RaftReply, RaftRpcKind, SnapshotChunk};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::error::{NetError, RaftError};
use crate::network::{BoxFuture, PeerNetwork, RpcKind, SnapshotChunks};
use crate::node::ReplicatedLog;

/// Messages stay far below this (appends ≤ ~2 MiB, snapshot chunks 1 MiB); the headroom only
/// guards against a single proposal near the proposal limit plus framing.
const MAX_GRPC_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Serves the `shoal.v1.Raft` service for one node.
#[derive(Clone, Debug)]
pub struct RaftGrpcService {
    log: ReplicatedLog,
}

impl RaftGrpcService {
    pub fn new(log: ReplicatedLog) -> Self {
        RaftGrpcService { log }
    }

    /// The tonic service to add to a server (`Server::builder().add_service(..)`).
    pub fn into_server(self) -> RaftServer<RaftGrpcService> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
    }
}

fn to_status(e: RaftError) -> Status {
    match e {
        RaftError::Shutdown => Status::unavailable(e.to_string()),
        RaftError::Malformed(_) => Status::invalid_argument(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl shoal_api::v1::raft_server::Raft for RaftGrpcService {
    async fn call(&self, request: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let msg = request.into_inner();
        let kind = match RaftRpcKind::try_from(msg.kind) {
            Ok(RaftRpcKind::AppendEntries) => RpcKind::AppendEntries,
            Ok(RaftRpcKind::Vote) => RpcKind::Vote,
            Ok(RaftRpcKind::PreVote) => RpcKind::PreVote,
            _ => return Err(Status::invalid_argument("unknown raft rpc kind")),
        };
        let payload = self
            .log
            .handle_rpc(kind, &msg.payload)
            .await
            .map_err(to_status)?;
        Ok(Response::new(RaftReply { payload }))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        let chunks = request.into_inner().map(|c| c.map(|c| c.data));
        let payload = self
            .log
            .handle_snapshot(Box::pin(chunks))
            .await
            .map_err(to_status)?;
        Ok(Response::new(RaftReply { payload }))
    }
}

type Connector = dyn Fn(&str) -> Result<Channel, String> + Send + Sync;

/// The gRPC client side: one cached `Channel` per peer, built by a caller-supplied connector so
/// mutual TLS (or any other channel setup) plugs in without touching this crate.
#[derive(Clone)]
pub struct GrpcNetwork {
    connector: Arc<Connector>,
    channels: Arc<Mutex<HashMap<u64, (String, Channel)>>>,
}

impl std::fmt::Debug for GrpcNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcNetwork").finish_non_exhaustive()
    }
}

impl GrpcNetwork {
    /// `connector` turns a peer address into a channel. It must not connect eagerly (use
    /// `Endpoint::connect_lazy`): it is called while raft waits.
    pub fn new(
        connector: impl Fn(&str) -> Result<Channel, String> + Send + Sync + 'static,
    ) -> Self {
        GrpcNetwork {
            connector: Arc::new(connector),
            channels: Arc::default(),
        }
    }

    /// Plain-text HTTP/2 to `host:port` (tests, or behind another secure layer).
    pub fn plaintext() -> Self {
        GrpcNetwork::new(|addr| Ok(plaintext_endpoint(addr)?.connect_lazy()))
    }

    /// Drops the cached channel to `target`, e.g. after its address or credentials changed.
    pub fn forget(&self, target: u64) {
        self.channels.lock().remove(&target);
    }

    fn client(&self, target: u64, addr: &str) -> Result<RaftClient<Channel>, NetError> {
        let mut channels = self.channels.lock();
        let channel = match channels.get(&target) {
            Some((cached_addr, channel)) if cached_addr == addr => channel.clone(),
            _ => {
                let channel = (self.connector)(addr).map_err(NetError::Unreachable)?;
                channels.insert(target, (addr.to_string(), channel.clone()));
                channel
            }
        };
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES))
    }
}

/// An endpoint for `host:port` with the timeouts raft wants: fail fast on a dead peer, notice a
/// silently dropped connection.
pub fn plaintext_endpoint(addr: &str) -> Result<Endpoint, String> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| {
            e.connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
        })
        .map_err(|e| format!("invalid peer address {addr:?}: {e}"))
}

fn to_net_error(s: Status) -> NetError {
    match s.code() {
        Code::Unavailable | Code::Unknown => NetError::Unreachable(s.message().to_string()),
        Code::DeadlineExceeded => NetError::Timeout,
        _ => NetError::Remote(s.message().to_string()),
    }
}

impl PeerNetwork for GrpcNetwork {
    fn call(
        &self,
        target: u64,
        addr: &str,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, NetError>> {
        let client = self.client(target, addr);
        Box::pin(async move {
            let kind = match kind {
                RpcKind::AppendEntries => RaftRpcKind::AppendEntries,
                RpcKind::Vote => RaftRpcKind::Vote,
                RpcKind::PreVote => RaftRpcKind::PreVote,
            };
            let reply = client?
                .call(RaftMessage {
                    kind: kind as i32,
                    payload,
                })
                .await
                .map_err(to_net_error)?;
            Ok(reply.into_inner().payload)
        })
    }

    fn install_snapshot(
        &self,
        target: u64,
        addr: &str,
        chunks: SnapshotChunks,
    ) -> BoxFuture<'static, Result<Vec<u8>, NetError>> {
        let client = self.client(target, addr);
        Box::pin(async move {
            let mut client = client?;
            // Fed from a task into a channel: a concrete stream type sidesteps a compiler
            // limitation proving the boxed client-streaming future `Send`.
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let feeder = tokio::spawn(async move {
                let mut chunks = chunks;
                while let Some(data) = chunks.next().await {
                    if tx.send(SnapshotChunk { data }).await.is_err() {
                        break;
                    }
                }
            });
            let reply = client
                .install_snapshot(ReceiverStream::new(rx))
                .await
                .map_err(to_net_error)?;
            drop(feeder);
            Ok(reply.into_inner().payload)
        })
    }
}
