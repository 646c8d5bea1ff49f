//! The default bridge network (Docker's `docker0`): a bridge with the subnet's gateway address,
//! egress NAT, published ports, and one veth per attached container.
//!
//! Everything the network does is recorded in a small JSON state file (addresses, veth names,
//! published ports) written before the kernel is touched, so a restarted daemon can
//! [`reconcile`](BridgeNetwork::reconcile) the kernel with what is still alive: nothing leaks and
//! nothing is duplicated. The nftables table is always generated whole from that state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::firewall::{Firewall, NftFirewall, TableRuleset};
use crate::hostports::{HostPorts, PortReservation, SystemHostPorts};
use crate::ipam::Ipam;
use crate::links::{Links, MacAddr};
use crate::netlink::NetlinkLinks;
use crate::netns::Netns;
use crate::port::{DEFAULT_EPHEMERAL_PORTS, PortMapping, PublishedPort, choose_port};
use crate::ruleset::{PublishedRule, bridge_table};

/// Name of the default bridge.
pub const DEFAULT_BRIDGE: &str = "shoal0";

/// Name of the default bridge's nftables table (family `ip`).
pub const DEFAULT_TABLE: &str = "shoal";

/// The default bridge's subnet: 172.30.0.0/16. Docker takes 172.17.0.0/16 for docker0 and
/// hands out 172.18–172.29 to user networks first, so 172.30/16 stays clear of a Docker host's
/// usual networks while still private (RFC 1918).
pub const DEFAULT_SUBNET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(172, 30, 0, 0), 16);

/// The interface name a container sees.
pub const CONTAINER_IFNAME: &str = "eth0";

/// Host ends of container veths are called `shv` + 12 hex digits.
pub const HOST_VETH_PREFIX: &str = "shv";

/// Container ends are created as `shp` + 12 hex digits, then moved and renamed `eth0`.
const PEER_VETH_PREFIX: &str = "shp";

const STATE_VERSION: u32 = 1;

/// How a bridge network is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Bridge interface name (at most 15 bytes).
    pub bridge: String,
    /// The subnet containers get addresses from.
    pub subnet: Ipv4Net,
    /// The bridge's address; the subnet's first host address when `None`.
    pub gateway: Option<Ipv4Addr>,
    /// MTU of container interfaces.
    pub mtu: u32,
    /// Name of the nftables table (family `ip`) holding the network's rules.
    pub table: String,
    /// Where random (`-P`) host ports are taken from.
    pub ephemeral_ports: RangeInclusive<u16>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            bridge: DEFAULT_BRIDGE.into(),
            subnet: DEFAULT_SUBNET,
            gateway: None,
            mtu: 1500,
            table: DEFAULT_TABLE.into(),
            ephemeral_ports: DEFAULT_EPHEMERAL_PORTS,
        }
    }
}

impl BridgeConfig {
    /// The bridge's address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
            .unwrap_or_else(|| Ipv4Addr::from(u32::from(self.subnet.network()) + 1))
    }

    fn validate(&self) -> Result<(), NetError> {
        let bad = |reason: String| Err(NetError::InvalidConfig(reason));
        if !valid_ifname(&self.bridge) {
            return bad(format!("{:?} is not a valid interface name", self.bridge));
        }
        if !(68..=65535).contains(&self.mtu) {
            return bad(format!("mtu {} is out of range 68-65535", self.mtu));
        }
        if self.table.is_empty()
            || !self
                .table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            return bad(format!(
                "{:?} is not a valid nftables table name",
                self.table
            ));
        }
        if self.ephemeral_ports.is_empty() || *self.ephemeral_ports.start() == 0 {
            return bad(format!(
                "ephemeral port range {}-{} is empty or starts at 0",
                self.ephemeral_ports.start(),
                self.ephemeral_ports.end()
            ));
        }
        Ipam::new(self.subnet, self.gateway()).map(drop)
    }
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// A container's place on the network: what `shoal inspect` shows and what the daemon keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The container.
    pub container_id: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// Its default gateway (the bridge).
    pub gateway: Ipv4Addr,
    /// The hardware address of its `eth0`.
    pub mac: MacAddr,
    /// The host end of its veth pair.
    pub host_veth: String,
    /// Its published ports, with the host ports actually chosen.
    pub ports: Vec<PublishedPort>,
}

