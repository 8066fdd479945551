//! The node's part in a cluster (`[cluster]`): it starts the cluster
//! agent ([`convoy_cluster::agent`]), tells it what this node sees (the
//! servers its own checks find down, its config after a reload, its
//! drain, its connections), and applies the cluster's view to the node:
//!
//! - **Health**: a server's health in force is the cluster's verdict
//!   (down when at least half of the live members see it down); this
//!   node's own probes and passive detection only vote. Every node thus
//!   builds the same tables, so a client's new connections go to the same
//!   server whichever node takes them.
//! - **Operator commands** given with `--cluster` on any node are applied
//!   by every node, like its own overrides, and by a node that joins
//!   later; a node named in a cluster drain-stop drains and stops.
//!
//! Without `[cluster]` none of this runs and a node decides alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use convoy_cluster::agent::{self, Handle, Input, Local, Stats, Usage};
use convoy_cluster::doc::{MemberState, Stamp};
use convoy_cluster::view::View;
use convoy_config::Config;
use convoy_core::control::{
    Answer, ClusterCmd, ClusterInfo, ClusterMember, CmdError, CmdErrorKind, ListenerAction, Reply,
    ServerAction,
};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::error::Error;
use crate::node::{Node, ServerKey};
use crate::steering::{self, Steering};

/// The link between the node and its cluster agent.
pub(crate) struct ClusterLink {
    pub(crate) handle: Handle,
    /// The view last applied.
    pub(crate) view: Arc<View>,
    /// Cluster commands applied, by register, with their stamp.
    applied: HashMap<String, Stamp>,
    /// The servers this node sees down, as last told to the agent.
    seen_down: Vec<(String, String)>,
    /// How client traffic reaches this node (`steering`).
    steering: Option<Steering>,
}

impl ClusterLink {
    /// Starts the agent for `cfg`'s `[cluster]` (none: no link). After a
    /// binary upgrade the previous process may still hold the cluster
    /// socket for a moment: the bind is tried again for up to 10 s.
    pub(crate) async fn start(cfg: &Config, upgrading: bool) -> Result<Option<ClusterLink>, Error> {
        let Some(c) = &cfg.cluster else {
            return Ok(None);
        };
        let settings = agent::Settings::from_config(c).map_err(Error::Cluster)?;
        // The steering's tools are checked (and bird started) before
        // this node says anything to the others.
        let steering = Steering::start(cfg).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let handle = loop {
            match agent::start(settings.clone(), Local::of(cfg)).await {
                Ok(h) => break h,
                Err(e)
                    if upgrading
                        && e.kind() == std::io::ErrorKind::AddrInUse
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    if let Some(s) = &steering {
                        s.remove(false).await;
                    }
                    return Err(Error::io(format!("cluster: cannot bind {}", c.address), e));
                }
            }
        };
        info!(event = "cluster_joining", name = %c.name, address = %c.address, seeds = c.seeds.len(), "joining the cluster");
        let view = Arc::clone(&handle.view.borrow());
        Ok(Some(ClusterLink {
            handle,
            view,
            applied: HashMap::new(),
            seen_down: Vec::new(),
            steering,
        }))
    }

    /// Says goodbye to the others (up to 1 s), then undoes the steering
    /// (or, for an upgrade, hands it over).
    async fn leave(self, handover: bool) {
        let (tx, rx) = oneshot::channel();
        if self.handle.tx.send(Input::Leave(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), rx).await;
        }
        if let Some(s) = &self.steering {
            s.remove(handover).await;
        }
    }

    /// A receiver of the agent's views (the node's loop waits on it).
    pub(crate) fn views(&self) -> watch::Receiver<Arc<View>> {
        self.handle.view.clone()
    }
}

impl Node {
    /// Tells the agent the servers this node's own checks see down.
    pub(crate) fn publish_seen(&mut self) {
        let Some(link) = &mut self.cluster else {
            return;
        };
        let snap = self.snapshot.load();
        let mut down: Vec<(String, String)> = snap
            .pools
            .values()
            .flat_map(|p| {
                p.servers
                    .iter()
                    .filter(|s| !s.state.is_seen_up())
                    .map(|s| (p.name.clone(), s.cfg.name.clone()))
            })
            .collect();
        down.sort();
        if down != link.seen_down {
            link.seen_down = down.clone();
            let _ = link.handle.tx.send(Input::Down(down));
        }
    }

    /// Tells the agent the config in force (after a reload) and this
    /// node's connections.
    pub(crate) fn publish_config(&self, cfg: &Config) {
        if let Some(link) = &self.cluster {
            let _ = link.handle.tx.send(Input::Config(Local::of(cfg)));
        }
    }

