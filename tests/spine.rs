//! End-to-end tests of the spine: `swarm init`, the local API and CLI, durability across
//! kill -9, and refusals of bad input, all against real daemons.

use std::time::{Duration, Instant};

use shoal_testkit::{Daemon, run_cli};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn init(daemon: &Daemon) -> String {
    let out = daemon.cli(&[
        "swarm",
        "init",
        "--advertise-addr",
        "127.0.0.1:42377",
        "--listen-addr",
        "127.0.0.1:0",
    ]);
    let stdout = out.ok();
    assert!(stdout.contains("Swarm initialized"), "{stdout}");
    let info = json(daemon.cli(&["info", "--format", "json"]).ok());
    let node_id = info["Swarm"]["NodeID"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(node_id.len(), 25, "{info}");
    node_id
}

#[test]
fn usage_mistakes_are_one_line_with_exit_code_2() {
    let cases: [&[&str]; 4] = [
        &["run", "--memory", "abc", "busybox"],
        &["frobnicate"],
        &["run"],
        &["run", "-v", "bad!name:/x", "busybox"],
    ];
    for args in cases {
        // No daemon is needed: the mistake is caught before any connection.
        let out = run_cli("unix:///nonexistent/shoal.sock", args, None);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {out:?}");
        assert!(out.stderr.starts_with("Error: "), "{args:?}: {out:?}");
    }
    let help = run_cli("unix:///nonexistent/shoal.sock", &["run", "--help"], None);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("Usage: shoal run"), "{help:?}");
}

#[test]
fn init_then_node_ls_shows_this_node_as_leader() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(dir.path(), &[]);
    let out = daemon.cli(&[
        "swarm",
        "init",
        "--advertise-addr",
        "127.0.0.1:42377",
        "--listen-addr",
        "127.0.0.1:0",
    ]);
    let text = out.ok();
    assert!(text.contains("Swarm initialized: current node ("), "{text}");
    assert!(text.contains("shoal swarm join --token SHTKN-1-"), "{text}");
    assert!(text.contains("127.0.0.1:42377"), "{text}");

    let table = daemon.cli(&["node", "ls"]).ok().to_owned();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    for column in ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"] {
        assert!(lines[0].contains(column), "{table}");
    }
    assert!(lines[1].contains(" * "), "current node is marked: {table}");
    for cell in ["Ready", "Active", "Leader"] {
        assert!(lines[1].contains(cell), "{table}");
    }

    let ids = daemon.cli(&["node", "ls", "-q"]).ok().to_owned();
    let id = ids.trim();
    assert_eq!(id.len(), 25, "{ids}");

    // One JSON object per line, as `docker node ls --format json`.
    let rows = daemon
        .cli(&["node", "ls", "--format", "json"])
        .ok()
        .to_owned();
    let rows: Vec<serde_json::Value> = rows.lines().map(json).collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["ID"], id);
    assert_eq!(rows[0]["Self"], true);
    assert_eq!(rows[0]["ManagerStatus"], "Leader");

    let inspected = json(daemon.cli(&["node", "inspect", id]).ok());
    assert_eq!(inspected[0]["ID"], id);
    assert_eq!(inspected[0]["Spec"]["Role"], "manager");
    assert_eq!(inspected[0]["ManagerStatus"]["Leader"], true);
    // By a unique prefix, and by hostname.
    json(daemon.cli(&["node", "inspect", &id[..6]]).ok());
    let pretty = daemon
        .cli(&["node", "inspect", "--pretty", "self"])
        .ok()
        .to_owned();
    assert!(pretty.contains("ID:") && pretty.contains(id), "{pretty}");
    let hostname = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let by_host = json(daemon.cli(&["node", "inspect", &hostname]).ok());
    assert_eq!(by_host[0]["ID"], id);

    let info = daemon.cli(&["info"]).ok().to_owned();
    assert!(info.contains("Swarm: active"), "{info}");
    assert!(info.contains(id), "{info}");
}

#[test]
fn join_tokens_print_rotate_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_in(dir.path(), &[]);
    init(&daemon);
    let worker = daemon
        .cli(&["swarm", "join-token", "-q", "worker"])
        .ok()
        .trim()
        .to_owned();
    let manager = daemon
        .cli(&["swarm", "join-token", "-q", "manager"])
        .ok()
        .trim()
        .to_owned();
    assert!(worker.starts_with("SHTKN-1-"), "{worker}");
    assert_eq!(worker.len(), "SHTKN-1-".len() + 50 + 1 + 25, "{worker}");
    assert_ne!(worker, manager);
    // Both tokens pin the same root CA.
    assert_eq!(worker[..58], manager[..58]);

    let full = daemon
        .cli(&["swarm", "join-token", "worker"])
        .ok()
        .to_owned();
    assert!(
        full.contains(&format!(
            "shoal swarm join --token {worker} 127.0.0.1:42377"
        )),
        "{full}"
    );

    let rotated = daemon
        .cli(&["swarm", "join-token", "--rotate", "worker"])
        .ok()
        .to_owned();
    assert!(
        rotated.contains("Successfully rotated worker join token"),
        "{rotated}"
    );
    let worker2 = daemon
        .cli(&["swarm", "join-token", "-q", "worker"])
        .ok()
        .trim()
        .to_owned();
    assert_ne!(worker, worker2);
    assert_eq!(worker[..58], worker2[..58], "rotation keeps the CA pin");
    let manager_after = daemon
        .cli(&["swarm", "join-token", "-q", "manager"])
        .ok()
        .trim()
        .to_owned();
    assert_eq!(
        manager, manager_after,
        "rotating one token leaves the other"
    );

    daemon.restart();
    let worker3 = daemon
        .cli(&["swarm", "join-token", "-q", "worker"])
        .ok()
        .trim()
        .to_owned();
    assert_eq!(worker2, worker3);

    let bad = daemon.cli(&["swarm", "join-token", "admin"]);
    assert_ne!(bad.code, 0);
}

