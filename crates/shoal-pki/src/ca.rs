//! The cluster root CA: generation, loading, its pinning digest, and signing node certificates.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::base36;
use crate::error::{PkiError, Result};
use crate::key::p256_from_pem;
use crate::pem::{csr_der, one_cert_der, parse_cert, serial_hex};

/// Common name of every shoal root CA.
pub const ROOT_CA_COMMON_NAME: &str = "shoal-root-ca";
/// Lifetime of a root CA (20 years of 365 days, as swarm).
pub const ROOT_CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How far `not_before` is set in the past so that peers with slow clocks accept a new certificate.
pub const CLOCK_SKEW_BACKDATE: Duration = Duration::from_secs(3600);
/// The shortest node certificate lifetime the CA issues.
pub const MIN_NODE_CERT_VALIDITY: Duration = Duration::from_secs(3600);
/// The node certificate lifetime used unless the cluster is configured otherwise (90 days).
pub const DEFAULT_NODE_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Length of a root digest in base36 characters.
pub const DIGEST_LEN: usize = 50;

/// A node's role, as the CA decides it and writes it into the certificate's OU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    /// The OU value: `manager` or `worker`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }

    /// The DNS SAN every certificate of this role carries, and so the TLS server name to dial.
    pub fn dns_name(self) -> &'static str {
        match self {
            Role::Manager => "shoal-manager",
            Role::Worker => "shoal-worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Role> {
        match s {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            other => Err(PkiError::UnknownRole(other.to_owned())),
        }
    }
}

/// What the CA puts into a node certificate. Everything here comes from the CA's own state,
/// never from the CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertRequest {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
    pub validity: Duration,
}

/// A freshly signed node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub cert_pem: String,
    /// Serial in lowercase hex, without leading zero bytes.
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The cluster's root certificate authority, with its private key.
pub struct RootCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    not_after: OffsetDateTime,
    digest: String,
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl RootCa {
    /// Creates a new root CA with a fresh P-256 key.
    pub fn generate() -> Result<RootCa> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(PkiError::crypto("failed to generate root ca key"))?;
        let now = now_whole_seconds();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ROOT_CA_COMMON_NAME);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - CLOCK_SKEW_BACKDATE;
        params.not_after = now + ROOT_CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(PkiError::crypto("failed to self-sign root ca"))?;
        let cert_der = cert.der().clone();
        let not_after = params.not_after;
        Ok(RootCa {
            digest: ca_digest(&cert_der),
            cert_pem: cert.pem(),
            cert_der,
            not_after,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a root CA from its certificate and PKCS#8 key, checking that they belong together
    /// and that the certificate is a CA.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa> {
        let cert_der = one_cert_der(cert_pem, "root ca certificate")?;
        let key = p256_from_pem(key_pem)?;
        let cert = parse_cert(&cert_der)?;
        check_is_ca(&cert)?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::KeyMismatch);
        }
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| PkiError::InvalidRootCa(e.to_string()))?;
        Ok(RootCa {
            digest: ca_digest(&cert_der),
            cert_pem: cert_pem.to_owned(),
            cert_der,
            not_after,
            issuer,
        })
    }

    /// The root certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The root key as PKCS#8 PEM. Treat as the cluster's most sensitive secret.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// SHA-256 of the certificate DER in 50 lowercase base36 characters: what join tokens pin.
    pub fn digest(&self) -> String {
        self.digest.clone()
    }

    /// Issues a node certificate for the public key in `csr_pem`.
    ///
    /// Only the CSR's public key is used, after its self-signature is verified; subject,
    /// SANs, extensions and validity all come from `req`.
    pub fn sign_node(&self, csr_pem: &str, req: &NodeCertRequest) -> Result<IssuedCert> {
        if req.validity < MIN_NODE_CERT_VALIDITY {
            return Err(PkiError::ValidityTooShort {
                requested: req.validity,
                minimum: MIN_NODE_CERT_VALIDITY,
            });
        }
        let now = now_whole_seconds();
        // A leaf that outlives its root would fail verification anyway; stopping at the root's
        // end makes the certificate say so and keeps renewal scheduling honest.
        let not_after = (now + req.validity).min(self.not_after);
        if not_after <= now {
            return Err(PkiError::InvalidRootCa("root ca has expired".into()));
        }
        self.sign(csr_pem, req, now - CLOCK_SKEW_BACKDATE, not_after)
    }

    /// Issues a node certificate valid exactly from `not_before` to `not_after`, outside the
    /// CA's lifetime policy (no minimum, no backdating, no cap at the root's end).
    ///
    /// For tests and tools that need, say, a certificate that has already expired; the CA
    /// service never issues through this.
    pub fn sign_node_valid_between(
        &self,
        csr_pem: &str,
        req: &NodeCertRequest,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert> {
        if not_after <= not_before {
            return Err(PkiError::InvalidRequest(
                "not_after must be later than not_before".into(),
            ));
        }
        let whole = |t: SystemTime| {
            let t = OffsetDateTime::from(t);
            t.replace_nanosecond(0).unwrap_or(t)
        };
        self.sign(csr_pem, req, whole(not_before), whole(not_after))
    }

    fn sign(
        &self,
        csr_pem: &str,
        req: &NodeCertRequest,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert> {
        check_name_field("node id", &req.node_id)?;
        check_name_field("cluster id", &req.cluster_id)?;
        let public_key = csr_public_key(csr_pem)?;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.node_id.as_str());
        dn.push(DnType::OrganizationalUnitName, req.role.as_str());
        dn.push(DnType::OrganizationName, req.cluster_id.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = subject_alt_names(req)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = not_before;
        params.not_after = not_after;

        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(PkiError::crypto("failed to sign node certificate"))?;
        let parsed = parse_cert(cert.der())?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            serial_hex: serial_hex(&parsed),
            not_before: params.not_before.into(),
            not_after: params.not_after.into(),
        })
    }

    /// Checks that `cert_pem` holds one certificate whose issuer is this root and whose
    /// signature verifies with this root's key. Validity dates are not checked: a stored
    /// certificate that has expired is still this cluster's and gets renewed, not discarded.
    pub fn verify_issued(&self, cert_pem: &str) -> Result<()> {
        let der = one_cert_der(cert_pem, "certificate")?;
        verify_issued_by(&self.cert_der, &der)
    }

    /// [`RootCa::verify_issued`] as a yes/no answer.
    pub fn verifies(&self, cert_pem: &str) -> bool {
        self.verify_issued(cert_pem).is_ok()
    }
}

