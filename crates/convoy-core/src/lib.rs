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
    pub pools: HashMap<String, Arc<PoolRuntime>>,
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
