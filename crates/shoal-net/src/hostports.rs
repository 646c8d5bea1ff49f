//! The [`HostPorts`] trait: holding a host port while it is published, so no other program on
//! the host binds it and the random choice of `-P` ports skips ports in use.
//!
//! Published ports are DNATed in nftables before any local socket sees a packet, so nothing
//! needs to listen. [`SystemHostPorts`] only *binds* a socket (TCP: bound, never listening;
//! UDP: bound) on `HOSTIP:PORT`, without `SO_REUSEADDR`: binding fails when a program already
//! uses the port, and a program that tries to bind it later gets `EADDRINUSE` instead of
//! silently losing its traffic to a container. Nothing ever listens, so if the nftables table
//! were missing, connections would be refused rather than hang.

use std::any::Any;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, socket};

use crate::error::NetError;
use crate::port::Protocol;

/// Holds a host port until dropped.
pub struct PortReservation {
    _held: Option<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for PortReservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortReservation").finish_non_exhaustive()
    }
}

impl PortReservation {
    /// A reservation that holds nothing (for fakes).
    pub fn none() -> Self {
        PortReservation { _held: None }
    }

    /// A reservation that holds `held` (a socket, a fake's guard) until dropped.
    pub fn holding(held: impl Any + Send + Sync) -> Self {
        PortReservation {
            _held: Some(Box::new(held)),
        }
    }
}

/// Reserving host ports.
pub trait HostPorts: Send + Sync + 'static {
    /// Holds `ip:port/protocol` (`0.0.0.0` for every address) until the reservation is dropped.
    /// Fails with [`NetError::PortInUse`] when something on the host uses it, and with
    /// [`NetError::HostAddressNotLocal`] when `ip` is not an address of this host.
    fn reserve(
        &self,
        ip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
    ) -> Result<PortReservation, NetError>;
}

/// [`HostPorts`] with real sockets, in the calling thread's network namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemHostPorts;

impl HostPorts for SystemHostPorts {
    fn reserve(
        &self,
        ip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
    ) -> Result<PortReservation, NetError> {
        let in_use = |source: std::io::Error| NetError::PortInUse {
            ip,
            port,
            protocol,
            source,
        };
        let kind = match protocol {
            Protocol::Tcp => SockType::Stream,
            Protocol::Udp => SockType::Datagram,
        };
        let fd = socket(AddressFamily::Inet, kind, SockFlag::SOCK_CLOEXEC, None)
            .map_err(|e| NetError::io("opening a socket to reserve a port", e.into()))?;
        // No SO_REUSEADDR: with it, a program that sets it too could still listen on the port
        // (two SO_REUSEADDR sockets may share a port while neither listens).
        let addr = SockaddrIn::from(SocketAddrV4::new(ip, port));
        match bind(fd.as_raw_fd(), &addr) {
            Ok(()) => Ok(PortReservation::holding(fd)),
            Err(Errno::EADDRNOTAVAIL) => Err(NetError::HostAddressNotLocal(ip)),
            Err(e) => Err(in_use(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_port_cannot_be_listened_on_and_is_freed_on_drop() {
        let held = SystemHostPorts
            .reserve(Ipv4Addr::LOCALHOST, 0, Protocol::Tcp)
            .unwrap();
        drop(held);
        // Find a port a listener holds: reserving it fails.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let err = SystemHostPorts
            .reserve(Ipv4Addr::LOCALHOST, port, Protocol::Tcp)
            .unwrap_err();
        assert!(matches!(err, NetError::PortInUse { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("127.0.0.1:{port}/tcp is already in use"))
        );
        drop(listener);
        let held = SystemHostPorts
            .reserve(Ipv4Addr::LOCALHOST, port, Protocol::Tcp)
            .unwrap();
        // While held, a listener cannot take the port.
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
        drop(held);
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    }

    #[test]
    fn udp_ports_and_foreign_addresses() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        assert!(
            SystemHostPorts
                .reserve(Ipv4Addr::LOCALHOST, port, Protocol::Udp)
                .is_err()
        );
        // 192.0.2.0/24 is TEST-NET-1: never an address of this host. Binding sends nothing.
        let err = SystemHostPorts
            .reserve(Ipv4Addr::new(192, 0, 2, 1), 40000, Protocol::Tcp)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "host address 192.0.2.1 is not an address of this host"
        );
    }
}
