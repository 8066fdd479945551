//! The admin commands ([`Command`]): [`Node::command`] checks that the
//! node's state allows the command and hands it to one small function
//! per family: the node's serving state (start, stop, drainstop,
//! suspend, resume), reload, listeners, servers, routes, and the
//! read-only ones (query, explain, events, metrics) and the cache purge.
//! Changes to servers and routes become [`Overrides`] and go through
//! [`Node::apply`], like a reload. Every answer is a typed
//! [`Answer`]; the admin API turns it into JSON.

use std::sync::Arc;

use convoy_core::control::{
    Answer, CmdError, CmdErrorKind, Command, ListenerAction, Reply, Request, ServerAction,
};
use convoy_core::{AdminState, ListenerRuntime};
use tracing::{info, warn};

use crate::apply::Overrides;
use crate::node::{Node, NodeState};

fn not_found(msg: String) -> CmdError {
    CmdError::new(CmdErrorKind::NotFound, msg)
}

fn invalid(msg: impl Into<String>) -> CmdError {
    CmdError::new(CmdErrorKind::Invalid, msg)
}

fn conflict(msg: &str) -> CmdError {
    CmdError::new(CmdErrorKind::Conflict, msg)
}

impl Node {
    /// Answers an admin command.
    pub(crate) fn on_command(&mut self, req: Request) {
        match req.cmd {
            // Answered once the other members applied it.
            Command::ClusterWide(c) if self.state != NodeState::Suspended => {
                self.cluster_command(c, req.reply)
            }
            cmd => {
                let reply = self.command(cmd);
                let _ = req.reply.send(reply);
            }
        }
    }

