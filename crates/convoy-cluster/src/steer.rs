//! Steering client traffic to the cluster's nodes, the parts without
//! I/O: the nftables ruleset of `steering = "shared"`, the bird config
//! and the decision to announce of `steering = "ecmp"`, the commands
//! that put the virtual addresses on an interface.
//!
//! **Shared.** Every node holds the virtual addresses and sees every
//! packet for them (one MAC on a flooding segment, as WLBS does). In its
//! own table (`ip convoy`), each node accepts the packets of connections
//! it already has (conntrack), and of a new flow only the opening packet
//! whose bucket it owns: the kernel computes the bucket with `jhash` of
//! the client address (affinity `client`), its /24 (`network`), or its
//! address and port (`none`), modulo [`BUCKETS`], and the node's owned
//! buckets are a set per listener. The whole table is replaced in one
//! transaction when the owners change, so a convergence never leaves a
//! moment with half a ruleset; connections already open stay where they
//! are, only new flows follow the new owners. An owned flow is accepted
//! only while a socket listens for it (`socket transparent 0`): a node
//! whose process died drops, rather than resets, the flows the others
//! took over from it.
//!
//! **ECMP.** Each node runs bird2 with a static protocol holding the
//! virtual addresses' routes, exported to its BGP neighbors; enabling
//! that protocol announces them, disabling it withdraws them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::buckets::BUCKETS;
use crate::doc::MemberState;

/// The nftables table convoy owns (and never touches another).
pub const TABLE: &str = "convoy";

/// The seed of the bucket hash: the same on every node.
pub const SEED: u32 = 0x636f_6e76;

/// What the rules of one listener match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Listener name.
    pub listener: String,
    /// `true` for UDP, `false` for TCP (and HTTP).
    pub udp: bool,
    /// First and last port.
    pub ports: (u16, u16),
    /// The listener's address (unspecified: every virtual address).
    pub address: IpAddr,
    /// What the bucket hash covers.
    pub key: Key,
}

/// What a flow's bucket is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// The client address.
    Client,
    /// The client's /24.
    Network,
    /// The client address and port.
    Flow,
}

/// Runs of consecutive buckets, for a compact nftables set.
pub fn ranges(owned: &[u16]) -> Vec<(u16, u16)> {
    let mut v: Vec<u16> = owned.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for b in v {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == b => *hi = b,
            _ => out.push((b, b)),
        }
    }
    out
}

