//! Live state of one server. All fields are atomics: the data plane updates
//! counters without locks; the control plane flips health and admin state.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;

use crate::clock;

/// Operator-set state of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes traffic.
    Enabled,
    /// Takes no new traffic; existing connections finish (up to drain_timeout).
    Draining,
    /// Takes no traffic.
    Disabled,
}

impl AdminState {
    /// The state as written in the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
        }
    }
}

/// Changes whenever some server's connections must close (any server of
/// any node in this process): what watches connections held outside a
/// task (parked L4 connections) looks then at each one's own server.
static SERVER_KILLS: std::sync::LazyLock<watch::Sender<u64>> =
    std::sync::LazyLock::new(|| watch::Sender::new(0));

/// A receiver that changes whenever some server's connections must close
/// ([`ServerState::close_connections`]); which server, each connection's
/// own [`ServerState::kill_signal`] tells.
pub fn server_kills() -> watch::Receiver<u64> {
    SERVER_KILLS.subscribe()
}

/// Live per-server state, shared by every snapshot that contains the server.
#[derive(Debug)]
pub struct ServerState {
    /// Pool name.
    pub pool: Arc<str>,
    /// Server name (unique in the pool).
    pub name: Arc<str>,
    active: AtomicU64,
    total: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connect_failures: AtomicU64,
    consecutive_failures: AtomicU32,
    up: AtomicBool,
    /// This node's own verdict (its probes and passive detection). Alone,
    /// it is `up`; in a cluster, `up` is the cluster's verdict.
    seen_up: AtomicBool,
    admin: AtomicU8,
    up_since_ms: AtomicU64,
    kill: watch::Sender<u64>,
    kill_requests: watch::Sender<u64>,
    in_flight: AtomicU64,
    cost: AtomicU64,
    requests: AtomicU64,
    qos: std::sync::Mutex<Qos>,
    outlier: std::sync::Mutex<convoy_balance::outlier::OutlierState>,
    ejected_until_ms: AtomicU64,
    /// HTTP latency to the response head.
    pub latency: crate::hist::Histogram,
    errors: [AtomicU64; 4],
    ejections: AtomicU64,
    /// Requests in flight (and their cost) that another process still
    /// serves on this server: the process this one replaced, while it
    /// drains after a binary upgrade.
    foreign_in_flight: AtomicU64,
    foreign_cost: AtomicU64,
    /// Why the server is down (the last failed check or passive signal),
    /// and why it was last ejected, for `explain`.
    why: std::sync::Mutex<(String, &'static str)>,
}

/// A server's live state as one process hands it to the next (binary
/// upgrade).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Handover {
    /// Healthy.
    pub up: bool,
    /// Milliseconds since it came up (slow start), if it came up lately.
    pub up_for_ms: Option<u64>,
    /// Latency EWMA, µs.
    pub latency_us: f64,
    /// Error rate, 0..1.
    pub error_rate: f64,
    /// Consecutive connect failures.
    pub consecutive_failures: u32,
    /// Outlier ejection: milliseconds left, and ejections so far.
    pub ejected_for_ms: u64,
    /// Ejections so far (the next lasts longer).
    pub ejections: u32,
}

/// Kinds of failed HTTP requests, counted per server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connect failed.
    Connect = 0,
    /// No response head within `response_timeout`.
    Timeout = 1,
    /// Reset, closed or malformed answer before a response head.
    Reset = 2,
    /// A 5xx response.
    Status5xx = 3,
}

impl ErrorKind {
    /// Every kind, in label order.
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Status5xx,
    ];

    /// Label value for metrics.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Status5xx => "status_5xx",
        }
    }
}

/// Request-level quality of a server: peak-EWMA latency and an EWMA of the
/// error indicator (5xx, connect errors, timeouts).
#[derive(Debug)]
pub struct Qos {
    /// Latency to response headers.
    pub latency: convoy_balance::ewma::PeakEwma,
    /// Recent error rate, 0..1.
    pub error_rate: f64,
}

