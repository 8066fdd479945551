//! The request path: route, admission checks, the first body frame read
//! ahead, the cache or a server (see [`super::fetch`]), and the answer to
//! the client, under the request timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use convoy_config::compiled::RouteDecision;
use convoy_core::admission::Affinity;
use convoy_core::PoolRuntime;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tracing::{debug, warn};

use super::access::AccessRec;
use super::answers::*;
use super::bodies::{Fault, InBody, Prefixed, RespBody, Tracked, UpResp, NO_FAULT};
use super::cached::{cached, from_cache};
use super::fetch::{fetch, finish, Fetched};
use super::Shared;
use crate::h1::server::Meta;
use crate::headers::{add_forwarding, cookie, strip_hop_by_hop, ClientInfo};
use crate::route::decide_from;

use super::rewrite;

/// Answers one request: the request path under the request timeout, with
/// its access-log line written when the response body ends.
///
/// A plain function returning an `async move` block that owns its
/// arguments: the connection calls it as is (no wrapping block holding
/// them too), and the future, boxed and copied once per request, holds
/// them once (an `async fn` holds its arguments twice).
// Not an `async fn` on purpose: see above.
#[allow(clippy::manual_async_fn)]
pub(super) fn respond(
    sh: Arc<Shared>,
    req: Request<InBody>,
    peer: SocketAddr,
    info: Arc<ClientInfo>,
    meta: Meta,
) -> impl Future<Output = Response<RespBody>> + Send + 'static {
    async move {
        let sh = &sh;
        let mut rec = sh
            .ctx
            .access
            .as_ref()
            .map(|_| Box::new(AccessRec::new(&sh.listener.cfg.name, peer, &req)));
        // Pinned where it is built: a timeout around it by value would copy
        // the whole request path's state (KBs) and hold room for it twice.
        let resp = {
            let fut = std::pin::pin!(handle(sh, req, peer, &info, meta, &mut rec));
            match sh.request_timeout {
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(r) => r,
                    Err(_) => local(StatusCode::GATEWAY_TIMEOUT, "request timed out"),
                },
                None => fut.await,
            }
        };
        let resp = sh.error_pages.dress(resp);
        sh.listener.count_response(resp.status().as_u16());
        if rec.is_none() {
            return resp;
        }
        if let Some(r) = &mut rec {
            r.status = resp.status().as_u16();
        }
        let (parts, body) = resp.into_parts();
        let body = Tracked {
            inner: body,
            rec,
            access: sh.ctx.access.clone(),
        };
        Response::from_parts(parts, body.boxed_unsync())
    }
}

/// The request's affinity: its hash key (for `algorithm = "hash"`) and the
/// server its sticky cookie names.
pub(super) fn affinity(pool: &PoolRuntime, h: &http::HeaderMap, peer: SocketAddr) -> Affinity {
    use convoy_balance::{affinity_key, hash::hash64, AffinityKind};
    let prefer = pool
        .cfg
        .sticky_cookie
        .as_deref()
        .and_then(|name| cookie(h, name))
        .and_then(|v| pool.by_sticky_value(v));
    let hash = if pool.cfg.algorithm == convoy_config::Algorithm::Hash {
        use convoy_config::compiled::HashOn;
        let value = match &pool.hash_on {
            HashOn::Header(name) => h.get(name).map(|v| v.as_bytes()),
            HashOn::Cookie(name) => cookie(h, name).map(str::as_bytes),
            HashOn::Client => None,
        };
        match value {
            Some(v) => Some(hash64(v, 0x6b65_7968_6173_6801)),
            None => affinity_key(AffinityKind::Client, peer.ip()),
        }
    } else {
        None
    };
    Affinity { hash, prefer }
}

/// The Upgrade header of an HTTP/1.1 request that asks for an upgrade
/// (`Connection: upgrade`).
pub(super) fn upgrade_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != http::Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    req.headers().get(http::header::UPGRADE).cloned()
}

