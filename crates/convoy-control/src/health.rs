//! Server health as the control plane applies it: the probe tasks (one
//! per server of every pool with active checks, kept in step with the
//! config), their reports, the data plane's passive failure events, and
//! the zone and pool checks after each transition (`server_up`,
//! `server_down`, `zone_down`, `zone_up`, `pool_down`). This is the only
//! place where a server's health (`set_up`) changes.

use std::collections::HashSet;
use std::sync::Arc;

use convoy_config::CheckKind;
use convoy_core::{ServerState, Snapshot};
use convoy_l4::DataEvent;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::node::{Node, Probe};

impl Node {
    /// Starts, restarts or stops probe tasks so there is one per server of
    /// every pool with active checks.
    pub(crate) fn sync_probes(&mut self) {
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
        self.sync_agents(&snap);
    }

    /// One agent task per server of every pool with `[agent]`; what a
    /// removed agent said is forgotten.
    fn sync_agents(&mut self, snap: &Snapshot) {
        let mut wanted = HashSet::new();
        for (pname, pool) in &snap.pools {
            let Some(a) = &pool.cfg.agent else {
                continue;
            };
            for s in &pool.servers {
                let key = (pname.clone(), s.cfg.name.clone());
                let addr = std::net::SocketAddr::new(s.cfg.address.0.ip(), a.port);
                wanted.insert(key.clone());
                if self
                    .agents
                    .get(&key)
                    .is_some_and(|(ad, c, _)| *ad == addr && c == a)
                {
                    continue;
                }
                if let Some((_, _, t)) = self.agents.remove(&key) {
                    t.abort();
                }
                let task = convoy_health::spawn_agent(
                    Arc::clone(&s.state),
                    addr,
                    a.clone(),
                    self.health_tx.clone(),
                );
                self.agents.insert(key, (addr, a.clone(), task));
            }
        }
        self.agents.retain(|k, (_, _, t)| {
            let keep = wanted.contains(k);
            if !keep {
                t.abort();
            }
            keep
        });
        if self.overrides.agent.keys().any(|k| !wanted.contains(k)) {
            let mut ov = self.overrides.clone();
            ov.agent.retain(|k, _| wanted.contains(k));
            let _ = self.apply_overrides(ov);
        }
    }

    /// What a server's agent said (it changed): applied over the
    /// operator's state, like an operator change (weight, drain, down).
    fn on_agent(&mut self, server: &Arc<ServerState>, says: convoy_health::app::AgentSays) {
        let key = (server.pool.to_string(), server.name.to_string());
        let mut ov = self.overrides.clone();
        let merged = {
            let e = ov.agent.entry(key).or_default();
            // A word not said keeps what was said before.
            if says.up.is_some() {
                e.up = says.up;
            }
            if says.drain.is_some() {
                e.drain = says.drain;
            }
            if says.weight_percent.is_some() {
                e.weight_percent = says.weight_percent;
            }
            e.clone()
        };
        info!(
            event = "server_agent",
            pool = %server.pool,
            server = %server.name,
            up = ?merged.up,
            drain = ?merged.drain,
            weight_percent = ?merged.weight_percent,
        );
        if let Err(e) = self.apply_overrides(ov) {
            warn!(event = "server_agent_refused", pool = %server.pool, server = %server.name, error = %e.error);
        }
    }

    /// This node's own verdict on a server (its probes, passive
    /// detection). Alone, it is the server's health; in a cluster it is a
    /// vote, and the health in force follows the cluster's verdict.
    pub(crate) fn set_health(
        &mut self,
        server: &Arc<ServerState>,
        up: bool,
        source: &str,
        detail: &str,
    ) {
        if self.cluster.is_none() {
            self.apply_health(server, up, source, detail);
            return;
        }
        if server.set_seen_up(up) {
            let ev = if up {
                "server_seen_up"
            } else {
                "server_seen_down"
            };
            info!(event = ev, pool = %server.pool, server = %server.name, source, detail, "this node's own verdict (a vote in the cluster)");
            self.publish_seen();
        }
    }

    /// Takes a server up or down (a no-op when it already is), logs it,
    /// rebuilds its pool's tables and checks its zone and pool.
    pub(crate) fn apply_health(
        &mut self,
        server: &Arc<ServerState>,
        up: bool,
        source: &str,
        detail: &str,
    ) {
        let changed = if self.cluster.is_some() {
            server.set_cluster_up(up)
        } else {
            server.set_up(up)
        };
        if !changed {
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

    /// A probe task's report: a server went up or down.
    pub fn on_health(&mut self, r: convoy_health::Report) {
        match r.agent {
            Some(says) => self.on_agent(&r.server, says),
            None => self.set_health(&r.server, r.up, "active", &r.detail),
        }
    }

    /// A passive failure seen by the data plane: counted, and at the
    /// pool's `passive.failures` in a row the server goes down (tried
    /// again after `passive.retry_after` in a pool without probes).
    pub fn on_data_event(&mut self, ev: DataEvent) {
        let DataEvent::Failure { server, reason } = ev;
        let snap = self.snap();
        let Some(pool) = snap.pools.get(&*server.pool) else {
            return;
        };
        let threshold = pool.cfg.passive.failures;
        let n = server.record_failure();
        if threshold > 0 && n >= threshold && server.is_seen_up() {
            self.set_health(&server, false, "passive", &reason);
            if pool.cfg.health.check == CheckKind::None {
                let key = (server.pool.to_string(), server.name.to_string());
                self.passive_retry
                    .insert(key, Instant::now() + pool.cfg.passive.retry_after.get());
            }
        }
    }

    /// Pools with a zone whose every server is down, as (pool, zone), and
    /// how many times a zone went down since the node started.
    pub fn zones_down(&self) -> (Vec<(String, String)>, u64) {
        let mut z: Vec<_> = self.zones_down.iter().cloned().collect();
        z.sort();
        (z, self.zone_down_events)
    }
}
