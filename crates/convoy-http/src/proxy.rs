//! The HTTP listener: accept loop, the client connection (HTTP/1.1 with
//! keep-alive on [`crate::h1::server`], or HTTP/2 on [`crate::http2`] when
//! ALPN says `h2` or the client starts with the HTTP/2 preface), and
//! the per-request path: route → admission (slot or queue) → forward over
//! the keep-alive pool → stream the response back, holding the slot until
//! the response body ends.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use bytes::Bytes;
use convoy_core::admission::{Admit, Affinity, Grant};
use convoy_core::context::{Context, DataEvent};
use convoy_core::state::ErrorKind;
use convoy_core::{ListenerRuntime, PoolRuntime};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::headers::{add_forwarding, cookie, strip_hop_by_hop, ClientInfo};
use crate::route::decide_from;

/// Response body type: a streamed upstream body (possibly compressed) or
/// a local one.
pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// Request body to servers: the client's streamed body (its first frame
/// already read and checked), or nothing (a bodiless request sent again to
/// another server).
type ReqBody = Either<Prefixed, Either<Full<Bytes>, Empty<Bytes>>>;

/// The client's body with its first frame read ahead: a body that is
/// malformed from its first byte (bad chunk size) is refused with 400
/// before anything reaches a server.
/// It also enforces the route's body limit and the body timeout: a body
/// growing past the limit, failing on the client's side (bad chunk,
/// aborted upload) or pausing longer than `body_timeout` ends the upstream
/// request with an error and records the client's fault in `fault`, so the
/// client gets 413 or 408 (or nothing, when it is gone) and the server is
/// not blamed.
struct Prefixed {
    first: Option<Frame<Bytes>>,
    rest: InBody,
    limit: u64,
    seen: u64,
    fault: Arc<std::sync::atomic::AtomicU8>,
    pause: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Client faults recorded by [`Prefixed`].
const FAULT_NONE: u8 = 0;
const FAULT_TOO_LARGE: u8 = 1;
const FAULT_CLIENT: u8 = 2;
const FAULT_SLOW: u8 = 3;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body: from convoy's own HTTP/1 loop, or from an
/// HTTP/2 stream.
pub enum InBody {
    /// HTTP/1.
    H1(crate::h1::body::ReqBody),
    /// HTTP/2.
    H2(crate::http2::H2Body),
}

/// `Body` for an enum of two bodies, by delegation.
macro_rules! either_body {
    ($t:ident, $a:ident, $b:ident) => {
        impl Body for $t {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(
                self: Pin<&mut Self>,
                cx: &mut TaskCx<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                match self.get_mut() {
                    $t::$a(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
                    $t::$b(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
                }
            }
            fn is_end_stream(&self) -> bool {
                match self {
                    $t::$a(b) => b.is_end_stream(),
                    $t::$b(b) => b.is_end_stream(),
                }
            }
            fn size_hint(&self) -> SizeHint {
                match self {
                    $t::$a(b) => b.size_hint(),
                    $t::$b(b) => b.size_hint(),
                }
            }
        }
    };
}

either_body!(InBody, H1, H2);

/// A server's response body: from convoy's own HTTP/1 client, or from
/// hyper (HTTP/2 to servers).
pub enum UpResp {
    /// HTTP/1.
    H1(crate::h1::client::UpBody),
    /// HTTP/2.
    H2(Incoming),
}

either_body!(UpResp, H1, H2);

/// Why a request to a server got no response head.
enum UpErr {
    H1(crate::h1::client::SendError),
    H2(hyper_util::client::legacy::Error),
}

impl UpErr {
    fn is_connect(&self) -> bool {
        match self {
            UpErr::H1(e) => e.is_connect(),
            UpErr::H2(e) => e.is_connect(),
        }
    }
}

impl std::fmt::Display for UpErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpErr::H1(e) => e.fmt(f),
            UpErr::H2(e) => e.fmt(f),
        }
    }
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::sync::atomic::Ordering::Relaxed;
        let frame = match self.first.take() {
            Some(f) => f,
            None => match Pin::new(&mut self.rest).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => f,
                Poll::Ready(Some(Err(e))) => {
                    self.fault.store(FAULT_CLIENT, Relaxed);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    let pause = self.pause;
                    let t = self
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
                    if t.as_mut().poll(cx).is_ready() {
                        self.fault.store(FAULT_SLOW, Relaxed);
                        return Poll::Ready(Some(Err("request body timed out".into())));
                    }
                    return Poll::Pending;
                }
            },
        };
        // A frame arrived: the pause clock starts again.
        self.timer = None;
        if let Some(d) = frame.data_ref() {
            self.seen += d.len() as u64;
            if self.limit > 0 && self.seen > self.limit {
                self.fault.store(FAULT_TOO_LARGE, Relaxed);
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
type TlsUpstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, ReqBody>;

struct Shared {
    ctx: Context,
    listener: Arc<ListenerRuntime>,
    /// HTTP/1.1 to servers: convoy's own keep-alive pool.
    h1: Arc<crate::h1::client::Pool>,
    /// TLS settings for HTTP/1.1 to servers, per pool, built on first use
    /// and again when the pool's TLS settings change.
    h1_tls: std::sync::Mutex<
        std::collections::HashMap<
            String,
            (
                convoy_config::UpstreamTls,
                Arc<crate::h1::client::TlsTarget>,
            ),
        >,
    >,
    /// HTTP/2 (h2c) to the servers of pools with `http2 = true`.
    client_h2: Upstream,
    /// HTTP/2 over TLS clients per pool, built on first use and again
    /// when the pool's TLS settings change.
    tls_clients: std::sync::Mutex<
        std::collections::HashMap<(String, bool), (convoy_config::UpstreamTls, TlsUpstream)>,
    >,
    header_timeout: Duration,
    idle_timeout: Duration,
    compress: Option<crate::compress::Policy>,
    /// The listener's response cache.
    cache: Option<Arc<crate::cache::Cache>>,
    /// Add `X-Cache` to responses.
    cache_header: bool,
    body_timeout: Duration,
    response_timeout: Duration,
    request_timeout: Option<Duration>,
}

impl Shared {
    /// TLS for HTTP/1.1 to `pool`'s servers.
    fn h1_tls(&self, pool: &PoolRuntime) -> Result<Arc<crate::h1::client::TlsTarget>, String> {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        static IDS: AtomicU64 = AtomicU64::new(1);
        let Some(t) = &pool.cfg.tls else {
            return Err("the pool has no TLS settings".into());
        };
        let mut m = self.h1_tls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cfg, target)) = m.get(&pool.name) {
            if cfg == t {
                return Ok(Arc::clone(target));
            }
        }
        let mut config = crate::tls::client_config(t, false)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = match &t.sni {
            Some(n) => Some(
                rustls::pki_types::ServerName::try_from(n.clone())
                    .map_err(|e| format!("tls.sni {n:?}: {e}"))?,
            ),
            None => None,
        };
        let target = Arc::new(crate::h1::client::TlsTarget {
            config: Arc::new(config),
            name,
            id: IDS.fetch_add(1, Relaxed),
        });
        m.insert(pool.name.clone(), (t.clone(), Arc::clone(&target)));
        Ok(target)
    }

    /// The TLS client for `pool`'s servers.
    fn tls_client(&self, pool: &PoolRuntime, h2: bool) -> Result<TlsUpstream, String> {
        let Some(t) = &pool.cfg.tls else {
            return Err("the pool has no TLS settings".into());
        };
        let key = (pool.name.clone(), h2);
        let mut m = self.tls_clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cfg, c)) = m.get(&key) {
            if cfg == t {
                return Ok(c.clone());
            }
        }
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.listener.cfg.connect_timeout.get()));
        http.enforce_http(false);
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::client_config(t, h2)?)
            .https_only();
        let b = match &t.sni {
            Some(name) => {
                let sn = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|e| format!("tls.sni {name:?}: {e}"))?;
                b.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(sn))
            }
            None => b,
        };
        let conn = if h2 {
            b.enable_http2().wrap_connector(http)
        } else {
            b.enable_http1().wrap_connector(http)
        };
        let c: TlsUpstream = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(h2)
            .build(conn);
        m.insert(key, (t.clone(), c.clone()));
        Ok(c)
    }
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

