//! The [`Links`] trait: the few netlink operations container networking needs, in one network
//! namespace. Implemented over rtnetlink by [`NetlinkLinks`](crate::NetlinkLinks) and in memory
//! by [`FakeLinks`](crate::fake::FakeLinks).

use std::fmt;
use std::future::Future;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::netns::Netns;

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered unicast address derived from an IPv4 address (`02:42:a:b:c:d`,
    /// Docker's scheme): stable for an address, so neighbours' caches stay right when an
    /// address is reused.
    pub fn from_ipv4(ip: Ipv4Addr) -> Self {
        let [a, b, c, d] = ip.octets();
        MacAddr([0x02, 0x42, a, b, c, d])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts
                .next()
                .ok_or_else(|| format!("{s:?} is not a mac address"))?;
            *byte =
                u8::from_str_radix(part, 16).map_err(|_| format!("{s:?} is not a mac address"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a mac address"));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a link is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Link kind (`bridge`, `veth`, `vxlan`, …); `None` for plain devices such as `lo`.
    pub kind: Option<String>,
    /// Index of the bridge (or other controller) the link is a port of.
    pub controller: Option<u32>,
    /// Hardware address.
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Whether the link is administratively up.
    pub up: bool,
}

/// Netlink operations on the links, addresses and routes of one network namespace, plus its
/// `net.*` sysctls. Operations name links by name. Adding something that exists already
/// (an address, a route) is not an error; deleting something absent is reported, not failed.
pub trait Links: Send + Sync + Sized + 'static {
    /// A handle on another network namespace (for configuring a container's side).
    fn in_netns(&self, netns: &Netns) -> impl Future<Output = Result<Self, NetError>> + Send;

    /// Every link of the namespace.
    fn list(&self) -> impl Future<Output = Result<Vec<LinkInfo>, NetError>> + Send;

    /// The link called `name`, if there is one.
    fn get(&self, name: &str) -> impl Future<Output = Result<Option<LinkInfo>, NetError>> + Send;

    /// Creates a bridge.
    fn add_bridge(&self, name: &str) -> impl Future<Output = Result<(), NetError>> + Send;

    /// Creates a veth pair, both ends in this namespace.
    fn add_veth(&self, name: &str, peer: &str)
    -> impl Future<Output = Result<(), NetError>> + Send;

    /// Makes `name` a port of the bridge `controller`.
    fn set_controller(
        &self,
        name: &str,
        controller: &str,
    ) -> impl Future<Output = Result<(), NetError>> + Send;

    /// Sets hairpin mode on a bridge port (frames may leave by the port they came in by).
    fn set_hairpin(
        &self,
        port: &str,
        on: bool,
    ) -> impl Future<Output = Result<(), NetError>> + Send;

    /// Moves the link into another network namespace.
    fn move_to_netns(
        &self,
        name: &str,
        netns: &Netns,
    ) -> impl Future<Output = Result<(), NetError>> + Send;

    /// Renames a link (it must be down).
    fn rename(
        &self,
        name: &str,
        new_name: &str,
    ) -> impl Future<Output = Result<(), NetError>> + Send;

    /// Sets the hardware address.
    fn set_mac(
        &self,
        name: &str,
        mac: MacAddr,
    ) -> impl Future<Output = Result<(), NetError>> + Send;

    /// Sets the MTU.
    fn set_mtu(&self, name: &str, mtu: u32) -> impl Future<Output = Result<(), NetError>> + Send;

    /// Sets the link administratively up.
    fn set_up(&self, name: &str) -> impl Future<Output = Result<(), NetError>> + Send;

    /// Adds an address (with its prefix) to the link.
    fn add_address(
        &self,
        name: &str,
        addr: Ipv4Net,
    ) -> impl Future<Output = Result<(), NetError>> + Send;

    /// The IPv4 addresses of the link.
    fn addresses(&self, name: &str) -> impl Future<Output = Result<Vec<Ipv4Net>, NetError>> + Send;

    /// Sets the default route via `gateway` (replacing any).
    fn set_default_route(
        &self,
        gateway: Ipv4Addr,
    ) -> impl Future<Output = Result<(), NetError>> + Send;

    /// Deletes the link (a veth takes its peer along); `false` if there was none.
    fn delete(&self, name: &str) -> impl Future<Output = Result<bool, NetError>> + Send;

    /// Writes a sysctl of this namespace; `key` is the path below `/proc/sys`, e.g.
    /// `net/ipv4/ip_forward`.
    fn set_sysctl(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), NetError>> + Send;
}

/// Sets `lo` up inside `netns`: all a `--network none` container gets (and what
/// [`BridgeNetwork::attach`](crate::BridgeNetwork::attach) does too).
pub async fn bring_up_loopback<L: Links>(links: &L, netns: &Netns) -> Result<(), NetError> {
    links.in_netns(netns).await?.set_up("lo").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_only() {
        let links = crate::fake::FakeLinks::new();
        let ns = Netns::named("none");
        links.add_netns(&ns);
        bring_up_loopback(&links, &ns).await.unwrap();
        let inside = links.links_in(&ns);
        assert_eq!(inside.len(), 1);
        assert!(inside[0].info.up && inside[0].info.name == "lo");
        assert!(
            bring_up_loopback(&links, &Netns::named("missing"))
                .await
                .is_err()
        );
    }

    #[test]
    fn mac_addresses() {
        let mac = MacAddr::from_ipv4(Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(mac.to_string(), "02:42:ac:1e:00:02");
        assert_eq!("02:42:ac:1e:00:02".parse::<MacAddr>().unwrap(), mac);
        assert!("02:42:ac:1e:00".parse::<MacAddr>().is_err());
        assert!("02:42:ac:1e:00:02:03".parse::<MacAddr>().is_err());
        assert!("zz:42:ac:1e:00:02".parse::<MacAddr>().is_err());
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"02:42:ac:1e:00:02\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
    }
}
