//! The peer transport seam: `PeerNetwork` moves opaque bytes between managers; this module turns
//! openraft's RPCs into those bytes (and back), bounds message sizes, and chunks snapshots.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::error::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes};
use serde::{Deserialize, Serialize};

use crate::config::{MAX_APPEND_BYTES, SNAPSHOT_CHUNK_BYTES};
use crate::error::NetError;
use crate::types::{self, Snapshot, SnapshotMeta, TypeConfig, Vote, approx_entry_size};

/// A boxed, sendable future, as returned by [`PeerNetwork`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// The chunks of one snapshot transfer: a header chunk, then the data in order.
pub type SnapshotChunks = Pin<Box<dyn Stream<Item = Vec<u8>> + Send + 'static>>;

/// Which raft RPC a [`PeerNetwork::call`] payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcKind {
    AppendEntries,
    Vote,
    PreVote,
}

/// Moves raft messages between managers. Payloads are opaque bytes produced and consumed by this
/// crate; the receiving side hands them to [`crate::ReplicatedLog::handle_rpc`] and
/// [`crate::ReplicatedLog::handle_snapshot`].
///
/// Implementations must not connect eagerly and should reuse one connection per peer.
pub trait PeerNetwork: Send + Sync + 'static {
    /// Sends one request to node `target` at `addr` and returns the reply payload.
    fn call(
        &self,
        target: u64,
        addr: &str,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, NetError>>;

    /// Streams one snapshot (each chunk well under any message limit) and returns the reply
    /// payload.
    fn install_snapshot(
        &self,
        target: u64,
        addr: &str,
        chunks: SnapshotChunks,
    ) -> BoxFuture<'static, Result<Vec<u8>, NetError>>;
}

/// First chunk of a snapshot transfer.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotHeader {
    pub(crate) vote: Vote,
    pub(crate) meta: SnapshotMeta,
    pub(crate) size: u64,
}

/// The reply to any RPC: the handler's answer, or its error as text.
pub(crate) type WireResult<T> = Result<T, String>;

pub(crate) struct NetworkFactory {
    pub(crate) id: u64,
    pub(crate) net: Arc<dyn PeerNetwork>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            id: self.id,
            target,
            addr: node.addr.clone(),
            net: self.net.clone(),
        }
    }
}

pub(crate) struct PeerClient {
    id: u64,
    target: u64,
    addr: String,
    net: Arc<dyn PeerNetwork>,
}

/// Floor for per-RPC timeouts: openraft asks for one heartbeat interval, which a large append on
/// a loaded host can exceed without the peer being down.
const MIN_RPC_TIMEOUT: Duration = Duration::from_secs(1);

impl PeerClient {
    fn timeout_err(&self, action: RPCTypes, timeout: Duration) -> Timeout<TypeConfig> {
        Timeout {
            action,
            id: self.id,
            target: self.target,
            timeout,
        }
    }

    fn to_rpc_error(
        &self,
        e: NetError,
        action: RPCTypes,
        timeout: Duration,
    ) -> RPCError<TypeConfig> {
        match e {
            NetError::Unreachable(m) => RPCError::Unreachable(Unreachable::from_string(m)),
            NetError::Timeout => RPCError::Timeout(self.timeout_err(action, timeout)),
            NetError::Remote(m) => RPCError::Network(NetworkError::from_string(m)),
        }
    }

    async fn call<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
        &self,
        kind: RpcKind,
        action: RPCTypes,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let payload = types::encode("rpc request", req)
            .map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        let fut = self.net.call(self.target, &self.addr, kind, payload);
        let reply = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r.map_err(|e| self.to_rpc_error(e, action, timeout))?,
            Err(_) => return Err(RPCError::Timeout(self.timeout_err(action, timeout))),
        };
        let reply: WireResult<Resp> = types::decode("rpc reply", &reply)
            .map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        reply.map_err(|e| RPCError::Network(NetworkError::from_string(e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // Keep every message under the transport limit: send a prefix and report partial
        // success, and openraft continues from there. A single oversized entry still goes alone.
        let mut bytes = 0usize;
        let mut keep = 0usize;
        for e in &rpc.entries {
            let size = approx_entry_size(e);
            if keep > 0 && bytes + size > MAX_APPEND_BYTES {
                break;
            }
            bytes += size;
            keep += 1;
        }
        let truncated_to = if keep < rpc.entries.len() {
            rpc.entries.truncate(keep);
            rpc.entries.last().map(|e| e.log_id)
        } else {
            None
        };
        // Large messages get time proportional to their size.
        let timeout = option
            .hard_ttl()
            .max(MIN_RPC_TIMEOUT + Duration::from_millis((bytes / 1024) as u64));
        let resp: AppendEntriesResponse<TypeConfig> = self
            .call(
                RpcKind::AppendEntries,
                RPCTypes::AppendEntries,
                &rpc,
                timeout,
            )
            .await?;
        Ok(match (resp, truncated_to) {
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(Some(last))
            }
            (resp, _) => resp,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let timeout = option.hard_ttl().max(MIN_RPC_TIMEOUT);
        self.call(RpcKind::Vote, RPCTypes::Vote, &rpc, timeout)
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let timeout = option.hard_ttl().max(MIN_RPC_TIMEOUT);
        self.call(RpcKind::PreVote, RPCTypes::Vote, &rpc, timeout)
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let data = snapshot.snapshot;
        let index = snapshot.meta.last_log_id.map(|l| l.index);
        let header = SnapshotHeader {
            vote,
            meta: snapshot.meta,
            size: data.len() as u64,
        };
        let header = types::encode("snapshot header", &header)
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?;
        tracing::info!(
            target_node = self.target,
            size = data.len(),
            chunks = data.len().div_ceil(SNAPSHOT_CHUNK_BYTES),
            index,
            "sending raft snapshot"
        );
        let chunks = futures::stream::once(async move { header })
            .chain(futures::stream::iter(ChunkIter { data, offset: 0 }));
        let timeout = option.hard_ttl();
        let send = self
            .net
            .install_snapshot(self.target, &self.addr, Box::pin(chunks));
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(timeout, send) => match r {
                Err(_) => return Err(StreamingError::Timeout(self.timeout_err(RPCTypes::InstallSnapshot, timeout))),
                Ok(Err(e)) => return Err(self.to_rpc_error(e, RPCTypes::InstallSnapshot, timeout).into()),
                Ok(Ok(reply)) => reply,
            },
        };
        let reply: WireResult<SnapshotResponse<TypeConfig>> =
            types::decode("snapshot reply", &reply)
                .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?;
        reply.map_err(|e| StreamingError::Network(NetworkError::from_string(e)))
    }
}

/// Yields the snapshot data in `SNAPSHOT_CHUNK_BYTES` pieces without holding more than one copy.
struct ChunkIter {
    data: Vec<u8>,
    offset: usize,
}

impl Iterator for ChunkIter {
    type Item = Vec<u8>;
    fn next(&mut self) -> Option<Vec<u8>> {
        if self.offset >= self.data.len() {
            return None;
        }
        let end = (self.offset + SNAPSHOT_CHUNK_BYTES).min(self.data.len());
        let chunk = self.data[self.offset..end].to_vec();
        self.offset = end;
        Some(chunk)
    }
}
