//! Request handling: what a request gets from the cache ([`Lookup`]),
//! the stored response handed out ([`Cached`]) and the client's own
//! conditionals checked against it, and stale-if-error.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header;
use http::{request, response, Method};

use super::rules::{comma_values, conditional_request, plain_request, policy_request};
use super::rules::{request_demands_validation, request_host};
use super::Cache;

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
    pub(super) stale_at: SystemTime,
    pub(super) stale_if_error: Option<Duration>,
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

impl Cache {
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
}