impl ServerState {
    /// A new server, healthy, with the given admin state.
    pub fn new(pool: &str, name: &str, admin: AdminState) -> Self {
        ServerState {
            pool: pool.into(),
            name: name.into(),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            up: AtomicBool::new(true),
            seen_up: AtomicBool::new(true),
            admin: AtomicU8::new(admin as u8),
            // A server present from the start needs no slow start.
            up_since_ms: AtomicU64::new(0),
            kill: watch::Sender::new(0),
            kill_requests: watch::Sender::new(0),
            in_flight: AtomicU64::new(0),
            cost: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            outlier: std::sync::Mutex::new(Default::default()),
            ejected_until_ms: AtomicU64::new(0),
            latency: Default::default(),
            errors: Default::default(),
            ejections: AtomicU64::new(0),
            foreign_in_flight: AtomicU64::new(0),
            foreign_cost: AtomicU64::new(0),
            why: std::sync::Mutex::new((String::new(), "")),
            qos: std::sync::Mutex::new(Qos {
                latency: convoy_balance::ewma::PeakEwma::new(1000.0, 1_000, clock::now_ms()),
                error_rate: 0.0,
            }),
        }
    }

    /// Healthy according to checks and passive signals.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Sets health, and this node's own verdict with it; returns true if
    /// the health changed. Coming up starts slow start.
    pub fn set_up(&self, up: bool) -> bool {
        self.seen_up.store(up, Ordering::Release);
        self.set_cluster_up(up)
    }

    /// This node's own verdict (what its probes and passive detection
    /// say), which in a cluster may differ from [`ServerState::is_up`].
    pub fn is_seen_up(&self) -> bool {
        self.seen_up.load(Ordering::Acquire)
    }

    /// Sets this node's own verdict only (in a cluster, where the health
    /// in force is the cluster's); returns true if it changed.
    pub fn set_seen_up(&self, up: bool) -> bool {
        self.seen_up.swap(up, Ordering::AcqRel) != up
    }

    /// Sets the health in force only (the cluster's verdict), leaving this
    /// node's own verdict; returns true if it changed.
    pub fn set_cluster_up(&self, up: bool) -> bool {
        let changed = self.up.swap(up, Ordering::AcqRel) != up;
        if changed && up {
            self.up_since_ms.store(clock::now_ms(), Ordering::Release);
            self.consecutive_failures.store(0, Ordering::Release);
        }
        changed
    }

    /// Marks the start of slow start now (e.g. a server enabled by an operator).
    pub fn restart_slow_start(&self) {
        self.up_since_ms.store(clock::now_ms(), Ordering::Release);
    }

    /// Milliseconds since the server last came up (`None`: up from the start).
    pub fn up_for_ms(&self) -> Option<u64> {
        match self.up_since_ms.load(Ordering::Acquire) {
            0 => None,
            t => Some(clock::now_ms().saturating_sub(t)),
        }
    }

    /// Operator state.
    pub fn admin(&self) -> AdminState {
        match self.admin.load(Ordering::Acquire) {
            0 => AdminState::Enabled,
            1 => AdminState::Draining,
            _ => AdminState::Disabled,
        }
    }

    /// Sets the operator state; returns the previous one.
    pub fn set_admin(&self, a: AdminState) -> AdminState {
        match self.admin.swap(a as u8, Ordering::AcqRel) {
            0 => AdminState::Enabled,
            1 => AdminState::Draining,
            _ => AdminState::Disabled,
        }
    }

    /// May take new traffic.
    pub fn is_eligible(&self) -> bool {
        self.is_up() && self.admin() == AdminState::Enabled
    }