#[test]
fn kill9_keeps_cluster_identity_and_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_in(dir.path(), &[]);
    let node_id = init(&daemon);
    let info_before = json(daemon.cli(&["info", "--format", "json"]).ok());
    let token_before = daemon
        .cli(&["swarm", "join-token", "-q", "worker"])
        .ok()
        .to_owned();
    let cert_path = daemon.data_root().join("swarm/certificates/node.crt");
    let cert_before = std::fs::read(&cert_path).unwrap();

    // Writes acknowledged before the crash must all be there after it.
    let mut acknowledged = Vec::new();
    for i in 0..40 {
        let name = format!("cfg-{i}");
        let out = daemon.cli_with_stdin(
            &["config", "create", &name, "-"],
            Some(format!("payload {i}").as_bytes()),
        );
        out.ok();
        acknowledged.push(name);
    }
    daemon.kill9();
    daemon.start_again();

    let info_after = json(daemon.cli(&["info", "--format", "json"]).ok());
    for key in ["ClusterID", "NodeID"] {
        assert!(info_before["Swarm"][key].is_string(), "{info_before}");
        assert_eq!(info_before["Swarm"][key], info_after["Swarm"][key], "{key}");
    }
    assert_eq!(std::fs::read(&cert_path).unwrap(), cert_before);
    assert_eq!(
        daemon.cli(&["swarm", "join-token", "-q", "worker"]).ok(),
        token_before
    );
    let ids = daemon.cli(&["node", "ls", "-q"]).ok().trim().to_owned();
    assert_eq!(ids, node_id);
    let listed = daemon
        .cli(&["config", "ls", "--format", "json"])
        .ok()
        .to_owned();
    for name in &acknowledged {
        assert!(
            listed.contains(&format!("\"{name}\"")),
            "{name} lost after kill -9: {listed}"
        );
    }
    let table = daemon.cli(&["node", "ls"]).ok().to_owned();
    assert!(table.contains("Leader"), "{table}");
    // And the cluster still takes writes.
    daemon
        .cli_with_stdin(&["config", "create", "after-restart", "-"], Some(b"x"))
        .ok();
}

#[test]
fn writes_in_flight_during_kill9_are_never_half_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_in(dir.path(), &[]);
    init(&daemon);
    let host = daemon.host();
    let writer = std::thread::spawn(move || {
        let mut acknowledged = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        for i in 0..400 {
            if Instant::now() > deadline {
                break;
            }
            let name = format!("inflight-{i}");
            let out = run_cli(&host, &["config", "create", &name, "-"], Some(b"data"));
            if out.code == 0 {
                acknowledged.push(name);
            } else {
                // Once the daemon is gone every write fails with one clean line.
                assert_eq!(out.stderr.lines().count(), 1, "{:?}", out.stderr);
                break;
            }
        }
        acknowledged
    });
    std::thread::sleep(Duration::from_millis(1500));
    daemon.kill9();
    let acknowledged = writer.join().unwrap();
    assert!(!acknowledged.is_empty());
    daemon.start_again();
    let listed = daemon
        .cli(&["config", "ls", "--format", "json"])
        .ok()
        .to_owned();
    for name in &acknowledged {
        assert!(
            listed.contains(&format!("\"{name}\"")),
            "{name} acknowledged but lost"
        );
    }
}

