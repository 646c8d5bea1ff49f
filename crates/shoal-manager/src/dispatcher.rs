//! Node sessions (`shoal.v1.Dispatcher`): every node heartbeats a manager; the leader records
//! it Ready (with the address the heartbeat came from) and marks it Down once it misses three
//! periods, and tells it the role the swarm holds for it (a node whose certificate says
//! otherwise renews and changes role). Followers forward heartbeats, with the node's identity,
//! to the leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_api::object::Object;
use shoal_api::v1::dispatcher_client::DispatcherClient;
use shoal_api::v1::dispatcher_server::{Dispatcher, DispatcherServer};
use shoal_api::v1::*;
use shoal_store::View;
use tonic::{Request, Response, Status};

use crate::bootstrap::update;
use crate::control::ManagerSlot;
use crate::{Manager, forward, from_leader, now_timestamp};

/// Heartbeat period when the cluster names none.
pub const DEFAULT_HEARTBEAT_PERIOD: Duration = Duration::from_secs(5);
/// A node is Down after this many periods without a heartbeat (swarm's grace multiplier).
pub const GRACE_PERIODS: u32 = 3;

/// When the leader last heard from each node. In memory only: a new leader starts everyone's
/// clock at its election, so nobody is marked Down before having had a chance to reconnect.
#[derive(Default)]
pub(crate) struct Liveness {
    seen: Mutex<HashMap<String, Instant>>,
    leading_since: Mutex<Option<Instant>>,
}

impl Liveness {
    fn seen(&self, node_id: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node_id.to_owned(), Instant::now());
    }
}

pub fn heartbeat_period(view: &View) -> Duration {
    view.cluster()
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.dispatcher.as_ref())
        .map(|d| d.heartbeat_period_ms)
        .filter(|ms| *ms > 0)
        .map_or(DEFAULT_HEARTBEAT_PERIOD, Duration::from_millis)
}

fn manager_addresses(view: &View) -> Vec<String> {
    view.iter::<Node>()
        .filter_map(|n| n.manager_status.as_ref())
        .map(|m| m.addr.clone())
        .filter(|a| !a.is_empty())
        .collect()
}

fn with_state(mut node: Node, state: NodeState, message: &str, addr: Option<&str>) -> Node {
    let status = node.status.get_or_insert_with(Default::default);
    status.state = state as i32;
    status.message = message.to_owned();
    if let Some(addr) = addr {
        status.addr = addr.to_owned();
    }
    let version = node.version();
    let meta = node.meta_mut();
    meta.version = version;
    meta.updated_at = Some(now_timestamp());
    node
}

/// Marks nodes Down once they miss their heartbeats; acts only while this manager leads.
/// Runs until the manager's log shuts down.
pub async fn run_liveness(manager: Arc<Manager>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if manager.log().status().is_leader {
            check_liveness(&manager).await;
        } else {
            *manager
                .liveness
                .leading_since
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
        }
        if manager.log().is_shut_down() {
            return;
        }
    }
}

async fn check_liveness(manager: &Manager) {
    let now = Instant::now();
    let since = *manager
        .liveness
        .leading_since
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert(now);
    let view = manager.store().view();
    let ttl = heartbeat_period(&view) * GRACE_PERIODS;
    let seen = manager
        .liveness
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let actions: Vec<StoreAction> = view
        .iter::<Node>()
        .filter(|n| n.status.as_ref().map_or(0, |s| s.state) != NodeState::Down as i32)
        .filter(|n| now.duration_since(seen.get(&n.id).copied().unwrap_or(since).max(since)) > ttl)
        .map(|n| {
            tracing::info!(node_id = %n.id, "node missed its heartbeats: marking it down");
            update(with_state(
                n.clone(),
                NodeState::Down,
                "heartbeat failure",
                None,
            ))
        })
        .collect();
    if !actions.is_empty()
        && let Err(error) = manager.commit(Transaction { actions }).await
    {
        tracing::debug!(%error, "could not record nodes down; will retry");
    }
}

pub struct DispatcherService {
    slot: ManagerSlot,
}

impl DispatcherService {
    pub fn new(slot: ManagerSlot) -> Self {
        DispatcherService { slot }
    }

    pub fn into_server(self) -> DispatcherServer<DispatcherService> {
        DispatcherServer::new(self)
    }
}

#[tonic::async_trait]
impl Dispatcher for DispatcherService {
    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let manager = self
            .slot
            .get()
            .ok_or_else(|| Status::unavailable("this node is not a swarm manager"))?;
        if let Some(channel) = manager.leader_channel(&request)? {
            let forwarded = forward::forwarded(&request, HeartbeatRequest {}, manager.node_id());
            return DispatcherClient::new(channel)
                .heartbeat(forwarded)
                .await
                .map_err(from_leader);
        }
        let origin = forward::origin(&request);
        let node_id = origin
            .node_id
            .ok_or_else(|| Status::unauthenticated("a heartbeat needs a node certificate"))?;
        let view = manager.store().view();
        let node = view
            .get::<Node>(&node_id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("node {node_id} is not in the swarm")))?;
        manager.liveness.seen(&node_id);
        let role = node.role;
        let addr = origin.ip.map(|ip| ip.to_string());
        let status = node.status.clone().unwrap_or_default();
        let stale = status.state != NodeState::Ready as i32
            || addr.as_deref().is_some_and(|a| a != status.addr);
        if stale {
            manager
                .commit(Transaction {
                    actions: vec![update(with_state(
                        node,
                        NodeState::Ready,
                        "",
                        addr.as_deref(),
                    ))],
                })
                .await?;
        }
        Ok(Response::new(HeartbeatResponse {
            period_ms: heartbeat_period(&view).as_millis() as u64,
            managers: manager_addresses(&view),
            role: Some(role),
        }))
    }
}
