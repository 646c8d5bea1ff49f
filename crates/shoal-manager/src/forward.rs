//! Forwarding leader-bound calls from a follower manager to the leader over mutual TLS, with
//! the original caller's identity carried in metadata that the leader believes only from an
//! authenticated manager (so forwarding can never raise a caller's privileges).

use std::net::IpAddr;
use std::sync::Arc;

use shoal_pki::Role;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::authz::Caller;

/// Builds a (lazy) mutual-TLS channel to a manager's `host:port`.
pub type Dialer = Arc<dyn Fn(&str) -> Result<Channel, String> + Send + Sync>;

/// Node id of the manager that forwarded the call; its presence marks a forwarded call.
pub const FORWARDED_BY: &str = "shoal-forwarded-by";
/// Node id, role and IP address of the original caller, when it had them.
pub const FORWARDED_NODE: &str = "shoal-forwarded-node";
pub const FORWARDED_ROLE: &str = "shoal-forwarded-role";
pub const FORWARDED_ADDR: &str = "shoal-forwarded-addr";

/// Who a call really comes from, after unwrapping a forward.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// `None` for anonymous callers and for the local socket (the host's root user).
    pub node_id: Option<String>,
    pub role: Option<Role>,
    /// The address the original call came from; `None` on the local socket.
    pub ip: Option<IpAddr>,
    /// Whether a follower forwarded this call (then it must not be forwarded again).
    pub forwarded: bool,
}

fn header<T>(request: &Request<T>, name: &str) -> Option<String> {
    request
        .metadata()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The origin of `request`. Forwarding metadata counts only when the transport caller is an
/// authenticated manager; from anyone else it is ignored.
pub fn origin<T>(request: &Request<T>) -> Origin {
    let Some(caller) = request.extensions().get::<Caller>() else {
        return Origin::default();
    };
    let from_manager = caller
        .identity
        .as_ref()
        .is_some_and(|i| i.role == Role::Manager);
    if from_manager && header(request, FORWARDED_BY).is_some() {
        return Origin {
            node_id: header(request, FORWARDED_NODE),
            role: header(request, FORWARDED_ROLE).and_then(|r| r.parse().ok()),
            ip: header(request, FORWARDED_ADDR).and_then(|a| a.parse().ok()),
            forwarded: true,
        };
    }
    Origin {
        node_id: caller.identity.as_ref().map(|i| i.node_id.clone()),
        role: caller.identity.as_ref().map(|i| i.role),
        ip: Some(caller.addr.ip()),
        forwarded: false,
    }
}

/// `message` wrapped for the leader, carrying `incoming`'s origin; `me` is this manager's id.
pub fn forwarded<T, U>(incoming: &Request<T>, message: U, me: &str) -> Request<U> {
    let origin = origin(incoming);
    let mut request = Request::new(message);
    let metadata = request.metadata_mut();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = MetadataValue::try_from(value) {
            metadata.insert(name, value);
        }
    };
    put(FORWARDED_BY, me);
    if let Some(node) = &origin.node_id {
        put(FORWARDED_NODE, node);
    }
    if let Some(role) = origin.role {
        put(FORWARDED_ROLE, role.as_str());
    }
    if let Some(ip) = origin.ip {
        put(FORWARDED_ADDR, &ip.to_string());
    }
    request
}
