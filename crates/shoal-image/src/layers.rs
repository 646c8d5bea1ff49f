//! Unpacked layers: `layers/<chainid-hex>/{fs,meta.json}`, one per ChainID, shared by every image
//! whose stack has that prefix, and published by renaming a complete temp dir into place.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingReader, LimitedReader, is_sha256_hex};
use crate::error::{ImageError, Result};
use crate::fsutil::{TempTree, create_private_dir, fsync_dir, remove_tree, write_atomic};
use crate::limits::Limits;
use crate::unpack::Unpacker;

const TEMP_PREFIX: &str = ".tmp-";
const META_FILE: &str = "meta.json";
const FS_DIR: &str = "fs";

/// What the store records about one unpacked layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    /// The ChainID naming this layer stack.
    pub chain_id: Digest,
    /// sha256 of the layer's uncompressed tar.
    pub diff_id: Digest,
    /// The ChainID of the stack below, if any.
    pub parent: Option<Digest>,
    /// Bytes of regular-file data in the layer.
    pub size: u64,
    /// Bytes of the uncompressed tar stream.
    pub diff_size: u64,
    /// Tar entries in the layer.
    pub entries: u64,
}

#[derive(Debug)]
pub(crate) struct LayerStore {
    dir: PathBuf,
    privileged: bool,
}

impl LayerStore {
    pub(crate) fn open(root: &Path, privileged: bool) -> Result<LayerStore> {
        let dir = root.join("layers");
        create_private_dir(&dir)?;
        let store = LayerStore { dir, privileged };
        store.clean_temporaries()?;
        Ok(store)
    }

    /// Removes half-unpacked layers a crash left; published layers all have hex names.
    pub(crate) fn clean_temporaries(&self) -> Result<()> {
        let entries = fs::read_dir(&self.dir).map_err(ImageError::io("read", &self.dir))?;
        for e in entries.flatten() {
            let name = e.file_name();
            if !name.to_str().is_some_and(is_sha256_hex) {
                let path = e.path();
                tracing::debug!(path = %path.display(), "removing stale layer temp dir");
                remove_tree(&path).map_err(ImageError::io("remove", &path))?;
            }
        }
        Ok(())
    }

    fn path(&self, chain: &Digest) -> PathBuf {
        self.dir.join(chain.hex())
    }

    pub(crate) fn fs_path(&self, chain: &Digest) -> PathBuf {
        self.path(chain).join(FS_DIR)
    }

    /// Whether the layer is published (a half layer is never under its final name).
    pub(crate) fn exists(&self, chain: &Digest) -> bool {
        self.path(chain).join(META_FILE).is_file()
    }

    pub(crate) fn meta(&self, chain: &Digest) -> Result<LayerMeta> {
        let path = self.path(chain).join(META_FILE);
        let bytes = fs::read(&path).map_err(ImageError::io("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| ImageError::InvalidJson {
            what: "layer metadata",
            source,
        })
    }

    pub(crate) fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(ImageError::io("read", &self.dir))?;
        for e in entries.flatten() {
            if let Some(hex) = e.file_name().to_str().filter(|n| is_sha256_hex(n)) {
                out.push(Digest::from_hex(hex)?);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes a layer; it is first renamed away so a crash mid-delete never leaves a
    /// partial tree under the published name.
    pub(crate) fn remove(&self, chain: &Digest) -> Result<u64> {
        let path = self.path(chain);
        let size = self.meta(chain).map(|m| m.size).unwrap_or(0);
        let doomed = self.dir.join(format!("{TEMP_PREFIX}rm-{}", chain.hex()));
        match fs::rename(&path, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(ImageError::io("rename", &path)(e)),
        }
        remove_tree(&doomed).map_err(ImageError::io("remove", &doomed))?;
        Ok(size)
    }

    /// Unpacks an uncompressed layer stream as `chain` on top of `lowers` (the `fs` dirs
    /// below, nearest first), verifying the stream hashes to `diff_id`.
    /// Returns the metadata and whether this call created the layer.
    pub(crate) fn unpack<R: Read>(
        &self,
        chain: &Digest,
        parent: Option<&Digest>,
        diff_id: &Digest,
        lowers: &[PathBuf],
        stream: R,
        limits: &Limits,
    ) -> Result<(LayerMeta, bool)> {
        if self.exists(chain) {
            return Ok((self.meta(chain)?, false));
        }
        let tmp = TempTree::new_in(&self.dir, TEMP_PREFIX)?;
        let fs_dir = tmp.path().join(FS_DIR);
        fs::create_dir(&fs_dir).map_err(ImageError::io("mkdir", &fs_dir))?;
        let mut hashing = HashingReader::new(LimitedReader::new(
            stream,
            limits.max_layer_bytes,
            "layer uncompressed size",
        ));
        let stats = Unpacker::new(&fs_dir, lowers, limits, self.privileged).unpack(&mut hashing)?;
        let (actual, diff_size) = hashing.finish();
        if &actual != diff_id {
            return Err(ImageError::DigestMismatch {
                what: "layer DiffID".to_owned(),
                expected: diff_id.to_string(),
                actual: actual.to_string(),
            });
        }
        let meta = LayerMeta {
            chain_id: chain.clone(),
            diff_id: diff_id.clone(),
            parent: parent.cloned(),
            size: stats.size,
            diff_size,
            entries: stats.entries,
        };
        let meta_bytes = serde_json::to_vec_pretty(&meta).expect("layer metadata serialises");
        write_atomic(&tmp.path().join(META_FILE), &meta_bytes)?;
        sync_filesystem(tmp.path())?;
        let target = self.path(chain);
        match fs::rename(tmp.path(), &target) {
            Ok(()) => {
                tmp.keep();
                fsync_dir(&self.dir)?;
                tracing::info!(chain_id = %chain, %diff_id, size = stats.size, entries = stats.entries, "layer unpacked");
                Ok((meta, true))
            }
            // Someone published the same ChainID meanwhile: theirs is as good as ours.
            Err(_) if self.exists(chain) => Ok((self.meta(chain)?, false)),
            Err(e) => Err(ImageError::io("rename layer into place", &target)(e)),
        }
    }
}

/// Flushes the unpacked files before the layer is published, so a crash after the rename
/// cannot expose a layer whose file contents never reached the disk.
fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = fs::File::open(path).map_err(ImageError::io("open", path))?;
    nix::unistd::syncfs(&dir).map_err(|e| ImageError::io("syncfs", path)(e.into()))
}
