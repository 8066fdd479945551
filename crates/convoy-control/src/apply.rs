//! Reloads and every other change of config: the diff between the config
//! in force and the new one ([`diff`], a list of [`Change`]s, pure), and
//! [`Node::apply`], which applies it. A reload of the file and every
//! operator change (server admin state and weight, route classes) take
//! this one path: the operator's changes are kept as [`Overrides`],
//! applied on top of the file's config, and the result is applied like a
//! reload. Listeners are bound before anything changes, so a bind or
//! certificate error refuses the whole change and leaves no trace.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use convoy_config::{CheckKind, Config, Listener};
use convoy_core::control::{Answer, Applied, CmdError, CmdErrorKind, Reply};
use convoy_core::{AdminState, ListenerRuntime, Snapshot};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::error::report;
use crate::listeners::Prepared;
use crate::node::{Node, NodeState, ServerKey};

/// Operator changes made through the admin API. They are applied on top
/// of the file's config at every reload, so a reload does not undo them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Server admin state: (enabled, drain).
    pub(crate) server_admin: HashMap<ServerKey, (bool, bool)>,
    pub(crate) server_weight: HashMap<ServerKey, u32>,
    /// (listener, route) → (priority, cost).
    pub(crate) route: HashMap<(String, String), (Option<u8>, Option<u32>)>,
    pub(crate) listener_admin: HashMap<String, AdminState>,
    /// What each server's agent says (`[pools.NAME.agent]`), on top of
    /// the operator's changes; not handed over on an upgrade (the agents
    /// say it again).
    pub(crate) agent: HashMap<ServerKey, convoy_health::app::AgentSays>,
}

fn admin_of(s: &str) -> Option<AdminState> {
    match s {
        "enabled" => Some(AdminState::Enabled),
        "draining" => Some(AdminState::Draining),
        "disabled" => Some(AdminState::Disabled),
        _ => None,
    }
}

impl Overrides {
    /// For a process that takes over (binary upgrade).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "server_admin": self.server_admin.iter().map(|((p, s), (e, d))| serde_json::json!([p, s, e, d])).collect::<Vec<_>>(),
            "server_weight": self.server_weight.iter().map(|((p, s), w)| serde_json::json!([p, s, w])).collect::<Vec<_>>(),
            "route": self.route.iter().map(|((l, r), (p, c))| serde_json::json!([l, r, p, c])).collect::<Vec<_>>(),
            "listener_admin": self.listener_admin.iter().map(|(l, a)| serde_json::json!([l, a.as_str()])).collect::<Vec<_>>(),
        })
    }

    /// What [`Overrides::to_json`] wrote; entries that do not read are
    /// skipped.
    pub(crate) fn from_json(v: &serde_json::Value) -> Overrides {
        let rows = |k: &str| v[k].as_array().cloned().unwrap_or_default();
        let text = |r: &serde_json::Value, i: usize| r[i].as_str().map(String::from);
        let mut o = Overrides::default();
        for r in rows("server_admin") {
            if let (Some(p), Some(s), Some(e), Some(d)) =
                (text(&r, 0), text(&r, 1), r[2].as_bool(), r[3].as_bool())
            {
                o.server_admin.insert((p, s), (e, d));
            }
        }
        for r in rows("server_weight") {
            if let (Some(p), Some(s), Some(w)) = (text(&r, 0), text(&r, 1), r[2].as_u64()) {
                o.server_weight.insert((p, s), w as u32);
            }
        }
        for r in rows("route") {
            if let (Some(l), Some(n)) = (text(&r, 0), text(&r, 1)) {
                let p = r[2].as_u64().map(|p| p.min(7) as u8);
                let c = r[3].as_u64().map(|c| c.max(1) as u32);
                o.route.insert((l, n), (p, c));
            }
        }
        for r in rows("listener_admin") {
            if let (Some(l), Some(a)) = (text(&r, 0), r[1].as_str().and_then(admin_of)) {
                o.listener_admin.insert(l, a);
            }
        }
        o
    }

    /// The file's config with the operator's changes.
    pub fn apply(&self, base: &Config) -> Config {
        let mut c = base.clone();
        for (pname, pool) in c.pools.iter_mut() {
            for s in pool.servers.iter_mut() {
                let key = (pname.clone(), s.name.clone());
                if let Some((enabled, drain)) = self.server_admin.get(&key) {
                    s.enabled = *enabled;
                    s.drain = *drain;
                }
                if let Some(w) = self.server_weight.get(&key) {
                    s.weight = *w;
                }
                if let Some(a) = self.agent.get(&key) {
                    agent_layer(s, a);
                }
            }
        }
        for l in c.listeners.iter_mut() {
            for r in l.routes.iter_mut() {
                if let Some((p, cost)) = self.route.get(&(l.name.clone(), r.name.clone())) {
                    if let Some(p) = p {
                        r.priority = *p;
                    }
                    if let Some(cost) = cost {
                        r.cost = *cost;
                    }
                }
            }
        }
        c
    }
}

