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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, response, Method, StatusCode, Uri, Version};
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};
use tokio::sync::watch;

use crate::headers::strip_hop_by_hop;

/// Fixed per-entry bookkeeping counted in the memory budget (policy, maps,
/// ordering set), on top of body, headers and key.
const ENTRY_OVERHEAD: u64 = 256;
/// Approximate per-header overhead of a `HeaderMap` slot.
const HEADER_OVERHEAD: u64 = 32;

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

/// A stored response, ready to serve.
#[derive(Debug, Clone)]
pub struct Cached {
    /// Status, version and the headers as stored (hop-by-hop removed,
    /// `Content-Length` present) with `Age` set to [`Cached::age`].
    pub parts: response::Parts,
    /// The body; empty when answering a `HEAD`.
    pub body: Bytes,
    /// Current age (the `Age` header's value).
    pub age: Duration,
    /// Time left until the response becomes stale (zero when stale).
    pub ttl: Duration,
    /// How far past its freshness lifetime the response is (zero when fresh).
    pub staleness: Duration,
    /// The cache key it was found under.
    pub key: String,
    stale_at: SystemTime,
    stale_if_error: Option<Duration>,
}

impl Cached {
    /// Whether the client's own conditional headers are satisfied by this
    /// response, i.e. the client should get a 304 (RFC 9110 §13.2.2):
    /// `If-None-Match` by weak comparison (or `*`), else `If-Modified-Since`
    /// equal to `Last-Modified` (exact match, as nginx does by default).
    pub fn not_modified(&self, req: &request::Parts) -> bool {
        if req.method != Method::GET && req.method != Method::HEAD {
            return false;
        }
        if !self.parts.status.is_success() {
            return false;
        }
        let h = &self.parts.headers;
        if req.headers.contains_key(header::IF_NONE_MATCH) {
            let Some(etag) = h.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
                return false;
            };
            let ours = etag.trim().trim_start_matches("W/");
            return comma_values(req.headers.get_all(header::IF_NONE_MATCH))
                .any(|t| t == "*" || t.trim_start_matches("W/") == ours);
        }
        match (
            req.headers.get(header::IF_MODIFIED_SINCE),
            h.get(header::LAST_MODIFIED),
        ) {
            (Some(ims), Some(lm)) => ims.as_bytes().trim_ascii() == lm.as_bytes().trim_ascii(),
            _ => false,
        }
    }
}

/// What to do with a request.
// The variants are handed over once and moved; boxing would only add an
// allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Lookup {
    /// Fresh: serve it (it carries the computed `Age` header).
    Fresh(Cached),
    /// Stale but usable while revalidating in the background
    /// (stale-while-revalidate), plus the conditional request
    /// (`If-None-Match`/`If-Modified-Since`) to send.
    StaleWhileRevalidate(Cached, request::Parts),
    /// Must revalidate first; here is the conditional request to send (a
    /// plain request when the stored response has no validator). The copy may
    /// still be served if the origin fails, see [`Cache::stale_if_error`].
    Revalidate(Cached, request::Parts),
    /// Not in the cache, or not usable for this request (`Vary` mismatch,
    /// `Authorization` without `public`, expired without a way to revalidate,
    /// method other than GET/HEAD).
    Miss,
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

/// Parts of the stored response's `Cache-Control` that the policy crate does
/// not act on for us.
#[derive(Debug, Clone, Copy, Default)]
struct Directives {
    swr: Option<Duration>,
    sie: Option<Duration>,
    /// `must-revalidate`, `proxy-revalidate` or `no-cache`: never served stale
    /// without revalidation (stale-if-error excepted, RFC 5861 §4).
    no_stale: bool,
    /// May answer a request carrying `Authorization` (RFC 9111 §3.5).
    auth_ok: bool,
    public: bool,
    validator: bool,
}

impl Directives {
    fn of(h: &HeaderMap) -> Self {
        let mut d = Directives {
            validator: h.contains_key(header::ETAG) || h.contains_key(header::LAST_MODIFIED),
            ..Default::default()
        };
        for (k, v) in cache_control(h) {
            let secs = || {
                v.as_deref()
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs)
            };
            match k.as_str() {
                "stale-while-revalidate" => d.swr = secs(),
                "stale-if-error" => d.sie = secs(),
                "must-revalidate" => {
                    d.no_stale = true;
                    d.auth_ok = true;
                }
                "proxy-revalidate" | "no-cache" => d.no_stale = true,
                "public" => {
                    d.public = true;
                    d.auth_ok = true;
                }
                // s-maxage implies proxy-revalidate for a shared cache
                // (RFC 9111 §5.2.2.10).
                "s-maxage" => {
                    d.auth_ok = true;
                    d.no_stale = true;
                }
                _ => {}
            }
        }
        d
    }
}

struct Entry {
    key: String,
    policy: CachePolicy,
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    size: u64,
    /// When the freshness lifetime runs out.
    stale_at: SystemTime,
    /// A plain hit needs no policy check: computed when stored.
    fast: Fast,
    dir: Directives,
    rank: (u64, u64),
    inserted: u64,
    last_access: u64,
    freq: u64,
    lfu_key: u64,
}

/// What a plain hit needs, computed when the entry is stored or
/// refreshed: the request fields its `Vary` names (first values, as the
/// policy compares them), its age then, and whether a fresh copy may be
/// served without asking the policy (not for a response's `no-cache`).
#[derive(Debug, Clone)]
struct Fast {
    ok: bool,
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
    stored_at: SystemTime,
    age_then: Duration,
}

impl Fast {
    fn of(
        stored_req: &request::Parts,
        resp_headers: &HeaderMap,
        policy: &CachePolicy,
        now: SystemTime,
    ) -> Fast {
        let mut vary = Vec::new();
        let mut ok = !cache_control(resp_headers).any(|(k, _)| k == "no-cache");
        for name in comma_values(resp_headers.get_all(header::VARY)) {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => {
                    let v = stored_req.headers.get(&n).cloned();
                    vary.push((n, v));
                }
                Err(_) => ok = false,
            }
        }
        Fast {
            ok,
            vary,
            stored_at: now,
            age_then: policy.age(now),
        }
    }

    /// Whether a request's fields select this variant.
    fn matches(&self, h: &HeaderMap) -> bool {
        self.vary.iter().all(|(n, v)| h.get(n) == v.as_ref())
    }
}

/// A request that only a plain hit can answer: no `Cache-Control`,
/// `Pragma` or `Authorization` of its own.
fn plain_request(h: &HeaderMap) -> bool {
    !h.contains_key(header::CACHE_CONTROL)
        && !h.contains_key(header::PRAGMA)
        && !h.contains_key(header::AUTHORIZATION)
}

impl Entry {
    /// A fresh entry served to a plain request, without the policy.
    fn cached_fast(&self, now: SystemTime, head: bool) -> Cached {
        let age = self.fast.age_then + now.duration_since(self.fast.stored_at).unwrap_or_default();
        let ttl = self.stale_at.duration_since(now).unwrap_or_default();
        self.answer(age, ttl, Duration::ZERO, head)
    }

    fn cached(&self, now: SystemTime, head: bool) -> Cached {
        let staleness = now.duration_since(self.stale_at).unwrap_or_default();
        self.answer(
            self.policy.age(now),
            self.policy.time_to_live(now),
            staleness,
            head,
        )
    }

    /// The stored response with its `Age`.
    fn answer(&self, age: Duration, ttl: Duration, staleness: Duration, head: bool) -> Cached {
        let mut headers = self.headers.clone();
        headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
        Cached {
            parts: response_parts(self.status, self.version, headers),
            body: if head {
                Bytes::new()
            } else {
                self.body.clone()
            },
            age,
            ttl,
            staleness,
            key: self.key.clone(),
            stale_at: self.stale_at,
            stale_if_error: self.dir.sie,
        }
    }

