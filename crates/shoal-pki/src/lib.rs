//! shoal's cluster identity: root CA, node keys and certificates, join tokens and TLS configs.
//!
//! The CA decides who a node is. A certificate's subject says it: CN = node id, OU = role
//! (`manager` | `worker`), O = cluster id. Nothing a CSR asks for is trusted but its public key.
//! A joining host fetches the root CA over an unverified connection and pins it against the
//! digest in its join token before trusting anything else.
//!
//! This crate knows nothing of Raft, the store or gRPC.

mod base36;
mod ca;
mod error;
mod identity;
mod key;
mod pem;
mod seal;
mod slot;
mod store;
mod tls;
mod token;

pub use ca::{
    CLOCK_SKEW_BACKDATE, DEFAULT_NODE_CERT_VALIDITY, DIGEST_LEN, IssuedCert,
    MIN_NODE_CERT_VALIDITY, NodeCertRequest, ROOT_CA_COMMON_NAME, ROOT_CA_VALIDITY, Role, RootCa,
    ca_digest,
};
pub use error::{FileKind, PkiError, Result};
pub use identity::{NodeIdentity, renewal_time};
pub use key::NodeKey;
pub use seal::{
    DataKey, KEY_LEN, KeyProtection, UNLOCK_KEY_PREFIX, UNLOCK_KEY_VERSION, UnlockKey,
    UnlockKeyError,
};
pub use slot::IdentitySlot;
pub use store::{CERT_FILE, KEY_FILE, NodeCertificates, ROOT_CA_FILE};
pub use tls::{
    ALPN_H2, anonymous_client_config, client_config, insecure_bootstrap_client_config,
    server_config,
};
pub use token::{JoinToken, SECRET_LEN, TOKEN_PREFIX, TOKEN_VERSION, TokenError};

// Re-exported so callers name the exact rustls the configs are built with.
pub use rustls;
