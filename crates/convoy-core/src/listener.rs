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
    /// Its HTTP routes, compiled.
    pub routes: convoy_config::compiled::RouteTable,
    /// Rate limit for "connection refused" log lines.
    pub refused_log: LogLimiter,
    /// Rate limit for "no server" log lines.
    pub failed_log: LogLimiter,
    active: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    current: Mutex<Option<Arc<ServerState>>>,
    sticky: Arc<Mutex<StickyMap>>,
    /// Affinity entries made or used since the cluster was last told
    /// (only kept when `[cluster]` is set).
    sticky_touched: Mutex<Option<HashMap<u64, Arc<str>>>>,
    requests: AtomicU64,
    /// HTTP/1.1 connections parked while idle (part of `active`).
    parked: AtomicU64,
    rate_limited: AtomicU64,
    /// HTTP responses by status class (1xx to 5xx), convoy's own included.
    responses: [AtomicU64; 5],
    /// Operator state: 0 enabled, 1 draining (no new connections),
    /// 2 disabled (no new connections, open ones closed).
    admin: std::sync::atomic::AtomicU8,
    kill: tokio::sync::watch::Sender<u64>,
    wake: Arc<tokio::sync::Notify>,
    /// Per client address: open connections and the rate bucket (only
    /// used when a per-address limit is set), in shards.
    per_ip: Arc<Vec<Mutex<HashMap<IpAddr, IpEntry>>>>,
    node: Arc<NodeConns>,
}

#[derive(Debug)]
struct IpEntry {
    conns: u32,
    tokens: f64,
    last_ms: u64,
    /// Tokens taken here since the cluster was last told.
    spent: u32,
}

/// A listener's connection counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerCounters {
    /// Open now.
    pub active: u64,
    /// Accepted in total.
    pub accepted: u64,
    /// Refused by a limit.
    pub refused: u64,
    /// Found no server.
    pub failed: u64,
}

/// Connections open over the whole node, against `node.max_connections`.
#[derive(Debug, Default)]
pub struct NodeConns {
    active: AtomicU64,
    max: AtomicU64,
}

impl NodeConns {
    /// Sets the node-wide limit (0: none).
    pub fn set_max(&self, max: u64) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Open connections over the node.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }
}

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The listener's `max_connections`.
    Listener,
    /// The node's `max_connections`.
    Node,
    /// The listener's `max_connections_per_ip`.
    PerIp,
    /// The listener's `rate_limit` (TCP).
    Rate,
}

impl Refusal {
    /// Reason for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Listener => "max_connections",
            Refusal::Node => "node_max_connections",
            Refusal::PerIp => "max_connections_per_ip",
            Refusal::Rate => "rate_limit",
        }
    }
}

const IP_SHARDS: usize = 16;

