//! Node private keys (ECDSA P-256) and the certificate signing requests made with them.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{PkiError, Result};

/// A node's private key. It never leaves the node: only CSRs and certificates do.
pub struct NodeKey {
    pair: KeyPair,
}

impl std::fmt::Debug for NodeKey {
    // Never print key material, even by accident in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey").finish_non_exhaustive()
    }
}

impl NodeKey {
    /// Generates a fresh ECDSA P-256 key.
    pub fn generate() -> Result<NodeKey> {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(PkiError::crypto("failed to generate node key"))?;
        Ok(NodeKey { pair })
    }

    /// Loads a PKCS#8 PEM key; only P-256 keys are accepted.
    pub fn from_pem(pem: &str) -> Result<NodeKey> {
        Ok(NodeKey {
            pair: p256_from_pem(pem)?,
        })
    }

    /// The key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn to_pem(&self) -> String {
        self.pair.serialize_pem()
    }

    /// A CSR for this key, as PEM.
    ///
    /// The subject is a placeholder: the CA writes the whole subject itself and takes only
    /// the public key from the request.
    pub fn csr_pem(&self) -> Result<String> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "shoal-node");
        params.distinguished_name = dn;
        params
            .serialize_request(&self.pair)
            .and_then(|csr| csr.pem())
            .map_err(PkiError::crypto(
                "failed to create certificate signing request",
            ))
    }

    /// The DER SubjectPublicKeyInfo of this key.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.pair.subject_public_key_info()
    }

    /// The raw public point, as it appears in a certificate's subjectPublicKey bit string.
    pub(crate) fn public_key_raw(&self) -> &[u8] {
        self.pair.public_key_raw()
    }

    /// The key as PKCS#8 DER (what a sealed key file keeps).
    pub(crate) fn pkcs8_der(&self) -> Vec<u8> {
        self.pair.serialize_der()
    }

    /// Loads a PKCS#8 DER key; only P-256 keys are accepted.
    pub(crate) fn from_pkcs8_der(der: &[u8]) -> Result<NodeKey> {
        let pair = KeyPair::try_from(der).map_err(|e| PkiError::InvalidKey(e.to_string()))?;
        if pair.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::InvalidKey("not an ecdsa p-256 key".into()));
        }
        Ok(NodeKey { pair })
    }

    pub(crate) fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pair.serialize_der()))
    }
}

/// Parses a PKCS#8 PEM key and insists on P-256, the only curve shoal issues for.
pub(crate) fn p256_from_pem(pem: &str) -> Result<KeyPair> {
    let pair = KeyPair::from_pem(pem).map_err(|e| PkiError::InvalidKey(e.to_string()))?;
    if pair.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(PkiError::InvalidKey("not an ecdsa p-256 key".into()));
    }
    Ok(pair)
}
