//! The node's control plane: builds the snapshot from the config, starts
//! listeners and health probes, and is the one place where server health
//! and admin state change (probe reports, passive failures, reloads,
//! signals). After each change it rebuilds the affected pool's tables and
//! logs a structured event. The data plane only reads.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use convoy_config::{CheckKind, Config, Listener, Protocol};
use convoy_core::control::{self, CmdError, Command, ErrorKind, ListenerAction, ServerAction};
use convoy_core::events::EventRing;
use convoy_core::hist::Reading;
use convoy_core::{query, AdminState, ListenerRuntime, ServerState, Snapshot};
use convoy_l4::{Context, DataEvent};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// A listener's bound sockets, shared (`Arc`) so that a reload that changes
/// a listener's settings hands the same sockets to the new accept loops:
/// no moment without a listening socket, and no SO_REUSEPORT.
#[derive(Clone)]
enum Bound {
    Tcp(Vec<Arc<tokio::net::TcpListener>>),
    Udp(Vec<Arc<tokio::net::UdpSocket>>),
}

struct RunningListener {
    rt: Arc<ListenerRuntime>,
    stop: watch::Sender<bool>,
    sockets: Bound,
    /// TLS certificates in use (HTTPS listeners), and when the files
    /// were last checked for changes.
    tls: Option<(Arc<convoy_http::tls::TlsState>, Instant)>,
}

/// A listener ready to start: its sockets and its TLS state.
type Prepared = (Bound, Option<Arc<convoy_http::tls::TlsState>>);

type ServerKey = (String, String);

struct Probe {
    addr: std::net::SocketAddr,
    cfg: convoy_config::Health,
    task: JoinHandle<()>,
}

struct Node {
    path: Option<PathBuf>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    listeners: Vec<RunningListener>,
    probes: HashMap<ServerKey, Probe>,
    kill: watch::Sender<u64>,
    ctx: Context,
    health_tx: mpsc::UnboundedSender<convoy_health::Report>,
    zones_down: HashSet<(String, String)>,
    zone_down_events: u64,
    draining_since: HashMap<ServerKey, Instant>,
    drain_reported: HashSet<ServerKey>,
    passive_retry: HashMap<ServerKey, Instant>,
    /// Listeners removed or replaced by a reload, kept until their last
    /// connection ends.
    retired: Vec<Arc<ListenerRuntime>>,
    /// Standby switch per pool.
    standby: HashMap<String, convoy_balance::hysteresis::Hysteresis>,
    /// Serving state (WLBS: converging, converged, draining, stopped,
    /// suspended).
    state: NodeState,
    /// Until when the node reports "converging" (health checks had no
    /// chance to run yet).
    converging_until: Instant,
    /// A drain-stop in progress: its deadline, and whether the process
    /// exits at its end (signals) or stays stopped (admin API).
    drain: Option<(Instant, bool)>,
    /// The config as last loaded from the file (or given at start); the
    /// config in force is this with `overrides` applied.
    base: Config,
    /// Changes made through the admin API, kept across reloads.
    overrides: Overrides,
    reloads_applied: u64,
    reloads_refused: u64,
    started: Instant,
    events: Arc<EventRing>,
    /// Latency histograms of each server as read at the start of the
    /// current window (for recent p50/p99), and when the window started.
    window: (Instant, HashMap<ServerKey, Reading>),
    prev_window: HashMap<ServerKey, Reading>,
    /// Sockets taken over from the process this one replaces.
    inherited: crate::upgrade::Inherited,
    /// A duplicate of the admin API's socket, for a later upgrade.
    admin_fd: Option<(std::net::SocketAddr, std::os::fd::OwnedFd)>,
    /// Connections open over the node (`node.max_connections`).
    conns: Arc<convoy_core::listener::NodeConns>,
    /// The admin API's task: stopped when the process is about to exit
    /// (drain-stop by signal or upgrade), so that its socket is free for
    /// the next process and requests reach only the one that stays.
    admin_task: Option<JoinHandle<()>>,
    /// Response caches by listener name, kept across reloads while their
    /// settings stay the same.
    caches: HashMap<String, (convoy_config::CacheSettings, Arc<convoy_http::cache::Cache>)>,
}

/// The node's serving state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    Converging,
    Converged,
    Draining,
    Stopped,
    Suspended,
}

impl NodeState {
    fn as_str(self) -> &'static str {
        match self {
            NodeState::Converging => "converging",
            NodeState::Converged => "converged",
            NodeState::Draining => "draining",
            NodeState::Stopped => "stopped",
            NodeState::Suspended => "suspended",
        }
    }
}

