//! Reading a node identity (id, role, cluster) out of a certificate, and when to renew it.

use std::time::{Duration, SystemTime};

use rand::Rng;
use x509_parser::x509::AttributeTypeAndValue;

use crate::ca::Role;
use crate::error::{PkiError, Result};
use crate::pem::{one_cert_der, parse_cert, serial_hex};

/// Who a certificate says its holder is. Chain verification is the TLS layer's job; this only
/// reads the subject of a certificate that has already been verified (or that the caller is
/// about to verify).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Subject CN.
    pub node_id: String,
    /// Subject OU.
    pub role: Role,
    /// Subject O.
    pub cluster_id: String,
    /// Serial in lowercase hex, without leading zero bytes.
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl NodeIdentity {
    /// Reads the identity from a DER certificate (e.g. rustls' `peer_certificates()[0]`).
    pub fn from_der(der: &[u8]) -> Result<NodeIdentity> {
        let cert = parse_cert(der)?;
        let subject = cert.subject();
        let node_id = single_attr(subject.iter_common_name(), "common name (node id)")?;
        let role = single_attr(
            subject.iter_organizational_unit(),
            "organizational unit (role)",
        )?;
        let cluster_id = single_attr(subject.iter_organization(), "organization (cluster id)")?;
        let role = role
            .parse::<Role>()
            .map_err(|_| PkiError::InvalidIdentity(format!("unknown role {role:?}")))?;
        let validity = cert.validity();
        Ok(NodeIdentity {
            node_id,
            role,
            cluster_id,
            serial_hex: serial_hex(&cert),
            not_before: validity.not_before.to_datetime().into(),
            not_after: validity.not_after.to_datetime().into(),
        })
    }

    /// Reads the identity from a PEM certificate.
    pub fn from_pem(pem: &str) -> Result<NodeIdentity> {
        let der = one_cert_der(pem, "certificate")?;
        NodeIdentity::from_der(&der)
    }
}

/// Exactly one attribute of the kind: two CNs or two OUs would make "who is this" ambiguous.
fn single_attr<'a, 'b: 'a>(
    mut attrs: impl Iterator<Item = &'a AttributeTypeAndValue<'b>>,
    what: &str,
) -> Result<String> {
    let first = attrs
        .next()
        .ok_or_else(|| PkiError::InvalidIdentity(format!("no {what}")))?;
    if attrs.next().is_some() {
        return Err(PkiError::InvalidIdentity(format!("more than one {what}")));
    }
    let value = first
        .as_str()
        .map_err(|e| PkiError::InvalidIdentity(format!("{what} is not a string: {e}")))?;
    if value.is_empty() {
        return Err(PkiError::InvalidIdentity(format!("empty {what}")));
    }
    Ok(value.to_owned())
}

/// When to renew a certificate: a uniformly random point between 50% and 80% of its life, so
/// that a cluster's nodes, issued together, do not all come back to the CA at once.
///
/// A certificate whose `not_after` is not after `not_before` is due at `not_before`.
pub fn renewal_time<R: Rng + ?Sized>(
    not_before: SystemTime,
    not_after: SystemTime,
    rng: &mut R,
) -> SystemTime {
    let Ok(life) = not_after.duration_since(not_before) else {
        return not_before;
    };
    let fraction: f64 = rng.random_range(0.5..=0.8);
    let offset = Duration::from_secs_f64(life.as_secs_f64() * fraction);
    // Clamp against float rounding so the result never leaves [50%, 80%].
    let offset = offset.clamp(life / 2, life.mul_f64(0.8));
    not_before + offset
}
