//! The nftables table of a bridge network, generated whole from its configuration and the ports
//! its containers publish.
//!
//! ```text
//! table ip shoal {
//!   chain raw-prerouting  { type filter hook prerouting priority raw;
//!     iifname BR ip daddr 127.0.0.0/8 drop }            # route_localnet guard (CVE-2020-8558)
//!   chain nat-prerouting  { type nat hook prerouting priority dstnat;
//!     fib daddr type local jump published }              # from other hosts and containers
//!   chain nat-output      { type nat hook output priority -100;
//!     fib daddr type local jump published }              # from the host itself, 127.0.0.1 too
//!   chain published {
//!     [ip daddr HOSTIP] tcp dport HPORT dnat to CIP:CPORT comment "CONTAINER" … }
//!   chain nat-postrouting { type nat hook postrouting priority srcnat;
//!     ip saddr SUBNET oifname != BR masquerade           # egress NAT
//!     oifname BR ip saddr 127.0.0.0/8 masquerade         # 127.0.0.1:HPORT from the host
//!     oifname BR ip saddr SUBNET ct status dnat masquerade }  # hairpin: container → published port
//!   chain forward { type filter hook forward priority filter;
//!     iifname BR accept
//!     oifname BR ct state established,related accept
//!     oifname BR ct status dnat accept
//!     oifname BR drop }                                  # nothing unpublished reaches a container
//! }
//! ```

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nftables::expr::{
    CT, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix,
};
use nftables::schema::{Chain, NfListObject, Rule};
use nftables::stmt::{JumpTarget, Match, NAT, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::firewall::TableRuleset;
use crate::port::PublishedPort;

/// The chain holding one DNAT rule per published port.
pub const PUBLISHED_CHAIN: &str = "published";

/// One published port of one container, as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedRule<'a> {
    /// The container the port leads to (the rule's comment).
    pub container_id: &'a str,
    /// The container's address.
    pub container_ip: Ipv4Addr,
    /// The port.
    pub port: PublishedPort,
}

/// Builds the whole table of a bridge network.
pub fn bridge_table<'a>(
    table: &str,
    bridge: &str,
    subnet: Ipv4Net,
    published: impl IntoIterator<Item = PublishedRule<'a>>,
) -> TableRuleset {
    let mut b = Builder {
        ruleset: TableRuleset::new(NfFamily::IP, table),
    };
    let loopback: Ipv4Net = Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid prefix");

    // Chains are added before the rules that jump to them.
    b.regular_chain(PUBLISHED_CHAIN);
    b.base_chain(
        "raw-prerouting",
        NfChainType::Filter,
        NfHook::Prerouting,
        -300,
    );
    b.rule(
        "raw-prerouting",
        vec![
            eq(meta(MetaKey::Iifname), text(bridge)),
            eq(payload("ip", "daddr"), prefix(loopback)),
            Statement::Drop(None),
        ],
        None,
    );

    for (chain, hook) in [
        ("nat-prerouting", NfHook::Prerouting),
        ("nat-output", NfHook::Output),
    ] {
        b.base_chain(chain, NfChainType::NAT, hook, -100);
        b.rule(
            chain,
            vec![
                eq(fib_daddr_type(), text("local")),
                Statement::Jump(JumpTarget {
                    target: PUBLISHED_CHAIN.into(),
                }),
            ],
            None,
        );
    }

    for rule in published {
        let port = rule.port;
        let mut expr = Vec::with_capacity(3);
        if !port.host_ip.is_unspecified() {
            expr.push(eq(payload("ip", "daddr"), text(&port.host_ip.to_string())));
        }
        expr.push(eq(
            payload(port.protocol.as_str(), "dport"),
            Expression::Number(u32::from(port.host_port)),
        ));
        expr.push(Statement::DNAT(Some(NAT {
            addr: Some(text(&rule.container_ip.to_string())),
            family: None,
            port: Some(Expression::Number(u32::from(port.container_port))),
            flags: None,
        })));
        b.rule(PUBLISHED_CHAIN, expr, Some(comment(rule.container_id)));
    }

    b.base_chain(
        "nat-postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        100,
    );
    b.rule(
        "nat-postrouting",
        vec![
            eq(payload("ip", "saddr"), prefix(subnet)),
            neq(meta(MetaKey::Oifname), text(bridge)),
            Statement::Masquerade(None),
        ],
        None,
    );
    b.rule(
        "nat-postrouting",
        vec![
            eq(meta(MetaKey::Oifname), text(bridge)),
            eq(payload("ip", "saddr"), prefix(loopback)),
            Statement::Masquerade(None),
        ],
        None,
    );
    b.rule(
        "nat-postrouting",
        vec![
            eq(meta(MetaKey::Oifname), text(bridge)),
            eq(payload("ip", "saddr"), prefix(subnet)),
            is_in(ct("status"), text("dnat")),
            Statement::Masquerade(None),
        ],
        None,
    );

    b.base_chain("forward", NfChainType::Filter, NfHook::Forward, 0);
    b.rule(
        "forward",
        vec![eq(meta(MetaKey::Iifname), text(bridge)), accept()],
        None,
    );
    b.rule(
        "forward",
        vec![
            eq(meta(MetaKey::Oifname), text(bridge)),
            is_in(
                ct("state"),
                Expression::List(vec![text("established"), text("related")]),
            ),
            accept(),
        ],
        None,
    );
    b.rule(
        "forward",
        vec![
            eq(meta(MetaKey::Oifname), text(bridge)),
            is_in(ct("status"), text("dnat")),
            accept(),
        ],
        None,
    );
    b.rule(
        "forward",
        vec![
            eq(meta(MetaKey::Oifname), text(bridge)),
            Statement::Drop(None),
        ],
        None,
    );
    b.ruleset
}