    /// After a reload: the agent gets the new config, new servers take the
    /// cluster's verdict, and this node's votes are sent again. Changes to
    /// `[cluster]` itself other than `load_weight` and `min_members` need
    /// a restart: they are logged and left.
    pub(crate) fn cluster_after_apply(&mut self, old: &Config, new: &Config) {
        let Some(link) = &self.cluster else {
            return;
        };
        let same_identity = |a: &Config, b: &Config| match (&a.cluster, &b.cluster) {
            (Some(x), Some(y)) => {
                (
                    &x.name,
                    x.priority,
                    x.address,
                    &x.seeds,
                    &x.key_file,
                    &x.key_env,
                ) == (
                    &y.name,
                    y.priority,
                    y.address,
                    &y.seeds,
                    &y.key_file,
                    &y.key_env,
                )
            }
            (None, None) => true,
            _ => false,
        };
        if !same_identity(old, new) {
            warn!(event = "cluster_settings_unchanged", "changes to [cluster] other than load_weight and min_members take effect at the next start");
        }
        let view = Arc::clone(&link.view);
        if let Some(s) = self.cluster.as_mut().and_then(|l| l.steering.as_mut()) {
            s.reconfigure(new);
        }
        self.publish_config(new);
        self.apply_cluster_health(&view.down);
        self.publish_seen();
    }

    /// Tells the agent whether this node drains (its flows go to the
    /// others), and how many connections it has.
    pub(crate) fn publish_serving(&self) {
        if let Some(link) = &self.cluster {
            let draining = !self.serving() || self.drain.is_some();
            let _ = link.handle.tx.send(Input::Draining(draining));
            let _ = link.handle.tx.send(Input::Connections(self.active()));
        }
    }

    /// Each tick: tells the other members what clients did here (rate
    /// tokens spent, affinity entries made or used) and takes what they
    /// did there, so per-client rate limits and affinity hold over the
    /// whole cluster: a client's tokens are spent on every node, not per
    /// node.
    pub(crate) fn exchange_usage(&mut self) {
        let Some(link) = &self.cluster else {
            return;
        };
        let mut out = Vec::new();
        for l in &self.listeners {
            l.rt.share_sticky();
            let spent = l.rt.take_spent(256);
            let sticky = l.rt.take_sticky(512);
            if !spent.is_empty() || !sticky.is_empty() {
                out.push(Usage {
                    listener: l.rt.cfg.name.clone(),
                    spent,
                    sticky,
                });
            }
        }
        if !out.is_empty() {
            let _ = link.handle.tx.send(Input::Usage(out));
        }
        let snap = self.snap();
        for u in link.handle.stats.take_usage() {
            let Some(l) = self.listeners.iter().find(|l| l.rt.cfg.name == u.listener) else {
                continue;
            };
            for (ip, n) in u.spent {
                l.rt.debit(ip, n);
            }
            if let Some(pool) = snap.pools.get(&l.rt.cfg.pool) {
                for (key, server) in u.sticky {
                    l.rt.learn_sticky(pool, key, &server);
                }
            }
        }
    }

    /// Applies a new view of the cluster: health in force, commands.
    pub fn on_cluster_view(&mut self, v: Arc<View>) {
        let Some(link) = &mut self.cluster else {
            return;
        };
        link.view = Arc::clone(&v);
        self.apply_cluster_health(&v.down);
        self.apply_cluster_commands(&v);
        self.steer();
    }

    /// Brings the steering in line with the view and this node's state
    /// (each view and each tick; nothing runs unless something changed).
    pub(crate) fn steer(&mut self) {
        let serving = self.serving() && self.drain.is_none();
        let reaches = steering::reaches_server(&self.snap());
        let Some(link) = &mut self.cluster else {
            return;
        };
        if let Some(s) = &mut link.steering {
            s.update(&link.view, &link.handle.name, serving, reaches);
        }
    }

    /// Sets each server's health in force to the cluster's verdict.
    fn apply_cluster_health(&mut self, down: &BTreeSet<(String, String)>) {
        let snap = self.snap();
        let mut changed = Vec::new();
        for p in snap.pools.values() {
            for s in &p.servers {
                let up = !down.contains(&(p.name.clone(), s.cfg.name.clone()));
                if s.state.is_up() != up {
                    changed.push((Arc::clone(&s.state), up));
                }
            }
        }
        for (server, up) in changed {
            let detail = if up {
                "up for the cluster"
            } else {
                "down on half the members or more"
            };
            self.apply_health(&server, up, "cluster", detail);
        }
    }

