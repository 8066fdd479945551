//! What goes in and out of the cache: storing a response (RFC 9111 §3),
//! refreshing a variant from a 304 (§3.2, §4.3.4), purges, invalidation
//! by unsafe methods (§4.4) and the sweep of useless entries.

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{request, response, Method, StatusCode};
use http_cache_semantics::{AfterResponse, CachePolicy};

use super::entry::{entry_size, rank_of, Entry, Fast};
use super::lookup::Cached;
use super::rules::{cache_control, comma_values, key_of, merge_304, policy_request};
use super::rules::{request_host, response_parts, stored_request, Directives};
use super::{Cache, Eviction};
use crate::headers::strip_hop_by_hop;

impl Cache {
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
}
