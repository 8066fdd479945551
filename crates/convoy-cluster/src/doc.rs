//! What each node publishes about itself (its [`NodeDoc`], versioned and
//! pushed to every member when it changes and to a few at random every
//! second), and the operator commands every node shares (a map of
//! last-writer-wins registers, [`Commands`]): a command given on any node
//! is merged into every node's map and re-published with it, so a node
//! that restarts or rejoins gets the current state from any other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node's serving state in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Seen by the membership protocol, its state not known yet.
    Joining,
    /// Waiting for every live member to see the same members.
    Converging,
    /// Agrees with every live member: owns its share of the flows.
    Converged,
    /// Hands its flows over and finishes its connections.
    Draining,
    /// Its config differs from the majority's: owns no flows.
    Mismatched,
    /// Another node has its name or priority and started first: owns no
    /// flows.
    Conflict,
    /// Left the cluster, or taken for dead.
    Left,
}

impl MemberState {
    /// The name used in events, the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Converging => "converging",
            MemberState::Converged => "converged",
            MemberState::Draining => "draining",
            MemberState::Mismatched => "mismatched",
            MemberState::Conflict => "conflict",
            MemberState::Left => "left",
        }
    }

    /// Every state, for metrics.
    pub const ALL: [MemberState; 7] = [
        MemberState::Joining,
        MemberState::Converging,
        MemberState::Converged,
        MemberState::Draining,
        MemberState::Mismatched,
        MemberState::Conflict,
        MemberState::Left,
    ];
}

/// What a node says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDoc {
    /// Its name.
    pub name: String,
    /// Its priority (1 highest).
    pub priority: u32,
    /// When its process started (ms since the Unix epoch): the newer of
    /// two nodes with one name or priority is the one refused.
    pub epoch: u64,
    /// Bumped at every change of the doc.
    pub version: u64,
    /// Its own view of its state (converging, converged, draining...).
    pub state: MemberState,
    /// Hash of its cluster-relevant config, per section.
    pub fingerprint: crate::fingerprint::Fingerprint,
    /// Its load weight per listener.
    pub weights: BTreeMap<String, u32>,
    /// Servers it sees down, as (pool, server).
    pub down: Vec<(String, String)>,
    /// Hash of the members it sees live (names, sorted).
    pub view: u64,
    /// The operator commands it has merged.
    pub commands: Commands,
    /// Its open connections, for `convoy ctl cluster` (load).
    pub connections: u64,
}

/// When a command was given: its issuing node's clock, made to move
/// forward past every stamp seen, and the node's name to break ties.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Milliseconds.
    pub ms: u64,
    /// The node that gave it.
    pub node: String,
}

/// Operator commands in force in the cluster: for each target (e.g.
/// `server/web/a`, `listener/web`, `node/b`), the latest value and when it
/// was given. Merging keeps the later stamp for each target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commands {
    /// Target → (value, stamp).
    pub entries: BTreeMap<String, (String, Stamp)>,
}

impl Commands {
    /// Sets `target` to `value` if `stamp` is later than what it holds;
    /// whether it changed.
    pub fn set(&mut self, target: &str, value: &str, stamp: Stamp) -> bool {
        match self.entries.get(target) {
            Some((_, s)) if *s >= stamp => false,
            _ => {
                self.entries
                    .insert(target.to_string(), (value.to_string(), stamp));
                true
            }
        }
    }

    /// Takes what `other` has later; whether anything changed.
    pub fn merge(&mut self, other: &Commands) -> bool {
        let mut changed = false;
        for (k, (v, s)) in &other.entries {
            changed |= self.set(k, v, s.clone());
        }
        changed
    }

    /// The latest stamp held (`0` when empty).
    pub fn latest_ms(&self) -> u64 {
        self.entries.values().map(|(_, s)| s.ms).max().unwrap_or(0)
    }

    /// The value given to `target`.
    pub fn get(&self, target: &str) -> Option<&str> {
        self.entries.get(target).map(|(v, _)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, node: &str) -> Stamp {
        Stamp {
            ms,
            node: node.into(),
        }
    }

    #[test]
    fn the_later_command_wins_whatever_the_order_of_merges() {
        let mut a = Commands::default();
        let mut b = Commands::default();
        assert!(a.set("server/web/s1", "drain", at(10, "a")));
        assert!(b.set("server/web/s1", "enable", at(20, "b")));
        assert!(b.set("listener/web", "disable", at(5, "b")));
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba, "merging commutes");
        assert_eq!(ab.get("server/web/s1"), Some("enable"));
        assert_eq!(ab.get("listener/web"), Some("disable"));
        assert!(!ab.merge(&a), "nothing newer");
        // Same millisecond: the node name decides, the same way everywhere.
        let mut c = Commands::default();
        c.set("x", "one", at(7, "a"));
        assert!(c.set("x", "two", at(7, "b")));
        assert!(!c.set("x", "three", at(7, "a")));
        assert_eq!(ab.latest_ms(), 20);
    }
}