/// Operator changes made through the admin API. They are applied on top
/// of the file's config at every reload, so a reload does not undo them.
#[derive(Clone, Debug, Default)]
struct Overrides {
    /// Server admin state: (enabled, drain).
    server_admin: HashMap<ServerKey, (bool, bool)>,
    server_weight: HashMap<ServerKey, u32>,
    /// (listener, route) → (priority, cost).
    route: HashMap<(String, String), (Option<u8>, Option<u32>)>,
    listener_admin: HashMap<String, AdminState>,
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
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "server_admin": self.server_admin.iter().map(|((p, s), (e, d))| serde_json::json!([p, s, e, d])).collect::<Vec<_>>(),
            "server_weight": self.server_weight.iter().map(|((p, s), w)| serde_json::json!([p, s, w])).collect::<Vec<_>>(),
            "route": self.route.iter().map(|((l, r), (p, c))| serde_json::json!([l, r, p, c])).collect::<Vec<_>>(),
            "listener_admin": self.listener_admin.iter().map(|(l, a)| serde_json::json!([l, a.as_str()])).collect::<Vec<_>>(),
        })
    }

    /// What [`Overrides::to_json`] wrote; entries that do not read are
    /// skipped.
    fn from_json(v: &serde_json::Value) -> Overrides {
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
    fn apply(&self, base: &Config) -> Config {
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

/// Counts what the replaced process still has in flight on each server;
/// servers it no longer lists have nothing there. Queued requests are
/// woken where load went down.
fn take_foreign_load(snap: &ArcSwap<Snapshot>, load: &[(String, String, u64, u64)]) {
    let by: HashMap<(&str, &str), (u64, u64)> = load
        .iter()
        .map(|(p, s, n, c)| ((p.as_str(), s.as_str()), (*n, *c)))
        .collect();
    let snap = snap.load();
    for p in snap.pools.values() {
        let mut lower = false;
        for s in &p.servers {
            let (n, c) = by
                .get(&(p.name.as_str(), s.cfg.name.as_str()))
                .copied()
                .unwrap_or((0, 0));
            let before = s.state.in_flight();
            s.state.set_foreign_load(n, c);
            lower |= s.state.in_flight() < before;
        }
        if lower {
            p.wake_any();
        }
    }
}

/// Every server's admin state, by (pool, server).
fn admin_states(snap: &Snapshot) -> HashMap<ServerKey, AdminState> {
    snap.pools
        .values()
        .flat_map(|p| {
            p.servers
                .iter()
                .map(move |s| ((p.name.clone(), s.cfg.name.clone()), s.state.admin()))
        })
        .collect()
}

/// Binds the admin API's socket (before anything else starts, so that a
/// busy admin port is a clear start-up error).
async fn bind_admin(
    cfg: &Config,
    inherited: &mut crate::upgrade::Inherited,
) -> anyhow::Result<Option<(tokio::net::TcpListener, Option<String>)>> {
    let old = inherited.take_admin();
    if !cfg.admin.enabled {
        return Ok(None);
    }
    let token = cfg.admin.resolve_token().map_err(|e| anyhow::anyhow!(e))?;
    let l = match old {
        // The old process's admin socket, when the address stays (port 0:
        // whatever the old one got).
        Some((addr, fd)) if addr == cfg.admin.address || cfg.admin.address.port() == 0 => {
            let std = std::net::TcpListener::from(fd);
            std.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(std)?
        }
        _ => tokio::net::TcpListener::bind(cfg.admin.address)
            .await
            .with_context(|| format!("admin API: cannot bind {}", cfg.admin.address))?,
    };
    Ok(Some((l, token)))
}

/// Runs a node until it is stopped.
pub async fn run(
    cfg: Config,
    path: Option<PathBuf>,
    ring: Arc<EventRing>,
    inherited: Option<crate::upgrade::Inherited>,
) -> anyhow::Result<()> {
    let upgrading = inherited.is_some();
    let mut inherited = inherited.unwrap_or_default();
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let (admin_tx, mut admin_rx) = mpsc::channel::<control::Request>(64);
    let (kill, kill_rx) = watch::channel(0u64);
    let splice = cfg.node.splice;
    let admin = bind_admin(&cfg, &mut inherited).await?;
    let (upgrade_tx, mut upgrade_rx) = mpsc::channel::<crate::upgrade::UpgradeMsg>(4);
    // Without an upgrade, the upgrade socket is bound now (a node already
    // running on it is an error); after taking over, once this node
    // serves.
    let upgrade_listener = match (&cfg.node.upgrade_socket, upgrading) {
        (Some(p), false) => Some(crate::upgrade::bind(p)?),
        _ => None,
    };
    // After an upgrade: the operator's changes, server states and the
    // serving state of the process this one replaces.
    let handed = inherited.take_state();
    let overrides = handed
        .as_ref()
        .map(|h| Overrides::from_json(&h["overrides"]))
        .unwrap_or_default();
    let base = cfg.clone();
    let cfg = Arc::new(overrides.apply(&cfg));
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(
        Arc::clone(&cfg),
        None,
    )));
    if let Some(h) = &handed {
        let snap = snapshot.load();
        let mut taken = 0;
        for row in h["servers"].as_array().into_iter().flatten() {
            let (Some(p), Some(s)) = (row[0].as_str(), row[1].as_str()) else {
                continue;
            };
            let Ok(state) = serde_json::from_value::<convoy_core::state::Handover>(row[2].clone())
            else {
                continue;
            };
            if let Some(sv) = snap.pools.get(p).and_then(|pool| pool.server(s)) {
                sv.state.take_over(&state);
                taken += 1;
            }
        }
        for p in snap.pools.values() {
            p.rebuild();
        }
        info!(
            event = "upgrade_state_taken_over",
            servers = taken,
            "server states, operator changes and node state of the previous process"
        );
    }
    let access = match &cfg.node.access_log {
        Some(dest) => Some(Arc::new(
            convoy_core::access::AccessLog::open(dest)
                .with_context(|| format!("node.access_log: cannot open {dest}"))?,
        )),
        None => None,
    };
    let ctx = Context {
        snapshot: Arc::clone(&snapshot),
        events: events_tx,
        kill: kill_rx,
        splice,
        access,
        explain_token: admin
            .as_ref()
            .and_then(|(_, t)| t.as_deref().map(Arc::from)),
    };
    let now = Instant::now();
    let mut node = Node {
        path,
        snapshot,
        listeners: Vec::new(),
        probes: HashMap::new(),
        kill,
        ctx,
        health_tx,
        zones_down: HashSet::new(),
        zone_down_events: 0,
        draining_since: HashMap::new(),
        drain_reported: HashSet::new(),
        passive_retry: HashMap::new(),
        retired: Vec::new(),
        standby: HashMap::new(),
        state: NodeState::Converging,
        converging_until: now,
        drain: None,
        base,
        overrides,
        reloads_applied: 0,
        reloads_refused: 0,
        started: now,
        events: ring,
        window: (now, HashMap::new()),
        prev_window: HashMap::new(),
        inherited,
        admin_fd: None,
        conns: Arc::new(convoy_core::listener::NodeConns::default()),
        admin_task: None,
        caches: HashMap::new(),
    };
    node.conns.set_max(cfg.node.max_connections);
    for l in &cfg.listeners {
        let bound = node
            .bind_listener(l)
            .with_context(|| format!("listener {}", l.name))?;
        let running = node.spawn_listener(l, bound, None);
        node.listeners.push(running);
    }
    node.sync_probes();
    node.note_admin_changes();
    node.start_converging();
    if let Some((l, token)) = admin {
        use std::os::fd::AsFd;
        if let (Ok(a), Ok(fd)) = (l.local_addr(), l.as_fd().try_clone_to_owned()) {
            node.admin_fd = Some((a, fd));
        }
        let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        info!(event = "admin_listening", address = %addr, auth = token.is_some(), "admin API, metrics and dashboard");
        node.admin_task = Some(tokio::spawn(convoy_admin::serve(
            l,
            token,
            admin_tx.clone(),
        )));
    }
    node.reapply_listener_admin();
    if upgrading {
        let unused = node.inherited.unused();
        let snap = Arc::clone(&node.snapshot);
        node.inherited
            .ready(move |load| take_foreign_load(&snap, load));
        match handed.as_ref().and_then(|h| h["state"].as_str()) {
            Some("stopped") => {
                node.stop_listeners();
                node.state = NodeState::Stopped;
                info!(
                    event = "stopped",
                    by = "upgrade",
                    "the previous process was stopped: so is this one"
                );
            }
            Some("suspended") => {
                node.stop_listeners();
                node.state = NodeState::Suspended;
                warn!(
                    event = "suspended",
                    by = "upgrade",
                    "the previous process was suspended: so is this one"
                );
            }
            _ => {}
        }
        info!(
            event = "upgrade_took_over",
            unused_sockets = unused,
            "serving on the sockets of the previous process"
        );
        if let Some(p) = &cfg.node.upgrade_socket {
            // The old process's upgrade socket is no longer needed: take
            // the path over for the next upgrade.
            let _ = std::fs::remove_file(p);
            match tokio::net::UnixListener::bind(p) {
                Ok(l) => {
                    if let Err(e) = crate::upgrade::restrict(p) {
                        warn!(event = "upgrade_socket_error", error = %format!("{e:#}"));
                    }
                    tokio::spawn(crate::upgrade::serve(l, upgrade_tx.clone()));
                }
                Err(e) => warn!(event = "upgrade_socket_error", path = %p.display(), error = %e),
            }
        }
    } else if let Some(l) = upgrade_listener {
        tokio::spawn(crate::upgrade::serve(l, upgrade_tx.clone()));
    }
    info!(
        event = "ready",
        node = %cfg.node.name,
        listeners = cfg.listeners.len(),
        pools = cfg.pools.len(),
        "convoy is ready"
    );

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut drain_poll = tokio::time::interval(Duration::from_millis(20));
    // While drain-stopping, everything else goes on: health, passive
    // signals, per-server drains, and a SIGTERM/SIGINT still stops at once.
    loop {
        tokio::select! {
            Some(ev) = events_rx.recv() => node.on_data_event(ev),
            Some(r) = health_rx.recv() => node.on_health(r),
            Some(req) = admin_rx.recv() => node.on_command(req),
            Some(m) = upgrade_rx.recv() => match m {
                crate::upgrade::UpgradeMsg::Sockets(reply) => {
                    let _ = reply.send((node.sockets_for_upgrade(), node.handover_state()));
                }
                crate::upgrade::UpgradeMsg::Load(reply) => {
                    let _ = reply.send(node.own_load());
                }
                crate::upgrade::UpgradeMsg::HandedOver => node.begin_drainstop("upgrade", true),
            },
            _ = tick.tick() => node.on_tick(),
            _ = drain_poll.tick(), if node.drain.is_some() => {
                let Some((deadline, exit)) = node.drain else { continue };
                if node.active() == 0 {
                    if exit {
                        info!(event = "stopped", by = "drainstop", "node stopped after drain");
                        return Ok(());
                    }
                    node.drain = None;
                    node.state = NodeState::Stopped;
                    info!(event = "drain_finished", scope = "node", "node drained: stopped");
                } else if Instant::now() >= deadline {
                    warn!(event = "drain_timeout", connections = node.active(), "closing remaining connections");
                    if exit {
                        return node.stop("drain_timeout").await;
                    }
                    node.close_all();
                    node.drain = None;
                    node.state = NodeState::Stopped;
                }
            }
            _ = hup.recv() => { let _ = node.reload_file(); }
            _ = usr2.recv() => node.log_query(),
            _ = quit.recv() => node.begin_drainstop("SIGQUIT", true),
            _ = usr1.recv() => node.begin_drainstop("SIGUSR1", true),
            _ = term.recv() => return node.stop("SIGTERM").await,
            _ = int.recv() => return node.stop("SIGINT").await,
        }
    }
}

