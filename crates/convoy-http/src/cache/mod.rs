//! HTTP response cache core: an in-memory *shared* cache (RFC 9111) with a
//! byte budget, LRU/LFU/FIFO eviction, `Vary` variants, revalidation (304
//! merge per RFC 9111 §3.2/§4.3.4), `stale-while-revalidate` and
//! `stale-if-error` (RFC 5861), purge by key prefix, invalidation by unsafe
//! methods (RFC 9111 §4.4) and request coalescing.
//!
//! No I/O happens here: the proxy asks [`Cache::lookup`], sends what it is
//! told to send, and reports back with [`Cache::store`] (a full response) or
//! [`Cache::revalidated`] (a 304). Every time-dependent call takes `now`, so
//! tests control the clock.
//!
//! Freshness, storability and the conditional request come from the
//! `http-cache-semantics` crate (one `CachePolicy` per stored variant, shared
//! cache options). Its policy compares URIs and the `Host` header literally,
//! so both the stored and the presented request are *normalized* first:
//! method `GET` (a `HEAD` is answered from a stored `GET`), origin-form URI
//! (`/path?query`) and a lowercase `Host` taken from the absolute URI when
//! there is one. The cache key is the same thing written as text:
//! `host[:port]/path?query` with the default ports `:80`/`:443` dropped.
//!
//! Integration notes for the request path:
//! * `Lookup::Fresh` → serve `parts` + `body` as is (it carries `Age`).
//! * `Lookup::StaleWhileRevalidate` → serve the stale copy now; send the
//!   conditional request in the background (use [`Cache::coalesce`] on the key
//!   so that only one background refresh runs), then `revalidated`/`store`.
//! * `Lookup::Revalidate` → send the conditional request; on 304 call
//!   [`Cache::revalidated`] and serve what it returns (if it returns `None`
//!   the 304 was not about the stored copy: forward it); on a full response
//!   call [`Cache::store`] and forward it; on an error or 5xx serve the stale
//!   copy if [`Cache::stale_if_error`] says so.
//! * `Lookup::Miss` → [`Cache::coalesce`]: the leader fetches, stores and
//!   drops its guard; waiters `wait()` (with their own timeout) and look up
//!   again. The conditional request keeps the client's method: a `HEAD`
//!   revalidates with `HEAD`, and a 200 to it is not stored.
//! * The client's own `If-None-Match`/`If-Modified-Since` are *not* passed to
//!   the origin in a conditional request (the origin is asked about the stored
//!   copy only); [`Cached::not_modified`] tells whether the client should get
//!   a 304 for the response being served.
//! * Unsafe methods: call [`Cache::invalidate`] with the origin's status.

mod coalesce;
mod entry;
mod lookup;
mod rules;
mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::request;
use http_cache_semantics::CacheOptions;

pub use coalesce::{Coalesce, LeadGuard, Waiter};
pub use lookup::{Cached, Lookup};

use coalesce::Flights;
use entry::Inner;
use rules::{key_of, request_host};

/// Eviction policy when the memory budget is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Eviction {
    /// Least recently used (stored or looked up) goes first.
    #[default]
    Lru,
    /// Least frequently used goes first, with dynamic aging (LFU-DA: an
    /// entry's priority is its use count plus the priority of the last
    /// evicted entry at its last use), ties broken by recency.
    Lfu,
    /// First stored, first evicted; lookups do not change the order.
    Fifo,
}

/// Cache sizing and policy.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Budget for all entries: body bytes + header bytes + bookkeeping
    /// (approximate).
    pub max_bytes: u64,
    /// Largest body stored.
    pub max_object_bytes: u64,
    /// What to evict when `max_bytes` would be exceeded.
    pub eviction: Eviction,
    /// `stale-while-revalidate` window for responses that do not carry the
    /// directive (never applied to `must-revalidate`, `proxy-revalidate` or
    /// `no-cache` responses).
    pub stale_while_revalidate_default: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_object_bytes: 8 << 20,
            eviction: Eviction::Lru,
            stale_while_revalidate_default: None,
        }
    }
}

/// Counters (monotonic) and gauges (`stored_bytes`, `entries`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered `Fresh`.
    pub hits: u64,
    /// GET/HEAD lookups answered `Miss`.
    pub misses: u64,
    /// Stale copies handed out: `StaleWhileRevalidate` answers plus
    /// `stale_if_error` calls that allowed serving.
    pub stale_served: u64,
    /// Conditional requests asked for (`Revalidate` and
    /// `StaleWhileRevalidate` answers).
    pub revalidations: u64,
    /// Entries refreshed by a 304.
    pub refreshes: u64,
    /// Responses stored (new or replacing).
    pub stores: u64,
    /// Entries evicted to stay under the budget.
    pub evictions: u64,
    /// Entries removed by `purge`, `invalidate`, `sweep` and lookups of
    /// unusable expired entries.
    pub removed: u64,
    /// `coalesce` calls told to wait for a leader.
    pub coalesced: u64,
    /// Bytes accounted to stored entries.
    pub stored_bytes: u64,
    /// Stored entries (each `Vary` variant counts).
    pub entries: u64,
}

/// An in-memory HTTP response cache; `Send + Sync`, share it in an `Arc`.
pub struct Cache {
    cfg: CacheConfig,
    opts: CacheOptions,
    inner: Mutex<Inner>,
    flights: Arc<Mutex<Flights>>,
    coalesced: AtomicU64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Cache {
    /// An empty cache.
    pub fn new(cfg: CacheConfig) -> Self {
        Self {
            cfg,
            opts: CacheOptions {
                shared: true,
                ..CacheOptions::default()
            },
            inner: Mutex::new(Inner::default()),
            flights: Arc::new(Mutex::new(Flights::default())),
            coalesced: AtomicU64::new(0),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// The cache key: lowercase host (from the absolute URI, else `Host`),
    /// non-default port, path and query, e.g. `example.com/a/b?c=1`.
    pub fn key(&self, req: &request::Parts) -> String {
        key_of(&request_host(req), &req.uri)
    }

    /// Counts a miss found after the lookup (a revalidation that brought
    /// a full response instead of a 304).
    pub fn count_miss(&self) {
        self.lock().stats.misses += 1;
    }

    /// Takes back the miss of a lookup whose request then waited for a
    /// coalesced fetch (it looks again, and that look counts).
    pub fn uncount_miss(&self) {
        let mut inner = self.lock();
        inner.stats.misses = inner.stats.misses.saturating_sub(1);
    }

    /// Counters and gauges.
    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            stored_bytes: inner.bytes,
            entries: inner.entries.len() as u64,
            coalesced: self.coalesced.load(Ordering::Relaxed),
            ..inner.stats
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
