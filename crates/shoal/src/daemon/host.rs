//! Facts about this host that a node reports: hostname, platform, CPUs, memory, and the
//! address to advertise when the user gives none.

use std::net::IpAddr;

use shoal_api::v1::{NodeDescription, Platform, Resources};

pub(crate) fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

pub(crate) fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

pub(crate) fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

pub(crate) fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64",
        "aarch64" => "aarch64",
        other => other,
    }
}

pub(crate) fn description() -> NodeDescription {
    NodeDescription {
        hostname: hostname(),
        platform: Some(Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture().to_owned(),
        }),
        resources: Some(Resources {
            nano_cpus: i64::from(cpus()) * 1_000_000_000,
            memory_bytes: memory_bytes() as i64,
        }),
        engine_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// The IPv4 address of the interface that carries the default route, read from
/// `/proc/net/route` and the interface's addresses (no packet is sent).
pub(crate) fn default_route_address() -> Option<IpAddr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let interface = routes.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 2 && fields[1] == "00000000").then(|| fields[0].to_owned())
    })?;
    let addresses = nix::ifaddrs::getifaddrs().ok()?;
    for entry in addresses {
        if entry.interface_name != interface {
            continue;
        }
        if let Some(v4) = entry.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            let ip = v4.ip();
            if !ip.is_loopback() {
                return Some(IpAddr::V4(ip));
            }
        }
    }
    None
}
