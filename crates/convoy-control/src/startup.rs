//! Building a node from a config: the admin API's socket is bound first
//! (a busy admin port is a clear start-up error), then the upgrade socket;
//! after a binary upgrade the previous process's operator changes and
//! server states are taken over; the snapshot is built and stored, every
//! listener is bound (taking over inherited sockets) and spawned, the
//! probes start, and the admin API serves. [`Node::start`] returns the
//! node and the [`Inputs`] its loop ([`crate::run`]) reads.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use convoy_config::Config;
use convoy_core::control::{self, NodeState};
use convoy_core::events::EventRing;
use convoy_core::Snapshot;
use convoy_l4::{Context, DataEvent};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::error::Error;
use crate::handover::{self, Inherited, UpgradeMsg};
use crate::node::Node;

/// What the node's loop reads: the data plane's events, the probes'
/// reports, the admin API's commands and the upgrade socket's messages.
/// (Signals come separately, from the process.)
pub struct Inputs {
    pub(crate) events: mpsc::UnboundedReceiver<DataEvent>,
    pub(crate) health: mpsc::UnboundedReceiver<convoy_health::Report>,
    pub(crate) commands: mpsc::Receiver<control::Request>,
    pub(crate) upgrade: mpsc::Receiver<UpgradeMsg>,
    /// The cluster agent's views (`[cluster]` only).
    pub(crate) cluster: Option<watch::Receiver<Arc<convoy_cluster::view::View>>>,
    /// Senders kept so that the channels stay open while nothing else
    /// holds one (no admin API, no upgrade socket).
    commands_tx: mpsc::Sender<control::Request>,
    _upgrade_tx: mpsc::Sender<UpgradeMsg>,
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs").finish_non_exhaustive()
    }
}

impl Inputs {
    /// A sender of admin commands to this node's loop (what the admin
    /// API holds).
    pub fn commands(&self) -> mpsc::Sender<control::Request> {
        self.commands_tx.clone()
    }
}

/// The admin API's socket and token.
type Admin = Option<(tokio::net::TcpListener, Option<String>)>;

/// Binds the admin API's socket (before anything else starts, so that a
/// busy admin port is a clear start-up error).
async fn bind_admin(cfg: &Config, inherited: &mut Inherited) -> Result<Admin, Error> {
    let old = inherited.take_admin();
    if !cfg.admin.enabled {
        return Ok(None);
    }
    let token = cfg.admin.resolve_token().map_err(Error::Token)?;
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
            .map_err(|e| Error::io(format!("admin API: cannot bind {}", cfg.admin.address), e))?,
    };
    Ok(Some((l, token)))
}

/// The data plane's share of the node: the snapshot, the event channel,
/// the kill signal, the access log and the explain token.
fn data_context(
    cfg: &Config,
    snapshot: &Arc<ArcSwap<Snapshot>>,
    events: mpsc::UnboundedSender<DataEvent>,
    kill: watch::Receiver<u64>,
    admin: &Admin,
) -> Result<Context, Error> {
    let access = match &cfg.node.access_log {
        Some(dest) => Some(Arc::new(
            convoy_core::access::AccessLog::open(dest)
                .map_err(|e| Error::io(format!("node.access_log: cannot open {dest}"), e))?,
        )),
        None => None,
    };
    Ok(Context {
        snapshot: Arc::clone(snapshot),
        events,
        kill,
        splice: cfg.node.splice,
        access,
        explain_token: admin
            .as_ref()
            .and_then(|(_, t)| t.as_deref().map(Arc::from)),
    })
}

/// Raises the soft limit of open files to the hard limit (each proxied
/// connection takes two descriptors, a UDP flow one, a probe one): the
/// limit in force and the one before.
fn raise_descriptor_limit() -> Option<(u64, u64)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    let soft = before.current?;
    let hard = before.maximum.unwrap_or(u64::MAX);
    // A process may not go past the kernel's nr_open whatever the hard
    // limit says.
    let cap = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let want = hard.min(cap);
    if want > soft
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: before.maximum,
            },
        )
        .is_ok()
    {
        return Some((want, soft));
    }
    Some((soft, soft))
}

/// Logs the descriptor limit and the connections it allows; warns when
/// `node.max_connections` asks for more than that.
fn log_descriptors(limit: Option<(u64, u64)>, max_connections: u64) {
    let Some((limit, before)) = limit else {
        return;
    };
    // Some descriptors go to listeners, probes, logs: the rest, two per
    // proxied connection.
    let budget = limit.saturating_sub(64) / 2;
    info!(
        event = "descriptors",
        limit,
        raised_from = before,
        connections = budget,
        "open files limit {limit} (was {before}): about {budget} proxied connections at once"
    );
    if max_connections > budget {
        warn!(
            event = "descriptors_short",
            limit,
            max_connections,
            "node.max_connections is {max_connections} but the open files limit allows about {budget}: raise the hard limit (LimitNOFILE=, ulimit -Hn)"
        );
    }
}