    /// Current connections or flows.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// Connections or flows since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Bytes client→server and server→client.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        )
    }

    /// Adds relayed bytes.
    pub fn add_bytes(&self, to_server: u64, to_client: u64) {
        self.bytes_in.fetch_add(to_server, Ordering::Relaxed);
        self.bytes_out.fetch_add(to_client, Ordering::Relaxed);
    }

    /// Connect failures since start.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// Records a connect failure or reset; returns the consecutive count.
    pub fn record_failure(&self) -> u32 {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Records a successful connect.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Release);
        }
    }

    /// Counts a new connection; the guard uncounts it when dropped.
    pub fn open(self: &Arc<Self>) -> ConnGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.total.fetch_add(1, Ordering::Relaxed);
        ConnGuard {
            state: Arc::clone(self),
        }
    }

    /// A receiver that changes when the server's connections must close
    /// (drain timeout expired, server removed, node stopping).
    pub fn kill_signal(&self) -> watch::Receiver<u64> {
        self.kill.subscribe()
    }

    /// Closes every open connection of this server, and cuts its HTTP
    /// responses in progress.
    pub fn kill_all(&self) {
        self.kill_requests.send_modify(|v| *v += 1);
        self.close_connections();
    }

    /// A receiver that changes when the server's HTTP responses in
    /// progress must be cut (disabled, drain timeout) — not when it is
    /// merely removed from the config: those requests finish.
    pub fn request_kill_signal(&self) -> watch::Receiver<u64> {
        self.kill_requests.subscribe()
    }

    /// Closes every open L4 connection of this server (it left the
    /// config); HTTP requests in flight finish.
    pub fn close_connections(&self) {
        self.kill.send_modify(|v| *v += 1);
        // After the server's own signal: whoever wakes for this sees it.
        SERVER_KILLS.send_modify(|v| *v += 1);
    }
}

impl ServerState {
    /// Requests in flight (HTTP), this process's and those a replaced
    /// process still serves.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire) + self.foreign_in_flight.load(Ordering::Acquire)
    }

    /// Sum of the costs of the requests in flight (both processes').
    pub fn outstanding_cost(&self) -> u64 {
        self.cost.load(Ordering::Acquire) + self.foreign_cost.load(Ordering::Acquire)
    }

    /// This process's own requests in flight and their cost.
    pub fn own_load(&self) -> (u64, u64) {
        (
            self.in_flight.load(Ordering::Acquire),
            self.cost.load(Ordering::Acquire),
        )
    }

    /// What the replaced process still has in flight on this server.
    pub fn set_foreign_load(&self, in_flight: u64, cost: u64) {
        self.foreign_in_flight.store(in_flight, Ordering::Release);
        self.foreign_cost.store(cost, Ordering::Release);
    }

    /// The state to hand to a process that takes over.
    pub fn handover(&self) -> Handover {
        let now = clock::now_ms();
        let (latency_us, error_rate) = self.qos();
        let o = self.outlier.lock().unwrap_or_else(|e| e.into_inner());
        Handover {
            up: self.is_up(),
            up_for_ms: self.up_for_ms(),
            latency_us,
            error_rate,
            consecutive_failures: self.consecutive_failures.load(Ordering::Acquire),
            ejected_for_ms: self
                .ejected_until_ms
                .load(Ordering::Acquire)
                .saturating_sub(now),
            ejections: o.ejections(),
        }
    }

    /// Takes over the state a replaced process handed over.
    pub fn take_over(&self, h: &Handover) {
        let now = clock::now_ms();
        self.up.store(h.up, Ordering::Release);
        self.seen_up.store(h.up, Ordering::Release);
        // Slow start goes on where it was.
        self.up_since_ms.store(
            h.up_for_ms.map_or(0, |d| now.saturating_sub(d).max(1)),
            Ordering::Release,
        );
        // (The clock starts at START_MS, so a recent moment of the old
        // process is still a moment of this one.)
        self.consecutive_failures
            .store(h.consecutive_failures, Ordering::Release);
        {
            let mut q = self.qos.lock().unwrap_or_else(|e| e.into_inner());
            q.latency.set(h.latency_us, now);
            if h.error_rate.is_finite() {
                q.error_rate = h.error_rate.clamp(0.0, 1.0);
            }
        }
        let mut o = self.outlier.lock().unwrap_or_else(|e| e.into_inner());
        o.resume(h.ejections, h.ejected_for_ms, now);
        if h.ejected_for_ms > 0 {
            self.ejected_until_ms
                .store(now + h.ejected_for_ms, Ordering::Release);
        }
    }

    /// HTTP requests since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts a request of `cost` as in flight.
    pub fn begin_request(&self, cost: u32) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.cost.fetch_add(u64::from(cost), Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Uncounts a request begun earlier.
    pub fn end_request(&self, cost: u32) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.cost.fetch_sub(u64::from(cost), Ordering::AcqRel);
    }

    /// Records a request's outcome: latency to response headers and
    /// whether it failed.
    pub fn observe(&self, latency_us: f64, error: bool) {
        self.observe_at(latency_us, error, clock::now_ms());
    }

    /// [`observe`](Self::observe) for an outcome known at `now` ([`clock`]
    /// milliseconds): no clock read.
    pub fn observe_at(&self, latency_us: f64, error: bool, now: u64) {
        let mut q = self.qos.lock().unwrap_or_else(|e| e.into_inner());
        if !error {
            q.latency.observe(latency_us, now);
        }
        let x = if error { 1.0 } else { 0.0 };
        q.error_rate = q.error_rate * 0.9 + x * 0.1;
    }

    /// Counts a failed HTTP request of `kind`.
    pub fn count_error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Failed HTTP requests of `kind` since start.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize].load(Ordering::Relaxed)
    }

    /// Times the server was ejected as an outlier.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Notes why the server went down.
    pub fn set_down_reason(&self, why: &str) {
        self.why.lock().unwrap_or_else(|e| e.into_inner()).0 = why.to_string();
    }

    /// Notes why the server was ejected.
    pub fn set_ejection_reason(&self, why: &'static str) {
        self.why.lock().unwrap_or_else(|e| e.into_inner()).1 = why;
    }

    /// (why down, why ejected), as last noted.
    pub fn reasons(&self) -> (String, &'static str) {
        self.why.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Milliseconds of outlier ejection left (0: not ejected).
    pub fn ejected_for_ms(&self) -> u64 {
        let until = self.ejected_until_ms.load(Ordering::Acquire);
        until.saturating_sub(clock::now_ms())
    }

    /// Ejected as an outlier now.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Acquire);
        until != 0 && clock::now_ms() < until
    }

    /// Feeds a request outcome known at `now` ([`clock`] milliseconds) to
    /// outlier detection; returns the ejection time in ms when this outcome
    /// ejects the server. `allowed` says whether the pool may lose one more
    /// server (asked only when an ejection is due).
    pub fn record_outcome(
        &self,
        ok: bool,
        now: u64,
        cfg: &convoy_balance::outlier::OutlierConfig,
        allowed: impl FnOnce() -> bool,
    ) -> Option<u64> {
        let mut o = self.outlier.lock().unwrap_or_else(|e| e.into_inner());
        let until = o.record(ok, now, cfg, allowed)?;
        self.ejected_until_ms.store(until, Ordering::Release);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        Some(until - now)
    }

    /// (latency EWMA µs, error rate).
    pub fn qos(&self) -> (f64, f64) {
        let q = self.qos.lock().unwrap_or_else(|e| e.into_inner());
        (q.latency.get(), q.error_rate)
    }
}

