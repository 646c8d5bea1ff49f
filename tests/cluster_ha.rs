//! High availability on real network namespaces: managers and workers join over a private
//! underlay, the leader is killed -9 again and again under a stream of writes without losing an
//! acknowledged one or electing two leaders in a term, and a manager cut off from the majority
//! refuses writes promptly and converges to the majority's history once the network heals.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_testkit::cluster::{Cluster, Host, can_run};
use shoal_testkit::swarm::{cli_within, wait_for};

/// The port every manager listens on, as in Docker.
const PORT: u16 = 2377;
/// A write that takes longer than this is a hang, not a refusal.
const WRITE_LIMIT: Duration = Duration::from_secs(15);

/// `config create NAME -` on `host`; true when it was acknowledged.
fn create_config(host: &str, name: &str) -> bool {
    try_create_config(host, name).is_ok()
}

/// `config create NAME -` on `host`: the refusal's stderr when not acknowledged.
fn try_create_config(host: &str, name: &str) -> Result<(), String> {
    let (out, _) = cli_within(host, &["config", "create", name, "-"], b"x", WRITE_LIMIT);
    if out.code == 0 {
        Ok(())
    } else {
        Err(out.stderr)
    }
}

fn token(manager: &Host, role: &str) -> String {
    manager
        .cli(&["swarm", "join-token", "-q", role])
        .ok()
        .trim()
        .to_owned()
}

/// Adds `managers` manager hosts (`m1`, …) and `workers` worker hosts (`w1`, …), `m1` making
/// the swarm and everyone else joining by token over the underlay, through rotating managers.
fn form(managers: usize, workers: usize) -> Cluster {
    let mut cluster = Cluster::new();
    for i in 1..=managers {
        cluster.add_host(&format!("m{i}"), &[]);
    }
    for i in 1..=workers {
        cluster.add_host(&format!("w{i}"), &[]);
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
    let manager_token = token(m1, "manager");
    let worker_token = token(m1, "worker");
    let joins = (2..=managers)
        .map(|i| (format!("m{i}"), &manager_token))
        .chain((1..=workers).map(|i| (format!("w{i}"), &worker_token)));
    for (n, (name, token)) in joins.enumerate() {
        let host = cluster.host(&name);
        // Through whichever manager has joined already, followers included.
        let via = cluster.host(&format!("m{}", n % managers.max(1) + 1));
        let via = if via.name == name || !via.daemon.data_root().join("swarm").exists() {
            cluster.host("m1")
        } else {
            via
        };
        let addr = host.addr(PORT);
        host.cli(&[
            "swarm",
            "join",
            "--token",
            token,
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
            &via.addr(PORT),
        ])
        .ok();
    }
    cluster
}

/// What a manager says of Raft in `info --format json`.
#[derive(Clone, Copy, Debug)]
struct Raft {
    id: u64,
    term: u64,
    leader: u64,
    applied: u64,
}

impl Raft {
    fn is_leader(&self) -> bool {
        self.leader != 0 && self.leader == self.id
    }
}

fn raft_of(host: &str) -> Option<Raft> {
    let (out, _) = cli_within(host, &["info", "--format", "json"], b"", WRITE_LIMIT);
    if out.code != 0 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    let raft = &v["Swarm"]["Raft"];
    Some(Raft {
        id: raft["RaftID"].as_u64()?,
        term: raft["Term"].as_u64()?,
        leader: raft["LeaderRaftID"].as_u64()?,
        applied: raft["LastApplied"].as_u64()?,
    })
}

/// Config names on `host`, sorted.
fn config_names(host: &Host) -> Option<BTreeSet<String>> {
    let out = host.cli(&["config", "ls", "--format", "json"]);
    if out.code != 0 {
        return None;
    }
    out.stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some(v["Name"].as_str()?.to_owned())
        })
        .collect()
}

