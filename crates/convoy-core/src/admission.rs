//! Admission of HTTP requests to a pool (a high-water mark per server and
//! a queue in front of them): a request takes a slot on a server below its
//! `max_in_flight`, chosen by the pool's algorithm; when every available
//! server is full it waits in the pool's bounded priority queue, and each
//! slot freed by a finishing request is handed straight to the next waiter
//! (so a server keeps a steady number of requests pending). Admission and
//! release run under the queue lock, so a slot can never be freed while a
//! request is being queued and missed by both.

use std::sync::{Arc, Mutex};

use convoy_balance::queue::{PriorityQueue, Ticket};
use convoy_balance::select::{least_outstanding, p2c, Load};
use convoy_config::Algorithm;
use tokio::sync::oneshot;

use crate::clock;
use crate::pool::PoolRuntime;

/// A slot handed to a queued request: the pool (possibly a newer one,
/// after a reload) and the index of the server in it.
pub type Grant = (Arc<PoolRuntime>, usize);

/// A queued request: its cost and where to send its slot.
#[derive(Debug)]
pub struct Waiter {
    cost: u32,
    tx: oneshot::Sender<Grant>,
}

/// Per-pool admission state that outlives a reload: the queue (requests
/// already waiting keep their place and are served by the new pool's
/// servers) and the retry budget.
#[derive(Debug)]
pub struct Admission {
    queue: Mutex<PriorityQueue<Waiter>>,
    /// Retry tokens ×100: each request adds `retry_budget`, a retry
    /// costs 100; capped at a burst of 10 retries (none with a budget
    /// of 0).
    retry_tokens: std::sync::atomic::AtomicI64,
    /// Time spent waiting by requests that got a slot from the queue.
    pub wait: crate::hist::Histogram,
    /// Requests refused because the queue was full.
    pub full: std::sync::atomic::AtomicU64,
    /// Requests that waited `queue_timeout` in vain.
    pub timeouts: std::sync::atomic::AtomicU64,
    /// Retries taken from the budget.
    pub retries: std::sync::atomic::AtomicU64,
}

const RETRY_BURST: i64 = 10 * 100;

/// What ties a request to a server: a hash key (for `algorithm = "hash"`)
/// and a server it should go to if it can (a sticky cookie).
#[derive(Clone, Copy, Debug, Default)]
pub struct Affinity {
    /// Key for consistent hashing (client address, header or cookie).
    pub hash: Option<u64>,
    /// Server named by the request's sticky cookie.
    pub prefer: Option<usize>,
}

/// The outcome of asking for a slot.
#[derive(Debug)]
pub enum Admit {
    /// A slot on this server (already counted).
    Slot(usize),
    /// Queued: wait on the receiver; cancel with the ticket.
    Queued(Ticket, oneshot::Receiver<Grant>),
    /// Every server is full and so is the queue.
    Full,
    /// No server can take requests at all.
    NoServer,
}

impl Admission {
    /// Admission state for a pool with this queue bound, aging step and
    /// retry budget (percent).
    pub fn new(queue_max: usize, aging_ms: u64, retry_budget: u32) -> Self {
        Admission {
            queue: Mutex::new(PriorityQueue::new(8, queue_max, aging_ms)),
            retry_tokens: std::sync::atomic::AtomicI64::new(if retry_budget == 0 {
                0
            } else {
                RETRY_BURST
            }),
            wait: Default::default(),
            full: Default::default(),
            timeouts: Default::default(),
            retries: Default::default(),
        }
    }