struct Builder {
    ruleset: TableRuleset,
}

impl Builder {
    fn chain(&self, name: &str) -> Chain<'static> {
        Chain {
            family: self.ruleset.family,
            table: Cow::Owned(self.ruleset.name.clone()),
            name: Cow::Owned(name.to_owned()),
            newname: None,
            handle: None,
            _type: None,
            hook: None,
            prio: None,
            dev: None,
            policy: None,
        }
    }

    fn base_chain(&mut self, name: &str, kind: NfChainType, hook: NfHook, prio: i32) {
        let chain = Chain {
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..self.chain(name)
        };
        self.ruleset.objects.push(NfListObject::Chain(chain));
    }

    fn regular_chain(&mut self, name: &str) {
        let chain = self.chain(name);
        self.ruleset.objects.push(NfListObject::Chain(chain));
    }

    fn rule(&mut self, chain: &str, expr: Vec<Statement<'static>>, comment: Option<String>) {
        self.ruleset.objects.push(NfListObject::Rule(Rule {
            family: self.ruleset.family,
            table: Cow::Owned(self.ruleset.name.clone()),
            chain: Cow::Owned(chain.to_owned()),
            expr: Cow::Owned(expr),
            handle: None,
            index: None,
            comment: comment.map(Cow::Owned),
        }));
    }
}

/// nft comments are limited to 128 bytes.
fn comment(container_id: &str) -> String {
    let mut end = container_id.len().min(127);
    while !container_id.is_char_boundary(end) {
        end -= 1;
    }
    container_id[..end].to_owned()
}

fn text(s: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(s.to_owned()))
}

fn prefix(net: Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(text(&net.network().to_string())),
        len: u32::from(net.prefix_len()),
    }))
}

fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Owned(protocol.to_owned()),
            field: Cow::Owned(field.to_owned()),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ct(key: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Owned(key.to_owned()),
        family: None,
        dir: None,
    }))
}

fn fib_daddr_type() -> Expression<'static> {
    Expression::Named(NamedExpression::Fib(Fib {
        result: FibResult::Type,
        flags: HashSet::from([FibFlag::Daddr]),
    }))
}

fn matches(
    left: Expression<'static>,
    right: Expression<'static>,
    op: Operator,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(left, right, Operator::EQ)
}

fn neq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(left, right, Operator::NEQ)
}