    /// Past its freshness lifetime with nothing left to do with it: no
    /// validator to revalidate with, no stale window open.
    fn useless(&self, now: SystemTime) -> bool {
        let staleness = now.duration_since(self.stale_at).unwrap_or_default();
        self.policy.is_stale(now)
            && !self.dir.validator
            && self.dir.sie.is_none_or(|w| staleness > w)
            && self.dir.swr.is_none_or(|w| staleness > w)
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, Entry>,
    /// Key → variant ids, oldest first. Ordered for prefix purges.
    index: BTreeMap<String, Vec<u64>>,
    /// Eviction order: smallest rank first.
    order: BTreeSet<((u64, u64), u64)>,
    next_id: u64,
    tick: u64,
    /// LFU-DA "L": the priority of the last entry evicted.
    lfu_age: u64,
    bytes: u64,
    stats: CacheStats,
}

fn rank_of(eviction: Eviction, e: &Entry) -> (u64, u64) {
    match eviction {
        Eviction::Lru => (e.last_access, 0),
        Eviction::Fifo => (e.inserted, 0),
        Eviction::Lfu => (e.lfu_key, e.last_access),
    }
}

impl Inner {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn insert(&mut self, mut e: Entry, eviction: Eviction, freq: u64) -> u64 {
        let tick = self.next_tick();
        e.inserted = tick;
        e.last_access = tick;
        e.freq = freq.max(1);
        e.lfu_key = self.lfu_age.saturating_add(e.freq);
        e.rank = rank_of(eviction, &e);
        let id = self.next_id;
        self.next_id += 1;
        self.order.insert((e.rank, id));
        self.index.entry(e.key.clone()).or_default().push(id);
        self.bytes += e.size;
        self.entries.insert(id, e);
        id
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.entries.remove(&id)?;
        self.order.remove(&(e.rank, id));
        if let Some(ids) = self.index.get_mut(&e.key) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                self.index.remove(&e.key);
            }
        }
        self.bytes -= e.size;
        Some(e)
    }

    fn touch(&mut self, id: u64, eviction: Eviction) {
        let tick = self.next_tick();
        let lfu_age = self.lfu_age;
        if let Some(e) = self.entries.get_mut(&id) {
            self.order.remove(&(e.rank, id));
            e.last_access = tick;
            e.freq = e.freq.saturating_add(1);
            e.lfu_key = lfu_age.saturating_add(e.freq);
            e.rank = rank_of(eviction, e);
            self.order.insert((e.rank, id));
        }
    }

    fn evict_until_fits(&mut self, incoming: u64, max: u64) {
        while self.bytes + incoming > max {
            let Some(&(rank, id)) = self.order.first() else {
                break;
            };
            // Only LFU ranks are priorities; for the others this is unused.
            self.lfu_age = self.lfu_age.max(rank.0);
            self.remove(id);
            self.stats.evictions += 1;
        }
    }

    /// The newest variant under `key` that the (normalized) request selects,
    /// and whether it can be used without revalidation (`None`) or the
    /// policy's revalidation request (`Some`).
    fn find(
        &self,
        key: &str,
        norm: &request::Parts,
        now: SystemTime,
    ) -> Option<(u64, Option<request::Parts>)> {
        let ids = self.index.get(key)?;
        ids.iter().rev().find_map(|&id| {
            let e = self.entries.get(&id)?;
            match e.policy.before_request(norm, now) {
                // A client's max-stale does not reach past the response's
                // must-revalidate, proxy-revalidate, no-cache or s-maxage
                // (RFC 9111 §4.2.4, §5.2.2.2).
                BeforeRequest::Fresh(_) if e.dir.no_stale && e.policy.is_stale(now) => {
                    match e.policy.before_request(&without_max_stale(norm), now) {
                        BeforeRequest::Stale {
                            request,
                            matches: true,
                        } => Some((id, Some(request))),
                        BeforeRequest::Fresh(_) => Some((id, None)),
                        BeforeRequest::Stale { .. } => None,
                    }
                }
                BeforeRequest::Fresh(_) => Some((id, None)),
                BeforeRequest::Stale {
                    request,
                    matches: true,
                } => Some((id, Some(request))),
                BeforeRequest::Stale { .. } => None,
            }
        })
    }
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

    /// Looks a GET or HEAD request up. A request carrying `Authorization` is
    /// only answered from responses that allow it (`public`, `s-maxage`,
    /// `must-revalidate`). Request `no-cache`, `max-age`, `min-fresh` and
    /// `Pragma: no-cache` are honoured (→ `Revalidate`), `max-stale` too.
    pub fn lookup(&self, req: &request::Parts, now: SystemTime) -> Lookup {
        self.lookup_keyed(req, &self.key(req), now)
    }

    /// [`Cache::lookup`] with the request's key already computed
    /// ([`Cache::key`]).
    pub fn lookup_keyed(&self, req: &request::Parts, key: &str, now: SystemTime) -> Lookup {
        let head = req.method == Method::HEAD;
        if req.method != Method::GET && !head {
            return Lookup::Miss;
        }
        let eviction = self.cfg.eviction;
        let mut inner = self.lock();
        // A plain request and a fresh variant: a hit without the policy
        // (which parses the stored fields again on every call).
        if plain_request(&req.headers) {
            let found = inner.index.get(key).and_then(|ids| {
                ids.iter().rev().find_map(|&id| {
                    let e = inner.entries.get(&id)?;
                    e.fast
                        .matches(&req.headers)
                        .then_some((id, e.fast.ok && now < e.stale_at))
                })
            });
            if let Some((id, true)) = found {
                if let Some(e) = inner.entries.get(&id) {
                    let c = e.cached_fast(now, head);
                    inner.touch(id, eviction);
                    inner.stats.hits += 1;
                    return Lookup::Fresh(c);
                }
            }
        }
        let norm = policy_request(req, &request_host(req));
        let Some((id, revalidation)) = inner.find(key, &norm, now) else {
            inner.stats.misses += 1;
            return Lookup::Miss;
        };
        let Some(e) = inner.entries.get(&id) else {
            inner.stats.misses += 1;
            return Lookup::Miss;
        };
        if req.headers.contains_key(header::AUTHORIZATION) && !e.dir.auth_ok {
            inner.stats.misses += 1;
            return Lookup::Miss;
        }
        let Some(policy_req) = revalidation else {
            let c = e.cached(now, head);
            inner.touch(id, eviction);
            inner.stats.hits += 1;
            return Lookup::Fresh(c);
        };
        let stale = e.policy.is_stale(now);
        let staleness = now.duration_since(e.stale_at).unwrap_or_default();
        let swr = if e.dir.no_stale {
            None
        } else {
            e.dir.swr.or(self.cfg.stale_while_revalidate_default)
        };
        if stale && swr.is_some_and(|w| staleness <= w) && !request_demands_validation(&req.headers)
        {
            let c = e.cached(now, head);
            let cond = conditional_request(req, &policy_req);
            inner.touch(id, eviction);
            inner.stats.stale_served += 1;
            inner.stats.revalidations += 1;
            return Lookup::StaleWhileRevalidate(c, cond);
        }
        if e.useless(now) {
            inner.remove(id);
            inner.stats.removed += 1;
            inner.stats.misses += 1;
            return Lookup::Miss;
        }
        let c = e.cached(now, head);
        let cond = conditional_request(req, &policy_req);
        inner.touch(id, eviction);
        inner.stats.revalidations += 1;
        Lookup::Revalidate(c, cond)
    }

    /// Stores a complete response to a GET if a shared cache may (RFC 9111
    /// §3: `no-store` in request or response, `private`, `Authorization`
    /// without `public`/`s-maxage`/`must-revalidate` and non-cacheable
    /// statuses are refused; so are `Set-Cookie` without `public`, `Vary: *`,
    /// a body over `max_object_bytes` or not matching `Content-Length`, and
    /// responses already stale with no validator and no stale window).
    /// Replaces the variant the request selects; evicts to fit the budget.
    ///
    /// A refused response still supersedes the variant it would have
    /// replaced, which is dropped, unless it is a 5xx (the old copy may serve
    /// stale-if-error) or the refusal came from the request (`Authorization`,
    /// `no-store`), so that clients cannot knock entries out.
    pub fn store(
        &self,
        req: &request::Parts,
        resp: &response::Parts,
        body: Bytes,
        now: SystemTime,
    ) -> bool {
        // A HEAD response has no body: storing it would answer GETs with none.
        if req.method != Method::GET {
            return false;
        }
        let host = request_host(req);
        let key = key_of(&host, &req.uri);
        let norm = policy_request(req, &host);
        let Some(entry) = self.prepare(key.clone(), &norm, resp, body, now) else {
            let client_refused = req.headers.contains_key(header::AUTHORIZATION)
                || cache_control(&req.headers).any(|(k, _)| k == "no-store");
            if !resp.status.is_server_error() && !client_refused {
                let mut inner = self.lock();
                if let Some((old, _)) = inner.find(&key, &norm, now) {
                    inner.remove(old);
                    inner.stats.removed += 1;
                }
            }
            return false;
        };
        let size = entry.size;
        let mut inner = self.lock();
        let mut freq = 1;
        if let Some((old, _)) = inner.find(&key, &norm, now) {
            if let Some(old) = inner.remove(old) {
                // A re-fetched popular object keeps its popularity.
                freq = old.freq;
            }
        }
        inner.evict_until_fits(size, self.cfg.max_bytes);
        inner.insert(entry, self.cfg.eviction, freq);
        inner.stats.stores += 1;
        true
    }

    /// The entry to store for a GET response, or `None` if it may not or
    /// should not be stored (see [`Cache::store`]).
    fn prepare(
        &self,
        key: String,
        norm: &request::Parts,
        resp: &response::Parts,
        body: Bytes,
        now: SystemTime,
    ) -> Option<Entry> {
        if body.len() as u64 > self.cfg.max_object_bytes {
            return None;
        }
        if let Some(cl) = resp.headers.get(header::CONTENT_LENGTH) {
            let declared = cl.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
            if declared != Some(body.len() as u64) {
                return None;
            }
        }
        let mut headers = resp.headers.clone();
        strip_hop_by_hop(&mut headers);
        if comma_values(headers.get_all(header::VARY)).any(|v| v == "*") {
            return None;
        }
        let dir = Directives::of(&headers);
        if headers.contains_key(header::SET_COOKIE) && !dir.public {
            return None;
        }
        let bodyless = resp.status == StatusCode::NO_CONTENT
            || resp.status == StatusCode::NOT_MODIFIED
            || resp.status.is_informational();
        if !bodyless && !headers.contains_key(header::CONTENT_LENGTH) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let stored_resp = response_parts(resp.status, resp.version, headers);
        // Storability is judged on the full request (its Cache-Control and
        // Authorization count); the entry keeps only what matching needs.
        if !CachePolicy::new_options(norm, &stored_resp, now, self.opts).is_storable() {
            return None;
        }
        let stored_req = stored_request(norm, &stored_resp.headers);
        let policy = CachePolicy::new_options(&stored_req, &stored_resp, now, self.opts);
        let ttl = policy.time_to_live(now);
        if ttl.is_zero() && !dir.validator && dir.sie.is_none() && dir.swr.is_none() {
            return None;
        }
        let size = entry_size(&key, &stored_req.headers, &stored_resp.headers, &body);
        if size > self.cfg.max_bytes {
            return None;
        }
        let fast = Fast::of(&stored_req, &stored_resp.headers, &policy, now);
        Some(Entry {
            key,
            fast,
            policy,
            status: stored_resp.status,
            version: stored_resp.version,
            headers: stored_resp.headers,
            body,
            size,
            stale_at: now + ttl,
            dir,
            rank: (0, 0),
            inserted: 0,
            last_access: 0,
            freq: 0,
            lfu_key: 0,
        })
    }

    /// After a revalidation: a 304 whose validators match the stored variant
    /// refreshes it (304 header fields added/replaced except
    /// `Content-Length`, `Content-Encoding`, `Content-Range` and hop-by-hop
    /// ones; freshness restarts at `now`) and the response to serve is
    /// returned. Anything else returns `None` (for a full response call
    /// [`Cache::store`]). A 304 that makes the response unstorable (e.g.
    /// `no-store`) is served once and the entry dropped.
    pub fn revalidated(
        &self,
        req: &request::Parts,
        resp_304: &response::Parts,
        now: SystemTime,
    ) -> Option<Cached> {
        if resp_304.status != StatusCode::NOT_MODIFIED {
            return None;
        }
        let head = req.method == Method::HEAD;
        let host = request_host(req);
        let key = key_of(&host, &req.uri);
        let norm = policy_request(req, &host);
        let mut inner = self.lock();
        let (id, _) = inner.find(&key, &norm, now)?;
        let e = inner.entries.get(&id)?;
        match e.policy.after_response(&norm, resp_304, now) {
            AfterResponse::NotModified(..) => {}
            AfterResponse::Modified(..) => return None,
        }
        let mut e = inner.remove(id)?;
        let headers = merge_304(&e.headers, &resp_304.headers);
        let merged = response_parts(e.status, e.version, headers);
        let stored_req = stored_request(&norm, &merged.headers);
        let full = CachePolicy::new_options(&norm, &merged, now, self.opts);
        let dir = Directives::of(&merged.headers);
        let keep = full.is_storable()
            && (dir.public || !merged.headers.contains_key(header::SET_COOKIE))
            && !comma_values(merged.headers.get_all(header::VARY)).any(|v| v == "*");
        e.policy = CachePolicy::new_options(&stored_req, &merged, now, self.opts);
        e.stale_at = now + e.policy.time_to_live(now);
        e.fast = Fast::of(&stored_req, &merged.headers, &e.policy, now);
        e.dir = dir;
        e.size = entry_size(&e.key, &stored_req.headers, &merged.headers, &e.body);
        e.headers = merged.headers;
        let served = e.cached(now, head);
        inner.stats.refreshes += 1;
        if !keep || e.size > self.cfg.max_bytes {
            inner.stats.removed += 1;
            return Some(served);
        }
        let (inserted, freq) = (e.inserted, e.freq + 1);
        inner.evict_until_fits(e.size, self.cfg.max_bytes);
        let id = inner.insert(e, self.cfg.eviction, freq);
        if self.cfg.eviction == Eviction::Fifo {
            // A refresh is no re-insertion: keep the FIFO position.
            if let Some(e) = inner.entries.get_mut(&id) {
                let old_rank = e.rank;
                e.inserted = inserted;
                e.rank = rank_of(Eviction::Fifo, e);
                let new_rank = e.rank;
                inner.order.remove(&(old_rank, id));
                inner.order.insert((new_rank, id));
            }
        }
        Some(served)
    }

    /// Whether the stale copy `c` may be served because the origin failed:
    /// its response carried `stale-if-error=N` and it is at most `N` seconds
    /// past its freshness lifetime (RFC 5861 §4, which applies regardless of
    /// other freshness directives). Counts in `stale_served` when it says yes.
    pub fn stale_if_error(&self, c: &Cached, now: SystemTime) -> bool {
        let Some(window) = c.stale_if_error else {
            return false;
        };
        let ok = now.duration_since(c.stale_at).unwrap_or_default() <= window;
        if ok {
            self.lock().stats.stale_served += 1;
        }
        ok
    }

    /// Removes every entry (all variants) whose key starts with `prefix`
    /// (e.g. `"example.com/images/"`; `""` removes everything). Returns how
    /// many entries were removed.
    pub fn purge(&self, prefix: &str) -> usize {
        let mut inner = self.lock();
        let ids: Vec<u64> = inner
            .index
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        let n = ids.iter().filter(|&&id| inner.remove(id).is_some()).count();
        inner.stats.removed += n as u64;
        n
    }

    /// RFC 9111 §4.4: a non-error response (2xx/3xx) to an unsafe method
    /// (anything but GET, HEAD, OPTIONS, TRACE) invalidates the target URI.
    /// Returns how many entries were removed.
    pub fn invalidate(&self, req: &request::Parts, status: StatusCode) -> usize {
        let safe = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE];
        if safe.contains(&req.method) || !(status.is_success() || status.is_redirection()) {
            return 0;
        }
        let key = self.key(req);
        let mut inner = self.lock();
        let ids = inner.index.get(&key).cloned().unwrap_or_default();
        let n = ids.iter().filter(|&&id| inner.remove(id).is_some()).count();
        inner.stats.removed += n as u64;
        n
    }

    /// Drops entries that are stale with no validator and no open stale
    /// window (they could only ever be misses). For a periodic task.
    pub fn sweep(&self, now: SystemTime) -> usize {
        let mut inner = self.lock();
        let ids: Vec<u64> = inner
            .entries
            .iter()
            .filter(|(_, e)| e.useless(now))
            .map(|(&id, _)| id)
            .collect();
        let n = ids.iter().filter(|&&id| inner.remove(id).is_some()).count();
        inner.stats.removed += n as u64;
        n
    }

    /// Request coalescing: the first caller for `key` leads (fetches, stores,
    /// drops the guard); callers while it is in progress get a [`Waiter`] to
    /// await (under their own timeout) before looking up again. Coalescing is
    /// per key, not per `Vary` variant: a waiter whose variant the leader did
    /// not store simply misses again and leads its own fetch.
    pub fn coalesce(&self, key: &str) -> Coalesce {
        let mut f = lock(&self.flights);
        if let Some(flight) = f.map.get(key) {
            let rx = flight.tx.subscribe();
            drop(f);
            self.coalesced.fetch_add(1, Ordering::Relaxed);
            return Coalesce::Wait(Waiter { rx });
        }
        f.next_id += 1;
        let id = f.next_id;
        let (tx, _) = watch::channel(false);
        f.map.insert(key.to_owned(), Flight { id, tx });
        Coalesce::Lead(LeadGuard {
            flights: Arc::clone(&self.flights),
            key: key.to_owned(),
            id,
        })
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

#[derive(Default)]
struct Flights {
    map: HashMap<String, Flight>,
    next_id: u64,
}

struct Flight {
    id: u64,
    tx: watch::Sender<bool>,
}

/// Result of [`Cache::coalesce`].
#[derive(Debug)]
pub enum Coalesce {
    /// This caller fetches; drop the guard when done (stored or not).
    Lead(LeadGuard),
    /// Another caller is fetching: await [`Waiter::wait`], then look up again.
    Wait(Waiter),
}

/// Held by the one caller fetching a key; dropping it (also on panic or
/// cancellation) wakes the waiters.
#[derive(Debug)]
pub struct LeadGuard {
    flights: Arc<Mutex<Flights>>,
    key: String,
    id: u64,
}

impl LeadGuard {
    /// The key being fetched.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for LeadGuard {
    fn drop(&mut self) {
        let flight = {
            let mut f = lock(&self.flights);
            match f.map.get(&self.key) {
                Some(flight) if flight.id == self.id => f.map.remove(&self.key),
                _ => None,
            }
        };
        if let Some(flight) = flight {
            flight.tx.send_replace(true);
        }
    }
}

/// Waits for a leader; wrap [`Waiter::wait`] in a timeout.
#[derive(Debug)]
pub struct Waiter {
    rx: watch::Receiver<bool>,
}

impl Waiter {
    /// Resolves when the leader has dropped its guard.
    pub async fn wait(mut self) {
        // Err means the sender is gone, which is "done" as well.
        let _ = self.rx.wait_for(|done| *done).await;
    }

    /// Whether the leader is done already.
    pub fn is_done(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("in_flight", &self.map.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lowercase host[:port] of the request: the absolute URI's authority wins
/// over `Host` (RFC 9112 §3.2.2); `:80` and `:443` are dropped.
fn request_host(req: &request::Parts) -> String {
    let raw = match req.uri.authority() {
        Some(a) => a.as_str().rsplit('@').next().unwrap_or_default().to_owned(),
        None => req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .trim()
            .to_owned(),
    };
    let mut host = raw.to_ascii_lowercase();
    for port in [":80", ":443"] {
        if let Some(stripped) = host.strip_suffix(port) {
            host = stripped.to_owned();
            break;
        }
    }
    host
}

fn key_of(host: &str, uri: &Uri) -> String {
    let path = uri.path();
    let path = if path.is_empty() { "/" } else { path };
    let mut key = String::with_capacity(host.len() + path.len() + 16);
    key.push_str(host);
    key.push_str(path);
    if let Some(q) = uri.query() {
        key.push('?');
        key.push_str(q);
    }
    key
}

/// The request as the policy sees it: GET, origin-form URI, normalized
/// `Host`, and without the client's own conditional headers (a conditional
/// request asks about the stored copy only).
fn policy_request(req: &request::Parts, host: &str) -> request::Parts {
    let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri = Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
    let mut headers = req.headers.clone();
    for h in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
    ] {
        headers.remove(h);
    }
    match HeaderValue::from_str(host) {
        Ok(v) if !host.is_empty() => {
            headers.insert(header::HOST, v);
        }
        _ => {
            headers.remove(header::HOST);
        }
    }
    request_parts(Method::GET, uri, req.version, headers)
}

/// What a stored variant keeps of its request: `Host`, the headers named by
/// `Vary`, and the fact (not the value) of `Authorization` unless `Vary`
/// names it.
fn stored_request(norm: &request::Parts, resp_headers: &HeaderMap) -> request::Parts {
    let mut headers = HeaderMap::new();
    if let Some(h) = norm.headers.get(header::HOST) {
        headers.insert(header::HOST, h.clone());
    }
    for name in comma_values(resp_headers.get_all(header::VARY)) {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        if headers.contains_key(&name) {
            continue;
        }
        for v in norm.headers.get_all(&name) {
            headers.append(name.clone(), v.clone());
        }
    }
    if norm.headers.contains_key(header::AUTHORIZATION)
        && !headers.contains_key(header::AUTHORIZATION)
    {
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("present"));
    }
    request_parts(Method::GET, norm.uri.clone(), norm.version, headers)
}

/// The client's request with the validators of the stored copy in place of
/// its own conditional headers.
fn conditional_request(req: &request::Parts, policy_req: &request::Parts) -> request::Parts {
    let mut out = req.clone();
    for h in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_RANGE,
    ] {
        out.headers.remove(&h);
        for v in policy_req.headers.get_all(&h) {
            out.headers.append(h.clone(), v.clone());
        }
    }
    out
}

/// RFC 9111 §3.2: header fields of the 304 are added to the stored ones,
/// replacing all values of the same name, except framing/encoding fields.
fn merge_304(stored: &HeaderMap, fresh: &HeaderMap) -> HeaderMap {
    let mut fresh = fresh.clone();
    strip_hop_by_hop(&mut fresh);
    for h in [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::CONTENT_RANGE,
    ] {
        fresh.remove(h);
    }
    let mut out = stored.clone();
    for name in fresh.keys() {
        out.remove(name);
    }
    for (name, value) in &fresh {
        out.append(name.clone(), value.clone());
    }
    out
}

/// Request directives that rule out serving stale while revalidating.
/// The request without `max-stale` in its Cache-Control.
fn without_max_stale(req: &request::Parts) -> request::Parts {
    let kept: Vec<String> = cache_control(&req.headers)
        .filter(|(k, _)| k != "max-stale")
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k,
        })
        .collect();
    let mut headers = req.headers.clone();
    headers.remove(header::CACHE_CONTROL);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
            headers.insert(header::CACHE_CONTROL, v);
        }
    }
    request_parts(req.method.clone(), req.uri.clone(), req.version, headers)
}

