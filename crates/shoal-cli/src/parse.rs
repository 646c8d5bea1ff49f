//! `parse.rs`: the flag values users type — durations, labels, filters, `host[:port]` — turned
//! into typed values (or a one-line reason) before any request is sent. Each parser is a
//! clap `value_parser`, so bad values are usage errors reported by clap.

pub(crate) mod container;

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_api::v1::{self, NodeRole};
use shoal_api::validate::{self, InvalidInput};

/// The port managers listen on for the cluster, as in Docker.
pub(crate) const DEFAULT_CLUSTER_PORT: u16 = 2377;

const DURATION_UNITS: &str = "d, h, m, s or ms";

/// Durations like `90d`, `2160h`, `30m`, `1h30m`, `2160h0m0s` (whole numbers, units
/// d/h/m/s/ms, largest first or not: they simply add up).
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let bad = |why: String| format!("invalid duration {text:?}: {why}");
    if text.is_empty() {
        return Err(bad(format!(
            "expected a number with a unit ({DURATION_UNITS}), e.g. 90d, 2160h, 30m or 1h30m"
        )));
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad(format!(
                "expected a number at {rest:?} (whole numbers with units {DURATION_UNITS}, e.g. 1h30m)"
            )));
        }
        let (number, after) = rest.split_at(digits);
        if after.starts_with('.') {
            return Err(bad(
                "fractions are not supported; use smaller units, e.g. 1h30m for 1.5h".into(),
            ));
        }
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let unit_ms: u64 = match unit {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            "" => {
                return Err(bad(format!(
                    "missing unit after {number} (use {DURATION_UNITS})"
                )));
            }
            other => {
                return Err(bad(format!(
                    "unknown unit {other:?} (use {DURATION_UNITS})"
                )));
            }
        };
        let value: u64 = number.parse().map_err(|_| bad("number too large".into()))?;
        total_ms = value
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| bad("too large".into()))?;
        rest = after;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Like [`duration`], for settings kept in whole seconds: at least `1s`, since on the wire 0
/// means "not set" and `0s` would silently keep the old value.
pub(crate) fn duration_secs(text: &str) -> Result<Duration, String> {
    let value = duration(text)?;
    if value < Duration::from_secs(1) {
        return Err(format!("invalid duration {text:?}: must be at least 1s"));
    }
    Ok(value)
}

/// A count of at least 1 (on the wire 0 means "not set", so `0` would silently keep the old
/// value).
pub(crate) fn count_at_least_one(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err(format!("invalid count {text:?}: must be at least 1")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "invalid count {text:?}: expected a whole number, e.g. 10000"
        )),
    }
}

/// Docker's `key=value` or bare `key` (empty value) labels; the key must pass the shared rules.
pub(crate) fn label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').unwrap_or((text, ""));
    check_label_key(key).map_err(|why| format!("invalid label {text:?}: {why}"))?;
    Ok((key.to_owned(), value.to_owned()))
}

/// A label key alone, as `--label-rm` takes it.
pub(crate) fn label_key(text: &str) -> Result<String, String> {
    check_label_key(text).map_err(|why| format!("invalid label key {text:?}: {why}"))?;
    Ok(text.to_owned())
}

fn check_label_key(key: &str) -> Result<(), String> {
    match validate::label_key(key) {
        Ok(()) => Ok(()),
        Err(InvalidInput::LabelKey { why, .. }) => Err(format!("key {why}")),
        Err(other) => Err(other.to_string()),
    }
}

/// Labels from repeated `--label` flags; a key given twice keeps its last value, as Docker.
pub(crate) fn label_map(labels: &[(String, String)]) -> std::collections::HashMap<String, String> {
    labels.iter().cloned().collect()
}

/// One `-f KEY=VALUE` term of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FilterTerm {
    Name(String),
    Id(String),
    /// `label=KEY` (key present) or `label=KEY=VALUE`.
    Label(String, Option<String>),
    Role(NodeRole),
}

/// `-f` for `node ls`: `name=`, `id=`, `label=`, `role=`.
pub(crate) fn node_filter(text: &str) -> Result<FilterTerm, String> {
    filter(text, "name, id, label or role")
}

/// `-f` for `config ls`: `name=`, `id=`, `label=`.
pub(crate) fn config_filter(text: &str) -> Result<FilterTerm, String> {
    match filter(text, "name, id or label")? {
        FilterTerm::Role(_) => Err(format!(
            "invalid filter {text:?}: unknown key \"role\" (use name, id or label)"
        )),
        term => Ok(term),
    }
}

