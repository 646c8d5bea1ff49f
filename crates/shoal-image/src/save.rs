//! `save`: writes images as one tar that is both an OCI image layout and a Docker `manifest.json`
//! archive, as current Docker does, with uncompressed layers whose digest is their DiffID.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, BufReader, Read, Write};

use oci_spec::image::{Descriptor, ImageIndexBuilder, ImageManifestBuilder, MediaType};

use crate::compression::decompress;
use crate::digest::{Digest, HashingReader};
use crate::error::{ImageError, Result};
use crate::load::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, DockerManifestEntry};
use crate::store::ImageStore;

const LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Serialises an OCI image manifest for a config and layers.
pub(crate) fn oci_manifest(config: Descriptor, layers: Vec<Descriptor>) -> Result<Vec<u8>> {
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers)
        .build()
        .map_err(|e| ImageError::InvalidArchive(format!("building manifest: {e}")))?;
    Ok(serde_json::to_vec(&manifest).expect("manifest serialises"))
}

impl ImageStore {
    /// Writes the images `references` name (references or ids) to `out`. Tags given as
    /// references are recorded in both `index.json` and `manifest.json`; ids carry none.
    pub fn save(&self, references: &[&str], out: impl Write) -> Result<()> {
        let _guard = self.op_lock.lock();
        let index = self.index_snapshot();
        let set = self.save_set(&index, references)?;
        if set.is_empty() {
            return Err(ImageError::NotFound("no image to save".to_owned()));
        }
        let mut tar = tar::Builder::new(out);
        let mut written: HashSet<Digest> = HashSet::new();
        let mut index_entries: Vec<Descriptor> = Vec::new();
        let mut docker: Vec<DockerManifestEntry> = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        append_dir(&mut tar, "blobs/")?;
        append_dir(&mut tar, "blobs/sha256/")?;

        for (id, tags) in &set {
            let rec = &index.images[id];
            let config = self.content.read_small(id, self.limits.max_json_bytes)?;
            if written.insert(id.clone()) {
                append_bytes(&mut tar, &blob_name(id), &config)?;
            }
            let mut layer_descs = Vec::with_capacity(rec.layers.len());
            for l in &rec.layers {
                if written.insert(l.diff_id.clone()) {
                    self.append_layer(&mut tar, &l.blob, &l.diff_id, l.diff_size)?;
                }
                layer_descs.push(Descriptor::new(
                    MediaType::ImageLayer,
                    l.diff_size,
                    l.diff_id.to_oci(),
                ));
            }
            let manifest = oci_manifest(
                Descriptor::new(MediaType::ImageConfig, config.len() as u64, id.to_oci()),
                layer_descs,
            )?;
            let manifest_digest = Digest::of(&manifest);
            if written.insert(manifest_digest.clone()) {
                append_bytes(&mut tar, &blob_name(&manifest_digest), &manifest)?;
            }
            let desc = Descriptor::new(
                MediaType::ImageManifest,
                manifest.len() as u64,
                manifest_digest.to_oci(),
            );
            if tags.is_empty() {
                index_entries.push(desc.clone());
            }
            for t in tags {
                let mut d = desc.clone();
                let mut ann = HashMap::new();
                ann.insert(ANNOTATION_IMAGE_NAME.to_owned(), t.to_string());
                ann.insert(
                    ANNOTATION_REF_NAME.to_owned(),
                    t.tag().unwrap_or("latest").to_owned(),
                );
                d.set_annotations(Some(ann));
                index_entries.push(d);
                if let (Some(tag), Some(top)) = (t.tag(), rec.layers.last()) {
                    repositories
                        .entry(t.familiar_repository())
                        .or_default()
                        .insert(tag.to_owned(), top.diff_id.hex().to_owned());
                }
            }
            docker.push(DockerManifestEntry {
                config: blob_name(id),
                repo_tags: (!tags.is_empty()).then(|| tags.iter().map(|t| t.familiar()).collect()),
                layers: rec.layers.iter().map(|l| blob_name(&l.diff_id)).collect(),
            });
        }

        let oci_index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(index_entries)
            .build()
            .map_err(|e| ImageError::InvalidArchive(format!("building index: {e}")))?;
        append_bytes(&mut tar, "oci-layout", LAYOUT)?;
        append_bytes(
            &mut tar,
            "index.json",
            &serde_json::to_vec(&oci_index).expect("index serialises"),
        )?;
        append_bytes(
            &mut tar,
            "manifest.json",
            &serde_json::to_vec(&docker).expect("manifest.json serialises"),
        )?;
        if !repositories.is_empty() {
            append_bytes(
                &mut tar,
                "repositories",
                &serde_json::to_vec(&repositories).expect("repositories serialises"),
            )?;
        }
        tar.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(ImageError::stream("writing archive"))?;
        tracing::info!(images = set.len(), "images saved");
        Ok(())
    }

    /// Streams a layer uncompressed, checking on the way that it still hashes to its DiffID.
    fn append_layer<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        blob: &Digest,
        diff_id: &Digest,
        size: u64,
    ) -> Result<()> {
        let file = self.blob_reader(blob)?;
        let (_, stream) = decompress(BufReader::new(file))?;
        let mut hashing = HashingReader::new(stream);
        let mut header = file_header(size);
        let mut checked = ExactReader {
            inner: &mut hashing,
            remaining: size,
        };
        tar.append_data(&mut header, blob_name(diff_id), &mut checked)
            .map_err(ImageError::stream("writing archive"))?;
        // Anything past the promised size means the blob changed under us.
        let mut extra = [0u8; 1];
        if hashing
            .read(&mut extra)
            .map_err(ImageError::stream("reading layer blob"))?
            != 0
        {
            return Err(ImageError::Corrupt(format!(
                "layer blob {blob} is longer than recorded"
            )));
        }
        let (actual, _) = hashing.finish();
        if &actual != diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("DiffID of layer blob {blob}"),
                expected: diff_id.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }
}

/// Yields exactly `remaining` bytes or fails, so a short blob cannot produce a tar entry
/// shorter than its header says.
struct ExactReader<'a, R> {
    inner: &'a mut R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "layer blob shorter than recorded",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut header = file_header(bytes.len() as u64);
    tar.append_data(&mut header, name, bytes)
        .map_err(ImageError::stream("writing archive"))
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: &str) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(0);
    tar.append_data(&mut h, name, io::empty())
        .map_err(ImageError::stream("writing archive"))
}