/// Affinity memory: client key → (server, last seen ms).
type StickyMap = HashMap<u64, (Arc<ServerState>, u64)>;

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
            routes: convoy_config::compiled::RouteTable::compile(&cfg),
            cfg,
            refused_log: LogLimiter::default(),
            failed_log: LogLimiter::default(),
            active: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            current: Mutex::new(None),
            sticky: Arc::new(Mutex::new(HashMap::new())),
            sticky_touched: Mutex::new(None),
            requests: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            responses: Default::default(),
            admin: std::sync::atomic::AtomicU8::new(0),
            kill: tokio::sync::watch::Sender::new(0),
            wake: Arc::new(tokio::sync::Notify::new()),
            per_ip: Arc::new((0..IP_SHARDS).map(|_| Mutex::new(HashMap::new())).collect()),
            node: Arc::new(NodeConns::default()),
        }
    }

    /// Takes over from the listener this one replaces (same name, changed
    /// settings): its counters go on from where they were, and, when the
    /// limits and the pool are the same, it shares the per-address state
    /// (connections, rate buckets: a client's open connections on the old
    /// listener still count) and the affinity memory.
    pub fn carry_from(&mut self, old: &ListenerRuntime) {
        for (a, b) in [
            (&self.accepted, &old.accepted),
            (&self.refused, &old.refused),
            (&self.failed, &old.failed),
            (&self.requests, &old.requests),
            (&self.rate_limited, &old.rate_limited),
        ] {
            a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (a, b) in self.responses.iter().zip(old.responses.iter()) {
            a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        if self.cfg.max_connections_per_ip == old.cfg.max_connections_per_ip
            && self.cfg.rate_limit == old.cfg.rate_limit
        {
            self.per_ip = Arc::clone(&old.per_ip);
        }
        if self.cfg.pool == old.cfg.pool && self.cfg.affinity == old.cfg.affinity {
            self.sticky = Arc::clone(&old.sticky);
        }
    }

    /// A listener counting its connections against the node-wide limit
    /// too.
    pub fn with_node(cfg: Listener, node: Arc<NodeConns>) -> Self {
        let mut l = ListenerRuntime::new(cfg);
        l.node = node;
        l
    }

    fn shard(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, IpEntry>> {
        let h = match ip {
            IpAddr::V4(v) => u32::from(v) as u64,
            IpAddr::V6(v) => (u128::from(v) as u64) ^ ((u128::from(v) >> 64) as u64),
        };
        &self.per_ip[(h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % IP_SHARDS]
    }

    fn bucket(&self) -> Option<(f64, f64)> {
        self.cfg
            .rate_limit
            .map(|r| (r.per_second, r.burst.unwrap_or(r.per_second).max(1.0)))
    }

    /// Takes a token from `e`'s bucket.
    fn take_token(e: &mut IpEntry, rate: f64, burst: f64, now: u64) -> bool {
        let dt = now.saturating_sub(e.last_ms) as f64 / 1000.0;
        e.tokens = (e.tokens + dt * rate).min(burst);
        e.last_ms = now;
        if e.tokens >= 1.0 {
            e.tokens -= 1.0;
            e.spent = e.spent.saturating_add(1);
            true
        } else {
            false
        }
    }

    /// Admits a new TCP or HTTP connection from `ip` against every limit:
    /// the listener's, the node's, and the per-address ones. On success
    /// the caller must `release_from(ip)` when it ends.
    pub fn admit_from(&self, ip: IpAddr) -> Result<(), Refusal> {
        let max = self.node.max.load(Ordering::Relaxed);
        let n = self.node.active.fetch_add(1, Ordering::AcqRel);
        if max > 0 && n >= max {
            self.node.active.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Node);
        }
        if !self.admit() {
            self.node.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Listener);
        }
        let per_ip = self.cfg.max_connections_per_ip;
        let rate = if self.cfg.protocol == convoy_config::Protocol::Tcp {
            self.bucket()
        } else {
            None
        };
        if per_ip == 0 && rate.is_none() {
            return Ok(());
        }
        let now = clock::now_ms();
        let mut m = self.shard(ip).lock().unwrap_or_else(|e| e.into_inner());
        // A new address starts with a full bucket (HTTP listeners spend it
        // per request, TCP ones per connection).
        let full = self.bucket().map_or(0.0, |(_, b)| b);
        let e = m.entry(ip).or_insert(IpEntry {
            conns: 0,
            tokens: full,
            last_ms: now,
            spent: 0,
        });
        let why = if per_ip > 0 && e.conns >= per_ip {
            Some(Refusal::PerIp)
        } else if rate.is_some_and(|(r, b)| !Self::take_token(e, r, b, now)) {
            Some(Refusal::Rate)
        } else {
            None
        };
        match why {
            None => {
                e.conns += 1;
                Ok(())
            }
            Some(w) => {
                drop(m);
                self.active.fetch_sub(1, Ordering::AcqRel);
                self.accepted.fetch_sub(1, Ordering::Relaxed);
                self.refused.fetch_add(1, Ordering::Relaxed);
                self.node.active.fetch_sub(1, Ordering::AcqRel);
                Err(w)
            }
        }
    }

    /// Ends a connection admitted by `admit_from`.
    pub fn release_from(&self, ip: IpAddr) {
        self.release();
        self.node.active.fetch_sub(1, Ordering::AcqRel);
        if self.cfg.max_connections_per_ip > 0
            || (self.cfg.rate_limit.is_some() && self.cfg.protocol == convoy_config::Protocol::Tcp)
        {
            let mut m = self.shard(ip).lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = m.get_mut(&ip) {
                e.conns = e.conns.saturating_sub(1);
            }
        }
    }

    /// An HTTP request from `ip` within the listener's `rate_limit`.
    pub fn allow_request(&self, ip: IpAddr) -> bool {
        let Some((rate, burst)) = self.bucket() else {
            return true;
        };
        let now = clock::now_ms();
        let mut m = self.shard(ip).lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(ip).or_insert(IpEntry {
            conns: 0,
            tokens: burst,
            last_ms: now,
            spent: 0,
        });
        Self::take_token(e, rate, burst, now)
    }

    /// The tokens taken per client address since the last call (at most
    /// `max` addresses, the busiest first): what this node tells the other
    /// nodes of a cluster, so that a client's rate counts on every node.
    pub fn take_spent(&self, max: usize) -> Vec<(IpAddr, u32)> {
        if self.bucket().is_none() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for shard in self.per_ip.iter() {
            let mut m = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (ip, e) in m.iter_mut() {
                if e.spent > 0 {
                    out.push((*ip, std::mem::take(&mut e.spent)));
                }
            }
        }
        out.sort_unstable_by_key(|e| std::cmp::Reverse(e.1));
        out.truncate(max);
        out
    }

    /// Tokens a client spent on other nodes of the cluster: taken from its
    /// bucket here too (down to one burst below empty), so its rate is
    /// limited over the whole cluster, not per node.
    pub fn debit(&self, ip: IpAddr, n: u32) {
        let Some((rate, burst)) = self.bucket() else {
            return;
        };
        let now = clock::now_ms();
        let mut m = self.shard(ip).lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(ip).or_insert(IpEntry {
            conns: 0,
            tokens: burst,
            last_ms: now,
            spent: 0,
        });
        let dt = now.saturating_sub(e.last_ms) as f64 / 1000.0;
        e.tokens = ((e.tokens + dt * rate).min(burst) - f64::from(n)).max(-burst);
        e.last_ms = now;
    }

    /// Starts keeping the affinity entries made or used, for the cluster.
    pub fn share_sticky(&self) {
        let mut t = self
            .sticky_touched
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if t.is_none() && self.cfg.affinity_timeout.is_some() {
            *t = Some(HashMap::new());
        }
    }

    /// The affinity entries made or used since the last call (at most
    /// `max`): client key → server name.
    pub fn take_sticky(&self, max: usize) -> Vec<(u64, String)> {
        let mut t = self
            .sticky_touched
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(m) = t.as_mut() else {
            return Vec::new();
        };
        let mut out: Vec<(u64, String)> = m.drain().map(|(k, s)| (k, s.to_string())).collect();
        out.truncate(max);
        out
    }

    /// An affinity entry another node of the cluster made or used: the
    /// client key goes to the pool's server `server` here too.
    pub fn learn_sticky(&self, pool: &PoolRuntime, key: u64, server: &str) {
        if self.cfg.affinity_timeout.is_none() {
            return;
        }
        let Some(i) = pool.index_of(server) else {
            return;
        };
        let mut sticky = self.sticky.lock().unwrap_or_else(|e| e.into_inner());
        if sticky.len() < 100_000 || sticky.contains_key(&key) {
            sticky.insert(key, (Arc::clone(&pool.servers[i].state), clock::now_ms()));
        }
    }

    fn touched(&self, key: u64, server: &Arc<str>) {
        let mut t = self
            .sticky_touched
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(m) = t.as_mut() {
            if m.len() < 4096 {
                m.insert(key, Arc::clone(server));
            }
        }
    }

    /// Forgets addresses with no connection whose bucket is full again.
    pub fn expire_ips(&self) {
        // Without a rate limit, entries only count connections.
        let (rate, burst) = self.bucket().unwrap_or((1.0, 0.0));
        let now = clock::now_ms();
        for shard in self.per_ip.iter() {
            let mut m = shard.lock().unwrap_or_else(|e| e.into_inner());
            m.retain(|_, e| {
                let dt = now.saturating_sub(e.last_ms) as f64 / 1000.0;
                e.conns > 0 || e.tokens + dt * rate < burst
            });
        }
    }

    /// Client addresses tracked for per-address limits.
    pub fn tracked_ips(&self) -> usize {
        self.per_ip
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Counts an HTTP request refused by the rate limit (429).
    pub fn count_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// HTTP requests refused by the rate limit since start.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// Counts an HTTP response of `status`.
    pub fn count_response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// HTTP responses since start, by status class (1xx to 5xx).
    pub fn responses(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.responses[i].load(Ordering::Relaxed))
    }

    /// Counts an HTTP request.
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// An idle connection was parked.
    pub fn count_parked(&self) {
        self.parked.fetch_add(1, Ordering::Relaxed);
    }

    /// A parked connection left its lot (woken or closed).
    pub fn count_unparked(&self) {
        self.parked.fetch_sub(1, Ordering::Relaxed);
    }

    /// Idle connections parked now.
    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::Relaxed)
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
            self.wake_connections();
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

    /// What the listener's HTTP/1 connections wait on while idle: notified
    /// whenever one of their signals (stop, listener or node kill) may
    /// have changed; they then look at the signals themselves. One small
    /// wait per connection instead of one per signal.
    pub fn connection_wake(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.wake)
    }

    /// Wakes the listener's connections to look at their signals again.
    pub fn wake_connections(&self) {
        self.wake.notify_waiters();
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
                        let name = Arc::clone(&s.name);
                        drop(sticky);
                        self.touched(k, &name);
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
            drop(sticky);
            self.touched(k, &pool.servers[i].state.name);
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

    /// Its connection counters.
    pub fn counters(&self) -> ListenerCounters {
        ListenerCounters {
            active: self.active.load(Ordering::Acquire),
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> convoy_config::Config {
        convoy_config::Config::parse("t", text).unwrap()
    }

    #[test]
    fn tokens_spent_on_another_node_count_here() {
        let cfg = parse(
            "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:1\"\npool = \"p\"\n\
             rate_limit = { per_second = 0.5, burst = 4 }\n\
             [pools.p]\n[[pools.p.servers]]\naddress = \"127.0.0.1:2\"\n",
        );
        let (a, b) = (
            ListenerRuntime::new(cfg.listeners[0].clone()),
            ListenerRuntime::new(cfg.listeners[0].clone()),
        );
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..4 {
            assert!(a.allow_request(ip));
        }
        assert!(!a.allow_request(ip), "node a's bucket is empty");
        let spent = a.take_spent(10);
        assert_eq!(spent, vec![(ip, 4)]);
        assert!(a.take_spent(10).is_empty(), "taken once");
        // Node b learns of them: its bucket for the client is empty too.
        for (ip, n) in spent {
            b.debit(ip, n);
        }
        assert!(
            !b.allow_request(ip),
            "the client's rate counts over both nodes"
        );
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert!(b.allow_request(other), "other clients are not touched");
    }

    #[test]
    fn an_affinity_entry_made_on_another_node_is_followed_here() {
        let cfg = parse(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\npool = \"p\"\naffinity = \"client\"\n\
             affinity_timeout = \"60s\"\n\
             [pools.p]\n[[pools.p.servers]]\nname = \"a\"\naddress = \"127.0.0.1:2\"\n\
             [[pools.p.servers]]\nname = \"b\"\naddress = \"127.0.0.1:3\"\n",
        );
        let pool = PoolRuntime::new("p", &cfg.pools["p"], None);
        pool.rebuild();
        let (here, there) = (
            ListenerRuntime::new(cfg.listeners[0].clone()),
            ListenerRuntime::new(cfg.listeners[0].clone()),
        );
        here.share_sticky();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let home = here.choose(&pool, ip, &[]).unwrap();
        let touched = here.take_sticky(10);
        assert_eq!(touched.len(), 1);
        assert_eq!(touched[0].1, pool.servers[home].cfg.name);
        // The other node learns that this client goes to the other
        // server (as after a failover on the first node): it follows.
        let other = 1 - home;
        there.learn_sticky(&pool, touched[0].0, &pool.servers[other].cfg.name);
        assert_eq!(there.choose(&pool, ip, &[]).unwrap(), other);
    }
}