    /// Applies a reloaded pool's settings.
    pub fn update(&self, queue_max: usize, aging_ms: u64, retry_budget: u32) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_limits(queue_max, aging_ms);
        if retry_budget == 0 {
            self.retry_tokens
                .store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Requests waiting.
    pub fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn xorshift() -> u64 {
    use std::cell::Cell;
    thread_local!(static S: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) });
    S.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// One admission decision kept for `explain` (server indices refer to
/// the pool that made it).
#[derive(Debug, Clone)]
pub(crate) struct Decision {
    at_ms: u64,
    outcome: &'static str,
    /// (server, in flight, latency EWMA µs, error rate) at that moment.
    server: Option<(usize, u64, f64, f64)>,
    class: usize,
    cost: u32,
    retry_of: Vec<usize>,
    sticky: Option<usize>,
    queue_length: usize,
}

impl PoolRuntime {
    /// Weight of server `i` for request balancing, ramped during slow
    /// start (×100, as the tables).
    fn http_weight(&self, i: usize) -> u32 {
        let s = &self.servers[i];
        let w = s.cfg.weight * 100;
        let window = self.cfg.slow_start.get();
        match s.state.up_for_ms() {
            Some(ms) if std::time::Duration::from_millis(ms) < window => {
                convoy_balance::ramp_weight(w, std::time::Duration::from_millis(ms), window)
            }
            _ => w,
        }
    }

    fn room(&self, i: usize) -> bool {
        let s = &self.servers[i];
        let limit = s.cfg.limit(&self.cfg);
        limit == 0 || s.state.in_flight() < u64::from(limit)
    }

    /// May take a request: up, enabled, not ejected.
    fn usable(&self, i: usize) -> bool {
        let s = &self.servers[i].state;
        s.is_eligible() && !s.is_ejected() && self.standby_allows(i)
    }

    /// Chooses among servers that are usable, below their high-water mark
    /// and not in `tried`, in the lowest tier that has one (a tier spills
    /// into the next when all its servers are full or unusable).
    fn choose_with_room(&self, aff: Affinity, tried: &[usize]) -> Option<usize> {
        if let Some(i) = aff.prefer {
            if i < self.servers.len() && self.usable(i) && !tried.contains(&i) && self.room(i) {
                return Some(i);
            }
        }
        for (n, &tier) in self.tiers.iter().enumerate() {
            let last = n + 1 == self.tiers.len();
            if !last && self.tier_slow(tier) {
                // Saturated by latency: spill over, but keep a trickle
                // going so that its latency estimate can recover.
                let k = self
                    .tier_probe
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !k.is_multiple_of(20) {
                    continue;
                }
            }
            let ok = |i: usize| {
                self.servers[i].cfg.tier == tier
                    && self.usable(i)
                    && !tried.contains(&i)
                    && self.room(i)
            };
            if let Some(i) = self.choose_in(aff.hash, &ok) {
                return Some(i);
            }
        }
        None
    }

    /// The tier's best usable server is slower than `tier_latency_above`.
    fn tier_slow(&self, tier: u32) -> bool {
        let Some(limit) = self.cfg.tier_latency_above else {
            return false;
        };
        let limit_us = limit.get().as_micros() as f64;
        let best = self
            .servers
            .iter()
            .enumerate()
            .filter(|(i, s)| s.cfg.tier == tier && self.usable(*i))
            .map(|(_, s)| s.state.qos().0)
            .fold(f64::INFINITY, f64::min);
        best.is_finite() && best > limit_us
    }

