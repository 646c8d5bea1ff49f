//! A node's identity on disk (`node.key`, `node.crt`, `ca.crt`): validated, atomically written,
//! and loaded with errors that name the file at fault.
//!
//! `node.key` also carries a manager's raft data keys, so that the private key and the data keys
//! are always rewritten together (one rename) and share one protection:
//! - in clear: the PKCS#8 `PRIVATE KEY` block, then one `SHOAL RAFT DATA KEY` block per data key
//!   (hex of the id, u32 big-endian, and the 32 key bytes) and, once set, a `SHOAL KEY VERSION`
//!   block (hex of a u64 big-endian); a worker's file is the key alone;
//! - sealed (autolock): a single `SHOAL SEALED NODE KEY` block, hex of the private key, the
//!   data keys and the key version sealed under the unlock key (see `seal`).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ca::{check_is_ca, verify_issued_by};
use crate::error::{FileKind, PkiError, Result};
use crate::identity::NodeIdentity;
use crate::key::NodeKey;
use crate::pem::{one_cert_der, parse_cert};
use crate::seal::{self, DataKey, KeyProtection, OpenError, UnlockKey};

use zeroize::Zeroizing;

/// File name of the node's private key.
pub const KEY_FILE: &str = "node.key";
/// File name of the node's certificate.
pub const CERT_FILE: &str = "node.crt";
/// File name of the cluster root CA certificate.
pub const ROOT_CA_FILE: &str = "ca.crt";

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

const PKCS8_LABEL: &str = "PRIVATE KEY";
const DATA_KEY_LABEL: &str = "SHOAL RAFT DATA KEY";
const SEALED_LABEL: &str = "SHOAL SEALED NODE KEY";
const VERSION_LABEL: &str = "SHOAL KEY VERSION";

/// Everything a node needs to prove who it is and to check who its peers are.
#[derive(Debug)]
pub struct NodeCertificates {
    pub key: NodeKey,
    pub cert_pem: String,
    pub root_ca_pem: String,
}

impl NodeCertificates {
    /// Checks that the three parts belong together: the root is a CA, the certificate was
    /// issued by it, and the certificate's public key is this key's.
    pub fn validate(&self) -> Result<()> {
        let root_der = one_cert_der(&self.root_ca_pem, "root ca certificate")?;
        check_is_ca(&parse_cert(&root_der)?)?;
        let cert_der = one_cert_der(&self.cert_pem, "certificate")?;
        verify_issued_by(&root_der, &cert_der)?;
        check_key_matches(&self.key, &cert_der)
    }

    /// The identity this node's certificate states.
    pub fn identity(&self) -> Result<NodeIdentity> {
        NodeIdentity::from_pem(&self.cert_pem)
    }