// Not an `async fn`: an `async fn` holds its arguments twice (see
// `respond`).
#[allow(clippy::manual_async_fn)]
pub(super) fn handle<'a>(
    sh: &'a Arc<Shared>,
    mut req: Request<InBody>,
    peer: SocketAddr,
    info: &'a ClientInfo,
    meta: Meta,
    rec: &'a mut Option<Box<AccessRec>>,
) -> impl Future<Output = Response<RespBody>> + Send + 'a {
    async move {
        let l = &sh.listener;
        l.count_request();
        if !l.allow_request(peer.ip()) {
            return rate_limited(l, peer);
        }
        let request_id = take_request_id(l, req.headers_mut());
        if let (Some(r), Some(id)) = (rec.as_mut(), &request_id) {
            r.request_id = Some(id.clone());
        }
        let d = decide_from(&l.routes, &req, Some(peer.ip()));
        note_route(rec, d);
        // Rewriting, when the route (or the listener) has some: the values
        // of its variables, taken from the request as it came.
        let vars = d.rewrite.as_ref().map(|_| rewrite::Vars {
            client_ip: peer.ip().to_string(),
            request_id: request_id.clone(),
            host: crate::route::host_of(&req).unwrap_or_default(),
            listener: l.cfg.name.clone(),
            route: d.route.clone(),
            scheme: if info.is_https() { "https" } else { "http" },
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
        });
        let rw = d.rewrite.as_deref().zip(vars.as_ref());
        let mut resp = match rw.and_then(|(w, v)| w.redirect.as_ref().map(|r| (r, v))) {
            Some(((to, status), v)) => rewrite::redirect(to, *status, v),
            None => proxy(sh, req, peer, info, meta, rec, d, rw).await,
        };
        if let Some((w, v)) = rw {
            let server = resp.extensions().get::<rewrite::ServedBy>().cloned();
            rewrite::apply(
                resp.headers_mut(),
                &w.response,
                v,
                server.as_ref().map(|s| &*s.0),
            );
        }
        if let (Some(name), Some(id)) = (&l.cfg.request_id, request_id) {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&id),
            ) {
                resp.headers_mut().insert(n, v);
            }
        }
        resp
    }
}

/// The request id (`request_id`): the client's, else a new one, put on
/// the request for the server.
fn take_request_id(l: &convoy_core::ListenerRuntime, h: &mut http::HeaderMap) -> Option<String> {
    let name = l.cfg.request_id.as_deref()?;
    if let Some(v) = h
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
    {
        return Some(v.to_string());
    }
    let id = rewrite::new_request_id();
    if let (Ok(n), Ok(v)) = (
        http::HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(&id),
    ) {
        h.insert(n, v);
    }
    Some(id)
}