    fn choose_in(&self, hash: Option<u64>, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        match self.cfg.algorithm {
            Algorithm::RoundRobin => {
                let mut w = self.swrr.lock().unwrap_or_else(|e| e.into_inner());
                w.pick(|i| if ok(i) { self.http_weight(i) } else { 0 })
            }
            Algorithm::LeastOutstanding | Algorithm::Qos => {
                let loads: Vec<Load> = self
                    .servers
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let (lat, err) = if self.cfg.algorithm == Algorithm::Qos {
                            s.state.qos()
                        } else {
                            (0.0, 0.0)
                        };
                        let out = s.state.outstanding_cost();
                        Load {
                            available: ok(i),
                            weight: self.http_weight(i),
                            outstanding: out,
                            score: convoy_balance::ewma::qos_score(
                                lat,
                                out,
                                err,
                                10.0,
                                self.http_weight(i),
                            ),
                        }
                    })
                    .collect();
                if self.cfg.algorithm == Algorithm::Qos {
                    p2c(&loads, xorshift(), xorshift())
                } else {
                    least_outstanding(&loads, (xorshift() % loads.len().max(1) as u64) as usize)
                }
            }
            Algorithm::Hash => {
                if let Some(k) = hash {
                    if let Some(i) = self.primary.lookup(k) {
                        if ok(i) {
                            return Some(i);
                        }
                    }
                    if let Some(j) = self.tables().hash.lookup(k) {
                        if ok(j) {
                            return Some(j);
                        }
                    }
                }
                // No key, or the key's servers are full or unusable: the
                // least loaded of the others (not always the first).
                let loads: Vec<Load> = self
                    .servers
                    .iter()
                    .enumerate()
                    .map(|(i, s)| Load {
                        available: ok(i),
                        weight: self.http_weight(i),
                        outstanding: s.state.outstanding_cost(),
                        score: 0.0,
                    })
                    .collect();
                least_outstanding(&loads, (xorshift() % loads.len().max(1) as u64) as usize)
            }
        }
    }

    /// Asks for a slot for a request of `cost` and priority `class`.
    /// `tried` lists servers this request already failed on. Every
    /// sixteenth choice, and every request that could not get a slot at
    /// once, is kept for `explain`.
    pub fn admit(&self, aff: Affinity, cost: u32, class: usize, tried: &[usize]) -> Admit {
        let a = self.admit_inner(aff, cost, class, tried);
        let (outcome, server) = match &a {
            Admit::Slot(i) => ("slot", Some(*i)),
            Admit::Queued(..) => ("queued", None),
            Admit::Full => ("queue_full", None),
            Admit::NoServer => ("no_server", None),
        };
        let n = self
            .explain_sample
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if server.is_none() || n.is_multiple_of(16) || !tried.is_empty() {
            self.note_decision(outcome, server, class, cost, tried, aff);
        }
        a
    }

    fn note_decision(
        &self,
        outcome: &'static str,
        server: Option<usize>,
        class: usize,
        cost: u32,
        tried: &[usize],
        aff: Affinity,
    ) {
        // Plain figures now; JSON only when someone asks (explain).
        let d = Decision {
            at_ms: clock::now_ms(),
            outcome,
            server: server.map(|i| {
                let e = &self.servers[i].state;
                let (lat, err) = e.qos();
                (i, e.in_flight(), lat, err)
            }),
            class,
            cost,
            retry_of: tried.to_vec(),
            sticky: aff.prefer,
            queue_length: self.queued(),
        };
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() >= 32 {
            r.pop_front();
        }
        r.push_back(d);
    }

    /// Why requests go where they go: each server's candidacy (usable?
    /// room? score), the tiers, the queue, and the recent decisions.
    pub fn explain(&self) -> serde_json::Value {
        let servers: Vec<serde_json::Value> = self
            .servers
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let st = &e.state;
                let mut why_not = Vec::new();
                let (down_why, eject_why) = st.reasons();
                if !st.is_up() {
                    why_not.push(if down_why.is_empty() {
                        "down".to_string()
                    } else {
                        format!("down: {down_why}")
                    });
                }
                match st.admin() {
                    crate::AdminState::Enabled => {}
                    crate::AdminState::Draining => why_not.push("draining".into()),
                    crate::AdminState::Disabled => why_not.push("disabled".into()),
                }
                if st.is_ejected() {
                    let why = if eject_why.is_empty() { "errors" } else { eject_why };
                    why_not.push(format!(
                        "ejected as an outlier ({why}) for {} ms more",
                        st.ejected_for_ms()
                    ));
                }
                if !self.standby_allows(i) {
                    why_not.push("standby server, switched off".into());
                }
                if !self.room(i) {
                    why_not.push("at its max_in_flight".into());
                }
                let (lat, err) = st.qos();
                let out = st.outstanding_cost();
                serde_json::json!({
                    "name": e.cfg.name,
                    "tier": e.cfg.tier,
                    "weight": e.cfg.weight,
                    "effective_weight": self.http_weight(i) as f64 / 100.0,
                    "candidate": why_not.is_empty(),
                    "why_not": why_not,
                    "in_flight": st.in_flight(),
                    "max_in_flight": e.cfg.limit(&self.cfg),
                    "outstanding_cost": out,
                    "latency_us": lat.round(),
                    "error_rate": err,
                    "qos_score": convoy_balance::ewma::qos_score(lat, out, err, 10.0, self.http_weight(i)),
                    "ejections": st.ejections(),
                })
            })
            .collect();
        let tiers: Vec<serde_json::Value> = self
            .tiers
            .iter()
            .map(|&t| {
                let open = (0..self.servers.len())
                    .filter(|&i| self.servers[i].cfg.tier == t && self.usable(i) && self.room(i))
                    .count();
                serde_json::json!({
                    "tier": t,
                    "servers_with_room": open,
                    "saturated": open == 0,
                    "slow": self.tier_slow(t),
                })
            })
            .collect();
        let recent: Vec<serde_json::Value> = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .map(|d| self.decision_json(d))
            .collect();
        serde_json::json!({
            "pool": self.name,
            "algorithm": self.cfg.algorithm,
            "rule": match self.cfg.algorithm {
                Algorithm::RoundRobin => "smooth weighted round robin over candidates of the lowest tier with room",
                Algorithm::LeastOutstanding => "least outstanding cost per unit of weight, lowest tier with room",
                Algorithm::Qos => "power of two choices: of two random candidates, the lower qos_score (latency x load, errors penalized)",
                Algorithm::Hash => "consistent hash of the request's key; the least loaded other candidate when its server is full",
            },
            "queue": {
                "length": self.queued(),
                "max": self.cfg.queue_max,
                "timeout_ms": self.cfg.queue_timeout.get().as_millis() as u64,
            },
            "standby_on": self.standby_is_on(),
            "tiers": tiers,
            "servers": servers,
            "recent": recent,
        })
    }

    fn decision_json(&self, d: &Decision) -> serde_json::Value {
        let name = |i: usize| self.servers.get(i).map(|s| s.cfg.name.clone());
        let server = d.server.map(|(i, in_flight, lat, err)| {
            serde_json::json!({
                "name": name(i),
                "tier": self.servers.get(i).map(|s| s.cfg.tier),
                "in_flight": in_flight,
                "latency_us": lat.round(),
                "error_rate": err,
            })
        });
        serde_json::json!({
            "ago_ms": clock::now_ms().saturating_sub(d.at_ms),
            "outcome": d.outcome,
            "server": server,
            "class": d.class,
            "cost": d.cost,
            "retry_of": d.retry_of.iter().filter_map(|&i| name(i)).collect::<Vec<_>>(),
            "sticky": d.sticky.and_then(name),
            "queue_length": d.queue_length,
        })
    }

    fn admit_inner(&self, aff: Affinity, cost: u32, class: usize, tried: &[usize]) -> Admit {
        let mut q = self
            .admission
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Waiters go first: a new request only takes a free slot directly
        // when nobody is queued (otherwise it would jump the queue).
        if q.is_empty() || !tried.is_empty() {
            if let Some(i) = self.choose_with_room(aff, tried) {
                self.servers[i].state.begin_request(cost);
                return Admit::Slot(i);
            }
        }
        let any = (0..self.servers.len()).any(|i| self.usable(i) && !tried.contains(&i));
        if !any {
            return Admit::NoServer;
        }
        let (tx, rx) = oneshot::channel();
        match q.push(Waiter { cost, tx }, class, clock::now_ms()) {
            Ok(t) => Admit::Queued(t, rx),
            Err(_) => {
                self.admission
                    .full
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Admit::Full
            }
        }
    }

    /// Gives up a queued request (timeout or client gone). If a slot was
    /// handed to it meanwhile, the caller must release that slot.
    pub fn cancel(&self, ticket: Ticket) -> bool {
        self.admission
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ticket)
            .is_some()
    }

    /// Frees the slot of a finished request of `cost` on server `i`: hands
    /// it to the next waiter if the server may still take requests and
    /// has room under its (possibly lowered) limit; otherwise uncounts it
    /// and lets the waiters try the other servers. Returns how long the
    /// released waiter waited.
    pub fn release(self: &Arc<Self>, i: usize, cost: u32) -> Option<u64> {
        let s = &self.servers[i].state;
        let mut q = self
            .admission
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        s.end_request(cost);
        if q.is_empty() {
            return None;
        }
        if !self.usable(i) || !self.room(i) {
            drop(q);
            self.wake_any();
            return None;
        }
        while let Some((w, waited)) = q.pop(clock::now_ms()) {
            s.begin_request(w.cost);
            if w.tx.send((Arc::clone(self), i)).is_ok() {
                self.admission.wait.observe(waited * 1000);
                return Some(waited);
            }
            s.end_request(w.cost);
        }
        None
    }

    /// Hands free slots on any server to waiters (after a server came
    /// back, was added, its ejection ended, or its limit rose).
    pub fn wake_any(self: &Arc<Self>) {
        let mut q = self
            .admission
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while !q.is_empty() {
            let Some(i) = self.choose_with_room(Affinity::default(), &[]) else {
                return;
            };
            let Some((w, waited)) = q.pop(clock::now_ms()) else {
                return;
            };
            self.servers[i].state.begin_request(w.cost);
            if w.tx.send((Arc::clone(self), i)).is_err() {
                self.servers[i].state.end_request(w.cost);
            } else {
                self.admission.wait.observe(waited * 1000);
            }
        }
    }

    /// Requests waiting in the queue.
    pub fn queued(&self) -> usize {
        self.admission.queued()
    }

    /// Counts a new request towards the retry budget.
    pub fn note_request(&self) {
        use std::sync::atomic::Ordering;
        let add = i64::from(self.cfg.retry_budget);
        let t = &self.admission.retry_tokens;
        if t.load(Ordering::Relaxed) < RETRY_BURST {
            let v = t.fetch_add(add, Ordering::Relaxed) + add;
            if v > RETRY_BURST {
                t.fetch_min(RETRY_BURST, Ordering::Relaxed);
            }
        }
    }

    /// Takes one retry from the budget, if any is left.
    pub fn take_retry(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.admission
            .retry_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v >= 100).then(|| v - 100)
            })
            .inspect(|_| {
                self.admission.retries.fetch_add(1, Ordering::Relaxed);
            })
            .is_ok()
    }

    /// Admission counters shared across reloads (queue wait histogram,
    /// refusals, timeouts, retries).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Feeds a request outcome on server `i`, known at `now` (clock
    /// milliseconds), to outlier ejection; returns the ejection time in ms
    /// when the server is ejected now.
    pub fn record_outcome(&self, i: usize, ok: bool, now: u64) -> Option<u64> {
        let o = &self.cfg.outlier;
        if o.consecutive == 0 {
            return None;
        }
        let cfg = convoy_balance::outlier::OutlierConfig {
            consecutive: o.consecutive,
            base_ms: o.base_ejection.get().as_millis() as u64,
            max_ms: o.max_ejection.get().as_millis() as u64,
        };
        // Counting the ejected servers looks at every one: only when this
        // outcome would eject (a success never does).
        let allowed = || {
            let ejected = self.servers.iter().filter(|s| s.state.is_ejected()).count();
            convoy_balance::outlier::may_eject(ejected, self.servers.len(), o.max_percent)
        };
        self.servers[i].state.record_outcome(ok, now, &cfg, allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_config::Config;

    #[test]
    fn retry_budget_is_a_share_of_requests_plus_a_burst() {
        let text =
            "[[listeners]]\naddress=\"127.0.0.1:1\"\npool=\"p\"\n[pools.p]\nretry_budget = 20\n\
                    [[pools.p.servers]]\naddress=\"127.0.0.1:2\"\n";
        let c = Config::parse("t", text).unwrap();
        let p = PoolRuntime::new("p", &c.pools["p"], None);
        let mut granted = 0;
        assert!(p.take_retry(), "a budget starts with a burst");
        for _ in 0..1000 {
            p.note_request();
            if p.take_retry() {
                granted += 1;
            }
        }
        // 20% of 1000 plus the initial burst of 10 (one taken above).
        assert!((199..=209).contains(&granted), "{granted}");
        assert!(!p.take_retry());
    }

    #[test]
    fn no_retry_budget_means_no_retries() {
        let text =
            "[[listeners]]\naddress=\"127.0.0.1:1\"\npool=\"p\"\n[pools.p]\nretry_budget = 0\n\
                    [[pools.p.servers]]\naddress=\"127.0.0.1:2\"\n";
        let c = Config::parse("t", text).unwrap();
        let p = PoolRuntime::new("p", &c.pools["p"], None);
        for _ in 0..100 {
            p.note_request();
            assert!(!p.take_retry());
        }
    }
}
