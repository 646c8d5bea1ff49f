//! `RegistryError`: every way a pull, push or login fails, each one line a user can act on, and
//! the classification of the distribution client's and HTTP stack's errors into them.

use std::error::Error as StdError;
use std::io;

use oci_client::errors::{OciDistributionError, OciErrorCode};

use crate::error::ImageError;

/// Longest piece of registry-supplied text kept in a message.
const MAX_REMOTE_TEXT: usize = 200;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The store refused or failed something (digest and size mismatches, limits, platforms).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The registry could not be reached at all.
    #[error("cannot reach registry {registry}: {reason}")]
    Unreachable { registry: String, reason: String },
    /// HTTPS failed in a way that suggests a plain-HTTP registry.
    #[error(
        "registry {registry} did not answer over HTTPS ({reason}); if it serves plain HTTP, start the daemon with --insecure-registry {registry}"
    )]
    NotHttps { registry: String, reason: String },
    /// HTTPS works, but the registry's certificate does not check out.
    #[error(
        "registry {registry} presented a TLS certificate this host does not trust: {reason} (trust its CA with `shoal daemon --registry-ca FILE`)"
    )]
    UntrustedCertificate { registry: String, reason: String },
    /// The credentials sent were refused.
    #[error("unauthorized: incorrect username or password for {registry}")]
    BadCredentials { registry: String },
    /// No credentials were sent and the registry wants some.
    #[error(
        "{operation} access denied for {repository}: the repository does not exist or needs credentials (shoal login {registry})"
    )]
    AuthenticationRequired {
        operation: &'static str,
        repository: String,
        registry: String,
    },
    /// The credentials were accepted but do not allow this.
    #[error("denied: {operation} access to {repository} is not allowed with these credentials")]
    Denied {
        operation: &'static str,
        repository: String,
    },
    /// The tag, digest or repository is unknown to the registry.
    #[error("image not found: manifest for {reference} unknown to the registry")]
    ManifestUnknown { reference: String },
    /// An image that is not in the local store cannot be pushed.
    #[error("an image does not exist locally with the tag: {0}")]
    NotLocal(String),
    /// A request that makes no sense (a digest as push target, a bad server name).
    #[error("{0}")]
    InvalidArgument(String),
    /// A download kept failing midway, even after resuming.
    #[error("download of {what} from {registry} interrupted: {reason}")]
    Interrupted {
        what: String,
        registry: String,
        reason: String,
    },
    /// The registry answered with an error status this client has no better name for.
    #[error("registry {registry} failed the request: HTTP {code}: {message}")]
    Server {
        registry: String,
        code: u16,
        message: String,
    },
    /// The registry refused the request with a distribution error code.
    #[error("registry {registry} refused the request: {detail}")]
    Refused { registry: String, detail: String },
    /// The registry answered something the distribution protocol does not allow.
    #[error("registry {registry} sent an invalid response: {detail}")]
    Protocol { registry: String, detail: String },
    /// A bug or a crashed worker task, not the user's doing.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What the failing request was doing, to word refusals.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Operation {
    Pull,
    Push,
}

impl Operation {
    fn word(self) -> &'static str {
        match self {
            Operation::Pull => "pull",
            Operation::Push => "push",
        }
    }
}

/// The context an error is classified in.
pub(crate) struct Context<'a> {
    pub(crate) registry: &'a str,
    pub(crate) repository: &'a str,
    /// The reference as the user wrote it (for "not found").
    pub(crate) reference: &'a str,
    pub(crate) operation: Operation,
    pub(crate) with_credentials: bool,
    pub(crate) insecure: bool,
}