impl Node {
    /// Binds every socket of a listener (nothing is served yet), reusing
    /// sockets of running listeners bound to the same address.
    fn bind_listener(&mut self, l: &Listener) -> anyhow::Result<Prepared> {
        let tls = match &l.tls {
            Some(t) => {
                Some(convoy_http::tls::TlsState::new(t).map_err(|e| anyhow::anyhow!("tls.{e}"))?)
            }
            None => None,
        };
        Ok((self.bind_sockets(l)?, tls))
    }

    fn bind_sockets(&mut self, l: &Listener) -> anyhow::Result<Bound> {
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for sa in l.address.sockets() {
            let existing = self
                .listeners
                .iter()
                .find_map(|r| match (&r.sockets, l.protocol) {
                    (Bound::Tcp(v), Protocol::Tcp | Protocol::Http) => v
                        .iter()
                        .find(|s| s.local_addr().ok() == Some(sa))
                        .map(|s| Bound::Tcp(vec![Arc::clone(s)])),
                    (Bound::Udp(v), Protocol::Udp) => v
                        .iter()
                        .find(|s| s.local_addr().ok() == Some(sa))
                        .map(|s| Bound::Udp(vec![Arc::clone(s)])),
                    _ => None,
                });
            match (existing, l.protocol) {
                (Some(Bound::Tcp(mut v)), _) => tcp.append(&mut v),
                (Some(Bound::Udp(mut v)), _) => udp.append(&mut v),
                (None, Protocol::Tcp | Protocol::Http) => {
                    match self.inherited.take(crate::upgrade::Kind::Tcp, sa) {
                        Some(fd) => {
                            let std = std::net::TcpListener::from(fd);
                            std.set_nonblocking(true)?;
                            tcp.push(Arc::new(tokio::net::TcpListener::from_std(std)?));
                        }
                        None => tcp.push(convoy_l4::tcp::bind(sa)?),
                    }
                }
                (None, Protocol::Udp) => match self.inherited.take(crate::upgrade::Kind::Udp, sa) {
                    Some(fd) => {
                        let std = std::net::UdpSocket::from(fd);
                        std.set_nonblocking(true)?;
                        udp.push(Arc::new(tokio::net::UdpSocket::from_std(std)?));
                    }
                    None => udp.push(convoy_l4::udp::bind(sa)?),
                },
            }
        }
        Ok(match l.protocol {
            Protocol::Tcp | Protocol::Http => Bound::Tcp(tcp),
            Protocol::Udp => Bound::Udp(udp),
        })
    }

    /// Starts serving bound sockets.
    /// The cache for listener `l`: the running one if its settings did not
    /// change, else a new one.
    fn cache_for(&mut self, l: &Listener) -> Option<Arc<convoy_http::cache::Cache>> {
        let Some(settings) = &l.cache else {
            self.caches.remove(&l.name);
            return None;
        };
        if let Some((s, c)) = self.caches.get(&l.name) {
            if s == settings {
                return Some(Arc::clone(c));
            }
        }
        use convoy_http::cache::{Cache, CacheConfig, Eviction};
        let c = Arc::new(Cache::new(CacheConfig {
            max_bytes: settings.max_bytes,
            // An object never takes more than the whole budget.
            max_object_bytes: settings.max_object.min(settings.max_bytes),
            eviction: match settings.eviction {
                convoy_config::Eviction::Lfu => Eviction::Lfu,
                convoy_config::Eviction::Fifo => Eviction::Fifo,
                convoy_config::Eviction::Lru => Eviction::Lru,
            },
            stale_while_revalidate_default: settings.stale_while_revalidate.map(|d| d.get()),
        }));
        self.caches
            .insert(l.name.clone(), (settings.clone(), Arc::clone(&c)));
        Some(c)
    }

