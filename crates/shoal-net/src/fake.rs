//! In-memory fakes of [`Links`], [`Firewall`] and [`HostPorts`], for unit tests here and in the
//! crates above (the agent, the daemon) that must not touch the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use nftables::types::NfFamily;
use parking_lot::Mutex;

use crate::error::NetError;
use crate::firewall::{Firewall, TableRuleset};
use crate::hostports::{HostPorts, PortReservation};
use crate::links::{LinkInfo, Links, MacAddr};
use crate::netns::Netns;
use crate::port::Protocol;

/// The key of the namespace a [`FakeLinks`] was created for.
pub const HOST_NS: &str = "host";

/// One link of the fake kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeLink {
    /// What [`Links::list`] reports.
    pub info: LinkInfo,
    /// Hairpin mode on a bridge port.
    pub hairpin: bool,
    /// Addresses.
    pub addresses: Vec<Ipv4Net>,
    /// Index of the veth peer.
    pub peer: Option<u32>,
}

#[derive(Debug, Default)]
struct FakeNs {
    links: BTreeMap<String, FakeLink>,
    sysctls: BTreeMap<String, String>,
    default_route: Option<Ipv4Addr>,
}

#[derive(Debug)]
struct FakeKernel {
    next_index: u32,
    namespaces: BTreeMap<String, FakeNs>,
    calls: Vec<String>,
    fail: BTreeSet<String>,
}

/// [`Links`] in memory: namespaces, links, addresses, default routes and sysctls, with veth
/// pairs that die together, and failures injected per operation name.
#[derive(Debug, Clone)]
pub struct FakeLinks {
    kernel: Arc<Mutex<FakeKernel>>,
    ns: String,
}

impl Default for FakeLinks {
    fn default() -> Self {
        FakeLinks::new()
    }
}

fn ns_key(netns: &Netns) -> String {
    netns.ns_path().display().to_string()
}

fn netlink_err(context: impl Into<String>, message: &str) -> NetError {
    NetError::netlink(context, message)
}

impl FakeLinks {
    /// A fake kernel with one namespace (the "host") holding `lo`.
    pub fn new() -> Self {
        let mut kernel = FakeKernel {
            next_index: 1,
            namespaces: BTreeMap::new(),
            calls: Vec::new(),
            fail: BTreeSet::new(),
        };
        kernel.add_ns(HOST_NS);
        FakeLinks {
            kernel: Arc::new(Mutex::new(kernel)),
            ns: HOST_NS.to_owned(),
        }
    }

    /// Creates a namespace (as `ip netns add` would), holding `lo` (down).
    pub fn add_netns(&self, netns: &Netns) {
        self.kernel.lock().add_ns(&ns_key(netns));
    }

    /// Deletes a namespace and every link in it (veth peers elsewhere go too).
    pub fn remove_netns(&self, netns: &Netns) {
        let mut k = self.kernel.lock();
        let key = ns_key(netns);
        let names: Vec<String> = k
            .namespaces
            .get(&key)
            .map(|ns| ns.links.keys().cloned().collect())
            .unwrap_or_default();
        for name in names {
            k.delete(&key, &name);
        }
        k.namespaces.remove(&key);
    }

    /// The links of this handle's namespace.
    pub fn links(&self) -> Vec<FakeLink> {
        self.links_of(&self.ns)
    }

    /// The links of another namespace.
    pub fn links_in(&self, netns: &Netns) -> Vec<FakeLink> {
        self.links_of(&ns_key(netns))
    }

