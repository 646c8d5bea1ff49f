//! End-to-end tests of standalone containers: real daemons, real shims and containers, images
//! made from Debian's busybox-static, driven through the real CLI.

use std::time::Duration;

use shoal_testkit::Daemon;
use shoal_testkit::fixtures::{can_run_containers, daemon_with_busybox, wait_for};

#[test]
fn an_oom_kill_is_reported_through_the_daemon() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_busybox(dir.path());
    // dd fills a 64 MiB buffer: far past an 8 MiB limit.
    let out = daemon.cli(&[
        "run",
        "--name",
        "hungry",
        "--memory",
        "8m",
        "busybox:test",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    assert_eq!(out.code, 137, "{out:?}");
    let inspect: serde_json::Value =
        serde_json::from_str(daemon.cli(&["inspect", "hungry"]).ok()).unwrap();
    assert_eq!(inspect[0]["State"]["OOMKilled"], true, "{inspect}");
    assert_eq!(inspect[0]["State"]["ExitCode"], 137);
    let ps = daemon.cli(&["ps", "-a"]).ok().to_owned();
    assert!(ps.contains("Exited (137)"), "{ps}");
}

#[test]
fn run_relays_output_and_exit_codes() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_busybox(dir.path());
    let out = daemon.cli(&["run", "--rm", "busybox:test", "echo", "hello"]);
    assert_eq!(out.ok(), "hello\n");
    let out = daemon.cli(&[
        "run",
        "--rm",
        "busybox:test",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.code, 7, "{out:?}");
    assert_eq!(out.stdout, "out\n");
    assert!(out.stderr.starts_with("err\n"), "{out:?}");
    // Inside: PID 1, its own hostname, Docker's capabilities, /sys read-only.
    let out = daemon.cli(&[
        "run",
        "--rm",
        "--hostname",
        "box",
        "busybox:test",
        "sh",
        "-c",
        "echo $$; hostname; grep CapEff /proc/self/status; touch /sys/x 2>/dev/null || echo ro",
    ]);
    let text = out.ok().to_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "1", "{text}");
    assert_eq!(lines[1], "box", "{text}");
    assert!(lines[2].ends_with("00000000a80425fb"), "{text}");
    assert_eq!(lines[3], "ro", "{text}");
    // --rm left nothing behind.
    assert_eq!(daemon.cli(&["ps", "-a", "-q"]).ok(), "");
}

#[test]
fn detached_lifecycle_logs_stop_and_remove() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_busybox(dir.path());
    let id = daemon
        .cli(&[
            "run",
            "-d",
            "--name",
            "web",
            "--memory",
            "32m",
            "--pids-limit",
            "50",
            "busybox:test",
            "sh",
            "-c",
            "echo started; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done",
        ])
        .ok()
        .trim()
        .to_owned();
    assert_eq!(id.len(), 64, "{id}");
    wait_for("the first log line", Duration::from_secs(10), || {
        daemon.cli(&["logs", "web"]).stdout.contains("started")
    });
    let ps = daemon.cli(&["ps"]).ok().to_owned();
    assert!(ps.contains("web") && ps.contains("Up"), "{ps}");
    let inspect: serde_json::Value =
        serde_json::from_str(daemon.cli(&["inspect", "web"]).ok()).unwrap();
    assert_eq!(inspect[0]["State"]["Status"], "running");
    assert_eq!(inspect[0]["HostConfig"]["Memory"], 32 * 1024 * 1024);
    // The limits are the cgroup's.
    let pid = inspect[0]["State"]["Pid"].as_i64().unwrap();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroup.contains(&id), "{cgroup}");

    // A name is unique; a running container is not removed without --force.
    let line = daemon
        .cli(&["run", "-d", "--name", "web", "busybox:test", "true"])
        .one_line_error()
        .to_owned();
    assert!(line.contains("already in use"), "{line}");
    let line = daemon.cli(&["rm", "web"]).one_line_error().to_owned();
    assert!(line.contains("stop it first"), "{line}");

    daemon.cli(&["stop", "web"]).ok();
    let logs = daemon.cli(&["logs", "web"]).ok().to_owned();
    assert!(
        logs.contains("bye"),
        "the stop signal reached the container: {logs}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(daemon.cli(&["inspect", "web"]).ok()).unwrap();
    assert_eq!(inspect[0]["State"]["Status"], "exited");
    assert_eq!(inspect[0]["State"]["ExitCode"], 0);
    daemon.cli(&["rm", "web"]).ok();
    let line = daemon.cli(&["inspect", "web"]).one_line_error().to_owned();
    assert!(line.contains("no such container"), "{line}");
}