/// Keeps a connection counted on its server while alive.
#[derive(Debug)]
pub struct ConnGuard {
    state: Arc<ServerState>,
}

impl ConnGuard {
    /// The server.
    pub fn server(&self) -> &Arc<ServerState> {
        &self.state
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ServerState {
    /// True when a draining server has no connection left (the control plane
    /// polls this to report "drain finished").
    pub fn drain_finished(&self) -> bool {
        self.admin() == AdminState::Draining && self.active() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_counts_and_eligibility() {
        let s = Arc::new(ServerState::new("p", "a", AdminState::Enabled));
        assert!(s.is_eligible());
        let g = s.open();
        let g2 = s.open();
        assert_eq!(s.active(), 2);
        drop(g);
        assert_eq!(s.active(), 1);
        assert_eq!(s.set_admin(AdminState::Draining), AdminState::Enabled);
        assert!(!s.is_eligible());
        assert!(!s.drain_finished());
        drop(g2);
        assert!(s.drain_finished());
        assert_eq!(s.total(), 2);
        assert!(s.set_up(false));
        assert!(!s.set_up(false));
        assert_eq!(s.record_failure(), 1);
        assert_eq!(s.record_failure(), 2);
        assert!(s.set_up(true));
        assert!(s.up_for_ms().is_some());
    }
}