impl Node {
    /// Starts a node with `cfg` (read from `path`, which reloads read
    /// again): binds the admin API and every listener, starts the probes,
    /// and logs `ready`. `ring` holds the recent events the admin API
    /// serves; `inherited`: the sockets and state of the process this one
    /// replaces (binary upgrade).
    pub async fn start(
        cfg: Config,
        path: Option<PathBuf>,
        ring: Arc<EventRing>,
        inherited: Option<Inherited>,
    ) -> Result<(Node, Inputs), Error> {
        let upgrading = inherited.is_some();
        let mut inherited = inherited.unwrap_or_default();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (health_tx, health) = mpsc::unbounded_channel();
        let (commands_tx, commands) = mpsc::channel::<control::Request>(64);
        let (upgrade_tx, upgrade) = mpsc::channel::<UpgradeMsg>(4);
        let (kill, kill_rx) = watch::channel(0u64);
        let admin = bind_admin(&cfg, &mut inherited).await?;
        // Without an upgrade, the upgrade socket is bound now (a node already
        // running on it is an error); after taking over, once this node
        // serves.
        let upgrade_listener = match (&cfg.node.upgrade_socket, upgrading) {
            (Some(p), false) => Some(handover::bind(p)?),
            _ => None,
        };
        // After an upgrade: the operator's changes, server states and the
        // serving state of the process this one replaces.
        let handed = inherited.take_state();
        let overrides = handover::handed_overrides(handed.as_ref());
        let base = cfg.clone();
        let cfg = Arc::new(overrides.apply(&cfg));
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(
            Arc::clone(&cfg),
            None,
        )));
        if let Some(h) = &handed {
            handover::take_handed_state(&snapshot, h);
        }
        let ctx = data_context(&cfg, &snapshot, events_tx, kill_rx, &admin)?;
        let cluster = crate::cluster::ClusterLink::start(&cfg, upgrading).await?;
        let cluster_views = cluster.as_ref().map(|c| c.views());
        let now = Instant::now();
        let mut node = Node {
            path,
            snapshot,
            listeners: Vec::new(),
            probes: HashMap::new(),
            agents: HashMap::new(),
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
            cluster,
        };
        node.serve(&cfg, admin, &commands_tx)?;
        if upgrading {
            node.finish_takeover(handed.as_ref(), &upgrade_tx);
        } else if let Some(l) = upgrade_listener {
            tokio::spawn(handover::serve(l, upgrade_tx.clone()));
        }
        log_descriptors(raise_descriptor_limit(), cfg.node.max_connections);
        info!(
            event = "ready",
            node = %cfg.node.name,
            listeners = cfg.listeners.len(),
            pools = cfg.pools.len(),
            "convoy is ready"
        );
        let inputs = Inputs {
            events,
            health,
            commands,
            upgrade,
            cluster: cluster_views,
            commands_tx,
            _upgrade_tx: upgrade_tx,
        };
        Ok((node, inputs))
    }

    /// Binds and spawns every listener of `cfg`, starts the probes and
    /// the admin API.
    fn serve(
        &mut self,
        cfg: &Config,
        admin: Admin,
        commands: &mpsc::Sender<control::Request>,
    ) -> Result<(), Error> {
        self.conns.set_max(cfg.node.max_connections);
        for l in &cfg.listeners {
            let bound = self.bind_listener(l).map_err(|e| Error::Listener {
                name: l.name.clone(),
                source: Box::new(e),
            })?;
            let running = self.spawn_listener(l, bound, None);
            self.listeners.push(running);
        }
        self.sync_probes();
        self.note_admin_changes();
        self.start_converging();
        if let Some((l, token)) = admin {
            use std::os::fd::AsFd;
            if let (Ok(a), Ok(fd)) = (l.local_addr(), l.as_fd().try_clone_to_owned()) {
                self.admin_fd = Some((a, fd));
            }
            let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            info!(event = "admin_listening", address = %addr, auth = token.is_some(), "admin API, metrics and dashboard");
            let tls = match &cfg.admin.tls {
                Some(t) => Some(
                    convoy_http::tls::TlsState::new(t)
                        .map_err(|e| Error::Token(format!("admin.tls: {e}")))?
                        .acceptor(),
                ),
                None => None,
            };
            self.admin_task = Some(tokio::spawn(convoy_admin::serve(
                l,
                token,
                commands.clone(),
                tls,
            )));
        }
        self.reapply_listener_admin();
        Ok(())
    }
}
