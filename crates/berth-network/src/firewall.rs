//! Berth's nftables ruleset: one table of its own (`ip berth`), rebuilt from the daemon's
//! state and replaced in one atomic transaction on every change, so what is in the kernel
//! is always exactly what the daemon wants, and whatever a crashed daemon left is gone the
//! next time the table is written.
//!
//! - `output` and `prerouting` (nat): traffic to a local address jumps to `ports`, where
//!   each published port is a DNAT to its container; this is also how the host itself
//!   reaches `127.0.0.1:PORT` (no proxy process per port).
//! - `postrouting` (nat): masquerade for what leaves a (non-internal) bridge's subnet; for
//!   loopback-sourced connections DNATed onto a bridge (the bridge has `route_localnet`),
//!   and for hairpin connections (a container reaching a published port on its own bridge).
//! - `forward` (filter): isolation between bridges, internal networks kept in.
//! - `guard` (filter, prerouting): packets from a bridge to 127.0.0.0/8 are dropped, so
//!   `route_localnet` on the bridge never lets containers reach the host's loopback
//!   services (Docker leaves that open).

use std::net::Ipv4Addr;

use nftables::schema::Nftables;
use serde_json::{json, Value};

use crate::ipam::{Subnet, Subnet6};
use crate::Error;

pub const TABLE: &str = "berth";

/// A bridge network as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeRules {
    pub bridge: String,
    pub subnet: Subnet,
    /// With IPv6 on: the network's IPv6 subnet (masqueraded out, as Docker does).
    pub subnet6: Option<Subnet6>,
    pub internal: bool,
    pub masquerade: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    /// "tcp" or "udp".
    pub proto: String,
    /// `None` for every local address.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub bridges: Vec<BridgeRules>,
    pub ports: Vec<PortRule>,
}

fn table() -> Value {
    json!({"family": "ip", "name": TABLE})
}

fn chain(name: &str, kind: Option<(&str, &str, i32)>) -> Value {
    let mut c = json!({"family": "ip", "table": TABLE, "name": name});
    if let Some((t, hook, prio)) = kind {
        c["type"] = json!(t);
        c["hook"] = json!(hook);
        c["prio"] = json!(prio);
        c["policy"] = json!("accept");
    }
    json!({"add": {"chain": c}})
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "ip", "table": TABLE, "chain": chain, "expr": expr}}})
}

