//! The container start benchmark, side by side in one run (root only; `--nocapture` shows it):
//! `shoal run --rm IMAGE true` end to end through the CLI and daemon, the runtime alone
//! (`shoal runtime run`) on one bundle made from the same image, and Debian's `runc run` and
//! `crun run` on that same bundle; medians of `RUNS`. Then an idle shim's PSS and the daemon's RSS.
//!
//! crun refuses hybrid cgroup hosts (this one has v1 controllers plus a v2 mount holding
//! `hugetlb`), so it runs in a private mount namespace without the v2 mount: it still does its
//! full v1 cgroup work. Setting up that namespace happens inside its measured time (~0.1 ms).
// `pre_exec` is unsafe by signature; the hook only makes syscalls.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_testkit::Daemon;

const RUNS: usize = 20;
const IDLE_CONTAINERS: usize = 10;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn installed(binary: &str) -> Option<String> {
    std::env::var("PATH").ok()?.split(':').find_map(|dir| {
        let path = Path::new(dir).join(binary);
        path.exists().then(|| path.display().to_string())
    })
}

/// Times `RUNS` runs of an OCI runtime's `run` verb on `bundle`; `None` (with the reason
/// printed) if one fails.
fn time_oci_run(
    runtime: &[String],
    root: &Path,
    bundle: &Path,
    prefix: &str,
    private_cgroup_view: bool,
) -> Option<Duration> {
    let mut samples = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let id = format!("{prefix}-{i}");
        let mut command = Command::new(&runtime[0]);
        command
            .args(&runtime[1..])
            .arg("--root")
            .arg(root)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if private_cgroup_view {
            // SAFETY: runs in the forked child before exec; only async-signal-safe syscalls.
            unsafe {
                command.pre_exec(hide_cgroup_v2_mount);
            }
        }
        let started = Instant::now();
        let out = command.output().ok()?;
        samples.push(started.elapsed());
        if !out.status.success() {
            eprintln!(
                "  {} run failed ({}): {}",
                runtime[0],
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
    }
    Some(median(samples))
}

/// A private mount namespace without `/sys/fs/cgroup/unified`, so crun sees a v1-only host.
fn hide_cgroup_v2_mount() -> std::io::Result<()> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    match umount2("/sys/fs/cgroup/unified", MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn proc_field_kb(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Pids of processes whose command line mentions `needle`.
fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn container_start_side_by_side() {
    if !nix::unistd::geteuid().is_root() || !Path::new(shoal_testkit::images::BUSYBOX).exists() {
        eprintln!("skipped: needs root and busybox-static");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(dir.path(), &["--bridge", "none"]);
    let tar = dir.path().join("rootfs.tar");
    shoal_testkit::images::write_busybox_rootfs_tar(&tar);
    let out = daemon.cli(&["image", "import", tar.to_str().unwrap(), "busybox:bench"]);
    assert!(out.ok().starts_with("sha256:"), "{out:?}");

    // End to end, as a user types it: a CLI process, the daemon, a shim, the container.
    for _ in 0..2 {
        daemon.cli(&["run", "--rm", "busybox:bench", "true"]).ok();
    }
    let mut end_to_end = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        let out = daemon.cli(&["run", "--rm", "--network", "none", "busybox:bench", "true"]);
        end_to_end.push(started.elapsed());
        assert_eq!(out.code, 0, "{out:?}");
    }
    let end_to_end = median(end_to_end);

    // One bundle from the same image for every OCI runtime.
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(status.success());
    let config = shoal_runtime::spec::ContainerConfig {
        args: vec!["true".into()],
        cgroups_path: Some("/shoal-bench/oci".into()),
        ..Default::default()
    };
    let spec = shoal_runtime::spec::build_spec("bench", &config, &rootfs).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();

    let shoal = shoal_testkit::shoal_binary().display().to_string();
    let runtime_alone = time_oci_run(
        &[shoal, "runtime".into()],
        &dir.path().join("root-shoal"),
        &bundle,
        "shoal",
        false,
    )
    .expect("shoal runtime run must work on its own bundle");
    let mut peers = Vec::new();
    for (name, private_view) in [("runc", false), ("crun", true)] {
        match installed(name) {
            Some(binary) => {
                let root = dir.path().join(format!("root-{name}"));
                if let Some(d) = time_oci_run(&[binary], &root, &bundle, name, private_view) {
                    peers.push((name, d));
                }
            }
            None => eprintln!("  {name}: not installed"),
        }
    }

    // Idle: running containers' shims and the daemon holding them. PSS shares each page among
    // the processes mapping it, so the shim binary's text counts once across the host.
    let ids: Vec<String> = (0..IDLE_CONTAINERS)
        .map(|_| {
            daemon
                .cli(&[
                    "run",
                    "-d",
                    "--network",
                    "none",
                    "busybox:bench",
                    "sleep",
                    "60",
                ])
                .ok()
                .trim()
                .to_owned()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let shim_pss: Vec<u64> = ids
        .iter()
        .flat_map(|id| pids_with_cmdline(id))
        .map(|pid| proc_field_kb(&format!("/proc/{pid}/smaps_rollup"), "Pss:"))
        .filter(|&pss| pss > 0)
        .collect();
    let daemon_rss = proc_field_kb(&format!("/proc/{}/status", daemon.pid().unwrap()), "VmRSS:");
    for id in &ids {
        daemon.cli(&["rm", "-f", id]).ok();
    }
    assert_eq!(shim_pss.len(), IDLE_CONTAINERS, "one shim per container");
    let mean_shim_pss = shim_pss.iter().sum::<u64>() / shim_pss.len() as u64;

    eprintln!("container start, median of {RUNS} (create + start + wait of `true`):");
    eprintln!(
        "  shoal run --rm (CLI + daemon + shim) {:>6.1} ms",
        ms(end_to_end)
    );
    eprintln!(
        "  shoal runtime run (runtime alone)    {:>6.1} ms",
        ms(runtime_alone)
    );
    for (name, d) in &peers {
        eprintln!(
            "  {name} run                             {:>6.1} ms   shoal run / {name} = {:.2}, runtime alone / {name} = {:.2}",
            ms(*d),
            ms(end_to_end) / ms(*d),
            ms(runtime_alone) / ms(*d)
        );
    }
    eprintln!(
        "{IDLE_CONTAINERS} idle containers: shim PSS {mean_shim_pss} kB each (mean), daemon RSS {daemon_rss} kB"
    );
}