/// The upstream response body, keeping the slot until it ends. A server
/// whose connections are closed by the control plane (drain timeout,
/// disabled, removed) has its responses cut at their next frame.
struct Guarded {
    inner: UpResp,
    slot: Slot,
    kill: watch::Receiver<u64>,
    /// A server that stops sending mid-body for `response_timeout` has
    /// its response cut (created at the first wait).
    pause: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if r.is_pending() {
            let pause = self.pause;
            let t = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
            if t.as_mut().poll(cx).is_ready() {
                let s = &self.slot.pool.servers[self.slot.idx];
                s.state.count_error(ErrorKind::Timeout);
                debug!(server = %s.cfg.name, "response body timed out: cut");
                return Poll::Ready(Some(Err("server stopped sending its response".into())));
            }
            return Poll::Pending;
        }
        let next = tokio::time::Instant::now() + self.pause;
        if let Some(t) = self.timer.as_mut() {
            t.as_mut().reset(next);
        }
        if self.kill.has_changed().unwrap_or(true) {
            debug!(server = %self.slot.pool.servers[self.slot.idx].cfg.name, "response cut: server connections closed");
            // An error, not an end: the client must not take a cut
            // response for a whole one (nor may the cache store it).
            return Poll::Ready(Some(Err("the server's connections were closed".into())));
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

/// A response body that writes the request's access-log line when it
/// ends.
struct Tracked {
    inner: RespBody,
    rec: Option<Box<AccessRec>>,
    access: Option<Arc<convoy_core::access::AccessLog>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let (Some(rec), Some(log)) = (self.rec.take(), &self.access) {
            log.write(rec.line());
        }
    }
}

/// What the access log says about one request; built only when the log is
/// on.
struct AccessRec {
    start: Instant,
    listener: String,
    client: std::net::IpAddr,
    method: http::Method,
    target: String,
    host: String,
    version: http::Version,
    route: String,
    class: usize,
    cost: u32,
    pool: String,
    server: Option<String>,
    tier: Option<u32>,
    queue_ms: u64,
    server_ms: Option<u64>,
    retries: usize,
    status: u16,
    bytes: u64,
}

impl AccessRec {
    fn new<B>(listener: &str, peer: SocketAddr, req: &Request<B>) -> Self {
        AccessRec {
            start: Instant::now(),
            listener: listener.to_string(),
            client: peer.ip(),
            method: req.method().clone(),
            target: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            host: req
                .headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
                .unwrap_or("")
                .to_string(),
            version: req.version(),
            route: String::new(),
            class: 0,
            cost: 0,
            pool: String::new(),
            server: None,
            tier: None,
            queue_ms: 0,
            server_ms: None,
            retries: 0,
            status: 0,
            bytes: 0,
        }
    }

