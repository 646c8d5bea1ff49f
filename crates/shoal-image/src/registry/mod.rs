//! Registry pull, push and login over the OCI distribution API (through `oci-client`), feeding
//! the image store: every manifest, config and layer is verified by digest and size before it
//! counts, downloads resume with HTTP `Range` after an interruption, and layers are unpacked
//! once per ChainID by [`ImageStore::add_image`].
//!
//! **Async API.** Unlike the rest of the crate, these operations are `async fn`s meant for a
//! tokio runtime (the engine's): network I/O is awaited, and store work (hashing a partial
//! download, fsync and rename of a blob, unpacking layers) runs on tokio's blocking pool.
//!
//! **Transport.** HTTPS by default, verified against the system roots (plus any CA given in
//! [`RegistryConfig::extra_roots_pem`]); plain HTTP only for the `HOST[:PORT]`s listed in
//! [`RegistryConfig::insecure`]. TLS uses rustls with the ring provider: if the process has not
//! installed a default rustls provider, the first client built installs ring's.
//!
//! **Credentials** are given per call ([`RegistryAuth`]) and live only as long as the
//! operation: anonymous, Basic, or a bearer token. A registry that answers `401` with a
//! `WWW-Authenticate: Bearer realm=…,service=…` challenge gets the token flow (the Basic
//! credentials go to the realm, the token to the registry).

mod error;
mod login;
mod pull;
mod push;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};

use crate::digest::Digest;
use crate::reference::Reference;

pub use error::RegistryError;
pub use login::registry_host;
pub use pull::PullResult;
pub use push::PushResult;

use error::{Context, Operation};

/// How many layers download (or upload) at the same time, as Docker does.
const DEFAULT_CONCURRENCY: usize = 3;
/// Attempts at one blob before a broken connection is reported (each resumes where the
/// previous one stopped).
const DEFAULT_ATTEMPTS: u32 = 4;

/// How the node reaches registries.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// `HOST[:PORT]` of registries spoken to over plain HTTP. Every other registry is HTTPS.
    pub insecure: Vec<String>,
    /// PEM CA certificates trusted for HTTPS registries, beside the system roots.
    pub extra_roots_pem: Vec<Vec<u8>>,
    pub connect_timeout: Duration,
    /// Longest silence while reading a response; a stalled download is retried after it.
    pub read_timeout: Duration,
    /// Blobs transferred at once.
    pub concurrency: usize,
    /// Attempts per blob download.
    pub attempts: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: Vec::new(),
            extra_roots_pem: Vec::new(),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            concurrency: DEFAULT_CONCURRENCY,
            attempts: DEFAULT_ATTEMPTS,
        }
    }
}

/// Checks an `--insecure-registry` value: `HOST[:PORT]`, no scheme, no path.
pub fn parse_insecure_registry(value: &str) -> Result<String, RegistryError> {
    let bad = |why: &str| {
        RegistryError::InvalidArgument(format!(
            "invalid insecure registry {value:?}: {why} (expected HOST[:PORT], e.g. 10.0.0.5:5000)"
        ))
    };
    if value.contains("://") {
        return Err(bad("leave out the scheme"));
    }
    if value.is_empty() || value.contains('/') || value.contains(char::is_whitespace) {
        return Err(bad("not a host"));
    }
    // A reference with this domain must parse: that is the form pulls compare against.
    match Reference::parse(&format!("{value}/x")) {
        Ok(r) if r.domain() == value => Ok(value.to_owned()),
        _ => Err(bad("not a registry host")),
    }
}

/// Credentials for one operation.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum RegistryAuth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A token sent as `Authorization: Bearer` (an identity or registry token).
    Bearer(String),
}

impl fmt::Debug for RegistryAuth {
    // Never print a secret, not even in a debug log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            RegistryAuth::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

impl RegistryAuth {
    fn is_anonymous(&self) -> bool {
        matches!(self, RegistryAuth::Anonymous)
    }

    fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        use oci_client::secrets::RegistryAuth as A;
        match self {
            RegistryAuth::Anonymous => A::Anonymous,
            RegistryAuth::Basic { username, password } => {
                A::Basic(username.clone(), password.clone())
            }
            RegistryAuth::Bearer(token) => A::Bearer(token.clone()),
        }
    }
}

/// What one progress line says, in Docker's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgressStatus {
    /// `latest: Pulling from library/busybox` (the id is the tag or digest).
    PullingFrom(String),
    PullingFsLayer,
    Downloading,
    /// A dropped connection is being resumed.
    Retrying,
    VerifyingChecksum,
    DownloadComplete,
    PullComplete,
    AlreadyExists,
    /// `The push refers to repository [localhost:5000/app]` (no id).
    PushRefersTo(String),
    Preparing,
    Pushing,
    Pushed,
    LayerAlreadyExists,
}