#[test]
fn refusals_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(dir.path(), &[]);

    // Not in a swarm yet.
    let line = daemon.cli(&["node", "ls"]).one_line_error().to_owned();
    assert!(line.contains("not a swarm manager"), "{line}");
    let line = daemon.cli(&["swarm", "leave"]).one_line_error().to_owned();
    assert!(line.contains("not part of a swarm"), "{line}");
    let line = daemon
        .cli(&["swarm", "init", "--advertise-addr", "not-an-ip"])
        .one_line_error()
        .to_owned();
    assert!(line.contains("invalid advertise address"), "{line}");

    init(&daemon);
    let line = daemon
        .cli(&["swarm", "init", "--advertise-addr", "127.0.0.1"])
        .one_line_error()
        .to_owned();
    assert!(line.contains("already part of a swarm"), "{line}");
    let line = daemon
        .cli(&["node", "inspect", "nosuchnode"])
        .one_line_error()
        .to_owned();
    assert!(line.contains("no such node"), "{line}");
    let line = daemon
        .cli_with_stdin(&["config", "create", "bad/name", "-"], Some(b"x"))
        .one_line_error()
        .to_owned();
    assert!(line.contains("invalid config name"), "{line}");
    daemon
        .cli_with_stdin(&["config", "create", "dup", "-"], Some(b"x"))
        .ok();
    let line = daemon
        .cli_with_stdin(&["config", "create", "dup", "-"], Some(b"y"))
        .one_line_error()
        .to_owned();
    assert!(line.contains("already exists"), "{line}");
    let line = daemon
        .cli(&["node", "rm", "nosuchnode"])
        .one_line_error()
        .to_owned();
    assert!(line.contains("no such node"), "{line}");
    let line = daemon
        .cli(&["swarm", "update", "--cert-expiry", "10m"])
        .one_line_error()
        .to_owned();
    assert!(line.contains("1 hour"), "{line}");
    let line = daemon
        .cli(&["node", "update", "--availability", "sideways", "self"])
        .stderr
        .clone();
    assert!(!line.is_empty());
    let line = daemon.cli(&["swarm", "leave"]).one_line_error().to_owned();
    assert!(line.contains("--force"), "{line}");

    // No daemon at the other end.
    let missing = format!("unix://{}/nobody.sock", dir.path().display());
    let line = run_cli(&missing, &["node", "ls"], None)
        .one_line_error()
        .to_owned();
    assert!(line.contains("is the daemon running"), "{line}");
}

#[test]
fn socket_is_root_only() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(dir.path(), &[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(daemon.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    // An unprivileged user may not open it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(shoal_testkit::shoal_binary())
        .args(["-H", &daemon.host(), "info"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
}

#[test]
fn leave_force_returns_to_inactive_and_init_works_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_in(dir.path(), &[]);
    let first = init(&daemon);
    daemon.cli(&["swarm", "leave", "--force"]).ok();
    assert!(!daemon.data_root().join("swarm").exists());
    let info = daemon.cli(&["info"]).ok().to_owned();
    assert!(info.contains("Swarm: inactive"), "{info}");
    daemon.restart();
    let second = init(&daemon);
    assert_ne!(first, second);
}

#[test]
fn corrupt_or_foreign_data_root_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_in(dir.path(), &[]);
    init(&daemon);
    assert_eq!(daemon.terminate(), Some(0));
    assert!(
        !daemon.socket().exists(),
        "socket removed at clean shutdown"
    );

    let state = daemon.data_root().join("swarm/state.json");
    let original = std::fs::read(&state).unwrap();

    // A state file from a future format.
    let mut foreign: serde_json::Value = serde_json::from_slice(&original).unwrap();
    foreign["format"] = serde_json::json!(99);
    std::fs::write(&state, serde_json::to_vec(&foreign).unwrap()).unwrap();
    let refused = refuse_to_start(&daemon);
    assert!(refused.contains("incompatible version"), "{refused}");

    // A state file that is garbage.
    std::fs::write(&state, b"\x00\x01garbage").unwrap();
    let refused = refuse_to_start(&daemon);
    assert!(refused.contains("corrupt"), "{refused}");
    assert_eq!(
        std::fs::read(&state).unwrap(),
        b"\x00\x01garbage",
        "left untouched"
    );

    // A damaged replicated log.
    std::fs::write(&state, &original).unwrap();
    let raft_dir = daemon.data_root().join("swarm/raft");
    let log_file = std::fs::read_dir(&raft_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("raft"))
        })
        .expect("a raft log file");
    std::fs::write(&log_file, vec![0x5a; 8192]).unwrap();
    let refused = refuse_to_start(&daemon);
    assert!(refused.contains("refusing to start"), "{refused}");
}

fn refuse_to_start(daemon: &Daemon) -> String {
    let out = daemon.daemon_command().output().unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "daemon started on a bad data root"
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    assert!(last.starts_with("Error: "), "{stderr}");
    last
}

#[test]
fn daemons_run_side_by_side_but_never_share_a_root() {
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start_in(&dir.path().join("a"), &[]);
    let b = Daemon::start_in(&dir.path().join("b"), &[]);
    init(&a);
    init(&b);
    let id_a = a.cli(&["node", "ls", "-q"]).ok().to_owned();
    let id_b = b.cli(&["node", "ls", "-q"]).ok().to_owned();
    assert_ne!(id_a, id_b);

    // A second daemon on a's data root is refused.
    let out = std::process::Command::new(shoal_testkit::shoal_binary())
        .args(["daemon", "--data-root"])
        .arg(a.data_root())
        .args(["--exec-root"])
        .arg(dir.path().join("c-exec"))
        .args(["-H", &format!("unix://{}/c.sock", dir.path().display())])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in use by another shoal daemon"),
        "{stderr}"
    );
}
