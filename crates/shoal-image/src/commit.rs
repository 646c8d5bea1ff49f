//! `commit`: a container's overlay upper dir becomes a new gzip layer on top of the image the
//! container was made from, with the container's configuration, Dockerfile-like changes and a
//! history entry, as `docker commit` does.

use std::io::{self, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use oci_spec::image::{Config, Descriptor, HistoryBuilder, MediaType};

use crate::changes::apply_changes;
use crate::compression::Compression;
use crate::diff::write_layer;
use crate::digest::Hasher;
use crate::error::{ImageError, Result};
use crate::reference::Reference;
use crate::save::oci_manifest;
use crate::store::{ImageStore, now_rfc3339, parse_json};
use crate::types::ImageSummary;

/// What `commit` needs besides the upper dir.
#[derive(Clone, Debug, Default)]
pub struct CommitOptions {
    /// The image the container was made from (id or reference).
    pub base: String,
    /// The container's effective configuration (image defaults merged with its own settings),
    /// before `changes`.
    pub config: Config,
    /// `CMD`, `ENV`, … instructions applied on top, as for `import`.
    pub changes: Vec<String>,
    /// `-a`: the image's author.
    pub author: Option<String>,
    /// `-m`: the history comment.
    pub comment: Option<String>,
    /// The history's "created by" (Docker puts the container's command there).
    pub created_by: String,
    /// `REPO[:TAG]` to point at the new image.
    pub reference: Option<String>,
}

/// sha256 of everything written through it: the uncompressed layer, i.e. its DiffID.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl ImageStore {
    /// Makes a new image from `base` plus the changes in `upper` (a container's overlay upper
    /// dir), optionally tagged. A container that changed nothing adds no layer, only history.
    pub fn commit(&self, upper: &Path, options: &CommitOptions) -> Result<ImageSummary> {
        let reference = options
            .reference
            .as_deref()
            .map(Reference::parse)
            .transpose()?;
        if let Some(r) = &reference
            && r.digest().is_some()
        {
            return Err(ImageError::InvalidReference {
                reference: r.familiar(),
                reason: "a committed image is tagged, not named by digest".to_owned(),
            });
        }
        let mut exec = options.config.clone();
        apply_changes(&mut exec, &options.changes)?;
        // As in a Dockerfile, a new ENTRYPOINT drops the CMD it would otherwise inherit.
        let instruction = |c: &String| {
            c.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase()
        };
        if options
            .changes
            .iter()
            .any(|c| instruction(c) == "ENTRYPOINT")
            && !options.changes.iter().any(|c| instruction(c) == "CMD")
        {
            exec.set_cmd(None);
        }

        self.transaction(|txn| {
            let index = self.index_snapshot();
            let (base_id, _) = self.lookup(&index, &options.base)?;
            let base = index.images[&base_id].clone();
            let base_config_bytes = self
                .content
                .read_small(&base_id, self.limits.max_json_bytes)?;
            let mut config: oci_spec::image::ImageConfiguration =
                parse_json("image config", &base_config_bytes)?;

            let writer = self.content.writer()?;
            let gzip = GzEncoder::new(writer, flate2::Compression::default());
            let hashing = HashingWriter {
                inner: gzip,
                hasher: Hasher::default(),
            };
            let (hashing, entries) = write_layer(upper, hashing)?;
            let new_layer = if entries == 0 {
                None
            } else {
                let (diff_id, _) = hashing.hasher.finish();
                let writer = hashing
                    .inner
                    .finish()
                    .map_err(ImageError::stream("compressing the layer"))?;
                let committed = writer.commit(None, None)?;
                let size = committed.size;
                Some((diff_id, txn.blob(committed), size))
            };

            let now = now_rfc3339();
            let mut history = HistoryBuilder::default()
                .created(now.clone())
                .created_by(options.created_by.clone())
                .empty_layer(new_layer.is_none())
                .build()
                .map_err(build_err)?;
            history.set_author(options.author.clone().filter(|a| !a.is_empty()));
            history.set_comment(options.comment.clone().filter(|c| !c.is_empty()));
            config.set_created(Some(now));
            config.set_author(options.author.clone().filter(|a| !a.is_empty()));
            config.set_config(Some(exec.clone()));
            config
                .history_mut()
                .get_or_insert_with(Vec::new)
                .push(history);
            let mut layers: Vec<Descriptor> = base
                .layers
                .iter()
                .map(|l| {
                    Descriptor::new(
                        MediaType::from(l.media_type.as_str()),
                        l.blob_size,
                        l.blob.to_oci(),
                    )
                })
                .collect();
            if let Some((diff_id, blob, size)) = &new_layer {
                config.rootfs_mut().diff_ids_mut().push(diff_id.to_string());
                layers.push(Descriptor::new(
                    MediaType::from(Compression::Gzip.layer_media_type()),
                    *size,
                    blob.to_oci(),
                ));
            }
            let config_bytes = serde_json::to_vec(&config).expect("config serialises");
            let config_digest = self.write_blob(&config_bytes, txn)?;
            let manifest = oci_manifest(
                Descriptor::new(
                    MediaType::ImageConfig,
                    config_bytes.len() as u64,
                    config_digest.to_oci(),
                ),
                layers,
            )?;
            let manifest_digest = self.write_blob(&manifest, txn)?;
            let summary = self.record_new_image(&manifest_digest, reference.as_ref(), txn)?;
            tracing::info!(
                id = %summary.id,
                base = %base_id,
                layer = ?new_layer.as_ref().map(|(d, _, _)| d.to_string()),
                "container committed"
            );
            Ok(summary)
        })
    }
}

fn build_err(e: oci_spec::OciSpecError) -> ImageError {
    ImageError::InvalidArchive(format!("building image config: {e}"))
}