impl Context<'_> {
    fn unauthorized(&self) -> RegistryError {
        if self.with_credentials {
            RegistryError::BadCredentials {
                registry: self.registry.to_owned(),
            }
        } else {
            RegistryError::AuthenticationRequired {
                operation: self.operation.word(),
                repository: self.repository.to_owned(),
                registry: self.registry.to_owned(),
            }
        }
    }

    fn denied(&self) -> RegistryError {
        if self.with_credentials {
            RegistryError::Denied {
                operation: self.operation.word(),
                repository: self.repository.to_owned(),
            }
        } else {
            self.unauthorized()
        }
    }

    /// Maps an error of the distribution client to the line the user sees.
    pub(crate) fn classify(&self, error: OciDistributionError) -> RegistryError {
        use OciDistributionError as E;
        match error {
            E::UnauthorizedError { .. } => self.unauthorized(),
            E::AuthenticationFailure(_) => self.unauthorized(),
            E::RegistryError { envelope, .. } => {
                let first = envelope.errors.first();
                match first.map(|e| &e.code) {
                    Some(OciErrorCode::ManifestUnknown)
                    | Some(OciErrorCode::NameUnknown)
                    | Some(OciErrorCode::NotFound) => RegistryError::ManifestUnknown {
                        reference: self.reference.to_owned(),
                    },
                    Some(OciErrorCode::Unauthorized) => self.unauthorized(),
                    Some(OciErrorCode::Denied) => self.denied(),
                    _ => RegistryError::Refused {
                        registry: self.registry.to_owned(),
                        detail: one_line(
                            &first
                                .map(|e| format!("{:?}: {}", e.code, e.message))
                                .unwrap_or_else(|| "no error detail".to_owned()),
                        ),
                    },
                }
            }
            E::ServerError { code, message, .. } => match code {
                401 => self.unauthorized(),
                403 => self.denied(),
                404 => RegistryError::ManifestUnknown {
                    reference: self.reference.to_owned(),
                },
                _ => RegistryError::Server {
                    registry: self.registry.to_owned(),
                    code,
                    message: one_line(&message),
                },
            },
            // `blob_exists` turns a status into a request error.
            E::RequestError(e) if e.status().is_some() => {
                let code = e.status().map_or(0, |s| s.as_u16());
                match code {
                    401 => self.unauthorized(),
                    403 => self.denied(),
                    _ => RegistryError::Server {
                        registry: self.registry.to_owned(),
                        code,
                        message: "no detail".to_owned(),
                    },
                }
            }
            E::RequestError(e) => self.transport(&e),
            E::IoError(e) => self.transport(&e),
            E::DigestError(e) => match e {
                oci_client::errors::DigestError::VerificationError { expected, actual } => {
                    ImageError::DigestMismatch {
                        what: "content from the registry".to_owned(),
                        expected,
                        actual,
                    }
                    .into()
                }
                other => self.protocol(other.to_string()),
            },
            E::UnsupportedSchemaVersionError(v) => {
                ImageError::Unsupported(format!("manifest schema version {v}")).into()
            }
            E::UnsupportedMediaTypeError(t) => {
                ImageError::Unsupported(format!("manifest media type {t}")).into()
            }
            other => self.protocol(other.to_string()),
        }
    }

    fn protocol(&self, detail: String) -> RegistryError {
        RegistryError::Protocol {
            registry: self.registry.to_owned(),
            detail: one_line(&detail),
        }
    }

    /// A failure below HTTP: name resolution, refused connections, TLS, timeouts.
    pub(crate) fn transport(&self, error: &(dyn StdError + 'static)) -> RegistryError {
        let registry = self.registry.to_owned();
        let chain = error_chain(error);
        let lower = chain.to_lowercase();
        if let Some(kind) = find_io_kind(error) {
            match kind {
                io::ErrorKind::ConnectionRefused => {
                    return RegistryError::Unreachable {
                        registry,
                        reason: "connection refused".to_owned(),
                    };
                }
                io::ErrorKind::TimedOut => {
                    return RegistryError::Unreachable {
                        registry,
                        reason: "timed out".to_owned(),
                    };
                }
                _ => {}
            }
        }
        if lower.contains("dns error")
            || lower.contains("failed to lookup address")
            || lower.contains("name or service not known")
            || lower.contains("no address associated")
        {
            return RegistryError::Unreachable {
                registry,
                reason: "unknown host".to_owned(),
            };
        }
        if lower.contains("timed out") || lower.contains("timeout") {
            return RegistryError::Unreachable {
                registry,
                reason: "timed out".to_owned(),
            };
        }
        if lower.contains("invalid peer certificate") || lower.contains("certificate") {
            return RegistryError::UntrustedCertificate {
                registry,
                reason: one_line(&innermost(error)),
            };
        }
        // rustls reading an HTTP answer as a TLS record says so in these words.
        let tls_failure = lower.contains("invalidcontenttype")
            || lower.contains("corrupt message")
            || lower.contains("tls");
        if tls_failure && !self.insecure {
            return RegistryError::NotHttps {
                registry,
                reason: "the TLS handshake failed".to_owned(),
            };
        }
        RegistryError::Unreachable {
            registry,
            reason: one_line(&innermost(error)),
        }
    }
}

impl RegistryError {
    /// Whether retrying (and resuming) might help: the connection broke, nothing refused us.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            RegistryError::Unreachable { .. } | RegistryError::Interrupted { .. }
        ) || matches!(self, RegistryError::Server { code, .. } if *code >= 500)
    }
}

fn find_io_kind(error: &(dyn StdError + 'static)) -> Option<io::ErrorKind> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        current = e.source();
    }
    None
}

/// Every message of the chain, for matching (never shown as is: it repeats itself).
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut out = String::new();
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        out.push_str(&e.to_string());
        out.push_str(" | ");
        out.push_str(&format!("{e:?}"));
        out.push_str(" | ");
        current = e.source();
    }
    out
}

/// The most specific message of an error chain.
fn innermost(error: &(dyn StdError + 'static)) -> String {
    let mut last = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        last = e.to_string();
        current = e.source();
    }
    last
}

/// Registry-supplied text, cut to one short line: it ends up in a one-line error.
pub(crate) fn one_line(text: &str) -> String {
    let flat: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if flat.chars().count() > MAX_REMOTE_TEXT {
        let cut: String = flat.chars().take(MAX_REMOTE_TEXT).collect();
        format!("{cut}…")
    } else if flat.is_empty() {
        "no detail".to_owned()
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_text_is_one_short_line() {
        assert_eq!(one_line("a\nb\r\n\tc"), "a b c");
        assert_eq!(one_line(""), "no detail");
        let long = "x".repeat(500);
        assert_eq!(one_line(&long).chars().count(), MAX_REMOTE_TEXT + 1);
    }

    #[test]
    fn refusals_are_worded_by_credentials() {
        let ctx = |with_credentials| Context {
            registry: "r:5000",
            repository: "app",
            reference: "r:5000/app:1",
            operation: Operation::Pull,
            with_credentials,
            insecure: false,
        };
        let e = ctx(true).classify(OciDistributionError::UnauthorizedError { url: "u".into() });
        assert_eq!(
            e.to_string(),
            "unauthorized: incorrect username or password for r:5000"
        );
        let e = ctx(false).classify(OciDistributionError::ServerError {
            code: 401,
            url: "u".into(),
            message: String::new(),
        });
        assert!(
            e.to_string().starts_with("pull access denied for app"),
            "{e}"
        );
        let e = ctx(false).classify(OciDistributionError::ServerError {
            code: 502,
            url: "u".into(),
            message: "bad\ngateway".into(),
        });
        assert_eq!(
            e.to_string(),
            "registry r:5000 failed the request: HTTP 502: bad gateway"
        );
        assert!(e.is_transient());
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            ctx(false).transport(&refused).to_string(),
            "cannot reach registry r:5000: connection refused"
        );
    }
}
