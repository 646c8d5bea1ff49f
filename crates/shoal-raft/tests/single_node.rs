//! One node: restart durability, snapshot + replay on restart, group commit, refusals.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ListSm, config, open_local, reply_pos, wait_until};
use shoal_raft::{LocalNetwork, ProposeError, RaftConfig, RaftError, ReplicatedLog};

async fn start(cfg: RaftConfig, net: &LocalNetwork) -> common::Node {
    let node = open_local(cfg, net).await;
    node.log
        .initialize_single(format!("node{}", node.log.id()))
        .await
        .expect("initialize");
    let leader = node.log.wait_for_leader(Duration::from_secs(5)).await;
    assert_eq!(leader, Some(node.log.id()));
    wait_until(Duration::from_secs(5), "leadership", || {
        node.log.is_leader()
    })
    .await;
    node
}

/// 1,000 writes from 10 concurrent writers; returns every acknowledged proposal.
async fn write_many(log: &ReplicatedLog, prefix: &str, n: usize) -> Vec<Vec<u8>> {
    let writers = 10;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..n / writers {
                let p = format!("{prefix}-{w}-{i}").into_bytes();
                log.propose(p.clone()).await.expect("propose");
                acked.push(p);
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("writer task"));
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let cfg = config(1, dir.path());
    let node = start(cfg.clone(), &net).await;

    let acked = write_many(&node.log, "a", 1000).await;
    let before = node.sm.items();
    assert_eq!(before.len(), 1000);
    for p in &acked {
        assert!(node.sm.proposals().contains(p));
    }
    node.log.shutdown().await;
    assert!(matches!(
        node.log.propose(b"late".to_vec()).await,
        Err(ProposeError::Shutdown)
    ));

    // Reopen on the same directory: the committed state is rebuilt before `open` returns.
    let node = open_local(cfg.clone(), &net).await;
    assert_eq!(node.sm.items(), before, "state after restart");
    node.log.initialize_single("node1".into()).await.unwrap(); // no-op now
    node.log.wait_for_leader(Duration::from_secs(5)).await;
    wait_until(Duration::from_secs(5), "leadership", || {
        node.log.is_leader()
    })
    .await;
    let more = write_many(&node.log, "b", 100).await;
    let after = node.sm.proposals();
    assert_eq!(after.len(), 1100);
    assert_eq!(&node.sm.items()[..1000], &before[..]);
    for p in acked.iter().chain(&more) {
        assert!(after.contains(p));
    }
    node.log.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_snapshot_and_purge_restores_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let mut cfg = config(1, dir.path());
    cfg.snapshot_interval = 100;
    cfg.logs_to_keep_after_snapshot = 10;
    cfg.group_commit = false;
    let node = start(cfg.clone(), &net).await;

    let acked = write_many(&node.log, "s", 1000).await;
    wait_until(Duration::from_secs(10), "a snapshot and a purge", || {
        let s = node.log.status();
        s.snapshot_index.is_some() && s.purged_index.is_some()
    })
    .await;
    let status = node.log.status();
    assert!(status.purged_index.unwrap() > 500, "{status:?}");
    // Entries after the snapshot must come from the log on restart.
    node.log.propose(b"tail-1".to_vec()).await.unwrap();
    node.log.propose(b"tail-2".to_vec()).await.unwrap();
    let before = node.sm.items();
    node.log.shutdown().await;

    let node = open_local(cfg, &net).await;
    assert_eq!(node.sm.items(), before, "state after restore + replay");
    let status = node.log.status();
    assert!(status.snapshot_index.is_some(), "{status:?}");
    node.log.wait_for_leader(Duration::from_secs(5)).await;
    wait_until(Duration::from_secs(5), "leadership", || {
        node.log.is_leader()
    })
    .await;
    node.log.propose(b"after".to_vec()).await.unwrap();
    let proposals = node.sm.proposals();
    for p in &acked {
        assert!(proposals.contains(p));
    }
    assert_eq!(proposals.last().unwrap(), b"after");
    node.log.shutdown().await;
}

