//! Snapshots and log compaction with a state of more than 50 MB, on real network namespaces:
//! `swarm update` changes the snapshot policy of running managers, every manager compacts its
//! log, a fourth manager joins and is caught up by a snapshot streamed in chunks, becomes a voter
//! and holds every config byte for byte, and a manager killed -9 comes back from its snapshot and
//! log tail with the same state.
//!
//! A follower forwards control calls to the leader, so a manager's own store is read by making
//! it the leader: with the old leader gone and the two other old managers cut off from each
//! other, only that manager can gather a majority of the four voters.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shoal_api::v1::control_client::ControlClient;
use shoal_api::v1::{GetConfigRequest, ListConfigsRequest};
use shoal_testkit::CliOutput;
use shoal_testkit::cluster::{Cluster, Host, can_run};
use shoal_testkit::swarm::wait_for;

const PORT: u16 = 2377;
/// Configs of the largest size the control API accepts (1000 KiB): 52 of them are 53 MB.
const BIG_CONFIGS: usize = 52;
const CONFIG_BYTES: usize = 1000 * 1024;
const SNAPSHOT_INTERVAL: u64 = 25;
const KEEP: u64 = 10;
/// The state, and so every full snapshot, is at least this large.
const STATE_BYTES: u64 = 50_000_000;
/// Larger than any single message the transport accepts (16 MiB on the raft service).
const OVER_ANY_MESSAGE: u64 = 16 << 20;
/// A CLI call that takes longer is a hang.
const CALL_LIMIT: Duration = Duration::from_secs(60);

#[track_caller]
fn cli_within(host: &str, args: &[&str], stdin: &[u8], limit: Duration) -> CliOutput {
    shoal_testkit::swarm::cli_within(host, args, stdin, limit).0
}

#[track_caller]
fn create_config(host: &Host, name: &str, data: &[u8]) {
    let out = cli_within(
        &host.daemon.host(),
        &["config", "create", name, "-"],
        data,
        CALL_LIMIT,
    );
    assert_eq!(
        out.code, 0,
        "config create {name} on {}: {out:?}",
        host.name
    );
}

/// `CONFIG_BYTES` that differ for every `seed` and never repeat within a config.
fn noise(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..CONFIG_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn token(manager: &Host) -> String {
    manager
        .cli(&["swarm", "join-token", "-q", "manager"])
        .ok()
        .trim()
        .to_owned()
}

#[track_caller]
fn join(host: &Host, token: &str, via: &Host) -> Duration {
    let addr = host.addr(PORT);
    let started = Instant::now();
    let out = cli_within(
        &host.daemon.host(),
        &[
            "swarm",
            "join",
            "--token",
            token,
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
            &via.addr(PORT),
        ],
        b"",
        Duration::from_secs(150),
    );
    assert_eq!(out.code, 0, "{} joining: {out:?}", host.name);
    started.elapsed()
}

/// `m1` makes the swarm, `m2` and `m3` join it as managers.
fn form() -> Cluster {
    let mut cluster = Cluster::new();
    for name in ["m1", "m2", "m3"] {
        cluster.add_host(name, &[]);
    }
    let m1 = cluster.host("m1");
    let addr = m1.addr(PORT);
    m1.cli(&[
        "swarm",
        "init",
        "--advertise-addr",
        &addr,
        "--listen-addr",
        &addr,
    ])
    .ok();
    let token = token(m1);
    for name in ["m2", "m3"] {
        join(cluster.host(name), &token, cluster.host("m1"));
    }
    cluster
}

/// What a manager says of its raft log in `info --format json`.
#[derive(Clone, Copy, Debug)]
struct Raft {
    id: u64,
    term: u64,
    leader: u64,
    applied: u64,
    voters: u64,
    snapshot_index: u64,
    first_log_index: u64,
    snapshot_bytes: u64,
    snapshot_build_ms: u64,
    snapshot_interval: u64,
    keep: u64,
}

impl Raft {
    fn is_leader(&self) -> bool {
        self.leader != 0 && self.leader == self.id
    }
}

fn raft_of(host: &Host) -> Option<Raft> {
    let out = cli_within(
        &host.daemon.host(),
        &["info", "--format", "json"],
        b"",
        CALL_LIMIT,
    );
    if out.code != 0 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    let r = &v["Swarm"]["Raft"];
    let n = |key: &str| r[key].as_u64();
    Some(Raft {
        id: n("RaftID")?,
        term: n("Term")?,
        leader: n("LeaderRaftID")?,
        applied: n("LastApplied")?,
        voters: n("Voters")?,
        snapshot_index: n("SnapshotIndex")?,
        first_log_index: n("FirstLogIndex")?,
        snapshot_bytes: n("SnapshotBytes")?,
        snapshot_build_ms: n("SnapshotBuildMs")?,
        snapshot_interval: n("SnapshotInterval")?,
        keep: n("LogEntriesForSlowFollowers")?,
    })
}

#[track_caller]
fn raft(host: &Host) -> Raft {
    raft_of(host).unwrap_or_else(|| panic!("info on {}", host.name))
}

/// Name → SHA-256 of the data of every config, as the control API of `host` answers. Only
/// meaningful on the leader: a follower forwards the call.
fn configs_of(host: &Host) -> Result<BTreeMap<String, String>, String> {
    let socket = host.daemon.socket();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| e.to_string())?;
        let mut client = ControlClient::new(channel);
        // A list carries no data: each config's data comes from GetConfig.
        let list = client
            .list_configs(ListConfigsRequest::default())
            .await
            .map_err(|s| s.message().to_owned())?;
        let mut configs = BTreeMap::new();
        for listed in list.into_inner().configs {
            let config = client
                .get_config(GetConfigRequest {
                    config: listed.id.clone(),
                })
                .await
                .map_err(|s| s.message().to_owned())?
                .into_inner()
                .config
                .unwrap_or_default();
            let spec = config.spec.unwrap_or_default();
            configs.insert(
                spec.annotations.unwrap_or_default().name,
                sha256(&spec.data),
            );
        }
        Ok(configs)
    })
}

