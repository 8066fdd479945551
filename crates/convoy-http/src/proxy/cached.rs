//! The request path through the listener's response cache: a fresh copy
//! answered at once, a stale one revalidated (or served while it is, or
//! when the server fails), concurrent misses coalesced into one request,
//! hot routes refreshed ahead of expiry; and the copy of a response body
//! kept on its way to the client for the cache.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};

use bytes::Bytes;
use convoy_core::admission::Affinity;
use convoy_core::PoolRuntime;
use http::{HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};

use super::access::AccessRec;
use super::answers::*;
use super::bodies::{BoxError, Fault, RespBody};
use super::fetch::{compressed, fetch, finish};
use super::request::{Outgoing, ReqCtx};
use super::Shared;

/// Keeps a copy of a response body on its way to the client, and stores
/// it in the cache when it ends complete (never when it is cut or larger
/// than the cache's largest object). Holds the coalescing lead until then.
pub(super) struct Tee {
    pub(super) cache: Arc<crate::cache::Cache>,
    pub(super) req: http::request::Parts,
    pub(super) parts: Option<http::response::Parts>,
    pub(super) buf: Vec<u8>,
    pub(super) limit: u64,
    pub(super) lead: Option<crate::cache::LeadGuard>,
}

pub(super) struct Teed<B> {
    pub(super) inner: B,
    pub(super) tee: Option<Tee>,
}