    fn line(&self) -> String {
        serde_json::json!({
            "time_ms": convoy_core::access::epoch_ms(),
            "kind": "http",
            "listener": self.listener,
            "client": self.client.to_string(),
            "method": self.method.as_str(),
            "target": self.target,
            "host": self.host,
            "version": format!("{:?}", self.version),
            "route": self.route,
            "class": self.class,
            "cost": self.cost,
            "pool": self.pool,
            "server": self.server,
            "tier": self.tier,
            "queue_ms": self.queue_ms,
            "server_ms": self.server_ms,
            "total_ms": self.start.elapsed().as_millis() as u64,
            "retries": self.retries,
            "status": self.status,
            "bytes_out": self.bytes,
        })
        .to_string()
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Some(rec), Poll::Ready(Some(Ok(f)))) = (&mut self.rec, &r) {
            if let Some(d) = f.data_ref() {
                rec.bytes += d.len() as u64;
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

/// 408 and close: the client was too slow sending its body.
fn client_timeout() -> Response<RespBody> {
    let mut r = local(StatusCode::REQUEST_TIMEOUT, "request body timed out");
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
    tls: Option<Arc<crate::tls::TlsState>>,
    cache: Option<Arc<crate::cache::Cache>>,
) {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(listener.cfg.connect_timeout.get()));
    let client_h2: Upstream = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .build(http);
    let cfg = &listener.cfg;
    let h1 = crate::h1::client::Pool::new(UPSTREAM_IDLE, 256);
    let shared = Arc::new(Shared {
        header_timeout: cfg.header_timeout().get(),
        compress: cfg.compression.as_ref().map(crate::compress::Policy::new),
        cache_header: cfg.cache.as_ref().is_some_and(|c| c.status_header),
        cache,
        idle_timeout: cfg.idle_timeout().get(),
        body_timeout: cfg.body_timeout().get(),
        response_timeout: cfg.response_timeout().get(),
        request_timeout: cfg.request_timeout.map(|d| d.get()),
        ctx,
        listener,
        h1: Arc::clone(&h1),
        h1_tls: Default::default(),
        client_h2,
        tls_clients: Default::default(),
    });
    // Idle connections to servers past their time are closed even when
    // nothing else happens.
    let sweeper = {
        let h1 = Arc::downgrade(&h1);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let Some(p) = h1.upgrade() else { return };
                p.sweep(|_| true);
            }
        })
    };
    drop(h1);
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
        if !shared.listener.takes_new() {
            // A disabled (or operator-drained) listener takes no new
            // connection: it is closed at once, as on TCP listeners.
            shared.listener.count_failed();
            if shared.listener.failed_log.allow() {
                info!(event = "no_server", listener = %shared.listener.cfg.name, client = %peer, reason = "listener disabled");
            }
            continue;
        }
        if let Err(why) = shared.listener.admit_from(peer.ip()) {
            if shared.listener.refused_log.allow() {
                warn!(event = "connection_refused", listener = %shared.listener.cfg.name, client = %peer, reason = why.as_str());
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        let sh = Arc::clone(&shared);
        let stop = stop.clone();
        let tls = tls.clone();
        let task = async move {
            match tls {
                None => serve_conn(&sh, stream, peer, "http", stop, false).await,
                // Boxed: a plain connection's task does not carry the
                // room a TLS one needs.
                Some(tls) => {
                    Box::pin(async {
                        // The handshake counts against the header timeout.
                        let acceptor = tls.acceptor();
                        match tokio::time::timeout(sh.header_timeout, acceptor.accept(stream)).await
                        {
                            Ok(Ok(s)) => {
                                let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                                serve_conn(&sh, s, peer, "https", stop, h2).await
                            }
                            Ok(Err(e)) => {
                                debug!(client = %peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => debug!(client = %peer, "TLS handshake timed out"),
                        }
                    })
                    .await
                }
            }
            sh.listener.release_from(peer.ip());
        };
        tokio::spawn(task);
    }
    sweeper.abort();
}

/// How long an idle connection to a server is kept for reuse.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// The start of the HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// A stream that first gives back bytes already read from it.
struct Rewind<S> {
    pre: Bytes,
    s: S,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let b = self.pre.split_to(n);
            buf.put_slice(&b);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.s).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.s).poll_write(cx, b)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        b: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.s).poll_write_vectored(cx, b)
    }
    fn is_write_vectored(&self) -> bool {
        self.s.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.s).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.s).poll_shutdown(cx)
    }
}

/// The future that completes when the node or the listener closes its
/// connections.
fn kill_future(sh: &Shared) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let mut kill = sh.ctx.kill.clone();
    kill.mark_unchanged();
    let mut lkill = sh.listener.kill_signal();
    lkill.mark_unchanged();
    Box::pin(async move {
        tokio::select! {
            _ = kill.changed() => {}
            _ = lkill.changed() => {}
        }
    })
}

