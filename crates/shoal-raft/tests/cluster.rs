//! Three nodes in one process over `LocalNetwork`: membership, failover, catch-up by log and by
//! (chunked) snapshot, and AppendEntries kept under the message limit.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Node, config, open_local, wait_until};
use shoal_raft::{LocalNetwork, ProposeError, RaftConfig};

const T: Duration = Duration::from_secs(20);

/// Starts nodes 1..=3 with node 1 bootstrapping, 2 and 3 joining as learners then voters.
async fn three_nodes(net: &LocalNetwork, cfg: impl Fn(u64) -> RaftConfig) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(open_local(cfg(id), net).await);
    }
    nodes[0].log.initialize_single("n1".into()).await.unwrap();
    wait_until(T, "node 1 leads", || nodes[0].log.is_leader()).await;
    nodes[0]
        .log
        .add_learner(2, "n2".into(), true)
        .await
        .unwrap();
    nodes[0]
        .log
        .add_learner(3, "n3".into(), true)
        .await
        .unwrap();
    let status = nodes[0].log.status();
    assert_eq!(status.learners, vec![2, 3]);
    nodes[0]
        .log
        .change_voters(BTreeSet::from([1, 2, 3]))
        .await
        .unwrap();
    let status = nodes[0].log.status();
    assert_eq!(status.voters, vec![1, 2, 3]);
    assert!(status.learners.is_empty());
    assert_eq!(status.members.get(&2).map(String::as_str), Some("n2"));
    nodes
}

