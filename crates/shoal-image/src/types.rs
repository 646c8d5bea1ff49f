//! The values the store's public operations return.

use std::path::PathBuf;

use oci_spec::image::ImageConfiguration;

use crate::digest::Digest;

/// One image a `load` brought in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedImage {
    /// The image id: the digest of its config blob.
    pub id: Digest,
    /// References now naming it, in Docker's display form (`busybox:latest`).
    pub references: Vec<String>,
    pub manifest_digest: Digest,
}

/// A row of `image ls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    pub id: Digest,
    /// `name:tag` references, display form.
    pub repo_tags: Vec<String>,
    /// `name@sha256:…` references, display form.
    pub repo_digests: Vec<String>,
    /// The config's `created`, RFC 3339.
    pub created: Option<String>,
    /// Bytes of file data in all layers.
    pub size: u64,
    pub layers: usize,
}

/// What `image inspect` shows.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageDetails {
    pub id: Digest,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub created: Option<String>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub config: ImageConfiguration,
    /// Layer DiffIDs, lowest first.
    pub diff_ids: Vec<Digest>,
    /// Layer ChainIDs, lowest first.
    pub chain_ids: Vec<Digest>,
    pub size: u64,
    /// When this store got the image, RFC 3339.
    pub added: String,
}

/// A row of `image history`, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The image id on the newest row only, as Docker shows `<missing>` for the rest.
    pub id: Option<Digest>,
    pub created: Option<String>,
    pub created_by: String,
    pub comment: String,
    pub empty_layer: bool,
    /// Bytes of file data the step's layer added (0 for empty steps).
    pub size: u64,
}

/// One effect of `remove`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removed {
    /// A reference was removed (display form).
    Untagged(String),
    /// The image itself left the index; `gc` reclaims its blobs and layers.
    Deleted(Digest),
}

/// What `gc` reclaimed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed_blobs: Vec<Digest>,
    pub removed_layers: Vec<Digest>,
    pub reclaimed_bytes: u64,
}

/// Everything the runtime needs to mount an image's root filesystem.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedImage {
    pub id: Digest,
    pub config: ImageConfiguration,
    /// The layers' `fs` directories, lowest first (reverse them for overlay's `lowerdir`).
    pub layer_dirs: Vec<PathBuf>,
    /// ChainIDs matching `layer_dirs`; the last names the whole stack.
    pub chain_ids: Vec<Digest>,
}
