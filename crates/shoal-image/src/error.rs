//! The crate's one error type, shared by every image-store operation.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in the image store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A filesystem operation on a known path failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading or writing a stream (an archive, a layer, an output) failed.
    #[error("{op}: {source}")]
    Stream {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A reference that is not a valid Docker-style image reference.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// A digest that is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    /// No image matches the reference or id.
    #[error("no such image: {0}")]
    NotFound(String),
    /// A short image id that matches more than one image.
    #[error("short image id {0:?} is ambiguous")]
    Ambiguous(String),
    /// The operation would break an invariant unless forced.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Content did not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// Content did not have the size its descriptor announced.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    /// An archive entry or a path named by archive metadata that would escape its target.
    #[error("unsafe path {path:?}: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    /// A configured bound (bytes, entries, layers, JSON size) was exceeded.
    #[error("{what} exceeds the limit of {limit}")]
    LimitExceeded { what: &'static str, limit: u64 },
    /// An archive or image whose structure is wrong.
    #[error("invalid archive: {0}")]
    InvalidArchive(String),
    /// JSON metadata that does not parse.
    #[error("invalid {what}: {source}")]
    InvalidJson {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A valid input that this store does not handle (xz layers, schema 1 manifests, ...).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An operation that needs root privileges (whiteouts, opaque dirs).
    #[error("{0} requires root")]
    NeedsRoot(String),
    /// An `import` change instruction that is unknown or malformed.
    #[error("invalid change {change:?}: {reason}")]
    InvalidChange { change: String, reason: String },
    /// An image index with no manifest for this host's platform.
    #[error("no manifest for platform {0} in image index")]
    NoMatchingPlatform(String),
    /// On-disk state that contradicts itself.
    #[error("corrupt image store: {0}")]
    Corrupt(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

impl ImageError {
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
        let path = path.to_path_buf();
        move |source| ImageError::Io { op, path, source }
    }

    /// Turns a stream error back into the `ImageError` a limiting or hashing reader
    /// wrapped inside it, so a bomb reports as a limit, not as a generic read failure.
    pub(crate) fn stream(op: &'static str) -> impl FnOnce(io::Error) -> ImageError {
        move |source| {
            if source.get_ref().is_some_and(|e| e.is::<ImageError>()) {
                let inner = source.into_inner().expect("checked above");
                return *inner.downcast::<ImageError>().expect("checked above");
            }
            ImageError::Stream { op, source }
        }
    }

    pub(crate) fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    pub(crate) fn unsafe_path(path: impl AsRef<[u8]>, reason: &'static str) -> ImageError {
        ImageError::UnsafePath {
            path: String::from_utf8_lossy(path.as_ref()).into_owned(),
            reason,
        }
    }
}
