//! `parse/container.rs`: the flag values of `run`/`create`/`exec`/`logs`/`port`/`import` —
//! sizes, CPU counts, published ports, volumes and mounts, restart policies, env files — as
//! Docker spells them, each turned into a wire value or a one-line reason.

use std::net::IpAddr;
use std::path::Path;

use prost_types::Timestamp;
use shoal_api::v1::{MountSpec, PortBinding, RestartPolicySpec, mount_spec};
use time::OffsetDateTime;

/// Docker's `RAMInBytes`: `1073741824`, `512k`, `64m`, `1.5g`, `1g`, `64MB`, `2GiB` — binary
/// units (k = 1024), case-insensitive, an optional `b`/`ib` after the unit.
pub(crate) fn size(text: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("invalid size {text:?}: {why}");
    let expected =
        "expected a number with an optional unit b, k, m, g, t or p, e.g. 64m, 1.5g or 1073741824";
    let number_len = text
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, unit) = text.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || (number.contains('.') && fraction.is_empty()) || fraction.contains('.') {
        return Err(bad(expected));
    }
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let mut letters = unit.as_str();
    let shift = match letters.chars().next() {
        Some(c @ ('k' | 'm' | 'g' | 't' | 'p')) => {
            letters = &letters[1..];
            10 * (1 + "kmgtp".find(c).unwrap_or(0) as u32)
        }
        _ => 0,
    };
    if shift > 0 {
        letters = letters.strip_prefix('i').unwrap_or(letters);
    }
    letters = letters.strip_prefix('b').unwrap_or(letters);
    if !letters.is_empty() {
        return Err(bad(expected));
    }
    let multiplier = 1u128 << shift;
    let too_large = || bad("too large");
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        // Exact decimal arithmetic, truncated like Docker's conversion to an integer.
        let digits = &fraction[..fraction.len().min(18)];
        let numerator: u128 = digits.parse().map_err(|_| too_large())?;
        let denominator = 10u128.pow(digits.len() as u32);
        bytes += numerator.checked_mul(multiplier).ok_or_else(too_large)? / denominator;
    }
    i64::try_from(bytes).map_err(|_| too_large())
}

/// `--memory-swap`: a size, or `-1` for unlimited swap.
pub(crate) fn memory_swap(text: &str) -> Result<i64, String> {
    if text == "-1" {
        return Ok(-1);
    }
    size(text)
}

/// `--cpus 1.5` as nano-CPUs (1.5e9): decimal arithmetic, so no float rounding creeps in.
pub(crate) fn nano_cpus(text: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("invalid number of CPUs {text:?}: {why}");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if text.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    if (whole.is_empty() && fraction.is_empty())
        || !digits_only(whole)
        || !digits_only(fraction)
        || (text.contains('.') && fraction.is_empty())
    {
        return Err(bad("expected a number, e.g. 1.5"));
    }
    let significant = fraction.trim_end_matches('0');
    if significant.len() > 9 {
        return Err(bad("too precise (at most 9 decimal places)"));
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad("too large"))?
    };
    let nanos: i64 = format!("{significant:0<9}").parse().unwrap_or(0);
    whole
        .checked_mul(1_000_000_000)
        .and_then(|w| w.checked_add(nanos))
        .ok_or_else(|| bad("too large"))
}

/// The bindings one `-p` flag asks for (a range gives several).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PortSpec(pub(crate) Vec<PortBinding>);