/// Reads `host`'s own store: it must lead before and after the read, in the same term.
#[track_caller]
fn own_configs(host: &Host) -> BTreeMap<String, String> {
    let before = raft(host);
    assert!(
        before.is_leader(),
        "{} does not lead: {before:?}",
        host.name
    );
    let configs = configs_of(host).unwrap_or_else(|e| panic!("config list on {}: {e}", host.name));
    let after = raft(host);
    assert!(
        after.is_leader() && after.term == before.term,
        "{} lost leadership during the read: {before:?} → {after:?}",
        host.name
    );
    configs
}

#[track_caller]
fn assert_same(what: &str, got: &BTreeMap<String, String>, want: &BTreeMap<String, String>) {
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let differ: Vec<&String> = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "{what}: missing {missing:?}, unexpected {extra:?}, different data {differ:?}"
    );
}

/// The last line of `host`'s daemon log containing `needle`.
fn log_line(host: &Host, needle: &str) -> Option<String> {
    host.daemon
        .log()
        .lines()
        .rfind(|l| l.contains(needle))
        .map(str::to_owned)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

#[test]
fn a_manager_joins_a_50_mb_state_by_streamed_snapshot_and_a_killed_one_comes_back() {
    if !can_run() {
        return;
    }
    let started = Instant::now();
    let mut cluster = form();
    let old = ["m1", "m2", "m3"];

    // The policy changes on running managers; asked of m2, a follower, which forwards it.
    let out = cluster.host("m2").cli(&[
        "swarm",
        "update",
        "--snapshot-interval",
        &SNAPSHOT_INTERVAL.to_string(),
        "--log-entries-for-slow-followers",
        &KEEP.to_string(),
    ]);
    out.ok();
    for name in old {
        let host = cluster.host(name);
        wait_for(
            Duration::from_secs(10),
            "the new policy on every manager",
            || raft_of(host).filter(|r| r.snapshot_interval == SNAPSHOT_INTERVAL && r.keep == KEEP),
        );
    }
    let refused = cluster
        .host("m1")
        .cli(&["swarm", "update", "--snapshot-interval", "0"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains("invalid count \"0\": must be at least 1"),
        "{refused:?}"
    );

    // More than 50 MB of configs.
    let mut expected = BTreeMap::new();
    let writing = Instant::now();
    for i in 0..BIG_CONFIGS {
        let name = format!("big-{i:02}");
        let data = noise(i as u64 + 1);
        create_config(cluster.host("m1"), &name, &data);
        expected.insert(name, sha256(&data));
    }
    let wrote = writing.elapsed();
    let last_big = raft(cluster.host("m1")).applied;
    // Small writes until every manager has a snapshot holding every big config.
    let mut fillers = 0;
    wait_for(
        Duration::from_secs(90),
        "a snapshot past the last big config on every manager",
        || {
            for _ in 0..5 {
                let name = format!("filler-{fillers:03}");
                create_config(cluster.host("m1"), &name, b"x");
                expected.insert(name, sha256(b"x"));
                fillers += 1;
            }
            old.iter()
                .all(|n| raft_of(cluster.host(n)).is_some_and(|r| r.snapshot_index >= last_big))
                .then_some(())
        },
    );
    assert!(fillers <= 100, "{fillers} fillers");
    for name in old {
        let r = raft(cluster.host(name));
        assert!(
            r.first_log_index > 1,
            "{name} did not compact its log: {r:?}"
        );
        assert!(
            r.first_log_index + KEEP <= r.snapshot_index + 1,
            "{name} kept fewer than {KEEP} entries behind its snapshot: {r:?}"
        );
        assert!(r.snapshot_bytes >= STATE_BYTES, "{name}: {r:?}");
        assert!(r.snapshot_build_ms > 0, "{name} built its own: {r:?}");
        eprintln!(
            "{name}: snapshot at {} ({:.1} MB, built and persisted in {} ms), log kept from {}",
            r.snapshot_index,
            mb(r.snapshot_bytes),
            r.snapshot_build_ms,
            r.first_log_index
        );
    }
    eprintln!(
        "wrote {BIG_CONFIGS} configs of {CONFIG_BYTES} bytes in {wrote:?}, then {fillers} small ones"
    );

    // A fourth manager joins, through m2. The log it would need is compacted away on every
    // manager: it can only be caught up by the snapshot.
    cluster.add_host("m4", &[]);
    let target = raft(cluster.host("m1")).applied;
    let token = token(cluster.host("m1"));
    let joining = Instant::now();
    let join_returned = join(cluster.host("m4"), &token, cluster.host("m2"));
    let m4 = cluster.host("m4");
    let caught_up = wait_for(Duration::from_secs(30), "m4 a voter with all data", || {
        raft_of(m4)
            .filter(|r| r.voters == 4 && r.applied >= target && r.snapshot_bytes >= STATE_BYTES)
    });
    let voter_with_data = joining.elapsed();
    assert!(caught_up.snapshot_bytes > OVER_ANY_MESSAGE, "{caught_up:?}");
    assert!(caught_up.first_log_index > 1, "{caught_up:?}");
    let received = log_line(m4, "receiving raft snapshot")
        .unwrap_or_else(|| panic!("m4 was not sent a snapshot:\n{}", m4.daemon.log()));
    let (sent, read) = old
        .iter()
        .find_map(|n| {
            let host = cluster.host(n);
            let sent = log_line(host, "sending raft snapshot")?;
            Some((sent, log_line(host, "raft snapshot read from disk")?))
        })
        .expect("a manager logged reading and sending the snapshot");
    let leader_view = old
        .iter()
        .filter_map(|n| raft_of(cluster.host(n)))
        .find(Raft::is_leader)
        .expect("a leader among the old managers");
    assert_eq!(leader_view.voters, 4, "{leader_view:?}");
    let installed = log_line(m4, "raft snapshot installed").expect("m4 installed it");
    let built = old
        .iter()
        .filter_map(|n| log_line(cluster.host(n), "raft snapshot built"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("{built}\nsender: {read}\nsender: {sent}\nm4: {received}\nm4: {installed}");
    eprintln!(
        "JOIN: {:.1} MB state, snapshot {:.1} MB: `swarm join` returned after {join_returned:?}; \
         voter with all data after {voter_with_data:?}",
        mb(leader_view.snapshot_bytes),
        mb(caught_up.snapshot_bytes)
    );

    // A log tail after the snapshot, then the leader dies.
    for i in 0..3 {
        let name = format!("tail-{i}");
        create_config(cluster.host("m4"), &name, b"tail");
        expected.insert(name, sha256(b"tail"));
    }
    let leader = old
        .iter()
        .copied()
        .find(|n| raft_of(cluster.host(n)).is_some_and(|r| r.is_leader()))
        .expect("the leader is an old manager");
    let others: Vec<&str> = old.iter().copied().filter(|n| *n != leader).collect();
    let target = raft(cluster.host(leader)).applied;
    wait_for(Duration::from_secs(20), "m4 applied the tail", || {
        raft_of(cluster.host("m4")).filter(|r| r.applied >= target)
    });
    cluster.kill9(leader);
    cluster.partition(&[others[0]], &[others[1]]);
    cluster.partition(&[others[1]], &[others[0]]);
    let m4 = cluster.host("m4");
    wait_for(Duration::from_secs(30), "m4 to lead", || {
        raft_of(m4).filter(Raft::is_leader)
    });
    assert_same("m4's own store", &own_configs(m4), &expected);
    create_config(m4, "after-failover", b"after");
    expected.insert("after-failover".to_owned(), sha256(b"after"));

    // The killed manager restarts from its snapshot and log tail, and catches up.
    let restarting = Instant::now();
    cluster.restart(leader);
    let back = cluster.host(leader);
    let at_start = raft(back);
    eprintln!(
        "{leader} restarted in {:?}: {at_start:?}",
        restarting.elapsed()
    );
    assert!(at_start.snapshot_index >= last_big, "{at_start:?}");
    assert!(at_start.first_log_index > 1, "{at_start:?}");
    assert!(at_start.snapshot_bytes >= STATE_BYTES, "{at_start:?}");
    assert!(at_start.applied >= at_start.snapshot_index, "{at_start:?}");
    let target = raft(cluster.host("m4")).applied;
    wait_for(
        Duration::from_secs(30),
        "the restarted manager to catch up",
        || raft_of(back).filter(|r| r.applied >= target),
    );
    // Its own store: only it can win once m4 is cut off too.
    cluster.isolate("m4");
    let back = cluster.host(leader);
    wait_for(
        Duration::from_secs(30),
        "the restarted manager to lead",
        || raft_of(back).filter(Raft::is_leader),
    );
    assert_same(
        "the restarted manager's own store",
        &own_configs(back),
        &expected,
    );
    cluster.heal();
    eprintln!(
        "{} configs checked on m4 and on the restarted {leader}; {:?} in all",
        expected.len(),
        started.elapsed()
    );
}