    /// Starts serving a listener; `previous`: the runtime of the listener
    /// it replaces, whose counters and per-client state carry over.
    fn spawn_listener(
        &mut self,
        l: &Listener,
        (bound, tls): Prepared,
        previous: Option<&ListenerRuntime>,
    ) -> RunningListener {
        let cache = self.cache_for(l);
        let mut rt = ListenerRuntime::with_node(l.clone(), Arc::clone(&self.conns));
        if let Some(p) = previous {
            rt.carry_from(p);
        }
        let rt = Arc::new(rt);
        let (stop, stop_rx) = watch::channel(false);
        match bound.clone() {
            Bound::Tcp(socks) => {
                for s in socks {
                    let addr = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    if l.protocol == Protocol::Http {
                        info!(event = "listening", listener = %l.name, protocol = "http", address = %addr);
                        let f = convoy_http::serve(
                            self.ctx.clone(),
                            Arc::clone(&rt),
                            s,
                            stop_rx.clone(),
                            tls.clone(),
                            cache.clone(),
                        );
                        tokio::spawn(f);
                    } else {
                        info!(event = "listening", listener = %l.name, protocol = "tcp", address = %addr);
                        let f = convoy_l4::tcp::serve(
                            self.ctx.clone(),
                            Arc::clone(&rt),
                            s,
                            stop_rx.clone(),
                        );
                        tokio::spawn(f);
                    }
                }
            }
            Bound::Udp(socks) => {
                for s in socks {
                    let addr = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    info!(event = "listening", listener = %l.name, protocol = "udp", address = %addr);
                    let f = convoy_l4::udp::serve(
                        self.ctx.clone(),
                        Arc::clone(&rt),
                        s,
                        stop_rx.clone(),
                    );
                    tokio::spawn(f);
                }
            }
        }
        RunningListener {
            rt,
            stop,
            sockets: bound,
            tls: tls.map(|t| (t, Instant::now())),
        }
    }

    fn snap(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Starts, restarts or stops probe tasks so there is one per server of
    /// every pool with active checks.
    fn sync_probes(&mut self) {
        let snap = self.snap();
        let mut wanted = HashSet::new();
        for (pname, pool) in &snap.pools {
            if pool.cfg.health.check == CheckKind::None {
                continue;
            }
            for s in &pool.servers {
                let key = (pname.clone(), s.cfg.name.clone());
                wanted.insert(key.clone());
                let same = self
                    .probes
                    .get(&key)
                    .is_some_and(|p| p.addr == s.cfg.address.0 && p.cfg == pool.cfg.health);
                if !same {
                    if let Some(old) = self.probes.remove(&key) {
                        old.task.abort();
                    }
                    let task = convoy_health::spawn(
                        Arc::clone(&s.state),
                        s.cfg.address.0,
                        pool.cfg.health.clone(),
                        self.health_tx.clone(),
                    );
                    self.probes.insert(
                        key,
                        Probe {
                            addr: s.cfg.address.0,
                            cfg: pool.cfg.health.clone(),
                            task,
                        },
                    );
                }
            }
        }
        self.probes.retain(|k, p| {
            let keep = wanted.contains(k);
            if !keep {
                p.task.abort();
            }
            keep
        });
    }

    fn set_health(&mut self, server: &Arc<ServerState>, up: bool, source: &str, detail: &str) {
        if !server.set_up(up) {
            return;
        }
        let snap = self.snap();
        let Some(pool) = snap.pools.get(&*server.pool) else {
            return;
        };
        let zone = pool
            .server(&server.name)
            .map(|s| s.cfg.zone.clone())
            .unwrap_or_default();
        if up {
            info!(event = "server_up", pool = %server.pool, server = %server.name, zone = %zone, source, detail, slow_start = %pool.cfg.slow_start);
        } else {
            server.set_down_reason(&format!("{source}: {detail}"));
            warn!(event = "server_down", pool = %server.pool, server = %server.name, zone = %zone, source, detail);
        }
        pool.rebuild();
        if up {
            // Requests queued while the pool was full may go to it now.
            pool.wake_any();
        }
        self.check_zone(&snap, &server.pool, &zone);
        if pool.tables().eligible == 0 {
            error!(event = "pool_down", pool = %server.pool, "no server of the pool can take traffic");
        }
    }

    fn check_zone(&mut self, snap: &Snapshot, pool_name: &str, zone: &str) {
        let Some(pool) = snap.pools.get(pool_name) else {
            return;
        };
        let members: Vec<_> = pool.servers.iter().filter(|s| s.cfg.zone == zone).collect();
        let all_down = !members.is_empty() && members.iter().all(|s| !s.state.is_up());
        let key = (pool_name.to_string(), zone.to_string());
        if all_down && self.zones_down.insert(key.clone()) {
            self.zone_down_events += 1;
            error!(event = "zone_down", pool = %pool_name, zone = %zone, servers = members.len(), zone_down_events = self.zone_down_events, "every server of the zone is down");
        } else if !all_down && self.zones_down.remove(&key) {
            info!(event = "zone_up", pool = %pool_name, zone = %zone);
        }
    }

    fn on_health(&mut self, r: convoy_health::Report) {
        self.set_health(&r.server, r.up, "active", &r.detail);
    }

    fn on_data_event(&mut self, ev: DataEvent) {
        let DataEvent::Failure { server, reason } = ev;
        let snap = self.snap();
        let Some(pool) = snap.pools.get(&*server.pool) else {
            return;
        };
        let threshold = pool.cfg.passive.failures;
        let n = server.record_failure();
        if threshold > 0 && n >= threshold && server.is_up() {
            self.set_health(&server, false, "passive", &reason);
            if pool.cfg.health.check == CheckKind::None {
                let key = (server.pool.to_string(), server.name.to_string());
                self.passive_retry
                    .insert(key, Instant::now() + pool.cfg.passive.retry_after.get());
            }
        }
    }

    fn on_tick(&mut self) {
        self.rotate_window();
        // TLS listeners that watch their files.
        for r in &mut self.listeners {
            let Some((t, checked)) = &mut r.tls else {
                continue;
            };
            let Some(every) = t.watch() else { continue };
            if checked.elapsed() < every {
                continue;
            }
            *checked = Instant::now();
            match t.reload_if_changed() {
                Some(Ok(())) => {
                    info!(event = "tls_reloaded", listener = %r.rt.cfg.name, "certificate files changed: new handshakes use them")
                }
                Some(Err(e)) => {
                    error!(event = "tls_reload_failed", listener = %r.rt.cfg.name, error = %e, "the current certificates stay")
                }
                None => {}
            }
        }
        if self.state == NodeState::Converging && Instant::now() >= self.converging_until {
            self.state = NodeState::Converged;
            info!(
                event = "converged",
                "health checks have run: node converged"
            );
        }
        let snap = self.snap();
        // Slow start: rebuild tables while a server ramps up.
        for pool in snap.pools.values() {
            if pool.tables().ramping {
                pool.rebuild();
            }
        }
        // Passive-only pools: try failed servers again after retry_after.
        let now = Instant::now();
        let due: Vec<ServerKey> = self
            .passive_retry
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.passive_retry.remove(&key);
            if let Some(s) = snap.pools.get(&key.0).and_then(|p| p.server(&key.1)) {
                let state = Arc::clone(&s.state);
                self.set_health(&state, true, "passive", "retry_after elapsed");
            }
        }
        // Drains: report when finished, force-close at drain_timeout.
        let timeout = snap.config.node.drain_timeout.get();
        for pool in snap.pools.values() {
            for s in &pool.servers {
                let key = (pool.name.clone(), s.cfg.name.clone());
                if s.state.admin() != AdminState::Draining {
                    self.draining_since.remove(&key);
                    self.drain_reported.remove(&key);
                    continue;
                }
                let since = *self.draining_since.entry(key.clone()).or_insert(now);
                if s.state.active() == 0 && s.state.in_flight() == 0 {
                    if self.drain_reported.insert(key) {
                        info!(event = "drain_finished", pool = %pool.name, server = %s.cfg.name, "server drained: no connection or request left");
                    }
                } else if now.duration_since(since) >= timeout {
                    warn!(event = "drain_timeout", pool = %pool.name, server = %s.cfg.name, closing = s.state.active(), requests = s.state.in_flight(), "drain timeout: closing remaining connections and requests");
                    s.state.kill_all();
                    self.draining_since.insert(key, now);
                }
            }
        }
        for l in &self.listeners {
            l.rt.expire_sticky();
            l.rt.expire_ips();
        }
        // Expired cache entries that can only miss go, every 10 s.
        if self.started.elapsed().as_millis() % 10_000 < 250 {
            let now = std::time::SystemTime::now();
            for (_, c) in self.caches.values() {
                c.sweep(now);
            }
        }
        for pool in snap.pools.values() {
            self.standby_tick(pool);
            // Queued requests may use a server whose ejection ended.
            if pool.queued() > 0 {
                pool.wake_any();
            }
        }
        self.retired.retain(|l| l.counters().active > 0);
    }

