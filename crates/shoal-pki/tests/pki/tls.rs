//! Real TLS handshakes over loopback TCP with the crate's rustls configs.

use std::sync::Arc;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
use rustls_pki_types::ServerName;
use shoal_pki::{
    IdentitySlot, JoinToken, NodeCertificates, NodeIdentity, NodeKey, Role, RootCa,
    anonymous_client_config, client_config, insecure_bootstrap_client_config, server_config,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::util::{CLUSTER_ID, NODE_ID, node};

const CLIENT_ID: &str = "clientnode0000000000000ab";

/// What the server saw of one connection attempt.
struct Outcome {
    server: Result<Option<NodeIdentity>, String>,
    client: Result<Vec<u8>, String>,
    alpn: Option<Vec<u8>>,
}

/// Runs one connection: the server accepts, reads "ping", answers "pong"; the client dials
/// `server_name`, sends "ping" and reads the answer.
async fn exchange(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
    server_name: &str,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|der| NodeIdentity::from_der(der).unwrap());
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((identity, alpn))
    });

    let connector = TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let client = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    }
    .await;
    let server = server_task.await.unwrap();
    let (server, alpn) = match server {
        Ok((id, alpn)) => (Ok(id), alpn),
        Err(e) => (Err(e), None),
    };
    Outcome {
        server,
        client,
        alpn,
    }
}

fn manager_server(root: &RootCa) -> rustls::ServerConfig {
    server_config(&node(root, NODE_ID, Role::Manager)).unwrap()
}