/// `-p [IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]`, ports or equal-length ranges (`8000-8001:80-81`);
/// an IPv6 address goes in brackets. A missing host port is 0 (the daemon picks one).
pub(crate) fn publish(text: &str) -> Result<PortSpec, String> {
    let bad = |why: &str| format!("invalid port {text:?}: {why}");
    let (addr, protocol) = match text.rsplit_once('/') {
        Some((addr, proto)) => (addr, proto),
        None => (text, "tcp"),
    };
    let protocol = check_protocol(protocol).map_err(|why| bad(&why))?;
    let (ip, rest) = if let Some(bracketed) = addr.strip_prefix('[') {
        let Some((ip, after)) = bracketed.split_once(']') else {
            return Err(bad("missing ']' after the IPv6 address"));
        };
        let Some(rest) = after.strip_prefix(':') else {
            return Err(bad("expected [IP]:HOST_PORT:CONTAINER_PORT"));
        };
        (Some(ip), rest)
    } else {
        match addr.matches(':').count() {
            0 | 1 => (None, addr),
            2 => {
                let (ip, rest) = addr.split_once(':').unwrap_or(("", addr));
                (Some(ip), rest)
            }
            _ => {
                return Err(bad(
                    "expected [IP:][HOST_PORT:]CONTAINER_PORT (put an IPv6 address in brackets)",
                ));
            }
        }
    };
    let host_ip = match ip {
        Some(ip) => {
            let parsed: IpAddr = ip
                .parse()
                .map_err(|_| bad(&format!("{ip:?} is not an IP address")))?;
            parsed.to_string()
        }
        None => String::new(),
    };
    let (host, container) = match rest.split_once(':') {
        Some((host, container)) => (host, container),
        None if ip.is_some() => return Err(bad("expected IP:HOST_PORT:CONTAINER_PORT")),
        None => ("", rest),
    };
    let container = port_range(container).map_err(|why| bad(&why))?;
    let host = if host.is_empty() {
        None
    } else {
        Some(port_range(host).map_err(|why| bad(&why))?)
    };
    let count = container.1 - container.0 + 1;
    if let Some(host) = host
        && host.1 - host.0 + 1 != count
    {
        return Err(bad(
            "the host and container port ranges must be the same length",
        ));
    }
    Ok(PortSpec(
        (0..count)
            .map(|i| PortBinding {
                host_ip: host_ip.clone(),
                host_port: host.map_or(0, |h| h.0 + i),
                container_port: container.0 + i,
                protocol: protocol.clone(),
            })
            .collect(),
    ))
}

fn check_protocol(proto: &str) -> Result<String, String> {
    match proto.to_ascii_lowercase().as_str() {
        p @ ("tcp" | "udp" | "sctp") => Ok(p.to_owned()),
        _ => Err(format!("unknown protocol {proto:?} (use tcp, udp or sctp)")),
    }
}

/// `80` or `8000-8010`, each port 1–65535.
fn port_range(text: &str) -> Result<(u32, u32), String> {
    let port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(u32::from(n)),
        _ => Err(format!("{p:?} is not a port (a number from 1 to 65535)")),
    };
    match text.split_once('-') {
        Some((first, last)) => {
            let (first, last) = (port(first)?, port(last)?);
            if last < first {
                return Err(format!("the range {text:?} ends before it starts"));
            }
            Ok((first, last))
        }
        None => port(text).map(|p| (p, p)),
    }
}

/// `shoal port C 80/udp`: a container port and protocol (tcp unless given).
pub(crate) fn port_and_protocol(text: &str) -> Result<(u32, String), String> {
    let (port, proto) = text.rsplit_once('/').unwrap_or((text, "tcp"));
    let protocol = check_protocol(proto).map_err(|why| format!("invalid port {text:?}: {why}"))?;
    let (first, last) = port_range(port).map_err(|why| format!("invalid port {text:?}: {why}"))?;
    if first != last {
        return Err(format!("invalid port {text:?}: give one port, not a range"));
    }
    Ok((first, protocol))
}

