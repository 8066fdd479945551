//! Storage and eviction: the stored entries ([`Entry`]) with what a plain
//! hit needs precomputed ([`Fast`]), the index by key, the eviction order
//! (LRU, LFU-DA, FIFO) and the memory accounting.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, StatusCode, Version};
use http_cache_semantics::{BeforeRequest, CachePolicy};

use super::lookup::Cached;
use super::rules::{cache_control, comma_values, response_parts, without_max_stale, Directives};
use super::{CacheStats, Eviction};

/// Fixed per-entry bookkeeping counted in the memory budget (policy, maps,
/// ordering set), on top of body, headers and key.
const ENTRY_OVERHEAD: u64 = 256;
/// Approximate per-header overhead of a `HeaderMap` slot.
const HEADER_OVERHEAD: u64 = 32;

pub(super) struct Entry {
    pub(super) key: String,
    pub(super) policy: CachePolicy,
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    pub(super) size: u64,
    /// When the freshness lifetime runs out.
    pub(super) stale_at: SystemTime,
    /// A plain hit needs no policy check: computed when stored.
    pub(super) fast: Fast,
    pub(super) dir: Directives,
    pub(super) rank: (u64, u64),
    pub(super) inserted: u64,
    pub(super) last_access: u64,
    pub(super) freq: u64,
    pub(super) lfu_key: u64,
}

/// What a plain hit needs, computed when the entry is stored or
/// refreshed: the request fields its `Vary` names (first values, as the
/// policy compares them), its age then, and whether a fresh copy may be
/// served without asking the policy (not for a response's `no-cache`).
#[derive(Debug, Clone)]
pub(super) struct Fast {
    pub(super) ok: bool,
    pub(super) vary: Vec<(HeaderName, Option<HeaderValue>)>,
    pub(super) stored_at: SystemTime,
    pub(super) age_then: Duration,
}

impl Fast {
    pub(super) fn of(
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
    pub(super) fn matches(&self, h: &HeaderMap) -> bool {
        self.vary.iter().all(|(n, v)| h.get(n) == v.as_ref())
    }
}

impl Entry {
    /// A fresh entry served to a plain request, without the policy.
    pub(super) fn cached_fast(&self, now: SystemTime, head: bool) -> Cached {
        let age = self.fast.age_then + now.duration_since(self.fast.stored_at).unwrap_or_default();
        let ttl = self.stale_at.duration_since(now).unwrap_or_default();
        self.answer(age, ttl, Duration::ZERO, head)
    }

    pub(super) fn cached(&self, now: SystemTime, head: bool) -> Cached {
        let staleness = now.duration_since(self.stale_at).unwrap_or_default();
        self.answer(
            self.policy.age(now),
            self.policy.time_to_live(now),
            staleness,
            head,
        )
    }

    /// The stored response with its `Age`.
    pub(super) fn answer(
        &self,
        age: Duration,
        ttl: Duration,
        staleness: Duration,
        head: bool,
    ) -> Cached {
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
    pub(super) fn useless(&self, now: SystemTime) -> bool {
        let staleness = now.duration_since(self.stale_at).unwrap_or_default();
        self.policy.is_stale(now)
            && !self.dir.validator
            && self.dir.sie.is_none_or(|w| staleness > w)
            && self.dir.swr.is_none_or(|w| staleness > w)
    }
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) entries: HashMap<u64, Entry>,
    /// Key → variant ids, oldest first. Ordered for prefix purges.
    pub(super) index: BTreeMap<String, Vec<u64>>,
    /// Eviction order: smallest rank first.
    pub(super) order: BTreeSet<((u64, u64), u64)>,
    pub(super) next_id: u64,
    pub(super) tick: u64,
    /// LFU-DA "L": the priority of the last entry evicted.
    pub(super) lfu_age: u64,
    pub(super) bytes: u64,
    pub(super) stats: CacheStats,
}

pub(super) fn rank_of(eviction: Eviction, e: &Entry) -> (u64, u64) {
    match eviction {
        Eviction::Lru => (e.last_access, 0),
        Eviction::Fifo => (e.inserted, 0),
        Eviction::Lfu => (e.lfu_key, e.last_access),
    }
}

impl Inner {
    pub(super) fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    pub(super) fn insert(&mut self, mut e: Entry, eviction: Eviction, freq: u64) -> u64 {
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

    pub(super) fn remove(&mut self, id: u64) -> Option<Entry> {
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

    pub(super) fn touch(&mut self, id: u64, eviction: Eviction) {
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

    pub(super) fn evict_until_fits(&mut self, incoming: u64, max: u64) {
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
    pub(super) fn find(
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

fn header_bytes(h: &HeaderMap) -> u64 {
    h.iter()
        .map(|(n, v)| (n.as_str().len() + v.len()) as u64 + HEADER_OVERHEAD)
        .sum()
}

/// Approximate memory of an entry: body, key (twice: index and entry), the
/// stored request headers, the response headers (twice: ours and the
/// policy's copy) and fixed bookkeeping.
pub(super) fn entry_size(key: &str, req: &HeaderMap, resp: &HeaderMap, body: &Bytes) -> u64 {
    body.len() as u64
        + 2 * key.len() as u64
        + header_bytes(req)
        + 2 * header_bytes(resp)
        + ENTRY_OVERHEAD
}
