//! The HTTP listener: accept loop, hyper connection (HTTP/1.1 with
//! keep-alive, or HTTP/2 when the client starts with the h2 preface), and
//! the per-request path: route → admission (slot or queue) → forward over
//! the keep-alive pool → stream the response back, holding the slot until
//! the response body ends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use bytes::Bytes;
use convoy_core::admission::{Admit, Affinity};
use convoy_core::context::{Context, DataEvent};
use convoy_core::{ListenerRuntime, PoolRuntime};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::headers::{add_forwarding, strip_hop_by_hop, ClientInfo};
use crate::route::decide;

/// Response body type: a streamed upstream body or a local one.
pub type RespBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Request body to servers: the client's streamed body (its first frame
/// already read and checked), or nothing (a bodiless request sent again to
/// another server).
type ReqBody = Either<Prefixed, Empty<Bytes>>;

/// The client's body with its first frame read ahead: a body that is
/// malformed from its first byte (bad chunk size) is refused with 400
/// before anything reaches a server.
/// It also enforces the route's body limit: a body growing past it ends
/// the upstream request with an error and marks `over`, and the client
/// gets 413.
struct Prefixed {
    first: Option<Frame<Bytes>>,
    rest: Incoming,
    limit: u64,
    seen: u64,
    over: Arc<std::sync::atomic::AtomicBool>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match self.first.take() {
            Some(f) => f,
            None => match Pin::new(&mut self.rest).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => f,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            },
        };
        if let Some(d) = frame.data_ref() {
            self.seen += d.len() as u64;
            if self.limit > 0 && self.seen > self.limit {
                self.over.store(true, std::sync::atomic::Ordering::Relaxed);
                return Poll::Ready(Some(Err("request body over the route's limit".into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }
    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let n = self
            .first
            .as_ref()
            .and_then(|f| f.data_ref())
            .map_or(0, |d| d.len() as u64);
        // Unknown length stays unknown (chunked); only an exact length may
        // become a Content-Length.
        match rest.exact() {
            Some(e) => SizeHint::with_exact(e + n),
            None => {
                let mut h = SizeHint::new();
                h.set_lower(rest.lower() + n);
                if let Some(u) = rest.upper() {
                    h.set_upper(u + n);
                }
                h
            }
        }
    }
}

type Upstream = Client<HttpConnector, ReqBody>;

struct Shared {
    ctx: Context,
    listener: Arc<ListenerRuntime>,
    client: Upstream,
}

/// Holds a request's slot on a server; dropping it releases the slot to
/// the next queued request.
struct Slot {
    pool: Arc<PoolRuntime>,
    idx: usize,
    cost: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.release(self.idx, self.cost);
    }
}

/// The upstream response body, keeping the slot until it ends.
struct Guarded {
    inner: Incoming,
    _slot: Slot,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn local(status: StatusCode, msg: &str) -> Response<RespBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{msg}\n")))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    r
}

/// 400 and close: after a malformed request the rest of the connection's
/// bytes cannot be trusted to frame the next request.
fn bad_request(msg: &str) -> Response<RespBody> {
    let mut r = local(StatusCode::BAD_REQUEST, msg);
    r.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The declared length of a request body.
fn body_len<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// 413 and close (the unread body would otherwise be parsed as requests).
fn too_large() -> Response<RespBody> {
    let mut r = local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    r.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn unavailable(msg: &str, retry_after: u64) -> Response<RespBody> {
    let mut r = local(StatusCode::SERVICE_UNAVAILABLE, msg);
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

/// Serves HTTP on one bound socket until `stop` changes to true; open
/// connections then finish their current request and close.
pub async fn serve(
    ctx: Context,
    listener: Arc<ListenerRuntime>,
    socket: Arc<TcpListener>,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(listener.cfg.connect_timeout.get()));
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .build(http);
    let shared = Arc::new(Shared {
        ctx,
        listener,
        client,
    });
    let mut backoff = Duration::from_millis(5);
    loop {
        let (stream, peer) = tokio::select! {
            r = socket.accept() => match r {
                Ok(c) => { backoff = Duration::from_millis(5); c }
                Err(e) => {
                    warn!(event = "accept_error", listener = %shared.listener.cfg.name, error = %e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        if !shared.listener.admit() {
            if shared.listener.refused_log.allow() {
                warn!(event = "connection_refused", listener = %shared.listener.cfg.name, client = %peer, reason = "max_connections");
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        let sh = Arc::clone(&shared);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let svc = {
                let sh = Arc::clone(&sh);
                let info = Arc::new(ClientInfo::new(peer, "http"));
                hyper::service::service_fn(move |req| {
                    let (sh, info) = (Arc::clone(&sh), Arc::clone(&info));
                    async move { Ok::<_, Infallible>(handle(&sh, req, peer, &info).await) }
                })
            };
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(sh.listener.cfg.idle_timeout().get());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let mut kill = sh.ctx.kill.clone();
            kill.mark_unchanged();
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(client = %peer, error = %e, "http connection ended with an error");
                    }
                }
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = kill.changed() => {}
                    }
                }
                _ = kill.changed() => {}
            }
            sh.listener.release();
        });
    }
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The request's affinity: its hash key (for `algorithm = "hash"`) and the
/// server its sticky cookie names.
fn affinity(pool: &PoolRuntime, h: &http::HeaderMap, peer: SocketAddr) -> Affinity {
    use convoy_balance::{affinity_key, hash::hash64, AffinityKind};
    let prefer = pool
        .cfg
        .sticky_cookie
        .as_deref()
        .and_then(|name| cookie(h, name))
        .and_then(|v| pool.by_sticky_value(v));
    let hash = if pool.cfg.algorithm == convoy_config::Algorithm::Hash {
        let on = pool.cfg.hash_on.as_str();
        let value = if let Some(name) = on.strip_prefix("header:") {
            h.get(name).map(|v| v.as_bytes())
        } else if let Some(name) = on.strip_prefix("cookie:") {
            cookie(h, name).map(str::as_bytes)
        } else {
            None
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
fn upgrade_of<B>(req: &Request<B>) -> Option<HeaderValue> {
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

fn empty() -> RespBody {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// Joins an upgraded client connection and server connection until either
/// side closes; the request's slot is held for the tunnel's life.
async fn tunnel(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade, slot: Slot) {
    let (c, s) = match tokio::try_join!(client, server) {
        Ok(x) => x,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (mut c, mut s) = (TokioIo::new(c), TokioIo::new(s));
    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut s).await {
        debug!(error = %e, "upgraded connection ended with an error");
    }
    drop(slot);
}

/// Waits for a queued request's slot; on timeout or drop, cancels it (and
/// releases a slot handed over meanwhile).
struct Queued<'a> {
    pool: &'a Arc<PoolRuntime>,
    ticket: convoy_balance::queue::Ticket,
    rx: Option<tokio::sync::oneshot::Receiver<usize>>,
    cost: u32,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            if !self.pool.cancel(self.ticket) {
                if let Ok(i) = rx.try_recv() {
                    self.pool.release(i, self.cost);
                }
            }
        }
    }
}

async fn handle(
    sh: &Shared,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    info: &ClientInfo,
) -> Response<RespBody> {
    let l = &sh.listener;
    let snap = sh.ctx.snapshot.load_full();
    let d = decide(&l.cfg, &req);
    let Some(pool) = snap.pools.get(d.pool).cloned() else {
        return local(StatusCode::BAD_GATEWAY, "no such pool");
    };
    let (class, cost) = (d.class, d.cost);
    // The Host header, or the HTTP/2 :authority.
    let host: Option<HeaderValue> = req.headers().get(http::header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    // Framing: hyper refuses differing Content-Lengths (400) and, given
    // both Transfer-Encoding and Content-Length, frames by the former and
    // drops the latter (RFC 9112 §6.3); the request is re-framed towards the
    // server, so nothing can be smuggled past convoy.
    // Protocol upgrade (WebSocket and others, HTTP/1.1): the Upgrade and
    // Connection headers go to the server, and on its 101 the two
    // connections are joined into a byte tunnel.
    let upgrade = upgrade_of(&req);
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let max_body = d.max_body;
    if max_body > 0 && body_len(&req).is_some_and(|n| n > max_body) {
        return too_large();
    }
    let (mut parts, mut body) = req.into_parts();
    // Read the first body frame before choosing a server.
    let first = if body.is_end_stream() {
        None
    } else {
        match body.frame().await {
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => {
                debug!(client = %peer, error = %e, "malformed request body");
                return bad_request("malformed request body");
            }
            None => None,
        }
    };
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body = Prefixed {
        first,
        rest: body,
        limit: max_body,
        seen: 0,
        over: Arc::clone(&over),
    };
    strip_hop_by_hop(&mut parts.headers);
    if let Some(u) = &upgrade {
        parts.headers.insert(http::header::UPGRADE, u.clone());
        parts.headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
    }
    add_forwarding(&mut parts.headers, info, host.as_ref());
    // A request without a body can be sent again if its first server could
    // not be reached; one with a body only if it never left (connect error
    // before the body was polled) — hyper gives the body no way back, so
    // only bodiless requests are retried.
    let replayable = body.is_end_stream();
    let mut body = Some(body);
    // After a first attempt `body` is None and retries send an empty body.
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut tried: Vec<usize> = Vec::new();
    pool.note_request();
    let aff = affinity(&pool, &parts.headers, peer);
    loop {
        let idx = match pool.admit(aff, cost, class, &tried) {
            Admit::Slot(i) => i,
            Admit::NoServer => {
                l.count_failed();
                return if tried.is_empty() {
                    unavailable("no server available", 1)
                } else {
                    local(StatusCode::BAD_GATEWAY, "no server could be reached")
                };
            }
            Admit::Full => return unavailable("queue full", 1),
            Admit::Queued(ticket, rx) => {
                let mut q = Queued {
                    pool: &pool,
                    ticket,
                    rx: Some(rx),
                    cost,
                };
                let timeout = pool.cfg.queue_timeout.get();
                let r = match q.rx.as_mut() {
                    Some(rx) => tokio::time::timeout(timeout, rx).await,
                    None => return local(StatusCode::INTERNAL_SERVER_ERROR, "queue state lost"),
                };
                match r {
                    Ok(Ok(i)) => {
                        q.rx = None;
                        i
                    }
                    _ => return unavailable("queue timeout", timeout.as_secs().max(1)),
                }
            }
        };
        let slot = Slot {
            pool: Arc::clone(&pool),
            idx,
            cost,
        };
        let server = &pool.servers[idx];
        let uri: Uri = match format!("http://{}{}", server.cfg.address.0, path).parse() {
            Ok(u) => u,
            Err(_) => return local(StatusCode::BAD_REQUEST, "bad request target"),
        };
        let mut out = Request::from_parts(parts.clone(), ());
        *out.uri_mut() = uri;
        // HTTP/2 clients send no Host header; HTTP/1 servers need one.
        if !out.headers().contains_key(http::header::HOST) {
            if let Some(h) = host.clone() {
                out.headers_mut().insert(http::header::HOST, h);
            }
        }
        *out.version_mut() = http::Version::HTTP_11;
        let b = match body.take() {
            Some(b) => Either::Left(b),
            None => Either::Right(Empty::new()),
        };
        let out = out.map(|_| b);
        let started = Instant::now();
        match sh.client.request(out).await {
            Ok(resp) => {
                let status = resp.status();
                server.state.observe(
                    started.elapsed().as_micros() as f64,
                    status.is_server_error(),
                );
                if let Some(ms) = pool.record_outcome(idx, !status.is_server_error()) {
                    warn!(event = "server_ejected", pool = %pool.name, server = %server.cfg.name, ejection_ms = ms, reason = "consecutive 5xx");
                }
                let mut resp = resp;
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_up) = client_upgrade {
                        let server_up = hyper::upgrade::on(&mut resp);
                        tokio::spawn(tunnel(client_up, server_up, slot));
                        let (rparts, _) = resp.into_parts();
                        return Response::from_parts(rparts, empty());
                    }
                }
                let (rparts, rbody) = resp.into_parts();
                let mut rparts = rparts;
                strip_hop_by_hop(&mut rparts.headers);
                if let Some(name) = &pool.cfg.sticky_cookie {
                    if aff.prefer != Some(idx) {
                        let c = format!("{name}={}; Path=/; HttpOnly", pool.sticky_value(idx));
                        if let Ok(v) = HeaderValue::from_str(&c) {
                            rparts.headers.append(http::header::SET_COOKIE, v);
                        }
                    }
                }
                let guarded = Guarded {
                    inner: rbody,
                    _slot: slot,
                };
                return Response::from_parts(rparts, guarded.boxed_unsync());
            }
            Err(e) => {
                server
                    .state
                    .observe(started.elapsed().as_micros() as f64, true);
                if let Some(ms) = pool.record_outcome(idx, false) {
                    warn!(event = "server_ejected", pool = %pool.name, server = %server.cfg.name, ejection_ms = ms, reason = "consecutive errors");
                }
                if over.load(std::sync::atomic::Ordering::Relaxed) {
                    return too_large();
                }
                let connect = e.is_connect();
                if connect {
                    let _ = sh.ctx.events.send(DataEvent::Failure {
                        server: Arc::clone(&server.state),
                        reason: format!("connect: {e}"),
                    });
                }
                drop(slot);
                debug!(server = %server.cfg.name, error = %e, connect, "upstream request failed");
                if connect && replayable {
                    if pool.take_retry() {
                        tried.push(idx);
                        continue;
                    }
                    if sh.listener.failed_log.allow() {
                        warn!(event = "retry_budget_exhausted", pool = %pool.name, budget_percent = pool.cfg.retry_budget);
                    }
                }
                return local(StatusCode::BAD_GATEWAY, "upstream request failed");
            }
        }
    }
}
