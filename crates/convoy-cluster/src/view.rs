//! The cluster as one node sees it, computed from the live members (the
//! membership protocol's) and the docs they published, with no I/O and
//! no clock: every node holding the same docs computes the same states,
//! the same owners of every flow bucket and the same verdict on every
//! server. This is what makes the cluster work without a dispatcher.
//!
//! - A member's state is what its doc says, except: no doc yet is
//!   `joining`; a config that differs from the majority's is `mismatched`;
//!   of two members with the same name or priority, the one that started
//!   later is `conflict`.
//! - This node is `converged` when every live member has published a doc
//!   and every one that matches the majority sees the same live members.
//! - The candidates for flows are the live members that are converging
//!   or converged (not draining, mismatched, conflicting or left), unless
//!   fewer than `min_members` members are live: then none.
//! - A candidate that sees every server of a listener down (its own
//!   checks: it may be cut off from them) owns none of that listener's
//!   buckets, unless every candidate is in that case.
//! - A server is down for the cluster when at least half of the live,
//!   matching members see it down.

use std::collections::{BTreeMap, BTreeSet};

use convoy_balance::hash::hash64;

use crate::buckets::{self, Candidate};
use crate::doc::{Commands, MemberState, NodeDoc};

/// A live member as the membership protocol reports it.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its cluster address.
    pub addr: std::net::SocketAddr,
    /// Its latest doc, once one arrived.
    pub doc: Option<NodeDoc>,
}

/// A listener's kind of flow split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerRule {
    /// Listener name.
    pub name: String,
    /// `mode = "single"`: every flow to the highest-priority candidate.
    pub single: bool,
    /// The servers its pools hold, as (pool, server): a member that sees
    /// every one of them down takes none of its flows (unless every
    /// candidate is in that case).
    pub servers: Vec<(String, String)>,
}

/// One member in the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    /// Name (the address while no doc arrived).
    pub name: String,
    /// Cluster address.
    pub addr: std::net::SocketAddr,
    /// Priority (0 while unknown).
    pub priority: u32,
    /// State as this node sees it.
    pub state: MemberState,
    /// Whole config fingerprint (0 while unknown).
    pub fingerprint: u64,
    /// Its open connections, as it last said.
    pub connections: u64,
    /// The latest operator command it has merged (ms of its stamp).
    pub commands_ms: u64,
    /// This node.
    pub me: bool,
}

/// The cluster as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct View {
    /// Every live member, this node included, by name.
    pub members: Vec<MemberView>,
    /// This node's state.
    pub state: Option<MemberState>,
    /// The majority's config fingerprint.
    pub majority: u64,
    /// The config sections where this node differs from the majority.
    pub differs: Vec<String>,
    /// The candidates for flows, by name (sorted).
    pub candidates: Vec<String>,
    /// Per listener: the owner of each bucket (index into `candidates`).
    /// Shared with the previous view when the candidates, their weights
    /// and the rules are the same (computing owners costs
    /// buckets × candidates hashes; docs arrive every second).
    pub owners: std::sync::Arc<BTreeMap<String, Vec<Option<u16>>>>,
    /// What the owners were computed from (candidates, priorities,
    /// weights, rules), hashed.
    pub owners_of: u64,
    /// Servers down for the cluster, as (pool, server).
    pub down: BTreeSet<(String, String)>,
    /// The operator commands in force.
    pub commands: Commands,
    /// Hash of the live members' names as this node sees them.
    pub live: u64,
}

impl View {
    /// Buckets of `listener` owned by `name`.
    pub fn owned(&self, listener: &str, name: &str) -> usize {
        let Some(i) = self.candidates.iter().position(|c| c == name) else {
            return 0;
        };
        self.owners
            .get(listener)
            .map_or(0, |o| o.iter().filter(|x| **x == Some(i as u16)).count())
    }
}

/// The hash of a set of member names (order does not matter).
pub fn live_hash<'a>(names: impl Iterator<Item = &'a str>) -> u64 {
    let mut v: Vec<&str> = names.collect();
    v.sort_unstable();
    v.dedup();
    hash64(v.join("\n").as_bytes(), 0x6c69_7665)
}