/// Serves one client connection (plain or TLS) until it ends, the
/// listener stops (graceful) or the node or listener kills it: HTTP/1.1
/// on convoy's own loop, HTTP/2 (ALPN `h2`, or the prior-knowledge
/// preface) on the `h2` crate.
async fn serve_conn<S>(
    sh: &Arc<Shared>,
    mut stream: S,
    peer: SocketAddr,
    proto: &'static str,
    stop: watch::Receiver<bool>,
    alpn_h2: bool,
) where
    S: crate::h1::server::ClientStream,
{
    let info = Arc::new(ClientInfo::new(peer, proto));
    let mut rbuf = bytes::BytesMut::new();
    let mut h2 = alpn_h2;
    if !h2 {
        // The first bytes tell HTTP/2 prior knowledge from HTTP/1.
        let sniff = async {
            use tokio::io::AsyncReadExt;
            loop {
                rbuf.reserve(4096);
                match stream.read_buf(&mut rbuf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
                let n = rbuf.len().min(H2_PREFACE.len());
                if rbuf[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len() {
                    return true;
                }
            }
        };
        match tokio::time::timeout(sh.header_timeout, sniff).await {
            Ok(true) => {}
            // Nothing (or not enough to tell) in time: closed quietly.
            _ => return,
        }
        h2 = rbuf.starts_with(H2_PREFACE);
    }
    if !h2 {
        let set = crate::h1::server::Settings {
            header_timeout: sh.header_timeout,
            idle_timeout: sh.idle_timeout,
            limits: Default::default(),
        };
        let sig = crate::h1::server::Signals::new(
            stop,
            [sh.ctx.kill.clone(), sh.listener.kill_signal()],
            sh.listener.connection_wake(),
        );
        let handler = |req: Request<crate::h1::body::ReqBody>, meta: crate::h1::server::Meta| {
            let sh = Arc::clone(sh);
            let info = Arc::clone(&info);
            async move { respond(&sh, req.map(InBody::H1), peer, &info, meta.stripped).await }
        };
        crate::h1::server::serve(stream, rbuf, set, sig, handler).await;
        return;
    }
    // Boxed: HTTP/1 connections (most) do not carry the HTTP/2 state.
    Box::pin(serve_h2(sh, stream, rbuf, peer, info, stop)).await;
}

/// An HTTP/2 connection, on convoy's own loop ([`crate::http2`]): its
/// streams run inside this connection's task.
async fn serve_h2<S>(
    sh: &Arc<Shared>,
    stream: S,
    rbuf: bytes::BytesMut,
    peer: SocketAddr,
    info: Arc<ClientInfo>,
    mut stop: watch::Receiver<bool>,
) where
    S: crate::h1::server::ClientStream,
{
    let io = Rewind {
        pre: rbuf.freeze(),
        s: stream,
    };
    let handler = |req: Request<crate::http2::H2Body>| {
        let (sh, info) = (Arc::clone(sh), Arc::clone(&info));
        async move { respond(&sh, req.map(InBody::H2), peer, &info, false).await }
    };
    let stopped = async {
        let _ = stop.wait_for(|s| *s).await;
    };
    let set = crate::http2::Settings {
        header_timeout: sh.header_timeout,
        idle_timeout: sh.idle_timeout,
        ..Default::default()
    };
    if let Err(e) = crate::http2::serve(io, &set, stopped, kill_future(sh), handler).await {
        debug!(client = %peer, error = %e, "http connection ended with an error");
    }
}

/// Answers one request: the request path under the request timeout, with
/// its access-log line written when the response body ends.
async fn respond(
    sh: &Arc<Shared>,
    req: Request<InBody>,
    peer: SocketAddr,
    info: &ClientInfo,
    stripped: bool,
) -> Response<RespBody> {
    let mut rec = sh
        .ctx
        .access
        .as_ref()
        .map(|_| Box::new(AccessRec::new(&sh.listener.cfg.name, peer, &req)));
    // Pinned where it is built: a timeout around it by value would copy
    // the whole request path's state (KBs) and hold room for it twice.
    let resp = {
        let fut = std::pin::pin!(handle(sh, req, peer, info, stripped, &mut rec));
        match sh.request_timeout {
            Some(t) => match tokio::time::timeout(t, fut).await {
                Ok(r) => r,
                Err(_) => local(StatusCode::GATEWAY_TIMEOUT, "request timed out"),
            },
            None => fut.await,
        }
    };
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

/// Waits for a queued request's slot; on timeout or drop, cancels it (and
/// releases a slot handed over meanwhile).
struct Queued<'a> {
    pool: &'a Arc<PoolRuntime>,
    ticket: convoy_balance::queue::Ticket,
    rx: Option<tokio::sync::oneshot::Receiver<Grant>>,
    cost: u32,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            if !self.pool.cancel(self.ticket) {
                if let Ok((pool, i)) = rx.try_recv() {
                    pool.release(i, self.cost);
                }
            }
        }
    }
}

