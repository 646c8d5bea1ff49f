//! Self-tests of the multi-host harness: hosts reach each other and nothing else, partitions
//! are one-way until healed, isolation cuts a host off, crashed daemons restart on their roots,
//! clusters run side by side, and nothing of a cluster survives its drop, a panic, or a crash.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_testkit::cluster::{Cluster, Host};

/// How long one connection attempt may take; negative checks wait this long at most.
const ATTEMPT: Duration = Duration::from_secs(1);
/// How long a positive check keeps trying (links coming up, ARP).
const SETTLE: Duration = Duration::from_secs(10);

fn shoal_built() -> bool {
    if std::env::var_os("SHOAL_BIN").is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let built = exe.parent().and_then(Path::parent).is_some_and(|profile| {
        profile.join("shoal").exists() && profile.join("shoal-shim").exists()
    });
    if !built {
        eprintln!("skipped: shoal and shoal-shim are not built (cargo build -p shoal)");
    }
    built
}

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the cluster harness needs root");
        return false;
    }
    for tool in ["ip", "nft", "nsenter"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            eprintln!("skipped: {tool} is missing");
            return false;
        }
    }
    shoal_built()
}

/// Polls `check` until it holds (true) or `limit` passes (false).
fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[track_caller]
fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A listener on every host, kept open for the test (connections complete in its backlog), by
/// host name.
struct Listeners(Vec<(String, String, TcpListener)>);

impl Listeners {
    fn on<'a>(hosts: impl Iterator<Item = &'a Host>) -> Listeners {
        Listeners(
            hosts
                .map(|h| {
                    let listener = h.listen(0);
                    let port = listener.local_addr().unwrap().port();
                    (h.name.clone(), h.addr(port), listener)
                })
                .collect(),
        )
    }

    fn addr(&self, host: &str) -> &str {
        &self.0.iter().find(|(name, ..)| name == host).unwrap().1
    }
}

#[track_caller]
fn assert_reaches(cluster: &Cluster, listeners: &Listeners, from: &str, to: &str) {
    let addr = listeners.addr(to);
    wait_for(&format!("{from} to reach {to} at {addr}"), SETTLE, || {
        cluster.host(from).can_connect(addr, ATTEMPT)
    });
}

#[track_caller]
fn assert_cut(cluster: &Cluster, listeners: &Listeners, from: &str, to: &str) {
    let addr = listeners.addr(to);
    assert!(
        !cluster.host(from).can_connect(addr, ATTEMPT),
        "{from} still reaches {to} at {addr}"
    );
}

fn cluster_of(names: &[&str]) -> Cluster {
    let mut cluster = Cluster::new();
    for name in names {
        cluster.add_host(name, &[]);
    }
    cluster
}

#[test]
fn hosts_reach_each_other_and_nothing_else() {
    if !can_run() {
        return;
    }
    let cluster = cluster_of(&["a", "b", "c"]);
    let listeners = Listeners::on(cluster.hosts());
    for from in ["a", "b", "c"] {
        for to in ["a", "b", "c"] {
            assert_reaches(&cluster, &listeners, from, to);
        }
    }

    let subnet = cluster.subnet().octets();
    let net_start = format!("{}.{}.{}.", subnet[0], subnet[1], subnet[2]);
    for host in cluster.hosts() {
        assert!(host.ip.to_string().starts_with(&net_start), "{}", host.ip);
        host.cli(&["info"]).ok();
        // The daemon itself runs inside the host's namespace.
        let pid = host.daemon.pid().unwrap();
        let daemon_netns = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
        let host_netns = std::fs::metadata(format!("/run/netns/{}", host.netns())).unwrap();
        assert_eq!(daemon_netns.ino(), host_netns.ino(), "{}", host.name);
        // Only loopback and the veth into the underlay, and no route beyond the subnet.
        let links = host.exec(&["ip", "-o", "link", "show"]);
        let names: Vec<&str> = links
            .ok()
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap())
            .collect();
        assert_eq!(names, ["lo", "eth0"], "{links:?}");
        let routes = host.exec(&["ip", "-4", "route", "show"]);
        let routes: Vec<&str> = routes.ok().lines().collect();
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert!(routes[0].starts_with(&format!("{net_start}0/24 dev eth0")));
    }

    // The real namespace holds none of the cluster's addresses.
    let root = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&root.stdout).contains(&format!(" {net_start}")));
}