/// Computes the view from this node's own doc (its `state` field says
/// only whether it drains or left; the rest is computed), the live peers
/// and the listeners' rules.
pub fn compute(
    me: &NodeDoc,
    me_addr: std::net::SocketAddr,
    peers: &[Peer],
    min_members: usize,
    rules: &[ListenerRule],
    prev: Option<&View>,
) -> View {
    let docs: Vec<&NodeDoc> = std::iter::once(me)
        .chain(peers.iter().filter_map(|p| p.doc.as_ref()))
        .collect();
    let live = live_hash(
        std::iter::once(me.name.as_str()).chain(
            peers
                .iter()
                .filter_map(|p| p.doc.as_ref().map(|d| d.name.as_str())),
        ),
    );
    let majority = majority(&docs);
    let conflicted = conflicts(&docs);
    let judged = |d: &NodeDoc| -> MemberState {
        if conflicted.contains(&(d.name.clone(), d.epoch)) {
            MemberState::Conflict
        } else if d.fingerprint.whole() != majority {
            MemberState::Mismatched
        } else {
            d.state
        }
    };
    // This node's own state.
    let own = match judged(me) {
        s @ (MemberState::Conflict
        | MemberState::Mismatched
        | MemberState::Draining
        | MemberState::Left) => s,
        _ => {
            let all_docs = peers.iter().all(|p| p.doc.is_some());
            let agree = peers
                .iter()
                .filter_map(|p| p.doc.as_ref())
                .filter(|d| d.fingerprint.whole() == majority)
                .all(|d| d.view == live);
            if all_docs && agree {
                MemberState::Converged
            } else {
                MemberState::Converging
            }
        }
    };
    let mut members = vec![MemberView {
        name: me.name.clone(),
        addr: me_addr,
        priority: me.priority,
        state: own,
        fingerprint: me.fingerprint.whole(),
        connections: me.connections,
        commands_ms: me.commands.latest_ms(),
        me: true,
    }];
    for p in peers {
        members.push(match &p.doc {
            None => MemberView {
                name: p.addr.to_string(),
                addr: p.addr,
                priority: 0,
                state: MemberState::Joining,
                fingerprint: 0,
                connections: 0,
                commands_ms: 0,
                me: false,
            },
            Some(d) => MemberView {
                name: d.name.clone(),
                addr: p.addr,
                priority: d.priority,
                state: judged(d),
                fingerprint: d.fingerprint.whole(),
                connections: d.connections,
                commands_ms: d.commands.latest_ms(),
                me: false,
            },
        });
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    // Candidates: live members that may take flows.
    let enough = min_members == 0 || members.len() >= min_members;
    let mut cands: Vec<(&NodeDoc, MemberState)> = docs
        .iter()
        .map(|d| (*d, if d.name == me.name { own } else { judged(d) }))
        .filter(|(_, s)| enough && matches!(s, MemberState::Converging | MemberState::Converged))
        .collect();
    cands.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    cands.dedup_by(|a, b| a.0.name == b.0.name);
    let candidates: Vec<String> = cands.iter().map(|(d, _)| d.name.clone()).collect();
    let weights = effective_weights(&cands, rules);
    let owners_of = {
        let mut text = String::new();
        for r in rules {
            text.push_str(&format!("{}:{};", r.name, r.single));
        }
        for ((d, _), w) in cands.iter().zip(&weights) {
            text.push_str(&format!("{}:{}:{:?};", d.name, d.priority, w));
        }
        hash64(text.as_bytes(), 0x6f77_6e65)
    };
    let owners = match prev {
        Some(p) if p.owners_of == owners_of => std::sync::Arc::clone(&p.owners),
        _ => std::sync::Arc::new(owners_for(&cands, &weights, rules)),
    };
    // Health: down when at least half of the live, matching members say
    // so.
    let reporters: Vec<&NodeDoc> = docs
        .iter()
        .copied()
        .filter(|d| {
            !conflicted.contains(&(d.name.clone(), d.epoch)) && d.fingerprint.whole() == majority
        })
        .collect();
    let mut votes: BTreeMap<&(String, String), usize> = BTreeMap::new();
    for d in &reporters {
        for s in d.down.iter().collect::<BTreeSet<_>>() {
            *votes.entry(s).or_default() += 1;
        }
    }
    let down = votes
        .into_iter()
        .filter(|(_, n)| 2 * n >= reporters.len())
        .map(|(s, _)| s.clone())
        .collect();
    let mut commands = me.commands.clone();
    for d in &docs {
        commands.merge(&d.commands);
    }
    let differs = if me.fingerprint.whole() == majority {
        Vec::new()
    } else {
        docs.iter()
            .find(|d| d.fingerprint.whole() == majority)
            .map(|d| me.fingerprint.differences(&d.fingerprint))
            .unwrap_or_default()
    };
    View {
        members,
        state: Some(own),
        majority,
        differs,
        candidates,
        owners,
        owners_of,
        down,
        commands,
        live,
    }
}

/// Each candidate's weight for each listener (in `rules`' order): its
/// load weight, or 0 when it sees every server of the listener down and
/// some other candidate does not.
fn effective_weights(cands: &[(&NodeDoc, MemberState)], rules: &[ListenerRule]) -> Vec<Vec<u32>> {
    let cut_off = |d: &NodeDoc, r: &ListenerRule| {
        !r.servers.is_empty() && r.servers.iter().all(|s| d.down.contains(s))
    };
    let mut out: Vec<Vec<u32>> = cands
        .iter()
        .map(|(d, _)| {
            rules
                .iter()
                .map(|r| d.weights.get(&r.name).copied().unwrap_or(100))
                .collect()
        })
        .collect();
    for (j, r) in rules.iter().enumerate() {
        let cut: Vec<bool> = cands.iter().map(|(d, _)| cut_off(d, r)).collect();
        if cut.iter().any(|c| !c) {
            for (w, c) in out.iter_mut().zip(&cut) {
                if *c {
                    w[j] = 0;
                }
            }
        }
    }
    out
}

/// The owner of every bucket of every listener, among `cands` (sorted by
/// name) with their `weights` (see [`effective_weights`]).
fn owners_for(
    cands: &[(&NodeDoc, MemberState)],
    weights: &[Vec<u32>],
    rules: &[ListenerRule],
) -> BTreeMap<String, Vec<Option<u16>>> {
    let mut owners = BTreeMap::new();
    for (j, r) in rules.iter().enumerate() {
        let o = if r.single {
            // Wholly to the candidate of the highest priority (among
            // those with a weight: a member cut off from the servers
            // passes).
            let top = cands
                .iter()
                .zip(weights)
                .enumerate()
                .filter(|(_, (_, w))| w[j] > 0)
                .min_by_key(|(_, ((d, _), _))| d.priority)
                .map(|(i, _)| i as u16);
            vec![top; buckets::BUCKETS]
        } else {
            let c: Vec<Candidate> = cands
                .iter()
                .zip(weights)
                .map(|((d, _), w)| Candidate {
                    name: d.name.clone(),
                    weight: w[j],
                })
                .collect();
            buckets::owners(&r.name, &c)
        };
        owners.insert(r.name.clone(), o);
    }
    owners
}

/// The fingerprint most members have; a tie goes to the one of the member
/// with the highest priority (lowest number) among the tied.
fn majority(docs: &[&NodeDoc]) -> u64 {
    let mut count: BTreeMap<u64, (usize, u32)> = BTreeMap::new();
    for d in docs {
        let e = count.entry(d.fingerprint.whole()).or_insert((0, u32::MAX));
        e.0 += 1;
        e.1 = e.1.min(d.priority);
    }
    count
        .into_iter()
        .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1)))
        .map_or(0, |(f, _)| f)
}

