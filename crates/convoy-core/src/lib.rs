//! The model shared by the data plane and the control plane, without I/O.
//!
//! - [`ServerState`]: live per-server state (connections, health, admin
//!   state, counters) in atomics, keyed by a stable (pool, name) id and
//!   carried from one snapshot to the next so a reload loses nothing.
//! - [`PoolRuntime`]: a pool's servers plus its selection tables, which the
//!   control plane rebuilds (and swaps in) on any health or admin change.
//! - [`Snapshot`]: the immutable config and pools the data plane reads
//!   through `ArcSwap::load()`, with no lock on the hot path.
#![forbid(unsafe_code)]

pub mod access;
pub mod admission;
pub mod clock;
pub mod context;
pub mod control;
pub mod events;
pub mod hist;
pub mod listener;
pub mod local;
pub mod pool;
pub mod query;
pub mod state;

pub use listener::ListenerRuntime;
pub use pool::{PoolRuntime, Tables};
pub use state::{AdminState, ServerState};

use std::collections::HashMap;
use std::sync::Arc;

use convoy_config::Config;

/// What the data plane reads: the config in force and the pools built
/// from it.
#[derive(Debug)]
pub struct Snapshot {
    /// Config this snapshot was built from.
    pub config: Arc<Config>,
    /// Pools by name.
    pub pools: PoolMap,
}

/// Pools by name, hashed by [`NameHasher`]: every request looks its pool
/// up, and the names are the operator's, not a client's (std's SipHash
/// guards against keys an attacker picks, at several times the cost).
pub type PoolMap = HashMap<String, Arc<PoolRuntime>, std::hash::BuildHasherDefault<NameHasher>>;

/// FNV-1a over the bytes, then a murmur3 finalizer.
#[derive(Default)]
pub struct NameHasher(u64);

impl std::hash::Hasher for NameHasher {
    fn finish(&self) -> u64 {
        convoy_balance::hash::fmix64(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

impl Snapshot {
    /// Builds the pools of `config`, reusing the live state of servers that
    /// existed in `previous` (same pool, same name).
    pub fn build(config: Arc<Config>, previous: Option<&Snapshot>) -> Snapshot {
        let pools = config
            .pools
            .iter()
            .map(|(name, pool)| {
                let prev = previous.and_then(|p| p.pools.get(name));
                (
                    name.clone(),
                    Arc::new(PoolRuntime::new(name, pool, prev.map(|p| p.as_ref()))),
                )
            })
            .collect();
        Snapshot { config, pools }
    }
}

#[cfg(test)]
mod name_hasher_tests {
    use super::NameHasher;
    use std::hash::BuildHasher;

    #[test]
    fn names_hash_apart_and_the_same_name_alike() {
        let b = std::hash::BuildHasherDefault::<NameHasher>::default();
        let names: Vec<String> = (0..1000).map(|i| format!("pool-{i}")).collect();
        let mut seen = std::collections::HashSet::new();
        for n in &names {
            assert_eq!(b.hash_one(n), b.hash_one(n.clone()));
            seen.insert(b.hash_one(n));
        }
        assert_eq!(seen.len(), names.len(), "no two of 1000 names collide");
        // "ab" + "c" and "a" + "bc" as strings differ by their terminator.
        assert_ne!(b.hash_one(("ab", "c")), b.hash_one(("a", "bc")));
    }
}