impl fmt::Display for ProgressStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProgressStatus::PullingFrom(repo) => write!(f, "Pulling from {repo}"),
            ProgressStatus::PullingFsLayer => f.write_str("Pulling fs layer"),
            ProgressStatus::Downloading => f.write_str("Downloading"),
            ProgressStatus::Retrying => f.write_str("Retrying"),
            ProgressStatus::VerifyingChecksum => f.write_str("Verifying Checksum"),
            ProgressStatus::DownloadComplete => f.write_str("Download complete"),
            ProgressStatus::PullComplete => f.write_str("Pull complete"),
            ProgressStatus::AlreadyExists => f.write_str("Already exists"),
            ProgressStatus::PushRefersTo(repo) => {
                write!(f, "The push refers to repository [{repo}]")
            }
            ProgressStatus::Preparing => f.write_str("Preparing"),
            ProgressStatus::Pushing => f.write_str("Pushing"),
            ProgressStatus::Pushed => f.write_str("Pushed"),
            ProgressStatus::LayerAlreadyExists => f.write_str("Layer already exists"),
        }
    }
}

/// One progress event of a pull or push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// A layer's short id (12 hex digits), the tag on the first pull line, or empty.
    pub id: String,
    pub status: ProgressStatus,
    /// Bytes done and expected, for `Downloading`/`Pushing` (0 otherwise).
    pub current: u64,
    pub total: u64,
}

impl Progress {
    pub(crate) fn new(id: impl Into<String>, status: ProgressStatus) -> Progress {
        Progress {
            id: id.into(),
            status,
            current: 0,
            total: 0,
        }
    }
}

/// Where progress goes; called from the operation's tasks, so it must be cheap.
pub type ProgressSink = Arc<dyn Fn(Progress) + Send + Sync>;

/// The node's registry client: configuration plus the blobs being fetched right now.
pub struct RegistryClient {
    config: RegistryConfig,
    /// One download per blob at a time: two pulls sharing a layer must not append to the same
    /// partial file. The second waits, then finds the blob in the store.
    in_flight: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    pub fn new(config: RegistryConfig) -> RegistryClient {
        RegistryClient {
            config,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    fn is_insecure(&self, registry: &str) -> bool {
        self.config.insecure.iter().any(|h| h == registry)
    }

    /// A distribution client for one operation (it caches tokens for that operation only).
    fn oci_client(&self) -> Result<oci_client::Client, RegistryError> {
        ensure_crypto_provider();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.config.insecure.clone()),
            extra_root_certificates: self
                .config
                .extra_roots_pem
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            // We choose the platform ourselves, from the raw index.
            platform_resolver: None,
            use_monolithic_push: true,
            max_concurrent_upload: self.config.concurrency.max(1),
            max_concurrent_download: self.config.concurrency.max(1),
            connect_timeout: Some(self.config.connect_timeout),
            read_timeout: Some(self.config.read_timeout),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        // `Client::new` would fall back to a default configuration (HTTPS only, no extra
        // roots) on error; a misconfigured client must fail instead.
        oci_client::Client::try_from(config).map_err(|e| {
            RegistryError::InvalidArgument(format!("cannot build the registry client: {e}"))
        })
    }

    fn context<'a>(
        &self,
        reference: &'a Reference,
        display: &'a str,
        operation: Operation,
        auth: &RegistryAuth,
    ) -> Context<'a> {
        Context {
            registry: reference.domain(),
            repository: reference.path(),
            reference: display,
            operation,
            with_credentials: !auth.is_anonymous(),
            insecure: self.is_insecure(reference.domain()),
        }
    }

    /// The lock that serialises downloads of one blob.
    fn blob_lock(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        // Forget locks nobody holds any more, so the map stays as small as the work in flight.
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
        map.entry(digest.clone()).or_default().clone()
    }
}

const USER_AGENT: &str = concat!("shoal/", env!("CARGO_PKG_VERSION"));

/// reqwest (built without a provider so that only ring is linked) needs a process default.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another thread installing one is fine: any default will do.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Our reference in the distribution client's form.
fn oci_reference(reference: &Reference) -> oci_client::Reference {
    let registry = reference.domain().to_owned();
    let repository = reference.path().to_owned();
    match (reference.tag(), reference.digest()) {
        (_, Some(d)) => oci_client::Reference::with_digest(registry, repository, d.to_string()),
        (Some(t), None) => oci_client::Reference::with_tag(registry, repository, t.to_owned()),
        (None, None) => oci_client::Reference::with_tag(
            registry,
            repository,
            crate::reference::DEFAULT_TAG.to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests;
