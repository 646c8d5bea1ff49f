//! Network namespace references (a bind-mounted path or a process) and running code inside one.
//!
//! A network namespace is entered per thread (`setns(CLONE_NEWNET)` affects only the calling
//! thread), so code that must run inside one runs on a short-lived thread of its own: sockets it
//! opens stay in that namespace after the thread ends.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use serde::{Deserialize, Serialize};

use crate::error::NetError;

/// Where `ip netns add NAME` bind-mounts its namespaces.
pub const NAMED_NETNS_DIR: &str = "/run/netns";

/// A network namespace: a path to an nsfs file, or the namespace of a process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Netns {
    /// An nsfs file, e.g. `/run/netns/NAME` or `/proc/PID/ns/net`.
    Path(PathBuf),
    /// The network namespace of the process `pid`.
    Pid(u32),
}

impl Netns {
    /// The namespace bind-mounted at `path`.
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Netns::Path(path.into())
    }

    /// The namespace of process `pid`.
    pub fn pid(pid: u32) -> Self {
        Netns::Pid(pid)
    }

    /// The namespace `ip netns add NAME` created.
    pub fn named(name: &str) -> Self {
        Netns::Path(Path::new(NAMED_NETNS_DIR).join(name))
    }

    /// The nsfs path of the namespace.
    pub fn ns_path(&self) -> PathBuf {
        match self {
            Netns::Path(p) => p.clone(),
            Netns::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
        }
    }

    /// Opens the namespace (the descriptor keeps it alive while open).
    pub fn open(&self) -> Result<File, NetError> {
        let path = self.ns_path();
        File::open(&path).map_err(|source| NetError::Netns { path, source })
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result. The
    /// calling thread's namespace is untouched.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let file = self.open()?;
        let path = self.ns_path();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| NetError::Netns {
                        path: path.clone(),
                        source: errno.into(),
                    })?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.ns_path().display())
    }
}

/// Enters `netns` on the calling thread. Only for threads that stay in that namespace for the
/// rest of their life (test harnesses, per-namespace worker threads).
pub fn enter_on_this_thread(netns: &Netns) -> Result<(), NetError> {
    let file = netns.open()?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| NetError::Netns {
        path: netns.ns_path(),
        source: errno.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(Netns::named("x").ns_path(), PathBuf::from("/run/netns/x"));
        assert_eq!(Netns::pid(42).ns_path(), PathBuf::from("/proc/42/ns/net"));
        assert_eq!(Netns::path("/tmp/n").to_string(), "/tmp/n");
        let err = Netns::path("/nonexistent/ns")
            .open()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("network namespace /nonexistent/ns: "),
            "{err}"
        );
    }

    #[test]
    fn run_in_own_namespace_returns_the_result() {
        // Our own namespace: entering it changes nothing, and needs no privilege beyond
        // CAP_SYS_ADMIN; skip quietly without it.
        let me = Netns::pid(std::process::id());
        match me.run(|| 7) {
            Ok(v) => assert_eq!(v, 7),
            Err(e) => eprintln!("skipped: {e}"),
        }
    }
}
