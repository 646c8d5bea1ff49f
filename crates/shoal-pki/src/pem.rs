//! PEM decoding and certificate parsing shared by the CA, the identity reader and the TLS builders.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::certificate::X509Certificate;

use crate::error::{PkiError, Result};

/// Decodes a PEM document that must hold exactly one certificate.
///
/// A second certificate is refused rather than ignored: every place that stores a certificate
/// here stores exactly one, and silently dropping the rest would hide a mix-up.
pub(crate) fn one_cert_der(pem: &str, what: &'static str) -> Result<CertificateDer<'static>> {
    let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
    let first = match certs.next() {
        Some(Ok(cert)) => cert,
        Some(Err(e)) => {
            return Err(PkiError::InvalidPem {
                what,
                reason: e.to_string(),
            });
        }
        None => {
            return Err(PkiError::InvalidPem {
                what,
                reason: "no certificate found".into(),
            });
        }
    };
    match certs.next() {
        None => Ok(first),
        Some(Ok(_)) => Err(PkiError::InvalidPem {
            what,
            reason: "more than one certificate found".into(),
        }),
        Some(Err(e)) => Err(PkiError::InvalidPem {
            what,
            reason: e.to_string(),
        }),
    }
}

/// Accepts a certificate as PEM text or raw DER bytes.
pub(crate) fn cert_der_from_pem_or_der(
    input: &[u8],
    what: &'static str,
) -> Result<CertificateDer<'static>> {
    if input.trim_ascii_start().starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(input).map_err(|_| PkiError::InvalidPem {
            what,
            reason: "not utf-8".into(),
        })?;
        one_cert_der(text, what)
    } else {
        Ok(CertificateDer::from(input.to_vec()))
    }
}

pub(crate) fn csr_der(pem: &str) -> Result<CertificateSigningRequestDer<'static>> {
    CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::InvalidPem {
        what: "certificate signing request",
        reason: e.to_string(),
    })
}

/// Parses DER into an X.509 certificate, refusing trailing bytes.
pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidCertificate(
            "trailing bytes after certificate".into(),
        ));
    }
    Ok(cert)
}

/// A certificate serial as lowercase hex without leading zero bytes (at least one byte shown).
pub(crate) fn serial_hex(cert: &X509Certificate<'_>) -> String {
    let raw = cert.raw_serial();
    let first = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[first..].iter().map(|b| format!("{b:02x}")).collect()
}