fn eq(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn ne(left: Value, right: Value) -> Value {
    json!({"match": {"op": "!=", "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn field(protocol: &str, f: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": f}})
}

fn prefix(s: &Subnet) -> Value {
    json!({"prefix": {"addr": s.addr.to_string(), "len": s.prefix}})
}

fn local_daddr() -> Value {
    eq(
        json!({"fib": {"result": "type", "flags": ["daddr"]}}),
        json!("local"),
    )
}

/// The whole transaction: the table is made (if missing), deleted and written again, all
/// at once.
pub fn ruleset_json(d: &Desired) -> Value {
    let mut cmds = vec![
        json!({"add": {"table": table()}}),
        json!({"delete": {"table": table()}}),
        json!({"add": {"table": table()}}),
        chain("ports", None),
        chain("prerouting", Some(("nat", "prerouting", -100))),
        chain("output", Some(("nat", "output", -100))),
        chain("postrouting", Some(("nat", "postrouting", 100))),
        chain("forward", Some(("filter", "forward", 0))),
        chain("guard", Some(("filter", "prerouting", -300))),
        rule(
            "prerouting",
            vec![local_daddr(), json!({"jump": {"target": "ports"}})],
        ),
        rule(
            "output",
            vec![local_daddr(), json!({"jump": {"target": "ports"}})],
        ),
    ];
    let loopback = Subnet::new(Ipv4Addr::new(127, 0, 0, 0), 8);
    for p in &d.ports {
        let mut e = Vec::new();
        if let Some(ip) = p.host_ip {
            e.push(eq(field("ip", "daddr"), json!(ip.to_string())));
        }
        e.push(eq(field(&p.proto, "dport"), json!(p.host_port)));
        e.push(json!({"dnat": {"addr": p.container_ip.to_string(), "port": p.container_port}}));
        cmds.push(rule("ports", e));
    }
    for b in &d.bridges {
        let br = json!(b.bridge);
        if b.masquerade && !b.internal {
            cmds.push(rule(
                "postrouting",
                vec![
                    eq(field("ip", "saddr"), prefix(&b.subnet)),
                    ne(meta("oifname"), br.clone()),
                    json!({"masquerade": null}),
                ],
            ));
        }
        cmds.push(rule(
            "postrouting",
            vec![
                eq(meta("oifname"), br.clone()),
                eq(field("ip", "saddr"), prefix(&loopback)),
                json!({"masquerade": null}),
            ],
        ));
        cmds.push(rule(
            "postrouting",
            vec![
                eq(meta("oifname"), br.clone()),
                eq(field("ip", "saddr"), prefix(&b.subnet)),
                // A bit test ("in"), not equality: the status has other bits set too.
                json!({"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}),
                json!({"masquerade": null}),
            ],
        ));
        cmds.push(rule(
            "guard",
            vec![
                eq(meta("iifname"), br.clone()),
                eq(field("ip", "daddr"), prefix(&loopback)),
                json!({"drop": null}),
            ],
        ));
        for expr in forward_drops(b, &d.bridges) {
            cmds.push(rule("forward", expr));
        }
    }
    cmds.extend(ipv6_commands(d));
    json!({"nftables": cmds})
}

/// The forward chain's drops for one bridge (the same for both families): an internal
/// network's traffic kept on its bridge, and no traffic from it to another bridge.
fn forward_drops(b: &BridgeRules, all: &[BridgeRules]) -> Vec<Vec<Value>> {
    let br = json!(b.bridge);
    let drop = json!({"drop": null});
    let mut out = Vec::new();
    if b.internal {
        out.push(vec![
            eq(meta("iifname"), br.clone()),
            ne(meta("oifname"), br.clone()),
            drop.clone(),
        ]);
        out.push(vec![
            eq(meta("oifname"), br.clone()),
            ne(meta("iifname"), br.clone()),
            drop.clone(),
        ]);
    }
    for other in all.iter().filter(|o| o.bridge != b.bridge) {
        out.push(vec![
            eq(meta("iifname"), br.clone()),
            eq(meta("oifname"), json!(other.bridge)),
            drop.clone(),
        ]);
    }
    out
}

/// The `ip6 berth` table: masquerade out of IPv6 subnets, isolation, internal networks.
/// Written in the same transaction as the IPv4 one.
fn ipv6_commands(d: &Desired) -> Vec<Value> {
    let t = json!({"family": "ip6", "name": TABLE});
    let chain6 = |name: &str, kind: (&str, &str, i32)| {
        json!({"add": {"chain": {"family": "ip6", "table": TABLE, "name": name,
            "type": kind.0, "hook": kind.1, "prio": kind.2, "policy": "accept"}}})
    };
    let rule6 = |chain: &str, expr: Vec<Value>| json!({"add": {"rule": {"family": "ip6", "table": TABLE, "chain": chain, "expr": expr}}});
    let mut cmds = vec![
        json!({"add": {"table": t.clone()}}),
        json!({"delete": {"table": t.clone()}}),
        json!({"add": {"table": t}}),
        chain6("postrouting", ("nat", "postrouting", 100)),
        chain6("forward", ("filter", "forward", 0)),
    ];
    let v6: Vec<&BridgeRules> = d.bridges.iter().filter(|b| b.subnet6.is_some()).collect();
    for b in &v6 {
        let s6 = b.subnet6.expect("filtered");
        let br = json!(b.bridge);
        if b.masquerade && !b.internal {
            cmds.push(rule6(
                "postrouting",
                vec![
                    eq(
                        field("ip6", "saddr"),
                        json!({"prefix": {"addr": s6.addr.to_string(), "len": s6.prefix}}),
                    ),
                    ne(meta("oifname"), br.clone()),
                    json!({"masquerade": null}),
                ],
            ));
        }
        for expr in forward_drops(b, &d.bridges) {
            cmds.push(rule6("forward", expr));
        }
    }
    cmds
}

/// Replaces Berth's table with `d`, atomically (`nft -j -f -`).
pub fn apply(d: &Desired) -> Result<(), Error> {
    run(ruleset_json(d))
}

/// Removes Berth's table, if there is one.
pub fn remove() -> Result<(), Error> {
    let t6 = json!({"family": "ip6", "name": TABLE});
    run(json!({"nftables": [
        {"add": {"table": table()}},
        {"delete": {"table": table()}},
        {"add": {"table": t6.clone()}},
        {"delete": {"table": t6}},
    ]}))
}

fn run(v: Value) -> Result<(), Error> {
    // Through the crate's schema: a rule it cannot type is a bug caught before nft runs.
    let typed: Nftables = serde_json::from_value(v)
        .map_err(|e| Error::System(format!("building the nftables ruleset: {e}")))?;
    nftables::helper::apply_ruleset(&typed).map_err(|e| Error::System(format!("nft: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> Desired {
        Desired {
            bridges: vec![
                BridgeRules {
                    bridge: "berth0".into(),
                    subnet: "172.17.0.0/16".parse().unwrap(),
                    subnet6: Some("fd00:77::/64".parse().unwrap()),
                    internal: false,
                    masquerade: true,
                },
                BridgeRules {
                    bridge: "berth-1a2b3c4d5".into(),
                    subnet: "172.18.0.0/16".parse().unwrap(),
                    subnet6: None,
                    internal: true,
                    masquerade: true,
                },
            ],
            ports: vec![PortRule {
                proto: "tcp".into(),
                host_ip: Some(Ipv4Addr::LOCALHOST),
                host_port: 8080,
                container_ip: Ipv4Addr::new(172, 17, 0, 2),
                container_port: 80,
            }],
        }
    }

    #[test]
    fn the_ruleset_types_through_the_nftables_schema() {
        let v = ruleset_json(&desired());
        let typed: Nftables = serde_json::from_value(v.clone()).expect("schema");
        assert!(!typed.objects.is_empty());
        let text = v.to_string();
        assert!(
            text.contains(r#""dnat":{"addr":"172.17.0.2","port":80}"#),
            "{text}"
        );
        // The internal network gets no masquerade out of its subnet.
        let masq_out = |subnet: &str| {
            v["nftables"].as_array().unwrap().iter().any(|c| {
                let e = c["add"]["rule"]["expr"].to_string();
                e.contains(subnet) && e.contains("masquerade") && e.contains(r#""op":"!=""#)
            })
        };
        assert!(masq_out("172.17.0.0"));
        assert!(!masq_out("172.18.0.0"));
        // Isolation both ways between the two bridges.
        let drops = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| {
                c["add"]["rule"]["chain"] == "forward" && c["add"]["rule"]["family"] == "ip"
            })
            .count();
        assert_eq!(
            drops, 4,
            "two isolation rules and two for the internal network"
        );
        // IPv6: the v6 subnet masqueraded out, isolated from the other bridge.
        let v6 = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["add"]["rule"]["family"] == "ip6")
            .count();
        assert_eq!(v6, 2);
        assert!(text.contains("fd00:77::"), "{text}");
    }

    #[test]
    fn an_empty_state_is_still_a_complete_table() {
        let v = ruleset_json(&Desired::default());
        let cmds = v["nftables"].as_array().unwrap();
        assert_eq!(cmds[1]["delete"]["table"]["name"], "berth");
        assert!(serde_json::from_value::<Nftables>(v.clone()).is_ok());
    }
}