    /// Writes the identity under `dir` (created 0700 if missing); the key file is 0600 and
    /// holds `protection`'s data keys, sealed under its unlock key when it has one.
    ///
    /// Every writer of a node's identity must pass the node's current protection, or the data
    /// keys are lost or the file is sealed under a stale key: in the daemon, write through the
    /// data root, which keeps it.
    ///
    /// Refuses to write an inconsistent set, since `load` would refuse it afterwards. Each file
    /// is replaced atomically; all three are staged and fsynced before any is renamed, so a
    /// crash leaves at worst a mix that `load` reports rather than a torn file.
    pub fn save(&self, dir: &Path, protection: &KeyProtection) -> Result<()> {
        self.validate()?;
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(PkiError::io("create directory", dir))?;

        let key_text = key_file_text(&self.key, protection)?;
        let files = [
            (ROOT_CA_FILE, self.root_ca_pem.as_bytes(), CERT_MODE),
            (KEY_FILE, key_text.as_bytes(), KEY_MODE),
            (CERT_FILE, self.cert_pem.as_bytes(), CERT_MODE),
        ];
        let mut staged: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(files.len());
        for (name, content, mode) in &files {
            match stage(dir, name, content, *mode) {
                Ok(tmp) => staged.push((tmp, dir.join(name))),
                Err(e) => {
                    discard(&staged);
                    return Err(e);
                }
            }
        }
        for (i, (tmp, dest)) in staged.iter().enumerate() {
            if let Err(e) = fs::rename(tmp, dest) {
                discard(&staged[i..]);
                return Err(PkiError::Io {
                    op: "rename into place",
                    path: dest.clone(),
                    source: e,
                });
            }
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(PkiError::io("sync directory", dir))
    }

    /// Reads and validates the identity stored under `dir`, ignoring any data keys. A sealed
    /// key file is [`PkiError::KeySealed`]: use [`NodeCertificates::load_protected`].
    pub fn load(dir: &Path) -> Result<NodeCertificates> {
        NodeCertificates::load_protected(dir, None).map(|(certs, _)| certs)
    }

    /// Whether the key file under `dir` is sealed, i.e. loading it needs the unlock key.
    pub fn is_sealed(dir: &Path) -> Result<bool> {
        let text = Zeroizing::new(read(&dir.join(KEY_FILE), FileKind::Key)?);
        Ok(text.contains(&format!("-----BEGIN {SEALED_LABEL}-----")))
    }

    /// Reads and validates the identity stored under `dir` and what its key file keeps beside
    /// the key. A sealed key file needs `unlock_key` ([`PkiError::KeySealed`] without one,
    /// [`PkiError::WrongUnlockKey`] with another); a clear one ignores it. The protection
    /// returned is the file's: its unlock key is `unlock_key` exactly when the file was sealed.
    ///
    /// Never regenerates anything: a missing or damaged file is an error naming that file, so
    /// an operator can tell "never joined" from "disk trouble".
    pub fn load_protected(
        dir: &Path,
        unlock_key: Option<&UnlockKey>,
    ) -> Result<(NodeCertificates, KeyProtection)> {
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        let root_path = dir.join(ROOT_CA_FILE);

        let key_text = Zeroizing::new(read(&key_path, FileKind::Key)?);
        let cert_pem = read(&cert_path, FileKind::Certificate)?;
        let root_ca_pem = read(&root_path, FileKind::RootCa)?;
        warn_if_key_exposed(&key_path);

        let (key, protection) = parse_key_file(&key_text, unlock_key).map_err(|e| match e {
            KeyFileError::Sealed => PkiError::KeySealed {
                path: key_path.clone(),
            },
            KeyFileError::WrongKey => PkiError::WrongUnlockKey {
                path: key_path.clone(),
            },
            KeyFileError::Corrupt(reason) => PkiError::FileCorrupt {
                kind: FileKind::Key,
                path: key_path.clone(),
                reason,
            },
        })?;
        let root_der = one_cert_der(&root_ca_pem, "root ca certificate")
            .map_err(|e| corrupt(FileKind::RootCa, &root_path, e))?;
        parse_cert(&root_der)
            .and_then(|c| check_is_ca(&c))
            .map_err(|e| corrupt(FileKind::RootCa, &root_path, e))?;
        let cert_der = one_cert_der(&cert_pem, "certificate")
            .map_err(|e| corrupt(FileKind::Certificate, &cert_path, e))?;
        NodeIdentity::from_der(&cert_der)
            .map_err(|e| corrupt(FileKind::Certificate, &cert_path, e))?;

        verify_issued_by(&root_der, &cert_der).map_err(|e| PkiError::StoredCertNotFromRoot {
            cert: cert_path.clone(),
            root: root_path.clone(),
            reason: e.to_string(),
        })?;
        check_key_matches(&key, &cert_der).map_err(|_| PkiError::StoredKeyMismatch {
            cert: cert_path.clone(),
            key: key_path.clone(),
        })?;

        Ok((
            NodeCertificates {
                key,
                cert_pem,
                root_ca_pem,
            },
            protection,
        ))
    }
}

/// `node.key`'s content for `key` under `protection` (see the module documentation).
fn key_file_text(key: &NodeKey, protection: &KeyProtection) -> Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    match &protection.unlock_key {
        Some(unlock) => {
            let der = Zeroizing::new(key.pkcs8_der());
            let secrets = seal::encode_secrets(&der, &protection.data_keys, protection.key_version);
            let sealed = seal::seal(unlock, &secrets)?;
            armor(&mut text, SEALED_LABEL, &sealed);
        }
        None => {
            text.push_str(&key.to_pem());
            for data_key in &protection.data_keys {
                let mut bytes = Zeroizing::new(data_key.id().to_be_bytes().to_vec());
                bytes.extend_from_slice(data_key.bytes());
                armor(&mut text, DATA_KEY_LABEL, &bytes);
            }
            if protection.key_version != 0 {
                armor(
                    &mut text,
                    VERSION_LABEL,
                    &protection.key_version.to_be_bytes(),
                );
            }
        }
    }
    Ok(text)
}

