//! Bounds on untrusted input, so a hostile archive costs at most a known amount of disk and memory.

/// Caps applied to every archive, layer and metadata document the store reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one layer's uncompressed tar stream, and separately of the file data it
    /// writes (a sparse entry can expand past its stream size).
    pub max_layer_bytes: u64,
    /// Entries in one layer tar.
    pub max_layer_entries: u64,
    /// Bytes of one JSON document (manifest, config, index, `manifest.json`).
    pub max_json_bytes: u64,
    /// Bytes of a whole `load`/`import` input after decompression.
    pub max_archive_bytes: u64,
    /// Entries in a `load` archive.
    pub max_archive_entries: u64,
    /// Layers in one image; Docker's overlay2 caps stacks at 128 so the mount data fits a page.
    pub max_layers: usize,
    /// Depth of nested image indexes followed when choosing a platform.
    pub max_index_depth: usize,
}

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Large enough for any real image layer (CUDA bases are ~10 GiB), small
            // enough that a bomb stops long before a typical node disk fills.
            max_layer_bytes: 32 * GIB,
            max_layer_entries: 2_000_000,
            max_json_bytes: 4 * MIB,
            max_archive_bytes: 128 * GIB,
            max_archive_entries: 100_000,
            max_layers: 128,
            max_index_depth: 4,
        }
    }
}