#[test]
fn a_partition_is_one_way_until_healed() {
    if !can_run() {
        return;
    }
    let mut cluster = cluster_of(&["a", "b", "c"]);
    let listeners = Listeners::on(cluster.hosts());
    assert_reaches(&cluster, &listeners, "a", "b");

    // A connection a opened before the cut carries nothing while it lasts. Its own listener:
    // the others' backlogs hold the closed connections of earlier checks.
    let quiet = cluster.host("b").listen(0);
    let quiet_addr = quiet.local_addr().unwrap();
    let mut stream = cluster
        .host("a")
        .in_netns(|| std::net::TcpStream::connect_timeout(&quiet_addr, ATTEMPT).unwrap());
    let (mut accepted, _) = quiet.accept().unwrap();
    accepted.set_read_timeout(Some(ATTEMPT)).unwrap();

    cluster.partition(&["a"], &["b"]);
    assert_cut(&cluster, &listeners, "a", "b");
    assert_reaches(&cluster, &listeners, "b", "a");
    assert_reaches(&cluster, &listeners, "a", "c");
    assert_reaches(&cluster, &listeners, "c", "b");
    stream.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    assert!(
        accepted.read_exact(&mut buf).is_err(),
        "data crossed the partition"
    );

    // Swapped: now a symmetric cut.
    cluster.partition(&["b"], &["a"]);
    assert_cut(&cluster, &listeners, "a", "b");
    assert_cut(&cluster, &listeners, "b", "a");
    assert_reaches(&cluster, &listeners, "c", "a");

    cluster.heal();
    assert_reaches(&cluster, &listeners, "a", "b");
    assert_reaches(&cluster, &listeners, "b", "a");
    // TCP retransmits what the cut held back.
    accepted.set_read_timeout(Some(SETTLE * 2)).unwrap();
    accepted.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
}

#[test]
fn isolate_cuts_a_host_off_until_healed() {
    if !can_run() {
        return;
    }
    let mut cluster = cluster_of(&["a", "b", "c"]);
    let listeners = Listeners::on(cluster.hosts());
    assert_reaches(&cluster, &listeners, "a", "b");

    cluster.isolate("a");
    assert_cut(&cluster, &listeners, "a", "b");
    assert_cut(&cluster, &listeners, "b", "a");
    assert_cut(&cluster, &listeners, "c", "a");
    assert_reaches(&cluster, &listeners, "b", "c");
    assert_reaches(&cluster, &listeners, "a", "a");
    // The daemon itself is unaffected: its socket is a file.
    cluster.host("a").cli(&["info"]).ok();

    cluster.heal();
    for other in ["b", "c"] {
        assert_reaches(&cluster, &listeners, "a", other);
        assert_reaches(&cluster, &listeners, other, "a");
    }
}

#[test]
fn a_killed_or_stopped_daemon_restarts_on_its_roots() {
    if !can_run() {
        return;
    }
    let mut cluster = cluster_of(&["a", "b"]);
    cluster.host("a").cli(&["volume", "create", "kept"]).ok();
    let first_pid = cluster.host("a").daemon.pid();

    cluster.kill9("a");
    assert_ne!(cluster.host("a").cli(&["info"]).code, 0);
    // The other host does not notice.
    cluster.host("b").cli(&["info"]).ok();
    cluster.restart("a");
    assert_ne!(cluster.host("a").daemon.pid(), first_pid);
    cluster.host("a").cli(&["info"]).ok();
    assert!(
        cluster
            .host("a")
            .cli(&["volume", "ls"])
            .ok()
            .contains("kept"),
        "the data root was not kept"
    );

    cluster.stop("a");
    assert_ne!(cluster.host("a").cli(&["info"]).code, 0);
    cluster.restart("a");
    assert!(
        cluster
            .host("a")
            .cli(&["volume", "ls"])
            .ok()
            .contains("kept")
    );
    assert!(
        cluster.host("a").daemon.log().contains("daemon ready"),
        "{}",
        cluster.host("a").daemon.log()
    );
}

