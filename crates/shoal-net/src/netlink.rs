//! [`Links`] over rtnetlink: one netlink socket per network namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::NetError;
use crate::links::{LinkInfo, Links, MacAddr};
use crate::netns::Netns;

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;

/// [`Links`] over a netlink socket. The socket lives in the network namespace it was opened in:
/// the calling thread's for [`NetlinkLinks::new`], the given one for [`Links::in_netns`].
#[derive(Clone)]
pub struct NetlinkLinks {
    handle: Handle,
    /// The namespace the socket was opened in, when not the caller's (sysctls are written there).
    netns: Option<Netns>,
}

impl std::fmt::Debug for NetlinkLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetlinkLinks")
            .field("netns", &self.netns)
            .finish_non_exhaustive()
    }
}

impl NetlinkLinks {
    /// Opens a netlink socket in the calling thread's network namespace. Must be called inside a
    /// tokio runtime (the connection task is spawned on it).
    pub fn new() -> Result<Self, NetError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetError::io("opening a netlink socket", e))?;
        tokio::spawn(connection);
        Ok(NetlinkLinks {
            handle,
            netns: None,
        })
    }

    /// Opens a netlink socket inside `netns`. Must be called inside a tokio runtime.
    pub fn for_netns(netns: &Netns) -> Result<Self, NetError> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle, _) = netns
            .run(move || {
                let _entered = runtime.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|e| NetError::io(format!("opening a netlink socket in {netns}"), e))?;
        tokio::spawn(connection);
        Ok(NetlinkLinks {
            handle,
            netns: Some(netns.clone()),
        })
    }

    async fn index(&self, name: &str) -> Result<u32, NetError> {
        self.get(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| NetError::NoSuchLink(name.to_owned()))
    }

    async fn set(&self, context: String, message: LinkMessage) -> Result<(), NetError> {
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| NetError::netlink(context, e))
    }
}

/// The errno of a netlink error, as a positive number.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|c| -c.get()),
        _ => None,
    }
}

fn link_info(message: LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: message.header.index,
        name: String::new(),
        kind: None,
        controller: None,
        mac: None,
        mtu: None,
        up: message.header.flags.contains(LinkFlags::Up),
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => info.name = name,
            LinkAttribute::Controller(index) => info.controller = Some(index),
            LinkAttribute::Mtu(mtu) => info.mtu = Some(mtu),
            LinkAttribute::Address(bytes) => {
                if let Ok(mac) = <[u8; 6]>::try_from(bytes.as_slice()) {
                    info.mac = Some(MacAddr(mac));
                }
            }
            LinkAttribute::LinkInfo(infos) => {
                for nla in infos {
                    if let NlLinkInfo::Kind(kind) = nla {
                        info.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    info
}

impl Links for NetlinkLinks {
    async fn in_netns(&self, netns: &Netns) -> Result<Self, NetError> {
        NetlinkLinks::for_netns(netns)
    }

    async fn list(&self) -> Result<Vec<LinkInfo>, NetError> {
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetError::netlink("listing links", e))?;
        Ok(messages.into_iter().map(link_info).collect())
    }

    async fn get(&self, name: &str) -> Result<Option<LinkInfo>, NetError> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match stream.try_next().await {
            Ok(Some(message)) => Ok(Some(link_info(message))),
            Ok(None) => Ok(None),
            Err(e) if matches!(errno(&e), Some(ENODEV | ENOENT)) => Ok(None),
            Err(e) => Err(NetError::netlink(format!("looking up link {name}"), e)),
        }
    }

    async fn add_bridge(&self, name: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("creating bridge {name}"), e))
    }

    async fn add_veth(&self, name: &str, peer: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("creating veth pair {name}/{peer}"), e))
    }

    async fn set_controller(&self, name: &str, controller: &str) -> Result<(), NetError> {
        let bridge = self.index(controller).await?;
        self.set(
            format!("adding {name} to {controller}"),
            LinkUnspec::new_with_name(name).controller(bridge).build(),
        )
        .await
    }

    async fn set_hairpin(&self, port: &str, on: bool) -> Result<(), NetError> {
        let index = self.index(port).await?;
        self.handle
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(on).build())
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("setting hairpin on {port}"), e))
    }

    async fn move_to_netns(&self, name: &str, netns: &Netns) -> Result<(), NetError> {
        let file = netns.open()?;
        self.set(
            format!("moving {name} to {netns}"),
            LinkUnspec::new_with_name(name)
                .setns_by_fd(file.as_raw_fd())
                .build(),
        )
        .await
    }

    async fn rename(&self, name: &str, new_name: &str) -> Result<(), NetError> {
        let index = self.index(name).await?;
        self.set(
            format!("renaming {name} to {new_name}"),
            LinkUnspec::new_with_index(index).name(new_name).build(),
        )
        .await
    }

    async fn set_mac(&self, name: &str, mac: MacAddr) -> Result<(), NetError> {
        self.set(
            format!("setting the address of {name}"),
            LinkUnspec::new_with_name(name)
                .address(mac.0.to_vec())
                .build(),
        )
        .await
    }

    async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), NetError> {
        self.set(
            format!("setting the mtu of {name}"),
            LinkUnspec::new_with_name(name).mtu(mtu).build(),
        )
        .await
    }

    async fn set_up(&self, name: &str) -> Result<(), NetError> {
        self.set(
            format!("setting {name} up"),
            LinkUnspec::new_with_name(name).up().build(),
        )
        .await
    }

    async fn add_address(&self, name: &str, addr: Ipv4Net) -> Result<(), NetError> {
        let index = self.index(name).await?;
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(NetError::netlink(format!("adding {addr} to {name}"), e)),
        }
    }

    async fn addresses(&self, name: &str) -> Result<Vec<Ipv4Net>, NetError> {
        let index = self.index(name).await?;
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetError::netlink(format!("listing addresses of {name}"), e))?;
        Ok(messages
            .into_iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                let prefix = m.header.prefix_len;
                m.attributes.into_iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Ipv4Net::new(ip, prefix).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    async fn set_default_route(&self, gateway: Ipv4Addr) -> Result<(), NetError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("adding default route via {gateway}"), e))
    }

    async fn delete(&self, name: &str) -> Result<bool, NetError> {
        let Some(link) = self.get(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno(&e), Some(ENODEV | ENOENT | ESRCH)) => Ok(false),
            Err(e) => Err(NetError::netlink(format!("deleting link {name}"), e)),
        }
    }

    async fn set_sysctl(&self, key: &str, value: &str) -> Result<(), NetError> {
        if key.split('/').any(|part| part.is_empty() || part == "..") {
            return Err(NetError::io(
                format!("sysctl {key}"),
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad sysctl key"),
            ));
        }
        let path = format!("/proc/sys/{key}");
        let write = || std::fs::write(&path, value);
        let result = match &self.netns {
            None => write(),
            Some(netns) => netns.run(write)?,
        };
        result.map_err(|e| NetError::io(format!("writing {value} to {path}"), e))
    }
}