/// `-v [SOURCE:]TARGET[:ro|rw][,nocopy]`: an absolute (or `./`-relative) source is a bind
/// mount, any other source a named volume, no source an anonymous volume.
pub(crate) fn volume(text: &str) -> Result<MountSpec, String> {
    let bad = |why: String| format!("invalid volume {text:?}: {why}");
    let parts: Vec<&str> = text.split(':').collect();
    let is_mode =
        |s: &str| s.is_empty() || s.split(',').all(|o| matches!(o, "ro" | "rw" | "nocopy"));
    let (source, target, mode) = match parts.as_slice() {
        [target] => ("", *target, ""),
        [target, mode] if !mode.starts_with('/') && is_mode(mode) => ("", *target, *mode),
        [source, target] => (*source, *target, ""),
        [source, target, mode] => (*source, *target, *mode),
        _ => return Err(bad("expected [SOURCE:]TARGET[:ro|rw]".to_owned())),
    };
    if !is_mode(mode) {
        return Err(bad(format!(
            "unsupported option {mode:?} (use ro, rw or nocopy)"
        )));
    }
    if !target.starts_with('/') {
        return Err(bad(format!(
            "the container path {target:?} must be absolute"
        )));
    }
    let read_only = mode.split(',').any(|o| o == "ro");
    let volume_nocopy = mode.split(',').any(|o| o == "nocopy");
    let (kind, source) = if source.is_empty() {
        (mount_spec::Kind::Volume, String::new())
    } else if source.starts_with('/') {
        (mount_spec::Kind::Bind, source.to_owned())
    } else if source.starts_with('.') {
        let absolute = std::path::absolute(Path::new(source))
            .map_err(|err| bad(format!("cannot resolve {source:?}: {err}")))?;
        (
            mount_spec::Kind::Bind,
            absolute.to_string_lossy().into_owned(),
        )
    } else if shoal_api::validate::volume_name(source).is_ok() {
        (mount_spec::Kind::Volume, source.to_owned())
    } else {
        return Err(bad(format!(
            "{source:?} is not a valid volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+); \
             for a host directory, give an absolute path"
        )));
    };
    if volume_nocopy && kind == mount_spec::Kind::Bind {
        return Err(bad(
            "nocopy applies only to volumes, not to bind mounts".to_owned()
        ));
    }
    Ok(MountSpec {
        kind: kind as i32,
        create_source: kind == mount_spec::Kind::Bind,
        source,
        target: target.to_owned(),
        read_only,
        volume_nocopy,
        ..Default::default()
    })
}

/// `--mount type=volume|bind|tmpfs,source=…,target=…,readonly[=true|false],tmpfs-size=…`.
pub(crate) fn mount(text: &str) -> Result<MountSpec, String> {
    let bad = |why: String| format!("invalid mount {text:?}: {why}");
    let mut kind = mount_spec::Kind::Volume;
    let mut source = None;
    let mut target = None;
    let mut read_only = false;
    let mut tmpfs_size = None;
    let mut volume_nocopy = false;
    for field in text.split(',') {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (field.trim(), None),
        };
        let value_of = |key: &str| {
            value
                .filter(|v| !v.is_empty())
                .ok_or_else(|| bad(format!("{key} needs a value")))
        };
        match key.to_ascii_lowercase().as_str() {
            "type" => {
                kind = match value_of(key)? {
                    "volume" => mount_spec::Kind::Volume,
                    "bind" => mount_spec::Kind::Bind,
                    "tmpfs" => mount_spec::Kind::Tmpfs,
                    other => {
                        return Err(bad(format!(
                            "unknown type {other:?} (use volume, bind or tmpfs)"
                        )));
                    }
                }
            }
            "source" | "src" => source = Some(value_of(key)?.to_owned()),
            "target" | "destination" | "dst" => target = Some(value_of(key)?.to_owned()),
            "readonly" | "ro" => {
                read_only = match value.map(str::to_ascii_lowercase).as_deref() {
                    None | Some("true" | "1") => true,
                    Some("false" | "0") => false,
                    Some(other) => {
                        return Err(bad(format!("{key} must be true or false, not {other:?}")));
                    }
                }
            }
            "volume-nocopy" => {
                volume_nocopy = match value.map(str::to_ascii_lowercase).as_deref() {
                    None | Some("true" | "1") => true,
                    Some("false" | "0") => false,
                    Some(other) => {
                        return Err(bad(format!("{key} must be true or false, not {other:?}")));
                    }
                }
            }
            "tmpfs-size" => {
                let bytes = size(value_of(key)?).map_err(bad)?;
                tmpfs_size = Some(u64::try_from(bytes).unwrap_or(0));
            }
            "" => return Err(bad("empty field".to_owned())),
            other => {
                return Err(bad(format!(
                    "unsupported option {other:?} (use type, source, target, readonly, volume-nocopy or tmpfs-size)"
                )));
            }
        }
    }
    let Some(target) = target else {
        return Err(bad("target is required".to_owned()));
    };
    if !target.starts_with('/') {
        return Err(bad(format!(
            "the target {target:?} must be an absolute path"
        )));
    }
    match kind {
        mount_spec::Kind::Bind => match source.as_deref() {
            None => return Err(bad("a bind mount needs a source".to_owned())),
            Some(s) if !s.starts_with('/') => {
                return Err(bad(format!(
                    "the bind source {s:?} must be an absolute path"
                )));
            }
            Some(_) => {}
        },
        mount_spec::Kind::Tmpfs if source.is_some() => {
            return Err(bad("a tmpfs mount takes no source".to_owned()));
        }
        mount_spec::Kind::Volume => {
            if let Some(s) = source.as_deref() {
                shoal_api::validate::volume_name(s).map_err(|e| bad(e.to_string()))?;
            }
        }
        mount_spec::Kind::Tmpfs => {}
    }
    if tmpfs_size.is_some() && kind != mount_spec::Kind::Tmpfs {
        return Err(bad("tmpfs-size applies only to type=tmpfs".to_owned()));
    }
    if volume_nocopy && kind != mount_spec::Kind::Volume {
        return Err(bad("volume-nocopy applies only to type=volume".to_owned()));
    }
    Ok(MountSpec {
        kind: kind as i32,
        source: source.unwrap_or_default(),
        target,
        read_only,
        tmpfs_size_bytes: tmpfs_size.unwrap_or(0),
        volume_nocopy,
        ..Default::default()
    })
}

