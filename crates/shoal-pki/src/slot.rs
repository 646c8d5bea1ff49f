//! The node's current TLS identity, swappable while connections are open: rustls resolvers read
//! the certified key from a shared slot at each handshake, so a renewed certificate is used by
//! every configuration built on the slot from the next handshake on, and connections already
//! established keep the identity they were made with.

use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use crate::error::{PkiError, Result};
use crate::identity::NodeIdentity;
use crate::pem::one_cert_der;
use crate::store::NodeCertificates;
use crate::tls;

/// What the slot holds at one moment: the key rustls signs with and who it says this node is.
struct Current {
    certified: Arc<CertifiedKey>,
    identity: NodeIdentity,
}

/// This node's identity for host-to-host TLS. Share it (`Arc`) between every configuration
/// built from it and whoever renews the certificate.
pub struct IdentitySlot {
    /// Fixed for the slot's life: the trust anchor is built into each configuration once, and
    /// a root change is a rotation this slot does not do.
    root_ca_pem: String,
    current: RwLock<Current>,
}

impl std::fmt::Debug for IdentitySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySlot")
            .field("identity", &self.identity())
            .finish_non_exhaustive()
    }
}

/// Pairs key and certificate (rustls checks they match); whether the certificate chains to the
/// root is left to the peer, as with any certificate presented.
fn certified(certs: &NodeCertificates) -> Result<Current> {
    let leaf = one_cert_der(&certs.cert_pem, "certificate")?;
    let identity = NodeIdentity::from_der(&leaf)?;
    let certified =
        CertifiedKey::from_der(vec![leaf], certs.key.private_key_der(), &tls::provider())?;
    Ok(Current {
        certified: Arc::new(certified),
        identity,
    })
}

impl IdentitySlot {
    /// A slot holding `certs`. The key must match the certificate; the chain is not checked
    /// here (the daemon loads only validated sets, and tests present forged ones on purpose).
    pub fn new(certs: &NodeCertificates) -> Result<Arc<IdentitySlot>> {
        Ok(Arc::new(IdentitySlot {
            root_ca_pem: certs.root_ca_pem.clone(),
            current: RwLock::new(certified(certs)?),
        }))
    }

    /// Makes `certs` this node's identity for every later handshake.
    ///
    /// Refused unless `certs` is consistent, under the same root, and for the same node of the
    /// same cluster: a renewal changes the key, the lifetime and possibly the role, never who
    /// the node is.
    pub fn replace(&self, certs: &NodeCertificates) -> Result<()> {
        if certs.root_ca_pem.trim() != self.root_ca_pem.trim() {
            return Err(PkiError::InvalidRequest(
                "the new certificate comes with another root ca (root rotation is not supported)"
                    .into(),
            ));
        }
        certs.validate()?;
        let next = certified(certs)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if next.identity.node_id != current.identity.node_id
            || next.identity.cluster_id != current.identity.cluster_id
        {
            return Err(PkiError::InvalidRequest(format!(
                "the new certificate is for node {} of cluster {}, not this node ({} of {})",
                next.identity.node_id,
                next.identity.cluster_id,
                current.identity.node_id,
                current.identity.cluster_id
            )));
        }
        *current = next;
        Ok(())
    }

    /// Who the current certificate says this node is (role and lifetime included).
    pub fn identity(&self) -> NodeIdentity {
        self.read().identity.clone()
    }

    /// The cluster root this slot's configurations trust.
    pub fn root_ca_pem(&self) -> &str {
        &self.root_ca_pem
    }

    fn certified_key(&self) -> Arc<CertifiedKey> {
        self.read().certified.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Server side of host-to-host TLS, presenting whatever the slot holds at each handshake.
    /// Same policy as [`crate::server_config`].
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig> {
        tls::server_config_with(&self.root_ca_pem, Arc::new(SlotResolver(Arc::clone(self))))
    }

    /// Client side of host-to-host TLS, presenting whatever the slot holds at each handshake.
    /// Same policy as [`crate::client_config`].
    pub fn client_config(self: &Arc<Self>) -> Result<ClientConfig> {
        tls::client_config_with(&self.root_ca_pem, Arc::new(SlotResolver(Arc::clone(self))))
    }
}

/// The rustls face of a slot, for both sides of a connection.
#[derive(Debug)]
struct SlotResolver(Arc<IdentitySlot>);

impl ResolvesClientCert for SlotResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for SlotResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }
}