    /// Feeds a pool's load to its standby switch; on a change, switches
    /// the standby servers, logs and runs the hook.
    fn standby_tick(&mut self, pool: &Arc<convoy_core::PoolRuntime>) {
        let Some(sb) = &pool.cfg.standby else {
            return;
        };
        let queue = pool.queued();
        let latency_ms = pool
            .servers
            .iter()
            .filter(|s| !s.cfg.standby && s.state.is_eligible())
            .map(|s| s.state.qos().0 / 1000.0)
            .fold(0.0, f64::max);
        let over = queue > sb.queue_above
            || sb
                .latency_above
                .is_some_and(|l| latency_ms > l.get().as_secs_f64() * 1000.0);
        let lat_below = sb.latency_below.or(sb.latency_above);
        let under = queue <= sb.queue_below
            && lat_below.is_none_or(|l| latency_ms < l.get().as_secs_f64() * 1000.0);
        let value = if over {
            2.0
        } else if under {
            0.0
        } else {
            1.0
        };
        let hold = sb.hold.get().as_millis() as u64;
        let h = self
            .standby
            .entry(pool.name.clone())
            .or_insert_with(|| convoy_balance::hysteresis::Hysteresis::new(1.5, 0.5, hold));
        let Some(on) = h.observe(value, convoy_core::clock::now_ms()) else {
            return;
        };
        pool.set_standby(on);
        pool.rebuild();
        if on {
            pool.wake_any();
        }
        let names: Vec<&str> = pool
            .servers
            .iter()
            .filter(|s| s.cfg.standby)
            .map(|s| s.cfg.name.as_str())
            .collect();
        let names = names.join(",");
        let state = if on { "on" } else { "off" };
        warn!(event = if on { "standby_on" } else { "standby_off" }, pool = %pool.name, servers = %names, queue, latency_ms, "standby servers switched {state}");
        if let Some((prog, args)) = sb.hook.split_first() {
            let mut cmd = tokio::process::Command::new(prog);
            cmd.args(args)
                .env("CONVOY_POOL", &pool.name)
                .env("CONVOY_STANDBY", state)
                .env("CONVOY_SERVERS", &names)
                .env("CONVOY_QUEUE", queue.to_string())
                .env("CONVOY_LATENCY_MS", format!("{latency_ms:.1}"))
                .stdin(std::process::Stdio::null());
            let (pool_name, prog) = (pool.name.clone(), prog.clone());
            match cmd.spawn() {
                Ok(mut child) => {
                    tokio::spawn(async move {
                        let st = child.wait().await;
                        info!(event = "standby_hook", pool = %pool_name, program = %prog, status = ?st.map(|s| s.code()));
                    });
                }
                Err(e) => {
                    error!(event = "standby_hook", pool = %pool_name, program = %prog, error = %e, "cannot run the standby hook");
                }
            }
        }
    }

