//! Measurements (root only; run with `--nocapture` to see them): median create+start+wait of
//! `true` through the shim, through `shoal-runtime run`, and through `runc run` / `crun run` when
//! installed, on the same bundle; and the idle shim's PSS from `/proc/<pid>/smaps_rollup`.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Env, config};

const RUNS: usize = 20;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn which(bin: &str) -> Option<String> {
    std::env::var("PATH").ok()?.split(':').find_map(|d| {
        let p = Path::new(d).join(bin);
        p.exists().then(|| p.display().to_string())
    })
}

/// Runs an OCI runtime's `run` verb `RUNS` times on `bundle`.
fn time_oci(
    bin: &str,
    global: &[&str],
    root: &Path,
    bundle: &Path,
    prefix: &str,
) -> Option<Duration> {
    let mut times = Vec::new();
    for i in 0..RUNS {
        let id = format!("{prefix}-{i}");
        let t = Instant::now();
        let out = Command::new(bin)
            .args(global)
            .arg("--root")
            .arg(root)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .ok()?;
        times.push(t.elapsed());
        if !out.status.success() {
            eprintln!(
                "{bin} run failed ({}): {}; skipping it",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            let _ = Command::new(bin)
                .arg("--root")
                .arg(root)
                .args(["delete", "-f", &id])
                .status();
            return None;
        }
    }
    Some(median(times))
}

#[test]
fn create_start_wait_latency_and_shim_pss() {
    require_root!();
    let env = Env::new();

    let mut ours = Vec::new();
    for i in 0..RUNS {
        let id = format!("bench-{i}");
        let bundle = env.bundle(&id, config(&["true"]));
        let t = Instant::now();
        let mut r = env.spawn_args(env.shim_args(&id, &bundle, false)).unwrap();
        r.client().start().unwrap();
        assert_eq!(r.client().wait().unwrap().exit_code, 0);
        ours.push(t.elapsed());
        r.shutdown();
    }
    let ours = median(ours);
    eprintln!(
        "median create+start+wait of `true`, {RUNS} runs: shoal shim {:.1} ms",
        ms(ours)
    );

    // The same bundle for every OCI command line (its cgroup is per-id below our own).
    let bundle = env.bundle("bench-oci", config(&["true"]));
    let plain = time_oci(
        support::CLI,
        &[],
        &env.path().join("root-shoal"),
        &bundle,
        "plain",
    );
    if let Some(p) = plain {
        eprintln!("  shoal-runtime run (no shim): {:.1} ms", ms(p));
    }
    for rt in ["runc", "crun"] {
        match which(rt) {
            Some(bin) => {
                let root = env.path().join(format!("root-{rt}"));
                let global: &[&str] = &[];
                if let Some(d) = time_oci(&bin, global, &root, &bundle, rt) {
                    eprintln!(
                        "  {rt} run: {:.1} ms (shoal shim / {rt} = {:.2}, shoal-runtime run / {rt} = {:.2})",
                        ms(d),
                        ms(ours) / ms(d),
                        plain.map(|p| ms(p) / ms(d)).unwrap_or(f64::NAN)
                    );
                }
            }
            None => eprintln!("  {rt}: not installed (apt-get install -y {rt})"),
        }
    }

    // An idle shim: container running `sleep`, nothing logging.
    let mut r = env.spawn("pss", config(&["sleep", "30"])).unwrap();
    r.client().start().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let rollup =
        std::fs::read_to_string(format!("/proc/{}/smaps_rollup", r.shim.shim_pid)).unwrap();
    let field = |name: &str| -> u64 {
        rollup
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    eprintln!(
        "idle shim {}: Pss {} kB, Rss {} kB, Pss_Anon {} kB",
        std::env::var("SHOAL_SHIM_BIN").unwrap_or_else(|_| support::SHIM.to_string()),
        field("Pss:"),
        field("Rss:"),
        field("Pss_Anon:")
    );
    assert!(field("Pss:") > 0);
    r.shutdown();
}