fn request_demands_validation(h: &HeaderMap) -> bool {
    cache_control(h).any(|(k, _)| k == "no-cache" || k == "max-age" || k == "min-fresh")
        || comma_values(h.get_all(header::PRAGMA)).any(|p| p.eq_ignore_ascii_case("no-cache"))
}

/// `Cache-Control` directives as (lowercase name, unquoted value).
fn cache_control(h: &HeaderMap) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    comma_values(h.get_all(header::CACHE_CONTROL)).map(|d| match d.split_once('=') {
        Some((k, v)) => (
            k.trim().to_ascii_lowercase(),
            Some(v.trim().trim_matches('"').to_owned()),
        ),
        None => (d.to_ascii_lowercase(), None),
    })
}

/// Non-empty, trimmed comma-separated elements of all values of a header.
fn comma_values<'a>(
    values: http::header::GetAll<'a, HeaderValue>,
) -> impl Iterator<Item = &'a str> + 'a {
    values
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn header_bytes(h: &HeaderMap) -> u64 {
    h.iter()
        .map(|(n, v)| (n.as_str().len() + v.len()) as u64 + HEADER_OVERHEAD)
        .sum()
}

/// Approximate memory of an entry: body, key (twice: index and entry), the
/// stored request headers, the response headers (twice: ours and the
/// policy's copy) and fixed bookkeeping.
fn entry_size(key: &str, req: &HeaderMap, resp: &HeaderMap, body: &Bytes) -> u64 {
    body.len() as u64
        + 2 * key.len() as u64
        + header_bytes(req)
        + 2 * header_bytes(resp)
        + ENTRY_OVERHEAD
}

fn request_parts(method: Method, uri: Uri, version: Version, headers: HeaderMap) -> request::Parts {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    parts
}

fn response_parts(status: StatusCode, version: Version, headers: HeaderMap) -> response::Parts {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn get(uri: &str) -> request::Parts {
        req("GET", uri, &[])
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> response::Parts {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn ok(cc: &str) -> response::Parts {
        resp(200, &[("cache-control", cc)])
    }

    fn cache() -> Cache {
        Cache::new(CacheConfig::default())
    }

    fn hdr<'a>(parts: &'a response::Parts, name: &str) -> Option<&'a str> {
        parts.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn fresh(l: Lookup) -> Cached {
        match l {
            Lookup::Fresh(c) => c,
            other => panic!("expected Fresh, got {other:?}"),
        }
    }

    fn revalidate(l: Lookup) -> (Cached, request::Parts) {
        match l {
            Lookup::Revalidate(c, r) => (c, r),
            other => panic!("expected Revalidate, got {other:?}"),
        }
    }

    fn swr(l: Lookup) -> (Cached, request::Parts) {
        match l {
            Lookup::StaleWhileRevalidate(c, r) => (c, r),
            other => panic!("expected StaleWhileRevalidate, got {other:?}"),
        }
    }

    fn is_miss(l: &Lookup) -> bool {
        matches!(l, Lookup::Miss)
    }

    #[test]
    fn cache_is_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Cache>();
        check::<LeadGuard>();
        check::<Waiter>();
        check::<Cached>();
    }

    #[test]
    fn fresh_hit_within_max_age_and_age_grows() {
        let c = cache();
        let r = get("http://example.com/a");
        assert!(is_miss(&c.lookup(&r, at(0))));
        assert!(c.store(&r, &ok("max-age=100"), Bytes::from_static(b"hello"), at(0)));
        let hit = fresh(c.lookup(&r, at(10)));
        assert_eq!(hit.body, "hello");
        assert_eq!(hit.age, Duration::from_secs(10));
        assert_eq!(hdr(&hit.parts, "age"), Some("10"));
        assert_eq!(hdr(&hit.parts, "content-length"), Some("5"));
        assert_eq!(hit.ttl, Duration::from_secs(90));
        assert_eq!(hit.key, "example.com/a");
        let later = fresh(c.lookup(&r, at(60)));
        assert_eq!(hdr(&later.parts, "age"), Some("60"));
        // An upstream Age counts from the start.
        let r2 = get("http://example.com/b");
        let aged = resp(200, &[("cache-control", "max-age=100"), ("age", "30")]);
        assert!(c.store(&r2, &aged, Bytes::from_static(b"x"), at(0)));
        assert_eq!(hdr(&fresh(c.lookup(&r2, at(5))).parts, "age"), Some("35"));
        assert!(!matches!(c.lookup(&r2, at(71)), Lookup::Fresh(_)));
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.entries), (3, 2, 1));
    }

    #[test]
    fn plain_hits_agree_with_the_policy() {
        // The same lookups answered by the fast path (plain requests) and
        // by the policy (a request with its own Cache-Control that changes
        // nothing): the same age, freshness and variant.
        let c = cache();
        let r = get("http://example.com/v");
        let accept = |lang: &str| {
            let mut r = r.clone();
            r.headers
                .insert("accept-language", HeaderValue::from_str(lang).unwrap());
            r
        };
        let en = accept("en");
        let fr = accept("fr");
        let varied = resp(
            200,
            &[
                ("cache-control", "max-age=100"),
                ("vary", "Accept-Language"),
            ],
        );
        assert!(c.store(&en, &varied, Bytes::from_static(b"hello"), at(0)));
        assert!(c.store(&fr, &varied, Bytes::from_static(b"bonjour"), at(0)));
        for t in [1, 50, 99] {
            for (req, body) in [(&en, "hello"), (&fr, "bonjour")] {
                let plain = fresh(c.lookup(req, at(t)));
                let mut asked = req.clone();
                asked
                    .headers
                    .insert("cache-control", HeaderValue::from_static("max-stale=0"));
                let policy = fresh(c.lookup(&asked, at(t)));
                assert_eq!(
                    (plain.body.clone(), plain.age, plain.ttl),
                    (Bytes::from(body), policy.age, policy.ttl)
                );
            }
        }
        // Expired: not a plain hit.
        assert!(!matches!(c.lookup(&en, at(101)), Lookup::Fresh(_)));
        // A variant nobody stored: no hit.
        assert!(!matches!(c.lookup(&accept("de"), at(5)), Lookup::Fresh(_)));
        // A response's no-cache is never a plain hit: it is revalidated.
        let r2 = get("http://example.com/nc");
        let nc = resp(
            200,
            &[
                ("cache-control", "no-cache, max-age=100"),
                ("etag", "\"x\""),
            ],
        );
        assert!(c.store(&r2, &nc, Bytes::from_static(b"x"), at(0)));
        assert!(matches!(c.lookup(&r2, at(1)), Lookup::Revalidate(..)));
    }

    #[test]
    fn miss_after_expiry_without_validator_drops_entry() {
        let c = cache();
        let r = get("http://example.com/a");
        assert!(c.store(&r, &ok("max-age=10"), Bytes::from_static(b"x"), at(0)));
        assert!(matches!(c.lookup(&r, at(9)), Lookup::Fresh(_)));
        assert!(is_miss(&c.lookup(&r, at(10))));
        assert_eq!(c.stats().entries, 0);
        assert_eq!(c.stats().stored_bytes, 0);
    }

    #[test]
    fn expired_with_validator_asks_for_conditional_request() {
        let c = cache();
        let r = req(
            "GET",
            "http://example.com/a",
            &[("if-none-match", "\"client\"")],
        );
        let etag = resp(200, &[("cache-control", "max-age=10"), ("etag", "\"v1\"")]);
        assert!(c.store(&r, &etag, Bytes::from_static(b"x"), at(0)));
        let (stale, cond) = revalidate(c.lookup(&r, at(20)));
        assert_eq!(stale.staleness, Duration::from_secs(10));
        assert_eq!(stale.ttl, Duration::ZERO);
        assert_eq!(cond.headers.get("if-none-match").unwrap(), "\"v1\"");
        assert_eq!(cond.uri, "http://example.com/a");
        assert_eq!(cond.method, Method::GET);

        let r2 = get("http://example.com/lm");
        let lm = "Tue, 14 Nov 2023 22:00:00 GMT";
        let modified = resp(
            200,
            &[("cache-control", "max-age=10"), ("last-modified", lm)],
        );
        assert!(c.store(&r2, &modified, Bytes::from_static(b"y"), at(0)));
        let (_, cond) = revalidate(c.lookup(&r2, at(20)));
        assert_eq!(cond.headers.get("if-modified-since").unwrap(), lm);
        assert!(!cond.headers.contains_key("if-none-match"));
        assert_eq!(c.stats().revalidations, 2);
    }

    #[test]
    fn request_no_cache_and_max_age_zero_force_revalidation() {
        let c = cache();
        let r = get("http://example.com/a");
        let etag = resp(200, &[("cache-control", "max-age=100"), ("etag", "\"v1\"")]);
        assert!(c.store(&r, &etag, Bytes::from_static(b"x"), at(0)));
        for cc in [
            ("cache-control", "no-cache"),
            ("cache-control", "max-age=0"),
            ("pragma", "no-cache"),
        ] {
            let forced = req("GET", "http://example.com/a", &[cc]);
            let (c0, cond) = revalidate(c.lookup(&forced, at(5)));
            assert_eq!(c0.staleness, Duration::ZERO, "{cc:?}");
            assert_eq!(cond.headers.get("if-none-match").unwrap(), "\"v1\"");
        }
        // max-age=10 in the request is satisfied at age 5, not at 20.
        let ma = req(
            "GET",
            "http://example.com/a",
            &[("cache-control", "max-age=10")],
        );
        assert!(matches!(c.lookup(&ma, at(5)), Lookup::Fresh(_)));
        assert!(matches!(c.lookup(&ma, at(20)), Lookup::Revalidate(..)));
        // Even a response without validator is kept while fresh.
        let r2 = get("http://example.com/nv");
        assert!(c.store(&r2, &ok("max-age=100"), Bytes::from_static(b"x"), at(0)));
        let nc = req(
            "GET",
            "http://example.com/nv",
            &[("cache-control", "no-cache")],
        );
        let (_, cond) = revalidate(c.lookup(&nc, at(5)));
        assert!(!cond.headers.contains_key("if-none-match"));
        assert!(matches!(c.lookup(&r2, at(6)), Lookup::Fresh(_)));
    }

    #[test]
    fn not_stored_no_store_private_authorization_and_friends() {
        let c = cache();
        let r = get("http://example.com/a");
        let body = || Bytes::from_static(b"x");
        assert!(!c.store(&r, &ok("no-store, max-age=60"), body(), at(0)));
        assert!(!c.store(&r, &ok("private, max-age=60"), body(), at(0)));
        let no_store_req = req(
            "GET",
            "http://example.com/a",
            &[("cache-control", "no-store")],
        );
        assert!(!c.store(&no_store_req, &ok("max-age=60"), body(), at(0)));
        let post = req("POST", "http://example.com/a", &[]);
        assert!(!c.store(&post, &ok("max-age=60"), body(), at(0)));
        let head = req("HEAD", "http://example.com/a", &[]);
        assert!(!c.store(&head, &ok("max-age=60"), Bytes::new(), at(0)));
        let partial = resp(206, &[("cache-control", "max-age=60")]);
        assert!(!c.store(&r, &partial, body(), at(0)));
        let cookie = resp(
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
        );
        assert!(!c.store(&r, &cookie, body(), at(0)));
        let vary_star = resp(200, &[("cache-control", "max-age=60"), ("vary", "*")]);
        assert!(!c.store(&r, &vary_star, body(), at(0)));
        let truncated = resp(
            200,
            &[("cache-control", "max-age=60"), ("content-length", "9")],
        );
        assert!(!c.store(&r, &truncated, body(), at(0)));
        // 200 without any freshness info or validator would only ever miss.
        assert!(!c.store(&r, &resp(200, &[]), body(), at(0)));
        // Not cacheable by default and no explicit freshness.
        let found = resp(302, &[("location", "/b")]);
        assert!(!c.store(&r, &found, body(), at(0)));

        let authed = req(
            "GET",
            "http://example.com/a",
            &[("authorization", "Bearer t")],
        );
        assert!(!c.store(&authed, &ok("max-age=60"), body(), at(0)));
        assert_eq!(c.stats().entries, 0);
        assert!(c.store(&authed, &ok("public, max-age=60"), body(), at(0)));
        let hit = fresh(c.lookup(&authed, at(1)));
        assert_eq!(hit.body, "x");
        assert_eq!(c.stats().stores, 1);

        // A response stored for anonymous requests does not answer an
        // authenticated one unless it allows it.
        let r2 = get("http://example.com/anon");
        assert!(c.store(&r2, &ok("max-age=60"), body(), at(0)));
        let authed2 = req(
            "GET",
            "http://example.com/anon",
            &[("authorization", "Basic x")],
        );
        assert!(is_miss(&c.lookup(&authed2, at(1))));
        assert!(matches!(c.lookup(&r2, at(1)), Lookup::Fresh(_)));
        // Set-Cookie with public is the origin's explicit choice.
        let pub_cookie = resp(
            200,
            &[
                ("cache-control", "public, max-age=60"),
                ("set-cookie", "a=b"),
            ],
        );
        assert!(c.store(&get("http://example.com/pc"), &pub_cookie, body(), at(0)));
    }

    #[test]
    fn refused_newer_response_supersedes_stored_variant() {
        let c = Cache::new(CacheConfig {
            max_object_bytes: 100,
            ..CacheConfig::default()
        });
        let r = get("http://example.com/a");
        let etag = resp(200, &[("cache-control", "max-age=60"), ("etag", "\"v1\"")]);
        let put = |c: &Cache| assert!(c.store(&r, &etag, Bytes::from_static(b"x"), at(0)));
        // The origin now says no-store: the old copy must not be served on.
        put(&c);
        assert!(!c.store(&r, &ok("no-store"), Bytes::from_static(b"y"), at(1)));
        assert!(is_miss(&c.lookup(&r, at(2))));
        // Grown past the object limit: same.
        put(&c);
        assert!(!c.store(&r, &ok("max-age=60"), Bytes::from(vec![0; 101]), at(1)));
        assert!(is_miss(&c.lookup(&r, at(2))));
        // A 5xx keeps it (stale-if-error), and so do refusals caused by the
        // client's request.
        put(&c);
        assert!(!c.store(&r, &resp(503, &[]), Bytes::new(), at(1)));
        let authed = req(
            "GET",
            "http://example.com/a",
            &[("authorization", "Bearer t")],
        );
        assert!(!c.store(&authed, &ok("max-age=60"), Bytes::from_static(b"z"), at(1)));
        let no_store = req(
            "GET",
            "http://example.com/a",
            &[("cache-control", "no-store")],
        );
        assert!(!c.store(
            &no_store,
            &ok("max-age=60"),
            Bytes::from_static(b"z"),
            at(1)
        ));
        assert_eq!(fresh(c.lookup(&r, at(2))).body, "x");
        assert_eq!(c.stats().removed, 2);
    }

    #[test]
    fn only_get_and_head_are_looked_up_and_head_uses_get() {
        let c = cache();
        let r = get("http://example.com/a");
        assert!(c.store(&r, &ok("max-age=60"), Bytes::from_static(b"hello"), at(0)));
        assert!(is_miss(
            &c.lookup(&req("POST", "http://example.com/a", &[]), at(1))
        ));
        let head = fresh(c.lookup(&req("HEAD", "http://example.com/a", &[]), at(1)));
        assert!(head.body.is_empty());
        assert_eq!(hdr(&head.parts, "content-length"), Some("5"));
        assert_eq!(head.parts.status, StatusCode::OK);
        // A stale HEAD revalidates with HEAD.
        let etag = resp(200, &[("cache-control", "max-age=10"), ("etag", "\"e\"")]);
        assert!(c.store(&r, &etag, Bytes::from_static(b"hello"), at(0)));
        let (stale, cond) = revalidate(c.lookup(&req("HEAD", "http://example.com/a", &[]), at(20)));
        assert!(stale.body.is_empty());
        assert_eq!(cond.method, Method::HEAD);
        assert_eq!(cond.headers.get("if-none-match").unwrap(), "\"e\"");
    }

    #[test]
    fn key_normalization() {
        let c = cache();
        assert_eq!(
            c.key(&get("http://Example.COM:80/a/b?x=1&y")),
            "example.com/a/b?x=1&y"
        );
        assert_eq!(c.key(&get("https://example.com:443/a")), "example.com/a");
        assert_eq!(
            c.key(&get("http://example.com:8080/a")),
            "example.com:8080/a"
        );
        assert_eq!(c.key(&get("http://example.com")), "example.com/");
        let origin_form = req("GET", "/a/b?x=1&y", &[("host", "EXAMPLE.com")]);
        assert_eq!(c.key(&origin_form), "example.com/a/b?x=1&y");
        // Stored via absolute form, found via origin form + Host, and back.
        assert!(c.store(
            &get("http://example.com/a/b?x=1&y"),
            &ok("max-age=60"),
            Bytes::from_static(b"1"),
            at(0)
        ));
        assert_eq!(fresh(c.lookup(&origin_form, at(1))).body, "1");
        assert!(is_miss(
            &c.lookup(&get("http://example.com/a/b?x=1"), at(1))
        ));
        assert!(is_miss(
            &c.lookup(&get("http://other.com/a/b?x=1&y"), at(1))
        ));
    }

    #[test]
    fn vary_variants_side_by_side() {
        let c = cache();
        let gz = req(
            "GET",
            "http://example.com/app.js",
            &[("accept-encoding", "gzip")],
        );
        let br = req(
            "GET",
            "http://example.com/app.js",
            &[("accept-encoding", "br")],
        );
        let plain = get("http://example.com/app.js");
        let enc = |e: &str| {
            resp(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("vary", "Accept-Encoding"),
                    ("content-encoding", e),
                ],
            )
        };
        assert!(c.store(&gz, &enc("gzip"), Bytes::from_static(b"G"), at(0)));
        assert!(c.store(&br, &enc("br"), Bytes::from_static(b"B"), at(0)));
        assert_eq!(c.stats().entries, 2);
        let g = fresh(c.lookup(&gz, at(1)));
        assert_eq!(
            (g.body.as_ref(), hdr(&g.parts, "content-encoding")),
            (&b"G"[..], Some("gzip"))
        );
        let b = fresh(c.lookup(&br, at(1)));
        assert_eq!(
            (b.body.as_ref(), hdr(&b.parts, "content-encoding")),
            (&b"B"[..], Some("br"))
        );
        assert!(is_miss(&c.lookup(&plain, at(1))));
        let deflate = req(
            "GET",
            "http://example.com/app.js",
            &[("accept-encoding", "deflate")],
        );
        assert!(is_miss(&c.lookup(&deflate, at(1))));
        // Storing gzip again replaces its variant only.
        assert!(c.store(&gz, &enc("gzip"), Bytes::from_static(b"G2"), at(2)));
        assert_eq!(c.stats().entries, 2);
        assert_eq!(fresh(c.lookup(&gz, at(3))).body, "G2");
        assert_eq!(fresh(c.lookup(&br, at(3))).body, "B");
        // The identity variant joins them.
        assert!(c.store(&plain, &enc("identity"), Bytes::from_static(b"P"), at(3)));
        assert_eq!(fresh(c.lookup(&plain, at(4))).body, "P");
        assert_eq!(c.stats().entries, 3);
        assert_eq!(c.purge("example.com/app.js"), 3);
    }

    #[test]
    fn revalidation_304_refreshes_and_merges_headers() {
        let c = cache();
        let r = get("http://example.com/a");
        let stored = resp(
            200,
            &[
                ("cache-control", "max-age=10"),
                ("etag", "\"v1\""),
                ("x-old", "1"),
                ("x-both", "old"),
                ("content-type", "text/plain"),
            ],
        );
        assert!(c.store(&r, &stored, Bytes::from_static(b"hello"), at(0)));
        let (_, cond) = revalidate(c.lookup(&r, at(20)));
        assert_eq!(cond.headers.get("if-none-match").unwrap(), "\"v1\"");
        let not_modified = resp(
            304,
            &[
                ("cache-control", "max-age=100"),
                ("etag", "\"v1\""),
                ("x-both", "new"),
                ("x-new", "2"),
                ("content-length", "0"),
                ("connection", "close"),
            ],
        );
        let served = c
            .revalidated(&cond, &not_modified, at(20))
            .expect("refreshed");
        assert_eq!(served.body, "hello");
        assert_eq!(served.parts.status, StatusCode::OK);
        assert_eq!(hdr(&served.parts, "x-old"), Some("1"));
        assert_eq!(hdr(&served.parts, "x-both"), Some("new"));
        assert_eq!(served.parts.headers.get_all("x-both").iter().count(), 1);
        assert_eq!(hdr(&served.parts, "x-new"), Some("2"));
        assert_eq!(hdr(&served.parts, "content-length"), Some("5"));
        assert_eq!(hdr(&served.parts, "content-type"), Some("text/plain"));
        assert_eq!(hdr(&served.parts, "cache-control"), Some("max-age=100"));
        assert!(!served.parts.headers.contains_key("connection"));
        assert_eq!(served.age, Duration::ZERO);
        // Fresh again, with the new lifetime counted from the 304.
        let hit = fresh(c.lookup(&r, at(50)));
        assert_eq!(hdr(&hit.parts, "age"), Some("30"));
        assert_eq!(hit.body, "hello");
        assert!(matches!(c.lookup(&r, at(121)), Lookup::Revalidate(..)));
        let s = c.stats();
        assert_eq!((s.refreshes, s.entries), (1, 1));

        // A 304 about another representation does not touch the entry.
        let other = resp(304, &[("etag", "\"v2\""), ("cache-control", "max-age=999")]);
        assert!(c.revalidated(&cond, &other, at(130)).is_none());
        // A 200 is for store().
        assert!(c.revalidated(&cond, &ok("max-age=5"), at(130)).is_none());
        assert!(matches!(c.lookup(&r, at(130)), Lookup::Revalidate(..)));
        // Nothing stored → nothing refreshed.
        let nothing = get("http://example.com/none");
        assert!(c.revalidated(&nothing, &not_modified, at(130)).is_none());
    }

    #[test]
    fn revalidation_304_with_no_store_serves_once_and_drops() {
        let c = cache();
        let r = get("http://example.com/a");
        let stored = resp(200, &[("cache-control", "max-age=10"), ("etag", "\"v1\"")]);
        assert!(c.store(&r, &stored, Bytes::from_static(b"hello"), at(0)));
        let nm = resp(304, &[("cache-control", "no-store"), ("etag", "\"v1\"")]);
        let served = c.revalidated(&r, &nm, at(20)).expect("served");
        assert_eq!(served.body, "hello");
        assert_eq!(c.stats().entries, 0);
        assert_eq!(c.stats().stored_bytes, 0);
    }

    #[test]
    fn stale_while_revalidate_window() {
        let c = cache();
        let r = get("http://example.com/a");
        let stored = resp(
            200,
            &[
                ("cache-control", "max-age=10, stale-while-revalidate=20"),
                ("etag", "\"v1\""),
            ],
        );
        assert!(c.store(&r, &stored, Bytes::from_static(b"hello"), at(0)));
        assert!(matches!(c.lookup(&r, at(5)), Lookup::Fresh(_)));
        let (stale, cond) = swr(c.lookup(&r, at(15)));
        assert_eq!(stale.body, "hello");
        assert_eq!(stale.staleness, Duration::from_secs(5));
        assert_eq!(hdr(&stale.parts, "age"), Some("15"));
        assert_eq!(cond.headers.get("if-none-match").unwrap(), "\"v1\"");
        swr(c.lookup(&r, at(30)));
        // The client insisting on validation gets no stale copy.
        let nc = req(
            "GET",
            "http://example.com/a",
            &[("cache-control", "no-cache")],
        );
        revalidate(c.lookup(&nc, at(15)));
        // Past the window: revalidate first.
        revalidate(c.lookup(&r, at(31)));
        assert_eq!(c.stats().stale_served, 2);

        // must-revalidate forbids it.
        let r2 = get("http://example.com/mr");
        let mr = resp(
            200,
            &[
                (
                    "cache-control",
                    "max-age=10, stale-while-revalidate=20, must-revalidate",
                ),
                ("etag", "\"v\""),
            ],
        );
        assert!(c.store(&r2, &mr, Bytes::from_static(b"x"), at(0)));
        revalidate(c.lookup(&r2, at(15)));

        // Without validator the entry is still used within the window and
        // dropped after it.
        let r3 = get("http://example.com/nv");
        assert!(c.store(
            &r3,
            &ok("max-age=10, stale-while-revalidate=20"),
            Bytes::from_static(b"x"),
            at(0)
        ));
        let (_, cond) = swr(c.lookup(&r3, at(25)));
        assert!(!cond.headers.contains_key("if-none-match"));
        assert!(is_miss(&c.lookup(&r3, at(31))));
    }

    #[test]
    fn stale_while_revalidate_default_from_config() {
        let c = Cache::new(CacheConfig {
            stale_while_revalidate_default: Some(Duration::from_secs(30)),
            ..CacheConfig::default()
        });
        let r = get("http://example.com/a");
        let stored = resp(200, &[("cache-control", "max-age=10"), ("etag", "\"v1\"")]);
        assert!(c.store(&r, &stored, Bytes::from_static(b"x"), at(0)));
        swr(c.lookup(&r, at(39)));
        revalidate(c.lookup(&r, at(41)));
        let r2 = get("http://example.com/nc");
        let no_cache = resp(200, &[("cache-control", "no-cache"), ("etag", "\"v1\"")]);
        assert!(c.store(&r2, &no_cache, Bytes::from_static(b"x"), at(0)));
        revalidate(c.lookup(&r2, at(1)));
    }

    #[test]
    fn stale_if_error_window() {
        let c = cache();
        let r = get("http://example.com/a");
        assert!(c.store(
            &r,
            &ok("max-age=10, stale-if-error=60"),
            Bytes::from_static(b"x"),
            at(0)
        ));
        // Fresh copies may be served on error too.
        let hit = fresh(c.lookup(&r, at(5)));
        assert!(c.stale_if_error(&hit, at(5)));
        // No validator, but the window keeps it around: revalidate (a plain
        // request), and serve the stale copy if the origin fails.
        let (stale, cond) = revalidate(c.lookup(&r, at(30)));
        assert!(!cond.headers.contains_key("if-none-match"));
        assert_eq!(stale.staleness, Duration::from_secs(20));
        assert!(c.stale_if_error(&stale, at(30)));
        assert!(c.stale_if_error(&stale, at(70)));
        assert!(!c.stale_if_error(&stale, at(71)));
        assert_eq!(c.stats().stale_served, 3);
        // Past the window nothing is left to do with it.
        assert!(is_miss(&c.lookup(&r, at(71))));
        assert_eq!(c.stats().entries, 0);

        // Without the directive: never.
        let r2 = get("http://example.com/b");
        let etag = resp(200, &[("cache-control", "max-age=10"), ("etag", "\"v\"")]);
        assert!(c.store(&r2, &etag, Bytes::from_static(b"x"), at(0)));
        let (stale, _) = revalidate(c.lookup(&r2, at(11)));
        assert!(!c.stale_if_error(&stale, at(11)));
    }

    #[test]
    fn max_object_size_and_budget() {
        let c = Cache::new(CacheConfig {
            max_object_bytes: 10,
            ..CacheConfig::default()
        });
        let r = get("http://example.com/a");
        assert!(!c.store(&r, &ok("max-age=60"), Bytes::from(vec![b'x'; 11]), at(0)));
        assert!(c.store(&r, &ok("max-age=60"), Bytes::from(vec![b'x'; 10]), at(0)));
        // An object larger than the whole budget is refused, not evicting all.
        let tiny = Cache::new(CacheConfig {
            max_bytes: 600,
            ..CacheConfig::default()
        });
        assert!(tiny.store(&r, &ok("max-age=60"), Bytes::from(vec![b'x'; 10]), at(0)));
        assert!(!tiny.store(
            &get("http://example.com/b"),
            &ok("max-age=60"),
            Bytes::from(vec![b'x'; 600]),
            at(0)
        ));
        assert_eq!(tiny.stats().entries, 1);
        assert_eq!(tiny.stats().evictions, 0);
    }

    /// A cache that holds exactly three of the entries `eviction_store` makes.
    fn eviction_cache(eviction: Eviction) -> Cache {
        let probe = cache();
        assert!(probe.store(
            &get("http://e.com/p"),
            &ok("max-age=600"),
            Bytes::from(vec![0; 1000]),
            at(0)
        ));
        let one = probe.stats().stored_bytes;
        assert!(one > 1000);
        Cache::new(CacheConfig {
            max_bytes: 3 * one + one / 2,
            eviction,
            ..CacheConfig::default()
        })
    }

    fn eviction_store(c: &Cache, name: &str) {
        let r = get(&format!("http://e.com/{name}"));
        assert!(c.store(&r, &ok("max-age=600"), Bytes::from(vec![0; 1000]), at(0)));
    }

    fn present(c: &Cache, names: &[&str]) -> Vec<bool> {
        names
            .iter()
            .map(|n| !is_miss(&c.lookup(&get(&format!("http://e.com/{n}")), at(1))))
            .collect()
    }

    /// Same scenario for each policy: store a, b, c; use b, b, c, a; store d.
    /// LRU evicts b (least recent), LFU c (2 uses like a, but older), FIFO a.
    fn eviction_scenario(eviction: Eviction) -> Cache {
        let c = eviction_cache(eviction);
        for n in ["a", "b", "c"] {
            eviction_store(&c, n);
        }
        assert_eq!(c.stats().entries, 3);
        for n in ["b", "b", "c", "a"] {
            fresh(c.lookup(&get(&format!("http://e.com/{n}")), at(1)));
        }
        eviction_store(&c, "d");
        let s = c.stats();
        assert_eq!((s.entries, s.evictions), (3, 1));
        assert!(s.stored_bytes <= c.config().max_bytes);
        c
    }

    #[test]
    fn eviction_lru() {
        let c = eviction_scenario(Eviction::Lru);
        assert_eq!(
            present(&c, &["a", "b", "c", "d"]),
            [true, false, true, true]
        );
    }

    #[test]
    fn eviction_fifo() {
        let c = eviction_scenario(Eviction::Fifo);
        assert_eq!(
            present(&c, &["a", "b", "c", "d"]),
            [false, true, true, true]
        );
        // Lookups do not save the oldest: b goes next although just used.
        eviction_store(&c, "e");
        assert_eq!(
            present(&c, &["b", "c", "d", "e"]),
            [false, true, true, true]
        );
    }

    #[test]
    fn eviction_lfu_with_aging() {
        let c = eviction_scenario(Eviction::Lfu);
        // c went first (2 uses like a, but used less recently). Aging: that
        // eviction raised the floor to c's priority 2, so the newcomer d
        // starts at 3 and a (priority 2 from its 2 uses) goes next; plain
        // LFU would evict d with its single use.
        eviction_store(&c, "e");
        let s = c.stats();
        assert_eq!((s.entries, s.evictions), (3, 2));
        assert_eq!(
            present(&c, &["a", "b", "c", "d", "e"]),
            [false, true, false, true, true]
        );
    }

    #[test]
    fn purge_by_prefix() {
        let c = cache();
        for u in [
            "http://example.com/images/a.png",
            "http://example.com/images/b.png",
            "http://example.com/css/c.css",
            "http://other.com/images/a.png",
            "http://example.com.evil/images/a.png",
        ] {
            assert!(c.store(&get(u), &ok("max-age=60"), Bytes::from_static(b"x"), at(0)));
        }
        assert_eq!(c.purge("example.com/images/"), 2);
        assert!(is_miss(
            &c.lookup(&get("http://example.com/images/a.png"), at(1))
        ));
        assert!(!is_miss(
            &c.lookup(&get("http://example.com/css/c.css"), at(1))
        ));
        assert!(!is_miss(
            &c.lookup(&get("http://other.com/images/a.png"), at(1))
        ));
        assert_eq!(c.purge("example.com/images/"), 0);
        assert_eq!(c.purge("nothing"), 0);
        assert_eq!(c.purge(""), 3);
        let s = c.stats();
        assert_eq!((s.entries, s.stored_bytes, s.removed), (0, 0, 5));
    }

    #[test]
    fn unsafe_methods_invalidate() {
        let c = cache();
        let r = get("http://example.com/a");
        assert!(c.store(&r, &ok("max-age=60"), Bytes::from_static(b"x"), at(0)));
        let post = req("POST", "http://example.com/a", &[]);
        assert_eq!(c.invalidate(&post, StatusCode::INTERNAL_SERVER_ERROR), 0);
        assert_eq!(c.invalidate(&r, StatusCode::OK), 0);
        assert_eq!(c.invalidate(&post, StatusCode::CREATED), 1);
        assert!(is_miss(&c.lookup(&r, at(1))));
    }

    #[test]
    fn sweep_drops_only_useless_entries() {
        let c = cache();
        assert!(c.store(
            &get("http://e.com/nv"),
            &ok("max-age=10"),
            Bytes::from_static(b"x"),
            at(0)
        ));
        let etag = resp(200, &[("cache-control", "max-age=10"), ("etag", "\"v\"")]);
        assert!(c.store(
            &get("http://e.com/v"),
            &etag,
            Bytes::from_static(b"x"),
            at(0)
        ));
        assert!(c.store(
            &get("http://e.com/sie"),
            &ok("max-age=10, stale-if-error=100"),
            Bytes::from_static(b"x"),
            at(0)
        ));
        assert_eq!(c.sweep(at(5)), 0);
        assert_eq!(c.sweep(at(20)), 1);
        assert_eq!(c.sweep(at(200)), 1);
        assert_eq!(c.stats().entries, 1);
    }

    #[test]
    fn client_conditionals_against_cached() {
        let c = cache();
        let lm = "Tue, 14 Nov 2023 22:00:00 GMT";
        let r = get("http://example.com/a");
        let stored = resp(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "W/\"v1\""),
                ("last-modified", lm),
            ],
        );
        assert!(c.store(&r, &stored, Bytes::from_static(b"x"), at(0)));
        let hit = fresh(c.lookup(&r, at(1)));
        let inm = |v: &str| req("GET", "http://example.com/a", &[("if-none-match", v)]);
        assert!(hit.not_modified(&inm("\"v1\"")));
        assert!(hit.not_modified(&inm("\"v0\", W/\"v1\"")));
        assert!(hit.not_modified(&inm("*")));
        assert!(!hit.not_modified(&inm("\"v2\"")));
        let ims = req("GET", "http://example.com/a", &[("if-modified-since", lm)]);
        assert!(hit.not_modified(&ims));
        assert!(!hit.not_modified(&r));
        // If-None-Match wins over If-Modified-Since.
        let both = req(
            "GET",
            "http://example.com/a",
            &[("if-none-match", "\"v2\""), ("if-modified-since", lm)],
        );
        assert!(!hit.not_modified(&both));
        // The client's validators are not sent to the origin as ours.
        let (_, cond) = revalidate(c.lookup(&both, at(100)));
        assert_eq!(cond.headers.get("if-none-match").unwrap(), "W/\"v1\"");
        assert_eq!(cond.headers.get("if-modified-since").unwrap(), lm);
    }

    #[tokio::test]
    async fn waiter_does_not_wait_forever() {
        let c = cache();
        let Coalesce::Lead(guard) = c.coalesce("k") else {
            panic!("first caller leads");
        };
        assert_eq!(guard.key(), "k");
        let Coalesce::Wait(w) = c.coalesce("k") else {
            panic!("second caller waits");
        };
        assert!(!w.is_done());
        let Coalesce::Wait(w2) = c.coalesce("k") else {
            panic!("third caller waits");
        };
        assert!(tokio::time::timeout(Duration::from_millis(20), w.wait())
            .await
            .is_err());
        // Other keys are independent.
        assert!(matches!(c.coalesce("other"), Coalesce::Lead(_)));
        drop(guard);
        assert!(w2.is_done());
        tokio::time::timeout(Duration::from_secs(5), w2.wait())
            .await
            .expect("woken");
        assert!(matches!(c.coalesce("k"), Coalesce::Lead(_)));
        assert_eq!(c.stats().coalesced, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn coalescing_100_concurrent_misses_one_leader() {
        let cache = Arc::new(cache());
        let leaders = Arc::new(AtomicUsize::new(0));
        let hits = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(100));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (cache, leaders, hits, barrier) = (
                Arc::clone(&cache),
                Arc::clone(&leaders),
                Arc::clone(&hits),
                Arc::clone(&barrier),
            );
            tasks.push(tokio::spawn(async move {
                let r = get("http://example.com/hot");
                assert!(is_miss(&cache.lookup(&r, at(0))));
                match cache.coalesce(&cache.key(&r)) {
                    Coalesce::Lead(guard) => {
                        leaders.fetch_add(1, Ordering::SeqCst);
                        // Everybody has asked before the "fetch" finishes.
                        barrier.wait().await;
                        assert!(cache.store(
                            &r,
                            &ok("max-age=60"),
                            Bytes::from_static(b"hot"),
                            at(0)
                        ));
                        drop(guard);
                    }
                    Coalesce::Wait(w) => {
                        barrier.wait().await;
                        tokio::time::timeout(Duration::from_secs(10), w.wait())
                            .await
                            .expect("leader finished");
                        assert_eq!(fresh(cache.lookup(&r, at(1))).body, "hot");
                        hits.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(leaders.load(Ordering::SeqCst), 1);
        assert_eq!(hits.load(Ordering::SeqCst), 99);
        let s = cache.stats();
        assert_eq!((s.misses, s.hits, s.coalesced, s.stores), (100, 99, 99, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leader_failing_hands_over_to_exactly_one_new_leader() {
        let cache = Arc::new(cache());
        let first = Arc::new(AtomicUsize::new(0));
        let second = Arc::new(AtomicUsize::new(0));
        let all = Arc::new(tokio::sync::Barrier::new(100));
        let waiters = Arc::new(tokio::sync::Barrier::new(99));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (cache, first, second, all, waiters) = (
                Arc::clone(&cache),
                Arc::clone(&first),
                Arc::clone(&second),
                Arc::clone(&all),
                Arc::clone(&waiters),
            );
            tasks.push(tokio::spawn(async move {
                let key = "example.com/flaky";
                match cache.coalesce(key) {
                    Coalesce::Lead(guard) => {
                        first.fetch_add(1, Ordering::SeqCst);
                        all.wait().await;
                        drop(guard); // fetch failed, nothing stored
                    }
                    Coalesce::Wait(w) => {
                        all.wait().await;
                        tokio::time::timeout(Duration::from_secs(10), w.wait())
                            .await
                            .expect("leader gave up");
                        match cache.coalesce(key) {
                            Coalesce::Lead(guard) => {
                                second.fetch_add(1, Ordering::SeqCst);
                                waiters.wait().await;
                                drop(guard);
                            }
                            Coalesce::Wait(w) => {
                                waiters.wait().await;
                                tokio::time::timeout(Duration::from_secs(10), w.wait())
                                    .await
                                    .expect("second leader done");
                            }
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(first.load(Ordering::SeqCst), 1);
        assert_eq!(second.load(Ordering::SeqCst), 1);
        assert!(matches!(
            cache.coalesce("example.com/flaky"),
            Coalesce::Lead(_)
        ));
    }
}