fn is_in(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(left, right, Operator::IN)
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::Protocol;

    fn sample() -> TableRuleset {
        let subnet: Ipv4Net = "172.30.0.0/16".parse().unwrap();
        bridge_table(
            "shoal",
            "shoal0",
            subnet,
            [
                PublishedRule {
                    container_id: "web",
                    container_ip: Ipv4Addr::new(172, 30, 0, 2),
                    port: PublishedPort {
                        host_ip: Ipv4Addr::UNSPECIFIED,
                        host_port: 8080,
                        container_port: 80,
                        protocol: Protocol::Tcp,
                    },
                },
                PublishedRule {
                    container_id: "dns",
                    container_ip: Ipv4Addr::new(172, 30, 0, 3),
                    port: PublishedPort {
                        host_ip: Ipv4Addr::LOCALHOST,
                        host_port: 5353,
                        container_port: 53,
                        protocol: Protocol::Udp,
                    },
                },
            ],
        )
    }

    fn rules_of(json: &serde_json::Value, chain: &str) -> Vec<serde_json::Value> {
        json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .filter(|r| r["chain"] == chain)
            .cloned()
            .collect()
    }

    #[test]
    fn publishes_ports_with_dnat() {
        let json = sample().to_json();
        let published = rules_of(&json, PUBLISHED_CHAIN);
        assert_eq!(published.len(), 2);
        let web = &published[0];
        assert_eq!(web["comment"], "web");
        assert_eq!(
            web["expr"][0]["match"]["left"]["payload"]["protocol"],
            "tcp"
        );
        assert_eq!(web["expr"][0]["match"]["left"]["payload"]["field"], "dport");
        assert_eq!(web["expr"][0]["match"]["right"], 8080);
        assert_eq!(web["expr"][1]["dnat"]["addr"], "172.30.0.2");
        assert_eq!(web["expr"][1]["dnat"]["port"], 80);
        let dns = &published[1];
        assert_eq!(dns["expr"][0]["match"]["left"]["payload"]["field"], "daddr");
        assert_eq!(dns["expr"][0]["match"]["right"], "127.0.0.1");
        assert_eq!(
            dns["expr"][1]["match"]["left"]["payload"]["protocol"],
            "udp"
        );
        assert_eq!(dns["expr"][1]["match"]["right"], 5353);
        assert_eq!(dns["expr"][2]["dnat"]["addr"], "172.30.0.3");
        assert_eq!(dns["expr"][2]["dnat"]["port"], 53);
        // Both the prerouting and the output hook lead there, for local destinations only.
        for chain in ["nat-prerouting", "nat-output"] {
            let rules = rules_of(&json, chain);
            assert_eq!(rules.len(), 1);
            assert_eq!(
                rules[0]["expr"][0]["match"]["left"]["fib"]["result"],
                "type"
            );
            assert_eq!(rules[0]["expr"][0]["match"]["right"], "local");
            assert_eq!(rules[0]["expr"][1]["jump"]["target"], PUBLISHED_CHAIN);
        }
    }

    #[test]
    fn masquerades_egress_loopback_and_hairpin() {
        let json = sample().to_json();
        let post = rules_of(&json, "nat-postrouting");
        assert_eq!(post.len(), 3);
        let text = serde_json::to_string(&post).unwrap();
        assert_eq!(text.matches("\"masquerade\"").count(), 3);
        // egress: from the subnet, out of any interface but the bridge
        assert_eq!(
            post[0]["expr"][0]["match"]["right"]["prefix"]["addr"],
            "172.30.0.0"
        );
        assert_eq!(post[0]["expr"][0]["match"]["right"]["prefix"]["len"], 16);
        assert_eq!(post[0]["expr"][1]["match"]["op"], "!=");
        assert_eq!(post[0]["expr"][1]["match"]["right"], "shoal0");
        // 127.0.0.1:PORT from the host
        assert_eq!(
            post[1]["expr"][1]["match"]["right"]["prefix"]["addr"],
            "127.0.0.0"
        );
        // hairpin
        assert_eq!(post[2]["expr"][2]["match"]["left"]["ct"]["key"], "status");
        let raw = rules_of(&json, "raw-prerouting");
        assert_eq!(raw.len(), 1);
        assert!(raw[0]["expr"][2].get("drop").is_some());
    }

    #[test]
    fn forward_accepts_bridge_traffic_and_drops_the_rest() {
        let json = sample().to_json();
        let forward = rules_of(&json, "forward");
        assert_eq!(forward.len(), 4);
        assert!(forward[0]["expr"][1].get("accept").is_some());
        assert!(forward[3]["expr"][1].get("drop").is_some());
        let chains: Vec<&serde_json::Value> = json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"].get("chain"))
            .collect();
        assert_eq!(chains.len(), 6);
        assert!(
            chains
                .iter()
                .all(|c| c["table"] == "shoal" && c["family"] == "ip")
        );
    }

    #[test]
    fn an_empty_network_has_no_published_rules() {
        let subnet: Ipv4Net = "10.1.0.0/24".parse().unwrap();
        let json = bridge_table("t", "br", subnet, []).to_json();
        assert!(rules_of(&json, PUBLISHED_CHAIN).is_empty());
        assert_eq!(rules_of(&json, "nat-postrouting").len(), 3);
    }

    #[test]
    fn chains_come_before_the_rules_that_jump_to_them() {
        let json = sample().to_json();
        let commands = json["nftables"].as_array().unwrap();
        let position = |pred: &dyn Fn(&serde_json::Value) -> bool| {
            commands.iter().position(|c| pred(&c["add"])).unwrap()
        };
        let chain = position(&|a| a["chain"]["name"] == PUBLISHED_CHAIN);
        let jump = position(&|a| a["rule"]["expr"][1]["jump"]["target"] == PUBLISHED_CHAIN);
        assert!(chain < jump);
    }

    #[test]
    fn comments_are_cut_to_what_nft_takes() {
        assert_eq!(comment(&"x".repeat(300)).len(), 127);
        assert_eq!(comment("abc"), "abc");
        let s = "é".repeat(100);
        assert!(comment(&s).len() <= 127);
    }
}
