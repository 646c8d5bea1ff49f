//! Test helpers: PEM re-encoding and certificate fixtures.

use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use shoal_pki::{NodeCertRequest, NodeCertificates, NodeKey, Role, RootCa};

/// A valid node id: 25 lowercase base36 characters.
pub(crate) const NODE_ID: &str = "0123456789abcdefghijklmno";
pub(crate) const CLUSTER_ID: &str = "zyxwvutsrqponmlkjihgfedcb";

pub(crate) fn request(node_id: &str, role: Role) -> NodeCertRequest {
    NodeCertRequest {
        node_id: node_id.to_owned(),
        role,
        cluster_id: CLUSTER_ID.to_owned(),
        validity: Duration::from_secs(24 * 3600),
    }
}

/// A node identity issued by `root`.
pub(crate) fn node(root: &RootCa, node_id: &str, role: Role) -> NodeCertificates {
    let key = NodeKey::generate().unwrap();
    let issued = root
        .sign_node(&key.csr_pem().unwrap(), &request(node_id, role))
        .unwrap();
    NodeCertificates {
        key,
        cert_pem: issued.cert_pem,
        root_ca_pem: root.cert_pem().to_owned(),
    }
}

pub(crate) fn cert_der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

pub(crate) fn csr_der(pem: &str) -> Vec<u8> {
    CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