async fn handle(
    sh: &Arc<Shared>,
    mut req: Request<InBody>,
    peer: SocketAddr,
    info: &ClientInfo,
    stripped: bool,
    rec: &mut Option<Box<AccessRec>>,
) -> Response<RespBody> {
    let l = &sh.listener;
    l.count_request();
    if !l.allow_request(peer.ip()) {
        l.count_rate_limited();
        if l.refused_log.allow() {
            warn!(event = "request_refused", listener = %l.cfg.name, client = %peer, reason = "rate_limit");
        }
        let mut r = local(StatusCode::TOO_MANY_REQUESTS, "too many requests");
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        return r;
    }
    let snap = sh.ctx.snapshot.load_full();
    // An operator's request for an explanation: the header carries the
    // admin token; it never reaches a server.
    let explain =
        req.headers_mut()
            .remove("x-convoy-explain")
            .is_some_and(|v| {
                sh.ctx.explain_token.as_ref().is_some_and(|t| {
                    convoy_core::control::constant_time_eq(v.as_bytes(), t.as_bytes())
                })
            });
    let d = decide_from(&l.routes, &req, Some(peer.ip()));
    if let Some(r) = rec {
        r.route = d.route.clone();
        r.class = d.class;
        r.cost = d.cost;
        r.pool = d.pool.clone();
    }
    let Some(first_pool) = snap.pools.get(&d.pool).cloned() else {
        return local(StatusCode::BAD_GATEWAY, "no such pool");
    };
    let (class, cost) = (d.class, d.cost);
    // The Host header, or the HTTP/2 :authority.
    let host: Option<HeaderValue> = req.headers().get(http::header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    // Framing: the HTTP/1 codec refuses differing Content-Lengths and
    // Content-Length beside Transfer-Encoding (400); HTTP/2 bodies are DATA
    // frames, checked by h2 against a Content-Length; either way the
    // request is re-framed towards the server, so nothing can be smuggled
    // past convoy.
    // Protocol upgrade (WebSocket and others, HTTP/1.1): the Upgrade and
    // Connection headers go to the server, and on its 101 the two
    // connections are joined into a byte tunnel.
    let upgrade = upgrade_of(&req);
    let max_body = d.max_body;
    if max_body > 0 && body_len(&req).is_some_and(|n| n > max_body) {
        return too_large();
    }
    let version = req.version();
    let (mut parts, mut body) = req.into_parts();
    // Read the first body frame before choosing a server.
    let first = if body.is_end_stream() {
        None
    } else {
        match tokio::time::timeout(sh.body_timeout, body.frame()).await {
            Ok(Some(Ok(f))) => Some(f),
            Ok(Some(Err(e))) => {
                debug!(client = %peer, error = %e, "malformed request body");
                return bad_request("malformed request body");
            }
            Ok(None) => None,
            Err(_) => return client_timeout(),
        }
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
    // A body that came whole with its first piece (most small uploads) is
    // kept: it can be sent again if a connection fails under it.
    let whole = match &first {
        Some(f) if body.is_end_stream() => {
            f.data_ref().filter(|d| d.len() <= WHOLE_BODY_MAX).cloned()
        }
        _ => None,
    };
    if max_body > 0 && whole.as_ref().is_some_and(|d| d.len() as u64 > max_body) {
        return too_large();
    }
    let fault = Arc::new(std::sync::atomic::AtomicU8::new(FAULT_NONE));
    let body = Prefixed {
        first,
        rest: body,
        limit: max_body,
        seen: 0,
        fault: Arc::clone(&fault),
        pause: sh.body_timeout,
        timer: None,
    };
    if !stripped {
        strip_hop_by_hop(&mut parts.headers);
    }
    if let Some(u) = &upgrade {
        parts.headers.insert(http::header::UPGRADE, u.clone());
        parts.headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
    }
    // Forwarding fields: written as prepared lines when the client sent
    // none of its own (the usual case), merged into its fields otherwise.
    let fwd = if crate::headers::has_forwarding(&parts.headers) {
        add_forwarding(&mut parts.headers, info, host.as_ref(), version);
        Bytes::new()
    } else {
        info.lines(host.as_ref(), version)
    };
    // A request without a body, or whose body is whole in memory, can be
    // sent again (to the same server on a new connection, or to another);
    // a streamed body cannot.
    let replayable = body.is_end_stream() || whole.is_some();
    let mut out_body = match whole {
        Some(b) => Outgoing::Full(b),
        None if body.is_end_stream() => Outgoing::None,
        None => Outgoing::Stream(Some(body)),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    first_pool.note_request();
    let aff = affinity(&first_pool, &parts.headers, peer);
    let rc = ReqCtx {
        class,
        cost,
        aff,
        explain,
        upgrade: upgrade.is_some(),
        host,
        path,
        replayable,
        fwd,
        hot: d.hot,
    };
    if let (true, Some(cache)) = (use_cache, &sh.cache) {
        // Boxed: the common path's future stays small.
        return Box::pin(cached(sh, cache, &first_pool, &parts, &rc, rec, looked)).await;
    }
    let f = match fetch(sh, &first_pool, &parts, &mut out_body, &rc, &fault, rec).await {
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
        // The server switched: the client's connection loop joins the two
        // connections, holding the slot for the tunnel's life.
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
        let mut r = Response::from_parts(rparts, empty());
        r.extensions_mut()
            .insert(crate::h1::server::TunnelSlot::new(
                crate::h1::server::Tunnel {
                    server,
                    server_buf,
                    hold: Box::new(slot),
                    kills,
                },
            ));
        return r;
    }
    finish(sh, f, &parts, &rc, None)
}

/// Largest request body kept whole in memory so that it can be sent
/// again.
const WHOLE_BODY_MAX: usize = 64 * 1024;

/// A request's body towards servers.
enum Outgoing {
    /// None.
    None,
    /// Whole in memory: every attempt sends it.
    Full(Bytes),
    /// Streamed from the client: the first attempt takes it.
    Stream(Option<Prefixed>),
}

impl Outgoing {
    /// The body for one attempt.
    fn take(&mut self) -> Option<Outgoing> {
        match self {
            Outgoing::None => None,
            Outgoing::Full(b) => Some(Outgoing::Full(b.clone())),
            Outgoing::Stream(s) => s.take().map(|b| Outgoing::Stream(Some(b))),
        }
    }
}

/// What every attempt of one request shares.
struct ReqCtx {
    /// Forwarding header lines to add (empty when they were merged into
    /// the request's fields).
    fwd: Bytes,
    /// The route is hot: cached copies are refreshed ahead of expiry.
    hot: bool,
    class: usize,
    cost: u32,
    aff: Affinity,
    explain: bool,
    upgrade: bool,
    /// The Host header, or the HTTP/2 :authority.
    host: Option<HeaderValue>,
    /// Path and query to send.
    path: String,
    /// The request has no body (it can be sent again).
    replayable: bool,
}

/// A server's answer with what it holds: the slot, and how it was chosen.
struct Fetched {
    resp: Response<UpResp>,
    slot: Slot,
    pool: Arc<PoolRuntime>,
    idx: usize,
    kill: watch::Receiver<u64>,
    queued_ms: u64,
    tried: Vec<usize>,
}

/// Sends a request (head `parts`, already rewritten) to a server of
/// `first_pool`: admission (a slot or a wait in the queue), the upstream
/// request, its outcome recorded, and retries where safe. Returns the
/// server's response head, or the answer to give the client.
async fn fetch(
    sh: &Arc<Shared>,
    first_pool: &Arc<PoolRuntime>,
    parts: &http::request::Parts,
    body: &mut Outgoing,
    rc: &ReqCtx,
    fault: &std::sync::atomic::AtomicU8,
    rec: &mut Option<Box<AccessRec>>,
) -> Result<Fetched, Response<RespBody>> {
    use std::sync::atomic::Ordering::Relaxed;
    let l = &sh.listener;
    let (class, cost, aff) = (rc.class, rc.cost, rc.aff);
    let mut tried: Vec<usize> = Vec::new();
    let mut queued_ms = 0u64;
    loop {
        // A queued request may be granted a slot by a newer pool (after a
        // reload): it then goes on with that pool.
        let (pool, idx) = match first_pool.admit(aff, cost, class, &tried) {
            Admit::Slot(i) => (Arc::clone(first_pool), i),
            Admit::NoServer => {
                l.count_failed();
                return Err(if tried.is_empty() {
                    unavailable("no server available", 1)
                } else {
                    local(StatusCode::BAD_GATEWAY, "no server could be reached")
                });
            }
            Admit::Full => return Err(unavailable("queue full", 1)),
            Admit::Queued(ticket, rx) => {
                let mut q = Queued {
                    pool: first_pool,
                    ticket,
                    rx: Some(rx),
                    cost,
                };
                let timeout = first_pool.cfg.queue_timeout.get();
                let waited = Instant::now();
                let r = match q.rx.as_mut() {
                    Some(rx) => tokio::time::timeout(timeout, rx).await,
                    None => {
                        return Err(local(StatusCode::INTERNAL_SERVER_ERROR, "queue state lost"))
                    }
                };
                queued_ms += waited.elapsed().as_millis() as u64;
                if let Some(r) = rec.as_mut() {
                    r.queue_ms = queued_ms;
                }
                match r {
                    Ok(Ok(grant)) => {
                        q.rx = None;
                        grant
                    }
                    _ => {
                        first_pool.admission().timeouts.fetch_add(1, Relaxed);
                        return Err(unavailable("queue timeout", timeout.as_secs().max(1)));
                    }
                }
            }
        };
        let slot = Slot {
            pool: Arc::clone(&pool),
            idx,
            cost,
        };
        let server = &pool.servers[idx];
        if let Some(r) = rec.as_mut() {
            r.server = Some(server.cfg.name.clone());
            r.tier = Some(server.cfg.tier);
            r.retries = tried.len();
        }
        if tried.iter().any(|&t| {
            first_pool
                .servers
                .get(t)
                .is_some_and(|e| Arc::ptr_eq(&e.state, &server.state))
        }) {
            // A queued retry was handed the server it already failed on.
            return Err(local(StatusCode::BAD_GATEWAY, "no server could be reached"));
        }
        // HTTP/2 clients send no Host header, HTTP/1.0 clients may not;
        // HTTP/1.1 servers need one: the request's authority, else the
        // server's own address.
        let extra_host = if parts.headers.contains_key(http::header::HOST) {
            None
        } else {
            rc.host
                .clone()
                .or_else(|| HeaderValue::try_from(server.cfg.address.0.to_string()).ok())
        };
        let h2 = pool.cfg.http2 && !rc.upgrade;
        let kill = server.state.request_kill_signal();
        let started = Instant::now();
        let fut: Pin<Box<dyn Future<Output = Result<Response<UpResp>, UpErr>> + Send + '_>> = if h2
        {
            let scheme = if pool.cfg.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let uri: Uri = match format!("{scheme}://{}{}", server.cfg.address.0, rc.path).parse() {
                Ok(u) => u,
                Err(_) => return Err(local(StatusCode::BAD_REQUEST, "bad request target")),
            };
            let mut out = Request::from_parts(parts.clone(), ());
            *out.uri_mut() = uri;
            crate::headers::append_lines(out.headers_mut(), &rc.fwd);
            if let Some(h) = extra_host {
                out.headers_mut().insert(http::header::HOST, h);
            }
            *out.version_mut() = http::Version::HTTP_2;
            let b = match body.take() {
                Some(Outgoing::Stream(Some(b))) => Either::Left(b),
                Some(Outgoing::Full(b)) => Either::Right(Either::Left(Full::new(b))),
                _ => Either::Right(Either::Right(Empty::new())),
            };
            let out = out.map(|_| b);
            let f = if pool.cfg.tls.is_some() {
                match sh.tls_client(&pool, true) {
                    Ok(c) => c.request(out),
                    Err(e) => {
                        warn!(event = "upstream_tls_error", pool = %pool.name, error = %e);
                        return Err(local(
                            StatusCode::BAD_GATEWAY,
                            "TLS to the server is misconfigured",
                        ));
                    }
                }
            } else {
                sh.client_h2.request(out)
            };
            Box::pin(async move { f.await.map(|r| r.map(UpResp::H2)).map_err(UpErr::H2) })
        } else {
            let tls = match pool.cfg.tls.is_some() {
                false => None,
                true => match sh.h1_tls(&pool) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        warn!(event = "upstream_tls_error", pool = %pool.name, error = %e);
                        return Err(local(
                            StatusCode::BAD_GATEWAY,
                            "TLS to the server is misconfigured",
                        ));
                    }
                },
            };
            let out_body = match body.take() {
                Some(Outgoing::Stream(Some(b))) => crate::h1::client::OutBody::Stream(Box::pin(b)),
                Some(Outgoing::Full(b)) => crate::h1::client::OutBody::Full(b),
                _ => crate::h1::client::OutBody::Empty,
            };
            let addr = server.cfg.address.0;
            let connect_timeout = l.cfg.connect_timeout.get();
            let pool_h1 = Arc::clone(&sh.h1);
            let method = parts.method.clone();
            Box::pin(async move {
                let t = crate::h1::client::Target {
                    addr,
                    tls: tls.as_deref(),
                    connect_timeout,
                };
                // Written as its own line: the client's fields are not
                // copied to add one.
                let head = crate::h1::client::ReqHead {
                    method: &method,
                    target: &rc.path,
                    host: extra_host.as_ref(),
                    headers: &parts.headers,
                    extra: &rc.fwd,
                };
                pool_h1
                    .send(&t, &head, out_body)
                    .await
                    .map(|r| r.map(UpResp::H1))
                    .map_err(UpErr::H1)
            })
        };
        let result = match tokio::time::timeout(sh.response_timeout, fut).await {
            Ok(r) => r,
            Err(_) => {
                match fault.load(Relaxed) {
                    FAULT_NONE => {}
                    f => return Err(client_fault(f)),
                }
                // The server took too long to answer: its fault.
                server
                    .state
                    .observe(started.elapsed().as_micros() as f64, true);
                server.state.count_error(ErrorKind::Timeout);
                if let Some(ms) = pool.record_outcome(idx, false) {
                    server.state.set_ejection_reason("response timeouts");
                    warn!(event = "server_ejected", pool = %pool.name, server = %server.cfg.name, ejection_ms = ms, reason = "response timeouts");
                }
                debug!(server = %server.cfg.name, "response timeout");
                return Err(local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "server response timed out",
                ));
            }
        };
        match result {
            Ok(resp) => {
                let status = resp.status();
                let failed = status.is_server_error();
                let us = started.elapsed().as_micros();
                if let Some(r) = rec.as_mut() {
                    r.server_ms = Some((us / 1000) as u64);
                }
                server.state.observe(us as f64, failed);
                server.state.latency.observe(us as u64);
                if failed {
                    server.state.count_error(ErrorKind::Status5xx);
                }
                if let Some(ms) = pool.record_outcome(idx, !failed) {
                    server.state.set_ejection_reason("consecutive 5xx");
                    warn!(event = "server_ejected", pool = %pool.name, server = %server.cfg.name, ejection_ms = ms, reason = "consecutive 5xx");
                }
                // The server answered: its passive failure count restarts.
                server.state.record_success();
                return Ok(Fetched {
                    resp,
                    slot,
                    pool: Arc::clone(&pool),
                    idx,
                    kill,
                    queued_ms,
                    tried,
                });
            }
            Err(e) => {
                // The client's fault (body too large, malformed, aborted or
                // too slow): the server is not blamed.
                match fault.load(Relaxed) {
                    FAULT_NONE => {}
                    f => return Err(client_fault(f)),
                }
                server
                    .state
                    .observe(started.elapsed().as_micros() as f64, true);
                if let Some(ms) = pool.record_outcome(idx, false) {
                    server.state.set_ejection_reason("consecutive errors");
                    warn!(event = "server_ejected", pool = %pool.name, server = %server.cfg.name, ejection_ms = ms, reason = "consecutive errors");
                }
                let connect = e.is_connect();
                server.state.count_error(if connect {
                    ErrorKind::Connect
                } else {
                    ErrorKind::Reset
                });
                // The request failed before any response byte. One that
                // never reached the server (connect error) may go to
                // another; so may a bodiless idempotent one whose
                // connection was reset (it can be repeated safely).
                let retry_safe = connect || idempotent(&parts.method);
                if connect {
                    let _ = sh.ctx.events.send(DataEvent::Failure {
                        server: Arc::clone(&server.state),
                        reason: format!("connect: {e}"),
                    });
                }
                drop(slot);
                debug!(server = %server.cfg.name, error = %e, connect, "upstream request failed");
                if retry_safe && rc.replayable {
                    if first_pool.take_retry() {
                        if let Some(t) = first_pool.index_of(&server.cfg.name) {
                            tried.push(t);
                        }
                        continue;
                    }
                    if sh.listener.failed_log.allow() {
                        warn!(event = "retry_budget_exhausted", pool = %first_pool.name, budget_percent = first_pool.cfg.retry_budget);
                    }
                }
                return Err(local(StatusCode::BAD_GATEWAY, "upstream request failed"));
            }
        }
    }
}