    /// Logs admin-state changes made by a (re)load, and starts slow start for
    /// servers that became enabled.
    fn note_admin_changes(&mut self) {
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

    /// SIGHUP or the admin API's reload: reads the file, applies the
    /// operator's changes on top, and applies the result. An invalid file
    /// is refused and the running config stays in force.
    fn reload_file(&mut self) -> control::Reply {
        if self.drain.is_some() || matches!(self.state, NodeState::Draining) {
            warn!(event = "reload_refused", reason = "node is drain-stopping");
            self.reloads_refused += 1;
            return Err(CmdError::new(
                ErrorKind::Conflict,
                "the node is drain-stopping",
            ));
        }
        if self.state == NodeState::Suspended {
            warn!(event = "reload_refused", reason = "node is suspended");
            self.reloads_refused += 1;
            return Err(CmdError::new(
                ErrorKind::Conflict,
                "the node is suspended: resume it first",
            ));
        }
        let Some(path) = self.path.clone() else {
            warn!(event = "reload_refused", reason = "no config file");
            self.reloads_refused += 1;
            return Err(CmdError::new(
                ErrorKind::Conflict,
                "the node runs without a config file",
            ));
        };
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                error!(event = "reload_refused", file = %path.display(), error = %e, "invalid config: the running config stays in force");
                self.reloads_refused += 1;
                return Err(CmdError::new(ErrorKind::Invalid, e.to_string()));
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

    /// Applies a new config: the running listeners, pools and servers are
    /// diffed against it; live state carries over. Used by reloads and by
    /// every admin change.
    fn apply(&mut self, new: Config, origin: &str) -> control::Reply {
        if self.state == NodeState::Stopped || self.state == NodeState::Draining {
            // Not serving: the new config is stored; `start` binds it.
            // Connections still draining follow server changes (a server
            // disabled or removed now has its connections closed).
            let old = self.snap();
            let before = admin_states(&old);
            let snap = Arc::new(Snapshot::build(Arc::new(new), Some(&old)));
            self.snapshot.store(Arc::clone(&snap));
            self.server_changes(&old, &snap, &before);
            self.sync_probes();
            self.reloads_applied += 1;
            info!(event = "reload_applied", origin, serving = false);
            return Ok(serde_json::json!({ "applied": true, "serving": false }));
        }
        let old = self.snap();
        let before = admin_states(&old);
        // Listeners: bind new and changed ones first (a changed listener
        // takes over its old sockets), so a bind error refuses the whole
        // reload before anything changes.
        let mut bound = Vec::new();
        for l in &new.listeners {
            if self.listeners.iter().any(|r| r.rt.cfg == *l) {
                continue;
            }
            match self.bind_listener(l) {
                Ok(b) => bound.push((l.clone(), b)),
                Err(e) => {
                    let msg = format!("listener {}: {e:#}", l.name);
                    error!(event = "reload_refused", origin, error = %msg, "cannot bind: the running config stays in force");
                    self.reloads_refused += 1;
                    return Err(CmdError::new(ErrorKind::Failed, msg));
                }
            }
        }
        // Unchanged TLS listeners read their certificate files again: all
        // are read and checked before any one switches, so a refused
        // reload changes no certificate.
        let mut certs = Vec::new();
        for r in &self.listeners {
            if let (Some((t, _)), true) = (&r.tls, new.listeners.contains(&r.rt.cfg)) {
                match t.prepare() {
                    Ok(p) => certs.push((Arc::clone(t), p)),
                    Err(e) => {
                        let msg = format!("listener {}: tls.{e}", r.rt.cfg.name);
                        error!(event = "reload_refused", origin, error = %msg, "the running config stays in force");
                        self.reloads_refused += 1;
                        return Err(CmdError::new(ErrorKind::Invalid, msg));
                    }
                }
            }
        }
        for (t, p) in certs {
            t.commit(p);
        }
        let new = Arc::new(new);
        self.conns.set_max(new.node.max_connections);
        let snap = Arc::new(Snapshot::build(Arc::clone(&new), Some(&old)));
        self.snapshot.store(Arc::clone(&snap));
        // Unchanged listeners keep running untouched; the rest stop.
        let (kept, gone): (Vec<_>, Vec<_>) = self
            .listeners
            .drain(..)
            .partition(|r| new.listeners.contains(&r.rt.cfg));
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
        self.server_changes(&old, &snap, &before);
        self.sync_probes();
        self.reapply_listener_admin();
        // Caches of listeners that are gone, or no longer cache, go too.
        self.caches.retain(|name, _| {
            new.listeners
                .iter()
                .any(|l| &l.name == name && l.cache.is_some())
        });
        self.reloads_applied += 1;
        self.start_converging();
        info!(
            event = "reload_applied",
            origin,
            listeners = self.listeners.len(),
            pools = snap.pools.len()
        );
        Ok(serde_json::json!({
            "applied": true,
            "listeners": self.listeners.len(),
            "pools": snap.pools.len(),
        }))
    }

    /// What changed for servers between two snapshots: servers that left
    /// have their connections closed, admin changes are reported (disable
    /// closes connections, enable restarts slow start), new servers start
    /// slowly, and every pool's tables are rebuilt.
    /// `before`: [`admin_states`] of `old`, read before `snap` was built
    /// (live state is shared by both snapshots).
    fn server_changes(
        &mut self,
        old: &Snapshot,
        snap: &Snapshot,
        before: &HashMap<ServerKey, AdminState>,
    ) {
        // Servers that left the config: close their connections.
        for p in old.pools.values() {
            for s in &p.servers {
                let still = snap
                    .pools
                    .get(&p.name)
                    .and_then(|np| np.server(&s.cfg.name))
                    .is_some();
                if !still {
                    info!(event = "server_removed", pool = %p.name, server = %s.cfg.name);
                    s.state.close_connections();
                }
            }
        }
        for p in snap.pools.values() {
            for s in &p.servers {
                let key = (p.name.clone(), s.cfg.name.clone());
                let now = s.state.admin();
                match before.get(&key) {
                    Some(prev) if *prev != now => {
                        info!(event = "server_admin", pool = %p.name, server = %s.cfg.name, from = prev.as_str(), to = now.as_str());
                        match now {
                            AdminState::Enabled => s.state.restart_slow_start(),
                            // Disabled means no traffic at all: open
                            // connections close now (drain lets them finish).
                            AdminState::Disabled => s.state.kill_all(),
                            AdminState::Draining => {}
                        }
                    }
                    None => {
                        info!(event = "server_added", pool = %p.name, server = %s.cfg.name);
                        if old.pools.contains_key(&p.name) {
                            s.state.restart_slow_start();
                        }
                    }
                    _ => {}
                }
                if p.cfg.health.check == CheckKind::None && !s.state.is_up() {
                    let at = Instant::now() + p.cfg.passive.retry_after.get();
                    self.passive_retry.entry(key).or_insert(at);
                }
            }
            p.rebuild();
        }
    }

    fn log_query(&self) {
        match serde_json::to_string(&self.query()) {
            Ok(j) => info!(event = "query", state = %j),
            Err(e) => warn!(error = %e, "cannot serialize query"),
        }
    }

    /// Stops every accept loop and closes the listening sockets (the
    /// loops hold the last other references).
    fn stop_listeners(&mut self) {
        for l in &mut self.listeners {
            let _ = l.stop.send(true);
            l.rt.wake_connections();
            l.sockets = match l.sockets {
                Bound::Tcp(_) => Bound::Tcp(Vec::new()),
                Bound::Udp(_) => Bound::Udp(Vec::new()),
            };
        }
    }

    /// Open connections and flows, including those of listeners a reload
    /// stopped.
    fn active(&self) -> u64 {
        let live: u64 = self.listeners.iter().map(|l| l.rt.counters().active).sum();
        let retired: u64 = self.retired.iter().map(|l| l.counters().active).sum();
        live + retired
    }

    /// Duplicates of every listening socket and of the admin socket, for
    /// a new process taking over.
    fn sockets_for_upgrade(
        &self,
    ) -> Vec<(
        crate::upgrade::Kind,
        std::net::SocketAddr,
        std::os::fd::OwnedFd,
    )> {
        use crate::upgrade::Kind;
        use std::os::fd::AsFd;
        let mut out = Vec::new();
        for l in &self.listeners {
            match &l.sockets {
                Bound::Tcp(v) => {
                    for s in v {
                        if let (Ok(a), Ok(fd)) = (s.local_addr(), s.as_fd().try_clone_to_owned()) {
                            out.push((Kind::Tcp, a, fd));
                        }
                    }
                }
                Bound::Udp(v) => {
                    for s in v {
                        if let (Ok(a), Ok(fd)) = (s.local_addr(), s.as_fd().try_clone_to_owned()) {
                            out.push((Kind::Udp, a, fd));
                        }
                    }
                }
            }
        }
        if let Some((a, fd)) = &self.admin_fd {
            if let Ok(fd) = fd.try_clone() {
                out.push((Kind::Admin, *a, fd));
            }
        }
        out
    }

    /// What a process taking over needs: the serving state, the
    /// operator's changes and every server's live state.
    fn handover_state(&self) -> serde_json::Value {
        let snap = self.snap();
        let servers: Vec<serde_json::Value> = snap
            .pools
            .values()
            .flat_map(|p| {
                p.servers
                    .iter()
                    .map(move |s| serde_json::json!([p.name, s.cfg.name, s.state.handover()]))
            })
            .collect();
        serde_json::json!({
            "state": self.state.as_str(),
            "overrides": self.overrides.to_json(),
            "servers": servers,
        })
    }

    /// What this process has in flight on each server (for the process
    /// that took over).
    fn own_load(&self) -> crate::upgrade::LoadLine {
        let snap = self.snap();
        let mut load = Vec::new();
        for p in snap.pools.values() {
            for s in &p.servers {
                let (n, cost) = s.state.own_load();
                if n > 0 {
                    load.push((p.name.clone(), s.cfg.name.clone(), n, cost));
                }
            }
        }
        crate::upgrade::LoadLine { load }
    }

    /// Stops accepting; with `exit`, the process exits when the last
    /// connection ends or at `node.drain_timeout` (signals); otherwise the
    /// node stays up, stopped (admin API).
    fn begin_drainstop(&mut self, by: &str, exit: bool) {
        if let Some((_, e)) = &mut self.drain {
            // A signal during an API drain-stop makes it exit at its end.
            *e |= exit;
            if exit {
                self.close_admin();
            }
            return;
        }
        self.stop_listeners();
        if exit {
            self.close_admin();
        }
        let timeout = self.snap().config.node.drain_timeout.get();
        self.drain = Some((Instant::now() + timeout, exit));
        if self.state != NodeState::Suspended {
            self.state = NodeState::Draining;
        }
        info!(event = "drainstop", by, connections = self.active(), timeout = %self.snap().config.node.drain_timeout, "node draining: no new connections");
    }

    /// Stops the admin API and closes its socket (this process is going
    /// away; a new one may bind or has taken over the address).
    fn close_admin(&mut self) {
        if let Some(t) = self.admin_task.take() {
            t.abort();
            info!(
                event = "admin_closed",
                "admin API closed: this process exits after its drain"
            );
        }
        self.admin_fd = None;
    }

    /// Closes every open connection of the node.
    fn close_all(&mut self) {
        self.kill.send_modify(|v| *v += 1);
        for rt in self
            .listeners
            .iter()
            .map(|l| &l.rt)
            .chain(self.retired.iter())
        {
            rt.wake_connections();
        }
    }

    async fn stop(mut self, by: &str) -> anyhow::Result<()> {
        self.stop_listeners();
        let n = self.active();
        self.close_all();
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.active() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        info!(event = "stopped", by, closed = n, "node stopped");
        Ok(())
    }

    /// Reports "converging" until every pool's health checks had time to
    /// take each server up or down (interval × max(rise, fall)).
    fn start_converging(&mut self) {
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

    /// Gives listeners their operator state again after a reload replaced
    /// their runtimes.
    fn reapply_listener_admin(&mut self) {
        for l in &self.listeners {
            if let Some(a) = self.overrides.listener_admin.get(&l.rt.cfg.name) {
                if l.rt.admin() != *a {
                    l.rt.set_admin(*a);
                }
            }
        }
    }

    /// Binds and starts every listener of the config in force (API
    /// `start` after a stop).
    fn start_serving(&mut self) -> control::Reply {
        let snap = self.snap();
        let mut bound = Vec::new();
        for l in &snap.config.listeners {
            match self.bind_listener(l) {
                Ok(b) => bound.push((l.clone(), b)),
                Err(e) => {
                    let msg = format!("listener {}: {e:#}", l.name);
                    error!(event = "start_failed", error = %msg);
                    return Err(CmdError::new(ErrorKind::Failed, msg));
                }
            }
        }
        for old in self.listeners.drain(..) {
            let _ = old.stop.send(true);
            old.rt.wake_connections();
            self.retired.push(old.rt);
        }
        for (l, b) in bound {
            let r = self.spawn_listener(&l, b, None);
            self.listeners.push(r);
        }
        self.reapply_listener_admin();
        self.state = NodeState::Converging;
        self.start_converging();
        info!(
            event = "started",
            listeners = self.listeners.len(),
            "node serving"
        );
        Ok(self.state_json())
    }

    fn state_json(&self) -> serde_json::Value {
        serde_json::json!({ "state": self.state.as_str() })
    }

    fn serving(&self) -> bool {
        matches!(self.state, NodeState::Converging | NodeState::Converged)
    }

    /// Answers an admin command.
    fn on_command(&mut self, req: control::Request) {
        let reply = self.command(req.cmd);
        let _ = req.reply.send(reply);
    }

    fn command(&mut self, cmd: Command) -> control::Reply {
        if self.state == NodeState::Suspended && !cmd.allowed_when_suspended() {
            return Err(CmdError::new(
                ErrorKind::Conflict,
                "the node is suspended: only resume, query, explain, events and metrics are accepted",
            ));
        }
        match cmd {
            Command::Query => serde_json::to_value(self.query())
                .map_err(|e| CmdError::new(ErrorKind::Failed, e.to_string())),
            Command::Start => {
                if self.serving() {
                    return Ok(self.state_json());
                }
                if self.drain.is_some() {
                    return Err(CmdError::new(
                        ErrorKind::Conflict,
                        "the node is drain-stopping: wait until it has stopped",
                    ));
                }
                self.start_serving()
            }
            Command::Stop => {
                if !self.serving() && self.drain.is_none() {
                    return Ok(self.state_json());
                }
                self.stop_listeners();
                let n = self.active();
                self.close_all();
                self.drain = None;
                self.state = NodeState::Stopped;
                info!(
                    event = "stopped",
                    by = "admin",
                    closed = n,
                    "node stopped (process stays up)"
                );
                Ok(self.state_json())
            }
            Command::DrainStop => {
                if !self.serving() {
                    return Ok(self.state_json());
                }
                self.begin_drainstop("admin", false);
                Ok(self.state_json())
            }
            Command::Suspend => {
                if self.serving() || self.drain.is_some() {
                    self.stop_listeners();
                    self.close_all();
                    self.drain = None;
                }
                self.state = NodeState::Suspended;
                warn!(
                    event = "suspended",
                    "node suspended: stopped, only resume and query accepted"
                );
                Ok(self.state_json())
            }
            Command::Resume => {
                if self.state != NodeState::Suspended {
                    return Err(CmdError::new(
                        ErrorKind::Conflict,
                        "the node is not suspended",
                    ));
                }
                self.state = NodeState::Stopped;
                info!(event = "resumed", "node resumed: stopped until start");
                Ok(self.state_json())
            }
            Command::Reload => self.reload_file(),
            Command::Listener { name, action } => {
                let Some(l) = self.listeners.iter().find(|l| l.rt.cfg.name == name) else {
                    let known: Vec<&str> = self
                        .listeners
                        .iter()
                        .map(|l| l.rt.cfg.name.as_str())
                        .collect();
                    return Err(CmdError::new(
                        ErrorKind::NotFound,
                        format!(
                            "unknown listener {name:?} (listeners: {})",
                            known.join(", ")
                        ),
                    ));
                };
                let a = match action {
                    ListenerAction::Enable => AdminState::Enabled,
                    ListenerAction::Disable => AdminState::Disabled,
                    ListenerAction::Drain => AdminState::Draining,
                };
                l.rt.set_admin(a);
                self.overrides.listener_admin.insert(name.clone(), a);
                info!(event = "listener_admin", listener = %name, state = a.as_str());
                Ok(serde_json::json!({ "listener": name, "state": a }))
            }
            Command::Server {
                pool,
                server,
                action,
            } => self.server_command(pool, server, action),
            Command::Route {
                listener,
                route,
                priority,
                cost,
            } => {
                if priority.is_some_and(|p| p > 7) {
                    return Err(CmdError::new(ErrorKind::Invalid, "priority must be 0-7"));
                }
                if cost == Some(0) {
                    return Err(CmdError::new(ErrorKind::Invalid, "cost must be at least 1"));
                }
                if priority.is_none() && cost.is_none() {
                    return Err(CmdError::new(
                        ErrorKind::Invalid,
                        "give priority and/or cost",
                    ));
                }
                let snap = self.snap();
                let Some(l) = snap.config.listeners.iter().find(|l| l.name == listener) else {
                    return Err(CmdError::new(
                        ErrorKind::NotFound,
                        format!("unknown listener {listener:?}"),
                    ));
                };
                if !l.routes.iter().any(|r| r.name == route) {
                    let known: Vec<&str> = l.routes.iter().map(|r| r.name.as_str()).collect();
                    return Err(CmdError::new(
                        ErrorKind::NotFound,
                        format!(
                            "listener {listener:?} has no route {route:?} (routes: {})",
                            known.join(", ")
                        ),
                    ));
                }
                let mut ov = self.overrides.clone();
                let e = ov
                    .route
                    .entry((listener.clone(), route.clone()))
                    .or_default();
                if priority.is_some() {
                    e.0 = priority;
                }
                if cost.is_some() {
                    e.1 = cost;
                }
                let r = self.apply_overrides(ov)?;
                info!(event = "route_changed", listener = %listener, route = %route, priority = priority.map(u64::from), cost = cost.map(u64::from));
                Ok(r)
            }
            Command::Explain { pool } => {
                let snap = self.snap();
                match snap.pools.get(&pool) {
                    Some(p) => Ok(p.explain()),
                    None => Err(CmdError::new(
                        ErrorKind::NotFound,
                        format!("unknown pool {pool:?}"),
                    )),
                }
            }
            Command::Purge { listener, prefix } => {
                let mut purged = 0;
                let mut found = false;
                for (name, (_, c)) in &self.caches {
                    if listener.as_ref().is_none_or(|l| l == name) {
                        found = true;
                        purged += c.purge(&prefix);
                    }
                }
                if !found {
                    return Err(CmdError::new(
                        ErrorKind::NotFound,
                        match listener {
                            Some(l) => format!("listener {l:?} has no cache"),
                            None => "no listener has a cache".into(),
                        },
                    ));
                }
                info!(event = "cache_purged", prefix = %prefix, entries = purged);
                Ok(serde_json::json!({ "purged": purged }))
            }
            Command::Events { since } => {
                let (events, last) = self.events.since(since);
                Ok(serde_json::json!({ "last": last, "events": events }))
            }
            Command::Metrics => {
                let snap = self.snap();
                let rts: Vec<Arc<ListenerRuntime>> =
                    self.listeners.iter().map(|l| Arc::clone(&l.rt)).collect();
                let mut caches: Vec<convoy_admin::metrics::CacheFigures> = self
                    .caches
                    .iter()
                    .map(|(name, (_, c))| {
                        let st = c.stats();
                        convoy_admin::metrics::CacheFigures {
                            listener: name.clone(),
                            hits: st.hits,
                            misses: st.misses,
                            stale: st.stale_served,
                            revalidations: st.revalidations,
                            stores: st.stores,
                            evictions: st.evictions,
                            coalesced: st.coalesced,
                            bytes: st.stored_bytes,
                            entries: st.entries,
                        }
                    })
                    .collect();
                caches.sort_by(|a, b| a.listener.cmp(&b.listener));
                let fig = convoy_admin::metrics::NodeFigures {
                    state: self.state.as_str().to_string(),
                    reloads_applied: self.reloads_applied,
                    reloads_refused: self.reloads_refused,
                    uptime_seconds: self.started.elapsed().as_secs_f64(),
                    caches,
                };
                Ok(serde_json::Value::String(convoy_admin::metrics::render(
                    &snap, &rts, &fig,
                )))
            }
        }
    }

    fn server_command(
        &mut self,
        pool: String,
        server: String,
        action: ServerAction,
    ) -> control::Reply {
        let snap = self.snap();
        let Some(p) = snap.pools.get(&pool) else {
            let known: Vec<&str> = snap.pools.keys().map(String::as_str).collect();
            return Err(CmdError::new(
                ErrorKind::NotFound,
                format!("unknown pool {pool:?} (pools: {})", known.join(", ")),
            ));
        };
        if p.server(&server).is_none() {
            let known: Vec<&str> = p.servers.iter().map(|s| s.cfg.name.as_str()).collect();
            return Err(CmdError::new(
                ErrorKind::NotFound,
                format!(
                    "pool {pool:?} has no server {server:?} (servers: {})",
                    known.join(", ")
                ),
            ));
        }
        let key = (pool.clone(), server.clone());
        let mut ov = self.overrides.clone();
        match action {
            ServerAction::Enable => {
                ov.server_admin.insert(key, (true, false));
            }
            ServerAction::Disable => {
                ov.server_admin.insert(key, (false, false));
            }
            ServerAction::Drain => {
                ov.server_admin.insert(key, (true, true));
            }
            ServerAction::Weight(w) => {
                if !(1..=10_000).contains(&w) {
                    return Err(CmdError::new(
                        ErrorKind::Invalid,
                        format!("weight {w} is out of range 1-10000"),
                    ));
                }
                ov.server_weight.insert(key, w);
            }
        }
        self.apply_overrides(ov)?;
        let snap = self.snap();
        let s = snap.pools.get(&pool).and_then(|p| p.server(&server));
        Ok(serde_json::json!({
            "pool": pool,
            "server": server,
            "admin": s.map(|s| s.state.admin()),
            "weight": s.map(|s| s.cfg.weight),
        }))
    }

    /// Applies the file's config with the operator's changes `ov`; they
    /// are kept only if the result was applied (a refused change is not
    /// remembered for the next reload).
    fn apply_overrides(&mut self, ov: Overrides) -> control::Reply {
        let cfg = ov.apply(&self.base);
        let r = self.apply(cfg, "admin")?;
        self.overrides = ov;
        Ok(r)
    }

    /// The query view with the node's state and recent latency quantiles.
    fn query(&self) -> query::Query {
        let snap = self.snap();
        let rts: Vec<Arc<ListenerRuntime>> =
            self.listeners.iter().map(|l| Arc::clone(&l.rt)).collect();
        let mut q = query::query_with(&snap, &rts, &self.prev_window);
        q.state = self.state.as_str().to_string();
        q
    }

    /// Every few seconds, keeps the latency readings of the window that
    /// ends, so that p50/p99 cover the last 5-10 seconds.
    fn rotate_window(&mut self) {
        if self.window.0.elapsed() < Duration::from_secs(5) {
            return;
        }
        let snap = self.snap();
        let mut now = HashMap::new();
        for p in snap.pools.values() {
            for s in &p.servers {
                now.insert((p.name.clone(), s.cfg.name.clone()), s.state.latency.read());
            }
        }
        self.prev_window = std::mem::replace(&mut self.window, (Instant::now(), now)).1;
    }
}
