//! `format/container.rs`: the cells of `ps`, `port` and `image ls` as Docker prints them —
//! short IDs, `…`-truncated text, `Up 5 seconds` statuses and `0.0.0.0:8080->80/tcp` ports.

use std::collections::HashMap;

use shoal_api::v1::{ContainerState, PublishedPort};
use time::OffsetDateTime;

use super::time::elapsed;

/// Docker's `stringid.TruncateID`: the first 12 characters, without any `sha256:` prefix.
pub(crate) fn short_id(id: &str) -> String {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    id.chars().take(12).collect()
}

/// Docker's `Ellipsis`: at most `max` characters, the last one `…` when cut.
pub(crate) fn ellipsis(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The COMMAND cell: the command line, cut to 20 characters unless `full`, then quoted.
pub(crate) fn command_cell(command: &[String], full: bool) -> String {
    let line = command.join(" ");
    let line = if full { line } else { ellipsis(&line, 20) };
    format!("{line:?}")
}

/// Go's `net.JoinHostPort`: IPv6 addresses in brackets.
pub(crate) fn join_host_port(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Docker's `State.String()`: `Up 5 seconds`, `Up 2 minutes (Paused)`, `Exited (0) 3 minutes
/// ago`, `Restarting (1) 2 seconds ago`, `Created`, `Dead`.
pub(crate) fn status_cell(state: Option<&ContainerState>, now: OffsetDateTime) -> String {
    let Some(state) = state else {
        return "Created".to_owned();
    };
    let since_start = || elapsed(state.started_at.as_ref(), now);
    let since_finish = || elapsed(state.finished_at.as_ref(), now);
    match state.status.as_str() {
        "running" => format!("Up {}", since_start()),
        "paused" => format!("Up {} (Paused)", since_start()),
        "restarting" => format!("Restarting ({}) {} ago", state.exit_code, since_finish()),
        "exited" if state.finished_at.is_none() && state.started_at.is_none() => {
            "Created".to_owned()
        }
        "exited" if state.finished_at.is_none() => format!("Exited ({})", state.exit_code),
        "exited" => format!("Exited ({}) {} ago", state.exit_code, since_finish()),
        "created" | "" => "Created".to_owned(),
        "dead" => "Dead".to_owned(),
        "removing" => "Removal In Progress".to_owned(),
        other => {
            let mut chars = other.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect())
                .unwrap_or_default()
        }
    }
}

/// Whether a state counts as running for `ps` without `-a` (Docker lists paused and
/// restarting containers too).
pub(crate) fn is_running(state: Option<&ContainerState>) -> bool {
    state.is_some_and(|s| matches!(s.status.as_str(), "running" | "paused" | "restarting"))
}

/// A published port as Docker's API reports it: no IP for a port that is exposed only.
struct Port<'a> {
    ip: &'a str,
    private: u32,
    public: u32,
    proto: &'a str,
}

/// Docker's `DisplayablePorts`: same-number mappings grouped into ranges per address
/// (`0.0.0.0:8000-8001->8000-8001/tcp`), others listed one by one after them
/// (`0.0.0.0:8080->80/tcp`), exposed-only ports bare (`80/tcp`).
pub(crate) fn ports_cell(published: &[PublishedPort]) -> String {
    let mut ports: Vec<Port<'_>> = published
        .iter()
        .map(|p| Port {
            // A host port with no address is bound on every IPv4 address.
            ip: match (p.host_port, p.host_ip.as_str()) {
                (0, _) => "",
                (_, "") => "0.0.0.0",
                (_, ip) => ip,
            },
            private: p.container_port,
            public: p.host_port,
            proto: if p.protocol.is_empty() {
                "tcp"
            } else {
                p.protocol.as_str()
            },
        })
        .collect();
    ports.sort_by(|a, b| {
        (a.private, a.ip, a.public, a.proto).cmp(&(b.private, b.ip, b.public, b.proto))
    });
    let mut groups: HashMap<String, (u32, u32)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut result = Vec::new();
    let mut mappings = Vec::new();
    for port in &ports {
        let current = port.private;
        let key = if port.ip.is_empty() {
            port.proto.to_owned()
        } else {
            if port.public != current {
                let host = join_host_port(port.ip, &port.public.to_string());
                mappings.push(format!("{host}->{}/{}", port.private, port.proto));
                continue;
            }
            format!("{}/{}", port.ip, port.proto)
        };
        match groups.get_mut(&key) {
            None => {
                groups.insert(key.clone(), (current, current));
                order.push(key);
            }
            Some(group) if current == group.1 + 1 => group.1 = current,
            Some(group) => {
                result.push(form_group(&key, group.0, group.1));
                *group = (current, current);
            }
        }
    }
    for key in &order {
        let (first, last) = groups[key];
        result.push(form_group(key, first, last));
    }
    result.extend(mappings);
    result.join(", ")
}

fn form_group(key: &str, first: u32, last: u32) -> String {
    let (ip, proto) = match key.rsplit_once('/') {
        Some((ip, proto)) => (ip, proto),
        None => ("", key),
    };
    let mut group = first.to_string();
    if first != last {
        group = format!("{group}-{last}");
    }
    if !ip.is_empty() {
        group = format!("{}->{group}", join_host_port(ip, &group));
    }
    format!("{group}/{proto}")
}

