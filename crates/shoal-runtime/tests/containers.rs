//! Real containers (root only): busybox bundles run through the shim as the daemon runs them,
//! checked from inside (namespaces, mounts, capabilities, cgroups, seccomp) and from outside
//! (logs, exit records, OOM, re-adoption after the daemon's death).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_runtime::ShimClient;
use shoal_runtime::spec::{MountConfig, NetworkMode, Resources, SeccompMode};
use support::{Env, config, read_log, stderr_of, stdout_of};

#[test]
fn echo_hello_reaches_the_log() {
    require_root!();
    let env = Env::new();
    let (exit, log) = env.run("hello", config(&["sh", "-c", "echo hello; echo oops >&2"]));
    assert_eq!(exit.exit_code, 0);
    assert_eq!(exit.signal, None);
    assert!(!exit.oom_killed);
    assert_eq!(stdout_of(&log), "hello\n");
    assert_eq!(stderr_of(&log), "oops\n");
    // The shim removed its state and the cgroup on shutdown.
    assert!(!env.state_root.join("hello").exists());
    assert!(!cgroup_dir("memory", "shoal-test-hello").exists());
}

/// The test process's own cgroup dir for `controller`, joined with `rel`.
fn cgroup_dir(controller: &str, rel: &str) -> PathBuf {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = own
        .lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, c, path) = (p.next()?, p.next()?, p.next()?);
            c.split(',')
                .any(|x| x == controller)
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| "/".into());
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(path.trim_start_matches('/'))
        .join(rel)
}

#[test]
fn exit_codes_and_signals() {
    require_root!();
    let env = Env::new();
    let (exit, _) = env.run("exit3", config(&["sh", "-c", "exit 3"]));
    assert_eq!(exit.exit_code, 3);

    let mut r = env.spawn("killed", config(&["sleep", "100"])).unwrap();
    r.client().start().unwrap();
    assert_eq!(r.client().state().unwrap().status, "running");
    r.client().kill(libc::SIGKILL).unwrap();
    let exit = r.client().wait().unwrap();
    assert_eq!(exit.exit_code, 137);
    assert_eq!(exit.signal, Some(9));
    assert_eq!(r.client().state().unwrap().status, "stopped");
    // The record is durable.
    let on_disk = shoal_runtime::shim::read_exit_record(&env.state_root, "killed")
        .unwrap()
        .unwrap();
    assert_eq!(on_disk, exit);
    r.shutdown();
}