/// The one manager among `names` that reports itself leader, once there is exactly one.
fn leader_among(cluster: &Cluster, names: &[&str]) -> String {
    wait_for(Duration::from_secs(20), "a single leader", || {
        let leaders: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| raft_of(&cluster.host(n).daemon.host()).is_some_and(|r| r.is_leader()))
            .collect();
        (leaders.len() == 1).then(|| leaders[0].to_owned())
    })
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

#[test]
fn three_managers_two_workers_in_namespaces() {
    if !can_run() {
        return;
    }
    let started = Instant::now();
    let cluster = form(3, 2);
    let managers = ["m1", "m2", "m3"];
    let ids = wait_for(Duration::from_secs(30), "managers to agree", || {
        let mut views = Vec::new();
        for m in managers {
            let out = cluster.host(m).cli(&["node", "ls", "--format", "json"]);
            if out.code != 0 {
                return None;
            }
            let rows: Vec<(String, String)> = out
                .stdout
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                    (s("ID"), s("ManagerStatus"))
                })
                .collect();
            let ids: BTreeSet<String> = rows.iter().map(|(id, _)| id.clone()).collect();
            let leaders = rows.iter().filter(|(_, m)| m == "Leader").count();
            if ids.len() != 5 || leaders != 1 {
                return None;
            }
            views.push(ids);
        }
        views
            .iter()
            .all(|v| *v == views[0])
            .then(|| views[0].clone())
    });
    assert_eq!(ids.len(), 5);
    // Each joined over the underlay: the swarm knows it by its own namespace's address.
    for host in cluster.hosts() {
        let out = host.cli(&["info", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
        let id = v["Swarm"]["NodeID"].as_str().unwrap().to_owned();
        assert!(ids.contains(&id), "{}: {id} not listed", host.name);
        let out = cluster.host("m1").cli(&["node", "inspect", &id]);
        let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
        assert_eq!(
            v[0]["Status"]["Addr"],
            host.ip.to_string(),
            "{}: {v}",
            host.name
        );
    }
    eprintln!(
        "3 managers + 2 workers formed and agreed in {:?}",
        started.elapsed()
    );
}

#[test]
fn leader_kill9_loop_keeps_every_acknowledged_write() {
    if !can_run() {
        return;
    }
    let kills: usize = std::env::var("SHOAL_HA_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .clamp(1, 50);
    let started = Instant::now();
    let mut cluster = form(3, 0);
    let managers = ["m1", "m2", "m3"];
    let sockets: Vec<String> = managers
        .iter()
        .map(|m| cluster.host(m).daemon.host())
        .collect();
    leader_among(&cluster, &managers);

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    // Leaders seen by term: Raft allows at most one per term.
    let leaders: Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>> = Arc::default();

    // The steady stream: round-robin over all managers (a killed one refuses at once), bounded
    // in count; the loop below bounds it in time.
    let writer = {
        let (stop, acked, sockets) = (stop.clone(), acked.clone(), sockets.clone());
        std::thread::spawn(move || {
            let mut attempts = 0usize;
            // Refusals by their first words, to show why writes failed.
            let mut refusals = BTreeMap::<String, usize>::new();
            for i in 0..5000usize {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                attempts += 1;
                let name = format!("stream-{i}");
                match try_create_config(&sockets[i % sockets.len()], &name) {
                    Ok(()) => acked.lock().unwrap().push(name),
                    Err(line) => {
                        let kind: String = line.chars().take(60).collect();
                        *refusals.entry(kind).or_default() += 1;
                    }
                }
            }
            (attempts, refusals)
        })
    };
    let monitor = {
        let (stop, leaders, sockets) = (stop.clone(), leaders.clone(), sockets.clone());
        std::thread::spawn(move || {
            let mut polls = 0usize;
            while !stop.load(Ordering::Relaxed) && polls < 20_000 {
                for socket in &sockets {
                    polls += 1;
                    if let Some(raft) = raft_of(socket).filter(Raft::is_leader) {
                        leaders
                            .lock()
                            .unwrap()
                            .entry(raft.term)
                            .or_default()
                            .insert(raft.id);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            polls
        })
    };

    let deadline = Instant::now() + Duration::from_secs(20) + Duration::from_secs(5) * kills as u32;
    let mut failovers = Vec::new();
    // Why survivors refused writes during failover: each must be one clear line.
    let mut survivor_refusals = BTreeMap::<String, usize>::new();
    for k in 0..kills {
        assert!(Instant::now() < deadline, "the kill loop ran out of time");
        let leader = leader_among(&cluster, &managers);
        let survivors: Vec<&str> = managers.iter().copied().filter(|m| *m != leader).collect();
        cluster.kill9(&leader);
        let killed = Instant::now();
        let mut j = 0;
        let failover = wait_for(
            Duration::from_secs(20),
            "a surviving manager to accept a write",
            || {
                let name = format!("failover-{k}-{j}");
                let socket = cluster.host(survivors[j % 2]).daemon.host();
                j += 1;
                match try_create_config(&socket, &name) {
                    Ok(()) => {
                        acked.lock().unwrap().push(name);
                        Some(killed.elapsed())
                    }
                    Err(line) => {
                        *survivor_refusals.entry(line).or_default() += 1;
                        None
                    }
                }
            },
        );
        failovers.push(failover);
        // Back before the next kill, so the next leader's death leaves two of three.
        cluster.restart(&leader);
        let socket = cluster.host(&leader).daemon.host();
        let survivor = cluster.host(survivors[0]).daemon.host();
        wait_for(
            Duration::from_secs(20),
            "the restarted manager to follow the leader",
            || {
                let me = raft_of(&socket)?;
                let other = raft_of(&survivor)?;
                (me.leader != 0 && me.leader == other.leader && me.term == other.term).then_some(())
            },
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (attempts, refusals) = writer.join().unwrap();
    let polls = monitor.join().unwrap();

    let acked = acked.lock().unwrap().clone();
    let expected: BTreeSet<String> = acked.iter().cloned().collect();
    assert_eq!(expected.len(), acked.len(), "a name was acknowledged twice");
    for m in managers {
        let host = cluster.host(m);
        let names = wait_for(
            Duration::from_secs(20),
            "every acknowledged config on every manager",
            || config_names(host).filter(|names| names.is_superset(&expected)),
        );
        let lost: Vec<_> = expected.difference(&names).collect();
        assert!(lost.is_empty(), "{m} lost acknowledged writes: {lost:?}");
    }
    let leaders = leaders.lock().unwrap();
    for (term, ids) in leaders.iter() {
        assert!(ids.len() <= 1, "term {term} had leaders {ids:?}");
    }
    assert!(
        leaders.len() > kills / 2,
        "too few terms observed: {leaders:?}"
    );

    failovers.sort();
    let median = failovers[failovers.len() / 2];
    let max = *failovers.last().unwrap();
    eprintln!(
        "failover over {kills} kills -9 of the leader: median {} ms, max {} ms (kill to first accepted write); \
         {} writes acknowledged of {attempts} attempted; {} terms seen with a leader in {polls} info polls; {:?} in all",
        millis(median),
        millis(max),
        acked.len(),
        leaders.len(),
        started.elapsed()
    );
    eprintln!("refused writes (any manager, dead ones included): {refusals:#?}");
    eprintln!("refusals by survivors during failover: {survivor_refusals:#?}");
}

#[test]
fn a_minority_partition_refuses_writes_and_heals_into_one_history() {
    if !can_run() {
        return;
    }
    let started = Instant::now();
    let mut cluster = form(3, 0);
    let managers = ["m1", "m2", "m3"];
    // Cut off the leader: the harder case, as it believes itself leader when the cut happens.
    let cut = leader_among(&cluster, &managers);
    let majority: Vec<&str> = managers.iter().copied().filter(|m| *m != cut).collect();
    assert!(create_config(
        &cluster.host(&cut).daemon.host(),
        "before-cut"
    ));
    cluster.partition(&[&cut], &majority);
    cluster.partition(&majority, &[&cut]);

    let (out, took) = cli_within(
        &cluster.host(&cut).daemon.host(),
        &["config", "create", "on-the-minority", "-"],
        b"x",
        Duration::from_secs(30),
    );
    assert!(
        took < WRITE_LIMIT,
        "a write on the minority hung for {took:?}: {out:?}"
    );
    let line = out.one_line_error().to_owned();
    eprintln!("minority write refused after {took:?}: {line}");
    assert!(
        line.contains("quorum") || line.contains("leader"),
        "not a clear refusal: {line}"
    );

    // The majority elects a leader of its own and takes writes on both of its managers.
    let mut written = Vec::new();
    for (i, m) in majority.iter().enumerate() {
        let socket = cluster.host(m).daemon.host();
        let name = format!("on-the-majority-{i}");
        wait_for(
            Duration::from_secs(20),
            "the majority to take a write",
            || create_config(&socket, &name).then_some(()),
        );
        written.push(name);
    }

    cluster.heal();
    let healed = Instant::now();
    let reference = config_names(cluster.host(majority[0])).expect("config ls on the majority");
    for name in written.iter().chain(["before-cut".to_owned()].iter()) {
        assert!(reference.contains(name), "{name} missing: {reference:?}");
    }
    assert!(
        !reference.contains("on-the-minority"),
        "a refused write reached the majority"
    );
    // Control calls are forwarded to the leader, so `config ls` alone would not show the cut
    // manager's own state: it must also follow the majority's leader in its term and have
    // applied as far as that leader.
    let cut_socket = cluster.host(&cut).daemon.host();
    let leader_socket = cluster.host(majority[0]).daemon.host();
    wait_for(
        Duration::from_secs(20),
        "the cut manager to follow the majority's leader",
        || {
            let me = raft_of(&cut_socket)?;
            let other = raft_of(&leader_socket)?;
            (me.leader != 0
                && me.leader == other.leader
                && me.term == other.term
                && me.applied >= other.applied)
                .then_some(())
        },
    );
    let cut_host = cluster.host(&cut);
    wait_for(
        Duration::from_secs(20),
        "the cut manager to converge",
        || config_names(cut_host).filter(|names| *names == reference),
    );
    let other = config_names(cluster.host(majority[1])).unwrap();
    assert_eq!(other, reference);
    let converged = healed.elapsed();

    // A manager that has lost its quorum still stops on SIGTERM (the harness fails the test
    // after 20 s), and its restart into the healed network rejoins the same history.
    cluster.partition(&[&cut], &majority);
    cluster.partition(&majority, &[&cut]);
    let stopping = Instant::now();
    cluster.stop(&cut);
    let stopped = stopping.elapsed();
    cluster.heal();
    cluster.restart(&cut);
    let cut_host = cluster.host(&cut);
    wait_for(
        Duration::from_secs(20),
        "the restarted manager to see the same configs",
        || config_names(cut_host).filter(|names| *names == reference),
    );
    eprintln!(
        "the cut manager converged {converged:?} after heal; stopped without quorum in \
         {stopped:?}; {:?} in all",
        started.elapsed()
    );
}

/// `node ls --format json` on `host`: node ID → (status, manager status).
fn node_rows(host: &Host) -> Option<BTreeMap<String, (String, String)>> {
    let out = host.cli(&["node", "ls", "--format", "json"]);
    if out.code != 0 {
        return None;
    }
    out.stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            Some((s("ID"), (s("Status"), s("ManagerStatus"))))
        })
        .collect()
}

fn node_id(host: &Host) -> String {
    let out = host.cli(&["info", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    v["Swarm"]["NodeID"].as_str().unwrap().to_owned()
}

fn voters(host: &Host) -> Option<u64> {
    let out = host.cli(&["info", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    v["Swarm"]["Raft"]["Voters"].as_u64()
}

#[test]
fn five_managers_lose_two_and_keep_working() {
    if !can_run() {
        return;
    }
    let mut cluster = form(5, 0);
    let managers = ["m1", "m2", "m3", "m4", "m5"];
    let leader = leader_among(&cluster, &managers);
    // The leader and one follower go down for good.
    let follower = managers.iter().find(|m| **m != leader).unwrap().to_string();
    let lost_ids = [
        node_id(cluster.host(&leader)),
        node_id(cluster.host(&follower)),
    ];
    cluster.kill9(&leader);
    cluster.kill9(&follower);
    let survivors: Vec<&str> = managers
        .iter()
        .copied()
        .filter(|m| *m != leader && *m != follower)
        .collect();
    let new_leader = leader_among(&cluster, &survivors);
    for (i, m) in survivors.iter().enumerate() {
        let name = format!("after-loss-{i}");
        wait_for(
            Duration::from_secs(20),
            "a write through each survivor",
            || create_config(&cluster.host(m).daemon.host(), &name).then_some(()),
        );
    }
    let expected: BTreeSet<String> = (0..3).map(|i| format!("after-loss-{i}")).collect();
    for m in &survivors {
        wait_for(
            Duration::from_secs(20),
            "every survivor to read the writes",
            || config_names(cluster.host(m)).filter(|n| expected.is_subset(n)),
        );
    }
    // The two lost managers are shown unreachable; the survivors are not.
    wait_for(Duration::from_secs(30), "node ls to show the loss", || {
        let rows = node_rows(cluster.host(&new_leader))?;
        let unreachable: BTreeSet<&String> = rows
            .iter()
            .filter(|(_, (_, m))| m == "Unreachable")
            .map(|(id, _)| id)
            .collect();
        let lost: BTreeSet<&String> = lost_ids.iter().collect();
        (unreachable == lost).then_some(())
    });
    // Losing a third would break the quorum of five: a demote of a survivor is refused.
    let victim = survivors.iter().find(|m| **m != new_leader).unwrap();
    let victim_id = node_id(cluster.host(victim));
    let out = cluster
        .host(&new_leader)
        .cli(&["node", "demote", &victim_id]);
    assert_ne!(out.code, 0, "demote that breaks quorum was accepted");
    assert!(out.stderr.contains("quorum"), "{}", out.stderr);
}

#[test]
fn three_managers_lose_two_and_force_new_cluster_recovers_everything() {
    if !can_run() {
        return;
    }
    let mut cluster = form(3, 1);
    let managers = ["m1", "m2", "m3"];
    let leader = leader_among(&cluster, &managers);
    let names: BTreeSet<String> = (0..20).map(|i| format!("kept-{i}")).collect();
    for name in &names {
        assert!(create_config(&cluster.host(&leader).daemon.host(), name));
    }
    let worker_id = node_id(cluster.host("w1"));
    let survivor = managers.iter().find(|m| **m != leader).unwrap().to_string();
    let lost: Vec<String> = managers
        .iter()
        .filter(|m| **m != survivor)
        .map(|m| m.to_string())
        .collect();
    let lost_ids: BTreeSet<String> = lost.iter().map(|m| node_id(cluster.host(m))).collect();
    let survivor_id = node_id(cluster.host(&survivor));
    wait_for(
        Duration::from_secs(20),
        "the survivor to hold every write",
        || config_names(cluster.host(&survivor)).filter(|n| names.is_subset(n)),
    );
    for m in &lost {
        // The second one stops without a quorum: SIGTERM must still be prompt.
        let stopping = Instant::now();
        cluster.stop(m);
        let took = stopping.elapsed();
        eprintln!("{m} stopped {took:?} after SIGTERM");
        assert!(took < Duration::from_secs(3), "{m} took {took:?} to stop");
    }
    let host = cluster.host(&survivor).daemon.host();
    // Refused: as "no quorum" where the survivor led, as an unreachable leader where it followed.
    let refused = try_create_config(&host, "without-quorum").unwrap_err();
    assert!(
        refused.contains("quorum") || refused.contains("leader"),
        "{refused}"
    );
    assert_eq!(refused.trim().lines().count(), 1, "{refused}");

    let started = Instant::now();
    let (out, _) = cli_within(
        &host,
        &["swarm", "init", "--force-new-cluster"],
        b"",
        Duration::from_secs(60),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    eprintln!("--force-new-cluster took {:?}", started.elapsed());
    assert_eq!(voters(cluster.host(&survivor)), Some(1));
    // Everything is there and the cluster takes writes again.
    let found = config_names(cluster.host(&survivor)).unwrap();
    assert!(names.is_subset(&found), "{found:?}");
    assert!(create_config(&host, "after-recovery"));
    // The lost managers are Down workers now; the survivor leads; the worker is still Ready.
    let rows = wait_for(Duration::from_secs(30), "node ls after recovery", || {
        let rows = node_rows(cluster.host(&survivor))?;
        (rows.get(&worker_id).map(|r| r.0.as_str()) == Some("Ready")).then_some(rows)
    });
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[&survivor_id].1, "Leader", "{rows:?}");
    for id in &lost_ids {
        assert_eq!(rows[id], ("Down".to_owned(), String::new()), "{rows:?}");
    }
    // Restarting the survivor keeps the forced cluster.
    cluster.restart(&survivor);
    wait_for(
        Duration::from_secs(30),
        "the survivor to lead again",
        || raft_of(&cluster.host(&survivor).daemon.host()).filter(|r| r.is_leader()),
    );
    assert_eq!(voters(cluster.host(&survivor)), Some(1));

    // A lost manager comes back: its old identity is refused, so it leaves and joins afresh.
    let back = &lost[0];
    cluster.restart(back);
    let out = cluster.host(back).cli(&["swarm", "leave", "--force"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let survivor_host = cluster.host(&survivor);
    let manager_token = token(survivor_host, "manager");
    let addr = cluster.host(back).addr(PORT);
    let out = cluster.host(back).cli(&[
        "swarm",
        "join",
        "--token",
        &manager_token,
        "--advertise-addr",
        &addr,
        "--listen-addr",
        &addr,
        &survivor_host.addr(PORT),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    wait_for(
        Duration::from_secs(30),
        "the rejoined manager to hold every write",
        || {
            config_names(cluster.host(back))
                .filter(|n| names.is_subset(n) && n.contains("after-recovery"))
        },
    );
    assert_eq!(voters(cluster.host(&survivor)), Some(2));
}

#[test]
fn a_manager_leaving_by_force_takes_itself_out_of_raft() {
    if !can_run() {
        return;
    }
    let cluster = form(4, 0);
    let managers = ["m1", "m2", "m3", "m4"];
    let leader = leader_among(&cluster, &managers);
    // Without --force a manager refuses to leave, and says why on one line.
    let out = cluster.host(&leader).cli(&["swarm", "leave"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("demote"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);

    // The leader leaves by force: leadership moves, raft shrinks to three voters.
    let leader_id = node_id(cluster.host(&leader));
    let out = cluster.host(&leader).cli(&["swarm", "leave", "--force"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rest: Vec<&str> = managers.iter().copied().filter(|m| *m != leader).collect();
    let new_leader = leader_among(&cluster, &rest);
    assert_eq!(voters(cluster.host(&new_leader)), Some(3));
    // A follower leaves too: two voters remain, and the swarm still takes writes.
    let follower = *rest.iter().find(|m| **m != new_leader).unwrap();
    let follower_id = node_id(cluster.host(follower));
    let out = cluster.host(follower).cli(&["swarm", "leave", "--force"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(voters(cluster.host(&new_leader)), Some(2));
    assert!(create_config(
        &cluster.host(&new_leader).daemon.host(),
        "after-leaving"
    ));
    let rows = node_rows(cluster.host(&new_leader)).unwrap();
    for id in [&leader_id, &follower_id] {
        assert_eq!(rows[id], ("Down".to_owned(), String::new()), "{rows:?}");
    }
    // The departed hosts are out of the swarm.
    for m in [leader.as_str(), follower] {
        let out = cluster.host(m).cli(&["info", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
        assert_eq!(v["Swarm"]["LocalNodeState"], "inactive", "{v}");
    }
}