#[tokio::test]
async fn mutual_tls_between_nodes_of_one_root() {
    let root = RootCa::generate().unwrap();
    let client = client_config(&node(&root, CLIENT_ID, Role::Worker)).unwrap();
    let out = exchange(manager_server(&root), client, Role::Manager.dns_name()).await;
    let id = out
        .server
        .unwrap()
        .expect("server sees a client certificate");
    assert_eq!(id.node_id, CLIENT_ID);
    assert_eq!(id.role, Role::Worker);
    assert_eq!(id.cluster_id, CLUSTER_ID);
    assert_eq!(out.client.unwrap(), b"pong");
    assert_eq!(out.alpn.as_deref(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn client_can_dial_a_node_by_its_id() {
    let root = RootCa::generate().unwrap();
    let client = client_config(&node(&root, CLIENT_ID, Role::Manager)).unwrap();
    let out = exchange(manager_server(&root), client, NODE_ID).await;
    assert!(out.server.unwrap().is_some());
}

#[tokio::test]
async fn client_certificate_from_another_root_is_refused() {
    let root = RootCa::generate().unwrap();
    let other = RootCa::generate().unwrap();
    // The client trusts the server's root but presents a certificate from another root.
    let foreign = node(&other, CLIENT_ID, Role::Manager);
    let client = client_config(&NodeCertificates {
        key: foreign.key,
        cert_pem: foreign.cert_pem,
        root_ca_pem: root.cert_pem().to_owned(),
    })
    .unwrap();
    let out = exchange(manager_server(&root), client, Role::Manager.dns_name()).await;
    let err = out.server.unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("BadSignature"),
        "{err}"
    );
    assert!(out.client.is_err());
}

#[tokio::test]
async fn self_signed_client_certificate_with_a_good_cn_is_refused() {
    let root = RootCa::generate().unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![Role::Manager.dns_name().to_owned()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CLIENT_ID);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "manager");
    params
        .distinguished_name
        .push(DnType::OrganizationName, CLUSTER_ID);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let forged = params.self_signed(&key).unwrap();
    let client = client_config(&NodeCertificates {
        key: NodeKey::from_pem(&key.serialize_pem()).unwrap(),
        cert_pem: forged.pem(),
        root_ca_pem: root.cert_pem().to_owned(),
    })
    .unwrap();
    let out = exchange(manager_server(&root), client, Role::Manager.dns_name()).await;
    let err = out.server.unwrap_err();
    assert!(
        err.contains("BadSignature") || err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(out.client.is_err());
}

#[tokio::test]
async fn client_without_certificate_completes_the_handshake() {
    let root = RootCa::generate().unwrap();
    let client = anonymous_client_config(root.cert_pem()).unwrap();
    let out = exchange(manager_server(&root), client, Role::Manager.dns_name()).await;
    assert_eq!(out.server.unwrap(), None, "no peer identity");
    assert_eq!(out.client.unwrap(), b"pong");
}

#[tokio::test]
async fn client_refuses_a_server_of_another_root() {
    let root = RootCa::generate().unwrap();
    let other = RootCa::generate().unwrap();
    let client = client_config(&node(&root, CLIENT_ID, Role::Worker)).unwrap();
    let out = exchange(manager_server(&other), client, Role::Manager.dns_name()).await;
    // Every shoal root shares its CN, so webpki finds the "issuer" and then the signature fails.
    let err = out.client.unwrap_err();
    assert!(
        err.contains("BadSignature") || err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(out.server.is_err());
}

#[tokio::test]
async fn client_refuses_a_worker_posing_as_manager() {
    let root = RootCa::generate().unwrap();
    let worker_server = server_config(&node(&root, NODE_ID, Role::Worker)).unwrap();
    let client = client_config(&node(&root, CLIENT_ID, Role::Manager)).unwrap();
    let out = exchange(worker_server, client, Role::Manager.dns_name()).await;
    let err = out.client.unwrap_err();
    assert!(
        err.contains("not valid for name \"shoal-manager\""),
        "{err}"
    );
}

#[tokio::test]
async fn bootstrap_client_accepts_any_server_then_pins() {
    let root = RootCa::generate().unwrap();
    let attacker = RootCa::generate().unwrap();
    let token = JoinToken::generate(&root.digest());
    for (server_root, pinned) in [(&root, true), (&attacker, false)] {
        let certs = node(server_root, NODE_ID, Role::Manager);
        let out = exchange(
            server_config(&certs).unwrap(),
            insecure_bootstrap_client_config().unwrap(),
            "anything.invalid",
        )
        .await;
        assert_eq!(out.client.unwrap(), b"pong");
        // What the server would hand out as "the root CA" is only trusted after the pin.
        assert_eq!(token.pins(certs.root_ca_pem.as_bytes()).is_ok(), pinned);
    }
}

#[tokio::test]
async fn expired_client_certificate_of_the_right_root_is_refused() {
    use std::time::{Duration, SystemTime};
    let root = RootCa::generate().unwrap();
    let key = NodeKey::generate().unwrap();
    let now = SystemTime::now();
    let issued = root
        .sign_node_valid_between(
            &key.csr_pem().unwrap(),
            &crate::util::request(CLIENT_ID, Role::Manager),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(60),
        )
        .unwrap();
    let expired = NodeCertificates {
        key,
        cert_pem: issued.cert_pem,
        root_ca_pem: root.cert_pem().to_owned(),
    };
    // Issued by the root and consistent: only its dates are wrong.
    expired.validate().unwrap();
    let out = exchange(
        manager_server(&root),
        client_config(&expired).unwrap(),
        Role::Manager.dns_name(),
    )
    .await;
    let err = out.server.unwrap_err();
    assert!(err.contains("certificate expired"), "{err}");
    assert!(out.client.is_err());
}

/// A server that answers "pong" to every "ping" on every connection, and reports the client
/// identity each connection proved.
async fn echo_server(
    config: rustls::ServerConfig,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Option<NodeIdentity>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|der| NodeIdentity::from_der(der).unwrap());
                let _ = tx.send(identity);
                let mut buf = [0u8; 4];
                while tls.read_exact(&mut buf).await.is_ok() {
                    if tls.write_all(b"pong").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn dial(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    Option<NodeIdentity>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(Role::Manager.dns_name()).unwrap();
    let tls = TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let server = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|der| NodeIdentity::from_der(der).unwrap());
    (tls, server)
}

async fn ping(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) {
    tls.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
}

#[tokio::test]
async fn a_swapped_identity_is_used_from_the_next_handshake_and_open_connections_go_on() {
    let root = RootCa::generate().unwrap();
    let server_slot = IdentitySlot::new(&node(&root, NODE_ID, Role::Manager)).unwrap();
    let client_slot = IdentitySlot::new(&node(&root, CLIENT_ID, Role::Worker)).unwrap();
    let (addr, mut seen) = echo_server(server_slot.server_config().unwrap()).await;
    // One configuration, built once, as the daemon's long-lived users hold it.
    let client = Arc::new(client_slot.client_config().unwrap());

    let (mut before, server_before) = dial(addr, client.clone()).await;
    ping(&mut before).await;
    let first = seen.recv().await.unwrap().unwrap();
    assert_eq!(
        (first.node_id.as_str(), first.role),
        (CLIENT_ID, Role::Worker)
    );

    // Both ends renew: the client is promoted, the server gets a fresh key.
    let promoted = node(&root, CLIENT_ID, Role::Manager);
    let promoted_serial = promoted.identity().unwrap().serial_hex;
    client_slot.replace(&promoted).unwrap();
    let renewed_server = node(&root, NODE_ID, Role::Manager);
    let renewed_server_serial = renewed_server.identity().unwrap().serial_hex;
    server_slot.replace(&renewed_server).unwrap();
    assert_eq!(client_slot.identity().role, Role::Manager);

    // The connection made before the swap keeps working, with the identity it proved.
    ping(&mut before).await;
    ping(&mut before).await;

    // A new connection with the same configuration proves the new identities, both ways.
    let (mut after, server_after) = dial(addr, client.clone()).await;
    ping(&mut after).await;
    let second = seen.recv().await.unwrap().unwrap();
    assert_eq!(second.role, Role::Manager);
    assert_eq!(second.serial_hex, promoted_serial);
    assert_ne!(second.serial_hex, first.serial_hex);
    assert_eq!(server_after.unwrap().serial_hex, renewed_server_serial);
    assert_ne!(server_before.unwrap().serial_hex, renewed_server_serial);
    ping(&mut before).await;
}

#[test]
fn a_slot_only_takes_certificates_of_the_same_node_and_root() {
    let root = RootCa::generate().unwrap();
    let slot = IdentitySlot::new(&node(&root, NODE_ID, Role::Worker)).unwrap();
    let err = slot
        .replace(&node(&root, CLIENT_ID, Role::Worker))
        .unwrap_err();
    assert!(err.to_string().contains("not this node"), "{err}");
    let other = RootCa::generate().unwrap();
    let err = slot
        .replace(&node(&other, NODE_ID, Role::Worker))
        .unwrap_err();
    assert!(err.to_string().contains("another root ca"), "{err}");
    // A certificate that does not belong to its key is refused before anything changes.
    let mut mismatched = node(&root, NODE_ID, Role::Manager);
    mismatched.key = NodeKey::generate().unwrap();
    assert!(slot.replace(&mismatched).is_err());
    assert_eq!(slot.identity().role, Role::Worker);
}