fn filter(text: &str, allowed: &str) -> Result<FilterTerm, String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!(
            "invalid filter {text:?}: expected KEY=VALUE, e.g. name=web1"
        ));
    };
    if value.is_empty() && key != "label" {
        return Err(format!("invalid filter {text:?}: the value is empty"));
    }
    Ok(match key {
        "name" => FilterTerm::Name(value.to_owned()),
        "id" => FilterTerm::Id(value.to_owned()),
        "label" => {
            let (k, v) = match value.split_once('=') {
                Some((k, v)) => (k, Some(v.to_owned())),
                None => (value, None),
            };
            check_label_key(k).map_err(|why| format!("invalid filter {text:?}: label {why}"))?;
            FilterTerm::Label(k.to_owned(), v)
        }
        "role" => FilterTerm::Role(match value {
            "manager" => NodeRole::Manager,
            "worker" => NodeRole::Worker,
            _ => {
                return Err(format!(
                    "invalid filter {text:?}: role must be manager or worker"
                ));
            }
        }),
        _ => {
            return Err(format!(
                "invalid filter {text:?}: unknown key {key:?} (use {allowed})"
            ));
        }
    })
}

/// The terms of one listing, grouped Docker's way: terms with the same key are alternatives,
/// different keys must all hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Filters {
    names: Vec<String>,
    id_prefixes: Vec<String>,
    labels: BTreeMap<String, Option<String>>,
    roles: Vec<NodeRole>,
}

impl Filters {
    pub(crate) fn new(terms: &[FilterTerm]) -> Self {
        let mut filters = Filters::default();
        for term in terms {
            match term {
                FilterTerm::Name(n) => filters.names.push(n.clone()),
                FilterTerm::Id(i) => filters.id_prefixes.push(i.clone()),
                FilterTerm::Label(k, v) => {
                    filters.labels.insert(k.clone(), v.clone());
                }
                FilterTerm::Role(r) => filters.roles.push(*r),
            }
        }
        filters
    }

    /// What the server can filter on. An empty label value asks only that the key be present.
    /// Roles are not in the contract, so they are applied here only.
    pub(crate) fn to_wire(&self) -> v1::ListFilters {
        v1::ListFilters {
            names: self.names.clone(),
            id_prefixes: self.id_prefixes.clone(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
                .collect(),
        }
    }

    /// Applied again to what the server returned, so the listing honours every term even
    /// where the server is more lenient (and for roles, which only we filter).
    pub(crate) fn matches_node(&self, node: &v1::Node) -> bool {
        let hostname = node
            .description
            .as_ref()
            .map_or("", |d| d.hostname.as_str());
        let spec_name = node
            .spec
            .as_ref()
            .and_then(|s| s.annotations.as_ref())
            .map_or("", |a| a.name.as_str());
        let labels = node
            .spec
            .as_ref()
            .and_then(|s| s.annotations.as_ref())
            .map(|a| &a.labels);
        let role = node
            .spec
            .as_ref()
            .map_or(NodeRole::Worker, |s| s.desired_role());
        (self.names.is_empty() || self.names.iter().any(|n| n == hostname || n == spec_name))
            && self.matches_id(&node.id)
            && self.matches_labels(labels)
            && (self.roles.is_empty() || self.roles.contains(&role))
    }

    pub(crate) fn matches_config(&self, config: &v1::Config) -> bool {
        let annotations = config.spec.as_ref().and_then(|s| s.annotations.as_ref());
        let name = annotations.map_or("", |a| a.name.as_str());
        (self.names.is_empty() || self.names.iter().any(|n| n == name))
            && self.matches_id(&config.id)
            && self.matches_labels(annotations.map(|a| &a.labels))
    }

    fn matches_id(&self, id: &str) -> bool {
        self.id_prefixes.is_empty() || self.id_prefixes.iter().any(|p| id.starts_with(p.as_str()))
    }

    fn matches_labels(&self, labels: Option<&std::collections::HashMap<String, String>>) -> bool {
        self.labels.iter().all(
            |(key, want)| match (labels.and_then(|l| l.get(key)), want) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(have), Some(want)) => have == want,
            },
        )
    }
}