/// The request to a server (or the cache), with `rw`'s path and field
/// rewriting when the route has some.
#[allow(clippy::too_many_arguments)]
// Not an `async fn`: an `async fn` holds its arguments twice (see
// `respond`).
#[allow(clippy::manual_async_fn)]
fn proxy<'a>(
    sh: &'a Arc<Shared>,
    mut req: Request<InBody>,
    peer: SocketAddr,
    info: &'a ClientInfo,
    meta: Meta,
    rec: &'a mut Option<Box<AccessRec>>,
    d: &'a RouteDecision,
    rw: Option<(&'a convoy_config::rewrite::Rewrite, &'a rewrite::Vars)>,
) -> impl Future<Output = Response<RespBody>> + Send + 'a {
    async move {
        let snap = sh.ctx.snapshot.load_full();
        // (An HTTP/1 head without the field needs no lookup.)
        let explain = meta.explain && explain_asked(sh, req.headers_mut());
        let Some(first_pool) = snap.pools.get(&d.pool).cloned() else {
            return local(StatusCode::BAD_GATEWAY, "no such pool");
        };
        let (class, cost) = (d.class, d.cost);
        // `host_field`: the head has a Host field (then none is added
        // towards the server); checked again if the route rewrites fields.
        let (host, mut host_field) = host_header(&req);
        // Framing: the HTTP/1 codec refuses differing Content-Lengths and
        // Content-Length beside Transfer-Encoding (400); HTTP/2 bodies are DATA
        // frames, checked by h2 against a Content-Length; either way the
        // request is re-framed towards the server, so nothing can be smuggled
        // past convoy.
        // Protocol upgrade (WebSocket and others, HTTP/1.1): the Upgrade and
        // Connection headers go to the server, and on its 101 the two
        // connections are joined into a byte tunnel.
        // (An HTTP/1 request that asks for none has no Connection field
        // left: no lookup.)
        let upgrade = if meta.stripped {
            None
        } else {
            upgrade_of(&req)
        };
        let max_body = d.max_body;
        if max_body > 0 && body_len(&req).is_some_and(|n| n > max_body) {
            return too_large();
        }
        let version = req.version();
        let (mut parts, mut body) = req.into_parts();
        if let Some(uri) = rw.and_then(|(w, _)| rewrite::rewritten_path(w, &parts.uri)) {
            parts.uri = uri;
        }
        let first = match first_frame(sh, &mut body, peer).await {
            Ok(f) => f,
            Err(r) => return r,
        };
        // Whether the listener's cache answers this request: GET or HEAD,
        // bodiless, no Range (the cache keeps whole responses only, and a 206
        // must neither be served for a GET nor displace a copy), no upgrade.
        let use_cache = sh.cache.is_some()
            && d.cache
            && upgrade.is_none()
            && first.is_none()
            && body.is_end_stream()
            && (parts.method == http::Method::GET || parts.method == http::Method::HEAD)
            && !parts.headers.contains_key(http::header::RANGE);
        // A fresh hit is answered before anything a server would need is
        // built (hot routes go the long way: a hit may refresh them).
        let mut looked = None;
        if let (true, Some(cache)) = (use_cache && !d.hot, &sh.cache) {
            let key = cache.key(&parts);
            match cache.lookup_keyed(&parts, &key, std::time::SystemTime::now()) {
                crate::cache::Lookup::Fresh(c) => return from_cache(sh, &parts, c, "HIT"),
                other => looked = Some((key, other)),
            }
        }
        let Some((mut out_body, replayable, fault)) =
            outgoing(first, body, max_body, sh.body_timeout)
        else {
            return too_large();
        };
        // The client's own forwarding fields: none when its HTTP/1 head
        // had none and no request id field was added since.
        let forwarding = meta.forwarding || sh.listener.cfg.request_id.is_some();
        let fwd = rewrite_head(
            &mut parts.headers,
            meta.stripped,
            forwarding,
            upgrade.as_ref(),
            info,
            host.as_ref(),
            version,
        );
        if let Some((w, vars)) = rw {
            rewrite::apply(&mut parts.headers, &w.request, vars, None);
            host_field = parts.headers.contains_key(http::header::HOST);
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        first_pool.note_request();
        let aff = affinity(&first_pool, &parts.headers, peer);
        let rc = ReqCtx {
            class,
            cost,
            aff,
            explain,
            upgrade: upgrade.is_some(),
            host,
            host_field,
            path,
            replayable,
            fwd,
            hot: d.hot,
            note_server: rw.is_some_and(|(w, _)| !w.response.is_empty()),
        };
        if let (true, Some(cache)) = (use_cache, &sh.cache) {
            // Boxed: the common path's future stays small.
            return Box::pin(cached(sh, cache, &first_pool, &parts, &rc, rec, looked)).await;
        }
        // (Only a streamed body can fail by the client's fault.)
        let fault = fault.as_deref().unwrap_or(&NO_FAULT);
        let f = match fetch(sh, &first_pool, &parts, &mut out_body, &rc, fault, rec).await {
            Ok(f) => f,
            Err(r) => return r,
        };
        // A successful unsafe request (POST, PUT, DELETE...) makes the cached
        // copies of its URL stale (RFC 9111 §4.4).
        if let Some(cache) = &sh.cache {
            if !parts.method.is_safe() {
                cache.invalidate(&parts, f.resp.status());
            }
        }
        if f.resp.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some() {
            return tunnel(sh, f);
        }
        let resp = finish(sh, f, &parts, &rc, None);
        // The request was sent: its map serves the next head parsed here.
        crate::h1::parse::recycle(parts.headers);
        resp
    }
}

