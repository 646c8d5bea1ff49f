//! The content-addressed blob store: `blobs/sha256/<hex>`, every blob written through `ingest/`,
//! fsynced, verified against its digest, then renamed into place.
//!
//! Partial writes named by a caller key survive in `ingest/` so a later registry pull can
//! resume a download where it stopped; anonymous writes vanish unless committed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher, is_sha256_hex};
use crate::error::{ImageError, Result};
use crate::fsutil::{create_private_dir, fsync_dir};

/// Prefix of anonymous ingest files; anything with it is garbage after a crash.
const TEMP_PREFIX: &str = "tmp-";
/// Suffix of resumable partial files.
const PARTIAL_SUFFIX: &str = ".partial";

/// The blob half of the image store.
#[derive(Debug)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

/// The outcome of committing a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub digest: Digest,
    pub size: u64,
    /// False when the store already had the blob (the new copy was discarded).
    pub created: bool,
}

impl ContentStore {
    pub(crate) fn open(root: &Path) -> Result<ContentStore> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        create_private_dir(&blobs)?;
        create_private_dir(&ingest)?;
        let store = ContentStore { blobs, ingest };
        store.clean_temporaries()?;
        Ok(store)
    }

    pub(crate) fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    /// The ingest directory; callers may stage their own temp trees here.
    pub(crate) fn ingest_dir(&self) -> &Path {
        &self.ingest
    }

    /// Removes anonymous leftovers of a crashed process; resumable partials stay.
    pub(crate) fn clean_temporaries(&self) -> Result<()> {
        let entries = fs::read_dir(&self.ingest).map_err(ImageError::io("read", &self.ingest))?;
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if !name.ends_with(PARTIAL_SUFFIX) {
                let path = e.path();
                tracing::debug!(path = %path.display(), "removing stale ingest entry");
                crate::fsutil::remove_tree(&path)
                    .or_else(|_| fs::remove_file(&path))
                    .map_err(ImageError::io("remove", &path))?;
            }
        }
        Ok(())
    }

    /// Removes resumable partial downloads nobody has written to for `idle` (an abandoned
    /// pull's); returns the bytes freed. A pull in progress touches its partial all the time.
    pub(crate) fn prune_partials(&self, idle: std::time::Duration) -> Result<u64> {
        let entries = fs::read_dir(&self.ingest).map_err(ImageError::io("read", &self.ingest))?;
        let mut freed = 0;
        for e in entries.flatten() {
            if !e.file_name().to_string_lossy().ends_with(PARTIAL_SUFFIX) {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            let stale = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age >= idle);
            if stale {
                let path = e.path();
                match fs::remove_file(&path) {
                    Ok(()) => freed += meta.len(),
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(ImageError::io("remove", &path)(err)),
                }
            }
        }
        Ok(freed)
    }

    /// Where a blob lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Whether the store has the blob.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// The stored size of a blob.
    pub fn size(&self, digest: &Digest) -> Result<u64> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ImageError::NotFound(format!("blob {digest}")))
            }
            Err(e) => Err(ImageError::io("stat", &path)(e)),
        }
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ImageError::NotFound(format!("blob {digest}"))
            } else {
                ImageError::io("open", &path)(e)
            }
        })
    }

    /// Reads a small blob (JSON metadata) whole, refusing it past `max` bytes and
    /// re-verifying its digest so on-disk corruption is caught before parsing.
    pub fn read_small(&self, digest: &Digest, max: u64) -> Result<Vec<u8>> {
        let file = self.open_blob(digest)?;
        let mut bytes = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(ImageError::io("read", &self.blob_path(digest)))?;
        if bytes.len() as u64 > max {
            return Err(ImageError::LimitExceeded {
                what: "JSON blob",
                limit: max,
            });
        }
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(ImageError::DigestMismatch {
                what: "stored blob".to_owned(),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Every blob in the store.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.blobs).map_err(ImageError::io("read", &self.blobs))?;
        for e in entries {
            let e = e.map_err(ImageError::io("read", &self.blobs))?;
            let name = e.file_name();
            match name.to_str() {
                Some(hex) if is_sha256_hex(hex) => out.push(Digest::from_hex(hex)?),
                _ => {
                    tracing::warn!(name = ?name, "unexpected file in blob store");
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes a blob; returns its size, or `None` when it was absent. Only gc and
    /// rollbacks delete: they know no image still needs the blob.
    pub(crate) fn delete(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        let size = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io("stat", &path)(e)),
        };
        fs::remove_file(&path).map_err(ImageError::io("remove", &path))?;
        Ok(Some(size))
    }

    /// Stores bytes already in memory.
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<Committed> {
        let mut w = self.writer()?;
        w.write_all(bytes)
            .map_err(ImageError::io("write", &w.path))?;
        w.commit(None, None)
    }

    /// A writer for a blob of yet unknown digest; its temp file is removed unless committed.
    pub fn writer(&self) -> Result<BlobWriter> {
        let file = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.ingest)
            .map_err(ImageError::io("create ingest file in", &self.ingest))?;
        let (file, path) = file.keep().map_err(|e| ImageError::Io {
            op: "keep ingest file",
            path: self.ingest.clone(),
            source: e.error,
        })?;
        Ok(BlobWriter {
            file,
            path,
            blobs: self.blobs.clone(),
            hasher: Hasher::default(),
            resumable: false,
            done: false,
        })
    }

    /// A writer that continues the partial blob stored under `key` (a download's ref, e.g.
    /// its expected digest); `offset()` tells where to resume. The partial survives drops
    /// and crashes until committed or aborted.
    pub fn resume(&self, key: &str) -> Result<BlobWriter> {
        let path = self.partial_path(key);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(ImageError::io("open partial blob", &path))?;
        // sha256 state cannot be saved, so the bytes already there are hashed again.
        let mut hasher = Hasher::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(ImageError::io("read partial blob", &path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(BlobWriter {
            file,
            path,
            blobs: self.blobs.clone(),
            hasher,
            resumable: true,
            done: false,
        })
    }

    /// Drops the partial blob stored under `key`.
    pub fn abort(&self, key: &str) -> Result<()> {
        let path = self.partial_path(key);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(ImageError::io("remove", &path)(e))
            }
            _ => Ok(()),
        }
    }

    fn partial_path(&self, key: &str) -> PathBuf {
        // Keys come from callers (and later from registries): hashing them makes any key a
        // safe, fixed-length file name.
        self.ingest.join(format!(
            "{}{PARTIAL_SUFFIX}",
            Digest::of(key.as_bytes()).hex()
        ))
    }

    /// Moves a file whose content has already been hashed to `digest` into the store.
    /// Used for staged archive members; the file must be on the store's filesystem.
    pub(crate) fn adopt(&self, file: &Path, digest: &Digest) -> Result<bool> {
        let target = self.blob_path(digest);
        if target.exists() {
            return Ok(false);
        }
        File::open(file)
            .and_then(|f| f.sync_all())
            .map_err(ImageError::io("fsync", file))?;
        let _ = fs::set_permissions(file, fs::Permissions::from_mode(0o444));
        fs::rename(file, &target).map_err(ImageError::io("rename into blob store", &target))?;
        fsync_dir(&self.blobs)?;
        Ok(true)
    }
}

/// A blob being written; hashes as it goes.
#[derive(Debug)]
pub struct BlobWriter {
    file: File,
    path: PathBuf,
    blobs: PathBuf,
    hasher: Hasher,
    resumable: bool,
    done: bool,
}

impl BlobWriter {
    /// Bytes written so far (including those of a resumed partial).
    pub fn offset(&self) -> u64 {
        self.hasher.count()
    }

    /// Fsyncs, verifies the digest (and size) when expected ones are given, and renames
    /// the blob into place. A mismatch deletes the data: a corrupt partial is worthless.
    pub fn commit(
        mut self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<Committed> {
        self.done = true;
        let result = self.finish(expected, expected_size);
        if result.is_err() {
            let _ = fs::remove_file(&self.path);
        }
        result
    }

    fn finish(
        &mut self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<Committed> {
        self.file
            .flush()
            .and_then(|()| self.file.sync_all())
            .map_err(ImageError::io("fsync", &self.path))?;
        let (digest, size) = std::mem::take(&mut self.hasher).finish();
        if let Some(want) = expected_size
            && want != size
        {
            return Err(ImageError::SizeMismatch {
                what: expected.map_or_else(|| "blob".to_owned(), |d| format!("blob {d}")),
                expected: want,
                actual: size,
            });
        }
        if let Some(want) = expected
            && want != &digest
        {
            return Err(ImageError::DigestMismatch {
                what: "blob".to_owned(),
                expected: want.to_string(),
                actual: digest.to_string(),
            });
        }
        let target = self.blobs.join(digest.hex());
        if target.exists() {
            let _ = fs::remove_file(&self.path);
            return Ok(Committed {
                digest,
                size,
                created: false,
            });
        }
        let _ = fs::set_permissions(&self.path, fs::Permissions::from_mode(0o444));
        fs::rename(&self.path, &target)
            .map_err(ImageError::io("rename into blob store", &target))?;
        fsync_dir(&self.blobs)?;
        tracing::debug!(%digest, size, "blob committed");
        Ok(Committed {
            digest,
            size,
            created: true,
        })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done && !self.resumable {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idle_partials_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let mut abandoned = store.resume("sha256:abandoned").unwrap();
        abandoned.write_all(b"half a layer").unwrap();
        drop(abandoned);
        let mut active = store.resume("sha256:active").unwrap();
        active.write_all(b"being written").unwrap();
        drop(active);
        let two_hours_ago = filetime::FileTime::from_system_time(
            std::time::SystemTime::now() - std::time::Duration::from_secs(7200),
        );
        filetime::set_file_mtime(store.partial_path("sha256:abandoned"), two_hours_ago).unwrap();

        let freed = store
            .prune_partials(std::time::Duration::from_secs(3600))
            .unwrap();
        assert_eq!(freed, b"half a layer".len() as u64);
        assert!(!store.partial_path("sha256:abandoned").exists());
        assert_eq!(store.resume("sha256:active").unwrap().offset(), 13);
    }

    #[test]
    fn verified_write_resume_and_abort() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let c = store.write_bytes(b"hello").unwrap();
        assert!(c.created);
        assert_eq!(c.digest, Digest::of(b"hello"));
        assert!(store.contains(&c.digest));
        assert!(!store.write_bytes(b"hello").unwrap().created);

        // A wrong expected digest is refused and leaves nothing behind.
        let mut w = store.writer().unwrap();
        w.write_all(b"data").unwrap();
        let err = w.commit(Some(&Digest::of(b"other")), None).unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }));
        assert_eq!(fs::read_dir(store.ingest_dir()).unwrap().count(), 0);

        // Resumable partial: write half, drop, resume, finish.
        let want = Digest::of(b"abcdef");
        let mut w = store.resume(want.as_str()).unwrap();
        w.write_all(b"abc").unwrap();
        drop(w);
        let mut w = store.resume(want.as_str()).unwrap();
        assert_eq!(w.offset(), 3);
        w.write_all(b"def").unwrap();
        let c = w.commit(Some(&want), Some(6)).unwrap();
        assert_eq!(c.digest, want);
        assert_eq!(store.read_small(&want, 100).unwrap(), b"abcdef");
        assert_eq!(fs::read_dir(store.ingest_dir()).unwrap().count(), 0);

        let mut w = store.resume("k").unwrap();
        w.write_all(b"x").unwrap();
        drop(w);
        store.abort("k").unwrap();
        assert_eq!(fs::read_dir(store.ingest_dir()).unwrap().count(), 0);

        // Dropped anonymous writers leave nothing.
        let mut w = store.writer().unwrap();
        w.write_all(b"zzz").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(store.ingest_dir()).unwrap().count(), 0);
        assert_eq!(store.list().unwrap().len(), 2);
        assert!(matches!(
            store.read_small(&want, 3),
            Err(ImageError::LimitExceeded { .. })
        ));
    }
}
