//! `repositories.json`: which images the store holds and which references name them,
//! replaced atomically as a whole on every change.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::fsutil::write_atomic;
use crate::reference::Reference;

const VERSION: u32 = 1;

/// The whole index; small enough to keep in memory and rewrite on each change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Index {
    pub(crate) version: u32,
    /// Image id (config digest) → record.
    pub(crate) images: BTreeMap<Digest, ImageRecord>,
    /// Canonical reference (`docker.io/library/busybox:latest` or `…@sha256:…`) → image id.
    pub(crate) refs: BTreeMap<String, Digest>,
}

/// One image: its manifest and the layers it stacks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub(crate) manifest: Digest,
    pub(crate) manifest_media_type: String,
    pub(crate) config_size: u64,
    pub(crate) created: Option<String>,
    pub(crate) os: String,
    pub(crate) architecture: String,
    pub(crate) variant: Option<String>,
    /// Bytes of file data in all layers.
    pub(crate) size: u64,
    pub(crate) layers: Vec<LayerRecord>,
    /// When this store got the image (RFC 3339).
    pub(crate) added: String,
}

/// One layer of an image, lowest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    /// The blob as stored (possibly compressed).
    pub(crate) blob: Digest,
    pub(crate) media_type: String,
    pub(crate) blob_size: u64,
    pub(crate) diff_id: Digest,
    pub(crate) chain_id: Digest,
    /// Bytes of file data.
    pub(crate) size: u64,
    /// Bytes of the uncompressed tar.
    pub(crate) diff_size: u64,
}

impl Index {
    pub(crate) fn load(path: &Path) -> Result<Index> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Index {
                    version: VERSION,
                    ..Index::default()
                });
            }
            Err(e) => return Err(ImageError::io("read", path)(e)),
        };
        let index: Index =
            serde_json::from_slice(&bytes).map_err(|source| ImageError::InvalidJson {
                what: "repositories.json",
                source,
            })?;
        if index.version != VERSION {
            return Err(ImageError::Corrupt(format!(
                "repositories.json version {} (this build reads {VERSION})",
                index.version
            )));
        }
        for (r, id) in &index.refs {
            if !index.images.contains_key(id) {
                return Err(ImageError::Corrupt(format!(
                    "reference {r} names missing image {id}"
                )));
            }
        }
        Ok(index)
    }

    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("index serialises");
        write_atomic(path, &bytes)
    }

    /// The references of one image, parsed, in canonical order.
    pub(crate) fn refs_of(&self, id: &Digest) -> Vec<Reference> {
        self.refs
            .iter()
            .filter(|(_, v)| *v == id)
            .filter_map(|(k, _)| Reference::parse(k).ok())
            .collect()
    }

    /// Blobs every image needs.
    pub(crate) fn referenced_blobs(&self) -> BTreeSet<Digest> {
        let mut out = BTreeSet::new();
        for (id, rec) in &self.images {
            out.insert(id.clone());
            out.insert(rec.manifest.clone());
            out.extend(rec.layers.iter().map(|l| l.blob.clone()));
        }
        out
    }

    /// Layer stacks every image needs.
    pub(crate) fn referenced_chains(&self) -> BTreeSet<Digest> {
        self.images
            .values()
            .flat_map(|r| r.layers.iter().map(|l| l.chain_id.clone()))
            .collect()
    }
}