#[test]
fn missing_executable_is_a_clear_create_error() {
    require_root!();
    let env = Env::new();
    let err = env.spawn("nosuch", config(&["nosuch"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "exec: \"nosuch\": executable file not found in $PATH"
    );
    let err = env.spawn("nosuch2", config(&["/bin/nosuch"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "exec \"/bin/nosuch\": no such file or directory"
    );
    // Nothing left behind by the failed create.
    assert!(!env.state_root.join("nosuch").exists());
    assert!(!cgroup_dir("memory", "shoal-test-nosuch").exists());
}

#[test]
fn hostname_pid1_proc_and_readonly_sys() {
    require_root!();
    let env = Env::new();
    let mut c = config(&[
        "sh",
        "-c",
        "hostname; echo $$; test -r /proc/self/status && echo proc; \
         touch /sys/x 2>/dev/null || echo sys-ro; \
         grep -q '^sysfs /sys sysfs ro' /proc/mounts && echo sys-mounted-ro; \
         cat /proc/kcore | wc -c; ls /sys/firmware | wc -l; \
         echo x > /proc/sysrq-trigger 2>/dev/null || echo sysrq-ro; \
         ls /dev; readlink /dev/ptmx; pwd",
    ]);
    c.hostname = Some("box".into());
    c.cwd = Some("/work/dir".into());
    let (exit, log) = env.run("basics", c);
    let out = stdout_of(&log);
    assert_eq!(exit.exit_code, 0, "{out} {}", stderr_of(&log));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "box");
    assert_eq!(lines[1], "1", "the container's init is PID 1");
    assert_eq!(lines[2], "proc");
    assert_eq!(lines[3], "sys-ro");
    assert_eq!(lines[4], "sys-mounted-ro");
    assert_eq!(lines[5].trim(), "0", "/proc/kcore is masked");
    assert_eq!(lines[6].trim(), "0", "/sys/firmware is masked");
    assert_eq!(lines[7], "sysrq-ro");
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue",
    ] {
        assert!(lines.contains(&dev), "missing /dev/{dev} in {out}");
    }
    assert!(lines.contains(&"pts/ptmx"));
    assert_eq!(*lines.last().unwrap(), "/work/dir");
}

#[test]
fn docker_default_capabilities() {
    require_root!();
    let env = Env::new();
    let (exit, log) = env.run(
        "caps",
        config(&[
            "grep",
            "-E",
            "^Cap(Eff|Bnd|Prm|Inh)|NoNewPrivs",
            "/proc/self/status",
        ]),
    );
    assert_eq!(exit.exit_code, 0);
    let out = stdout_of(&log);
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapInh:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
}

#[test]
fn no_new_privileges_and_user_switch() {
    require_root!();
    let env = Env::new();
    let mut c = config(&[
        "sh",
        "-c",
        "id -u; id -g; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status",
    ]);
    c.user = Some("65534:65534".into());
    c.no_new_privileges = true;
    let (exit, log) = env.run("user", c);
    let out = stdout_of(&log);
    assert_eq!(exit.exit_code, 0, "{out}{}", stderr_of(&log));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "65534");
    assert_eq!(lines[1], "65534");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
}

#[test]
fn memory_and_pids_limits() {
    require_root!();
    let env = Env::new();
    let mut c = config(&[
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; cat /sys/fs/cgroup/pids/pids.max; \
         i=0; while [ $i -lt 20 ]; do sleep 3 & i=$((i+1)); done; echo spawned",
    ]);
    c.resources = Resources {
        memory: Some(32 << 20),
        pids_limit: Some(8),
        cpus: Some(0.5),
        cpu_shares: Some(512),
        ..Default::default()
    };
    let mut r = env.spawn("limits", c).unwrap();
    let cpu_dir = cgroup_dir("cpu", "shoal-test-limits");
    assert_eq!(
        std::fs::read_to_string(cpu_dir.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "50000"
    );
    assert_eq!(
        std::fs::read_to_string(cpu_dir.join("cpu.shares"))
            .unwrap()
            .trim(),
        "512"
    );
    r.client().start().unwrap();
    let exit = r.client().wait().unwrap();
    r.shutdown();
    let log = read_log(&env.log_path("limits"));
    let out = stdout_of(&log);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], (32u64 << 20).to_string());
    assert_eq!(lines[1], "8");
    assert!(
        stderr_of(&log).contains("can't fork"),
        "the pids limit stopped the forks: {log:?}"
    );
    // busybox sh gives up (status 2) when a fork fails.
    assert_eq!(exit.exit_code, 2);
    assert!(!cpu_dir.exists());
}

