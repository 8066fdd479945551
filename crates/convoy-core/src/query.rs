//! The `query` view of a node (WLBS `query`): listeners and pools with
//! their servers grouped by zone. Serializable; printed by the node on
//! request and, later, served by the admin API.

use serde::Serialize;

use crate::state::AdminState;
use crate::{ListenerRuntime, Snapshot};

/// Whole-node view.
#[derive(Debug, Serialize)]
pub struct Query {
    /// Node name.
    pub node: String,
    /// Serving state: converging, converged, draining, stopped, suspended.
    pub state: String,
    /// The node's state in its cluster (absent when it is alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Listeners.
    pub listeners: Vec<ListenerView>,
    /// Pools.
    pub pools: Vec<PoolView>,
    /// Errors from this node's own limits since start, by kind
    /// (descriptors, addresses, buffers, memory); only those that
    /// happened.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub local_errors: std::collections::BTreeMap<String, u64>,
}

/// One listener.
#[derive(Debug, Serialize)]
pub struct ListenerView {
    /// Name.
    pub name: String,
    /// Address.
    pub address: String,
    /// Pool.
    pub pool: String,
    /// "tcp", "udp" or "http".
    pub protocol: convoy_config::Protocol,
    /// Operator state: enabled, draining (no new connections) or disabled.
    pub admin: AdminState,
    /// Takes new connections (mode and operator state).
    pub enabled: bool,
    /// HTTP requests since start.
    pub requests: u64,
    /// Current connections or flows.
    pub active: u64,
    /// Accepted since start.
    pub accepted: u64,
    /// Refused at max_connections.
    pub refused: u64,
    /// Found no server.
    pub failed: u64,
}

/// One pool.
#[derive(Debug, Serialize)]
pub struct PoolView {
    /// Name.
    pub name: String,
    /// Servers able to take traffic.
    pub eligible: usize,
    /// HTTP requests waiting in the queue.
    pub queued: usize,
    /// Queue bound.
    pub queue_max: usize,
    /// Per-request algorithm (HTTP).
    pub algorithm: convoy_config::Algorithm,
    /// Standby servers are switched on.
    pub standby_on: bool,
    /// What serves it: "l4" (TCP/UDP listeners only), "http", "mixed", or
    /// "none" (no listener).
    pub serves: &'static str,
    /// The affinity of its TCP/UDP listeners ("none", "client",
    /// "network"), when one of them uses one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<convoy_config::Affinity>,
    /// Its `mode = "single"` listeners: the server each uses now (none
    /// before its first connection), by listener.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub single: std::collections::BTreeMap<String, Option<String>>,
    /// Servers grouped by zone, zones in name order.
    pub zones: Vec<ZoneView>,
}

/// One zone of a pool.
#[derive(Debug, Serialize)]
pub struct ZoneView {
    /// Zone name.
    pub zone: String,
    /// True when no server of the zone is up.
    pub down: bool,
    /// Servers.
    pub servers: Vec<ServerView>,
}

/// One server.
#[derive(Debug, Serialize)]
pub struct ServerView {
    /// Name.
    pub name: String,
    /// Address.
    pub address: String,
    /// Weight.
    pub weight: u32,
    /// Priority (single mode).
    pub priority: u32,
    /// Tier (HTTP).
    pub tier: u32,
    /// A standby server (HTTP).
    pub standby: bool,
    /// High-water mark (0: none).
    pub max_in_flight: u32,
    /// "up" or "down".
    pub health: &'static str,
    /// Operator state.
    pub admin: AdminState,
    /// Current connections.
    pub active: u64,
    /// Connections since start.
    pub total: u64,
    /// Connect failures and resets since start.
    pub failures: u64,
    /// HTTP requests in flight.
    pub in_flight: u64,
    /// Cost of the HTTP requests in flight.
    pub outstanding_cost: u64,
    /// HTTP requests since start.
    pub requests: u64,
    /// Latency EWMA (µs) to response headers.
    pub latency_us: f64,
    /// Median latency (µs) over the last 5-10 s (lifetime when idle).
    pub p50_us: Option<f64>,
    /// 99th percentile latency (µs), same window.
    pub p99_us: Option<f64>,
    /// Failed HTTP requests (connect, timeout, reset, 5xx) since start.
    pub errors: u64,
    /// Recent error rate (0..1).
    pub error_rate: f64,
    /// Ejected as an outlier now.
    pub ejected: bool,
    /// Bytes client→server.
    pub bytes_in: u64,
    /// Bytes server→client.
    pub bytes_out: u64,
}

