//! The cluster listener (`--listen-addr`, port 2377): TLS with optional client certificates,
//! the authorization layer in front of every service, and the TLS dialers this node uses to
//! reach managers (mutual TLS, anonymous after pinning, and the unverified root fetch).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use shoal_manager::authz::{AuthorizeLayer, Peer, PeerIdentity};
use shoal_manager::ca::NodeCaService;
use shoal_manager::control::{ControlApi, ManagerSlot};
use shoal_manager::dispatcher::DispatcherService;
use shoal_manager::membership::RaftMembershipService;
use shoal_pki::{NodeIdentity, Role};
use shoal_raft::{RaftGrpcService, ReplicatedLog};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

/// A client that has not finished its TLS handshake by then is dropped (slowloris, garbage).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Dialing a manager: TCP connect plus TLS handshake.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// A TLS connection and what its handshake proved, handed to tonic as one stream.
struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: Peer,
}

impl Connected for TlsConn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

fn peer_identity(stream: &tokio_rustls::server::TlsStream<TcpStream>) -> PeerIdentity {
    match stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        None => PeerIdentity::None,
        Some(leaf) => match NodeIdentity::from_der(leaf) {
            Ok(identity) => PeerIdentity::Node(identity),
            Err(e) => PeerIdentity::Invalid(e.to_string()),
        },
    }
}

/// A running cluster listener.
pub(crate) struct Listener {
    stop: Option<oneshot::Sender<()>>,
    acceptor: JoinHandle<()>,
    server: JoinHandle<()>,
}

impl Listener {
    /// Stops at once, without waiting (for drop paths).
    pub(crate) fn abort(self) {
        self.acceptor.abort();
        self.server.abort();
    }

    pub(crate) async fn stop(mut self) {
        self.acceptor.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
    }
}

/// Binds the listener's socket (a separate step so that `init` and `join` fail before writing
/// anything when the port is taken).
pub(crate) async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))
}

/// Serves the cluster services of the manager in `slot` (whose log is `log`) on `tcp`.
pub(crate) fn serve(
    tcp: TcpListener,
    tls: Arc<ServerConfig>,
    slot: ManagerSlot,
    log: ReplicatedLog,
) -> Listener {
    let addr = tcp
        .local_addr()
        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel::<TlsConn>(64);
    let acceptor = TlsAcceptor::from(tls);
    let accept_loop = tokio::spawn(async move {
        loop {
            let (socket, remote) = match tcp.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "cluster listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let conn_tx = conn_tx.clone();
            tokio::spawn(async move {
                let _ = socket.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => {
                        let identity = peer_identity(&stream);
                        let peer = Peer {
                            addr: remote,
                            identity,
                        };
                        let _ = conn_tx.send(TlsConn { stream, peer }).await;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(peer = %remote, %error, "TLS handshake refused on the cluster listener");
                    }
                    Err(_) => {
                        tracing::warn!(peer = %remote, "TLS handshake timed out on the cluster listener");
                    }
                }
            });
        }
    });
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::ReceiverStream::new(conn_rx).map(Ok::<_, io::Error>);
    let router = tonic::transport::Server::builder()
        .layer(AuthorizeLayer::new(slot.clone()))
        .add_service(NodeCaService::new(slot.clone()).into_server())
        .add_service(DispatcherService::new(slot.clone()).into_server())
        .add_service(RaftMembershipService::new(slot.clone()).into_server())
        .add_service(RaftGrpcService::new(log).into_server())
        .add_service(ControlApi::new(slot).into_server());
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stop_rx.await;
        };
        if let Err(error) = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!(%error, "cluster listener failed");
        }
    });
    tracing::info!(%addr, "cluster listener serving (mutual TLS)");
    Listener {
        stop: Some(stop_tx),
        acceptor: accept_loop,
        server,
    }
}

/// A lazy channel to the manager at `addr` (`host:port`) over TLS with `config`.
pub(crate) fn channel(addr: &str, config: Arc<ClientConfig>) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("invalid manager address {addr:?}: {e}"))?
        .connect_timeout(DIAL_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let target = addr.to_owned();
    let connector = tower::service_fn(move |_uri| {
        let config = config.clone();
        let target = target.clone();
        async move {
            let dial = async {
                let tcp = TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(Role::Manager.dns_name())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let tls = TlsConnector::from(config).connect(name, tcp).await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            };
            tokio::time::timeout(DIAL_TIMEOUT, dial)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))?
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