/// Fires `n` proposals at once; returns (log entries used, elapsed).
async fn burst(node: &common::Node, n: usize) -> (u64, Duration) {
    let first = node.log.status().last_log_index.unwrap_or(0);
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let log = node.log.clone();
            tokio::spawn(async move {
                let p = format!("burst-{i}").into_bytes();
                let reply = log.propose(p.clone()).await.expect("propose");
                (p, reply_pos(&reply))
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    // Every proposer got its own answer: the position of its own proposal.
    let items = node.sm.items();
    let mut positions: Vec<u64> = answers.iter().map(|(_, pos)| *pos).collect();
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), n, "answers are distinct");
    for (p, pos) in &answers {
        assert_eq!(&items[*pos as usize].1, p);
    }
    let last = node.log.status().last_log_index.unwrap();
    (last - first, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_entries() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();

    let on = start(config(1, dir.path()), &net).await;
    let (entries, elapsed_on) = burst(&on, 500).await;
    println!("group commit on: 500 proposals in {entries} entries, {elapsed_on:?}");
    assert!(
        entries < 100,
        "group commit used {entries} entries for 500 proposals"
    );
    let (_, t) = burst(&on, 2000).await;
    let rate_on = 2000.0 / t.as_secs_f64();
    on.log.shutdown().await;

    let mut cfg = config(2, dir.path());
    cfg.group_commit = false;
    let off = start(cfg, &net).await;
    let (entries, elapsed_off) = burst(&off, 500).await;
    println!("group commit off: 500 proposals in {entries} entries, {elapsed_off:?}");
    assert_eq!(entries, 500, "one entry per proposal without group commit");
    let (_, t) = burst(&off, 2000).await;
    let rate_off = 2000.0 / t.as_secs_f64();
    off.log.shutdown().await;
    println!(
        "single node, 2000 concurrent proposals: {rate_on:.0} writes/s with group commit, {rate_off:.0} writes/s without"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_write_latency() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    for group_commit in [true, false] {
        let mut cfg = config(if group_commit { 1 } else { 2 }, dir.path());
        cfg.group_commit = group_commit;
        let node = start(cfg, &net).await;
        let start = Instant::now();
        for i in 0..200 {
            node.log
                .propose(format!("seq-{i}").into_bytes())
                .await
                .unwrap();
        }
        let per = start.elapsed() / 200;
        println!("single writer, group_commit={group_commit}: {per:?} per write");
        node.log.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_proposal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let node = start(config(1, dir.path()), &net).await;
    let limit = node.log.config().max_proposal_bytes;
    let err = node.log.propose(vec![0; limit + 1]).await.unwrap_err();
    assert_eq!(
        err,
        ProposeError::TooLarge {
            size: limit + 1,
            limit
        }
    );
    assert!(err.to_string().starts_with("proposal of"), "{err}");
    // A proposal at the limit goes through.
    node.log.propose(vec![1; limit]).await.unwrap();
    node.log.ensure_linearizable().await.unwrap();
    node.log.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node1");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("raft.redb"), vec![0x5a; 64 * 1024]).unwrap();
    let net = LocalNetwork::new();
    let sm = Arc::new(ListSm::default());
    let err = ReplicatedLog::open(RaftConfig::new(1, &data), sm, net.for_node(1))
        .await
        .unwrap_err();
    println!("corrupt raft.redb: {err}");
    assert!(
        matches!(err, RaftError::Corrupt { .. } | RaftError::Open { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("raft.redb"), "{err}");

    // A corrupt snapshot file is refused as well, naming that file.
    let data = dir.path().join("node2");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("snapshots.redb"), b"not a database at all").unwrap();
    let sm = Arc::new(ListSm::default());
    let err = ReplicatedLog::open(RaftConfig::new(2, &data), sm, net.for_node(2))
        .await
        .unwrap_err();
    println!("corrupt snapshots.redb: {err}");
    assert!(err.to_string().contains("snapshots.redb"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let cfg = config(1, dir.path());
    let node = start(cfg.clone(), &net).await;
    node.log.propose(b"x".to_vec()).await.unwrap();
    node.log.shutdown().await;

    // Pretend a future version wrote the file.
    {
        use redb::ReadableDatabase as _;
        const META: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");
        let db = redb::Database::create(cfg.data_dir.join("raft.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("format", [9u8].as_slice())
            .unwrap();
        txn.commit().unwrap();
        let _ = db.begin_read();
    }
    let sm = Arc::new(ListSm::default());
    let err = ReplicatedLog::open(cfg, sm, net.for_node(1))
        .await
        .unwrap_err();
    println!("foreign format: {err}");
    assert!(
        matches!(err, RaftError::UnsupportedFormat { found: 9, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("raft.redb"), "{err}");
}