/// The client's answer from a server's response: hop-by-hop headers
/// removed, the sticky cookie and explanation added, compressed if wanted,
/// the slot held until the body ends; `store` keeps a copy of the body
/// for the cache.
fn finish(
    sh: &Shared,
    f: Fetched,
    parts: &http::request::Parts,
    rc: &ReqCtx,
    store: Option<Tee>,
) -> Response<RespBody> {
    let Fetched {
        resp,
        slot,
        pool,
        idx,
        kill,
        queued_ms,
        tried,
    } = f;
    let (mut rparts, rbody) = resp.into_parts();
    if !matches!(rbody, UpResp::H1(_)) {
        // (convoy's HTTP/1 client removed them while parsing.)
        strip_hop_by_hop(&mut rparts.headers);
    }
    // The cache keeps the server's response, not what convoy adds for
    // this client (its sticky cookie, an operator's explanation).
    let stored_parts = store.as_ref().map(|_| rparts.clone());
    if let Some(name) = &pool.cfg.sticky_cookie {
        if rc.aff.prefer != Some(idx) {
            let c = format!("{name}={}; Path=/; HttpOnly", pool.sticky_value(idx));
            if let Ok(v) = HeaderValue::from_str(&c) {
                rparts.headers.append(http::header::SET_COOKIE, v);
            }
        }
    }
    if rc.explain {
        let text = explanation(&pool, idx, rc.class, rc.cost, queued_ms, &tried);
        if let Ok(v) = HeaderValue::from_str(&text) {
            rparts.headers.insert("x-convoy-explain", v);
        }
    }
    let guarded = Guarded {
        inner: rbody,
        slot,
        kill,
        pause: sh.response_timeout,
        timer: None,
    };
    match store {
        Some(mut tee) => {
            tee.parts = stored_parts;
            let teed = Teed {
                inner: guarded,
                tee: Some(tee),
            };
            compressed(sh, parts, rparts, teed)
        }
        None => compressed(sh, parts, rparts, guarded),
    }
}