#[test]
fn two_clusters_in_one_process_do_not_collide() {
    if !can_run() {
        return;
    }
    // Made at the same time, so that their reservations race.
    let (one, two) = std::thread::scope(|scope| {
        let one = scope.spawn(|| cluster_of(&["a", "b"]));
        let two = scope.spawn(|| cluster_of(&["a", "b"]));
        (one.join().unwrap(), two.join().unwrap())
    });
    assert_ne!(one.name(), two.name());
    assert_ne!(one.subnet(), two.subnet());
    assert_ne!(one.dir(), two.dir());
    assert_ne!(one.host("a").netns(), two.host("a").netns());
    assert_ne!(one.host("a").cgroup_parent(), two.host("a").cgroup_parent());

    let in_one = Listeners::on(one.hosts());
    let in_two = Listeners::on(two.hosts());
    assert_reaches(&one, &in_one, "a", "b");
    assert_reaches(&two, &in_two, "a", "b");
    // Separate underlays: no path from one to the other.
    assert!(!one.host("a").can_connect(in_two.addr("b"), ATTEMPT));
    assert!(!two.host("a").can_connect(in_one.addr("b"), ATTEMPT));

    let (name, dir) = (one.name(), one.dir());
    drop(one);
    assert_nothing_left(&name, &dir);
    // The other one is untouched.
    assert_reaches(&two, &in_two, "b", "a");
    two.host("a").cli(&["info"]).ok();
}

#[test]
fn drop_removes_everything_also_a_crashed_daemons_container() {
    if !can_run() {
        return;
    }
    if !Path::new(shoal_testkit::images::BUSYBOX).exists() {
        eprintln!("skipped: {} is missing", shoal_testkit::images::BUSYBOX);
        return;
    }
    let mut cluster = cluster_of(&["a"]);
    let (name, dir) = (cluster.name(), cluster.dir());
    let host = cluster.host("a");
    let tar = dir.join("rootfs.tar");
    shoal_testkit::images::write_busybox_rootfs_tar(&tar);
    host.cli(&["image", "import", tar.to_str().unwrap(), "busybox:test"])
        .ok();
    let id = host
        .cli(&["run", "-d", "busybox:test", "sleep", "600"])
        .ok()
        .trim()
        .to_owned();

    // The container's cgroup is under the host's parent, and `top` finds it there.
    let parent = host.cgroup_parent().trim_start_matches('/').to_owned();
    let in_parent: Vec<PathBuf> = cgroup_mounts()
        .into_iter()
        .map(|m| m.join(&parent).join(&id))
        .filter(|p| p.is_dir())
        .collect();
    assert!(!in_parent.is_empty(), "no cgroup {parent}/{id}");
    assert!(
        !cgroup_mounts()
            .iter()
            .any(|m| m.join("shoal").join(&id).exists()),
        "the container landed under /shoal"
    );
    let top = host.cli(&["top", &id]);
    assert!(top.ok().contains("sleep"), "{top:?}");

    // A crash leaves the shim and the container running; drop must still get rid of them.
    cluster.kill9("a");
    drop(cluster);
    assert_nothing_left(&name, &dir);
}

#[test]
fn a_panicking_test_still_cleans_up() {
    if !can_run() {
        return;
    }
    let made = std::sync::Mutex::new(None);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cluster = cluster_of(&["a", "b"]);
        *made.lock().unwrap() = Some((cluster.name(), cluster.dir()));
        panic!("deliberate failure inside a cluster test");
    }));
    assert!(outcome.is_err());
    let (name, dir) = made.into_inner().unwrap().expect("the cluster was made");
    assert_nothing_left(&name, &dir);
}