/// Notes the route's decision in the access-log record.
fn note_route(rec: &mut Option<Box<AccessRec>>, d: &RouteDecision) {
    if let Some(r) = rec {
        r.route = d.route.clone();
        r.class = d.class;
        r.cost = d.cost;
        r.pool = d.pool.clone();
    }
}

/// The Host header, or the HTTP/2 :authority; and whether it was the
/// header.
fn host_header<B>(req: &Request<B>) -> (Option<HeaderValue>, bool) {
    match req.headers().get(http::header::HOST) {
        Some(h) => (Some(h.clone()), true),
        None => {
            let a = req.uri().authority();
            (
                a.and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
                false,
            )
        }
    }
}

/// The body towards servers, and whether the request can be sent again
/// (to the same server on a new connection, or to another): a body that
/// came whole with its first frame (most small uploads) is kept in memory
/// and can; a streamed one cannot, and records the client's faults in
/// the [`Fault`] returned with it (pausing at most `pause`). `None` when
/// the whole body is over `max_body` (413).
fn outgoing(
    first: Option<http_body::Frame<Bytes>>,
    rest: InBody,
    max_body: u64,
    pause: std::time::Duration,
) -> Option<(Outgoing, bool, Option<Arc<Fault>>)> {
    let whole = match &first {
        Some(f) if rest.is_end_stream() => {
            f.data_ref().filter(|d| d.len() <= WHOLE_BODY_MAX).cloned()
        }
        _ => None,
    };
    if max_body > 0 && whole.as_ref().is_some_and(|d| d.len() as u64 > max_body) {
        return None;
    }
    Some(match whole {
        Some(b) => (Outgoing::Full(b), true, None),
        None if first.is_none() && rest.is_end_stream() => (Outgoing::None, true, None),
        None => {
            let fault = Arc::new(Fault::default());
            let body = Outgoing::Stream(Some(Prefixed {
                first,
                rest,
                limit: max_body,
                seen: 0,
                fault: Arc::clone(&fault),
                pause,
                timer: None,
            }));
            (body, false, Some(fault))
        }
    })
}

/// 429 for a client over the listener's request rate.
fn rate_limited(l: &convoy_core::ListenerRuntime, peer: SocketAddr) -> Response<RespBody> {
    l.count_rate_limited();
    if l.refused_log.allow() {
        warn!(event = "request_refused", listener = %l.cfg.name, client = %peer, reason = "rate_limit");
    }
    let mut r = local(StatusCode::TOO_MANY_REQUESTS, "too many requests");
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    r
}

/// An operator's request for an explanation: the header carries the
/// admin token; it is removed (it never reaches a server).
fn explain_asked(sh: &Shared, h: &mut http::HeaderMap) -> bool {
    h.remove(crate::headers::EXPLAIN).is_some_and(|v| {
        sh.ctx
            .explain_token
            .as_ref()
            .is_some_and(|t| convoy_core::control::constant_time_eq(v.as_bytes(), t.as_bytes()))
    })
}

/// The first body frame, read before a server is chosen (within the body
/// timeout): a body malformed from its first bytes is a 400 no server
/// sees, and a slow client holds no slot meanwhile.
async fn first_frame(
    sh: &Shared,
    body: &mut InBody,
    peer: SocketAddr,
) -> Result<Option<http_body::Frame<Bytes>>, Response<RespBody>> {
    if body.is_end_stream() {
        return Ok(None);
    }
    match tokio::time::timeout(sh.body_timeout, body.frame()).await {
        Ok(Some(Ok(f))) => Ok(Some(f)),
        Ok(Some(Err(e))) => {
            debug!(client = %peer, error = %e, "malformed request body");
            Err(bad_request("malformed request body"))
        }
        Ok(None) => Ok(None),
        Err(_) => Err(client_timeout()),
    }
}