/// Members refused for a duplicate name or priority: of each pair, the
/// one that started later (the higher epoch; on a tie, the greater name).
fn conflicts(docs: &[&NodeDoc]) -> BTreeSet<(String, u64)> {
    let mut out = BTreeSet::new();
    for (i, a) in docs.iter().enumerate() {
        for b in &docs[i + 1..] {
            let same_name = a.name == b.name && a.epoch != b.epoch;
            let same_priority = a.priority == b.priority && a.name != b.name;
            if same_name || same_priority {
                let newer = if (a.epoch, &a.name) > (b.epoch, &b.name) {
                    a
                } else {
                    b
                };
                out.insert((newer.name.clone(), newer.epoch));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;

    const ME: std::net::SocketAddr = std::net::SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)),
        7946,
    );

    fn doc(name: &str, priority: u32, fp: u64) -> NodeDoc {
        let mut f = Fingerprint::default();
        f.sections.insert("pools.p".into(), fp);
        NodeDoc {
            name: name.into(),
            priority,
            epoch: 1,
            version: 1,
            state: MemberState::Converging,
            fingerprint: f,
            weights: BTreeMap::new(),
            down: Vec::new(),
            view: 0,
            commands: Commands::default(),
            connections: 0,
        }
    }

    #[test]
    fn a_member_cut_off_from_every_server_gives_up_its_buckets() {
        let mut docs = settled(vec![doc("a", 1, 7), doc("b", 2, 7), doc("c", 3, 7)]);
        // a sees both web servers and the db server down; b sees one web
        // server down.
        docs[0].down = vec![
            ("d".into(), "1".into()),
            ("w".into(), "1".into()),
            ("w".into(), "2".into()),
        ];
        docs[1].down = vec![("w".into(), "1".into())];
        let peers: Vec<Peer> = docs[1..].iter().cloned().map(peer).collect();
        let v = compute(&docs[0], ME, &peers, 0, &rules(), None);
        assert_eq!(v.candidates, ["a", "b", "c"], "a stays a member");
        assert_eq!(v.owned("web", "a"), 0);
        assert_eq!(v.owned("web", "b") + v.owned("web", "c"), buckets::BUCKETS);
        assert!(v.owned("web", "b") > 0, "one server is enough");
        // single: the highest priority that reaches a server.
        assert_eq!(v.owned("db", "b"), buckets::BUCKETS);
        // When every member is cut off, the buckets stay spread.
        for d in &mut docs {
            d.down = vec![("w".into(), "1".into()), ("w".into(), "2".into())];
        }
        let peers: Vec<Peer> = docs[1..].iter().cloned().map(peer).collect();
        let w = compute(&docs[0], ME, &peers, 0, &rules(), Some(&v));
        assert!(w.owned("web", "a") > 1000, "{}", w.owned("web", "a"));
        assert_ne!(w.owners_of, v.owners_of);
    }

    fn peer(d: NodeDoc) -> Peer {
        Peer {
            addr: "127.0.0.9:7946".parse().unwrap(),
            doc: Some(d),
        }
    }

    fn rules() -> Vec<ListenerRule> {
        vec![
            ListenerRule {
                name: "web".into(),
                single: false,
                servers: vec![("w".into(), "1".into()), ("w".into(), "2".into())],
            },
            ListenerRule {
                name: "db".into(),
                single: true,
                servers: vec![("d".into(), "1".into())],
            },
        ]
    }

    /// The docs of a cluster whose members all see the same members.
    fn settled(mut docs: Vec<NodeDoc>) -> Vec<NodeDoc> {
        let live = live_hash(docs.iter().map(|d| d.name.as_str()));
        for d in &mut docs {
            d.view = live;
        }
        docs
    }

    #[test]
    fn every_node_computes_the_same_owners_and_converges() {
        let docs = settled(vec![doc("a", 1, 7), doc("b", 2, 7), doc("c", 3, 7)]);
        let views: Vec<View> = (0..3)
            .map(|i| {
                let peers: Vec<Peer> = docs
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, d)| peer(d.clone()))
                    .collect();
                compute(&docs[i], ME, &peers, 0, &rules(), None)
            })
            .collect();
        for v in &views {
            assert_eq!(v.state, Some(MemberState::Converged));
            assert_eq!(v.owners, views[0].owners);
            assert_eq!(v.candidates, ["a", "b", "c"]);
        }
        let total: usize = ["a", "b", "c"]
            .iter()
            .map(|n| views[0].owned("web", n))
            .sum();
        assert_eq!(total, buckets::BUCKETS);
        // `single` goes wholly to the highest priority.
        assert_eq!(views[0].owned("db", "a"), buckets::BUCKETS);
    }

    #[test]
    fn a_member_whose_view_differs_keeps_the_others_converging() {
        let mut docs = settled(vec![doc("a", 1, 7), doc("b", 2, 7)]);
        docs[1].view = 99;
        let v = compute(&docs[0], ME, &[peer(docs[1].clone())], 0, &rules(), None);
        assert_eq!(v.state, Some(MemberState::Converging));
        // No doc yet: joining, and not converged either.
        let v = compute(
            &docs[0],
            ME,
            &[Peer {
                addr: "127.0.0.2:1".parse().unwrap(),
                doc: None,
            }],
            0,
            &rules(),
            None,
        );
        let other = v.members.iter().find(|m| !m.me).unwrap();
        assert_eq!(
            (other.name.as_str(), other.state),
            ("127.0.0.2:1", MemberState::Joining)
        );
        assert_eq!(v.state, Some(MemberState::Converging));
    }

    #[test]
    fn the_odd_config_is_isolated_and_named() {
        let docs = settled(vec![doc("a", 1, 7), doc("b", 2, 7), doc("c", 3, 8)]);
        let v = compute(
            &docs[2],
            ME,
            &[peer(docs[0].clone()), peer(docs[1].clone())],
            0,
            &rules(),
            None,
        );
        assert_eq!(v.state, Some(MemberState::Mismatched));
        assert_eq!(v.differs, ["pools.p"]);
        assert_eq!(v.candidates, ["a", "b"]);
        let v = compute(
            &docs[0],
            ME,
            &[peer(docs[1].clone()), peer(docs[2].clone())],
            0,
            &rules(),
            None,
        );
        assert_eq!(v.state, Some(MemberState::Converged));
        assert_eq!(
            v.members.iter().find(|m| m.name == "c").unwrap().state,
            MemberState::Mismatched
        );
        assert_eq!(v.owned("web", "c"), 0);
    }

    #[test]
    fn of_two_nodes_with_one_priority_the_later_is_refused() {
        let mut docs = settled(vec![doc("a", 1, 7), doc("b", 1, 7)]);
        docs[1].epoch = 2;
        let v = compute(&docs[1], ME, &[peer(docs[0].clone())], 0, &rules(), None);
        assert_eq!(v.state, Some(MemberState::Conflict));
        let v = compute(&docs[0], ME, &[peer(docs[1].clone())], 0, &rules(), None);
        assert_eq!(v.state, Some(MemberState::Converged));
        assert_eq!(v.candidates, ["a"]);
    }

    #[test]
    fn below_min_members_no_flow_is_claimed() {
        let docs = settled(vec![doc("a", 1, 7), doc("b", 2, 7)]);
        let v = compute(&docs[0], ME, &[peer(docs[1].clone())], 3, &rules(), None);
        assert!(v.candidates.is_empty());
        assert!(v.owners["web"].iter().all(Option::is_none));
    }

    #[test]
    fn a_server_is_down_when_half_the_members_see_it_down() {
        let mut docs = settled(vec![doc("a", 1, 7), doc("b", 2, 7), doc("c", 3, 7)]);
        let s = ("p".to_string(), "s1".to_string());
        docs[0].down.push(s.clone());
        let v = compute(
            &docs[0],
            ME,
            &[peer(docs[1].clone()), peer(docs[2].clone())],
            0,
            &rules(),
            None,
        );
        assert!(v.down.is_empty(), "one of three");
        docs[1].down.push(s.clone());
        let v = compute(
            &docs[2],
            ME,
            &[peer(docs[0].clone()), peer(docs[1].clone())],
            0,
            &rules(),
            None,
        );
        assert!(v.down.contains(&s), "two of three");
    }

    #[test]
    fn a_draining_node_hands_its_buckets_over() {
        let mut docs = settled(vec![doc("a", 1, 7), doc("b", 2, 7)]);
        docs[1].state = MemberState::Draining;
        let v = compute(&docs[0], ME, &[peer(docs[1].clone())], 0, &rules(), None);
        assert_eq!(v.owned("web", "a"), buckets::BUCKETS);
        assert_eq!(v.owned("web", "b"), 0);
    }
}