/// `host[:port]` with Docker's default cluster port added when none is given; bare IPv6
/// addresses get brackets so the result always parses as `host:port`.
pub(crate) fn cluster_addr(text: &str) -> Result<String, String> {
    let bad = |why: &str| format!("invalid address {text:?}: {why}");
    if text.is_empty() {
        return Err(bad("expected HOST[:PORT]"));
    }
    if text.contains("://") || text.contains('/') {
        return Err(bad("expected HOST[:PORT], without a scheme or path"));
    }
    let port_of = |port: &str| -> Result<(), String> {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(()),
            _ => Err(bad("the port must be a number from 1 to 65535")),
        }
    };
    if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(bad("missing ']' after the IPv6 address"));
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        return match after {
            "" => Ok(format!("{text}:{DEFAULT_CLUSTER_PORT}")),
            _ => match after.strip_prefix(':') {
                Some(port) => port_of(port).map(|()| text.to_owned()),
                None => Err(bad("expected ':PORT' after ']'")),
            },
        };
    }
    match text.matches(':').count() {
        0 => Ok(format!("{text}:{DEFAULT_CLUSTER_PORT}")),
        1 => {
            let (host, port) = text.split_once(':').unwrap_or((text, ""));
            if host.is_empty() {
                return Err(bad("the host is empty"));
            }
            port_of(port).map(|()| text.to_owned())
        }
        // Several colons and no brackets: a bare IPv6 address, which cannot carry a port.
        _ => Ok(format!("[{text}]:{DEFAULT_CLUSTER_PORT}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_start_at_one() {
        assert_eq!(count_at_least_one("1"), Ok(1));
        assert_eq!(count_at_least_one("10000"), Ok(10_000));
        for bad in ["0", "-1", "1.5", "", "10k"] {
            let err = count_at_least_one(bad).unwrap_err();
            assert!(err.starts_with("invalid count"), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn good_durations() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(duration("90d").unwrap(), h(90 * 24));
        assert_eq!(duration("2160h").unwrap(), h(2160));
        assert_eq!(duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("2160h0m0s").unwrap(), h(2160));
        assert_eq!(duration("1d12h").unwrap(), h(36));
        assert_eq!(duration("1500ms").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn bad_durations() {
        let cases = [
            ("", "expected a number with a unit"),
            ("90", "missing unit after 90"),
            ("5x", "unknown unit \"x\""),
            ("h", "expected a number at \"h\""),
            ("1.5h", "fractions are not supported"),
            ("-1h", "expected a number"),
            ("1h 30m", "expected a number at \" 30m\""),
            ("99999999999999999999d", "number too large"),
            ("9999999999999d", "too large"),
        ];
        for (text, want) in cases {
            let err = duration(text).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid duration {text:?}: ")),
                "{err}"
            );
            assert!(err.contains(want), "{text}: {err}");
        }
        assert!(duration_secs("0h").unwrap_err().contains("at least 1s"));
        assert!(duration_secs("999ms").unwrap_err().contains("at least 1s"));
        assert_eq!(duration_secs("1h").unwrap(), Duration::from_secs(3600));
    }

    #[test]
    fn labels() {
        assert_eq!(label("tier=web").unwrap(), ("tier".into(), "web".into()));
        assert_eq!(label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(label("bare").unwrap(), ("bare".into(), String::new()));
        assert_eq!(label("k=").unwrap(), ("k".into(), String::new()));
        assert_eq!(
            label("=x").unwrap_err(),
            "invalid label \"=x\": key must not be empty"
        );
        assert!(label("a b=c").unwrap_err().contains("whitespace"));
        assert_eq!(label_key("tier").unwrap(), "tier");
        assert!(
            label_key("")
                .unwrap_err()
                .starts_with("invalid label key \"\"")
        );
    }

    #[test]
    fn filter_terms() {
        assert_eq!(
            node_filter("name=web1").unwrap(),
            FilterTerm::Name("web1".into())
        );
        assert_eq!(node_filter("id=abc").unwrap(), FilterTerm::Id("abc".into()));
        assert_eq!(
            node_filter("role=manager").unwrap(),
            FilterTerm::Role(NodeRole::Manager)
        );
        assert_eq!(
            node_filter("label=a").unwrap(),
            FilterTerm::Label("a".into(), None)
        );
        assert_eq!(
            node_filter("label=a=b").unwrap(),
            FilterTerm::Label("a".into(), Some("b".into()))
        );
        assert!(
            node_filter("name")
                .unwrap_err()
                .contains("expected KEY=VALUE")
        );
        assert!(node_filter("name=").unwrap_err().contains("empty"));
        assert!(
            node_filter("role=boss")
                .unwrap_err()
                .contains("manager or worker")
        );
        assert!(
            node_filter("colour=red")
                .unwrap_err()
                .contains("unknown key \"colour\"")
        );
        assert!(
            node_filter("label==b")
                .unwrap_err()
                .contains("label key must not be empty")
        );
        assert!(
            config_filter("role=manager")
                .unwrap_err()
                .contains("unknown key \"role\"")
        );
        assert!(config_filter("name=app").is_ok());
    }

    fn node(id: &str, host: &str, role: NodeRole, labels: &[(&str, &str)]) -> v1::Node {
        v1::Node {
            id: id.into(),
            spec: Some(v1::NodeSpec {
                annotations: Some(v1::Annotations {
                    name: String::new(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                }),
                desired_role: role as i32,
                availability: 0,
            }),
            description: Some(v1::NodeDescription {
                hostname: host.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn filters_group_by_key() {
        let a = node("aaa1", "alpha", NodeRole::Manager, &[("zone", "1")]);
        let b = node(
            "bbb2",
            "beta",
            NodeRole::Worker,
            &[("zone", "2"), ("ssd", "")],
        );
        let terms = [
            FilterTerm::Name("alpha".into()),
            FilterTerm::Name("beta".into()),
        ];
        let f = Filters::new(&terms);
        assert!(f.matches_node(&a) && f.matches_node(&b));

        let f = Filters::new(&[FilterTerm::Role(NodeRole::Worker)]);
        assert!(!f.matches_node(&a) && f.matches_node(&b));

        let f = Filters::new(&[FilterTerm::Label("ssd".into(), None)]);
        assert!(!f.matches_node(&a) && f.matches_node(&b));

        let f = Filters::new(&[
            FilterTerm::Label("zone".into(), Some("1".into())),
            FilterTerm::Id("aa".into()),
        ]);
        assert!(f.matches_node(&a) && !f.matches_node(&b));

        let f = Filters::new(&[FilterTerm::Id("b".into()), FilterTerm::Name("alpha".into())]);
        assert!(!f.matches_node(&a) && !f.matches_node(&b));

        let wire = Filters::new(&[
            FilterTerm::Name("alpha".into()),
            FilterTerm::Id("aa".into()),
            FilterTerm::Label("ssd".into(), None),
            FilterTerm::Role(NodeRole::Manager),
        ])
        .to_wire();
        assert_eq!(wire.names, ["alpha"]);
        assert_eq!(wire.id_prefixes, ["aa"]);
        assert_eq!(wire.labels.get("ssd").map(String::as_str), Some(""));
        assert!(Filters::default().matches_node(&a));
    }

    #[test]
    fn config_filters() {
        let c = v1::Config {
            id: "c1".into(),
            meta: None,
            spec: Some(v1::ConfigSpec {
                annotations: Some(v1::Annotations {
                    name: "app".into(),
                    labels: [("env".to_string(), "prod".to_string())].into(),
                }),
                data: vec![],
            }),
        };
        assert!(Filters::new(&[FilterTerm::Name("app".into())]).matches_config(&c));
        assert!(!Filters::new(&[FilterTerm::Name("ap".into())]).matches_config(&c));
        assert!(
            !Filters::new(&[FilterTerm::Label("env".into(), Some("dev".into()))])
                .matches_config(&c)
        );
    }

    #[test]
    fn cluster_addresses() {
        assert_eq!(cluster_addr("10.0.0.1").unwrap(), "10.0.0.1:2377");
        assert_eq!(cluster_addr("10.0.0.1:4000").unwrap(), "10.0.0.1:4000");
        assert_eq!(cluster_addr("mgr.example").unwrap(), "mgr.example:2377");
        assert_eq!(cluster_addr("[::1]").unwrap(), "[::1]:2377");
        assert_eq!(cluster_addr("[::1]:9").unwrap(), "[::1]:9");
        assert_eq!(cluster_addr("fd00::1").unwrap(), "[fd00::1]:2377");
        assert!(cluster_addr("10.0.0.1:").unwrap_err().contains("port"));
        assert!(cluster_addr("10.0.0.1:x").unwrap_err().contains("port"));
        assert!(cluster_addr(":2377").unwrap_err().contains("host is empty"));
        assert!(cluster_addr("tcp://a:1").unwrap_err().contains("scheme"));
        assert!(cluster_addr("").is_err());
        assert!(cluster_addr("[::1").is_err());
    }
}