/// `shoal port` lines, sorted: `80/tcp -> 0.0.0.0:8080`, or only the host side when one
/// container port was asked for.
pub(crate) fn port_lines(published: &[PublishedPort], only: Option<(u32, &str)>) -> Vec<String> {
    let mut ports: Vec<&PublishedPort> = published.iter().filter(|p| p.host_port != 0).collect();
    ports.sort_by(|a, b| {
        (a.container_port, &a.protocol, &a.host_ip, a.host_port).cmp(&(
            b.container_port,
            &b.protocol,
            &b.host_ip,
            b.host_port,
        ))
    });
    ports
        .into_iter()
        .filter_map(|p| {
            let proto = if p.protocol.is_empty() {
                "tcp"
            } else {
                p.protocol.as_str()
            };
            let ip = if p.host_ip.is_empty() {
                "0.0.0.0"
            } else {
                p.host_ip.as_str()
            };
            let host = join_host_port(ip, &p.host_port.to_string());
            match only {
                None => Some(format!("{}/{proto} -> {host}", p.container_port)),
                Some((port, want)) if port == p.container_port && want == proto => Some(host),
                Some(_) => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;

    use super::*;

    fn port(ip: &str, host: u32, container: u32, proto: &str) -> PublishedPort {
        PublishedPort {
            host_ip: ip.into(),
            host_port: host,
            container_port: container,
            protocol: proto.into(),
        }
    }

    #[test]
    fn ids_and_truncation() {
        assert_eq!(short_id("sha256:0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(ellipsis("short", 20), "short");
        assert_eq!(ellipsis("exactly twenty chars", 20), "exactly twenty chars");
        assert_eq!(ellipsis("nginx -g daemon off;", 20), "nginx -g daemon off;");
        assert_eq!(
            ellipsis("nginx -g 'daemon off;'", 20),
            "nginx -g 'daemon of…"
        );
        let cmd = [
            "nginx".to_owned(),
            "-g".to_owned(),
            "daemon off;".to_owned(),
        ];
        assert_eq!(command_cell(&cmd, false), "\"nginx -g daemon off;\"");
        let cmd = [
            "sh".to_owned(),
            "-c".to_owned(),
            "echo \"hi there\" && sleep 1000".to_owned(),
        ];
        assert_eq!(command_cell(&cmd, false), "\"sh -c echo \\\"hi ther…\"");
        assert_eq!(
            command_cell(&cmd, true),
            "\"sh -c echo \\\"hi there\\\" && sleep 1000\""
        );
    }

    #[test]
    fn statuses() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let at = |ago: i64| {
            Some(Timestamp {
                seconds: 1_700_000_000 - ago,
                nanos: 0,
            })
        };
        let state = |status: &str, code: i32, started: i64, finished: Option<i64>| ContainerState {
            status: status.into(),
            exit_code: code,
            started_at: at(started),
            finished_at: finished.and_then(at),
            ..Default::default()
        };
        let cell = |s: ContainerState| status_cell(Some(&s), now);
        assert_eq!(cell(state("running", 0, 5, None)), "Up 5 seconds");
        assert_eq!(cell(state("paused", 0, 150, None)), "Up 2 minutes (Paused)");
        assert_eq!(
            cell(state("exited", 0, 600, Some(180))),
            "Exited (0) 3 minutes ago"
        );
        assert_eq!(
            cell(state("exited", 137, 600, Some(7200))),
            "Exited (137) 2 hours ago"
        );
        assert_eq!(
            cell(state("restarting", 1, 60, Some(2))),
            "Restarting (1) 2 seconds ago"
        );
        assert_eq!(
            cell(ContainerState {
                status: "created".into(),
                ..Default::default()
            }),
            "Created"
        );
        assert_eq!(cell(state("dead", 0, 0, None)), "Dead");
        assert_eq!(status_cell(None, now), "Created");
        assert!(is_running(Some(&state("paused", 0, 0, None))));
        assert!(!is_running(Some(&state("exited", 0, 0, None))));
    }

    #[test]
    fn ports_like_docker_ps() {
        assert_eq!(ports_cell(&[]), "");
        assert_eq!(
            ports_cell(&[port("0.0.0.0", 8080, 80, "tcp")]),
            "0.0.0.0:8080->80/tcp"
        );
        assert_eq!(ports_cell(&[port("", 0, 80, "tcp")]), "80/tcp");
        assert_eq!(
            ports_cell(&[port("", 8080, 80, "")]),
            "0.0.0.0:8080->80/tcp"
        );
        assert_eq!(
            ports_cell(&[
                port("0.0.0.0", 8001, 8001, "tcp"),
                port("0.0.0.0", 8000, 8000, "tcp"),
                port("0.0.0.0", 9090, 90, "udp"),
                port("::", 8080, 80, "tcp"),
                port("", 0, 443, "tcp"),
                port("", 0, 444, "tcp"),
                port("", 0, 53, "udp"),
            ]),
            "53/udp, 443-444/tcp, 0.0.0.0:8000-8001->8000-8001/tcp, \
             [::]:8080->80/tcp, 0.0.0.0:9090->90/udp"
        );
    }

    #[test]
    fn port_command_lines() {
        let ports = [
            port("0.0.0.0", 8080, 80, "tcp"),
            port("::", 8080, 80, "tcp"),
            port("", 5353, 53, "udp"),
            port("", 0, 443, "tcp"),
        ];
        assert_eq!(
            port_lines(&ports, None),
            [
                "53/udp -> 0.0.0.0:5353",
                "80/tcp -> 0.0.0.0:8080",
                "80/tcp -> [::]:8080"
            ]
        );
        assert_eq!(
            port_lines(&ports, Some((80, "tcp"))),
            ["0.0.0.0:8080", "[::]:8080"]
        );
        assert!(port_lines(&ports, Some((80, "udp"))).is_empty());
    }
}
