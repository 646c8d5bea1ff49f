//! rustls configurations for host-to-host mTLS and for the two bootstrap steps of joining.
//!
//! Every builder names the ring provider explicitly, so no process-wide default provider has to
//! be installed and linking a second provider elsewhere cannot make these ambiguous.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::{NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::Result;
use crate::pem::one_cert_der;
use crate::slot::IdentitySlot;
use crate::store::NodeCertificates;

/// The ALPN protocol every shoal connection speaks (gRPC over HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(root_ca_pem: &str) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots.add(one_cert_der(root_ca_pem, "root ca certificate")?)?;
    Ok(Arc::new(roots))
}

/// Server side of host-to-host TLS: presents the node certificate and verifies client
/// certificates against the root, but lets clients without a certificate finish the handshake.
///
/// The anonymous path exists for the two bootstrap RPCs (get root CA, issue certificate with a
/// token). Every other method must be refused above this layer when the peer has no
/// certificate; TLS alone does not do it.
///
/// The certificate is fixed; [`IdentitySlot::server_config`] makes one that follows renewals.
pub fn server_config(certs: &NodeCertificates) -> Result<ServerConfig> {
    IdentitySlot::new(certs)?.server_config()
}

/// Client side of host-to-host TLS: presents the node certificate and trusts only the root.
/// Dial with server name [`crate::Role::dns_name`] of the role being called.
///
/// The certificate is fixed; [`IdentitySlot::client_config`] makes one that follows renewals.
pub fn client_config(certs: &NodeCertificates) -> Result<ClientConfig> {
    IdentitySlot::new(certs)?.client_config()
}

pub(crate) fn server_config_with(
    root_ca_pem: &str,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<ServerConfig> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(root_ca_pem)?, provider.clone())
            .allow_unauthenticated()
            .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // A resumed session carries the client certificate of its first handshake: after a renewal
    // (a new role, a revoked serial) the peer would go on being judged by the old one. Every
    // connection proves its current certificate instead; connections are long-lived HTTP/2, so
    // the full handshakes cost little.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

pub(crate) fn client_config_with(
    root_ca_pem: &str,
    resolver: Arc<dyn ResolvesClientCert>,
) -> Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(root_ca_pem)?)
        .with_client_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // See `server_config_with`: resuming would present the identity of an earlier handshake.
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// Client without a certificate that trusts only `root_ca_pem`: for the joiner's
/// issue-certificate call, after the root has been pinned against the join token.
pub fn anonymous_client_config(root_ca_pem: &str) -> Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(root_ca_pem)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// DANGER: a client that accepts ANY server certificate.
///
/// Only for fetching the root CA while joining. The connection is open to interception, so
/// whatever it returns must be checked with [`crate::JoinToken::pins`] before being trusted;
/// nothing else may be sent or believed over it.
pub fn insecure_bootstrap_client_config() -> Result<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(AcceptAnyServerCert {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Skips chain and name checks but still verifies the handshake signature, so the server at
/// least holds the key of the certificate it shows.
#[derive(Debug)]
struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
