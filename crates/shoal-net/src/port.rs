//! Published ports: `-p [HOSTIP:][HOSTPORT:]CONTAINERPORT[/PROTO]` parsing, the ports actually
//! published, conflict checks and the random choice of `-P`-style host ports.

use std::fmt;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::NetError;

/// Default range for randomly chosen host ports: Linux's default `ip_local_port_range`, which is
/// also what Docker uses.
pub const DEFAULT_EPHEMERAL_PORTS: RangeInclusive<u16> = 32768..=60999;

/// A transport protocol a port can be published for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The name used in port specs and nftables rules.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(format!("unknown protocol {s:?} (expected tcp or udp)")),
        }
    }
}

/// A port the user asked to publish (`-p`), or an exposed port published at random (`-P`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address to accept on; `None` means every address of the host.
    pub host_ip: Option<Ipv4Addr>,
    /// The host port; `None` means one chosen at random from the ephemeral range.
    pub host_port: Option<u16>,
    /// The port inside the container.
    pub container_port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

impl PortMapping {
    /// A mapping of `container_port` to a random host port on every host address (`-P`).
    pub fn random(container_port: u16, protocol: Protocol) -> Self {
        PortMapping {
            host_ip: None,
            host_port: None,
            container_port,
            protocol,
        }
    }

    /// Parses Docker's `-p` syntax: `CPORT`, `HPORT:CPORT`, `HOSTIP:HPORT:CPORT` and
    /// `HOSTIP::CPORT`, each optionally followed by `/tcp` or `/udp`.
    pub fn parse(spec: &str) -> Result<Self, NetError> {
        let bad = |reason: String| NetError::InvalidPortMapping {
            spec: spec.to_owned(),
            reason,
        };
        let trimmed = spec.trim();
        if trimmed.is_empty() {
            return Err(bad("it is empty".into()));
        }
        let (ports, protocol) = match trimmed.rsplit_once('/') {
            Some((ports, proto)) => (ports, proto.parse::<Protocol>().map_err(bad)?),
            None => (trimmed, Protocol::Tcp),
        };
        if ports.starts_with('[') || ports.matches(':').count() > 2 {
            return Err(bad("ipv6 host addresses are not supported".into()));
        }
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_ip, host_port, container_port) = match parts.as_slice() {
            [c] => (None, None, *c),
            [h, c] => (None, Some(*h), *c),
            [ip, h, c] => (Some(*ip), Some(*h), *c),
            _ => unreachable!("at most two colons were checked above"),
        };
        let host_ip = match host_ip {
            None | Some("") => None,
            Some(ip) => Some(parse_host_ip(ip).map_err(bad)?),
        };
        let host_port = match host_port {
            None | Some("") if host_ip.is_some() || parts.len() == 1 => None,
            None | Some("") => return Err(bad("the host port is empty".into())),
            Some(p) => Some(parse_port(p, "host").map_err(bad)?),
        };
        let container_port = parse_port(container_port, "container").map_err(bad)?;
        Ok(PortMapping {
            host_ip,
            host_port,
            container_port,
            protocol,
        })
    }

    /// The address rules match on: the host address, or `0.0.0.0` for every address.
    pub fn host_ip_or_any(&self) -> Ipv4Addr {
        self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)
    }
}

impl FromStr for PortMapping {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PortMapping::parse(s)
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.host_ip, self.host_port) {
            (Some(ip), Some(port)) => write!(f, "{ip}:{port}:")?,
            (Some(ip), None) => write!(f, "{ip}::")?,
            (None, Some(port)) => write!(f, "{port}:")?,
            (None, None) => {}
        }
        write!(f, "{}/{}", self.container_port, self.protocol)
    }
}

fn parse_host_ip(text: &str) -> Result<Ipv4Addr, String> {
    if text.contains(':') || text.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err("ipv6 host addresses are not supported".into());
    }
    text.parse::<Ipv4Addr>()
        .map_err(|_| format!("{text:?} is not an ipv4 address"))
}

fn parse_port(text: &str, which: &str) -> Result<u16, String> {
    if text.contains('-') {
        return Err(format!("{which} port ranges are not supported ({text:?})"));
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{which} port {text:?} is not a number"));
    }
    match text.parse::<u32>() {
        Ok(0) => Err(format!("{which} port must be between 1 and 65535, not 0")),
        Ok(n) if n <= u32::from(u16::MAX) => Ok(n as u16),
        _ => Err(format!(
            "{which} port must be between 1 and 65535, not {text}"
        )),
    }
}

/// A port as actually published: the host port is always known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublishedPort {
    /// The host address accepted on; `0.0.0.0` means every address of the host.
    pub host_ip: Ipv4Addr,
    /// The host port.
    pub host_port: u16,
    /// The port inside the container.
    pub container_port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

impl PublishedPort {
    /// Whether both would accept the same packets (same protocol and port, and the same host
    /// address or either on every address).
    pub fn overlaps(&self, host_ip: Ipv4Addr, host_port: u16, protocol: Protocol) -> bool {
        self.protocol == protocol
            && self.host_port == host_port
            && (self.host_ip == host_ip
                || self.host_ip.is_unspecified()
                || host_ip.is_unspecified())
    }
}

impl fmt::Display for PublishedPort {
    /// Docker's `docker ps` form: `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}->{}/{}",
            self.host_ip, self.host_port, self.container_port, self.protocol
        )
    }
}