/// What a server's agent says, applied over the operator's state: a
/// weight as a share of the weight in force (0 %: no new traffic),
/// `drain`/`maint` (no new traffic), `down` (no traffic: as disabled).
fn agent_layer(s: &mut convoy_config::Server, a: &convoy_health::app::AgentSays) {
    if let Some(p) = a.weight_percent {
        if p == 0 {
            s.drain = true;
        } else {
            s.weight = (u64::from(s.weight) * u64::from(p) / 100).clamp(1, 10_000) as u32;
        }
    }
    if a.drain == Some(true) {
        s.drain = true;
    }
    if a.up == Some(false) {
        s.enabled = false;
    }
}

/// One difference between two configs. Listeners and pools are matched
/// by name, servers by (pool, name): a renamed one is removed and added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A listener only the new config has.
    ListenerAdded(String),
    /// A listener only the old config has.
    ListenerRemoved(String),
    /// A listener whose settings (address, routes, limits, TLS, ...)
    /// changed: it restarts on the same sockets.
    ListenerChanged(String),
    /// A pool only the new config has.
    PoolAdded(String),
    /// A pool only the old config has.
    PoolRemoved(String),
    /// A pool whose own settings (health, algorithm, queue, ...) changed.
    PoolChanged(String),
    /// A server only the new config has; `pool_existed` when its pool
    /// is not new (the server then starts slowly).
    ServerAdded {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
        /// Its pool is in the old config too.
        pool_existed: bool,
    },
    /// A server only the old config has (its pool may be gone too).
    ServerRemoved {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
    },
    /// A server's admin state (`enabled`, `drain`) changed.
    ServerAdmin {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
        /// Before.
        from: AdminState,
        /// After.
        to: AdminState,
    },
    /// A server's weight changed.
    ServerWeight {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
        /// Before.
        from: u32,
        /// After.
        to: u32,
    },
    /// Another setting of a server changed (address, zone, priority,
    /// tier, standby, max_in_flight).
    ServerChanged {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
    },
}

/// A server's admin state as its config sets it.
pub(crate) fn admin_state(s: &convoy_config::Server) -> AdminState {
    if !s.enabled {
        AdminState::Disabled
    } else if s.drain {
        AdminState::Draining
    } else {
        AdminState::Enabled
    }
}

/// What changes from `old` to `new`: listeners in the new config's order
/// then the removed ones, pools and their servers in name order (servers
/// in config order, removed ones first).
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    for l in &new.listeners {
        match old.listeners.iter().find(|o| o.name == l.name) {
            None => out.push(Change::ListenerAdded(l.name.clone())),
            Some(o) if o != l => out.push(Change::ListenerChanged(l.name.clone())),
            Some(_) => {}
        }
    }
    for o in &old.listeners {
        if !new.listeners.iter().any(|l| l.name == o.name) {
            out.push(Change::ListenerRemoved(o.name.clone()));
        }
    }
    let names: std::collections::BTreeSet<&String> =
        old.pools.keys().chain(new.pools.keys()).collect();
    for name in names {
        let (o, n) = (old.pools.get(name), new.pools.get(name));
        match (o, n) {
            (None, Some(_)) => out.push(Change::PoolAdded(name.clone())),
            (Some(_), None) => out.push(Change::PoolRemoved(name.clone())),
            (Some(o), Some(n)) if !same_settings(o, n) => {
                out.push(Change::PoolChanged(name.clone()))
            }
            _ => {}
        }
        let none = Vec::new();
        let old_servers = o.map_or(&none, |p| &p.servers);
        let new_servers = n.map_or(&none, |p| &p.servers);
        server_diff(name, old_servers, new_servers, o.is_some(), &mut out);
    }
    out
}

