//! `--network none|host|bridge`: how a standalone container is wired.

use std::fmt;
use std::str::FromStr;

use crate::error::NetError;

/// How a standalone container (`shoal run --network …`) is wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NetworkMode {
    /// A network namespace of its own with only `lo`.
    None,
    /// The host's network namespace: no isolation, no port publishing.
    Host,
    /// A namespace of its own, joined to the host's default bridge with egress NAT (the default).
    #[default]
    Bridge,
}

impl NetworkMode {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
            NetworkMode::Bridge => "bridge",
        }
    }

    /// Whether the container gets a network namespace of its own.
    pub fn has_own_namespace(self) -> bool {
        !matches!(self, NetworkMode::Host)
    }

    /// Whether `-p`/`-P` make sense in this mode (Docker ignores them for `host` and `none`).
    pub fn supports_published_ports(self) -> bool {
        matches!(self, NetworkMode::Bridge)
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NetworkMode {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            "bridge" | "default" => Ok(NetworkMode::Bridge),
            _ => Err(NetError::InvalidNetworkMode(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_modes() {
        assert_eq!("none".parse::<NetworkMode>().unwrap(), NetworkMode::None);
        assert_eq!("host".parse::<NetworkMode>().unwrap(), NetworkMode::Host);
        assert_eq!(
            "bridge".parse::<NetworkMode>().unwrap(),
            NetworkMode::Bridge
        );
        assert_eq!(
            "default".parse::<NetworkMode>().unwrap(),
            NetworkMode::Bridge
        );
        assert_eq!(
            "BRIDGE".parse::<NetworkMode>().unwrap(),
            NetworkMode::Bridge
        );
        assert_eq!(NetworkMode::default(), NetworkMode::Bridge);
        for mode in [NetworkMode::None, NetworkMode::Host, NetworkMode::Bridge] {
            assert_eq!(mode.to_string().parse::<NetworkMode>().unwrap(), mode);
        }
    }

    #[test]
    fn refuses_unknown_modes() {
        for bad in ["", "overlay", "container:abc", "brige"] {
            let err = bad.parse::<NetworkMode>().unwrap_err().to_string();
            assert!(err.contains("expected none, host or bridge"), "{err}");
        }
    }
}