/// `--tmpfs /path[:size=64m,ro]`.
pub(crate) fn tmpfs(text: &str) -> Result<MountSpec, String> {
    let bad = |why: String| format!("invalid tmpfs {text:?}: {why}");
    let (target, options) = text.split_once(':').unwrap_or((text, ""));
    if !target.starts_with('/') {
        return Err(bad(format!("the path {target:?} must be absolute")));
    }
    let mut mount = MountSpec {
        kind: mount_spec::Kind::Tmpfs as i32,
        target: target.to_owned(),
        ..Default::default()
    };
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option.split_once('=') {
            Some(("size", value)) => {
                mount.tmpfs_size_bytes = u64::try_from(size(value).map_err(bad)?).unwrap_or(0);
            }
            None if option == "ro" => mount.read_only = true,
            None if option == "rw" => mount.read_only = false,
            _ => {
                return Err(bad(format!(
                    "unsupported option {option:?} (use size=…, ro or rw)"
                )));
            }
        }
    }
    Ok(mount)
}

/// `--restart no|always|unless-stopped|on-failure[:N]`.
pub(crate) fn restart_policy(text: &str) -> Result<RestartPolicySpec, String> {
    let bad = |why: &str| format!("invalid restart policy {text:?}: {why}");
    let (name, count) = match text.split_once(':') {
        Some((name, count)) => (name, Some(count)),
        None => (text, None),
    };
    match name {
        "no" | "always" | "unless-stopped" | "on-failure" => {}
        _ => return Err(bad("use no, always, unless-stopped or on-failure[:N]")),
    }
    let maximum_retry_count = match count {
        None => 0,
        Some(_) if name != "on-failure" => {
            return Err(bad(&format!(
                "a maximum retry count applies only to on-failure, not to {name}"
            )));
        }
        Some(n) => n
            .parse::<u32>()
            .map_err(|_| bad("the maximum retry count must be a whole number"))?,
    };
    Ok(RestartPolicySpec {
        name: name.to_owned(),
        maximum_retry_count,
    })
}

/// `--security-opt`: only `no-new-privileges[:true|false]` has a field in the contract.
pub(crate) fn security_opt(text: &str) -> Result<bool, String> {
    let (key, value) = match text.split_once([':', '=']) {
        Some((k, v)) => (k, Some(v)),
        None => (text, None),
    };
    if key != "no-new-privileges" {
        return Err(format!(
            "unsupported security option {text:?}: only no-new-privileges is supported"
        ));
    }
    match value {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(format!(
            "invalid security option {text:?}: no-new-privileges takes true or false, not {other:?}"
        )),
    }
}

