//! The node: the [`Node`] struct that holds everything the control plane
//! owns (the snapshot it stores, the running listeners, the probe tasks,
//! the operator's overrides, the drain and standby bookkeeping, the
//! caches), its serving state ([`NodeState`]), and small accessors that
//! the other modules share. The node is driven by one task (see
//! [`crate::run`]): it is the only writer of server health and admin
//! state, of the pools' tables and of the snapshot.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use convoy_config::{CheckKind, Config};
use convoy_core::control::Answer;
pub use convoy_core::control::NodeState;
use convoy_core::events::EventRing;
use convoy_core::hist::Reading;
use convoy_core::{query, ListenerRuntime, Snapshot};
use convoy_l4::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::apply::Overrides;
use crate::listeners::RunningListener;

/// A server's stable id: (pool name, server name).
pub(crate) type ServerKey = (String, String);

/// A running probe task and what it probes with.
pub(crate) struct Probe {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) cfg: convoy_config::Health,
    pub(crate) task: JoinHandle<()>,
}

/// The control plane of one node.
pub struct Node {
    /// The config file (reloads read it again); none for `convoy demo`.
    pub(crate) path: Option<PathBuf>,
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) listeners: Vec<RunningListener>,
    pub(crate) probes: HashMap<ServerKey, Probe>,
    /// Agent tasks (`[pools.NAME.agent]`), with the address and settings
    /// they ask with.
    pub(crate) agents:
        HashMap<ServerKey, (std::net::SocketAddr, convoy_config::Agent, JoinHandle<()>)>,
    /// Bumped to close every connection of the node.
    pub(crate) kill: watch::Sender<u64>,
    /// What every data-plane task shares.
    pub(crate) ctx: Context,
    pub(crate) health_tx: mpsc::UnboundedSender<convoy_health::Report>,
    /// (pool, zone) pairs whose every server is down.
    pub(crate) zones_down: HashSet<(String, String)>,
    pub(crate) zone_down_events: u64,
    pub(crate) draining_since: HashMap<ServerKey, Instant>,
    pub(crate) drain_reported: HashSet<ServerKey>,
    /// Servers of `check = "none"` pools taken down by passive detection,
    /// and when they are tried again.
    pub(crate) passive_retry: HashMap<ServerKey, Instant>,
    /// Listeners removed or replaced by a reload, kept until their last
    /// connection ends.
    pub(crate) retired: Vec<Arc<ListenerRuntime>>,
    /// Standby switch per pool.
    pub(crate) standby: HashMap<String, convoy_balance::hysteresis::Hysteresis>,
    /// Serving state (WLBS: converging, converged, draining, stopped,
    /// suspended).
    pub(crate) state: NodeState,
    /// Until when the node reports "converging" (health checks had no
    /// chance to run yet).
    pub(crate) converging_until: Instant,
    /// A drain-stop in progress: its deadline, and whether the process
    /// exits at its end (signals) or stays stopped (admin API).
    pub(crate) drain: Option<(Instant, bool)>,
    /// The config as last loaded from the file (or given at start); the
    /// config in force is this with `overrides` applied.
    pub(crate) base: Config,
    /// Changes made through the admin API, kept across reloads.
    pub(crate) overrides: Overrides,
    pub(crate) reloads_applied: u64,
    pub(crate) reloads_refused: u64,
    pub(crate) started: Instant,
    pub(crate) events: Arc<EventRing>,
    /// Latency histograms of each server as read at the start of the
    /// current window (for recent p50/p99), and when the window started.
    pub(crate) window: (Instant, HashMap<ServerKey, Reading>),
    pub(crate) prev_window: HashMap<ServerKey, Reading>,
    /// Sockets taken over from the process this one replaces.
    pub(crate) inherited: crate::handover::Inherited,
    /// A duplicate of the admin API's socket, for a later upgrade.
    pub(crate) admin_fd: Option<(std::net::SocketAddr, std::os::fd::OwnedFd)>,
    /// Connections open over the node (`node.max_connections`).
    pub(crate) conns: Arc<convoy_core::listener::NodeConns>,
    /// The admin API's task: stopped when the process is about to exit
    /// (drain-stop by signal or upgrade), so that its socket is free for
    /// the next process and requests reach only the one that stays.
    pub(crate) admin_task: Option<JoinHandle<()>>,
    /// Response caches by listener name, kept across reloads while their
    /// settings stay the same.
    pub(crate) caches:
        HashMap<String, (convoy_config::CacheSettings, Arc<convoy_http::cache::Cache>)>,
    /// The link to the cluster agent (`[cluster]`), none when alone.
    pub(crate) cluster: Option<crate::cluster::ClusterLink>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("state", &self.state)
            .field("listeners", &self.listeners.len())
            .field("overrides", &self.overrides)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// The snapshot in force.
    pub fn snap(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The node's serving state.
    pub fn state(&self) -> NodeState {
        self.state
    }

    /// The operator's changes in force.
    pub fn overrides(&self) -> &Overrides {
        &self.overrides
    }

    /// The addresses the running listeners are bound to, by listener name
    /// (empty for a stopped listener).
    pub fn bound_addresses(&self) -> Vec<(String, Vec<std::net::SocketAddr>)> {
        self.listeners
            .iter()
            .map(|l| (l.rt.cfg.name.clone(), l.sockets.addresses()))
            .collect()
    }

    pub(crate) fn serving(&self) -> bool {
        matches!(self.state, NodeState::Converging | NodeState::Converged)
    }

    pub(crate) fn state_answer(&self) -> Answer {
        Answer::State { state: self.state }
    }

    /// Open connections and flows, including those of listeners a reload
    /// stopped.
    pub fn active(&self) -> u64 {
        let live: u64 = self.listeners.iter().map(|l| l.rt.counters().active).sum();
        let retired: u64 = self.retired.iter().map(|l| l.counters().active).sum();
        live + retired
    }

    /// The query view with the node's state and recent latency quantiles.
    pub fn query(&self) -> query::Query {
        let snap = self.snap();
        let rts: Vec<Arc<ListenerRuntime>> =
            self.listeners.iter().map(|l| Arc::clone(&l.rt)).collect();
        let mut q = query::query_with(&snap, &rts, &self.prev_window);
        q.state = self.state.as_str().to_string();
        q.cluster = self.cluster_state().map(String::from);
        q
    }

    /// Logs the query view (SIGUSR2).
    pub(crate) fn log_query(&self) {
        match serde_json::to_string(&self.query()) {
            Ok(j) => info!(event = "query", state = %j),
            Err(e) => warn!(error = %e, "cannot serialize query"),
        }
    }

    /// Reports "converging" until every pool's health checks had time to
    /// take each server up or down (interval × max(rise, fall)).
    pub(crate) fn start_converging(&mut self) {
        let snap = self.snap();
        let wait = snap
            .pools
            .values()
            .filter(|p| p.cfg.health.check != CheckKind::None)
            .map(|p| p.cfg.health.interval.get() * p.cfg.health.rise.max(p.cfg.health.fall))
            .max()
            .unwrap_or_default();
        self.converging_until = Instant::now() + wait;
        if matches!(self.state, NodeState::Converging | NodeState::Converged) {
            self.state = if wait.is_zero() {
                NodeState::Converged
            } else {
                NodeState::Converging
            };
        }
    }
}