/// A pool's own settings, its servers aside.
fn same_settings(a: &convoy_config::Pool, b: &convoy_config::Pool) -> bool {
    let strip = |p: &convoy_config::Pool| convoy_config::Pool {
        servers: Vec::new(),
        ..p.clone()
    };
    strip(a) == strip(b)
}

fn server_diff(
    pool: &str,
    old: &[convoy_config::Server],
    new: &[convoy_config::Server],
    pool_existed: bool,
    out: &mut Vec<Change>,
) {
    let key = |s: &convoy_config::Server| (pool.to_string(), s.name.clone());
    // By name: a pool of thousands of servers is compared in linear time.
    fn by_name(v: &[convoy_config::Server]) -> HashMap<&str, usize> {
        v.iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect()
    }
    let (old_at, new_at) = (by_name(old), by_name(new));
    for o in old {
        if !new_at.contains_key(o.name.as_str()) {
            let (pool, server) = key(o);
            out.push(Change::ServerRemoved { pool, server });
        }
    }
    for n in new {
        let (pool, server) = key(n);
        let Some(o) = old_at.get(n.name.as_str()).map(|&i| &old[i]) else {
            out.push(Change::ServerAdded {
                pool,
                server,
                pool_existed,
            });
            continue;
        };
        let (from, to) = (admin_state(o), admin_state(n));
        if from != to {
            let (pool, server) = (pool.clone(), server.clone());
            out.push(Change::ServerAdmin {
                pool,
                server,
                from,
                to,
            });
        }
        if o.weight != n.weight {
            let (pool, server) = (pool.clone(), server.clone());
            let (from, to) = (o.weight, n.weight);
            out.push(Change::ServerWeight {
                pool,
                server,
                from,
                to,
            });
        }
        let rest = |s: &convoy_config::Server| convoy_config::Server {
            enabled: true,
            drain: false,
            weight: 1,
            ..s.clone()
        };
        if rest(o) != rest(n) {
            out.push(Change::ServerChanged { pool, server });
        }
    }
}

/// Names of the listeners that stop: removed or changed.
fn stopping(changes: &[Change]) -> HashSet<&str> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::ListenerRemoved(n) | Change::ListenerChanged(n) => Some(n.as_str()),
            _ => None,
        })
        .collect()
}

/// Names of the listeners that start: added or changed.
fn starting(changes: &[Change]) -> HashSet<&str> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::ListenerAdded(n) | Change::ListenerChanged(n) => Some(n.as_str()),
            _ => None,
        })
        .collect()
}