    /// Applies the cluster's commands this node has not applied yet.
    fn apply_cluster_commands(&mut self, v: &View) {
        let Some(link) = &self.cluster else {
            return;
        };
        let me = link.handle.name.clone();
        let fresh: Vec<(String, String, Stamp)> = v
            .commands
            .entries
            .iter()
            .filter(|(k, (_, s))| link.applied.get(*k) != Some(s))
            .map(|(k, (val, s))| (k.clone(), val.clone(), s.clone()))
            .collect();
        if fresh.is_empty() {
            return;
        }
        let mut ov = self.overrides.clone();
        let mut overrides_changed = false;
        for (target, value, stamp) in &fresh {
            let parts: Vec<&str> = target.split('/').collect();
            match parts.as_slice() {
                ["server", pool, server, what] => {
                    let key: ServerKey = (pool.to_string(), server.to_string());
                    if *what == "weight" {
                        if let Ok(w) = value.parse::<u32>() {
                            ov.server_weight.insert(key, w);
                            overrides_changed = true;
                        }
                    } else {
                        let admin = match value.as_str() {
                            "enable" => (true, false),
                            "disable" => (false, false),
                            _ => (true, true),
                        };
                        ov.server_admin.insert(key, admin);
                        overrides_changed = true;
                    }
                }
                ["listener", name, "admin"] => {
                    let action = match value.as_str() {
                        "enable" => ListenerAction::Enable,
                        "disable" => ListenerAction::Disable,
                        _ => ListenerAction::Drain,
                    };
                    if let Err(e) = self.listener_command(name.to_string(), action) {
                        warn!(event = "cluster_command_failed", target = %target, error = %e);
                    }
                }
                ["node", name] if *name == me => {
                    if value == "drainstop" && self.serving() {
                        self.begin_drainstop("cluster", false);
                    } else if value == "start" && !self.serving() && self.drain.is_none() {
                        let _ = self.start_serving();
                    }
                }
                _ => {}
            }
            info!(event = "cluster_command", target = %target, value = %value, by = %stamp.node);
        }
        if overrides_changed {
            let _ = self.apply_overrides(ov);
        }
        if let Some(link) = &mut self.cluster {
            for (target, _, stamp) in fresh {
                link.applied.insert(target, stamp);
            }
        }
        self.publish_serving();
    }

