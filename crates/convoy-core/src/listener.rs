//! A listener at run time: counters, the `single`-mode current server and
//! the affinity-timeout table. It chooses the server for each new
//! connection or flow from its pool.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use convoy_balance::{affinity_key, pick_single, AffinityKind, Failback};
use convoy_config::{Affinity, FilterMode, Listener};

use crate::clock;
use crate::pool::PoolRuntime;
use crate::state::ServerState;

/// Lets a log line through at most once per second, so a flood of refused
/// connections costs a counter, not a log line each.
#[derive(Debug, Default)]
pub struct LogLimiter {
    last_ms: AtomicU64,
}

impl LogLimiter {
    /// True if a line may be logged now.
    pub fn allow(&self) -> bool {
        let now = clock::now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < 1000 {
            return false;
        }
        self.last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// Live state of one listener.
#[derive(Debug)]
pub struct ListenerRuntime {
    /// Listener config.
    pub cfg: Listener,
    /// Rate limit for "connection refused" log lines.
    pub refused_log: LogLimiter,
    /// Rate limit for "no server" log lines.
    pub failed_log: LogLimiter,
    active: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    current: Mutex<Option<Arc<ServerState>>>,
    sticky: Mutex<HashMap<u64, (Arc<ServerState>, u64)>>,
    requests: AtomicU64,
    /// Operator state: 0 enabled, 1 draining (no new connections),
    /// 2 disabled (no new connections, open ones closed).
    admin: std::sync::atomic::AtomicU8,
    kill: tokio::sync::watch::Sender<u64>,
}

/// Why no server was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoServer {
    /// The listener's mode is `disabled`.
    Disabled,
    /// No server of the pool can take traffic.
    NoneAvailable,
}

impl ListenerRuntime {
    /// A listener with zeroed counters.
    pub fn new(cfg: Listener) -> Self {
        ListenerRuntime {
            cfg,
            refused_log: LogLimiter::default(),
            failed_log: LogLimiter::default(),
            active: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            current: Mutex::new(None),
            sticky: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            admin: std::sync::atomic::AtomicU8::new(0),
            kill: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Counts an HTTP request.
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// HTTP requests since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Operator state of the listener (set by the admin API).
    pub fn admin(&self) -> crate::AdminState {
        match self.admin.load(Ordering::Relaxed) {
            0 => crate::AdminState::Enabled,
            1 => crate::AdminState::Draining,
            _ => crate::AdminState::Disabled,
        }
    }

    /// Sets the operator state; disabling closes every open connection.
    pub fn set_admin(&self, a: crate::AdminState) {
        self.admin.store(a as u8, Ordering::Relaxed);
        if a == crate::AdminState::Disabled {
            self.kill.send_modify(|v| *v += 1);
        }
    }

    /// New connections are accepted (mode and operator state).
    pub fn takes_new(&self) -> bool {
        self.cfg.mode != FilterMode::Disabled && self.admin.load(Ordering::Relaxed) == 0
    }

    /// Changes when the listener's open connections must close.
    pub fn kill_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.kill.subscribe()
    }

    fn affinity(&self) -> AffinityKind {
        match self.cfg.affinity {
            Affinity::None => AffinityKind::None,
            Affinity::Client => AffinityKind::Client,
            Affinity::Network => AffinityKind::Network,
        }
    }

    /// Chooses a server for a new connection from `client`; `tried` lists
    /// servers that already failed for this connection.
    pub fn choose(
        &self,
        pool: &PoolRuntime,
        client: IpAddr,
        tried: &[usize],
    ) -> Result<usize, NoServer> {
        if self.admin.load(Ordering::Relaxed) != 0 {
            // Drained or disabled by the operator.
            return Err(NoServer::Disabled);
        }
        match self.cfg.mode {
            FilterMode::Disabled => Err(NoServer::Disabled),
            FilterMode::Single => self.choose_single(pool, tried),
            FilterMode::Multiple => self.choose_multiple(pool, client, tried),
        }
    }

    fn choose_single(&self, pool: &PoolRuntime, tried: &[usize]) -> Result<usize, NoServer> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let current = cur.as_ref().and_then(|s| pool.index_of(&s.name));
        let candidates: Vec<(u32, bool)> = pool
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| (s.cfg.priority, s.state.is_eligible() && !tried.contains(&i)))
            .collect();
        let failback = match self.cfg.failback {
            convoy_config::Failback::Automatic => Failback::Automatic,
            convoy_config::Failback::Manual => Failback::Manual,
        };
        let i = pick_single(&candidates, current, failback).ok_or(NoServer::NoneAvailable)?;
        *cur = Some(Arc::clone(&pool.servers[i].state));
        Ok(i)
    }

    /// Moves a `single`-mode listener back to its highest-priority available
    /// server (manual failback).
    pub fn failback(&self) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The server a `single`-mode listener currently uses.
    pub fn current(&self) -> Option<Arc<ServerState>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn choose_multiple(
        &self,
        pool: &PoolRuntime,
        client: IpAddr,
        tried: &[usize],
    ) -> Result<usize, NoServer> {
        let affinity = self.affinity();
        let key = match (self.cfg.affinity_timeout, affinity_key(affinity, client)) {
            (Some(_), Some(k)) if tried.is_empty() => Some(k),
            _ => None,
        };
        if let Some(k) = key {
            let now = clock::now_ms();
            let ttl = self
                .cfg
                .affinity_timeout
                .map_or(0, |d| d.get().as_millis() as u64);
            let mut sticky = self.sticky.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((s, seen)) = sticky.get_mut(&k) {
                if now.saturating_sub(*seen) <= ttl && s.is_eligible() {
                    if let Some(i) = pool.index_of(&s.name) {
                        *seen = now;
                        return Ok(i);
                    }
                }
            }
            let i = pool
                .pick(affinity, client, tried)
                .ok_or(NoServer::NoneAvailable)?;
            if sticky.len() > 100_000 {
                sticky.retain(|_, (_, seen)| now.saturating_sub(*seen) <= ttl);
            }
            sticky.insert(k, (Arc::clone(&pool.servers[i].state), now));
            return Ok(i);
        }
        pool.pick(affinity, client, tried)
            .ok_or(NoServer::NoneAvailable)
    }

    /// Drops expired affinity entries (called periodically by the control plane).
    pub fn expire_sticky(&self) {
        let Some(ttl) = self.cfg.affinity_timeout else {
            return;
        };
        let ttl = ttl.get().as_millis() as u64;
        let now = clock::now_ms();
        self.sticky
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (_, seen)| now.saturating_sub(*seen) <= ttl);
    }

    /// Counts an accepted connection; returns false (and counts a refusal)
    /// when the listener is at `max_connections`.
    pub fn admit(&self) -> bool {
        let n = self.active.fetch_add(1, Ordering::AcqRel);
        if n >= self.cfg.max_connections {
            self.active.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.accepted.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Uncounts a connection admitted earlier.
    pub fn release(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts a connection that found no server.
    pub fn count_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// (active, accepted, refused, failed).
    pub fn counters(&self) -> (u64, u64, u64, u64) {
        (
            self.active.load(Ordering::Acquire),
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