async fn write(node: &Node, prefix: &str, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let log = node.log.clone();
            let p = format!("{prefix}-{i}").into_bytes();
            tokio::spawn(async move { log.propose(p).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("propose");
    }
}

fn leader_of(nodes: &[&Node]) -> Option<usize> {
    nodes.iter().position(|n| n.log.is_leader())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let mut nodes = three_nodes(&net, |id| config(id, dir.path())).await;

    write(&nodes[0], "first", 200).await;
    let expected = nodes[0].sm.items();
    wait_until(T, "followers applied", || {
        nodes.iter().all(|n| n.sm.items() == expected)
    })
    .await;

    // A follower refuses writes and names the leader.
    match nodes[1].log.propose(b"nope".to_vec()).await {
        Err(ProposeError::NotLeader {
            leader_id: Some(1),
            leader_addr: Some(addr),
        }) => assert_eq!(addr, "n1"),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    assert!(matches!(
        nodes[1].log.ensure_linearizable().await,
        Err(ProposeError::NotLeader { .. })
    ));
    nodes[0].log.ensure_linearizable().await.unwrap();

    // Kill the leader.
    let mut watch = nodes[1].log.leader_watch();
    let old = nodes.remove(0);
    let killed = Instant::now();
    old.log.shutdown().await;
    net.unregister(1);
    let survivors: Vec<&Node> = nodes.iter().collect();
    wait_until(Duration::from_secs(3), "a new leader", || {
        leader_of(&survivors).is_some()
    })
    .await;
    let elapsed = killed.elapsed();
    println!("new leader elected {elapsed:?} after the leader was stopped");
    assert!(elapsed < Duration::from_secs(3));
    let new_leader = leader_of(&survivors).unwrap();
    let new_id = survivors[new_leader].log.id();
    watch
        .wait_for(|l| *l == Some(new_id))
        .await
        .expect("leader watch follows the election");

    // Writes continue with two of three voters.
    write(survivors[new_leader], "second", 100).await;
    let expected = survivors[new_leader].sm.items();
    assert_eq!(expected.len(), 300);

    // The old leader restarts from its disk and catches up.
    let restarted = open_local(config(1, dir.path()), &net).await;
    wait_until(T, "restarted node caught up", || {
        restarted.sm.items() == expected
    })
    .await;
    assert!(!restarted.log.is_leader());
    assert_eq!(restarted.log.status().leader_id, Some(new_id));
    for n in nodes.iter().chain([&restarted]) {
        n.log.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_learner_catches_up_by_chunked_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    // A 4 MiB message limit (gRPC's default) while the state is ~6 MB: the snapshot must be
    // chunked to get through.
    let net = LocalNetwork::new().with_max_message_bytes(4 * 1024 * 1024);
    let cfg = |id| {
        let mut c = config(id, dir.path());
        c.snapshot_interval = 50;
        c.logs_to_keep_after_snapshot = 5;
        c
    };
    let nodes = three_nodes(&net, cfg).await;
    let big = vec![7u8; 20 * 1024];
    for round in 0..300 {
        let mut p = big.clone();
        p.extend_from_slice(format!("{round}").as_bytes());
        nodes[0].log.propose(p).await.unwrap();
    }
    wait_until(T, "leader compacted its log", || {
        nodes[0].log.status().purged_index.is_some_and(|p| p > 100)
    })
    .await;

    let learner = open_local(cfg(4), &net).await;
    nodes[0]
        .log
        .add_learner(4, "n4".into(), true)
        .await
        .unwrap();
    let expected = nodes[0].sm.items();
    wait_until(T, "learner caught up", || learner.sm.items() == expected).await;
    let status = learner.log.status();
    assert!(
        status.snapshot_index.is_some(),
        "learner installed a snapshot: {status:?}"
    );
    assert!(expected.iter().map(|(_, p)| p.len()).sum::<usize>() > 6_000_000);

    // And it keeps following.
    nodes[0].log.propose(b"after-join".to_vec()).await.unwrap();
    let expected = nodes[0].sm.items();
    wait_until(T, "learner follows", || learner.sm.items() == expected).await;
    for n in nodes.iter().chain([&learner]) {
        n.log.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_entries_stay_under_message_limit() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new().with_max_message_bytes(4 * 1024 * 1024);
    let nodes = three_nodes(&net, |id| {
        let mut c = config(id, dir.path());
        c.group_commit = false;
        c
    })
    .await;
    // Node 3 falls behind by 12 MB of ~1 MiB entries, then must catch up through the 4 MiB limit.
    net.isolate(3);
    for i in 0..12u8 {
        nodes[0].log.propose(vec![i; 1024 * 1024]).await.unwrap();
    }
    net.heal(3);
    let expected = nodes[0].sm.items();
    wait_until(T, "isolated follower caught up", || {
        nodes[2].sm.items() == expected
    })
    .await;
    for n in &nodes {
        n.log.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let nodes = three_nodes(&net, |id| config(id, dir.path())).await;
    nodes[0].log.remove_node(3).await.unwrap();
    let status = nodes[0].log.status();
    assert_eq!(status.voters, vec![1, 2]);
    assert!(!status.members.contains_key(&3));
    write(&nodes[0], "x", 10).await;
    for n in &nodes {
        n.log.shutdown().await;
    }
}

/// A leader cut off from both followers stays leader in its own eyes: its proposals, read
/// barriers and voter changes fail after `commit_timeout` rather than wait forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_quorum_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let limit = Duration::from_millis(1500);
    let nodes = three_nodes(&net, |id| {
        let mut c = config(id, dir.path());
        c.commit_timeout = limit;
        c
    })
    .await;
    write(&nodes[0], "before", 10).await;
    net.isolate(1);

    let started = Instant::now();
    let answer = nodes[0].log.propose(b"alone".to_vec()).await;
    assert!(
        matches!(
            answer,
            Err(ProposeError::Timeout(_)) | Err(ProposeError::NotLeader { .. })
        ),
        "{answer:?}"
    );
    let barrier = nodes[0].log.ensure_linearizable().await;
    assert!(barrier.is_err(), "a read barrier without quorum succeeded");
    let change = nodes[0].log.change_voters(BTreeSet::from([1, 2])).await;
    assert!(change.is_err(), "a voter change without quorum succeeded");
    // Each of the three calls is bounded by the limit (plus scheduling slack).
    assert!(started.elapsed() < limit * 3 + Duration::from_secs(2));

    net.heal(1);
    for n in &nodes {
        n.log.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_sees_a_stopped_voter_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let mut nodes = three_nodes(&net, |id| config(id, dir.path())).await;
    let limit = nodes[0].log.config().unreachable_after();
    wait_until(T, "every voter reachable", || {
        let status = nodes[0].log.status();
        status.voter_reachable.len() == 3 && status.voter_reachable.values().all(|r| *r)
    })
    .await;
    assert!(nodes[1].log.status().voter_reachable.is_empty());
    assert!(nodes[0].log.status().last_contact[&3] < limit);

    // Stop voter 3: the leader reports it unreachable within the limit (plus a margin).
    let stopped = nodes.remove(2);
    let killed = Instant::now();
    stopped.log.shutdown().await;
    net.unregister(3);
    wait_until(
        limit + Duration::from_secs(1),
        "voter 3 unreachable",
        || nodes[0].log.status().voter_reachable.get(&3) == Some(&false),
    )
    .await;
    let elapsed = killed.elapsed();
    println!("leader saw voter 3 unreachable {elapsed:?} after it stopped");
    assert!(elapsed >= limit / 2, "reported unreachable too early");
    let status = nodes[0].log.status();
    assert_eq!(status.voter_reachable.get(&2), Some(&true));
    assert_eq!(status.voter_reachable.get(&1), Some(&true));

    // Restarted from its disk, it is reachable again.
    let restarted = open_local(config(3, dir.path()), &net).await;
    wait_until(T, "voter 3 reachable again", || {
        nodes[0].log.status().voter_reachable.get(&3) == Some(&true)
    })
    .await;
    for n in nodes.iter().chain([&restarted]) {
        n.log.shutdown().await;
    }
}

/// Two of three voters are lost for good: the survivor is rewritten offline into a one-voter
/// cluster that keeps every committed proposal (from its snapshot and from its log tail), elects
/// itself, takes writes, and can grow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_keeps_every_committed_proposal() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let cfg = |id| {
        let mut c = config(id, dir.path());
        c.snapshot_interval = 50;
        c.logs_to_keep_after_snapshot = 10;
        c
    };
    let nodes = three_nodes(&net, cfg).await;
    // One proposal per entry, past a snapshot, so the rebuild needs both the snapshot and the
    // log tail.
    for i in 0..130 {
        nodes[0]
            .log
            .propose(format!("before-{i}").into_bytes())
            .await
            .unwrap();
    }
    let expected = nodes[0].sm.proposals();
    wait_until(T, "node 2 applied everything and took a snapshot", || {
        nodes[1].sm.proposals() == expected && nodes[1].log.status().snapshot_index.is_some()
    })
    .await;
    for n in &nodes {
        n.log.shutdown().await;
    }
    for id in 1..=3 {
        net.unregister(id);
    }

    // Node 2 survives. Nothing of the lost nodes is needed.
    let forced = shoal_raft::force_new_cluster(
        &cfg(2),
        "n2-new".into(),
        std::sync::Arc::new(common::ListSm::default()),
    )
    .await
    .unwrap();
    assert_eq!(forced.dropped_members, vec![1, 3]);
    let survivor = open_local(cfg(2), &net).await;
    wait_until(T, "the survivor leads alone", || survivor.log.is_leader()).await;
    let status = survivor.log.status();
    assert_eq!(status.voters, vec![2]);
    assert_eq!(status.members.get(&2).map(String::as_str), Some("n2-new"));
    assert_eq!(survivor.sm.proposals(), expected);
    write(&survivor, "after", 20).await;
    assert_eq!(survivor.sm.len(), expected.len() + 20);

    // A fresh node can join the new cluster (ids are never reused: 4).
    let fresh = open_local(cfg(4), &net).await;
    survivor
        .log
        .add_learner(4, "n4".into(), true)
        .await
        .unwrap();
    survivor
        .log
        .change_voters(BTreeSet::from([2, 4]))
        .await
        .unwrap();
    let all = survivor.sm.proposals();
    wait_until(T, "the new node caught up", || fresh.sm.proposals() == all).await;

    // Restarting the survivor keeps the forced membership and everything after it.
    fresh.log.shutdown().await;
    survivor.log.shutdown().await;
    net.unregister(2);
    net.unregister(4);
    let again = open_local(cfg(2), &net).await;
    assert_eq!(again.log.status().voters, vec![2, 4]);
    wait_until(T, "restart re-applied", || again.sm.proposals() == all).await;
    again.log.shutdown().await;
}

/// A node that never held committed state has nothing to keep: refused, files untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_refuses_an_empty_node() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let node = open_local(config(1, dir.path()), &net).await;
    node.log.shutdown().await;
    let err = shoal_raft::force_new_cluster(
        &config(1, dir.path()),
        "n1".into(),
        std::sync::Arc::new(common::ListSm::default()),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no committed state"), "{err}");
    assert!(dir.path().join("node1").join("raft.redb").exists());
    assert!(!dir.path().join("node1.forcing").exists());
}
