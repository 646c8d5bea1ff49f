//! A node's identity on disk (`node.key`, `node.crt`, `ca.crt`): validated, atomically written,
//! and loaded with errors that name the file at fault.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ca::{check_is_ca, verify_issued_by};
use crate::error::{FileKind, PkiError, Result};
use crate::identity::NodeIdentity;
use crate::key::NodeKey;
use crate::pem::{one_cert_der, parse_cert};

/// File name of the node's private key.
pub const KEY_FILE: &str = "node.key";
/// File name of the node's certificate.
pub const CERT_FILE: &str = "node.crt";
/// File name of the cluster root CA certificate.
pub const ROOT_CA_FILE: &str = "ca.crt";

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

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

    /// Writes the identity under `dir` (created 0700 if missing); the key file is 0600.
    ///
    /// Refuses to write an inconsistent set, since `load` would refuse it afterwards. Each file
    /// is replaced atomically; all three are staged and fsynced before any is renamed, so a
    /// crash leaves at worst a mix that `load` reports rather than a torn file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.validate()?;
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(PkiError::io("create directory", dir))?;

        let files = [
            (ROOT_CA_FILE, self.root_ca_pem.clone(), CERT_MODE),
            (KEY_FILE, self.key.to_pem(), KEY_MODE),
            (CERT_FILE, self.cert_pem.clone(), CERT_MODE),
        ];
        let mut staged: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(files.len());
        for (name, content, mode) in &files {
            match stage(dir, name, content.as_bytes(), *mode) {
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

    /// Reads and validates the identity stored under `dir`.
    ///
    /// Never regenerates anything: a missing or damaged file is an error naming that file, so
    /// an operator can tell "never joined" from "disk trouble".
    pub fn load(dir: &Path) -> Result<NodeCertificates> {
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        let root_path = dir.join(ROOT_CA_FILE);

        let key_pem = read(&key_path, FileKind::Key)?;
        let cert_pem = read(&cert_path, FileKind::Certificate)?;
        let root_ca_pem = read(&root_path, FileKind::RootCa)?;
        warn_if_key_exposed(&key_path);

        let key = NodeKey::from_pem(&key_pem).map_err(|e| corrupt(FileKind::Key, &key_path, e))?;
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

        Ok(NodeCertificates {
            key,
            cert_pem,
            root_ca_pem,
        })
    }
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
