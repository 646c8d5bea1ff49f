//! shoal's node networking: local container networking for standalone containers and, later,
//! the overlay data plane.
//!
//! - [`NetworkMode`] and [`PortMapping`] parse `--network` and `-p`.
//! - [`BridgeNetwork`] is the default bridge (Docker's `docker0`): `shoal0`, 172.30.0.0/16,
//!   egress NAT, published ports (DNAT, including `127.0.0.1:PORT` from the host), one veth per
//!   container, state persisted for reconciliation after a restart.
//! - Kernel access sits behind three small traits — [`Links`] (netlink), [`Firewall`]
//!   (nftables) and [`HostPorts`] (port reservations) — implemented for the kernel by
//!   [`NetlinkLinks`], [`NftFirewall`] and [`SystemHostPorts`], and in memory by the
//!   [`fake`] module.
//!
//! # Published ports
//!
//! A published port is a DNAT rule in the `ip shoal` table, in a chain reached from both the
//! `prerouting` hook (traffic from other hosts and from containers) and the `output` hook
//! (traffic from the host itself), for destinations that are addresses of this host
//! (`fib daddr type local`). The client's address is kept for traffic from other hosts.
//!
//! `127.0.0.1:PORT` from the host works without a userland proxy: the output-hook DNAT sends
//! the packet, still from 127.0.0.1, out through the bridge. The kernel allows loopback
//! addresses on the bridge because [`BridgeNetwork::ensure`] sets
//! `net.ipv4.conf.shoal0.route_localnet=1`, and the table masquerades 127.0.0.0/8 sources leaving
//! through the bridge (the container sees the gateway as the client), so replies come back. A
//! raw-priority rule drops packets arriving on the bridge for 127.0.0.0/8, so containers cannot
//! use `route_localnet` to reach the host's loopback services (CVE-2020-8558).
//!
//! A container reaching a published port (its own or another's) through a host address is
//! masqueraded to the gateway and its veth has hairpin mode on, so the reply takes the same
//! path. While published, each host port is held by a bound (never listening) socket: nothing
//! else on the host can bind it, and `-P` skips ports in use.
//!
//! This crate knows nothing of clusters, tasks or Raft.

mod bridge;
mod conntrack;
mod error;
pub mod fake;
mod firewall;
mod hostports;
mod ipam;
mod links;
mod mode;
mod netlink;
mod netns;
mod port;
pub mod ruleset;

pub use bridge::{
    Attachment, BridgeConfig, BridgeNetwork, CONTAINER_IFNAME, ContainerAttachmentRecord,
    DEFAULT_BRIDGE, DEFAULT_SUBNET, DEFAULT_TABLE, HOST_VETH_PREFIX, HostBridgeNetwork,
    ReconcileReport,
};
pub use error::{NetError, Result};
pub use firewall::{Firewall, NftFirewall, TableRuleset};
pub use hostports::{HostPorts, PortReservation, SystemHostPorts};
pub use ipam::Ipam;
pub use links::{LinkInfo, Links, MacAddr, bring_up_loopback};
pub use mode::NetworkMode;
pub use netlink::NetlinkLinks;
pub use netns::{NAMED_NETNS_DIR, Netns, enter_on_this_thread};
pub use port::{DEFAULT_EPHEMERAL_PORTS, PortMapping, Protocol, PublishedPort};

// Re-exported so callers name the exact nftables types the rulesets are built from.
pub use nftables;