/// `-e KEY=VALUE` or `-e KEY`; the key must be non-empty. Resolution of a bare key happens
/// when the spec is built (see [`resolve_env`]).
pub(crate) fn env_var(text: &str) -> Result<String, String> {
    let key = text.split_once('=').map_or(text, |(k, _)| k);
    if key.is_empty() {
        return Err(format!(
            "invalid environment variable {text:?}: the name is empty"
        ));
    }
    if key.chars().any(char::is_whitespace) {
        return Err(format!(
            "invalid environment variable {text:?}: the name contains whitespace"
        ));
    }
    Ok(text.to_owned())
}

/// `KEY=VALUE` as is; a bare `KEY` takes its value from `lookup` (our environment) and is
/// dropped when unset, as Docker does.
pub(crate) fn resolve_env(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if text.contains('=') {
        return Some(text.to_owned());
    }
    lookup(text).map(|value| format!("{text}={value}"))
}

/// The lines of an `--env-file`: `KEY=VALUE`, `# comments`, blank lines, and bare `KEY` taken
/// from `lookup`. Leading whitespace is ignored; values are kept verbatim (no quote removal).
pub(crate) fn env_file(
    path: &str,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut vars = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw).trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("invalid env file {path}: line {}: {why}", index + 1);
        let key = line.split_once('=').map_or(line, |(k, _)| k);
        if key.is_empty() {
            return Err(bad("no variable name before '='"));
        }
        if key.chars().any(char::is_whitespace) {
            return Err(bad(&format!("variable name {key:?} contains whitespace")));
        }
        vars.extend(resolve_env(line, lookup));
    }
    Ok(vars)
}

/// `logs --tail N|all`: negative or `all` means every line (-1 on the wire).
pub(crate) fn tail(text: &str) -> Result<i64, String> {
    if text == "all" {
        return Ok(-1);
    }
    match text.parse::<i64>() {
        Ok(n) if n < 0 => Ok(-1),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "invalid --tail {text:?}: expected a number of lines or \"all\""
        )),
    }
}

/// `logs --since`: a relative duration (`10m`, `1h30m`), Unix seconds (`1700000000[.5]`) or an
/// RFC 3339 time (`2024-05-01T12:00:00Z`). Kept as text; resolved against the clock when sent.
pub(crate) fn since_arg(text: &str) -> Result<String, String> {
    since(text, OffsetDateTime::UNIX_EPOCH).map(|_| text.to_owned())
}

/// Resolves a [`since_arg`] value at `now`.
pub(crate) fn since(text: &str, now: OffsetDateTime) -> Result<Timestamp, String> {
    let bad = || {
        format!(
            "invalid --since {text:?}: expected a duration (10m, 1h30m), Unix seconds or an RFC 3339 time"
        )
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(whole) && ((fraction.is_empty() && !text.contains('.')) || digits(fraction)) {
        let seconds: i64 = whole.parse().map_err(|_| bad())?;
        let nanos: i32 = format!("{:0<9}", &fraction[..fraction.len().min(9)])
            .parse()
            .unwrap_or(0);
        return Ok(Timestamp { seconds, nanos });
    }
    if let Ok(ago) = super::duration(text) {
        let then = now - ago;
        return Ok(Timestamp {
            seconds: then.unix_timestamp(),
            nanos: then.nanosecond() as i32,
        });
    }
    let parsed = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad())?;
    Ok(Timestamp {
        seconds: parsed.unix_timestamp(),
        nanos: parsed.nanosecond() as i32,
    })
}