    /// Runs an admin command.
    pub fn command(&mut self, cmd: Command) -> Reply {
        if self.state == NodeState::Suspended && !cmd.allowed_when_suspended() {
            return Err(conflict(
                "the node is suspended: only resume, query, explain, events and metrics are accepted",
            ));
        }
        match cmd {
            Command::Query => Ok(Answer::Query(self.query())),
            Command::Start => self.start_command(),
            Command::Stop => Ok(self.stop_command()),
            Command::DrainStop => {
                if self.serving() {
                    self.begin_drainstop("admin", false);
                }
                Ok(self.state_answer())
            }
            Command::Suspend => Ok(self.suspend()),
            Command::Resume => self.resume(),
            Command::Reload => self.reload_file(),
            Command::Listener { name, action } => self.listener_command(name, action),
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
            } => self.route_command(listener, route, priority, cost),
            Command::Explain { pool } => match self.snap().pools.get(&pool) {
                Some(p) => Ok(Answer::Explain(p.explain())),
                None => Err(not_found(format!("unknown pool {pool:?}"))),
            },
            Command::Purge { listener, prefix } => self.purge(listener, &prefix),
            Command::Cluster => self.cluster_info(),
            Command::ClusterWide(_) => Err(conflict(
                "a cluster-wide command is answered by the node's loop",
            )),
            Command::Events { since } => {
                let (events, last) = self.events.since(since);
                Ok(Answer::Events { last, events })
            }
            Command::Metrics => Ok(Answer::Metrics(self.metrics())),
            Command::ReopenLog => self.reopen_log(),
        }
    }

    fn start_command(&mut self) -> Reply {
        if self.serving() {
            return Ok(self.state_answer());
        }
        if self.drain.is_some() {
            return Err(conflict(
                "the node is drain-stopping: wait until it has stopped",
            ));
        }
        self.start_serving()
    }

    fn stop_command(&mut self) -> Answer {
        if !self.serving() && self.drain.is_none() {
            return self.state_answer();
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
        self.state_answer()
    }

    fn suspend(&mut self) -> Answer {
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
        self.state_answer()
    }

    fn resume(&mut self) -> Reply {
        if self.state != NodeState::Suspended {
            return Err(conflict("the node is not suspended"));
        }
        self.state = NodeState::Stopped;
        info!(event = "resumed", "node resumed: stopped until start");
        Ok(self.state_answer())
    }

    pub(crate) fn listener_command(&mut self, name: String, action: ListenerAction) -> Reply {
        let Some(l) = self.listeners.iter().find(|l| l.rt.cfg.name == name) else {
            let known: Vec<&str> = self
                .listeners
                .iter()
                .map(|l| l.rt.cfg.name.as_str())
                .collect();
            return Err(not_found(format!(
                "unknown listener {name:?} (listeners: {})",
                known.join(", ")
            )));
        };
        let a = match action {
            ListenerAction::Enable => AdminState::Enabled,
            ListenerAction::Disable => AdminState::Disabled,
            ListenerAction::Drain => AdminState::Draining,
        };
        l.rt.set_admin(a);
        self.overrides.listener_admin.insert(name.clone(), a);
        info!(event = "listener_admin", listener = %name, state = a.as_str());
        Ok(Answer::Listener {
            listener: name,
            state: a,
        })
    }

    fn server_command(&mut self, pool: String, server: String, action: ServerAction) -> Reply {
        let snap = self.snap();
        let Some(p) = snap.pools.get(&pool) else {
            let known: Vec<&str> = snap.pools.keys().map(String::as_str).collect();
            return Err(not_found(format!(
                "unknown pool {pool:?} (pools: {})",
                known.join(", ")
            )));
        };
        if p.server(&server).is_none() {
            let known: Vec<&str> = p.servers.iter().map(|s| s.cfg.name.as_str()).collect();
            return Err(not_found(format!(
                "pool {pool:?} has no server {server:?} (servers: {})",
                known.join(", ")
            )));
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
                    return Err(invalid(format!("weight {w} is out of range 1-10000")));
                }
                ov.server_weight.insert(key, w);
            }
        }
        self.apply_overrides(ov)?;
        let snap = self.snap();
        let s = snap.pools.get(&pool).and_then(|p| p.server(&server));
        Ok(Answer::Server {
            admin: s.map(|s| s.state.admin()),
            weight: s.map(|s| s.cfg.weight),
            pool,
            server,
        })
    }

    fn route_command(
        &mut self,
        listener: String,
        route: String,
        priority: Option<u8>,
        cost: Option<u32>,
    ) -> Reply {
        if priority.is_some_and(|p| p > 7) {
            return Err(invalid("priority must be 0-7"));
        }
        if cost == Some(0) {
            return Err(invalid("cost must be at least 1"));
        }
        if priority.is_none() && cost.is_none() {
            return Err(invalid("give priority and/or cost"));
        }
        let snap = self.snap();
        let Some(l) = snap.config.listeners.iter().find(|l| l.name == listener) else {
            return Err(not_found(format!("unknown listener {listener:?}")));
        };
        if !l.routes.iter().any(|r| r.name == route) {
            let known: Vec<&str> = l.routes.iter().map(|r| r.name.as_str()).collect();
            return Err(not_found(format!(
                "listener {listener:?} has no route {route:?} (routes: {})",
                known.join(", ")
            )));
        }
        let mut ov: Overrides = self.overrides.clone();
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

    fn purge(&mut self, listener: Option<String>, prefix: &str) -> Reply {
        let mut purged = 0;
        let mut found = false;
        for (name, (_, c)) in &self.caches {
            if listener.as_ref().is_none_or(|l| l == name) {
                found = true;
                purged += c.purge(prefix);
            }
        }
        if !found {
            return Err(not_found(match listener {
                Some(l) => format!("listener {l:?} has no cache"),
                None => "no listener has a cache".into(),
            }));
        }
        info!(event = "cache_purged", prefix = %prefix, entries = purged);
        Ok(Answer::Purged { purged })
    }

    /// The Prometheus text: the snapshot, the running listeners and the
    /// node's own figures.
    fn metrics(&self) -> String {
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
            cluster: self.cluster_figures(),
        };
        convoy_admin::metrics::render(&snap, &rts, &fig)
    }
}

impl Node {
    /// `log reopen`: the access log's file opened again by its name.
    pub(crate) fn reopen_log(&self) -> Reply {
        let Some(log) = &self.ctx.access else {
            return Err(CmdError::new(
                CmdErrorKind::NotFound,
                "there is no access log (node.access_log is not set)",
            ));
        };
        let dest = self
            .snap()
            .config
            .node
            .access_log
            .clone()
            .unwrap_or_default();
        match log.reopen() {
            Ok(()) => {
                tracing::info!(event = "access_log_reopened", file = %dest);
                Ok(Answer::Reopened { reopened: dest })
            }
            Err(e) => Err(CmdError::new(
                CmdErrorKind::Failed,
                format!("cannot open {dest}: {e}"),
            )),
        }
    }
}