    fn links_of(&self, key: &str) -> Vec<FakeLink> {
        self.kernel
            .lock()
            .namespaces
            .get(key)
            .map(|ns| ns.links.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One link of this handle's namespace.
    pub fn link(&self, name: &str) -> Option<FakeLink> {
        self.links().into_iter().find(|l| l.info.name == name)
    }

    /// A sysctl of this handle's namespace.
    pub fn sysctl(&self, key: &str) -> Option<String> {
        self.kernel
            .lock()
            .namespaces
            .get(&self.ns)
            .and_then(|ns| ns.sysctls.get(key).cloned())
    }

    /// The default route of a namespace.
    pub fn default_route_in(&self, netns: &Netns) -> Option<Ipv4Addr> {
        self.kernel
            .lock()
            .namespaces
            .get(&ns_key(netns))
            .and_then(|ns| ns.default_route)
    }

    /// Every operation called so far, as `op name` strings.
    pub fn calls(&self) -> Vec<String> {
        self.kernel.lock().calls.clone()
    }

    /// Makes every later call of operation `op` (e.g. `"move_to_netns"`) fail until
    /// [`FakeLinks::heal`].
    pub fn fail(&self, op: &str) {
        self.kernel.lock().fail.insert(op.to_owned());
    }

    /// Stops injecting failures.
    pub fn heal(&self) {
        self.kernel.lock().fail.clear();
    }

    /// Records the call and fails it if asked to; then runs `f` on this namespace.
    fn with<T>(
        &self,
        op: &str,
        arg: &str,
        f: impl FnOnce(&mut FakeKernel, &str) -> Result<T, NetError>,
    ) -> Result<T, NetError> {
        let mut k = self.kernel.lock();
        k.calls.push(format!("{op} {arg}"));
        if k.fail.contains(op) {
            return Err(netlink_err(format!("{op} {arg}"), "injected failure"));
        }
        if !k.namespaces.contains_key(&self.ns) {
            return Err(netlink_err(format!("{op} {arg}"), "namespace is gone"));
        }
        f(&mut k, &self.ns)
    }
}

impl FakeKernel {
    fn add_ns(&mut self, key: &str) {
        if self.namespaces.contains_key(key) {
            return;
        }
        let index = self.take_index();
        let mut ns = FakeNs::default();
        ns.links.insert(
            "lo".into(),
            FakeLink {
                info: LinkInfo {
                    index,
                    name: "lo".into(),
                    kind: None,
                    controller: None,
                    mac: None,
                    mtu: Some(65536),
                    up: false,
                },
                hairpin: false,
                addresses: vec![],
                peer: None,
            },
        );
        self.namespaces.insert(key.to_owned(), ns);
    }

    fn take_index(&mut self) -> u32 {
        self.next_index += 1;
        self.next_index
    }

    fn ns(&mut self, key: &str) -> &mut FakeNs {
        self.namespaces.get_mut(key).expect("checked by with()")
    }

    fn link(&mut self, key: &str, name: &str) -> Result<&mut FakeLink, NetError> {
        self.ns(key)
            .links
            .get_mut(name)
            .ok_or_else(|| NetError::NoSuchLink(name.to_owned()))
    }

    fn new_link(&mut self, key: &str, name: &str, kind: &str) -> Result<u32, NetError> {
        if self.ns(key).links.contains_key(name) {
            return Err(netlink_err(
                format!("creating {name}"),
                "File exists (os error 17)",
            ));
        }
        let index = self.take_index();
        let link = FakeLink {
            info: LinkInfo {
                index,
                name: name.to_owned(),
                kind: Some(kind.to_owned()),
                controller: None,
                mac: Some(MacAddr([0x02, 0, 0, 0, (index >> 8) as u8, index as u8])),
                mtu: Some(1500),
                up: false,
            },
            hairpin: false,
            addresses: vec![],
            peer: None,
        };
        self.ns(key).links.insert(name.to_owned(), link);
        Ok(index)
    }

    fn find_index(&self, index: u32) -> Option<(String, String)> {
        self.namespaces.iter().find_map(|(key, ns)| {
            ns.links
                .values()
                .find(|l| l.info.index == index)
                .map(|l| (key.clone(), l.info.name.clone()))
        })
    }

    fn delete(&mut self, key: &str, name: &str) -> bool {
        let Some(link) = self.ns(key).links.remove(name) else {
            return false;
        };
        let index = link.info.index;
        if let Some((peer_ns, peer_name)) = link.peer.and_then(|p| self.find_index(p)) {
            self.ns(&peer_ns).links.remove(&peer_name);
        }
        // Ports of a deleted bridge are released.
        for ns in self.namespaces.values_mut() {
            for l in ns.links.values_mut() {
                if l.info.controller == Some(index) {
                    l.info.controller = None;
                }
            }
        }
        true
    }
}

impl Links for FakeLinks {
    async fn in_netns(&self, netns: &Netns) -> Result<Self, NetError> {
        let key = ns_key(netns);
        if !self.kernel.lock().namespaces.contains_key(&key) {
            return Err(NetError::Netns {
                path: netns.ns_path(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        Ok(FakeLinks {
            kernel: Arc::clone(&self.kernel),
            ns: key,
        })
    }

    async fn list(&self) -> Result<Vec<LinkInfo>, NetError> {
        self.with("list", "", |k, ns| {
            Ok(k.ns(ns).links.values().map(|l| l.info.clone()).collect())
        })
    }

    async fn get(&self, name: &str) -> Result<Option<LinkInfo>, NetError> {
        self.with("get", name, |k, ns| {
            Ok(k.ns(ns).links.get(name).map(|l| l.info.clone()))
        })
    }

    async fn add_bridge(&self, name: &str) -> Result<(), NetError> {
        self.with("add_bridge", name, |k, ns| {
            k.new_link(ns, name, "bridge").map(drop)
        })
    }

    async fn add_veth(&self, name: &str, peer: &str) -> Result<(), NetError> {
        self.with("add_veth", name, |k, ns| {
            if k.ns(ns).links.contains_key(peer) {
                return Err(netlink_err(
                    format!("creating {peer}"),
                    "File exists (os error 17)",
                ));
            }
            let a = k.new_link(ns, name, "veth")?;
            let b = k.new_link(ns, peer, "veth")?;
            k.link(ns, name)?.peer = Some(b);
            k.link(ns, peer)?.peer = Some(a);
            Ok(())
        })
    }

    async fn set_controller(&self, name: &str, controller: &str) -> Result<(), NetError> {
        self.with("set_controller", name, |k, ns| {
            let bridge = k.link(ns, controller)?;
            if bridge.info.kind.as_deref() != Some("bridge") {
                return Err(netlink_err("set_controller", "not a bridge"));
            }
            let index = bridge.info.index;
            k.link(ns, name)?.info.controller = Some(index);
            Ok(())
        })
    }

    async fn set_hairpin(&self, port: &str, on: bool) -> Result<(), NetError> {
        self.with("set_hairpin", port, |k, ns| {
            let link = k.link(ns, port)?;
            if link.info.controller.is_none() {
                return Err(netlink_err("set_hairpin", "not a bridge port"));
            }
            link.hairpin = on;
            Ok(())
        })
    }

    async fn move_to_netns(&self, name: &str, netns: &Netns) -> Result<(), NetError> {
        let target = ns_key(netns);
        self.with("move_to_netns", name, |k, ns| {
            if !k.namespaces.contains_key(&target) {
                return Err(netlink_err("move_to_netns", "no such namespace"));
            }
            if k.ns(&target).links.contains_key(name) {
                return Err(netlink_err("move_to_netns", "File exists (os error 17)"));
            }
            let mut link = k
                .ns(ns)
                .links
                .remove(name)
                .ok_or_else(|| NetError::NoSuchLink(name.to_owned()))?;
            link.info.controller = None;
            link.info.up = false;
            link.addresses.clear();
            k.ns(&target).links.insert(name.to_owned(), link);
            Ok(())
        })
    }

    async fn rename(&self, name: &str, new_name: &str) -> Result<(), NetError> {
        self.with("rename", name, |k, ns| {
            if k.ns(ns).links.contains_key(new_name) {
                return Err(netlink_err("rename", "File exists (os error 17)"));
            }
            let mut link = k
                .ns(ns)
                .links
                .remove(name)
                .ok_or_else(|| NetError::NoSuchLink(name.to_owned()))?;
            if link.info.up {
                k.ns(ns).links.insert(name.to_owned(), link);
                return Err(netlink_err(
                    "rename",
                    "Device or resource busy (os error 16)",
                ));
            }
            link.info.name = new_name.to_owned();
            k.ns(ns).links.insert(new_name.to_owned(), link);
            Ok(())
        })
    }

    async fn set_mac(&self, name: &str, mac: MacAddr) -> Result<(), NetError> {
        self.with("set_mac", name, |k, ns| {
            k.link(ns, name)?.info.mac = Some(mac);
            Ok(())
        })
    }

    async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), NetError> {
        self.with("set_mtu", name, |k, ns| {
            k.link(ns, name)?.info.mtu = Some(mtu);
            Ok(())
        })
    }

    async fn set_up(&self, name: &str) -> Result<(), NetError> {
        self.with("set_up", name, |k, ns| {
            k.link(ns, name)?.info.up = true;
            Ok(())
        })
    }

    async fn add_address(&self, name: &str, addr: Ipv4Net) -> Result<(), NetError> {
        self.with("add_address", name, |k, ns| {
            let link = k.link(ns, name)?;
            if !link.addresses.contains(&addr) {
                link.addresses.push(addr);
            }
            Ok(())
        })
    }

    async fn addresses(&self, name: &str) -> Result<Vec<Ipv4Net>, NetError> {
        self.with("addresses", name, |k, ns| {
            Ok(k.link(ns, name)?.addresses.clone())
        })
    }

    async fn set_default_route(&self, gateway: Ipv4Addr) -> Result<(), NetError> {
        self.with("set_default_route", &gateway.to_string(), |k, ns| {
            let reachable = k
                .ns(ns)
                .links
                .values()
                .any(|l| l.info.up && l.addresses.iter().any(|a| a.contains(&gateway)));
            if !reachable {
                return Err(netlink_err(
                    "set_default_route",
                    "Network is unreachable (os error 101)",
                ));
            }
            k.ns(ns).default_route = Some(gateway);
            Ok(())
        })
    }

    async fn delete(&self, name: &str) -> Result<bool, NetError> {
        self.with("delete", name, |k, ns| Ok(k.delete(ns, name)))
    }

    async fn set_sysctl(&self, key: &str, value: &str) -> Result<(), NetError> {
        self.with("set_sysctl", key, |k, ns| {
            k.ns(ns).sysctls.insert(key.to_owned(), value.to_owned());
            Ok(())
        })
    }
}

/// [`Firewall`] in memory: the tables applied, by name.
#[derive(Debug, Clone, Default)]
pub struct FakeFirewall {
    tables: Arc<Mutex<BTreeMap<String, TableRuleset>>>,
    applies: Arc<Mutex<usize>>,
    fail: Arc<Mutex<bool>>,
    forgotten: Arc<Mutex<Vec<std::net::Ipv4Addr>>>,
}

impl FakeFirewall {
    /// No tables.
    pub fn new() -> Self {
        FakeFirewall::default()
    }

    /// The addresses whose tracked connections were forgotten, in order.
    pub fn forgotten(&self) -> Vec<std::net::Ipv4Addr> {
        self.forgotten.lock().clone()
    }

    /// The table called `name`, as last applied.
    pub fn table(&self, name: &str) -> Option<TableRuleset> {
        self.tables.lock().get(name).cloned()
    }

    /// How many times a table was applied.
    pub fn applies(&self) -> usize {
        *self.applies.lock()
    }

    /// Makes every later call fail (`true`) or succeed (`false`).
    pub fn set_failing(&self, failing: bool) {
        *self.fail.lock() = failing;
    }

    fn check(&self) -> Result<(), NetError> {
        if *self.fail.lock() {
            return Err(NetError::Nftables {
                context: "fake".into(),
                message: "injected failure".into(),
            });
        }
        Ok(())
    }
}

impl Firewall for FakeFirewall {
    async fn apply_table(&self, table: &TableRuleset) -> Result<(), NetError> {
        self.check()?;
        *self.applies.lock() += 1;
        self.tables.lock().insert(table.name.clone(), table.clone());
        Ok(())
    }

    async fn delete_table(&self, _family: NfFamily, name: &str) -> Result<(), NetError> {
        self.check()?;
        self.tables.lock().remove(name);
        Ok(())
    }

    async fn forget_connections(&self, address: std::net::Ipv4Addr) -> Result<usize, NetError> {
        self.forgotten.lock().push(address);
        Ok(0)
    }
}

/// [`HostPorts`] in memory: ports marked in use by "other programs", and the ports held.
#[derive(Debug, Clone, Default)]
pub struct FakeHostPorts {
    in_use: Arc<Mutex<BTreeSet<(Protocol, u16)>>>,
    held: Arc<Mutex<BTreeMap<(Protocol, u16), usize>>>,
}

/// A fake reservation: releases its port on drop.
struct FakeHold {
    held: Arc<Mutex<BTreeMap<(Protocol, u16), usize>>>,
    key: (Protocol, u16),
}

impl Drop for FakeHold {
    fn drop(&mut self) {
        let mut held = self.held.lock();
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

impl FakeHostPorts {
    /// Nothing in use.
    pub fn new() -> Self {
        FakeHostPorts::default()
    }

    /// Marks a port as used by some other program.
    pub fn mark_in_use(&self, protocol: Protocol, port: u16) {
        self.in_use.lock().insert((protocol, port));
    }

    /// The ports currently held by reservations.
    pub fn held(&self) -> Vec<(Protocol, u16)> {
        self.held.lock().keys().copied().collect()
    }
}

impl HostPorts for FakeHostPorts {
    fn reserve(
        &self,
        ip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
    ) -> Result<PortReservation, NetError> {
        if ip == Ipv4Addr::new(192, 0, 2, 1) {
            return Err(NetError::HostAddressNotLocal(ip));
        }
        if self.in_use.lock().contains(&(protocol, port)) {
            return Err(NetError::PortInUse {
                ip,
                port,
                protocol,
                source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
            });
        }
        *self.held.lock().entry((protocol, port)).or_insert(0) += 1;
        Ok(PortReservation::holding(FakeHold {
            held: Arc::clone(&self.held),
            key: (protocol, port),
        }))
    }
}
