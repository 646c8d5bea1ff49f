//! The three-node scenario over real gRPC on loopback (plain-text channels).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Node, config, open, wait_until};
use shoal_raft::{GrpcNetwork, PeerNetwork, RaftConfig, RaftGrpcService};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

const T: Duration = Duration::from_secs(20);

struct GrpcNode {
    node: Node,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

async fn start(cfg: RaftConfig, listener: TcpListener, net: &Arc<dyn PeerNetwork>) -> GrpcNode {
    let addr = listener.local_addr().unwrap();
    let node = open(cfg, net.clone()).await;
    let service = RaftGrpcService::new(node.log.clone()).into_server();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .expect("grpc server");
    });
    GrpcNode {
        node,
        addr,
        stop: Some(stop),
        server,
    }
}

impl GrpcNode {
    async fn kill(mut self) {
        self.node.log.shutdown().await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
    }
}

async fn bind(addr: &str) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("bind {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let net: Arc<dyn PeerNetwork> = Arc::new(GrpcNetwork::plaintext());
    let cfg = |id| {
        let mut c = config(id, dir.path());
        c.snapshot_interval = 100;
        c.logs_to_keep_after_snapshot = 10;
        c
    };
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(cfg(id), bind("127.0.0.1:0").await, &net).await);
    }
    let addr = |n: &GrpcNode| n.addr.to_string();

    nodes[0]
        .node
        .log
        .initialize_single(addr(&nodes[0]))
        .await
        .unwrap();
    wait_until(T, "node 1 leads", || nodes[0].node.log.is_leader()).await;
    for i in 1..3 {
        let (id, a) = (nodes[i].node.log.id(), addr(&nodes[i]));
        nodes[0].node.log.add_learner(id, a, true).await.unwrap();
    }
    nodes[0]
        .node
        .log
        .change_voters(BTreeSet::from([1, 2, 3]))
        .await
        .unwrap();

    let write = |log: shoal_raft::ReplicatedLog, prefix: &'static str, n: usize| async move {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.propose(format!("{prefix}-{i}").into_bytes()).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().expect("propose");
        }
    };
    write(nodes[0].node.log.clone(), "first", 300).await;
    let expected = nodes[0].node.sm.items();
    wait_until(T, "followers applied", || {
        nodes.iter().all(|n| n.node.sm.items() == expected)
    })
    .await;

    // Kill the leader (raft and its listener).
    let old = nodes.remove(0);
    let old_addr = old.addr;
    let killed = Instant::now();
    old.kill().await;
    wait_until(Duration::from_secs(3), "a new leader", || {
        nodes.iter().any(|n| n.node.log.is_leader())
    })
    .await;
    let elapsed = killed.elapsed();
    println!("grpc: new leader elected {elapsed:?} after the leader was stopped");
    assert!(elapsed < Duration::from_secs(3));
    let leader = nodes.iter().position(|n| n.node.log.is_leader()).unwrap();
    write(nodes[leader].node.log.clone(), "second", 300).await;
    let expected = nodes[leader].node.sm.items();
    assert_eq!(expected.len(), 600);

    // Restart the old leader on its old address; it catches up (by log or snapshot).
    let restarted = start(cfg(1), bind(&old_addr.to_string()).await, &net).await;
    wait_until(T, "restarted node caught up", || {
        restarted.node.sm.items() == expected
    })
    .await;
    nodes.push(restarted);
    for n in nodes {
        n.kill().await;
    }
}
