//! The at-rest format of the two storage files: their format marker, whether they are
//! encrypted, and the sealing and opening of each stateful record with the node's
//! [`StorageCipher`].
//!
//! Format 2 (this build) differs from format 1 in that a file may be encrypted: a file created
//! with a cipher holds a key-check record (`sealed`) and every log entry and snapshot body is
//! sealed; a file created without one holds neither. Format 1 files are refused rather than
//! read as if they were either. What stays in clear is bookkeeping only — the vote (term and
//! node id), the committed and purged log ids, and a snapshot's metadata (its log id and the
//! members' raft ids and addresses, which `state.json` and the certificates show anyway) —
//! so raft can recover its position without the key, and no replicated object is among it.

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};

use redb::{ReadableTable, Table};

use crate::cipher::{CipherError, RecordKind, StorageCipher};
use crate::error::RaftError;

/// The storage format this build writes and reads.
pub(crate) const STORAGE_FORMAT: u8 = 2;
/// Meta key of the format marker.
pub(crate) const KEY_FORMAT: &str = "format";
/// Meta key of the key-check record, present exactly in encrypted files.
pub(crate) const KEY_SEALED: &str = "sealed";

/// How one storage file keeps its records.
#[derive(Clone)]
pub(crate) struct AtRest {
    path: PathBuf,
    cipher: Option<StorageCipher>,
}

fn storage(path: &Path, e: impl Into<redb::Error>) -> RaftError {
    RaftError::Storage(format!("{}: {}", path.display(), e.into()))
}

impl AtRest {
    /// Checks (or, for a `fresh` file, writes) the format marker and the key check, inside the
    /// file's first write transaction. `meta` is the table holding both.
    pub(crate) fn prepare(
        path: &Path,
        cipher: Option<StorageCipher>,
        meta: &mut Table<'_, &str, &[u8]>,
        fresh: bool,
    ) -> Result<AtRest, RaftError> {
        let at_rest = AtRest {
            path: path.to_path_buf(),
            cipher,
        };
        let format = meta
            .get(KEY_FORMAT)
            .map_err(|e| storage(path, e))?
            .map(|v| v.value().to_vec());
        let corrupt = |reason: &str| RaftError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.to_owned(),
        };
        match format.as_deref() {
            None if !fresh => return Err(corrupt("missing format marker")),
            None => {
                meta.insert(KEY_FORMAT, [STORAGE_FORMAT].as_slice())
                    .map_err(|e| storage(path, e))?;
                if let Some(cipher) = &at_rest.cipher {
                    let check = cipher
                        .seal(RecordKind::KeyCheck, at_rest.file_label(), b"")
                        .map_err(|e| at_rest.key_error(e.to_string()))?;
                    meta.insert(KEY_SEALED, check.as_slice())
                        .map_err(|e| storage(path, e))?;
                }
                return Ok(at_rest);
            }
            Some([STORAGE_FORMAT]) => {}
            Some([found]) => {
                return Err(RaftError::UnsupportedFormat {
                    path: path.to_path_buf(),
                    found: *found,
                    supported: STORAGE_FORMAT,
                });
            }
            Some(_) => return Err(corrupt("malformed format marker")),
        }
        let check = meta
            .get(KEY_SEALED)
            .map_err(|e| storage(path, e))?
            .map(|v| v.value().to_vec());
        match (check, &at_rest.cipher) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(at_rest.key_error("it is encrypted, and no data key was given".into()));
            }
            (None, Some(_)) => {
                return Err(at_rest.key_error(
                    "it is not encrypted, and this node keeps its raft data encrypted".into(),
                ));
            }
            (Some(check), Some(cipher)) => {
                cipher
                    .open(RecordKind::KeyCheck, at_rest.file_label(), &check)
                    .map_err(|e| match e {
                        CipherError::Forged => at_rest.key_error(
                            "it was encrypted with another data key than this node's".into(),
                        ),
                        other => at_rest.key_error(other.to_string()),
                    })?;
            }
        }
        Ok(at_rest)
    }

    /// The file's name, bound into its key check so the check of one file does not pass for
    /// the other.
    fn file_label(&self) -> &[u8] {
        self.path
            .file_name()
            .map_or(b"".as_slice(), |n| n.as_encoded_bytes())
    }

    fn key_error(&self, reason: String) -> RaftError {
        RaftError::Encryption {
            path: self.path.clone(),
            reason,
        }
    }

    /// The stored form of a record's `plain` bytes.
    pub(crate) fn seal(
        &self,
        kind: RecordKind,
        context: &[u8],
        plain: Vec<u8>,
    ) -> io::Result<Vec<u8>> {
        match &self.cipher {
            Some(cipher) => Ok(cipher.seal(kind, context, &plain)?),
            None => Ok(plain),
        }
    }

    /// The plain bytes of a stored record.
    pub(crate) fn open<'a>(
        &self,
        kind: RecordKind,
        context: &[u8],
        stored: &'a [u8],
    ) -> io::Result<Cow<'a, [u8]>> {
        match &self.cipher {
            Some(cipher) => Ok(Cow::Owned(cipher.open(kind, context, stored)?)),
            None => Ok(Cow::Borrowed(stored)),
        }
    }
}
