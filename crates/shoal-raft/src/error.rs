//! The crate's public error types. They carry plain data (ids, addresses, messages) and never an
//! openraft type.

use std::path::PathBuf;

/// Failures opening, running or talking to a replicated log.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("invalid raft config: {0}")]
    Config(String),
    #[error("cannot open {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{} has unsupported format version {found} (this build reads {supported})", path.display())]
    UnsupportedFormat {
        path: PathBuf,
        found: u8,
        supported: u8,
    },
    /// A storage file's encryption does not match the data key this node has.
    #[error("cannot read {}: {reason}", path.display())]
    Encryption { path: PathBuf, reason: String },
    #[error("raft storage failed: {0}")]
    Storage(String),
    #[error("malformed raft rpc: {0}")]
    Malformed(String),
    #[error("raft is shut down")]
    Shutdown,
    #[error("raft failed: {0}")]
    Fatal(String),
}

/// Why a proposal (or a read barrier, or a membership change) did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Not applied: this node is not the leader. Safe to retry on the leader.
    #[error("not the raft leader (leader: {})", fmt_leader(.leader_id, .leader_addr))]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    /// Leadership changed while the proposal was in flight. The new leader may or may not have
    /// committed it, so a retry must be idempotent (e.g. guarded by expected versions).
    #[error(
        "leadership changed while the proposal was in flight; it may or may not be committed (leader: {})",
        fmt_leader(.leader_id, .leader_addr)
    )]
    LeadershipLost {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    #[error("proposal of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// A read barrier could not reach a quorum.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// No quorum answered within the commit timeout. A proposal may still be committed later
    /// (if this leader regains its quorum before it is deposed), so a retry must be idempotent.
    #[error("no quorum answered within {0:?}; a write may or may not be committed")]
    Timeout(std::time::Duration),
    /// A membership change was refused (e.g. another change in progress, unknown learner).
    #[error("membership change refused: {0}")]
    Rejected(String),
    #[error("raft is shut down")]
    Shutdown,
    #[error("raft failed: {0}")]
    Fatal(String),
}

fn fmt_leader(id: &Option<u64>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("{id} at {addr}"),
        (Some(id), None) => id.to_string(),
        _ => "unknown".to_string(),
    }
}

/// A transport failure sending one RPC to a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// The peer could not be reached (connection refused, dropped link, unknown peer).
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    #[error("rpc timed out")]
    Timeout,
    /// The peer answered with an error (e.g. its raft is shut down, or it refused the message).
    #[error("peer refused the rpc: {0}")]
    Remote(String),
}