/// The nftables script that replaces convoy's table in one transaction:
/// the rules of each listener on the virtual addresses `vips`, and the
/// buckets this node owns per listener (`owned`; a listener missing from
/// it owns none).
pub fn nft_script(vips: &[IpAddr], rules: &[Rule], owned: &BTreeMap<String, Vec<u16>>) -> String {
    let v4: Vec<String> = vips
        .iter()
        .filter(|v| v.is_ipv4())
        .map(IpAddr::to_string)
        .collect();
    let all = format!("{{ {} }}", v4.join(", "));
    let mut s = String::new();
    // Creating then deleting makes the deletion valid whether or not the
    // table exists; the new table follows in the same transaction.
    let _ = writeln!(
        s,
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{"
    );
    for (i, r) in rules.iter().enumerate() {
        let _ = writeln!(s, "  set l{i} {{\n    type mark\n    flags interval");
        let elems: Vec<String> = ranges(owned.get(&r.listener).map_or(&[][..], Vec::as_slice))
            .into_iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        if !elems.is_empty() {
            let _ = writeln!(s, "    elements = {{ {} }}", elems.join(", "));
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(
        s,
        "  chain steer {{\n    type filter hook prerouting priority -150; policy accept;"
    );
    if !v4.is_empty() {
        let _ = writeln!(s, "    ip daddr != {all} accept");
    }
    let _ = writeln!(s, "    ct state established,related accept");
    for (i, r) in rules.iter().enumerate() {
        let daddr = if r.address.is_unspecified() {
            all.clone()
        } else {
            r.address.to_string()
        };
        let (proto, ports) = (
            if r.udp { "udp" } else { "tcp" },
            if r.ports.0 == r.ports.1 {
                r.ports.0.to_string()
            } else {
                format!("{}-{}", r.ports.0, r.ports.1)
            },
        );
        let m = format!("ip daddr {daddr} {proto} dport {ports}");
        let hash = match (r.key, r.udp) {
            (Key::Client, _) => "ip saddr".to_string(),
            (Key::Network, _) => "ip saddr & 255.255.255.0".to_string(),
            (Key::Flow, false) => "ip saddr . tcp sport".to_string(),
            (Key::Flow, true) => "ip saddr . udp sport".to_string(),
        };
        // Established flows were accepted above: what reaches here opens
        // a flow. Only a SYN may (with conntrack's loose pickup off, a
        // mid-stream packet never adopts a flow).
        let m = if r.udp {
            format!("{m} ct state new")
        } else {
            let _ = writeln!(s, "    {m} tcp flags & (syn|ack) != syn drop");
            m
        };
        let _ = writeln!(
            s,
            "    {m} meta mark set jhash {hash} mod {BUCKETS} seed {SEED:#x}\n    {m} meta mark != @l{i} drop\n    {m} socket transparent 0 accept\n    {m} drop"
        );
    }
    let _ = writeln!(s, "  }}\n}}");
    s
}

/// How long the buckets a node should own must stay the same, its view
/// converged, before it takes new ones: time for their old owners, who
/// computed the same change, to have released them.
pub const TAKE_AFTER: std::time::Duration = std::time::Duration::from_millis(300);

/// The buckets a node applies next, per listener, from those it has
/// applied (`have`) and those its view gives it (`want`, sorted): it
/// gives buckets up at once, but takes new ones only when `settled` (its
/// view converged and `want` unchanged for [`TAKE_AFTER`]), or when
/// `free(listener, bucket)` (their previous owner is gone: it cannot
/// answer). A bucket changes hands only through a moment with no owner
/// (a new flow's SYN is retransmitted), never with two (two SYN-ACKs:
/// one connection reset).
pub fn next_owned(
    have: &BTreeMap<String, Vec<u16>>,
    want: &BTreeMap<String, Vec<u16>>,
    settled: bool,
    free: impl Fn(&str, u16) -> bool,
) -> BTreeMap<String, Vec<u16>> {
    if settled {
        return want.clone();
    }
    want.iter()
        .map(|(l, w)| {
            let h = have.get(l).map_or(&[][..], Vec::as_slice);
            (
                l.clone(),
                w.iter()
                    .copied()
                    .filter(|b| h.binary_search(b).is_ok() || free(l, *b))
                    .collect(),
            )
        })
        .collect()
}

/// The DSCP a node sets on the packets it hands to its peers (a codepoint
/// of the pool for local use, RFC 2474), so that a peer that does not
/// have the connection either drops them instead of handing them on.
pub const SECOND_CHANCE_DSCP: u8 = 0x3f;

/// The nftables script of `steering = "ecmp"`: the routers send a flow
/// to any announcing node, and when their set of next hops changes some
/// established connections arrive at a node that does not have them
/// (with plain hash-threshold ECMP, up to half of them). Instead of
/// resetting them, the node hands such packets (TCP, not opening a
/// connection, unknown to its conntrack) to its `peers`, unchanged but
/// for the DSCP; the one that has the connection takes them, the others
/// drop them. New flows (SYN) and UDP are served where they arrive.
pub fn ecmp_nft_script(vips: &[IpAddr], rules: &[Rule], peers: &[IpAddr]) -> String {
    let v4: Vec<String> = vips
        .iter()
        .filter(|v| v.is_ipv4())
        .map(IpAddr::to_string)
        .collect();
    let all = format!("{{ {} }}", v4.join(", "));
    let dups: String = peers
        .iter()
        .filter(|p| p.is_ipv4())
        .map(|p| format!("dup to {p} "))
        .collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{"
    );
    let _ = writeln!(
        s,
        "  chain steer {{\n    type filter hook prerouting priority -150; policy accept;"
    );
    if !v4.is_empty() {
        let _ = writeln!(s, "    ip daddr != {all} accept");
    }
    let _ = writeln!(s, "    ct state established,related accept");
    for r in rules.iter().filter(|r| !r.udp) {
        let daddr = if r.address.is_unspecified() {
            all.clone()
        } else {
            r.address.to_string()
        };
        let ports = if r.ports.0 == r.ports.1 {
            r.ports.0.to_string()
        } else {
            format!("{}-{}", r.ports.0, r.ports.1)
        };
        let m = format!("ip daddr {daddr} tcp dport {ports}");
        let _ = writeln!(
            s,
            "    {m} tcp flags & (syn|ack) == syn accept\n    {m} ip dscp {SECOND_CHANCE_DSCP:#x} drop\n    {m} ip dscp set {SECOND_CHANCE_DSCP:#x} {dups}drop"
        );
    }
    let _ = writeln!(s, "  }}\n}}");
    s
}

/// The script that removes convoy's table (at exit).
pub fn nft_remove() -> String {
    format!("table ip {TABLE}\ndelete table ip {TABLE}\n")
}

/// The `ip` commands that put the virtual addresses on `interface`
/// (`add`, idempotent) or take them off (as host routes: /32, /128).
pub fn address_commands(vips: &[IpAddr], interface: &str, add: bool) -> Vec<Vec<String>> {
    vips.iter()
        .map(|v| {
            let len = if v.is_ipv4() { 32 } else { 128 };
            [
                "addr",
                if add { "replace" } else { "del" },
                &format!("{v}/{len}"),
                "dev",
                interface,
            ]
            .iter()
            .map(|s| (*s).to_string())
            .collect()
        })
        .collect()
}

/// What bird's config for `steering = "ecmp"` is written from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BirdSettings {
    /// bird's router id.
    pub router_id: std::net::Ipv4Addr,
    /// This node's AS.
    pub local_as: u32,
    /// (address, AS) of each router.
    pub neighbors: Vec<(IpAddr, u32)>,
    /// Hold time in seconds (≥ 3).
    pub hold_secs: u64,
    /// BFD interval in milliseconds, none without BFD.
    pub bfd_ms: Option<u64>,
    /// The virtual addresses.
    pub vips: Vec<IpAddr>,
}

/// The static protocol holding the virtual addresses of one family:
/// enabled, they are announced; disabled, withdrawn.
pub fn bird_protocol(v4: bool) -> &'static str {
    if v4 {
        "convoy_vips4"
    } else {
        "convoy_vips6"
    }
}

/// bird's config: the virtual addresses as routes of two static
/// protocols (disabled until convoy enables them), exported to each
/// neighbor of the same family with this node as next hop; nothing
/// imported, nothing written to the kernel.
pub fn bird_config(b: &BirdSettings) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by convoy (steering = \"ecmp\"); rewritten at each start."
    );
    let _ = writeln!(s, "router id {};\nprotocol device {{ }}", b.router_id);
    for v4 in [true, false] {
        let vips: Vec<&IpAddr> = b.vips.iter().filter(|v| v.is_ipv4() == v4).collect();
        if vips.is_empty() {
            continue;
        }
        let (af, len) = if v4 { ("ipv4", 32) } else { ("ipv6", 128) };
        let _ = writeln!(
            s,
            "protocol static {} {{\n  disabled;\n  {af};",
            bird_protocol(v4)
        );
        for v in vips {
            let _ = writeln!(s, "  route {v}/{len} unreachable;");
        }
        let _ = writeln!(s, "}}");
    }
    if let Some(ms) = b.bfd_ms {
        let _ = writeln!(
            s,
            "protocol bfd {{\n  interface \"*\" {{ min rx interval {ms} ms; min tx interval {ms} ms; multiplier 3; }};\n}}"
        );
    }
    for (i, (addr, asn)) in b.neighbors.iter().enumerate() {
        let v4 = addr.is_ipv4();
        let af = if v4 { "ipv4" } else { "ipv6" };
        let _ = writeln!(
            s,
            "protocol bgp router{i} {{\n  local as {};\n  neighbor {addr} as {asn};\n  hold time {};\n  connect retry time 1;\n  error wait time 1, 10;{}\n  {af} {{ import none; export where proto = \"{}\"; next hop self; }};\n}}",
            b.local_as,
            b.hold_secs,
            if b.bfd_ms.is_some() { "\n  bfd on;" } else { "" },
            bird_protocol(v4),
        );
    }
    s
}

