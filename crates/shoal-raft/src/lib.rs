//! shoal's replicated log: the managers' Raft, built on openraft (pinned, and wrapped entirely so
//! none of its types appear in this API) with redb storage.
//!
//! The log is ignorant of what it replicates: the application plugs in a [`StateMachine`] and
//! proposes opaque byte strings with [`ReplicatedLog::propose`]. Peers talk through a
//! [`PeerNetwork`]: [`LocalNetwork`] in process, [`GrpcNetwork`] / [`RaftGrpcService`] over gRPC.
//!
//! On disk, `data_dir` holds two files:
//! - `raft.redb`: the log entries, the vote, the committed pointer and the last purged log id;
//! - `snapshots.redb`: the current snapshot (metadata and data).
//!
//! Every record starts with a format byte; files or peers of an unknown format are refused.
//! With a [`StorageCipher`] in [`RaftConfig::cipher`], every log entry and snapshot body is
//! sealed (authenticated encryption, bound to its place) before it reaches the disk; what is
//! sent to peers is not affected (the transport is mutual TLS).

mod at_rest;
mod cipher;
mod compaction;
mod config;
mod error;
mod grpc;
mod local;
mod log_store;
mod network;
mod node;
mod recovery;
mod state_machine;
mod types;

pub use cipher::{DATA_KEY_LEN, StorageCipher};
pub use compaction::{CompactionPolicy, SnapshotStats};
pub use config::RaftConfig;
pub use error::{NetError, ProposeError, RaftError};
pub use grpc::{GrpcNetwork, RaftGrpcService, plaintext_endpoint};
pub use local::LocalNetwork;
pub use network::{BoxFuture, PeerNetwork, RpcKind, SnapshotChunks};
pub use node::{RaftStatus, ReplicatedLog};
pub use recovery::{ForcedCluster, force_new_cluster};
pub use state_machine::{SnapshotWriter, StateMachine};

#[cfg(test)]
mod conformance_tests;
