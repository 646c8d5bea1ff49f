//! Encryption at rest: what a node stores under a data key is unreadable on disk, comes back
//! with the key, and is refused — without being misread — with another key, without a key, out
//! of place, or in an older format.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ListSm, config, open_local, wait_until};
use redb::{ReadableDatabase as _, ReadableTable as _};
use shoal_raft::{DATA_KEY_LEN, LocalNetwork, RaftConfig, RaftError, ReplicatedLog, StorageCipher};

const KEY_1: [u8; DATA_KEY_LEN] = [0x11; DATA_KEY_LEN];
const KEY_2: [u8; DATA_KEY_LEN] = [0x22; DATA_KEY_LEN];
const MARKER: &[u8] = b"MARKER-7d3f";

const LOG: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("log");
const META: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");

async fn start(cfg: RaftConfig, net: &LocalNetwork) -> common::Node {
    let node = open_local(cfg, net).await;
    node.log
        .initialize_single(format!("node{}", node.log.id()))
        .await
        .expect("initialize");
    node.log.wait_for_leader(Duration::from_secs(5)).await;
    wait_until(Duration::from_secs(5), "leadership", || {
        node.log.is_leader()
    })
    .await;
    node
}

async fn reopen(cfg: RaftConfig) -> Result<ReplicatedLog, RaftError> {
    let net = LocalNetwork::new();
    let sm = Arc::new(ListSm::default());
    ReplicatedLog::open(cfg, sm, net.for_node(1)).await
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
    ["raft.redb", "snapshots.redb"]
        .iter()
        .any(|f| contains(&std::fs::read(dir.join(f)).unwrap(), needle))
}

fn sealed(cfg: &RaftConfig, cipher: StorageCipher) -> RaftConfig {
    let mut cfg = cfg.clone();
    cfg.cipher = Some(cipher);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_storage_hides_the_data_and_needs_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let base = config(1, dir.path());
    let cipher = StorageCipher::with_key(1, &KEY_1);
    let node = start(sealed(&base, cipher.clone()), &net).await;

    let mut written = Vec::new();
    for i in 0..60 {
        let p = [MARKER, format!("-{i}").as_bytes()].concat();
        node.log.propose(p.clone()).await.unwrap();
        written.push(p);
    }
    // A snapshot covers the first 60; the rest stays in the log only.
    node.log.trigger_snapshot().await.unwrap();
    wait_until(Duration::from_secs(10), "the snapshot", || {
        node.log.status().snapshot_index.is_some()
    })
    .await;
    // A rotation while running: later records are sealed under key 2.
    cipher.add_key(2, &KEY_2);
    for i in 60..80 {
        let p = [MARKER, format!("-{i}").as_bytes()].concat();
        node.log.propose(p.clone()).await.unwrap();
        written.push(p);
    }
    node.log.shutdown().await;

    assert!(
        !files_contain(&base.data_dir, MARKER),
        "plaintext found in the raft files"
    );

    // With both keys, everything comes back.
    let two_keys = StorageCipher::with_key(1, &KEY_1);
    two_keys.add_key(2, &KEY_2);
    let node = open_local(sealed(&base, two_keys), &LocalNetwork::new()).await;
    wait_until(Duration::from_secs(10), "replay", || {
        node.sm.proposals() == written
    })
    .await;
    node.log.shutdown().await;

    // Without the older key, the file says which key it needs.
    let err = reopen(sealed(&base, StorageCipher::with_key(2, &KEY_2)))
        .await
        .unwrap_err();
    assert!(matches!(err, RaftError::Encryption { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("data key 1, which this node does not have"),
        "{err}"
    );
    // Same key id, other key material.
    let err = reopen(sealed(&base, StorageCipher::with_key(1, &KEY_2)))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("another data key than this node's"),
        "{err}"
    );
    // No key at all.
    let err = reopen(base.clone()).await.unwrap_err();
    assert!(err.to_string().contains("it is encrypted"), "{err}");
    assert!(err.to_string().contains("raft.redb"), "{err}");
    // The refusals changed nothing: the right keys still open it.
    let two_keys = StorageCipher::with_key(1, &KEY_1);
    two_keys.add_key(2, &KEY_2);
    let log = reopen(sealed(&base, two_keys)).await.unwrap();
    log.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_storage_is_not_opened_as_sealed_and_older_formats_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let base = config(1, dir.path());
    let node = start(base.clone(), &net).await;
    node.log.propose(MARKER.to_vec()).await.unwrap();
    node.log.shutdown().await;
    // In clear, the value is on disk: the sealed case above is a real difference.
    assert!(files_contain(&base.data_dir, MARKER));

    let err = reopen(sealed(&base, StorageCipher::with_key(1, &KEY_1)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("it is not encrypted"), "{err}");

    // A file of format 1 (before encryption at rest) is refused, not misread.
    {
        let db = redb::Database::create(base.data_dir.join("raft.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("format", [1u8].as_slice())
            .unwrap();
        txn.commit().unwrap();
        let _ = db.begin_read();
    }
    let err = reopen(base.clone()).await.unwrap_err();
    assert!(
        matches!(
            err,
            RaftError::UnsupportedFormat {
                found: 1,
                supported: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_moved_to_another_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let base = config(1, dir.path());
    let cfg = sealed(&base, StorageCipher::with_key(1, &KEY_1));
    let node = start(cfg.clone(), &net).await;
    for i in 0..5 {
        node.log.propose(vec![i; 10]).await.unwrap();
    }
    let last = node.log.status().last_log_index.unwrap();
    node.log.shutdown().await;

    // Copy the entry before the last one over the last one: both are validly sealed, but the
    // moved one is bound to its own index.
    {
        let db = redb::Database::create(base.data_dir.join("raft.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            let moved = log.get(last - 1).unwrap().unwrap().value().to_vec();
            log.insert(last, moved.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        let _ = db.begin_read();
    }
    let err = reopen(cfg).await.unwrap_err();
    assert!(matches!(err, RaftError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("does not authenticate"), "{err}");
}