#[test]
fn oom_kill_is_reported() {
    require_root!();
    let env = Env::new();
    // dd allocates (and fills) a 64 MiB buffer: far past an 8 MiB limit.
    let mut c = config(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=4"]);
    c.resources.memory = Some(8 << 20);
    let (exit, log) = env.run("oom", c);
    assert!(exit.oom_killed, "{exit:?} {log:?}");
    assert_eq!(exit.exit_code, 137);
    assert_eq!(exit.signal, Some(9));

    // An OOM of a child (not the init) also counts, as in Docker.
    let mut c = config(&[
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/null bs=64M count=1; echo child-status $?",
    ]);
    c.resources.memory = Some(8 << 20);
    let (exit, log) = env.run("oom-child", c);
    assert!(exit.oom_killed, "{exit:?} {log:?}");
    assert_eq!(exit.exit_code, 0);
    assert!(stdout_of(&log).contains("child-status 137"));
}

#[test]
fn stop_escalates_to_sigkill_after_grace() {
    require_root!();
    let env = Env::new();
    let mut r = env
        .spawn(
            "stop",
            config(&["sh", "-c", "trap '' TERM; sleep 100 & wait; sleep 100"]),
        )
        .unwrap();
    r.client().start().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let exit = r
        .client()
        .stop(libc::SIGTERM, Duration::from_secs(1))
        .unwrap();
    let took = t.elapsed();
    assert_eq!(exit.exit_code, 137);
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // A container that honours SIGTERM stops at once.
    let mut r2 = env
        .spawn(
            "stop2",
            config(&[
                "sh",
                "-c",
                "trap 'exit 0' TERM; while true; do sleep 0.1; done",
            ]),
        )
        .unwrap();
    r2.client().start().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let exit = r2
        .client()
        .stop(libc::SIGTERM, Duration::from_secs(10))
        .unwrap();
    assert_eq!(exit.exit_code, 0);
    assert!(t.elapsed() < Duration::from_secs(2));
    r.shutdown();
    r2.shutdown();
}

#[test]
fn seccomp_denies_namespace_creation() {
    require_root!();
    let env = Env::new();
    let (exit, log) = env.run(
        "seccomp",
        config(&["sh", "-c", "unshare -n true; echo status $?"]),
    );
    assert_eq!(exit.exit_code, 0);
    assert!(stdout_of(&log).contains("status 1"), "{log:?}");
    assert!(
        stderr_of(&log).contains("Operation not permitted"),
        "{log:?}"
    );
    // Unconfined (and with CAP_SYS_ADMIN) the same command works.
    let mut c = config(&["sh", "-c", "unshare -n true; echo status $?"]);
    c.seccomp = SeccompMode::Unconfined;
    c.cap_add = vec!["SYS_ADMIN".into()];
    let (_, log) = env.run("seccomp-off", c);
    assert!(stdout_of(&log).contains("status 0"), "{log:?}");
}

#[test]
fn network_modes() {
    require_root!();
    let env = Env::new();
    let (_, log) = env.run("net-none", config(&["cat", "/proc/net/dev"]));
    let out = stdout_of(&log);
    let ifaces: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "a new netns has only lo: {out}");
    let mut c = config(&["readlink", "/proc/self/ns/net"]);
    c.network = NetworkMode::Host;
    let (_, log) = env.run("net-host", c);
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(stdout_of(&log).trim(), host.to_string_lossy());
}

#[test]
fn mounts_bind_readonly_and_tmpfs() {
    require_root!();
    let env = Env::new();
    let vol = env.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("in.txt"), "from-host\n").unwrap();
    let mut c = config(&[
        "sh",
        "-c",
        "cat /data/in.txt; echo out > /data/out.txt; echo w > /ro/x 2>/dev/null || echo ro-ok; \
         echo t > /scratch/t && cat /scratch/t; grep ' /scratch ' /proc/mounts | cut -d' ' -f3",
    ]);
    c.mounts = vec![
        MountConfig::Bind {
            source: vol.clone(),
            target: "/data".into(),
            readonly: false,
        },
        MountConfig::Bind {
            source: vol.clone(),
            target: "/ro".into(),
            readonly: true,
        },
        MountConfig::Tmpfs {
            target: "/scratch".into(),
            size_bytes: Some(1 << 20),
            mode: None,
            readonly: false,
        },
    ];
    c.readonly_rootfs = true;
    let (exit, log) = env.run("mounts", c);
    let out = stdout_of(&log);
    assert_eq!(exit.exit_code, 0, "{out}{}", stderr_of(&log));
    assert!(out.starts_with("from-host\nro-ok\nt\n"), "{out}");
    assert_eq!(
        std::fs::read_to_string(vol.join("out.txt")).unwrap(),
        "out\n"
    );
}

#[test]
fn log_rotation_by_size() {
    require_root!();
    let env = Env::new();
    let bundle = env.bundle(
        "rotate",
        config(&[
            "sh",
            "-c",
            "i=0; while [ $i -lt 400 ]; do echo line-$i; i=$((i+1)); done",
        ]),
    );
    let mut args = env.shim_args("rotate", &bundle, false);
    args.log.max_size = Some(4000);
    args.log.max_files = 3;
    let mut r = env.spawn_args(args).unwrap();
    r.client().start().unwrap();
    r.client().wait().unwrap();
    r.shutdown();
    let log = env.log_path("rotate");
    for p in [
        log.clone(),
        PathBuf::from(format!("{}.1", log.display())),
        PathBuf::from(format!("{}.2", log.display())),
    ] {
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(len > 0 && len <= 4000, "{} is {len} bytes", p.display());
    }
    assert!(!PathBuf::from(format!("{}.3", log.display())).exists());
    let last = stdout_of(&read_log(&log));
    assert!(last.ends_with("line-399\n"), "{last}");
}

