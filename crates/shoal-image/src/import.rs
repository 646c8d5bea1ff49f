//! `import`: a root filesystem tarball (plain, gzip or zstd) becomes a one-layer image, with
//! Dockerfile-like changes applied to its config.

use std::io::{self, Read};

use oci_spec::image::{
    Arch, Config, Descriptor, HistoryBuilder, ImageConfigurationBuilder, MediaType, Os,
    RootFsBuilder,
};

use crate::changes::apply_changes;
use crate::compression::{Compression, decompress};
use crate::digest::LimitedReader;
use crate::error::{ImageError, Result};
use crate::platform::host_arch;
use crate::reference::Reference;
use crate::save::oci_manifest;
use crate::store::{ImageStore, now_rfc3339};
use crate::types::ImageSummary;

impl ImageStore {
    /// Imports a root filesystem tar as a new single-layer image for this host's platform,
    /// optionally tagged. `changes` are `CMD`, `ENTRYPOINT`, `ENV`, `EXPOSE`, `LABEL`,
    /// `STOPSIGNAL`, `USER`, `VOLUME` and `WORKDIR` instructions; anything else is refused.
    pub fn import(
        &self,
        rootfs_tar: impl Read,
        reference: Option<&str>,
        changes: &[String],
    ) -> Result<ImageSummary> {
        let reference = reference.map(Reference::parse).transpose()?;
        if let Some(r) = &reference
            && r.digest().is_some()
        {
            return Err(ImageError::InvalidReference {
                reference: r.familiar(),
                reason: "an imported image is tagged, not named by digest".to_owned(),
            });
        }
        // Checked before reading the (possibly huge) tarball.
        let mut exec = Config::default();
        apply_changes(&mut exec, changes)?;

        self.transaction(|txn| {
            // Stored uncompressed, so the blob digest is the DiffID and save needs no work.
            let (_, stream) = decompress(rootfs_tar)?;
            let mut limited =
                LimitedReader::new(stream, self.limits.max_layer_bytes, "imported rootfs size");
            let mut writer = self.content.writer()?;
            io::copy(&mut limited, &mut writer)
                .map_err(ImageError::stream("reading rootfs tar"))?;
            let layer = writer.commit(None, None)?;
            let layer_size = layer.size;
            let diff_id = txn.blob(layer);

            let now = now_rfc3339();
            let history = HistoryBuilder::default()
                .created(now.clone())
                .created_by("shoal image import".to_owned())
                .comment("Imported from -".to_owned())
                .build()
                .map_err(build_err)?;
            let config = ImageConfigurationBuilder::default()
                .created(now)
                .architecture(Arch::from(host_arch()))
                .os(Os::from(crate::platform::HOST_OS))
                .config(exec)
                .rootfs(
                    RootFsBuilder::default()
                        .typ("layers".to_owned())
                        .diff_ids(vec![diff_id.to_string()])
                        .build()
                        .map_err(build_err)?,
                )
                .history(vec![history])
                .build()
                .map_err(build_err)?;
            let config_bytes = serde_json::to_vec(&config).expect("config serialises");
            let config_digest = self.write_blob(&config_bytes, txn)?;
            let manifest = oci_manifest(
                Descriptor::new(
                    MediaType::ImageConfig,
                    config_bytes.len() as u64,
                    config_digest.to_oci(),
                ),
                vec![Descriptor::new(
                    MediaType::from(Compression::None.layer_media_type()),
                    layer_size,
                    diff_id.to_oci(),
                )],
            )?;
            let manifest_digest = self.write_blob(&manifest, txn)?;
            let summary = self.record_new_image(&manifest_digest, reference.as_ref(), txn)?;
            tracing::info!(id = %summary.id, tags = ?summary.repo_tags, "image imported");
            Ok(summary)
        })
    }
}

fn build_err(e: oci_spec::OciSpecError) -> ImageError {
    ImageError::InvalidArchive(format!("building image config: {e}"))
}