/// The Dockerfile instructions `import -c` may apply, as Docker allows them.
const IMPORT_CHANGES: [&str; 10] = [
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "LABEL",
    "ONBUILD",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// `import -c 'CMD ["/bin/sh"]'`: one Dockerfile instruction among those import allows; sent
/// to the daemon as written.
pub(crate) fn import_change(text: &str) -> Result<String, String> {
    let trimmed = text.trim_start();
    let instruction = trimmed
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    if instruction.is_empty() {
        return Err(
            "invalid change \"\": expected a Dockerfile instruction, e.g. CMD [\"/bin/sh\"]"
                .to_owned(),
        );
    }
    if !IMPORT_CHANGES.contains(&instruction.as_str()) {
        return Err(format!(
            "invalid change {text:?}: {instruction} is not supported by import (use {})",
            IMPORT_CHANGES.join(", ")
        ));
    }
    if trimmed.trim_end().len() == instruction.len() {
        return Err(format!(
            "invalid change {text:?}: {instruction} needs an argument"
        ));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("1073741824").unwrap(), 1 << 30);
        assert_eq!(size("64m").unwrap(), 64 << 20);
        assert_eq!(size("64M").unwrap(), 64 << 20);
        assert_eq!(size("64mb").unwrap(), 64 << 20);
        assert_eq!(size("64MiB").unwrap(), 64 << 20);
        assert_eq!(size("1g").unwrap(), 1 << 30);
        assert_eq!(size("512k").unwrap(), 512 << 10);
        assert_eq!(size("1.5g").unwrap(), 3 << 29);
        assert_eq!(size("100b").unwrap(), 100);
        assert_eq!(size("2 t").unwrap(), 2 << 40);
        assert_eq!(size("0").unwrap(), 0);
        for bad in [
            "", "m", "64x", "-1", "1.2.3", "1.", "64 mbs", "ten", "9999999p",
        ] {
            let err = size(bad).unwrap_err();
            assert!(err.starts_with(&format!("invalid size {bad:?}: ")), "{err}");
        }
        assert!(size("9999999p").unwrap_err().ends_with("too large"));
        assert!(size("64x").unwrap_err().contains("e.g. 64m"));
        assert_eq!(memory_swap("-1").unwrap(), -1);
        assert_eq!(memory_swap("1g").unwrap(), 1 << 30);
        assert!(memory_swap("-2").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(nano_cpus("1.5").unwrap(), 1_500_000_000);
        assert_eq!(nano_cpus("2").unwrap(), 2_000_000_000);
        assert_eq!(nano_cpus("0.01").unwrap(), 10_000_000);
        assert_eq!(nano_cpus(".5").unwrap(), 500_000_000);
        assert_eq!(nano_cpus("0.000000001").unwrap(), 1);
        assert_eq!(nano_cpus("1.5000000000000").unwrap(), 1_500_000_000);
        assert_eq!(
            nano_cpus("-1").unwrap_err(),
            "invalid number of CPUs \"-1\": must not be negative"
        );
        assert!(
            nano_cpus("0.0000000001")
                .unwrap_err()
                .contains("too precise")
        );
        assert!(nano_cpus("abc").unwrap_err().contains("expected a number"));
        assert!(nano_cpus("1.").is_err() && nano_cpus("").is_err() && nano_cpus(".").is_err());
        assert!(nano_cpus("99999999999").unwrap_err().contains("too large"));
    }

    fn binding(ip: &str, host: u32, container: u32, proto: &str) -> PortBinding {
        PortBinding {
            host_ip: ip.into(),
            host_port: host,
            container_port: container,
            protocol: proto.into(),
        }
    }

    #[test]
    fn published_ports() {
        assert_eq!(publish("80").unwrap().0, [binding("", 0, 80, "tcp")]);
        assert_eq!(
            publish("8080:80").unwrap().0,
            [binding("", 8080, 80, "tcp")]
        );
        assert_eq!(
            publish("127.0.0.1:8080:80/udp").unwrap().0,
            [binding("127.0.0.1", 8080, 80, "udp")]
        );
        assert_eq!(
            publish("127.0.0.1::80").unwrap().0,
            [binding("127.0.0.1", 0, 80, "tcp")]
        );
        assert_eq!(
            publish("[::1]:8080:80").unwrap().0,
            [binding("::1", 8080, 80, "tcp")]
        );
        assert_eq!(
            publish("8000-8001:80-81").unwrap().0,
            [binding("", 8000, 80, "tcp"), binding("", 8001, 81, "tcp")]
        );
        assert_eq!(publish("80-81/sctp").unwrap().0.len(), 2);
        let cases = [
            ("", "not a port"),
            ("x:80", "not a port"),
            ("8080:0", "not a port"),
            ("8080:70000", "not a port"),
            ("80/icmp", "unknown protocol"),
            ("300.1.1.1:80:80", "not an IP address"),
            ("::1:80:80", "brackets"),
            ("8000-8002:80-81", "same length"),
            ("81-80", "ends before it starts"),
            ("[::1:80:80", "missing ']'"),
        ];
        for (text, want) in cases {
            let err = publish(text).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid port {text:?}: ")) && err.contains(want),
                "{text}: {err}"
            );
        }
        assert_eq!(port_and_protocol("80").unwrap(), (80, "tcp".into()));
        assert_eq!(port_and_protocol("53/udp").unwrap(), (53, "udp".into()));
        assert!(port_and_protocol("80-81").is_err());
    }

    #[test]
    fn volumes() {
        let v = volume("/srv/data:/data:ro").unwrap();
        assert_eq!(v.kind(), mount_spec::Kind::Bind);
        assert_eq!(
            (v.source.as_str(), v.target.as_str()),
            ("/srv/data", "/data")
        );
        assert!(v.read_only);
        let v = volume("cache:/cache").unwrap();
        assert_eq!(v.kind(), mount_spec::Kind::Volume);
        assert!(!v.read_only);
        let v = volume("/anon").unwrap();
        assert_eq!(
            (v.kind(), v.source.as_str()),
            (mount_spec::Kind::Volume, "")
        );
        let v = volume("/anon:ro").unwrap();
        assert!(v.read_only && v.source.is_empty());
        let v = volume("./here:/x").unwrap();
        assert!(
            v.source.starts_with('/') && v.source.ends_with("/here"),
            "{}",
            v.source
        );
        assert!(volume("data").unwrap_err().contains("must be absolute"));
        assert!(
            volume("a/b:/x")
                .unwrap_err()
                .contains("not a valid volume name")
        );
        assert!(
            volume("/a:/b:z")
                .unwrap_err()
                .contains("unsupported option \"z\"")
        );
        assert!(volume("/a:/b:ro:x").unwrap_err().contains("expected"));
        // -v makes a missing host directory (Docker's legacy binds); nocopy is for volumes.
        assert!(volume("/srv/new:/x").unwrap().create_source);
        assert!(!volume("cache:/x").unwrap().create_source);
        let v = volume("cache:/x:ro,nocopy").unwrap();
        assert!(v.volume_nocopy && v.read_only);
        assert!(volume("/anon:nocopy").unwrap().volume_nocopy);
        assert!(
            volume("/a:/b:nocopy")
                .unwrap_err()
                .contains("only to volumes")
        );
        // An anonymous volume's 64-hex name can be used by name.
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(volume(&format!("{hex}:/x")).unwrap().source, hex);
        assert!(
            volume("a:/x")
                .unwrap_err()
                .contains("not a valid volume name")
        );
    }

    #[test]
    fn mounts() {
        let m = mount("type=bind,source=/src,target=/dst,readonly").unwrap();
        assert_eq!(m.kind(), mount_spec::Kind::Bind);
        assert!(m.read_only);
        let m = mount("src=vol,dst=/data").unwrap();
        assert_eq!(
            (m.kind(), m.source.as_str()),
            (mount_spec::Kind::Volume, "vol")
        );
        let m = mount("type=volume,source=vol,target=/data,volume-nocopy").unwrap();
        assert!(m.volume_nocopy && !m.create_source);
        assert!(
            !mount("type=bind,source=/src,target=/dst")
                .unwrap()
                .create_source
        );
        let m = mount("type=tmpfs,target=/run,tmpfs-size=64m,ro=false").unwrap();
        assert_eq!(m.tmpfs_size_bytes, 64 << 20);
        assert!(!m.read_only);
        let cases = [
            ("type=bind,target=/x", "needs a source"),
            ("type=bind,source=rel,target=/x", "must be an absolute path"),
            ("type=tmpfs,source=x,target=/x", "takes no source"),
            ("type=nfs,target=/x", "unknown type"),
            ("source=v", "target is required"),
            ("target=rel", "must be an absolute path"),
            (
                "target=/x,volume-opt=a=b",
                "unsupported option \"volume-opt\"",
            ),
            ("target=/x,readonly=maybe", "true or false"),
            ("target=/x,tmpfs-size=1m", "only to type=tmpfs"),
            (
                "type=bind,source=/s,target=/x,volume-nocopy",
                "only to type=volume",
            ),
            ("target=/x,,", "empty field"),
        ];
        for (text, want) in cases {
            let err = mount(text).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid mount {text:?}: ")) && err.contains(want),
                "{text}: {err}"
            );
        }
        let t = tmpfs("/run:size=1m,ro").unwrap();
        assert_eq!((t.tmpfs_size_bytes, t.read_only), (1 << 20, true));
        assert!(tmpfs("run").is_err());
        assert!(
            tmpfs("/run:mode=1777")
                .unwrap_err()
                .contains("unsupported option")
        );
    }

    #[test]
    fn restart_policies_and_security() {
        assert_eq!(restart_policy("always").unwrap().name, "always");
        let p = restart_policy("on-failure:3").unwrap();
        assert_eq!((p.name.as_str(), p.maximum_retry_count), ("on-failure", 3));
        assert!(
            restart_policy("always:3")
                .unwrap_err()
                .contains("applies only to on-failure")
        );
        assert!(
            restart_policy("sometimes")
                .unwrap_err()
                .contains("use no, always")
        );
        assert!(
            restart_policy("on-failure:x")
                .unwrap_err()
                .contains("whole number")
        );
        assert!(security_opt("no-new-privileges").unwrap());
        assert!(security_opt("no-new-privileges:true").unwrap());
        assert!(!security_opt("no-new-privileges=false").unwrap());
        assert!(
            security_opt("seccomp=unconfined")
                .unwrap_err()
                .contains("only no-new-privileges")
        );
        assert!(security_opt("no-new-privileges:yes").is_err());
    }

    #[test]
    fn env_vars_and_files() {
        let lookup = |k: &str| (k == "HOME").then(|| "/root".to_owned());
        assert_eq!(env_var("A=b=c").unwrap(), "A=b=c");
        assert!(env_var("=x").unwrap_err().contains("name is empty"));
        assert!(env_var("A B=x").unwrap_err().contains("whitespace"));
        assert_eq!(resolve_env("HOME", &lookup).as_deref(), Some("HOME=/root"));
        assert_eq!(resolve_env("UNSET", &lookup), None);
        assert_eq!(resolve_env("E=", &lookup).as_deref(), Some("E="));

        let text = "\u{feff}# comment\nA=1\n\n  B=two words \r\nHOME\nUNSET\nQ=\"quoted\"\n";
        assert_eq!(
            env_file("app.env", text, &lookup).unwrap(),
            ["A=1", "B=two words ", "HOME=/root", "Q=\"quoted\""]
        );
        assert_eq!(
            env_file("app.env", "A=1\n=x\n", &lookup).unwrap_err(),
            "invalid env file app.env: line 2: no variable name before '='"
        );
        assert!(
            env_file("e", "MY VAR=1", &lookup)
                .unwrap_err()
                .contains("line 1: variable name \"MY VAR\" contains whitespace")
        );
    }

    #[test]
    fn tails_and_since() {
        assert_eq!(tail("all").unwrap(), -1);
        assert_eq!(tail("10").unwrap(), 10);
        assert_eq!(tail("-5").unwrap(), -1);
        assert!(tail("ten").is_err());
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(since("10m", now).unwrap().seconds, 1_700_000_000 - 600);
        let t = since("1699999999.25", now).unwrap();
        assert_eq!((t.seconds, t.nanos), (1_699_999_999, 250_000_000));
        assert_eq!(
            since("2023-11-14T22:13:20Z", now).unwrap().seconds,
            1_700_000_000
        );
        assert!(since("yesterday", now).is_err());
        assert!(since_arg("1.").is_err());
    }

    #[test]
    fn import_changes() {
        assert_eq!(
            import_change("CMD [\"/bin/sh\"]").unwrap(),
            "CMD [\"/bin/sh\"]"
        );
        assert!(import_change("env A=b").is_ok());
        assert!(
            import_change("RUN make")
                .unwrap_err()
                .contains("RUN is not supported by import")
        );
        assert!(
            import_change("CMD")
                .unwrap_err()
                .contains("needs an argument")
        );
        assert!(import_change("  ").is_err());
    }
}