#[test]
fn long_lines_are_split_at_16k() {
    require_root!();
    let env = Env::new();
    let (_, log) = env.run(
        "long",
        config(&["sh", "-c", "head -c 40000 /dev/zero | tr '\\0' a; echo"]),
    );
    let chunks: Vec<&String> = log.iter().map(|(_, l)| l).collect();
    assert_eq!(
        chunks.len(),
        3,
        "{:?}",
        chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
    );
    assert_eq!(chunks[0].len(), 16 * 1024);
    assert!(!chunks[0].ends_with('\n'));
    assert!(chunks[2].ends_with('\n'));
}

#[test]
fn tty_container() {
    require_root!();
    let env = Env::new();
    let mut c = config(&[
        "sh",
        "-c",
        "tty; test -t 0 && echo is-a-tty; stty size 2>/dev/null; echo $TERM",
    ]);
    c.tty = true;
    let mut r = env.spawn("tty", c).unwrap();
    r.client().resize(24, 100).unwrap();
    r.client().start().unwrap();
    let exit = r.client().wait().unwrap();
    r.shutdown();
    let out = stdout_of(&read_log(&env.log_path("tty")));
    assert_eq!(exit.exit_code, 0, "{out}");
    assert!(
        out.contains("/dev/console") || out.contains("/dev/pts/"),
        "{out}"
    );
    assert!(out.contains("is-a-tty\r\n"), "{out}");
    assert!(out.contains("xterm"), "{out}");
}

#[test]
fn exec_joins_the_running_container() {
    require_root!();
    let env = Env::new();
    let mut c = config(&["sleep", "100"]);
    c.hostname = Some("execbox".into());
    let mut r = env.spawn("exec", c).unwrap();
    r.client().start().unwrap();
    let out = Command::new(support::CLI)
        .args(["--root"])
        .arg(&env.state_root)
        .args([
            "exec",
            "exec",
            "sh",
            "-c",
            "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$; grep CapEff /proc/self/status",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "execbox");
    assert_eq!(lines[1].trim(), "sleep 100", "same pid namespace");
    assert_ne!(lines[2], "1");
    assert!(lines[3].ends_with("00000000a80425fb"));

    let code = Command::new(support::CLI)
        .arg("--root")
        .arg(&env.state_root)
        .args([
            "exec",
            "-u",
            "65534:65534",
            "exec",
            "sh",
            "-c",
            "id -u; exit 5",
        ])
        .output()
        .unwrap();
    assert_eq!(code.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&code.stdout), "65534\n");

    let tty = Command::new(support::CLI)
        .arg("--root")
        .arg(&env.state_root)
        .args([
            "exec",
            "-t",
            "exec",
            "sh",
            "-c",
            "test -t 1 && echo tty-yes",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(tty.status.success());
    assert!(String::from_utf8_lossy(&tty.stdout).contains("tty-yes"));

    let missing = Command::new(support::CLI)
        .arg("--root")
        .arg(&env.state_root)
        .args(["exec", "exec", "nosuch"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("executable file not found"));
    r.shutdown();
}

#[test]
fn shim_survives_daemon_death_and_is_readopted() {
    require_root!();
    let env = Env::new();
    let bundle = env.bundle("adopt", config(&["sh", "-c", "sleep 1; echo done"]));
    let args = env.shim_args("adopt", &bundle, false);
    let handshake = env.path().join("handshake");
    // A stand-in daemon: starts the shim, then lives on until we kill it.
    let mut daemon = Command::new("sh")
        .arg("-c")
        .arg(format!(
            // `exec`, so that killing the stand-in kills the sleep too: an orphaned sleep would
            // hold the test's output pipe open for its whole life.
            "\"$0\" \"$@\" > {}; exec sleep 1000",
            handshake.display()
        ))
        .arg(support::SHIM)
        .args(args.to_args())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&handshake).unwrap_or_default();
        if text.ends_with('\n') {
            break text;
        }
        assert!(Instant::now() < deadline, "no handshake");
        std::thread::sleep(Duration::from_millis(10));
    };
    let shim_pid: i32 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let client = ShimClient::connect(&args.socket).unwrap();
    client.start().unwrap();
    drop(client);
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim_pid), None).is_ok(),
        "the shim outlived the daemon"
    );
    // A new daemon re-adopts the shim by its socket and collects the exit.
    let client = ShimClient::connect(&args.socket).unwrap();
    let exit = client.wait().unwrap();
    assert_eq!(exit.exit_code, 0);
    assert_eq!(stdout_of(&read_log(&env.log_path("adopt"))), "done\n");
    let on_disk = shoal_runtime::shim::read_exit_record(&env.state_root, "adopt")
        .unwrap()
        .unwrap();
    assert_eq!(on_disk, exit);
    client.shutdown(false).unwrap();
    support::wait_gone(shim_pid);
    assert!(!args.socket.exists());
}

