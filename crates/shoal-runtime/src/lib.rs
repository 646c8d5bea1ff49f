//! shoal-runtime: the node-local container runtime (spec building, namespaces, rootfs, cgroups,
//! seccomp, exec, and the per-container shim with its client).
//!
//! It knows nothing of clusters, tasks or Raft: the agent and a standalone `shoal run` use it alike.
//!
//! Process model (see `docs/architecture.md`): the async daemon never forks containers itself. It
//! writes a bundle ([`container::Bundle::write`]) and spawns one `shoal-shim` per container
//! ([`shim::spawn_shim`]); the single-threaded shim calls [`container::create`], holds the
//! container's stdio, writes its json-file log, reaps it and records its exit in `exit.json`. The
//! daemon talks to shims with [`shim::ShimClient`], and re-adopts them by socket path after a
//! restart.

pub mod caps;
pub mod cgroups;
pub mod container;
pub mod exec;
pub mod oci_cli;
pub mod paths;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod timefmt;

pub use container::{Bundle, Container, ContainerError, OverlayRootfs, Stdio, create};
pub use shim::{ExitRecord, ShimClient, ShimError, ShimOptions, spawn_shim};
pub use spec::{ContainerConfig, NetworkMode, SpecError, build_spec};

/// Every error this crate returns, for callers that want one type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error(transparent)]
    Container(#[from] container::ContainerError),
    #[error(transparent)]
    Shim(#[from] shim::ShimError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
}