/// Whether a node announces the virtual addresses (`steering = "ecmp"`):
/// it has converged once since it started, is a candidate for flows now
/// (`state` converging or converged: not draining, mismatched, in
/// conflict or gone), serves (not drain-stopping or stopped), and its own
/// checks see a server up. A later convergence (another node joins or
/// dies) does not withdraw: every node would at once.
pub fn announce(
    converged_once: bool,
    state: Option<MemberState>,
    serving: bool,
    any_server_up: bool,
) -> bool {
    converged_once
        && matches!(
            state,
            Some(MemberState::Converging | MemberState::Converged)
        )
        && serving
        && any_server_up
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_buckets() {
        assert_eq!(ranges(&[5, 1, 2, 3, 9, 10, 2]), [(1, 3), (5, 5), (9, 10)]);
        assert!(ranges(&[]).is_empty());
    }

    #[test]
    fn the_script_has_one_set_per_listener_and_steers_only_new_flows() {
        let vip: IpAddr = "10.88.0.100".parse().unwrap();
        let rules = vec![
            Rule {
                listener: "web".into(),
                udp: false,
                ports: (8080, 8080),
                address: vip,
                key: Key::Client,
            },
            Rule {
                listener: "dns".into(),
                udp: true,
                ports: (53, 53),
                address: "0.0.0.0".parse().unwrap(),
                key: Key::Flow,
            },
        ];
        let owned: BTreeMap<String, Vec<u16>> = [("web".to_string(), vec![0, 1, 2, 7])]
            .into_iter()
            .collect();
        let s = nft_script(&[vip], &rules, &owned);
        assert!(
            s.starts_with("table ip convoy\ndelete table ip convoy\ntable ip convoy {"),
            "{s}"
        );
        assert!(
            s.contains("set l0 {\n    type mark\n    flags interval\n    elements = { 0-2, 7 }"),
            "{s}"
        );
        assert!(
            !s.contains("set l1 {\n    type mark\n    flags interval\n    elements"),
            "dns owns none: {s}"
        );
        assert!(s.contains("ip daddr != { 10.88.0.100 } accept"), "{s}");
        assert!(s.contains("ct state established,related accept"), "{s}");
        assert!(
            s.contains("ip daddr 10.88.0.100 tcp dport 8080 tcp flags & (syn|ack) != syn drop"),
            "{s}"
        );
        assert!(s.contains("ip daddr 10.88.0.100 tcp dport 8080 meta mark set jhash ip saddr mod 4096 seed 0x636f6e76"), "{s}");
        assert!(s.contains("ip daddr { 10.88.0.100 } udp dport 53 ct state new meta mark set jhash ip saddr . udp sport mod 4096"), "{s}");
        assert!(
            s.contains("udp dport 53 ct state new meta mark != @l1 drop"),
            "{s}"
        );
        // An owned flow is taken only while a socket listens for it.
        assert!(s.contains("tcp dport 8080 socket transparent 0 accept\n    ip daddr 10.88.0.100 tcp dport 8080 drop"), "{s}");
        assert!(
            s.contains("udp dport 53 ct state new socket transparent 0 accept"),
            "{s}"
        );
    }

    #[test]
    fn buckets_are_given_up_at_once_and_taken_only_when_settled() {
        let m = |v: &[(&str, &[u16])]| -> BTreeMap<String, Vec<u16>> {
            v.iter().map(|(l, b)| (l.to_string(), b.to_vec())).collect()
        };
        let have = m(&[("web", &[1, 2, 3]), ("old", &[9])]);
        let want = m(&[("web", &[2, 3, 4, 5]), ("new", &[7])]);
        let never = |_: &str, _: u16| false;
        assert_eq!(
            next_owned(&have, &want, false, never),
            m(&[("web", &[2, 3]), ("new", &[])])
        );
        assert_eq!(next_owned(&have, &want, true, never), want);
        assert_eq!(
            next_owned(&BTreeMap::new(), &want, false, never),
            m(&[("web", &[]), ("new", &[])])
        );
        // Buckets of a node that is gone are taken at once.
        let gone = |l: &str, b: u16| l == "web" && b == 5;
        assert_eq!(
            next_owned(&have, &want, false, gone),
            m(&[("web", &[2, 3, 5]), ("new", &[])])
        );
    }

    #[test]
    fn ecmp_hands_strays_to_the_peers_once() {
        let vip: IpAddr = "10.88.0.100".parse().unwrap();
        let rules = vec![
            Rule {
                listener: "tcp".into(),
                udp: false,
                ports: (81, 81),
                address: vip,
                key: Key::Client,
            },
            Rule {
                listener: "dns".into(),
                udp: true,
                ports: (53, 53),
                address: vip,
                key: Key::Flow,
            },
        ];
        let peers: Vec<IpAddr> = vec!["10.89.0.12".parse().unwrap(), "10.89.0.13".parse().unwrap()];
        let s = ecmp_nft_script(&[vip], &rules, &peers);
        assert!(s.contains("ct state established,related accept"), "{s}");
        assert!(
            s.contains("ip daddr 10.88.0.100 tcp dport 81 tcp flags & (syn|ack) == syn accept"),
            "{s}"
        );
        assert!(s.contains("tcp dport 81 ip dscp 0x3f drop\n"), "{s}");
        assert!(
            s.contains("tcp dport 81 ip dscp set 0x3f dup to 10.89.0.12 dup to 10.89.0.13 drop"),
            "{s}"
        );
        assert!(!s.contains("udp"), "UDP is served where it arrives: {s}");
        let alone = ecmp_nft_script(&[vip], &rules, &[]);
        assert!(alone.contains("ip dscp set 0x3f drop"), "{alone}");
    }

    #[test]
    fn addresses_go_on_as_host_routes() {
        let v: Vec<IpAddr> = vec!["10.88.0.100".parse().unwrap(), "fd00::64".parse().unwrap()];
        let add = address_commands(&v, "eth0", true);
        assert_eq!(add[0], ["addr", "replace", "10.88.0.100/32", "dev", "eth0"]);
        assert_eq!(add[1], ["addr", "replace", "fd00::64/128", "dev", "eth0"]);
        assert_eq!(address_commands(&v, "lo", false)[0][1], "del");
    }

    #[test]
    fn bird_config_announces_each_family_to_its_neighbors() {
        let b = BirdSettings {
            router_id: "10.89.1.11".parse().unwrap(),
            local_as: 65001,
            neighbors: vec![("10.89.1.1".parse().unwrap(), 65000)],
            hold_secs: 3,
            bfd_ms: Some(100),
            vips: vec!["10.88.0.100".parse().unwrap()],
        };
        let c = bird_config(&b);
        assert!(c.contains("router id 10.89.1.11;"), "{c}");
        assert!(c.contains("protocol static convoy_vips4 {\n  disabled;\n  ipv4;\n  route 10.88.0.100/32 unreachable;"), "{c}");
        assert!(!c.contains("convoy_vips6 {"), "{c}");
        assert!(c.contains("min rx interval 100 ms"), "{c}");
        assert!(
            c.contains("neighbor 10.89.1.1 as 65000;\n  hold time 3;"),
            "{c}"
        );
        assert!(c.contains("bfd on;"), "{c}");
        assert!(
            c.contains(
                "ipv4 { import none; export where proto = \"convoy_vips4\"; next hop self; };"
            ),
            "{c}"
        );
        let no_bfd = bird_config(&BirdSettings { bfd_ms: None, ..b });
        assert!(!no_bfd.contains("bfd"), "{no_bfd}");
    }

    #[test]
    fn a_node_announces_only_when_converged_serving_and_healthy() {
        use MemberState::*;
        assert!(announce(true, Some(Converged), true, true));
        assert!(
            announce(true, Some(Converging), true, true),
            "a later convergence"
        );
        assert!(
            !announce(false, Some(Converging), true, true),
            "never converged yet"
        );
        for s in [Draining, Mismatched, Conflict, Left] {
            assert!(!announce(true, Some(s), true, true), "{s:?}");
        }
        assert!(!announce(true, None, true, true));
        assert!(!announce(true, Some(Converged), false, true));
        assert!(!announce(true, Some(Converged), true, false));
    }
}