#[test]
fn shim_lingers_then_exits_keeping_exit_json() {
    require_root!();
    let env = Env::new();
    let bundle = env.bundle("linger", config(&["true"]));
    let mut args = env.shim_args("linger", &bundle, false);
    args.exit_timeout = Duration::from_secs(1);
    let shim = shoal_runtime::spawn_shim(&shoal_runtime::ShimOptions {
        binary: PathBuf::from(support::SHIM),
        args: args.clone(),
    })
    .unwrap();
    shim.client.start().unwrap();
    assert_eq!(shim.client.wait().unwrap().exit_code, 0);
    support::wait_gone(shim.shim_pid);
    let rec = shoal_runtime::shim::read_exit_record(&env.state_root, "linger").unwrap();
    assert_eq!(rec.unwrap().exit_code, 0);
    // What is left is removable through the library, as a restarted daemon would.
    shoal_runtime::Container::load(&env.state_root, "linger")
        .unwrap()
        .delete(false)
        .unwrap();
    assert!(!env.state_root.join("linger").exists());
}

#[test]
fn stats_pause_resume() {
    require_root!();
    let env = Env::new();
    let mut c = config(&["sh", "-c", "while true; do sleep 0.05; done"]);
    c.resources.memory = Some(64 << 20);
    let mut r = env.spawn("stats", c).unwrap();
    r.client().start().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let s = r.client().stats().unwrap();
    assert!(s.memory_usage_bytes > 0);
    assert_eq!(s.memory_limit_bytes, Some(64 << 20));
    assert!(s.pids_current >= 1);
    r.client().pause().unwrap();
    let frozen =
        std::fs::read_to_string(cgroup_dir("freezer", "shoal-test-stats").join("freezer.state"))
            .unwrap();
    assert_eq!(frozen.trim(), "FROZEN");
    r.client().resume().unwrap();
    r.shutdown();
}

