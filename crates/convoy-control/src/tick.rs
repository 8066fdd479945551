//! The 250 ms tick: whatever the control plane does by the clock rather
//! than on an event. TLS listeners that watch their files reload them;
//! "converging" turns into "converged"; pools whose servers ramp up (slow
//! start) get their tables rebuilt; servers of pools without probes are
//! tried again after `passive.retry_after`; per-server drains are
//! reported when done and cut at `node.drain_timeout`; affinity and
//! per-client entries expire; caches drop dead entries every 10 s; the
//! standby switches are fed (and their hooks run); queued requests are
//! offered servers whose ejection ended; retired listeners are forgotten
//! once empty; and the latency window rotates every 5 s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use convoy_core::{AdminState, PoolRuntime, Snapshot};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::node::{Node, NodeState, ServerKey};

impl Node {
    /// One tick.
    pub fn on_tick(&mut self) {
        self.rotate_window();
        self.watch_tls();
        // The cluster learns whether this node serves, its load, and what
        // clients did here; this node learns what they did elsewhere.
        self.publish_serving();
        self.exchange_usage();
        self.steer();
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
        self.passive_retries(&snap);
        self.track_drains(&snap);
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

    /// TLS listeners that watch their files load them again when they
    /// changed.
    fn watch_tls(&mut self) {
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
    }

    /// Passive-only pools: try failed servers again after retry_after.
    fn passive_retries(&mut self, snap: &Snapshot) {
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
    }

    /// Drains: report when finished, force-close at drain_timeout.
    fn track_drains(&mut self, snap: &Snapshot) {
        let now = Instant::now();
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
    }

    /// Feeds a pool's load to its standby switch; on a change, switches
    /// the standby servers, logs and runs the hook.
    fn standby_tick(&mut self, pool: &Arc<PoolRuntime>) {
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
            run_standby_hook(pool, prog, args, state, &names, queue, latency_ms);
        }
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

/// Runs a pool's standby hook with the switch's figures in its
/// environment, and logs how it ended.
fn run_standby_hook(
    pool: &PoolRuntime,
    prog: &String,
    args: &[String],
    state: &str,
    names: &str,
    queue: usize,
    latency_ms: f64,
) {
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .env("CONVOY_POOL", &pool.name)
        .env("CONVOY_STANDBY", state)
        .env("CONVOY_SERVERS", names)
        .env("CONVOY_QUEUE", queue.to_string())
        .env("CONVOY_LATENCY_MS", format!("{latency_ms:.1}"))
        .stdin(std::process::Stdio::null());
    let (pool_name, prog) = (pool.name.clone(), prog.clone());
    match cmd.spawn() {
        Ok(mut child) => {
            tokio::spawn(async move {
                // The exit code; -1 when it ended by a signal or could
                // not be waited for.
                let code = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(-1);
                info!(event = "standby_hook", pool = %pool_name, program = %prog, status = code);
            });
        }
        Err(e) => {
            error!(event = "standby_hook", pool = %pool_name, program = %prog, error = %e, "cannot run the standby hook");
        }
    }
}