/// The head towards servers: hop-by-hop fields removed (unless the
/// HTTP/1 loop did), `Upgrade` and `Connection: upgrade` back for an
/// upgrade; the forwarding lines to add, or none when the client sent
/// forwarding fields of its own (then merged into its fields here;
/// `forwarding`: it may have).
fn rewrite_head(
    h: &mut http::HeaderMap,
    stripped: bool,
    forwarding: bool,
    upgrade: Option<&HeaderValue>,
    info: &ClientInfo,
    host: Option<&HeaderValue>,
    version: http::Version,
) -> Bytes {
    if !stripped {
        strip_hop_by_hop(h);
    }
    if let Some(u) = upgrade {
        h.insert(http::header::UPGRADE, u.clone());
        h.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
    }
    if forwarding && crate::headers::has_forwarding(h) {
        add_forwarding(h, info, host, version);
        Bytes::new()
    } else {
        info.lines(host, version)
    }
}

/// The server switched protocols: the client's connection loop joins the
/// two connections, holding the slot for the tunnel's life.
fn tunnel(sh: &Shared, f: Fetched) -> Response<RespBody> {
    let Fetched {
        resp,
        slot,
        pool,
        idx,
        ..
    } = f;
    let (rparts, body) = resp.into_parts();
    let UpResp::H1(body) = body else {
        return local(StatusCode::BAD_GATEWAY, "upgrade over HTTP/2");
    };
    let Some((server, server_buf)) = body.into_upgraded() else {
        return local(StatusCode::BAD_GATEWAY, "upgrade failed");
    };
    let kills: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = [
        pool.servers[idx].state.request_kill_signal(),
        sh.listener.kill_signal(),
        sh.ctx.kill.clone(),
    ]
    .into_iter()
    .map(|mut k| {
        k.mark_unchanged();
        Box::pin(async move {
            let _ = k.changed().await;
        }) as Pin<Box<dyn Future<Output = ()> + Send>>
    })
    .collect();
    let state = std::sync::Arc::clone(&pool.servers[idx].state);
    let mut r = Response::from_parts(rparts, empty());
    r.extensions_mut()
        .insert(crate::h1::server::TunnelSlot::new(
            crate::h1::server::Tunnel {
                server,
                server_buf,
                hold: Box::new(slot),
                kills,
                on_bytes: Box::new(move |up, down| state.add_bytes(up, down)),
            },
        ));
    r
}

/// Largest request body kept whole in memory so that it can be sent
/// again.
pub(super) const WHOLE_BODY_MAX: usize = 64 * 1024;

/// A request's body towards servers.
pub(super) enum Outgoing {
    /// None.
    None,
    /// Whole in memory: every attempt sends it.
    Full(Bytes),
    /// Streamed from the client: the first attempt takes it.
    Stream(Option<Prefixed>),
}

impl Outgoing {
    /// The body for one attempt.
    pub(super) fn take(&mut self) -> Option<Outgoing> {
        match self {
            Outgoing::None => None,
            Outgoing::Full(b) => Some(Outgoing::Full(b.clone())),
            Outgoing::Stream(s) => s.take().map(|b| Outgoing::Stream(Some(b))),
        }
    }
}

/// What every attempt of one request shares.
pub(super) struct ReqCtx {
    /// Forwarding header lines to add (empty when they were merged into
    /// the request's fields).
    pub(super) fwd: Bytes,
    /// The route is hot: cached copies are refreshed ahead of expiry.
    pub(super) hot: bool,
    pub(super) class: usize,
    pub(super) cost: u32,
    pub(super) aff: Affinity,
    pub(super) explain: bool,
    pub(super) upgrade: bool,
    /// The Host header, or the HTTP/2 :authority.
    pub(super) host: Option<HeaderValue>,
    /// The head sent to servers has a Host field.
    pub(super) host_field: bool,
    /// Path and query to send (sharing the request's bytes).
    pub(super) path: http::uri::PathAndQuery,
    /// The request has no body (it can be sent again).
    pub(super) replayable: bool,
    /// The route rewrites its responses: the server that answered is
    /// noted on the response (`{server}`).
    pub(super) note_server: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::body::{Chan, ReqBody};
    use http::HeaderMap;

