//! Address management for one subnet: which addresses are given out and to whom.
//!
//! Addresses are handed out in order after the last one given (wrapping), so a freed address is
//! not reused at once and stale ARP or conntrack entries for it have time to go. The network,
//! broadcast and gateway addresses are never given out. The allocator is plain data: the bridge
//! network persists it in its state file.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::NetError;

/// The addresses of one subnet and who holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipam {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    /// Address → owner (a container id).
    allocated: BTreeMap<Ipv4Addr, String>,
    /// The address given out last; the next search starts after it.
    #[serde(default)]
    last: Option<Ipv4Addr>,
}

impl Ipam {
    /// An allocator for `subnet` whose `gateway` is never given out. The subnet must leave room
    /// for at least one address besides network, broadcast and gateway (at most /30).
    pub fn new(subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<Self, NetError> {
        let subnet = subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(NetError::InvalidConfig(format!(
                "subnet {subnet} is too small: at most a /30 is needed"
            )));
        }
        if !subnet.contains(&gateway)
            || gateway == subnet.network()
            || gateway == subnet.broadcast()
        {
            return Err(NetError::InvalidConfig(format!(
                "gateway {gateway} is not a host address of {subnet}"
            )));
        }
        Ok(Ipam {
            subnet,
            gateway,
            allocated: BTreeMap::new(),
            last: None,
        })
    }

    /// The subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The gateway address (held by the bridge, never given out).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// How many addresses can be given out in all.
    pub fn capacity(&self) -> u32 {
        self.host_count() - 1
    }

    /// How many addresses are given out.
    pub fn len(&self) -> usize {
        self.allocated.len()
    }

    /// Whether no address is given out.
    pub fn is_empty(&self) -> bool {
        self.allocated.is_empty()
    }

    /// Who holds `addr`, if anyone.
    pub fn owner(&self, addr: Ipv4Addr) -> Option<&str> {
        self.allocated.get(&addr).map(String::as_str)
    }

    /// Every address given out, with its owner, in address order.
    pub fn allocations(&self) -> impl Iterator<Item = (Ipv4Addr, &str)> {
        self.allocated.iter().map(|(a, o)| (*a, o.as_str()))
    }