/// What the daemon knows of a live container when it reconciles: its id and, if it kept one,
/// the attachment it was given (so an attachment whose record this crate lost is adopted, not
/// duplicated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerAttachmentRecord {
    /// The container.
    pub container_id: String,
    /// The attachment the daemon recorded for it, if any.
    #[serde(default)]
    pub attachment: Option<Attachment>,
}

impl From<&str> for ContainerAttachmentRecord {
    fn from(id: &str) -> Self {
        ContainerAttachmentRecord {
            container_id: id.to_owned(),
            attachment: None,
        }
    }
}

impl From<String> for ContainerAttachmentRecord {
    fn from(container_id: String) -> Self {
        ContainerAttachmentRecord {
            container_id,
            attachment: None,
        }
    }
}

impl From<Attachment> for ContainerAttachmentRecord {
    fn from(attachment: Attachment) -> Self {
        ContainerAttachmentRecord {
            container_id: attachment.container_id.clone(),
            attachment: Some(attachment),
        }
    }
}

/// What [`BridgeNetwork::reconcile`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Live containers whose attachment was kept as it was.
    pub kept: Vec<String>,
    /// Live containers whose attachment the daemon supplied and which were taken back.
    pub adopted: Vec<String>,
    /// Containers that are gone: their veth, address and rules were removed.
    pub removed: Vec<String>,
    /// Live containers whose wiring was gone or unusable: their leftovers were removed and they
    /// must be attached again.
    pub lost: Vec<String>,
    /// Links deleted on the way.
    pub deleted_links: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    version: u32,
    bridge: String,
    ipam: Ipam,
    attachments: BTreeMap<String, Attachment>,
}

impl State {
    fn new(config: &BridgeConfig) -> Result<Self, NetError> {
        Ok(State {
            version: STATE_VERSION,
            bridge: config.bridge.clone(),
            ipam: Ipam::new(config.subnet, config.gateway())?,
            attachments: BTreeMap::new(),
        })
    }

    /// Makes the address book agree with the attachments.
    fn repair(&mut self) {
        let stale: Vec<Ipv4Addr> = self
            .ipam
            .allocations()
            .filter(|(ip, owner)| self.attachments.get(*owner).is_none_or(|a| a.ip != *ip))
            .map(|(ip, _)| ip)
            .collect();
        for ip in stale {
            tracing::warn!(%ip, "freeing an address no attachment holds");
            self.ipam.release(ip);
        }
        let mut broken = Vec::new();
        for (id, a) in &self.attachments {
            if let Err(e) = self.ipam.allocate_specific(a.ip, id) {
                tracing::warn!(container = %id, error = %e, "dropping an attachment whose address is unusable");
                broken.push(id.clone());
            }
        }
        for id in broken {
            self.attachments.remove(&id);
        }
    }

    fn publisher_of(
        &self,
        ip: Ipv4Addr,
        port: u16,
        protocol: crate::port::Protocol,
    ) -> Option<&str> {
        self.attachments
            .values()
            .find(|a| a.ports.iter().any(|p| p.overlaps(ip, port, protocol)))
            .map(|a| a.container_id.as_str())
    }
}

