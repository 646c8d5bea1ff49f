//! Shared fixtures: a toy state machine (an append-only list) and cluster helpers.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shoal_raft::{LocalNetwork, PeerNetwork, RaftConfig, ReplicatedLog, StateMachine};

/// An append-only list of `(index, proposal)`. `apply` answers with the item's position, so every
/// proposer gets a distinct answer.
#[derive(Default)]
pub struct ListSm {
    items: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl ListSm {
    pub fn items(&self) -> Vec<(u64, Vec<u8>)> {
        self.items.lock().clone()
    }
    pub fn len(&self) -> usize {
        self.items.lock().len()
    }
    pub fn proposals(&self) -> Vec<Vec<u8>> {
        self.items.lock().iter().map(|(_, p)| p.clone()).collect()
    }
}

impl StateMachine for ListSm {
    fn apply(&self, index: u64, proposal: &[u8]) -> Vec<u8> {
        let mut items = self.items.lock();
        items.push((index, proposal.to_vec()));
        ((items.len() - 1) as u64).to_le_bytes().to_vec()
    }

    fn snapshot(&self) -> Vec<u8> {
        let items = self.items.lock();
        let mut out = Vec::new();
        for (index, p) in items.iter() {
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    fn restore(&self, _index: u64, mut data: &[u8]) -> Result<(), String> {
        let mut items = Vec::new();
        while !data.is_empty() {
            if data.len() < 12 {
                return Err("truncated snapshot".into());
            }
            let index = u64::from_le_bytes(data[..8].try_into().unwrap());
            let len = u32::from_le_bytes(data[8..12].try_into().unwrap()) as usize;
            if data.len() < 12 + len {
                return Err("truncated snapshot".into());
            }
            items.push((index, data[12..12 + len].to_vec()));
            data = &data[12 + len..];
        }
        *self.items.lock() = items;
        Ok(())
    }
}

pub fn reply_pos(reply: &[u8]) -> u64 {
    u64::from_le_bytes(reply.try_into().expect("8-byte reply"))
}

pub struct Node {
    pub log: ReplicatedLog,
    pub sm: Arc<ListSm>,
}

pub async fn open(config: RaftConfig, net: Arc<dyn PeerNetwork>) -> Node {
    let sm = Arc::new(ListSm::default());
    let log = ReplicatedLog::open(config, sm.clone(), net)
        .await
        .expect("open replicated log");
    Node { log, sm }
}

pub async fn open_local(config: RaftConfig, net: &LocalNetwork) -> Node {
    let id = config.node_id;
    let node = open(config, net.for_node(id)).await;
    net.register(&node.log);
    node
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub fn config(id: u64, dir: &Path) -> RaftConfig {
    init_tracing();
    RaftConfig::new(id, dir.join(format!("node{id}")))
}

/// Polls `f` until it holds or `timeout` passes.
pub async fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
