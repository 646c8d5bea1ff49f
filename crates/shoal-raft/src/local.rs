//! `LocalNetwork`: an in-process `PeerNetwork` routing by node id, for tests and single-process
//! clusters. It can cut a node off (both directions) and enforces a per-message size limit, so
//! tests prove that no raft message outgrows a real transport.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use parking_lot::RwLock;

use crate::error::NetError;
use crate::network::{BoxFuture, PeerNetwork, RpcKind, SnapshotChunks};
use crate::node::{ReplicatedLog, WeakLog};

/// The default message limit: gRPC's default maximum message size.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Default)]
struct Routes {
    // Weak: the nodes hold this router, so strong handles would keep every node alive forever.
    nodes: HashMap<u64, WeakLog>,
    isolated: HashSet<u64>,
}

/// A shared in-process router. Clone it into every node of the cluster (the clones share routes);
/// each node's sends are tagged with its id via [`LocalNetwork::for_node`].
#[derive(Clone)]
pub struct LocalNetwork {
    routes: Arc<RwLock<Routes>>,
    from: Option<u64>,
    max_message_bytes: usize,
}

impl Default for LocalNetwork {
    fn default() -> Self {
        LocalNetwork::new()
    }
}

impl std::fmt::Debug for LocalNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNetwork")
            .field("from", &self.from)
            .finish()
    }
}

impl LocalNetwork {
    pub fn new() -> Self {
        LocalNetwork {
            routes: Arc::default(),
            from: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// Refuse any single message (request, reply or snapshot chunk) larger than `bytes`.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// The handle node `id` sends through, so isolation applies to its outgoing messages too.
    pub fn for_node(&self, id: u64) -> Arc<dyn PeerNetwork> {
        Arc::new(LocalNetwork {
            routes: self.routes.clone(),
            from: Some(id),
            max_message_bytes: self.max_message_bytes,
        })
    }

    /// Makes `log` reachable under its id.
    pub fn register(&self, log: &ReplicatedLog) {
        self.routes.write().nodes.insert(log.id(), log.downgrade());
    }

    pub fn unregister(&self, id: u64) {
        self.routes.write().nodes.remove(&id);
    }

    /// Drops every message to or from `id` until [`LocalNetwork::heal`].
    pub fn isolate(&self, id: u64) {
        self.routes.write().isolated.insert(id);
    }

    pub fn heal(&self, id: u64) {
        self.routes.write().isolated.remove(&id);
    }

    fn target(&self, target: u64) -> Result<ReplicatedLog, NetError> {
        let routes = self.routes.read();
        let cut = routes.isolated.contains(&target)
            || self.from.is_some_and(|f| routes.isolated.contains(&f));
        if cut {
            return Err(NetError::Unreachable(format!("node {target} is isolated")));
        }
        routes
            .nodes
            .get(&target)
            .and_then(WeakLog::upgrade)
            .ok_or_else(|| NetError::Unreachable(format!("node {target} is not running")))
    }

    fn check_size(&self, len: usize) -> Result<(), NetError> {
        if len > self.max_message_bytes {
            return Err(NetError::Remote(format!(
                "message of {len} bytes exceeds the {} byte limit",
                self.max_message_bytes
            )));
        }
        Ok(())
    }
}

impl PeerNetwork for LocalNetwork {
    fn call(
        &self,
        target: u64,
        _addr: &str,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, NetError>> {
        let this = self.clone();
        Box::pin(async move {
            this.check_size(payload.len())?;
            let node = this.target(target)?;
            let reply = node
                .handle_rpc(kind, &payload)
                .await
                .map_err(|e| NetError::Remote(e.to_string()))?;
            // The reply travels back over the same link: drop it if the link was cut meanwhile.
            this.target(target)?;
            this.check_size(reply.len())?;
            Ok(reply)
        })
    }

    fn install_snapshot(
        &self,
        target: u64,
        _addr: &str,
        chunks: SnapshotChunks,
    ) -> BoxFuture<'static, Result<Vec<u8>, NetError>> {
        let this = self.clone();
        Box::pin(async move {
            let node = this.target(target)?;
            let limit_check = this.clone();
            let chunks = chunks.map(move |c| {
                limit_check.check_size(c.len())?;
                limit_check.target(target)?;
                Ok::<_, NetError>(c)
            });
            let reply = node
                .handle_snapshot(chunks)
                .await
                .map_err(|e| NetError::Remote(e.to_string()))?;
            this.target(target)?;
            Ok(reply)
        })
    }
}