    fn h1_body(data: Option<&'static [u8]>, end: bool) -> InBody {
        let ch = Chan::new(None);
        if let Some(d) = data {
            ch.push(Bytes::from_static(d));
        }
        if end {
            ch.finish();
        }
        InBody::H1(ReqBody(Some(ch)))
    }

    #[test]
    fn the_head_towards_servers_is_rewritten_once() {
        let info = ClientInfo::new("192.0.2.7:5000".parse().unwrap(), "http");
        let host = HeaderValue::from_static("shop.example");
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let lines = rewrite_head(
            &mut h,
            false,
            true,
            None,
            &info,
            Some(&host),
            http::Version::HTTP_11,
        );
        assert_eq!(h.len(), 1, "hop-by-hop fields go: {h:?}");
        let text = String::from_utf8(lines.to_vec()).unwrap();
        assert!(text.contains("x-forwarded-for: 192.0.2.7\r\n"), "{text}");
        // A client's own forwarding field: merged into the fields, no lines.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        let up = HeaderValue::from_static("websocket");
        let lines = rewrite_head(
            &mut h,
            true,
            true,
            Some(&up),
            &info,
            Some(&host),
            http::Version::HTTP_11,
        );
        assert!(lines.is_empty());
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 192.0.2.7");
        assert_eq!(
            (&h["upgrade"], &h["connection"]),
            (&up, &HeaderValue::from_static("upgrade"))
        );
    }

    #[test]
    fn small_whole_bodies_are_kept_and_the_rest_streamed() {
        let pause = std::time::Duration::from_secs(1);
        let data = || Some(http_body::Frame::data(Bytes::from_static(b"abc")));
        let (b, again, fault) = outgoing(data(), h1_body(None, true), 0, pause).unwrap();
        assert!(matches!(b, Outgoing::Full(ref d) if &d[..] == b"abc") && again);
        assert!(fault.is_none());
        assert!(
            outgoing(data(), h1_body(None, true), 2, pause).is_none(),
            "413"
        );
        // Only a streamed body has a fault to record.
        let (b, again, fault) = outgoing(data(), h1_body(Some(b"more"), false), 0, pause).unwrap();
        assert!(matches!(b, Outgoing::Stream(Some(_))) && !again);
        assert!(fault.is_some_and(|f| f.get().is_none()));
        let (b, again, fault) = outgoing(None, InBody::H1(ReqBody::empty()), 0, pause).unwrap();
        assert!(matches!(b, Outgoing::None) && again && fault.is_none());
    }

    #[test]
    fn only_http11_requests_with_connection_upgrade_are_upgrades() {
        let req = |v: http::Version, conn: &str| {
            Request::builder()
                .version(v)
                .header("connection", conn)
                .header("upgrade", "websocket")
                .body(())
                .unwrap()
        };
        assert!(upgrade_of(&req(http::Version::HTTP_11, "keep-alive, Upgrade")).is_some());
        assert!(upgrade_of(&req(http::Version::HTTP_11, "keep-alive")).is_none());
        assert!(upgrade_of(&req(http::Version::HTTP_10, "upgrade")).is_none());
    }

    #[test]
    fn hash_affinity_reads_the_compiled_key() {
        let pool: convoy_config::Pool = toml::from_str(
            "algorithm = \"hash\"\nhash_on = \"cookie:sid\"\n[[servers]]\naddress = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let p = PoolRuntime::new("p", &pool, None);
        let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("a=1; sid=42"));
        let with = affinity(&p, &h, peer).hash;
        h.insert("cookie", HeaderValue::from_static("sid=43"));
        let other = affinity(&p, &h, peer).hash;
        let none = affinity(&p, &HeaderMap::new(), peer).hash;
        assert!(with.is_some() && other.is_some() && none.is_some());
        assert_ne!(with, other, "the cookie's value is the key");
        assert_ne!(with, none, "no cookie: the client's address");
    }
}