/// Appends a PEM-style block of `bytes` in hex, 64 characters a line.
fn armor(text: &mut String, label: &str, bytes: &[u8]) {
    let hex = Zeroizing::new(hex::encode(bytes));
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("-----BEGIN {label}-----\n"));
    for line in hex.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).unwrap_or_default());
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
}

enum KeyFileError {
    Sealed,
    WrongKey,
    Corrupt(String),
}

/// The blocks of a PEM-style text: (label, body lines joined). Only blank lines may sit
/// between blocks.
fn pem_blocks(text: &str) -> std::result::Result<Vec<(String, Zeroizing<String>)>, KeyFileError> {
    let corrupt = |reason: &str| KeyFileError::Corrupt(reason.to_owned());
    let mut blocks = Vec::new();
    let mut open: Option<(String, Zeroizing<String>)> = None;
    for line in text.lines().map(str::trim) {
        match open.as_mut() {
            None if line.is_empty() => {}
            None => {
                let label = line
                    .strip_prefix("-----BEGIN ")
                    .and_then(|l| l.strip_suffix("-----"))
                    .ok_or_else(|| corrupt("text outside a PEM block"))?;
                open = Some((label.to_owned(), Zeroizing::new(String::new())));
            }
            Some((label, body)) => {
                if let Some(end) = line
                    .strip_prefix("-----END ")
                    .and_then(|l| l.strip_suffix("-----"))
                {
                    if end != label {
                        return Err(corrupt("mismatched PEM block end"));
                    }
                    blocks.extend(open.take());
                } else {
                    body.push_str(line);
                }
            }
        }
    }
    if open.is_some() {
        return Err(corrupt("unterminated PEM block"));
    }
    Ok(blocks)
}