#[test]
fn containers_outlive_a_daemon_kill9() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = daemon_with_busybox(dir.path());
    daemon
        .cli(&[
            "run",
            "-d",
            "--name",
            "survivor",
            "busybox:test",
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done",
        ])
        .ok();
    let inspect: serde_json::Value =
        serde_json::from_str(daemon.cli(&["inspect", "survivor"]).ok()).unwrap();
    let pid = inspect[0]["State"]["Pid"].as_i64().unwrap();
    daemon.kill9();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the container died with the daemon"
    );
    daemon.start_again();
    let ps = daemon.cli(&["ps"]).ok().to_owned();
    assert!(ps.contains("survivor") && ps.contains("Up"), "{ps}");
    // Still managed: its logs grow, and it stops on request.
    let before = daemon.cli(&["logs", "survivor"]).ok().lines().count();
    wait_for("more log lines", Duration::from_secs(10), || {
        daemon.cli(&["logs", "survivor"]).stdout.lines().count() > before
    });
    daemon.cli(&["stop", "-t", "1", "survivor"]).ok();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let inspect: serde_json::Value =
        serde_json::from_str(daemon.cli(&["inspect", "survivor"]).ok()).unwrap();
    assert_eq!(inspect[0]["State"]["Status"], "exited");
    daemon.cli(&["rm", "survivor"]).ok();
}

#[test]
fn images_save_load_round_trip_and_bad_input() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_busybox(dir.path());
    let listed = daemon.cli(&["image", "ls"]).ok().to_owned();
    assert!(
        listed.contains("busybox") && listed.contains("test"),
        "{listed}"
    );
    let archive = dir.path().join("saved.tar");
    daemon
        .cli(&[
            "image",
            "save",
            "-o",
            archive.to_str().unwrap(),
            "busybox:test",
        ])
        .ok();
    let id_before = daemon.cli(&["image", "ls", "-q"]).ok().trim().to_owned();
    daemon.cli(&["image", "rm", "busybox:test"]).ok();
    assert_eq!(daemon.cli(&["image", "ls", "-q"]).ok().trim(), "");
    let loaded = daemon
        .cli(&["image", "load", "-i", archive.to_str().unwrap()])
        .ok()
        .to_owned();
    assert!(loaded.contains("busybox:test"), "{loaded}");
    assert_eq!(daemon.cli(&["image", "ls", "-q"]).ok().trim(), id_before);
    daemon.cli(&["run", "--rm", "busybox:test", "true"]).ok();

    // Garbage is refused with one line and leaves the store as it was.
    let garbage = dir.path().join("garbage.tar");
    std::fs::write(&garbage, b"this is not a tar archive at all").unwrap();
    daemon
        .cli(&["image", "load", "-i", garbage.to_str().unwrap()])
        .one_line_error();
    assert_eq!(daemon.cli(&["image", "ls", "-q"]).ok().trim(), id_before);
    // `--pull never`: a missing image is an error without reaching for a registry (a test never
    // touches the real network).
    let line = daemon
        .cli(&["run", "--rm", "--pull", "never", "nosuch:image", "true"])
        .one_line_error()
        .to_owned();
    assert!(line.contains("nosuch"), "{line}");
    let line = daemon
        .cli(&["run", "--rm", "busybox:test", "/no/such/program"])
        .stderr
        .clone();
    assert!(!line.is_empty() && !line.contains("panicked"), "{line}");
}

#[test]
fn bridge_network_publishes_ports_inside_a_private_host() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The daemon's bridge, NAT and port rules live in a namespace of the test's own.
    let host = shoal_testkit::TestNetns::create("shoal-e2e-bridge");
    let daemon = Daemon::start_in_netns(dir.path(), &host, &[]);
    let tar = dir.path().join("rootfs.tar");
    shoal_testkit::images::write_busybox_rootfs_tar(&tar);
    daemon
        .cli(&[
            "image",
            "import",
            "-c",
            "CMD [\"sh\"]",
            tar.to_str().unwrap(),
            "busybox:test",
        ])
        .ok();
    daemon
        .cli(&[
            "run",
            "-d",
            "--name",
            "echo",
            "-p",
            "8080:80",
            "busybox:test",
            "sh",
            "-c",
            "while true; do echo pong | nc -l -p 80; done",
        ])
        .ok();
    let inspect: serde_json::Value =
        serde_json::from_str(daemon.cli(&["inspect", "echo"]).ok()).unwrap();
    let ip = inspect[0]["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(ip.starts_with("172.30."), "{inspect}");
    let port = daemon.cli(&["port", "echo"]).ok().to_owned();
    assert!(port.contains("80/tcp -> 0.0.0.0:8080"), "{port}");

    // Through the published port on the host's loopback, and straight to the container.
    let mut answered = false;
    for _ in 0..50 {
        let out = host.exec(&["/bin/busybox", "nc", "-w", "2", "127.0.0.1", "8080"]);
        if out.stdout.contains("pong") {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answered, "no answer through 127.0.0.1:8080");
    // The container's `nc -l` serves one connection and is started again: between two, its
    // port is briefly closed, so the direct connection may need a retry too.
    let mut direct = None;
    for _ in 0..50 {
        let out = host.exec(&["/bin/busybox", "nc", "-w", "2", &ip, "80"]);
        if out.stdout.contains("pong") {
            direct = None;
            break;
        }
        direct = Some(out);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(direct.is_none(), "no answer from {ip}:80: {direct:?}");

    // Removal takes the container's address and port rule with it.
    daemon.cli(&["rm", "-f", "echo"]).ok();
    let rules = host.exec(&["nft", "list", "ruleset"]).stdout;
    assert!(!rules.contains("8080"), "{rules}");
}