/// Builds the view.
pub fn query(snap: &Snapshot, listeners: &[std::sync::Arc<ListenerRuntime>]) -> Query {
    query_with(snap, listeners, &Default::default())
}

/// Builds the view; latency quantiles cover what each server's histogram
/// recorded since the reading in `earlier` (keyed by pool and server).
pub fn query_with(
    snap: &Snapshot,
    listeners: &[std::sync::Arc<ListenerRuntime>],
    earlier: &std::collections::HashMap<(String, String), crate::hist::Reading>,
) -> Query {
    let runtimes = listeners;
    let listeners = listeners
        .iter()
        .map(|l| {
            let crate::listener::ListenerCounters {
                active,
                accepted,
                refused,
                failed,
            } = l.counters();
            ListenerView {
                name: l.cfg.name.clone(),
                address: l.cfg.address.to_string(),
                pool: l.cfg.pool.clone(),
                protocol: l.cfg.protocol,
                admin: l.admin(),
                enabled: l.takes_new(),
                requests: l.requests(),
                active,
                accepted,
                refused,
                failed,
            }
        })
        .collect();
    let mut pools: Vec<PoolView> = snap
        .pools
        .values()
        .map(|p| {
            let mut zones: std::collections::BTreeMap<&str, Vec<ServerView>> = Default::default();
            for s in &p.servers {
                let (bytes_in, bytes_out) = s.state.bytes();
                let now = s.state.latency.read();
                let window = match earlier.get(&(p.name.clone(), s.cfg.name.clone())) {
                    Some(e) if now.count > e.count => now.since(e),
                    _ => now,
                };
                let errors = crate::state::ErrorKind::ALL
                    .iter()
                    .map(|k| s.state.errors(*k))
                    .sum();
                zones.entry(&s.cfg.zone).or_default().push(ServerView {
                    name: s.cfg.name.clone(),
                    address: s.cfg.address.0.to_string(),
                    weight: s.cfg.weight,
                    priority: s.cfg.priority,
                    tier: s.cfg.tier,
                    standby: s.cfg.standby,
                    max_in_flight: s.cfg.limit(&p.cfg),
                    health: if s.state.is_up() { "up" } else { "down" },
                    admin: s.state.admin(),
                    active: s.state.active(),
                    total: s.state.total(),
                    failures: s.state.connect_failures(),
                    in_flight: s.state.in_flight(),
                    outstanding_cost: s.state.outstanding_cost(),
                    requests: s.state.requests(),
                    latency_us: s.state.qos().0,
                    p50_us: window.quantile(0.5),
                    p99_us: window.quantile(0.99),
                    errors,
                    error_rate: s.state.qos().1,
                    ejected: s.state.is_ejected(),
                    bytes_in,
                    bytes_out,
                });
            }
            let users: Vec<&std::sync::Arc<ListenerRuntime>> =
                runtimes.iter().filter(|l| l.cfg.pool == p.name).collect();
            let http = users
                .iter()
                .filter(|l| l.cfg.protocol == convoy_config::Protocol::Http)
                .count();
            let serves = match (http, users.len() - http) {
                (0, 0) => "none",
                (0, _) => "l4",
                (_, 0) => "http",
                _ => "mixed",
            };
            let l4 = || {
                users
                    .iter()
                    .filter(|l| l.cfg.protocol != convoy_config::Protocol::Http)
            };
            PoolView {
                name: p.name.clone(),
                eligible: p.tables().eligible,
                queued: p.queued(),
                queue_max: p.cfg.queue_max,
                algorithm: p.cfg.algorithm,
                standby_on: p.standby_is_on(),
                serves,
                affinity: l4()
                    .map(|l| l.cfg.affinity)
                    .find(|a| *a != convoy_config::Affinity::None)
                    .or_else(|| l4().next().map(|l| l.cfg.affinity)),
                single: l4()
                    .filter(|l| l.cfg.mode == convoy_config::FilterMode::Single)
                    .map(|l| (l.cfg.name.clone(), l.current().map(|s| s.name.to_string())))
                    .collect(),
                zones: zones
                    .into_iter()
                    .map(|(z, servers)| ZoneView {
                        zone: z.to_string(),
                        down: servers.iter().all(|s| s.health == "down"),
                        servers,
                    })
                    .collect(),
            }
        })
        .collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    Query {
        node: snap.config.node.name.clone(),
        state: String::new(),
        cluster: None,
        listeners,
        pools,
        local_errors: crate::local::counts()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.as_str().to_string(), n))
            .collect(),
    }
}
