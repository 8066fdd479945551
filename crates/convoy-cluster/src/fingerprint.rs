//! The fingerprint of the cluster-relevant part of a node's config: what
//! must be the same on every node for them to split flows and agree on
//! servers (listeners with their ports, port rules and affinity, pools with
//! their algorithm and servers: names, addresses, weights, priorities,
//! tiers). Timeouts, limits, TLS files, the admin API and the node's own
//! settings may differ between nodes.
//!
//! The fingerprint is kept per section (`listeners.NAME`, `pools.NAME`)
//! so that a node whose config differs from the majority's can say which
//! key differs.

use std::collections::BTreeMap;

use convoy_balance::hash::hash64;
use convoy_config::{Config, Listener, Pool};
use serde::{Deserialize, Serialize};

/// Per-section hashes of the cluster-relevant config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Section name → hash.
    pub sections: BTreeMap<String, u64>,
}

impl Fingerprint {
    /// Of `cfg`.
    pub fn of(cfg: &Config) -> Fingerprint {
        let mut sections = BTreeMap::new();
        for l in &cfg.listeners {
            sections.insert(format!("listeners.{}", l.name), digest(&listener(l)));
        }
        for (name, p) in &cfg.pools {
            sections.insert(format!("pools.{name}"), digest(&pool(p)));
        }
        Fingerprint { sections }
    }

    /// One number for the whole.
    pub fn whole(&self) -> u64 {
        digest(&self.sections)
    }

    /// The sections that differ from `other` (missing on either side
    /// included), sorted.
    pub fn differences(&self, other: &Fingerprint) -> Vec<String> {
        let mut keys: Vec<&String> = self.sections.keys().chain(other.sections.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| self.sections.get(*k) != other.sections.get(*k))
            .cloned()
            .collect()
    }
}

fn digest<T: Serialize>(v: &T) -> u64 {
    let text = serde_json::to_vec(v).expect("config parts serialize");
    hash64(&text, 0x6669_6e67_6572)
}

fn listener(l: &Listener) -> serde_json::Value {
    serde_json::json!({
        "protocol": l.protocol,
        // The ports, not the address: each node may listen on its own
        // address (its share of a virtual address, or its own IP).
        "ports": [l.address.first, l.address.last],
        "pool": l.pool,
        "mode": l.mode,
        "affinity": l.affinity,
        "affinity_timeout": l.affinity_timeout,
        "failback": l.failback,
        "routes": l.routes.iter().map(|r| serde_json::json!({
            "name": r.name, "host": r.host, "path": r.path, "path_prefix": r.path_prefix,
            "method": r.method, "header": r.header, "cookie": r.cookie, "client": r.client,
            "pool": r.pool,
        })).collect::<Vec<_>>(),
    })
}

fn pool(p: &Pool) -> serde_json::Value {
    serde_json::json!({
        "algorithm": p.algorithm,
        "hash_on": p.hash_on,
        "sticky_cookie": p.sticky_cookie,
        "servers": p.servers.iter().map(|s| serde_json::json!({
            "name": s.name, "address": s.address, "weight": s.weight,
            "priority": s.priority, "tier": s.tier, "standby": s.standby,
            "zone": s.zone,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str, weight: u32) -> Config {
        Config::parse(
            "t",
            &format!(
                "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n{extra}\n\
                 [pools.p]\n[[pools.p.servers]]\nname = \"a\"\naddress = \"127.0.0.1:9\"\nweight = {weight}\n"
            ),
        )
        .unwrap()
    }

    fn toml_of(c: &Config) -> String {
        c.to_toml()
    }

    #[test]
    fn only_cluster_relevant_keys_count_and_the_difference_is_named() {
        let base = Fingerprint::of(&cfg("", 1));
        assert_eq!(base, Fingerprint::of(&cfg("", 1)));
        // A timeout is the node's own business, and so is the address a
        // listener binds (its ports are not).
        assert_eq!(base, Fingerprint::of(&cfg("connect_timeout = \"9s\"", 1)));
        let other_ip = Config::parse(
            "t",
            &toml_of(&cfg("", 1)).replace("127.0.0.1:80", "127.0.0.2:80"),
        )
        .unwrap();
        assert_eq!(base, Fingerprint::of(&other_ip));
        let other_port = Config::parse(
            "t",
            &toml_of(&cfg("", 1)).replace("127.0.0.1:80", "127.0.0.1:81"),
        )
        .unwrap();
        assert_eq!(
            base.differences(&Fingerprint::of(&other_port)),
            ["listeners.web"]
        );
        let heavier = Fingerprint::of(&cfg("", 2));
        assert_ne!(base.whole(), heavier.whole());
        assert_eq!(base.differences(&heavier), ["pools.p"]);
        let sticky = Fingerprint::of(&cfg("affinity = \"client\"", 1));
        assert_eq!(base.differences(&sticky), ["listeners.web"]);
    }
}
