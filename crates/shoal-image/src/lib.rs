//! shoal-image: the node's image store. Content-addressed blobs, layers unpacked once per
//! ChainID in overlay upperdir form, a reference index, and `load`/`save`/`import` of
//! archives, with every input treated as hostile.
//!
//! Layout under the root given to [`ImageStore::open`]:
//!
//! ```text
//! blobs/sha256/<hex>            manifests, configs, layers as stored (verified on write)
//! ingest/                       temp and resumable partial blobs, load staging
//! layers/<chainid-hex>/fs       one unpacked layer (overlay upperdir form)
//! layers/<chainid-hex>/meta.json  its DiffID, parent ChainID and sizes
//! repositories.json             image records and `name:tag` → image id
//! ```
//!
//! All I/O is blocking: async callers run store operations on a blocking thread. One process
//! owns a root at a time (an exclusive `flock` on `root/lock`); inside it, mutations are
//! serialised and reads run alongside them.
//!
//! The rules layer unpacking enforces against hostile tars are listed on the `unpack`
//! module; archive loading adds its own (member names and metadata paths stay inside the
//! archive, blobs are found only by verified digest, DiffIDs are checked, sizes are bounded
//! by [`Limits`], and a failed load leaves the store as it was).
//!
//! This crate knows nothing of clusters, tasks or Raft; the daemon and a standalone
//! `shoal run` use it alike.

mod changes;
mod commit;
mod compression;
mod confined;
mod content;
mod diff;
mod digest;
mod error;
mod fsutil;
mod import;
mod index;
mod layers;
mod limits;
mod load;
mod platform;
mod reference;
pub mod registry;
mod save;
mod store;
mod types;
mod unpack;

pub use commit::CommitOptions;
pub use compression::Compression;
pub use confined::{ArchiveSource, ConfinedRoot, ExtractOptions, ExtractStats, FsError, PathStat};
pub use content::{BlobWriter, Committed, ContentStore};
pub use diff::{Change, ChangeKind, changes};
pub use digest::{Digest, chain_id, chain_ids};
pub use error::{ImageError, Result};
pub use layers::LayerMeta;
pub use limits::Limits;
pub use platform::{HOST_OS, host_arch};
pub use reference::{DEFAULT_DOMAIN, DEFAULT_TAG, Reference};
pub use store::ImageStore;
pub use types::{
    GcReport, HistoryEntry, ImageDetails, ImageSummary, LoadedImage, Removed, ResolvedImage,
};

/// The OCI image types callers see in [`ImageDetails`] and [`ResolvedImage`].
pub use oci_spec::image::{Config as ImageConfig, ImageConfiguration};

#[cfg(test)]
mod tests {
    #[test]
    fn store_is_shareable_across_threads() {
        fn check<T: Send + Sync>() {}
        check::<super::ImageStore>();
    }
}