#[test]
fn new_removes_what_a_dead_run_left() {
    if !can_run() {
        return;
    }
    // A pid that no longer runs.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();

    let name = format!("shoaltk-{dead}-0");
    let dir = PathBuf::from(format!("/tmp/stk-{}-0", base36(dead)));
    let host_netns = format!("{name}-a");
    for netns in [&name, &host_netns] {
        let out = Command::new("ip")
            .args(["netns", "add", netns])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let cgroup = cgroup_mounts()[0].join(&name).join("a");
    std::fs::create_dir_all(&cgroup).unwrap();
    std::fs::create_dir_all(dir.join("0/data")).unwrap();
    std::fs::create_dir_all("/run/shoaltk").unwrap();
    std::fs::write(format!("/run/shoaltk/{name}"), "254.254\n").unwrap();
    // Something still running in the dead run's host namespace.
    // Its output goes nowhere: a stray child must never hold the test's stdout open.
    let mut sleeper = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{host_netns}"))
        .args(["--", "sleep", "600"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Only once it is inside the namespace is it the dead run's leftover; before that, the
    // sweep cannot know it.
    let netns_inode = std::fs::metadata(format!("/run/netns/{host_netns}"))
        .unwrap()
        .ino();
    let inside = wait_until(SETTLE, || {
        std::fs::metadata(format!("/proc/{}/ns/net", sleeper.id()))
            .is_ok_and(|m| m.ino() == netns_inode)
            && std::fs::read_to_string(format!("/proc/{}/comm", sleeper.id()))
                .is_ok_and(|comm| comm.trim() == "sleep")
    });
    if !inside {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        panic!("the sleeper never entered {host_netns}");
    }

    drop(Cluster::new());

    let killed = wait_until(SETTLE, || sleeper.try_wait().unwrap().is_some());
    if !killed {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        panic!("the leftover sleeper was not killed by the sweep");
    }
    assert_nothing_left(&name, &dir);
}

#[test]
fn a_bad_cgroup_parent_is_refused() {
    if !shoal_built() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (parent, why) in [
        ("shoal", "not absolute"),
        ("/shoal/../etc", "\"..\""),
        ("/", "root"),
    ] {
        let out = Command::new(shoal_testkit::shoal_binary())
            .arg("daemon")
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", dir.path().join("s.sock").display()))
            .args(["--bridge", "none", "--cgroup-parent", parent])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{parent}: {stderr}");
        assert!(stderr.contains(why), "{parent}: {stderr}");
    }
}

fn base36(mut value: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(value % 36) as usize]);
        value /= 36;
        if value == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

/// Mount points of the cgroup hierarchies, read independently of the harness.
fn cgroup_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - cgroup ") || l.contains(" - cgroup2 "))
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .collect()
}

/// Nothing of the cluster `name` with directory `dir` remains: namespace, cgroup, process,
/// mount, directory or reservation.
#[track_caller]
fn assert_nothing_left(name: &str, dir: &Path) {
    let namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n == name || n.starts_with(&format!("{name}-")))
        .collect();
    assert!(namespaces.is_empty(), "namespaces left: {namespaces:?}");

    let cgroups: Vec<PathBuf> = cgroup_mounts()
        .into_iter()
        .map(|m| m.join(name))
        .filter(|p| p.exists())
        .collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");

    let dir_text = dir.to_string_lossy().into_owned();
    let cgroup_text = format!("/{name}/");
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // A zombie is gone but for its exit status, which its parent may not collect soon.
        if stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
        {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&dir_text) || cgroup.contains(&cgroup_text) {
            processes.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    assert!(processes.is_empty(), "processes left: {processes:?}");

    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir_text))
        .map(str::to_owned)
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(!dir.exists(), "{} is left", dir.display());
    assert!(
        !Path::new("/run/shoaltk").join(name).exists(),
        "the reservation of {name} is left"
    );
}