    /// A cluster-wide command: checked here (names, ranges), handed to
    /// the agent, answered once every live member applied it (or after
    /// 3 s, naming those that had not).
    pub(crate) fn cluster_command(&mut self, cmd: ClusterCmd, reply: oneshot::Sender<Reply>) {
        let Some(link) = &self.cluster else {
            let _ = reply.send(Err(CmdError::new(
                CmdErrorKind::Conflict,
                "this node is not in a cluster ([cluster] is not set)",
            )));
            return;
        };
        if let Err(e) = self.check_cluster_cmd(&cmd, link) {
            let _ = reply.send(Err(e));
            return;
        }
        let (target, value) = cmd.target_value();
        let (tx, rx) = oneshot::channel();
        let _ = link.handle.tx.send(Input::Command {
            target: target.clone(),
            value: value.clone(),
            reply: tx,
        });
        let mut views = link.views();
        tokio::spawn(async move {
            let Ok(stamp) = rx.await else {
                let _ = reply.send(Err(CmdError::new(
                    CmdErrorKind::Failed,
                    "the cluster agent stopped",
                )));
                return;
            };
            let split = |v: &View| {
                let (mut applied, mut pending) = (Vec::new(), Vec::new());
                for m in v.members.iter().filter(|m| m.state != MemberState::Left) {
                    if m.commands_ms >= stamp.ms {
                        applied.push(m.name.clone());
                    } else {
                        pending.push(m.name.clone());
                    }
                }
                (applied, pending)
            };
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                loop {
                    if split(&views.borrow_and_update()).1.is_empty() {
                        return;
                    }
                    if views.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await;
            let (applied, pending) = split(&views.borrow());
            let _ = reply.send(Ok(Answer::ClusterCommand {
                target,
                value,
                applied,
                pending,
            }));
        });
    }

    fn check_cluster_cmd(&self, cmd: &ClusterCmd, link: &ClusterLink) -> Result<(), CmdError> {
        let nf = |m: String| CmdError::new(CmdErrorKind::NotFound, m);
        match cmd {
            ClusterCmd::Server {
                pool,
                server,
                action,
            } => {
                let snap = self.snap();
                let Some(p) = snap.pools.get(pool) else {
                    return Err(nf(format!("unknown pool {pool:?}")));
                };
                if p.server(server).is_none() {
                    return Err(nf(format!("pool {pool:?} has no server {server:?}")));
                }
                if let ServerAction::Weight(w) = action {
                    if *w == 0 || *w > 10_000 {
                        return Err(CmdError::new(
                            CmdErrorKind::Invalid,
                            "weight must be 1-10000",
                        ));
                    }
                }
            }
            ClusterCmd::Listener { name, .. } => {
                if !self.listeners.iter().any(|l| &l.rt.cfg.name == name) {
                    return Err(nf(format!("unknown listener {name:?}")));
                }
            }
            ClusterCmd::Node { name, .. } => {
                if !link.view.members.iter().any(|m| &m.name == name) {
                    return Err(nf(format!("no live member is named {name:?}")));
                }
            }
        }
        Ok(())
    }

    /// The cluster as this node sees it (`convoy ctl cluster`).
    pub(crate) fn cluster_info(&self) -> Reply {
        let Some(link) = &self.cluster else {
            return Err(CmdError::new(
                CmdErrorKind::NotFound,
                "this node is not in a cluster ([cluster] is not set)",
            ));
        };
        let v = &link.view;
        let stats: &Stats = &link.handle.stats;
        let heard = stats
            .heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let listeners: Vec<&String> = v.owners.keys().collect();
        let members = v
            .members
            .iter()
            .map(|m| ClusterMember {
                name: m.name.clone(),
                address: if m.me {
                    link_address(self)
                } else {
                    m.addr.to_string()
                },
                state: m.state.as_str().to_string(),
                priority: m.priority,
                me: m.me,
                connections: if m.me { self.active() } else { m.connections },
                buckets: listeners
                    .iter()
                    .map(|l| (l.to_string(), v.owned(l, &m.name)))
                    .collect::<BTreeMap<_, _>>(),
                fingerprint: format!("{:016x}", m.fingerprint),
                heard_ms_ago: (!m.me)
                    .then(|| heard.get(&m.name).map(|t| t.elapsed().as_millis() as u64))
                    .flatten(),
            })
            .collect();
        let durations = stats
            .convergence_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Ok(Answer::Cluster(ClusterInfo {
            name: link.handle.name.clone(),
            state: v.state.map_or("joining", MemberState::as_str).to_string(),
            differs: v.differs.clone(),
            buckets: convoy_cluster::buckets::BUCKETS,
            members,
            down: v.down.iter().map(|(p, s)| format!("{p}/{s}")).collect(),
            convergences: stats
                .convergences
                .load(std::sync::atomic::Ordering::Relaxed),
            last_convergence_ms: durations.last().copied(),
            refused: Stats::REASONS
                .iter()
                .zip(&stats.refused)
                .map(|(r, n)| (r.to_string(), n.load(std::sync::atomic::Ordering::Relaxed)))
                .collect(),
            bytes_in: stats.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
            bytes_out: stats.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
            steering: link.steering.as_ref().map(Steering::info),
        }))
    }

    /// The cluster's figures for the metrics.
    pub(crate) fn cluster_figures(&self) -> Option<convoy_admin::metrics::ClusterFigures> {
        use std::sync::atomic::Ordering::Relaxed;
        let link = self.cluster.as_ref()?;
        let v = &link.view;
        let stats = &link.handle.stats;
        let me = &link.handle.name;
        Some(convoy_admin::metrics::ClusterFigures {
            members: MemberState::ALL
                .iter()
                .map(|s| {
                    let n = v.members.iter().filter(|m| m.state == *s).count();
                    (s.as_str().to_string(), n as u64)
                })
                .collect(),
            convergences: stats.convergences.load(Relaxed),
            convergence_ms: stats
                .convergence_ms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            refused: Stats::REASONS
                .iter()
                .zip(&stats.refused)
                .map(|(r, n)| (r.to_string(), n.load(Relaxed)))
                .collect(),
            bytes_in: stats.bytes_in.load(Relaxed),
            bytes_out: stats.bytes_out.load(Relaxed),
            buckets: v
                .owners
                .keys()
                .map(|l| (l.clone(), v.owned(l, me) as u64))
                .collect(),
        })
    }

    /// Leaves the cluster (a stop): the others learn it at once instead of
    /// by failure detection; then the steering is undone.
    pub(crate) async fn leave_cluster(&mut self) {
        if let Some(link) = self.cluster.take() {
            link.leave(false).await;
        }
    }

    /// A new process took over (binary upgrade): this one leaves the
    /// cluster now, freeing the cluster address for it, and leaves its
    /// steering rules and addresses in place for it; its own connections
    /// go on until they end.
    pub(crate) fn leave_cluster_for_upgrade(&mut self) {
        if let Some(link) = self.cluster.take() {
            tokio::spawn(link.leave(true));
        }
    }

    /// The node's state in the cluster for `query` (none when alone).
    pub(crate) fn cluster_state(&self) -> Option<&'static str> {
        self.cluster
            .as_ref()
            .map(|l| l.view.state.map_or("joining", MemberState::as_str))
    }
}

/// This node's cluster address, from the config in force.
fn link_address(node: &Node) -> String {
    node.snap()
        .config
        .cluster
        .as_ref()
        .map(|c| c.address.to_string())
        .unwrap_or_default()
}
