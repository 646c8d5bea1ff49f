//! Log compaction in process: the policy changes while nodes run, every node snapshots and purges
//! its own log, a learner that joins after the purge is caught up by snapshot before
//! `add_learner` returns, and a slow snapshot build does not hold up applying.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ListSm, Node, config, open_local, wait_until};
use shoal_raft::{
    CompactionPolicy, LocalNetwork, RaftConfig, RaftStatus, ReplicatedLog, SnapshotWriter,
    StateMachine,
};

const T: Duration = Duration::from_secs(20);

async fn form(net: &LocalNetwork, cfg: impl Fn(u64) -> RaftConfig) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(open_local(cfg(id), net).await);
    }
    nodes[0].log.initialize_single("n1".into()).await.unwrap();
    wait_until(T, "node 1 leads", || nodes[0].log.is_leader()).await;
    for id in [2, 3] {
        nodes[0]
            .log
            .add_learner(id, format!("n{id}"), true)
            .await
            .unwrap();
    }
    nodes[0]
        .log
        .change_voters(BTreeSet::from([1, 2, 3]))
        .await
        .unwrap();
    nodes
}

async fn write(node: &Node, prefix: &str, n: usize) {
    for i in 0..n {
        node.log
            .propose(format!("{prefix}-{i}").into_bytes())
            .await
            .unwrap();
    }
}

fn compacted(status: &RaftStatus, keep: u64) -> bool {
    match (status.snapshot_index, status.purged_index) {
        (Some(snapshot), Some(purged)) => purged + keep == snapshot,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_while_running_and_a_late_learner_gets_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let cfg = |id| {
        let mut c = config(id, dir.path());
        // One proposal per entry, so entry counts are predictable.
        c.group_commit = false;
        c
    };
    let nodes = form(&net, cfg).await;
    write(&nodes[0], "a", 200).await;
    for n in &nodes {
        let status = n.log.status();
        assert_eq!(
            (status.snapshot_index, status.purged_index),
            (None, None),
            "the default policy (every 10,000 entries) took a snapshot early: {status:?}"
        );
        assert_eq!(n.log.compaction().snapshot_interval, 10_000);
    }

    let policy = CompactionPolicy {
        snapshot_interval: 50,
        keep_after_snapshot: 20,
    };
    for n in &nodes {
        n.log.set_compaction(policy).unwrap();
    }
    // Every node compacts its own log as soon as the policy changes, without a new entry.
    for n in &nodes {
        wait_until(T, "a snapshot and a purge keeping 20 entries", || {
            compacted(&n.log.status(), 20)
        })
        .await;
        let status = n.log.status();
        assert!(status.snapshot_index.unwrap() >= 200, "{status:?}");
        let stats = status.last_snapshot.expect("snapshot stats");
        assert_eq!(Some(stats.index), status.snapshot_index);
        assert!(stats.bytes > 200 * 8, "{stats:?}");
        assert!(stats.build.is_some(), "built here: {stats:?}");
    }

    // Later snapshots follow the new interval.
    let first = nodes[0].log.status().snapshot_index.unwrap();
    write(&nodes[0], "b", 120).await;
    wait_until(T, "a later snapshot", || {
        nodes[0]
            .log
            .status()
            .snapshot_index
            .is_some_and(|s| s >= first + 100)
    })
    .await;

    // A smaller tail purges more without waiting for the next snapshot.
    for n in &nodes {
        n.log
            .set_compaction(CompactionPolicy {
                keep_after_snapshot: 5,
                ..policy
            })
            .unwrap();
    }
    for n in &nodes {
        wait_until(T, "a purge keeping 5 entries", || {
            compacted(&n.log.status(), 5)
        })
        .await;
    }

    // The log a new learner would need is gone: it is sent the snapshot, and `add_learner`
    // returns only once it has caught up.
    let learner = open_local(cfg(4), &net).await;
    learner.log.set_compaction(policy).unwrap();
    let before = nodes[0].log.status().last_log_index.unwrap();
    nodes[0]
        .log
        .add_learner(4, "n4".into(), true)
        .await
        .unwrap();
    let status = learner.log.status();
    assert!(
        status.last_log_index.is_some_and(|l| l > before),
        "add_learner returned before the learner had the log up to its addition \
         ({before} and after): {status:?}"
    );
    let stats = status
        .last_snapshot
        .expect("the learner installed a snapshot");
    assert_eq!(stats.build, None, "installed, not built: {stats:?}");
    let expected = nodes[0].sm.items();
    wait_until(T, "learner holds everything", || {
        learner.sm.items() == expected
    })
    .await;

    assert!(
        nodes[0]
            .log
            .set_compaction(CompactionPolicy {
                snapshot_interval: 0,
                keep_after_snapshot: 5,
            })
            .is_err()
    );
    assert_eq!(nodes[0].log.compaction().keep_after_snapshot, 5);
    for n in nodes.iter().chain([&learner]) {
        n.log.shutdown().await;
    }
}

/// A state machine whose snapshots take `delay` to serialize.
struct SlowSnapshots {
    inner: Arc<ListSm>,
    delay: Duration,
}

impl StateMachine for SlowSnapshots {
    fn apply(&self, index: u64, proposal: &[u8]) -> Vec<u8> {
        self.inner.apply(index, proposal)
    }
    fn snapshot(&self) -> Vec<u8> {
        self.inner.snapshot()
    }
    fn begin_snapshot(&self) -> SnapshotWriter {
        let data = self.inner.snapshot();
        let delay = self.delay;
        Box::new(move || {
            std::thread::sleep(delay);
            data
        })
    }
    fn restore(&self, index: u64, data: &[u8]) -> Result<(), String> {
        self.inner.restore(index, data)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_snapshot_build_does_not_hold_up_applying() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let mut cfg = config(1, dir.path());
    cfg.group_commit = false;
    cfg.snapshot_interval = 20;
    let sm = Arc::new(ListSm::default());
    let delay = Duration::from_secs(2);
    let log = ReplicatedLog::open(
        cfg,
        Arc::new(SlowSnapshots {
            inner: sm.clone(),
            delay,
        }),
        net.for_node(1),
    )
    .await
    .unwrap();
    net.register(&log);
    log.initialize_single("n1".into()).await.unwrap();
    wait_until(T, "leadership", || log.is_leader()).await;

    // Crosses the interval: a build starts and takes `delay`; writes go on meanwhile.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..60 {
        let t = Instant::now();
        log.propose(format!("w-{i}").into_bytes()).await.unwrap();
        slowest = slowest.max(t.elapsed());
    }
    let writing = started.elapsed();
    assert!(
        writing < delay,
        "60 writes took {writing:?} while a snapshot was being built"
    );
    assert!(slowest < delay / 4, "slowest write {slowest:?}");
    wait_until(T, "the slow snapshot lands", || {
        log.status().snapshot_index.is_some()
    })
    .await;
    let stats = log.status().last_snapshot.unwrap();
    assert!(stats.build.unwrap() >= delay, "{stats:?}");
    assert_eq!(sm.len(), 60);
    log.shutdown().await;
}