/// Picks a host port from `range` for which `take` succeeds: starts at a random port and walks
/// the range once (wrapping), so it ends after at most `range.len()` tries.
pub(crate) fn choose_port<T, E>(
    range: &RangeInclusive<u16>,
    rng: &mut impl rand::Rng,
    mut take: impl FnMut(u16) -> Result<Option<T>, E>,
) -> Result<Option<(u16, T)>, E> {
    let (first, last) = (u32::from(*range.start()), u32::from(*range.end()));
    if first > last {
        return Ok(None);
    }
    let len = last - first + 1;
    let start = rng.random_range(0..len);
    for step in 0..len {
        let port = (first + (start + step) % len) as u16;
        if let Some(taken) = take(port)? {
            return Ok(Some((port, taken)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(spec: &str) -> PortMapping {
        PortMapping::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    fn err(spec: &str) -> String {
        PortMapping::parse(spec)
            .map(|m| panic!("{spec} parsed as {m:?}"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_docker_forms() {
        assert_eq!(
            ok("8080:80"),
            PortMapping {
                host_ip: None,
                host_port: Some(8080),
                container_port: 80,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(ok("8080:80/tcp"), ok("8080:80"));
        let udp = ok("5353:53/udp");
        assert_eq!(udp.protocol, Protocol::Udp);
        assert_eq!(udp.host_port, Some(5353));
        let with_ip = ok("127.0.0.1:8080:80");
        assert_eq!(with_ip.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(with_ip.host_port, Some(8080));
        let random_on_ip = ok("127.0.0.1::80/UDP");
        assert_eq!(random_on_ip.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(random_on_ip.host_port, None);
        assert_eq!(random_on_ip.protocol, Protocol::Udp);
        assert_eq!(ok("80"), PortMapping::random(80, Protocol::Tcp));
        assert_eq!(ok("65535:1"), ok(" 65535:1 "));
    }

    #[test]
    fn displays_in_parseable_form() {
        for spec in [
            "8080:80/tcp",
            "127.0.0.1:8080:80/udp",
            "10.0.0.1::80/tcp",
            "80/tcp",
        ] {
            assert_eq!(ok(spec).to_string(), spec);
            assert_eq!(ok(&ok(spec).to_string()), ok(spec));
        }
    }

    #[test]
    fn refuses_bad_input_clearly() {
        assert!(err("0:80").contains("host port must be between 1 and 65535, not 0"));
        assert!(err("8080:0").contains("container port must be between 1 and 65535, not 0"));
        assert!(err("65536:80").contains("not 65536"));
        assert!(err("8080:99999999999").contains("container port must be between"));
        assert!(err("8080:80/sctp").contains("unknown protocol \"sctp\""));
        assert!(err("8080:80/").contains("unknown protocol"));
        assert!(err("300.1.1.1:8080:80").contains("is not an ipv4 address"));
        assert!(err("localhost:8080:80").contains("is not an ipv4 address"));
        assert!(err("[::1]:8080:80").contains("ipv6"));
        assert!(err("::1:8080:80").contains("ipv6"));
        assert!(err("http:80").contains("host port \"http\" is not a number"));
        assert!(err("8080-8081:80").contains("port ranges are not supported"));
        assert!(err(":80").contains("host port is empty"));
        assert!(err("").contains("empty"));
        assert!(err("-1:80").contains("ranges are not supported"));
        assert!(err("8080:").contains("container port \"\" is not a number"));
        assert!(err("8080:x").starts_with("invalid port mapping \"8080:x\": "));
    }

    #[test]
    fn overlap_rules() {
        let any = PublishedPort {
            host_ip: Ipv4Addr::UNSPECIFIED,
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
        };
        let lo = PublishedPort {
            host_ip: Ipv4Addr::LOCALHOST,
            ..any
        };
        assert!(any.overlaps(Ipv4Addr::LOCALHOST, 8080, Protocol::Tcp));
        assert!(lo.overlaps(Ipv4Addr::UNSPECIFIED, 8080, Protocol::Tcp));
        assert!(!lo.overlaps(Ipv4Addr::new(10, 0, 0, 1), 8080, Protocol::Tcp));
        assert!(!any.overlaps(Ipv4Addr::LOCALHOST, 8080, Protocol::Udp));
        assert!(!any.overlaps(Ipv4Addr::LOCALHOST, 8081, Protocol::Tcp));
        assert_eq!(any.to_string(), "0.0.0.0:8080->80/tcp");
    }

    #[test]
    fn random_choice_skips_taken_ports_and_ends() {
        let mut rng = rand::rng();
        let range = 40000..=40009;
        for _ in 0..50 {
            let (port, ()) = choose_port(&range, &mut rng, |p| {
                Ok::<_, ()>((p == 40007).then_some(()))
            })
            .unwrap()
            .unwrap();
            assert_eq!(port, 40007);
        }
        let mut tries = 0;
        let none = choose_port(&range, &mut rng, |_| {
            tries += 1;
            Ok::<Option<()>, ()>(None)
        })
        .unwrap();
        assert!(none.is_none());
        assert_eq!(tries, 10);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let (port, ()) = choose_port(&range, &mut rng, |_| Ok::<_, ()>(Some(())))
                .unwrap()
                .unwrap();
            assert!(range.contains(&port));
            seen.insert(port);
        }
        assert!(seen.len() > 5, "random start points: {seen:?}");
        let full = 1..=65535;
        let (port, ()) = choose_port(&full, &mut rng, |p| Ok::<_, ()>((p == 65535).then_some(())))
            .unwrap()
            .unwrap();
        assert_eq!(port, 65535);
    }
}
