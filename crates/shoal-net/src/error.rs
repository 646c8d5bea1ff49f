//! The crate's error type: bad input (network modes, port mappings), address exhaustion, port
//! conflicts, and failures of the kernel calls behind [`Links`](crate::Links) and
//! [`Firewall`](crate::Firewall).

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::port::Protocol;

/// Result alias used throughout the crate.
pub type Result<T, E = NetError> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `--network` named a mode this host does not know.
    #[error("invalid network mode {0:?}: expected none, host or bridge")]
    InvalidNetworkMode(String),

    /// A `-p` port mapping could not be parsed.
    #[error("invalid port mapping {spec:?}: {reason}")]
    InvalidPortMapping { spec: String, reason: String },

    /// The bridge network's configuration does not make sense.
    #[error("invalid bridge configuration: {0}")]
    InvalidConfig(String),

    /// Every address of the subnet is in use.
    #[error("no free address left in {0}")]
    AddressesExhausted(ipnet::Ipv4Net),

    /// The address is not part of the subnet (or is its network, broadcast or gateway address).
    #[error("address {addr} cannot be given out in {subnet}")]
    AddressOutsideSubnet {
        addr: Ipv4Addr,
        subnet: ipnet::Ipv4Net,
    },

    /// The address is already allocated.
    #[error("address {0} is already allocated")]
    AddressInUse(Ipv4Addr),

    /// Another container already publishes the port.
    #[error("port {port}/{protocol} is already published by container {container}")]
    PortPublished {
        port: u16,
        protocol: Protocol,
        container: String,
    },

    /// Something else on this host already uses the port.
    #[error("port {ip}:{port}/{protocol} is already in use on this host: {source}")]
    PortInUse {
        ip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
        #[source]
        source: io::Error,
    },

    /// A `HOSTIP:` of a port mapping is not an address of this host.
    #[error("host address {0} is not an address of this host")]
    HostAddressNotLocal(Ipv4Addr),

    /// No port of the ephemeral range is free for a `-P`-style random mapping.
    #[error("no free host port left in {first}-{last} for {protocol}")]
    PortsExhausted {
        first: u16,
        last: u16,
        protocol: Protocol,
    },

    /// The container is already attached to this network.
    #[error("container {0} is already attached to the network")]
    AlreadyAttached(String),

    /// The container is not attached to this network.
    #[error("container {0} is not attached to the network")]
    NotAttached(String),

    /// A network link was expected but is absent.
    #[error("network link {0} does not exist")]
    NoSuchLink(String),

    /// A netlink request failed.
    #[error("netlink: {context}: {message}")]
    Netlink { context: String, message: String },

    /// Applying or deleting an nftables table failed.
    #[error("nftables: {context}: {message}")]
    Nftables { context: String, message: String },

    /// A network namespace could not be opened or entered.
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Reading or writing the network's state file failed.
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The state file holds something that is not a valid network state.
    #[error("state file {path} is corrupt: {reason}")]
    CorruptState { path: PathBuf, reason: String },

    /// Some other I/O failure (sysctl writes, sockets).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl NetError {
    pub(crate) fn netlink(context: impl Into<String>, error: impl std::fmt::Display) -> Self {
        NetError::Netlink {
            context: context.into(),
            message: error.to_string(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        NetError::Io {
            context: context.into(),
            source,
        }
    }
}