fn load_state(path: &Path) -> Result<Option<State>, NetError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(NetError::State {
                path: path.to_owned(),
                source,
            });
        }
    };
    let state: State = serde_json::from_str(&text).map_err(|e| NetError::CorruptState {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if state.version != STATE_VERSION {
        return Err(NetError::CorruptState {
            path: path.to_owned(),
            reason: format!("unknown version {}", state.version),
        });
    }
    Ok(Some(state))
}

fn save_state(path: &Path, state: &State) -> Result<(), NetError> {
    let err = |source| NetError::State {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let text = serde_json::to_vec_pretty(state).expect("the state serialises");
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// FNV-1a, 64 bits: stable across builds (veth names must not change with the compiler).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Host and temporary peer names of a container's veth pair.
fn veth_names(container_id: &str, salt: u32) -> (String, String) {
    let key = if salt == 0 {
        container_id.to_owned()
    } else {
        format!("{container_id}#{salt}")
    };
    let hex = format!("{:012x}", fnv1a(&key) & 0xffff_ffff_ffff);
    (
        format!("{HOST_VETH_PREFIX}{hex}"),
        format!("{PEER_VETH_PREFIX}{hex}"),
    )
}

struct Inner {
    state: State,
    reservations: HashMap<String, Vec<PortReservation>>,
    ensured: bool,
}

/// A bridge network on this host: the bridge, its nftables table and its attached containers.
/// All methods serialise on one lock; kernel state changes only through them.
pub struct BridgeNetwork<L = NetlinkLinks, F = NftFirewall, P = SystemHostPorts> {
    config: BridgeConfig,
    links: L,
    firewall: F,
    host_ports: P,
    state_path: PathBuf,
    inner: tokio::sync::Mutex<Inner>,
}

/// The bridge network over the real kernel.
pub type HostBridgeNetwork = BridgeNetwork<NetlinkLinks, NftFirewall, SystemHostPorts>;

impl HostBridgeNetwork {
    /// The network in the calling thread's network namespace, over netlink and `nft`, with its
    /// state in `state_dir`. Must be called inside a tokio runtime. Touches nothing in the
    /// kernel until [`ensure`](BridgeNetwork::ensure), [`attach`](BridgeNetwork::attach) or
    /// [`reconcile`](BridgeNetwork::reconcile).
    pub fn on_host(config: BridgeConfig, state_dir: impl AsRef<Path>) -> Result<Self, NetError> {
        BridgeNetwork::open(
            config,
            state_dir,
            NetlinkLinks::new()?,
            NftFirewall::new(),
            SystemHostPorts,
        )
    }
}

impl<L, F, P> std::fmt::Debug for BridgeNetwork<L, F, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeNetwork")
            .field("config", &self.config)
            .field("state_path", &self.state_path)
            .finish_non_exhaustive()
    }
}

impl<L: Links, F: Firewall, P: HostPorts> BridgeNetwork<L, F, P> {
    /// Opens the network's state (`state_dir/bridge-NAME.json`), creating it if absent. A
    /// changed subnet is taken only while no container is attached.
    pub fn open(
        config: BridgeConfig,
        state_dir: impl AsRef<Path>,
        links: L,
        firewall: F,
        host_ports: P,
    ) -> Result<Self, NetError> {
        config.validate()?;
        let state_path = state_dir
            .as_ref()
            .join(format!("bridge-{}.json", config.bridge));
        let fresh = State::new(&config)?;
        let state = match load_state(&state_path)? {
            None => fresh,
            Some(mut old)
                if old.ipam.subnet() == config.subnet && old.ipam.gateway() == config.gateway() =>
            {
                old.repair();
                old
            }
            Some(old) if old.attachments.is_empty() => fresh,
            Some(old) => {
                return Err(NetError::InvalidConfig(format!(
                    "{} containers are attached to {} on {}; detach them before changing its subnet to {}",
                    old.attachments.len(),
                    config.bridge,
                    old.ipam.subnet(),
                    config.subnet
                )));
            }
        };
        Ok(BridgeNetwork {
            config,
            links,
            firewall,
            host_ports,
            state_path,
            inner: tokio::sync::Mutex::new(Inner {
                state,
                reservations: HashMap::new(),
                ensured: false,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// Where the state file is.
    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    /// The attachment of a container, if it is attached.
    pub async fn attachment(&self, container_id: &str) -> Option<Attachment> {
        self.inner
            .lock()
            .await
            .state
            .attachments
            .get(container_id)
            .cloned()
    }

    /// Every attachment, by container id.
    pub async fn attachments(&self) -> Vec<Attachment> {
        self.inner
            .lock()
            .await
            .state
            .attachments
            .values()
            .cloned()
            .collect()
    }

    /// The nftables table the network wants, as generated from its state.
    pub async fn desired_table(&self) -> TableRuleset {
        self.table(&self.inner.lock().await.state)
    }

    /// Creates the bridge (idempotent), gives it the gateway address, turns on forwarding and
    /// `route_localnet` on it, and installs the nftables table.
    pub async fn ensure(&self) -> Result<(), NetError> {
        let mut inner = self.inner.lock().await;
        self.ensure_locked(&mut inner).await
    }

    async fn ensure_locked(&self, inner: &mut Inner) -> Result<(), NetError> {
        self.ensure_bridge().await?;
        self.firewall.apply_table(&self.table(&inner.state)).await?;
        self.reserve_missing(inner);
        inner.ensured = true;
        Ok(())
    }

    async fn ensure_bridge(&self) -> Result<(), NetError> {
        let name = &self.config.bridge;
        match self.links.get(name).await? {
            None => {
                tracing::info!(bridge = %name, subnet = %self.config.subnet, "creating bridge");
                self.links.add_bridge(name).await?;
            }
            Some(link) if link.kind.as_deref() != Some("bridge") => {
                return Err(NetError::InvalidConfig(format!(
                    "a link called {name} exists and is not a bridge"
                )));
            }
            Some(_) => {}
        }
        let gateway = Ipv4Net::new(self.config.gateway(), self.config.subnet.prefix_len())
            .expect("prefix length of a valid subnet");
        self.links.add_address(name, gateway).await?;
        self.links.set_up(name).await?;
        self.links.set_sysctl("net/ipv4/ip_forward", "1").await?;
        // Lets the output-hook DNAT of 127.0.0.1:PORT leave through the bridge; the table
        // masquerades 127.0.0.0/8 sources there and drops 127.0.0.0/8 destinations arriving on
        // it.
        self.links
            .set_sysctl(&format!("net/ipv4/conf/{name}/route_localnet"), "1")
            .await?;
        Ok(())
    }

    fn table(&self, state: &State) -> TableRuleset {
        bridge_table(
            &self.config.table,
            &self.config.bridge,
            self.config.subnet,
            state.attachments.values().flat_map(|a| {
                a.ports.iter().map(|port| PublishedRule {
                    container_id: &a.container_id,
                    container_ip: a.ip,
                    port: *port,
                })
            }),
        )
    }

    /// Holds the published ports of attachments that hold none (after a restart).
    fn reserve_missing(&self, inner: &mut Inner) {
        for (id, a) in &inner.state.attachments {
            if inner.reservations.contains_key(id) {
                continue;
            }
            let mut held = Vec::new();
            for p in &a.ports {
                match self.host_ports.reserve(p.host_ip, p.host_port, p.protocol) {
                    Ok(r) => held.push(r),
                    Err(e) => {
                        tracing::warn!(container = %id, port = %p, error = %e, "could not hold a published port");
                    }
                }
            }
            inner.reservations.insert(id.clone(), held);
        }
    }

    /// Chooses and holds the host ports of `ports`.
    fn resolve_ports(
        &self,
        state: &State,
        container_id: &str,
        ports: &[PortMapping],
    ) -> Result<(Vec<PublishedPort>, Vec<PortReservation>), NetError> {
        let mut chosen: Vec<PublishedPort> = Vec::with_capacity(ports.len());
        let mut held = Vec::with_capacity(ports.len());
        let mut rng = rand::rng();
        for m in ports {
            let ip = m.host_ip_or_any();
            let publisher = |port: u16, chosen: &[PublishedPort]| -> Option<String> {
                state
                    .publisher_of(ip, port, m.protocol)
                    .map(str::to_owned)
                    .or_else(|| {
                        chosen
                            .iter()
                            .any(|p| p.overlaps(ip, port, m.protocol))
                            .then(|| container_id.to_owned())
                    })
            };
            let port = match m.host_port {
                Some(port) => {
                    if let Some(container) = publisher(port, &chosen) {
                        return Err(NetError::PortPublished {
                            port,
                            protocol: m.protocol,
                            container,
                        });
                    }
                    held.push(self.host_ports.reserve(ip, port, m.protocol)?);
                    port
                }
                None => {
                    let range = &self.config.ephemeral_ports;
                    let found = choose_port(range, &mut rng, |port| {
                        if publisher(port, &chosen).is_some() {
                            return Ok(None);
                        }
                        match self.host_ports.reserve(ip, port, m.protocol) {
                            Ok(r) => Ok(Some(r)),
                            Err(NetError::PortInUse { .. }) => Ok(None),
                            Err(e) => Err(e),
                        }
                    })?;
                    let (port, r) = found.ok_or(NetError::PortsExhausted {
                        first: *range.start(),
                        last: *range.end(),
                        protocol: m.protocol,
                    })?;
                    held.push(r);
                    port
                }
            };
            chosen.push(PublishedPort {
                host_ip: ip,
                host_port: port,
                container_port: m.container_port,
                protocol: m.protocol,
            });
        }
        Ok((chosen, held))
    }

    /// Attaches a container: gives it an address, a veth pair whose host end is a port of the
    /// bridge and whose other end is its `eth0` (address, default route via the gateway, `lo`
    /// up), and publishes its ports. On failure nothing of it is left behind.
    pub async fn attach(
        &self,
        container_id: &str,
        netns: &Netns,
        ports: &[PortMapping],
    ) -> Result<Attachment, NetError> {
        if container_id.is_empty() {
            return Err(NetError::InvalidConfig("a container id is required".into()));
        }
        let mut inner = self.inner.lock().await;
        if inner.state.attachments.contains_key(container_id) {
            return Err(NetError::AlreadyAttached(container_id.to_owned()));
        }
        if !inner.ensured {
            self.ensure_locked(&mut inner).await?;
        }
        let (published, reservations) = self.resolve_ports(&inner.state, container_id, ports)?;

        let mut state = inner.state.clone();
        let ip = state.ipam.allocate(container_id)?;
        let (host_veth, peer) = (0u32..)
            .map(|salt| veth_names(container_id, salt))
            .find(|(host, _)| !state.attachments.values().any(|a| &a.host_veth == host))
            .expect("some salt gives a free name");
        let attachment = Attachment {
            container_id: container_id.to_owned(),
            ip,
            prefix_len: self.config.subnet.prefix_len(),
            gateway: self.config.gateway(),
            mac: MacAddr::from_ipv4(ip),
            host_veth,
            ports: published,
        };
        state
            .attachments
            .insert(container_id.to_owned(), attachment.clone());
        // Recorded before the kernel is touched: a crash from here on leaves a record that
        // reconcile uses to clean up.
        save_state(&self.state_path, &state)?;

        let wired = async {
            self.plumb(&attachment, &peer, netns).await?;
            self.firewall.apply_table(&self.table(&state)).await
        }
        .await;
        if let Err(error) = wired {
            tracing::warn!(container = %container_id, %error, "attach failed; undoing it");
            if let Err(e) = self.links.delete(&attachment.host_veth).await {
                tracing::warn!(link = %attachment.host_veth, error = %e, "could not delete the veth of a failed attach");
            }
            if let Err(e) = self.firewall.apply_table(&self.table(&inner.state)).await {
                tracing::warn!(error = %e, "could not restore the nftables table after a failed attach");
            }
            if let Err(e) = save_state(&self.state_path, &inner.state) {
                tracing::warn!(error = %e, "could not restore the state file after a failed attach");
            }
            return Err(error);
        }
        inner.state = state;
        inner
            .reservations
            .insert(container_id.to_owned(), reservations);
        tracing::info!(
            container = %container_id,
            ip = %attachment.ip,
            veth = %attachment.host_veth,
            ports = attachment.ports.len(),
            "container attached"
        );
        Ok(attachment)
    }

    async fn plumb(&self, a: &Attachment, peer: &str, netns: &Netns) -> Result<(), NetError> {
        let host = a.host_veth.as_str();
        // A leftover of a crashed attempt with the same name would make the add fail.
        self.links.delete(host).await?;
        self.links.delete(peer).await?;
        self.links.add_veth(host, peer).await?;
        self.links.set_mtu(host, self.config.mtu).await?;
        self.links.set_mtu(peer, self.config.mtu).await?;
        self.links.set_controller(host, &self.config.bridge).await?;
        // Lets a container reach its own published port through the host (hairpin NAT).
        self.links.set_hairpin(host, true).await?;
        self.links.set_up(host).await?;
        self.links.move_to_netns(peer, netns).await?;
        let inside = self.links.in_netns(netns).await?;
        inside.rename(peer, CONTAINER_IFNAME).await?;
        inside.set_mac(CONTAINER_IFNAME, a.mac).await?;
        let addr = Ipv4Net::new(a.ip, a.prefix_len).expect("prefix length of a valid subnet");
        inside.add_address(CONTAINER_IFNAME, addr).await?;
        inside.set_up(CONTAINER_IFNAME).await?;
        inside.set_up("lo").await?;
        inside.set_default_route(a.gateway).await?;
        Ok(())
    }

    /// Detaches a container: deletes its veth pair, frees its address and unpublishes its
    /// ports. Returns its attachment, or `None` if it was not attached.
    pub async fn detach(&self, container_id: &str) -> Result<Option<Attachment>, NetError> {
        let mut inner = self.inner.lock().await;
        let Some(attachment) = inner.state.attachments.get(container_id).cloned() else {
            return Ok(None);
        };
        let mut state = inner.state.clone();
        state.attachments.remove(container_id);
        state.ipam.release_owner(container_id);
        self.links.delete(&attachment.host_veth).await?;
        self.firewall.apply_table(&self.table(&state)).await?;
        save_state(&self.state_path, &state)?;
        inner.state = state;
        inner.reservations.remove(container_id);
        // After the rules are gone, so no new flow can be tracked towards the old address.
        if let Err(error) = self.firewall.forget_connections(attachment.ip).await {
            tracing::warn!(container = %container_id, %error, "stale connections remain tracked");
        }
        tracing::info!(container = %container_id, ip = %attachment.ip, "container detached");
        Ok(Some(attachment))
    }

    /// After a daemon restart: keeps the attachments of `live` containers, adopts those the
    /// daemon supplies and this network lost track of, removes the veths, addresses and rules
    /// of every other container, and deletes stray veths on the bridge. Ensures the bridge and
    /// table as [`ensure`](Self::ensure) does. Running it twice changes nothing.
    pub async fn reconcile(
        &self,
        live: &[ContainerAttachmentRecord],
    ) -> Result<ReconcileReport, NetError> {
        let mut inner = self.inner.lock().await;
        self.ensure_bridge().await?;
        let bridge_index = self
            .links
            .get(&self.config.bridge)
            .await?
            .ok_or_else(|| NetError::NoSuchLink(self.config.bridge.clone()))?
            .index;
        let on_bridge: HashSet<String> = self
            .links
            .list()
            .await?
            .into_iter()
            .filter(|l| l.controller == Some(bridge_index))
            .map(|l| l.name)
            .collect();
        let live_ids: HashSet<&str> = live.iter().map(|r| r.container_id.as_str()).collect();
        let mut report = ReconcileReport::default();
        let mut state = inner.state.clone();

        let recorded = inner.state.attachments.clone();
        for (id, a) in &recorded {
            let alive = live_ids.contains(id.as_str());
            if alive && on_bridge.contains(&a.host_veth) {
                report.kept.push(id.clone());
                continue;
            }
            if self.links.delete(&a.host_veth).await? {
                report.deleted_links.push(a.host_veth.clone());
            }
            state.attachments.remove(id);
            state.ipam.release_owner(id);
            inner.reservations.remove(id);
            if alive {
                report.lost.push(id.clone());
            } else {
                report.removed.push(id.clone());
            }
        }

        for record in live {
            let id = record.container_id.as_str();
            if state.attachments.contains_key(id) || report.lost.iter().any(|l| l == id) {
                continue;
            }
            let Some(a) = &record.attachment else {
                continue;
            };
            let ports_free = a.ports.iter().all(|p| {
                state
                    .publisher_of(p.host_ip, p.host_port, p.protocol)
                    .is_none()
            });
            let adoptable = a.container_id == id
                && on_bridge.contains(&a.host_veth)
                && !state
                    .attachments
                    .values()
                    .any(|o| o.host_veth == a.host_veth)
                && ports_free
                && state.ipam.allocate_specific(a.ip, id).is_ok();
            if adoptable {
                state.attachments.insert(id.to_owned(), a.clone());
                report.adopted.push(id.to_owned());
            } else {
                report.lost.push(id.to_owned());
            }
        }

        let keep: HashSet<&str> = state
            .attachments
            .values()
            .map(|a| a.host_veth.as_str())
            .collect();
        for name in &on_bridge {
            if !keep.contains(name.as_str()) && self.links.delete(name).await? {
                report.deleted_links.push(name.clone());
            }
        }
        state.repair();

        self.firewall.apply_table(&self.table(&state)).await?;
        save_state(&self.state_path, &state)?;
        inner.state = state;
        self.reserve_missing(&mut inner);
        inner.ensured = true;
        tracing::info!(
            kept = report.kept.len(),
            adopted = report.adopted.len(),
            removed = report.removed.len(),
            lost = report.lost.len(),
            deleted_links = report.deleted_links.len(),
            "bridge network reconciled"
        );
        Ok(report)
    }

    /// Removes everything the network created: every container's veth, the bridge, the
    /// nftables table and the state file. Attached containers lose their network.
    pub async fn teardown(&self) -> Result<(), NetError> {
        let mut inner = self.inner.lock().await;
        for a in inner.state.attachments.values() {
            self.links.delete(&a.host_veth).await?;
        }
        self.links.delete(&self.config.bridge).await?;
        self.firewall
            .delete_table(nftables::types::NfFamily::IP, &self.config.table)
            .await?;
        match std::fs::remove_file(&self.state_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NetError::State {
                    path: self.state_path.clone(),
                    source,
                });
            }
        }
        inner.state = State::new(&self.config)?;
        inner.reservations.clear();
        inner.ensured = false;
        tracing::info!(bridge = %self.config.bridge, "bridge network torn down");
        Ok(())
    }
}

#[cfg(test)]
#[path = "bridge_tests.rs"]
mod tests;