    /// Gives the next free address to `owner`.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, NetError> {
        let first = u32::from(self.subnet.network()) + 1;
        let count = self.host_count();
        let start = match self.last {
            Some(last) if self.subnet.contains(&last) => u32::from(last) + 1 - first,
            _ => 0,
        };
        for step in 0..count {
            let addr = Ipv4Addr::from(first + (start + step) % count);
            if addr != self.gateway && !self.allocated.contains_key(&addr) {
                self.allocated.insert(addr, owner.to_owned());
                self.last = Some(addr);
                return Ok(addr);
            }
        }
        Err(NetError::AddressesExhausted(self.subnet))
    }

    /// Gives `addr` to `owner` (used when adopting an existing attachment). Giving an address
    /// again to the owner that holds it is not an error.
    pub fn allocate_specific(&mut self, addr: Ipv4Addr, owner: &str) -> Result<(), NetError> {
        if !self.is_host_address(addr) {
            return Err(NetError::AddressOutsideSubnet {
                addr,
                subnet: self.subnet,
            });
        }
        match self.allocated.get(&addr) {
            Some(holder) if holder == owner => Ok(()),
            Some(_) => Err(NetError::AddressInUse(addr)),
            None => {
                self.allocated.insert(addr, owner.to_owned());
                Ok(())
            }
        }
    }

    /// Frees `addr`; returns who held it.
    pub fn release(&mut self, addr: Ipv4Addr) -> Option<String> {
        self.allocated.remove(&addr)
    }

    /// Frees every address held by `owner`; returns them.
    pub fn release_owner(&mut self, owner: &str) -> Vec<Ipv4Addr> {
        let addrs: Vec<Ipv4Addr> = self
            .allocated
            .iter()
            .filter(|(_, o)| o.as_str() == owner)
            .map(|(a, _)| *a)
            .collect();
        for addr in &addrs {
            self.allocated.remove(addr);
        }
        addrs
    }

    /// Whether `addr` may be given out at all.
    pub fn is_host_address(&self, addr: Ipv4Addr) -> bool {
        self.subnet.contains(&addr)
            && addr != self.subnet.network()
            && addr != self.subnet.broadcast()
            && addr != self.gateway
    }

    /// Number of addresses between network and broadcast.
    fn host_count(&self) -> u32 {
        u32::from(self.subnet.broadcast()) - u32::from(self.subnet.network()) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(subnet: &str) -> Ipam {
        let net: Ipv4Net = subnet.parse().unwrap();
        let gw = Ipv4Addr::from(u32::from(net.network()) + 1);
        Ipam::new(net, gw).unwrap()
    }

    #[test]
    fn allocates_in_order_skipping_the_gateway() {
        let mut ipam = ipam("10.9.0.0/24");
        assert_eq!(ipam.allocate("a").unwrap(), Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(ipam.allocate("b").unwrap(), Ipv4Addr::new(10, 9, 0, 3));
        assert_eq!(ipam.owner(Ipv4Addr::new(10, 9, 0, 3)), Some("b"));
        assert_eq!(ipam.capacity(), 253);
        assert_eq!(ipam.len(), 2);
    }

    #[test]
    fn freed_addresses_are_not_reused_at_once() {
        let mut ipam = ipam("10.9.0.0/24");
        let a = ipam.allocate("a").unwrap();
        assert_eq!(ipam.release(a).as_deref(), Some("a"));
        let b = ipam.allocate("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(ipam.release(a), None);
    }

    #[test]
    fn exhaustion_is_an_error_and_freeing_makes_room() {
        let mut ipam = ipam("10.9.0.0/29"); // .1 gateway, .2-.6 usable
        let got: Vec<Ipv4Addr> = (0..5)
            .map(|i| ipam.allocate(&format!("c{i}")).unwrap())
            .collect();
        assert_eq!(got.first(), Some(&Ipv4Addr::new(10, 9, 0, 2)));
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 9, 0, 6)));
        let err = ipam.allocate("x").unwrap_err().to_string();
        assert_eq!(err, "no free address left in 10.9.0.0/29");
        ipam.release(Ipv4Addr::new(10, 9, 0, 4));
        assert_eq!(ipam.allocate("x").unwrap(), Ipv4Addr::new(10, 9, 0, 4));
        assert!(ipam.allocate("y").is_err());
        assert_eq!(ipam.release_owner("x"), vec![Ipv4Addr::new(10, 9, 0, 4)]);
    }

    #[test]
    fn specific_allocation_checks_range_and_holder() {
        let mut ipam = ipam("10.9.0.0/24");
        let a = Ipv4Addr::new(10, 9, 0, 50);
        ipam.allocate_specific(a, "a").unwrap();
        ipam.allocate_specific(a, "a").unwrap();
        assert!(matches!(
            ipam.allocate_specific(a, "b"),
            Err(NetError::AddressInUse(_))
        ));
        for bad in [[10, 9, 0, 0], [10, 9, 0, 1], [10, 9, 0, 255], [10, 9, 1, 2]] {
            assert!(matches!(
                ipam.allocate_specific(Ipv4Addr::from(bad), "b"),
                Err(NetError::AddressOutsideSubnet { .. })
            ));
        }
    }

    #[test]
    fn survives_a_round_trip_through_json() {
        let mut ipam = ipam("172.30.0.0/16");
        for i in 0..3 {
            ipam.allocate(&format!("c{i}")).unwrap();
        }
        ipam.release(Ipv4Addr::new(172, 30, 0, 3));
        let json = serde_json::to_string(&ipam).unwrap();
        let mut back: Ipam = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ipam);
        // The cursor survives too: the next address is after the last one given.
        assert_eq!(back.allocate("d").unwrap(), Ipv4Addr::new(172, 30, 0, 5));
    }

    #[test]
    fn refuses_bad_subnets() {
        let net: Ipv4Net = "10.0.0.0/31".parse().unwrap();
        assert!(Ipam::new(net, Ipv4Addr::new(10, 0, 0, 1)).is_err());
        let net: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        assert!(Ipam::new(net, Ipv4Addr::new(10, 0, 1, 1)).is_err());
        assert!(Ipam::new(net, Ipv4Addr::new(10, 0, 0, 0)).is_err());
        assert!(Ipam::new(net, Ipv4Addr::new(10, 0, 0, 255)).is_err());
        // A /30 has exactly one address besides the gateway.
        let net: Ipv4Net = "10.0.0.0/30".parse().unwrap();
        let mut small = Ipam::new(net, Ipv4Addr::new(10, 0, 0, 1)).unwrap();
        assert_eq!(small.capacity(), 1);
        assert_eq!(small.allocate("a").unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        assert!(small.allocate("b").is_err());
    }
}
