//! Who may call what on the cluster listener: the per-method role table, the identity a TLS
//! connection proved, and the tower layer that refuses a call before any service sees it.
//!
//! TLS already checked that a presented certificate chains to this cluster's root (client
//! certificates are optional there, for the two bootstrap methods). This layer adds what TLS
//! cannot know: O = this cluster, an OU allowed for the method, the role the store holds now,
//! and that the certificate has not been revoked.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use shoal_api::v1::{Node, NodeRole};
use shoal_pki::{NodeIdentity, Role};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;

use crate::control::ManagerSlot;

/// A kind of caller a method admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No client certificate (joining hosts).
    Anonymous,
    Worker,
    Manager,
}

const ANYONE: &[Access] = &[Access::Anonymous, Access::Worker, Access::Manager];
const NODES: &[Access] = &[Access::Worker, Access::Manager];
const MANAGERS: &[Access] = &[Access::Manager];

/// The roles allowed to call the gRPC method at `path` (`/package.Service/Method`); `None` for
/// a method this listener does not know, which is refused.
pub fn method_policy(path: &str) -> Option<&'static [Access]> {
    match path {
        "/shoal.v1.NodeCa/GetRootCaCertificate" | "/shoal.v1.NodeCa/IssueNodeCertificate" => {
            Some(ANYONE)
        }
        "/shoal.v1.Dispatcher/Heartbeat" | "/shoal.v1.NodeCa/RenewNodeCertificate" => Some(NODES),
        "/shoal.v1.Raft/Call"
        | "/shoal.v1.Raft/InstallSnapshot"
        | "/shoal.v1.RaftMembership/Join"
        | "/shoal.v1.RaftMembership/Leave" => Some(MANAGERS),
        // Named although the next arm covers them: the unlock key opens every manager's keys,
        // and must never be one prefix edit away from a worker.
        "/shoal.v1.Control/GetUnlockKey" | "/shoal.v1.Control/RotateUnlockKey" => Some(MANAGERS),
        // The whole control API is for managers: a follower forwards its clients' calls.
        p if p.starts_with("/shoal.v1.Control/") => Some(MANAGERS),
        _ => None,
    }
}

/// What the TLS handshake established about a connection; the listener attaches it to every
/// request of the connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub identity: PeerIdentity,
}

#[derive(Debug, Clone)]
pub enum PeerIdentity {
    /// No client certificate.
    None,
    /// A certificate that chains to the root and names a node.
    Node(NodeIdentity),
    /// A certificate that chains to the root but whose subject is not a node identity.
    Invalid(String),
}

/// The authorized caller, inserted into the request for the service to read.
#[derive(Debug, Clone)]
pub struct Caller {
    pub addr: SocketAddr,
    pub identity: Option<NodeIdentity>,
}

fn access_of(role: Role) -> Access {
    match role {
        Role::Manager => Access::Manager,
        Role::Worker => Access::Worker,
    }
}