/// The pinning digest of a root certificate: SHA-256 of its DER, base36, 50 characters.
pub fn ca_digest(cert_der: &[u8]) -> String {
    base36::encode(&Sha256::digest(cert_der), DIGEST_LEN)
}

/// Checks that `leaf_der` was signed by the root in `root_der` (issuer name and signature).
pub(crate) fn verify_issued_by(root_der: &[u8], leaf_der: &[u8]) -> Result<()> {
    let root = parse_cert(root_der)?;
    let leaf = parse_cert(leaf_der)?;
    if leaf.issuer().as_raw() != root.subject().as_raw() {
        return Err(PkiError::NotIssuedByRoot(
            "issuer name differs from the root's subject".into(),
        ));
    }
    leaf.verify_signature(Some(root.public_key()))
        .map_err(|e| PkiError::NotIssuedByRoot(format!("signature does not verify: {e}")))
}

pub(crate) fn check_is_ca(cert: &X509Certificate<'_>) -> Result<()> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(()),
        Ok(_) => Err(PkiError::InvalidRootCa("certificate is not a ca".into())),
        Err(e) => Err(PkiError::InvalidRootCa(e.to_string())),
    }
}

/// Extracts the public key of a CSR after checking the CSR's self-signature.
fn csr_public_key(csr_pem: &str) -> Result<rcgen::SubjectPublicKeyInfo> {
    let der = csr_der(csr_pem)?;
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidCsr("trailing bytes after request".into()));
    }
    csr.verify_signature().map_err(|_| PkiError::CsrSignature)?;
    let spki =
        rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
            .map_err(|e| PkiError::InvalidCsr(format!("unsupported public key: {e}")))?;
    if rcgen::PublicKeyData::algorithm(&spki) != &PKCS_ECDSA_P256_SHA256 {
        return Err(PkiError::InvalidCsr("public key is not ecdsa p-256".into()));
    }
    Ok(spki)
}

fn subject_alt_names(req: &NodeCertRequest) -> Result<Vec<SanType>> {
    let mut sans = vec![dns_san(req.role.dns_name())?];
    if is_dns_label(&req.node_id) {
        sans.push(dns_san(&req.node_id)?);
    }
    Ok(sans)
}

fn dns_san(name: &str) -> Result<SanType> {
    let ia5 = name.try_into().map_err(|e: rcgen::Error| {
        PkiError::InvalidRequest(format!("bad dns name {name:?}: {e}"))
    })?;
    Ok(SanType::DnsName(ia5))
}

/// RFC 1123 label, lowercase only (node ids are lowercase base36).
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// X.520 caps CN and O at 64 characters; control characters would make logs and comparisons lie.
fn check_name_field(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(PkiError::InvalidRequest(format!("{what} is empty")));
    }
    if value.chars().count() > 64 {
        return Err(PkiError::InvalidRequest(format!(
            "{what} is longer than 64 characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(PkiError::InvalidRequest(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

/// 128 random bits. The DER encoder adds a zero byte when the top bit is set (serials are
/// positive) and drops leading zero bytes, so `serial_hex` is read back from the encoding.
fn random_serial() -> SerialNumber {
    let bytes: [u8; 16] = rand::random();
    SerialNumber::from_slice(&bytes)
}

/// Certificates carry whole seconds; truncating up front keeps `IssuedCert` equal to what is encoded.
fn now_whole_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}