impl Node {
    /// SIGHUP or the admin API's reload: reads the file, applies the
    /// operator's changes on top, and applies the result. An invalid file
    /// is refused and the running config stays in force.
    pub fn reload_file(&mut self) -> Reply {
        if self.drain.is_some() || matches!(self.state, NodeState::Draining) {
            warn!(event = "reload_refused", reason = "node is drain-stopping");
            return Err(self.refused(CmdErrorKind::Conflict, "the node is drain-stopping"));
        }
        if self.state == NodeState::Suspended {
            warn!(event = "reload_refused", reason = "node is suspended");
            return Err(self.refused(
                CmdErrorKind::Conflict,
                "the node is suspended: resume it first",
            ));
        }
        let Some(path) = self.path.clone() else {
            warn!(event = "reload_refused", reason = "no config file");
            return Err(self.refused(
                CmdErrorKind::Conflict,
                "the node runs without a config file",
            ));
        };
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                error!(event = "reload_refused", file = %path.display(), error = %e, "invalid config: the running config stays in force");
                return Err(self.refused(CmdErrorKind::Invalid, e.to_string()));
            }
        };
        if new.admin != self.base.admin {
            warn!(
                event = "admin_config_ignored",
                "the [admin] section changed: it takes effect at the next start"
            );
        }
        let cfg = self.overrides.apply(&new);
        let origin = format!("file {}", path.display());
        let r = self.apply(cfg, &origin)?;
        // Only a config that was applied becomes the base that later
        // admin changes build on; a refused one leaves no trace.
        self.base = new;
        Ok(r)
    }

    /// Counts a refused reload.
    fn refused(&mut self, kind: CmdErrorKind, msg: impl Into<String>) -> CmdError {
        self.reloads_refused += 1;
        CmdError::new(kind, msg)
    }

    /// Applies the file's config with the operator's changes `ov`; they
    /// are kept only if the result was applied (a refused change is not
    /// remembered for the next reload).
    pub(crate) fn apply_overrides(&mut self, ov: Overrides) -> Reply {
        let cfg = ov.apply(&self.base);
        let r = self.apply(cfg, "admin")?;
        self.overrides = ov;
        Ok(r)
    }

    /// Applies a new config: the [`diff`] between the config in force and
    /// `new` is applied to the running listeners, pools and servers; live
    /// state carries over. Used by reloads and by every admin change.
    pub fn apply(&mut self, new: Config, origin: &str) -> Reply {
        let old = self.snap();
        let changes = diff(&old.config, &new);
        if self.state == NodeState::Stopped || self.state == NodeState::Draining {
            // Not serving: the new config is stored; `start` binds it.
            // Connections still draining follow server changes (a server
            // disabled or removed now has its connections closed).
            let snap = Arc::new(Snapshot::build(Arc::new(new), Some(&old)));
            self.snapshot.store(Arc::clone(&snap));
            self.server_changes(&old, &snap, &changes);
            self.sync_probes();
            self.cluster_after_apply(&old.config, &snap.config);
            self.reloads_applied += 1;
            info!(event = "reload_applied", origin, serving = false);
            return Ok(Answer::Applied(Applied::Stored));
        }
        // Listeners: bind new and changed ones first (a changed listener
        // takes over its old sockets), so a bind error refuses the whole
        // reload before anything changes.
        let bound = self.bind_starting(&new, &changes, origin)?;
        self.reload_certificates(&changes, origin)?;
        let new = Arc::new(new);
        self.conns.set_max(new.node.max_connections);
        let snap = Arc::new(Snapshot::build(Arc::clone(&new), Some(&old)));
        self.snapshot.store(Arc::clone(&snap));
        self.switch_listeners(&changes, bound);
        self.server_changes(&old, &snap, &changes);
        self.sync_probes();
        self.reapply_listener_admin();
        // Caches of listeners that are gone, or no longer cache, go too.
        self.caches.retain(|name, _| {
            new.listeners
                .iter()
                .any(|l| &l.name == name && l.cache.is_some())
        });
        self.cluster_after_apply(&old.config, &new);
        self.reloads_applied += 1;
        self.start_converging();
        info!(
            event = "reload_applied",
            origin,
            listeners = self.listeners.len(),
            pools = snap.pools.len()
        );
        Ok(Answer::Applied(Applied::Serving {
            listeners: self.listeners.len(),
            pools: snap.pools.len(),
        }))
    }

    /// Binds the listeners that start (added or changed), or refuses.
    fn bind_starting(
        &mut self,
        new: &Config,
        changes: &[Change],
        origin: &str,
    ) -> Result<Vec<(Listener, Prepared)>, CmdError> {
        let starting = starting(changes);
        let mut bound = Vec::new();
        for l in &new.listeners {
            if !starting.contains(l.name.as_str()) {
                continue;
            }
            match self.bind_listener(l) {
                Ok(b) => bound.push((l.clone(), b)),
                Err(e) => {
                    let msg = format!("listener {}: {}", l.name, report(&e));
                    error!(event = "reload_refused", origin, error = %msg, "cannot bind: the running config stays in force");
                    return Err(self.refused(CmdErrorKind::Failed, msg));
                }
            }
        }
        Ok(bound)
    }

    /// Unchanged TLS listeners read their certificate files again: all
    /// are read and checked before any one switches, so a refused
    /// reload changes no certificate.
    fn reload_certificates(&mut self, changes: &[Change], origin: &str) -> Result<(), CmdError> {
        let stopping = stopping(changes);
        let mut certs = Vec::new();
        for r in &self.listeners {
            let Some((t, _)) = &r.tls else { continue };
            if stopping.contains(r.rt.cfg.name.as_str()) {
                continue;
            }
            match t.prepare() {
                Ok(p) => certs.push((Arc::clone(t), p)),
                Err(e) => {
                    let msg = format!("listener {}: tls.{e}", r.rt.cfg.name);
                    error!(event = "reload_refused", origin, error = %msg, "the running config stays in force");
                    return Err(self.refused(CmdErrorKind::Invalid, msg));
                }
            }
        }
        for (t, p) in certs {
            t.commit(p);
        }
        Ok(())
    }

    /// Stops the listeners that are removed or changed and starts the
    /// ones just bound; a changed listener's counters and per-client
    /// state carry over. Unchanged listeners keep running, untouched.
    fn switch_listeners(&mut self, changes: &[Change], bound: Vec<(Listener, Prepared)>) {
        let stopping = stopping(changes);
        let (gone, kept): (Vec<_>, Vec<_>) = self
            .listeners
            .drain(..)
            .partition(|r| stopping.contains(r.rt.cfg.name.as_str()));
        let mut replaced: HashMap<String, Arc<ListenerRuntime>> = HashMap::new();
        for r in gone {
            info!(event = "listener_stopped", listener = %r.rt.cfg.name);
            let _ = r.stop.send(true);
            r.rt.wake_connections();
            replaced.insert(r.rt.cfg.name.clone(), Arc::clone(&r.rt));
            // Its open connections still count for drain-stop and stop.
            self.retired.push(r.rt);
        }
        self.listeners = kept;
        for (l, b) in bound {
            let prev = replaced.get(&l.name).cloned();
            let r = self.spawn_listener(&l, b, prev.as_deref());
            self.listeners.push(r);
        }
    }

    /// Applies the servers' changes between two snapshots: servers that
    /// left have their connections closed, admin changes are reported
    /// (disable closes connections, enable restarts slow start), new
    /// servers of existing pools start slowly, down servers of pools
    /// without probes get a retry, and every pool's tables are rebuilt.
    fn server_changes(&mut self, old: &Snapshot, snap: &Snapshot, changes: &[Change]) {
        let server = |s: &Snapshot, pool: &str, name: &str| {
            s.pools
                .get(pool)
                .and_then(|p| p.server(name))
                .map(|e| Arc::clone(&e.state))
        };
        for c in changes {
            match c {
                Change::ServerRemoved { pool, server: name } => {
                    info!(event = "server_removed", pool = %pool, server = %name);
                    if let Some(s) = server(old, pool, name) {
                        s.close_connections();
                    }
                }
                Change::ServerAdmin {
                    pool,
                    server: name,
                    from,
                    to,
                } => {
                    info!(event = "server_admin", pool = %pool, server = %name, from = from.as_str(), to = to.as_str());
                    let Some(s) = server(snap, pool, name) else {
                        continue;
                    };
                    match to {
                        AdminState::Enabled => s.restart_slow_start(),
                        // Disabled means no traffic at all: open
                        // connections close now (drain lets them finish).
                        AdminState::Disabled => s.kill_all(),
                        AdminState::Draining => {}
                    }
                }
                Change::ServerAdded {
                    pool,
                    server: name,
                    pool_existed,
                } => {
                    info!(event = "server_added", pool = %pool, server = %name);
                    if let (true, Some(s)) = (*pool_existed, server(snap, pool, name)) {
                        s.restart_slow_start();
                    }
                }
                _ => {}
            }
        }
        for p in snap.pools.values() {
            for s in &p.servers {
                if p.cfg.health.check == CheckKind::None && !s.state.is_up() {
                    let at = Instant::now() + p.cfg.passive.retry_after.get();
                    let key = (p.name.clone(), s.cfg.name.clone());
                    self.passive_retry.entry(key).or_insert(at);
                }
            }
            p.rebuild();
        }
    }

    /// Logs the admin states a (re)load starts with, for servers that are
    /// not enabled.
    pub(crate) fn note_admin_changes(&mut self) {
        let snap = self.snap();
        for pool in snap.pools.values() {
            for s in &pool.servers {
                let a = s.state.admin();
                if a != AdminState::Enabled {
                    info!(event = "server_admin", pool = %pool.name, server = %s.cfg.name, state = a.as_str());
                }
            }
        }
    }
}