/// Decides one call. `Err` is the status to answer with; the reason is logged by the caller.
pub fn authorize(slot: &ManagerSlot, path: &str, peer: Option<&Peer>) -> Result<Caller, Status> {
    let Some(allowed) = method_policy(path) else {
        return Err(Status::permission_denied(format!("unknown method {path}")));
    };
    let Some(peer) = peer else {
        return Err(Status::unauthenticated("no transport identity"));
    };
    let identity = match &peer.identity {
        PeerIdentity::None if allowed.contains(&Access::Anonymous) => {
            return Ok(Caller {
                addr: peer.addr,
                identity: None,
            });
        }
        PeerIdentity::None => {
            return Err(Status::unauthenticated(
                "a client certificate of this swarm is required",
            ));
        }
        PeerIdentity::Invalid(reason) => {
            return Err(Status::unauthenticated(format!(
                "the client certificate is not a node identity: {reason}"
            )));
        }
        PeerIdentity::Node(identity) => identity,
    };
    let Some(manager) = slot.get() else {
        return Err(Status::unavailable("this node is not a swarm manager"));
    };
    if identity.cluster_id != manager.cluster_id() {
        return Err(Status::permission_denied(
            "the client certificate belongs to another swarm",
        ));
    }
    if manager.is_revoked(&identity.serial_hex, &identity.node_id) {
        return Err(Status::permission_denied(
            "the client certificate has been revoked (its node was removed)",
        ));
    }
    if !allowed.contains(&access_of(identity.role)) {
        return Err(Status::permission_denied(format!(
            "role {} may not call {path}",
            identity.role
        )));
    }
    // A demoted manager keeps its certificate until it is renewed: the role the store holds
    // now wins over the OU. A node the store does not know yet (a follower a little behind the
    // CA) is judged by its certificate.
    if identity.role == Role::Manager
        && !allowed.contains(&Access::Worker)
        && let Some(node) = manager.store().view().get::<Node>(&identity.node_id)
        && node.role != NodeRole::Manager as i32
    {
        return Err(Status::permission_denied(format!(
            "node {} is no longer a manager",
            identity.node_id
        )));
    }
    Ok(Caller {
        addr: peer.addr,
        identity: Some(identity.clone()),
    })
}

/// Tower layer running [`authorize`] in front of every service of the listener.
#[derive(Clone)]
pub struct AuthorizeLayer {
    slot: ManagerSlot,
}

impl AuthorizeLayer {
    pub fn new(slot: ManagerSlot) -> Self {
        AuthorizeLayer { slot }
    }
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            slot: self.slot.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    slot: ManagerSlot,
}

impl<S, B> tower::Service<http::Request<B>> for Authorize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let peer = request.extensions().get::<Peer>().cloned();
        match authorize(&self.slot, &path, peer.as_ref()) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                // The clone that was not polled ready stays behind (tower's usual dance).
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(ready.call(request))
            }
            Err(status) => {
                tracing::warn!(
                    peer = %peer.map_or_else(|| "unknown".to_owned(), |p| p.addr.to_string()),
                    method = %path,
                    reason = %status.message(),
                    "refused a cluster call"
                );
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bootstrap_methods_are_anonymous() {
        for path in [
            "/shoal.v1.NodeCa/GetRootCaCertificate",
            "/shoal.v1.NodeCa/IssueNodeCertificate",
        ] {
            assert!(method_policy(path).unwrap().contains(&Access::Anonymous));
        }
        for path in [
            "/shoal.v1.Dispatcher/Heartbeat",
            "/shoal.v1.NodeCa/RenewNodeCertificate",
            "/shoal.v1.Raft/Call",
            "/shoal.v1.RaftMembership/Join",
            "/shoal.v1.Control/ListNodes",
        ] {
            assert!(!method_policy(path).unwrap().contains(&Access::Anonymous));
        }
        assert!(
            !method_policy("/shoal.v1.Control/RemoveNode")
                .unwrap()
                .contains(&Access::Worker)
        );
        assert!(method_policy("/shoal.v1.Swarm/Init").is_none());
        assert!(method_policy("/shoal.v1.Containers/Create").is_none());
        // The unlock key is for managers only; unlocking is local (unix socket) only.
        for path in [
            "/shoal.v1.Control/GetUnlockKey",
            "/shoal.v1.Control/RotateUnlockKey",
        ] {
            assert_eq!(method_policy(path), Some(MANAGERS), "{path}");
        }
        assert!(method_policy("/shoal.v1.Swarm/Unlock").is_none());
    }

    #[test]
    fn anonymous_callers_reach_only_anonymous_methods() {
        let slot = ManagerSlot::default();
        let peer = Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            identity: PeerIdentity::None,
        };
        authorize(&slot, "/shoal.v1.NodeCa/GetRootCaCertificate", Some(&peer)).unwrap();
        let refused = authorize(&slot, "/shoal.v1.Control/ListNodes", Some(&peer)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let refused = authorize(&slot, "/shoal.v1.Nope/X", Some(&peer)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let refused = authorize(&slot, "/shoal.v1.NodeCa/GetRootCaCertificate", None).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }
}
