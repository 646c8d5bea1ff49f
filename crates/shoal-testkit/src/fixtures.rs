//! Fixtures the container end-to-end tests share: the check that skips them where containers
//! cannot run, a daemon holding the busybox test image, and a bounded wait.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::Daemon;

/// The reference [`daemon_with_busybox`] imports the image as.
pub const BUSYBOX_IMAGE: &str = "busybox:test";

/// Whether this machine can run the container tests (root, and Debian's busybox-static for the
/// test image); prints why not when it cannot.
pub fn can_run_containers() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: containers need root");
        return false;
    }
    if !Path::new(crate::images::BUSYBOX).exists() {
        eprintln!("skipped: {} is missing", crate::images::BUSYBOX);
        return false;
    }
    true
}

/// Imports the busybox rootfs (written to `dir/rootfs.tar`) as `reference`, with `CMD ["sh"]`
/// and the given extra `--change` instructions.
pub fn import_busybox(daemon: &Daemon, dir: &Path, reference: &str, changes: &[&str]) {
    let tar = dir.join("rootfs.tar");
    if !tar.exists() {
        crate::images::write_busybox_rootfs_tar(&tar);
    }
    let mut args = vec!["image", "import", "-c", "CMD [\"sh\"]"];
    for change in changes {
        args.extend(["-c", change]);
    }
    args.extend([tar.to_str().expect("utf-8 path"), reference]);
    let out = daemon.cli(&args);
    assert!(out.ok().trim().starts_with("sha256:"), "{out:?}");
}

/// A daemon without a bridge (tests never touch the host's network) holding [`BUSYBOX_IMAGE`].
pub fn daemon_with_busybox(dir: &Path) -> Daemon {
    let daemon = Daemon::start_in(dir, &["--bridge", "none"]);
    import_busybox(&daemon, dir, BUSYBOX_IMAGE, &[]);
    daemon
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