impl<B> Body for Teed<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        let mut done = false;
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(t)) = (f.data_ref(), self.tee.as_mut()) {
                    if (t.buf.len() + d.len()) as u64 > t.limit {
                        // Too large to keep: stream it, store nothing.
                        self.tee = None;
                    } else {
                        t.buf.extend_from_slice(d);
                    }
                }
                // The client connection stops polling once the body says
                // it has ended.
                done = self.inner.is_end_stream();
            }
            Poll::Ready(None) => done = true,
            Poll::Ready(Some(Err(_))) => self.tee = None,
            Poll::Pending => {}
        }
        if done {
            if let Some(t) = self.tee.take() {
                if let Some(rp) = &t.parts {
                    t.cache
                        .store(&t.req, rp, Bytes::from(t.buf), std::time::SystemTime::now());
                }
                drop(t.lead);
            }
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer from the cache.
pub(super) fn from_cache(
    sh: &Shared,
    req: &http::request::Parts,
    c: crate::cache::Cached,
    status: &'static str,
) -> Response<RespBody> {
    if c.not_modified(req) {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        for h in [
            http::header::ETAG,
            http::header::LAST_MODIFIED,
            http::header::CACHE_CONTROL,
            http::header::AGE,
            http::header::VARY,
            http::header::EXPIRES,
        ] {
            if let Some(v) = c.parts.headers.get(&h) {
                r.headers_mut().insert(h, v.clone());
            }
        }
        cache_status(sh, r.headers_mut(), status);
        return r;
    }
    let mut rparts = c.parts;
    cache_status(sh, &mut rparts.headers, status);
    let body = Full::new(c.body).map_err(|never: Infallible| match never {});
    compressed(sh, req, rparts, body)
}

pub(super) fn cache_status(sh: &Shared, h: &mut http::HeaderMap, status: &'static str) {
    if sh.cache_header {
        h.insert("x-cache", HeaderValue::from_static(status));
    }
}

/// A GET or HEAD through the listener's cache: a fresh copy is served at
/// once; a stale one is revalidated (or served while revalidating, or when
/// the server fails, as its Cache-Control allows); concurrent misses for
/// one key send one request to the servers.
pub(super) async fn cached(
    sh: &Arc<Shared>,
    cache: &Arc<crate::cache::Cache>,
    pool: &Arc<PoolRuntime>,
    parts: &http::request::Parts,
    rc: &ReqCtx,
    rec: &mut Option<Box<AccessRec>>,
    looked: Option<(String, crate::cache::Lookup)>,
) -> Response<RespBody> {
    let hot = rc.hot;
    use crate::cache::{Coalesce, Lookup};
    let (key, mut first) = match looked {
        Some((k, l)) => (k, Some(l)),
        None => (cache.key(parts), None),
    };
    let mut waited = false;
    loop {
        let now = std::time::SystemTime::now();
        let found = match first.take() {
            Some(l) => l,
            None => cache.lookup_keyed(parts, &key, now),
        };
        match found {
            Lookup::Fresh(c) => {
                // Hot routes: refresh in the background during the last
                // quarter of the lifetime, so clients never see it expire.
                let life = c.age + c.ttl;
                if hot && !life.is_zero() && c.ttl * 4 <= life {
                    if let Coalesce::Lead(g) = cache.coalesce(&key) {
                        background(sh, cache, pool, parts.clone(), rc, g);
                    }
                }
                return from_cache(sh, parts, c, "HIT");
            }
            Lookup::StaleWhileRevalidate(c, cond) => {
                if let Coalesce::Lead(g) = cache.coalesce(&key) {
                    background(sh, cache, pool, cond, rc, g);
                }
                return from_cache(sh, parts, c, "STALE");
            }
            Lookup::Revalidate(c, cond) => {
                return revalidate(sh, cache, pool, parts, c, &cond, rc, rec, now).await;
            }
            Lookup::Miss => {
                let lead = if waited {
                    None
                } else {
                    match cache.coalesce(&key) {
                        Coalesce::Lead(g) => Some(g),
                        Coalesce::Wait(w) => {
                            // Another request fetches this key: wait for it,
                            // then look again (once). Only that second
                            // look counts as a hit or a miss.
                            cache.uncount_miss();
                            let _ =
                                tokio::time::timeout(pool.cfg.queue_timeout.get(), w.wait()).await;
                            waited = true;
                            continue;
                        }
                    }
                };
                let fault = Fault::default();
                return match fetch(sh, pool, parts, &mut Outgoing::None, rc, &fault, rec).await {
                    Ok(f) => {
                        let tee = tee_for(cache, parts, lead);
                        let mut r = finish(sh, f, parts, rc, tee);
                        cache_status(sh, r.headers_mut(), "MISS");
                        r
                    }
                    Err(r) => r,
                };
            }
        }
    }
}

/// A stale copy that must be revalidated before it serves: the server's
/// 304 refreshes it; its 5xx or failure serves it when `stale-if-error`
/// allows; anything else is a new answer (a miss, stored).
#[allow(clippy::too_many_arguments)]
async fn revalidate(
    sh: &Arc<Shared>,
    cache: &Arc<crate::cache::Cache>,
    pool: &Arc<PoolRuntime>,
    parts: &http::request::Parts,
    c: crate::cache::Cached,
    cond: &http::request::Parts,
    rc: &ReqCtx,
    rec: &mut Option<Box<AccessRec>>,
    now: std::time::SystemTime,
) -> Response<RespBody> {
    let fault = Fault::default();
    match fetch(sh, pool, cond, &mut Outgoing::None, rc, &fault, rec).await {
        Ok(f) if f.resp.status() == StatusCode::NOT_MODIFIED => {
            let (rp, _) = f.resp.into_parts();
            if let Some(c2) = cache.revalidated(parts, &rp, std::time::SystemTime::now()) {
                return from_cache(sh, parts, c2, "REVALIDATED");
            }
            // The 304 does not match the stored copy (it changed or went
            // meanwhile): ask once more, with the client's own request only.
            let fault = Fault::default();
            match fetch(sh, pool, parts, &mut Outgoing::None, rc, &fault, rec).await {
                Ok(f) => missed(sh, cache, f, parts, rc),
                Err(r) => r,
            }
        }
        Ok(f) if f.resp.status().is_server_error() && cache.stale_if_error(&c, now) => {
            from_cache(sh, parts, c, "STALE")
        }
        Ok(f) => missed(sh, cache, f, parts, rc),
        Err(_) if cache.stale_if_error(&c, now) => from_cache(sh, parts, c, "STALE"),
        Err(r) => r,
    }
}

/// The server's answer where the stored copy could not serve: a miss,
/// kept for the next requests.
fn missed(
    sh: &Shared,
    cache: &Arc<crate::cache::Cache>,
    f: super::fetch::Fetched,
    parts: &http::request::Parts,
    rc: &ReqCtx,
) -> Response<RespBody> {
    let tee = tee_for(cache, parts, None);
    let mut r = finish(sh, f, parts, rc, tee);
    cache.count_miss();
    cache_status(sh, r.headers_mut(), "MISS");
    r
}

pub(super) fn tee_for(
    cache: &Arc<crate::cache::Cache>,
    parts: &http::request::Parts,
    lead: Option<crate::cache::LeadGuard>,
) -> Option<Tee> {
    Some(Tee {
        cache: Arc::clone(cache),
        req: parts.clone(),
        parts: None,
        buf: Vec::new(),
        limit: cache.config().max_object_bytes,
        lead,
    })
}

/// Revalidates or refreshes a cached response in the background (the
/// client was already answered from the cache).
pub(super) fn background(
    sh: &Arc<Shared>,
    cache: &Arc<crate::cache::Cache>,
    pool: &Arc<PoolRuntime>,
    req: http::request::Parts,
    rc: &ReqCtx,
    lead: crate::cache::LeadGuard,
) {
    let (sh, cache, pool) = (Arc::clone(sh), Arc::clone(cache), Arc::clone(pool));
    let rc = ReqCtx {
        class: rc.class,
        cost: rc.cost,
        aff: Affinity::default(),
        explain: false,
        upgrade: false,
        host: rc.host.clone(),
        host_field: rc.host_field,
        path: rc.path.clone(),
        replayable: true,
        fwd: rc.fwd.clone(),
        hot: false,
        note_server: false,
    };
    tokio::spawn(async move {
        let fault = Fault::default();
        let mut none = None;
        let Ok(f) = fetch(
            &sh,
            &pool,
            &req,
            &mut Outgoing::None,
            &rc,
            &fault,
            &mut none,
        )
        .await
        else {
            return;
        };
        let status = f.resp.status();
        if status == StatusCode::NOT_MODIFIED {
            let (rp, _) = f.resp.into_parts();
            let _ = cache.revalidated(&req, &rp, std::time::SystemTime::now());
            return;
        }
        let (rp, body) = f.resp.into_parts();
        let limit = cache.config().max_object_bytes as usize;
        if let Ok(Ok(b)) = tokio::time::timeout(
            sh.response_timeout,
            http_body_util::Limited::new(body, limit).collect(),
        )
        .await
        {
            cache.store(&req, &rp, b.to_bytes(), std::time::SystemTime::now());
        }
        drop(f.slot);
        drop(lead);
    });
}