#[test]
fn oci_command_line_lifecycle() {
    require_root!();
    let env = Env::new();
    let bundle = env.bundle("oci", config(&["sleep", "100"]));
    let root = env.path().join("oci-root");
    let cli = |args: &[&str]| {
        Command::new(support::CLI)
            .arg("--root")
            .arg(&root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .output()
            .unwrap()
    };
    let pid_file = env.path().join("oci.pid");
    // The container inherits create's stdio (as with runc): give it files, not our pipes.
    let create_err = env.path().join("create.err");
    let status = Command::new(support::CLI)
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle", bundle.to_str().unwrap(), "--pid-file"])
        .arg(&pid_file)
        .arg("oci")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&create_err).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&create_err).unwrap()
    );
    let state = |expect: &str| {
        let out = cli(&["state", "oci"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["status"], expect, "{v}");
        v
    };
    let v = state("created");
    assert_eq!(
        v["pid"].as_i64().unwrap().to_string(),
        std::fs::read_to_string(&pid_file).unwrap()
    );
    assert!(cli(&["start", "oci"]).status.success());
    state("running");
    assert!(
        !cli(&["delete", "oci"]).status.success(),
        "running needs --force"
    );
    assert!(cli(&["kill", "oci", "KILL"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = cli(&["state", "oci"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["status"] == "stopped" {
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(cli(&["delete", "oci"]).status.success());
    assert!(!root.join("oci").exists());
    assert!(!cgroup_dir("memory", "shoal-test-oci").exists());

    // `run` creates, starts, waits and deletes, exiting with the container's status.
    let bundle = env.bundle("oci-run", config(&["sh", "-c", "exit 7"]));
    let out = cli(&["run", "--bundle", bundle.to_str().unwrap(), "oci-run"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!root.join("oci-run").exists());
}

#[test]
fn overlay_rootfs_and_page_limit() {
    require_root!();
    let env = Env::new();
    let layers = env.path().join("layers");
    let lower = layers.join("base");
    std::fs::create_dir_all(&lower).unwrap();
    support::make_rootfs(&lower);
    // Enough long-named empty layers to push the options past one page even relative to their
    // common parent: the short-symlink fallback has to kick in.
    let mut lowers = Vec::new();
    for i in 0..60 {
        let d = layers.join(format!("{i:03}-{}", "x".repeat(100)));
        std::fs::create_dir_all(&d).unwrap();
        lowers.push(d);
    }
    lowers.push(lower.clone());
    let total: usize = lowers.iter().map(|p| p.as_os_str().len() + 1).sum();
    assert!(total > 4096, "{total}");
    let upper = env.path().join("upper");
    let work = env.path().join("work");
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();

    let bdir = env.path().join("bundle-overlay");
    let mut c = config(&[
        "sh",
        "-c",
        "echo new > /created; cat /created; ls /bin/busybox",
    ]);
    c.cgroups_path = Some("shoal-test-overlay".into());
    let spec = shoal_runtime::build_spec("overlay", &c, &lower).unwrap();
    let overlay = shoal_runtime::OverlayRootfs {
        lower: lowers,
        upper: upper.clone(),
        work: work.clone(),
    };
    shoal_runtime::Bundle::write(&bdir, &spec, Some(&overlay)).unwrap();
    let mut r = env
        .spawn_args(env.shim_args("overlay", &bdir, false))
        .unwrap();
    r.client().start().unwrap();
    assert_eq!(r.client().wait().unwrap().exit_code, 0);
    r.shutdown();
    let out = stdout_of(&read_log(&env.log_path("overlay")));
    assert_eq!(out, "new\n/bin/busybox\n");
    assert_eq!(
        std::fs::read_to_string(upper.join("created")).unwrap(),
        "new\n"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(bdir.to_str().unwrap()),
        "the overlay was unmounted"
    );
}

#[test]
fn overlay_relative_paths_past_a_page() {
    require_root!();
    let env = Env::new();
    // Content-addressed names under a long common prefix: too long absolute, fine relative.
    let base = env.path().join("y".repeat(200)).join("z".repeat(200));
    let mut lowers = Vec::new();
    for i in 0..45u32 {
        let d = base.join(format!("{i:064x}")).join("diff");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}")), i.to_string()).unwrap();
        lowers.push(d);
    }
    let abs: usize = lowers.iter().map(|p| p.as_os_str().len() + 1).sum();
    assert!(abs > 4096, "{abs}");
    let upper = base.join("upper");
    let work = base.join("work");
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let target = env.path().join("merged");
    shoal_runtime::container::mount_overlay_rootfs(&lowers, &upper, &work, &target).unwrap();
    let seen = std::fs::read_dir(&target).unwrap().count();
    shoal_runtime::container::unmount_overlay_rootfs(&target).unwrap();
    assert_eq!(seen, 45);
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "unmounted");
    assert!(!env.path().join(".merged-layers").exists());
}

#[test]
fn user_namespace_maps_root() {
    require_root!();
    let env = Env::new();
    // The remapped root owns nothing on the host: it must be able to walk to the rootfs.
    std::fs::set_permissions(
        env.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut c = config(&[
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; ls /dev/null && echo dev-ok; hostname",
    ]);
    c.userns = Some(shoal_runtime::spec::UsernsMapping {
        host_uid: 100_000,
        host_gid: 100_000,
        size: 65_536,
    });
    c.hostname = Some("userns".into());
    let (exit, log) = env.run("userns", c);
    let out = stdout_of(&log);
    assert_eq!(exit.exit_code, 0, "{out}{}", stderr_of(&log));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0");
    let map: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(map, ["0", "100000", "65536"]);
    assert!(out.contains("dev-ok"), "{out}");
    assert!(out.contains("userns"), "{out}");
}