/// Compresses the body when the client and the response allow it.
fn compressed<B>(
    sh: &Shared,
    parts: &http::request::Parts,
    mut rparts: http::response::Parts,
    body: B,
) -> Response<RespBody>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin + Send + 'static,
{
    if let Some(p) = &sh.compress {
        if let Some(c) = p.choose(&parts.headers, &parts.method, &rparts) {
            let body = p.apply(c, &mut rparts, body);
            return Response::from_parts(rparts, body.boxed_unsync());
        }
        // Sent as it is to this client, but compressed to others: caches
        // on the way must keep the two apart.
        if p.qualifies(&parts.headers, &parts.method, &rparts) {
            crate::compress::Policy::add_vary(&mut rparts.headers);
        }
    }
    Response::from_parts(rparts, body.boxed_unsync())
}

/// Keeps a copy of a response body on its way to the client, and stores
/// it in the cache when it ends complete (never when it is cut or larger
/// than the cache's largest object). Holds the coalescing lead until then.
struct Tee {
    cache: Arc<crate::cache::Cache>,
    req: http::request::Parts,
    parts: Option<http::response::Parts>,
    buf: Vec<u8>,
    limit: u64,
    lead: Option<crate::cache::LeadGuard>,
}

struct Teed<B> {
    inner: B,
    tee: Option<Tee>,
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
fn from_cache(
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

fn cache_status(sh: &Shared, h: &mut http::HeaderMap, status: &'static str) {
    if sh.cache_header {
        h.insert("x-cache", HeaderValue::from_static(status));
    }
}

/// A GET or HEAD through the listener's cache: a fresh copy is served at
/// once; a stale one is revalidated (or served while revalidating, or when
/// the server fails, as its Cache-Control allows); concurrent misses for
/// one key send one request to the servers.
async fn cached(
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
                let fault = std::sync::atomic::AtomicU8::new(FAULT_NONE);
                match fetch(sh, pool, &cond, &mut Outgoing::None, rc, &fault, rec).await {
                    Ok(f) if f.resp.status() == StatusCode::NOT_MODIFIED => {
                        let (rp, _) = f.resp.into_parts();
                        match cache.revalidated(parts, &rp, std::time::SystemTime::now()) {
                            Some(c2) => return from_cache(sh, parts, c2, "REVALIDATED"),
                            None => {
                                // The 304 does not match the stored copy (it
                                // changed or went meanwhile): ask once more,
                                // with the client's own request only.
                                let fault = std::sync::atomic::AtomicU8::new(FAULT_NONE);
                                return match fetch(
                                    sh,
                                    pool,
                                    parts,
                                    &mut Outgoing::None,
                                    rc,
                                    &fault,
                                    rec,
                                )
                                .await
                                {
                                    Ok(f) => {
                                        let tee = tee_for(cache, parts, None);
                                        let mut r = finish(sh, f, parts, rc, tee);
                                        // The stored copy could not serve: a miss.
                                        cache.count_miss();
                                        cache_status(sh, r.headers_mut(), "MISS");
                                        r
                                    }
                                    Err(r) => r,
                                };
                            }
                        }
                    }
                    Ok(f) if f.resp.status().is_server_error() && cache.stale_if_error(&c, now) => {
                        return from_cache(sh, parts, c, "STALE");
                    }
                    Ok(f) => {
                        let tee = tee_for(cache, parts, None);
                        let mut r = finish(sh, f, parts, rc, tee);
                        // The stored copy could not serve: a miss.
                        cache.count_miss();
                        cache_status(sh, r.headers_mut(), "MISS");
                        return r;
                    }
                    Err(r) if cache.stale_if_error(&c, now) => {
                        drop(r);
                        return from_cache(sh, parts, c, "STALE");
                    }
                    Err(r) => return r,
                }
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
                let fault = std::sync::atomic::AtomicU8::new(FAULT_NONE);
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

fn tee_for(
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
fn background(
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
        path: rc.path.clone(),
        replayable: true,
        fwd: rc.fwd.clone(),
        hot: false,
    };
    tokio::spawn(async move {
        let fault = std::sync::atomic::AtomicU8::new(FAULT_NONE);
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

/// The `X-Convoy-Explain` answer: where the request went and how every
/// candidate looked at that moment.
fn explanation(
    pool: &PoolRuntime,
    idx: usize,
    class: usize,
    cost: u32,
    queued_ms: u64,
    tried: &[usize],
) -> String {
    use std::fmt::Write as _;
    let s = &pool.servers[idx];
    let mut out = format!(
        "pool={}; server={}; tier={}; algorithm={}; class={class}; cost={cost}; queued_ms={queued_ms}; retries={}; candidates=",
        pool.name,
        s.cfg.name,
        s.cfg.tier,
        match pool.cfg.algorithm {
            convoy_config::Algorithm::RoundRobin => "round_robin",
            convoy_config::Algorithm::LeastOutstanding => "least_outstanding",
            convoy_config::Algorithm::Qos => "qos",
            convoy_config::Algorithm::Hash => "hash",
        },
        tried.len()
    );
    for (i, e) in pool.servers.iter().enumerate() {
        let st = &e.state;
        let state = if !st.is_up() {
            "down"
        } else if st.is_ejected() {
            "ejected"
        } else if st.admin() != convoy_core::AdminState::Enabled {
            "not-enabled"
        } else {
            "up"
        };
        let (lat, err) = st.qos();
        let _ = write!(
            out,
            "{}{}({state},tier={},in_flight={},lat_ms={:.1},err={:.2})",
            if i == 0 { "" } else { "," },
            e.cfg.name,
            e.cfg.tier,
            st.in_flight(),
            lat / 1000.0,
            err
        );
    }
    out.retain(|c| c.is_ascii() && !c.is_ascii_control());
    out
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
fn idempotent(m: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(m)
}

/// The answer to a request that failed by the client's fault.
fn client_fault(f: u8) -> Response<RespBody> {
    match f {
        FAULT_TOO_LARGE => too_large(),
        FAULT_SLOW => client_timeout(),
        _ => bad_request("malformed or aborted request body"),
    }
}