fn parse_key_file(
    text: &str,
    unlock_key: Option<&UnlockKey>,
) -> std::result::Result<(NodeKey, KeyProtection), KeyFileError> {
    let corrupt = |reason: String| KeyFileError::Corrupt(reason);
    let blocks = pem_blocks(text)?;
    if let Some((_, body)) = blocks.iter().find(|(label, _)| label == SEALED_LABEL) {
        if blocks.len() != 1 {
            return Err(corrupt("a sealed key file holds one block only".into()));
        }
        let unlock = unlock_key.ok_or(KeyFileError::Sealed)?;
        let sealed = hex::decode(body.as_bytes())
            .map_err(|_| corrupt("the sealed key is not hex".into()))?;
        let secrets = seal::open(unlock, &sealed).map_err(|e| match e {
            OpenError::WrongKey => KeyFileError::WrongKey,
            OpenError::Malformed => corrupt("the sealed key is malformed".into()),
        })?;
        let (der, data_keys, key_version) = seal::decode_secrets(&secrets)
            .ok_or_else(|| corrupt("the sealed key's content is malformed".into()))?;
        check_ids(&data_keys)?;
        let key = NodeKey::from_pkcs8_der(&der).map_err(|e| corrupt(e.to_string()))?;
        return Ok((
            key,
            KeyProtection {
                data_keys,
                unlock_key: Some(unlock.clone()),
                key_version,
            },
        ));
    }
    let mut key = None;
    let mut data_keys = Vec::new();
    let mut key_version = None;
    for (label, body) in &blocks {
        match label.as_str() {
            PKCS8_LABEL if key.is_none() => {
                let pem = Zeroizing::new(format!(
                    "-----BEGIN {PKCS8_LABEL}-----\n{}\n-----END {PKCS8_LABEL}-----\n",
                    body.as_str()
                ));
                key = Some(NodeKey::from_pem(&pem).map_err(|e| corrupt(e.to_string()))?);
            }
            PKCS8_LABEL => return Err(corrupt("more than one private key".into())),
            DATA_KEY_LABEL => {
                let bytes = Zeroizing::new(
                    hex::decode(body.as_bytes())
                        .map_err(|_| corrupt("a raft data key is not hex".into()))?,
                );
                let data_key = (bytes.len() == 4 + seal::KEY_LEN)
                    .then(|| {
                        let id = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                        DataKey::from_parts(id, &bytes[4..])
                    })
                    .flatten()
                    .ok_or_else(|| corrupt("a raft data key has the wrong length".into()))?;
                data_keys.push(data_key);
            }
            VERSION_LABEL if key_version.is_none() => {
                let bytes = hex::decode(body.as_bytes())
                    .map_err(|_| corrupt("the key version is not hex".into()))?;
                let bytes: [u8; 8] = bytes
                    .try_into()
                    .map_err(|_| corrupt("the key version has the wrong length".into()))?;
                key_version = Some(u64::from_be_bytes(bytes));
            }
            VERSION_LABEL => return Err(corrupt("more than one key version".into())),
            other => return Err(corrupt(format!("unexpected {other:?} block"))),
        }
    }
    check_ids(&data_keys)?;
    let key = key.ok_or_else(|| corrupt("no private key found".into()))?;
    Ok((
        key,
        KeyProtection {
            data_keys,
            unlock_key: None,
            key_version: key_version.unwrap_or(0),
        },
    ))
}

fn check_ids(data_keys: &[DataKey]) -> std::result::Result<(), KeyFileError> {
    let mut ids: Vec<u32> = data_keys.iter().map(DataKey::id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(KeyFileError::Corrupt(
            "two raft data keys have the same id".into(),
        ));
    }
    Ok(())
}

fn check_key_matches(key: &NodeKey, cert_der: &[u8]) -> Result<()> {
    let cert = parse_cert(cert_der)?;
    if cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw() {
        Ok(())
    } else {
        Err(PkiError::KeyMismatch)
    }
}

fn read(path: &Path, kind: FileKind) -> Result<String> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PkiError::FileMissing {
                kind,
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(PkiError::io("read", path)(e)),
    };
    String::from_utf8(bytes).map_err(|_| PkiError::FileCorrupt {
        kind,
        path: path.to_owned(),
        reason: "not utf-8 text".into(),
    })
}

fn corrupt(kind: FileKind, path: &Path, e: PkiError) -> PkiError {
    PkiError::FileCorrupt {
        kind,
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

fn warn_if_key_exposed(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "node key file is readable by group or others");
        }
    }
}

/// Writes `content` to a fresh temporary file next to `name` and fsyncs it.
fn stage(dir: &Path, name: &str, content: &[u8], mode: u32) -> Result<PathBuf> {
    let suffix: u64 = rand::random();
    let tmp = dir.join(format!(".{name}.tmp-{suffix:016x}"));
    let result = (|| {
        // create_new: never follow or reuse something already sitting at the temp name.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask can only narrow `mode`; set it explicitly so certificates stay world-readable
        // and the key never ends up wider than asked.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(content)?;
        file.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(PkiError::Io {
                op: "write",
                path: tmp,
                source: e,
            })
        }
    }
}

fn discard(staged: &[(PathBuf, PathBuf)]) {
    for (tmp, _) in staged {
        let _ = fs::remove_file(tmp);
    }
}
