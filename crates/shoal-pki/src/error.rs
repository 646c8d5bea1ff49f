//! The crate's error type: every failure of key, certificate, token, storage and TLS handling.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::seal::UnlockKeyError;
use crate::token::TokenError;

/// Result alias used throughout the crate.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;

/// Which of the on-disk identity files an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `node.key`: the node's private key.
    Key,
    /// `node.crt`: the node's certificate.
    Certificate,
    /// `ca.crt`: the cluster's root CA certificate.
    RootCa,
}

impl FileKind {
    /// How the file is named in error messages.
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Key => "key",
            FileKind::Certificate => "certificate",
            FileKind::RootCa => "root ca certificate",
        }
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A key could not be generated, or a certificate or CSR could not be produced.
    #[error("{context}: {source}")]
    Crypto {
        context: &'static str,
        #[source]
        source: rcgen::Error,
    },

    /// A PEM document did not hold what was expected.
    #[error("invalid {what} pem: {reason}")]
    InvalidPem { what: &'static str, reason: String },

    /// A certificate could not be parsed or is not shaped as expected.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),

    /// A root CA certificate is not usable as a root CA.
    #[error("invalid root ca: {0}")]
    InvalidRootCa(String),

    /// A private key could not be parsed or is of a kind this crate does not use.
    #[error("invalid key: {0}")]
    InvalidKey(String),

    /// A certificate signing request could not be parsed or uses an unsupported key.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),

    /// The CSR's self-signature does not verify: whoever sent it does not hold the key.
    #[error("invalid certificate signing request: signature does not verify")]
    CsrSignature,

    /// The issuance parameters were refused.
    #[error("invalid certificate request: {0}")]
    InvalidRequest(String),

    /// The requested certificate lifetime is shorter than the minimum.
    #[error("certificate validity {requested:?} is below the minimum of {minimum:?}")]
    ValidityTooShort {
        requested: Duration,
        minimum: Duration,
    },

    /// A role string is neither `manager` nor `worker`.
    #[error("unknown role {0:?}: expected manager or worker")]
    UnknownRole(String),

    /// A certificate was not issued by the root CA it was checked against.
    #[error("certificate was not issued by this root ca: {0}")]
    NotIssuedByRoot(String),

    /// A certificate's public key is not the public key of the key it is paired with.
    #[error("certificate does not match the private key")]
    KeyMismatch,

    /// A peer certificate lacks the subject fields of a shoal node identity.
    #[error("certificate does not carry a node identity: {0}")]
    InvalidIdentity(String),

    /// A root CA fetched from the network does not hash to the digest in the join token.
    #[error(
        "root ca does not match the join token: token pins {expected}, root ca digest is {actual}"
    )]
    CaMismatch { expected: String, actual: String },

    /// A join token could not be parsed.
    #[error(transparent)]
    Token(#[from] TokenError),

    /// An identity file does not exist.
    #[error("{kind} file {path} is missing")]
    FileMissing { kind: FileKind, path: PathBuf },

    /// An identity file exists but its content is unusable.
    #[error("{kind} file {path} is corrupt: {reason}")]
    FileCorrupt {
        kind: FileKind,
        path: PathBuf,
        reason: String,
    },

    /// The stored node certificate was not issued by the stored root CA.
    #[error("certificate file {cert} was not issued by the root ca in {root}: {reason}")]
    StoredCertNotFromRoot {
        cert: PathBuf,
        root: PathBuf,
        reason: String,
    },

    /// The stored node certificate does not belong to the stored key.
    #[error("certificate file {cert} does not match key file {key}")]
    StoredKeyMismatch { cert: PathBuf, key: PathBuf },

    /// The key file is sealed (autolock) and no unlock key was given.
    #[error("key file {path} is encrypted: this node is locked and needs the swarm's unlock key")]
    KeySealed { path: PathBuf },

    /// The unlock key given does not open the sealed key file.
    #[error("the unlock key does not open key file {path}")]
    WrongUnlockKey { path: PathBuf },

    /// An unlock key could not be parsed.
    #[error(transparent)]
    UnlockKey(#[from] UnlockKeyError),

    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,

    /// A filesystem operation failed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// rustls refused to build a configuration.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),

    /// rustls refused to build a certificate verifier.
    #[error("tls certificate verifier: {0}")]
    TlsVerifier(#[from] rustls::server::VerifierBuilderError),
}

impl PkiError {
    pub(crate) fn crypto(context: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
        move |source| PkiError::Crypto { context, source }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> PkiError {
        let path = path.into();
        move |source| PkiError::Io { op, path, source }
    }
}
