//! HTTP/1.1 to servers: a pool of idle keep-alive connections per server
//! (and TLS settings), one request at a time on each, the response body
//! read straight from the connection's buffer and the connection handed
//! back to the pool the moment that body ends.
//!
//! A connection taken from the pool may have been closed by the server
//! just before it was used (the keep-alive race every proxy meets): a
//! request that fails on a reused connection before any response byte
//! arrived, and whose body is still whole, is sent again once on a new
//! connection to the same server. A streamed request body is sent while
//! the response is read (a server may answer before the body ends, or
//! echo it as it comes).

mod body;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Response};
use http_body::Body;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::parse::{self, ChunkedDecoder, Framing};
use body::{BodyState, Pump, PumpError};
use stream::write_all2;

pub use body::{UpBody, UpBodyError};
pub use stream::{consume, poll_read_buf, UpIo};

/// Boxed error of a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed request body.
pub type StreamBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>;

/// Largest response head.
const MAX_HEAD: usize = 64 * 1024;
/// Read buffer growth for bodies.
const READ_CHUNK: usize = 16 * 1024;
/// Read buffer for a response head (most fit, and small bodies with it).
const HEAD_CHUNK: usize = 4096;

/// An idle or busy connection with its read buffer.
#[derive(Debug)]
pub struct UpConn {
    io: UpIo,
    buf: BytesMut,
    idle_since: Instant,
}

/// Which idle connections a request may use: the server's address and its
/// TLS settings (0: plain; otherwise an id of the TLS client config).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Key {
    /// Server address.
    pub addr: SocketAddr,
    /// TLS settings id, 0 for plain TCP.
    pub tls: u64,
}

/// TLS to a server: the client config (ALPN `http/1.1`), the name to send
/// and verify, and the id that keys the pool.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    /// The config.
    pub config: Arc<rustls::ClientConfig>,
    /// SNI (the configured name, or the server's address).
    pub name: Option<rustls::pki_types::ServerName<'static>>,
    /// Pool key part.
    pub id: u64,
}

/// The head of a request to a server.
#[derive(Debug, Clone, Copy)]
pub struct ReqHead<'a> {
    /// Its method.
    pub method: &'a Method,
    /// The request target (path and query).
    pub target: &'a str,
    /// A Host line written first, for a request that has no Host field
    /// (HTTP/2 from the client: its `:authority`).
    pub host: Option<&'a HeaderValue>,
    /// The fields sent as they are.
    pub headers: &'a HeaderMap,
    /// More field lines, written as they are.
    pub extra: &'a [u8],
}

/// Where a request goes.
#[derive(Debug)]
pub struct Target<'a> {
    /// The server.
    pub addr: SocketAddr,
    /// TLS, if the pool speaks it to its servers.
    pub tls: Option<&'a TlsTarget>,
    /// Connect (and TLS handshake) timeout.
    pub connect_timeout: Duration,
}

/// A request's body as the client sends it.
pub enum OutBody {
    /// None.
    Empty,
    /// Whole, in memory (may be sent again).
    Full(Bytes),
    /// Streamed from the client (sent once).
    Stream(StreamBody),
}

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The connection (or its TLS handshake) could not be made.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The connection failed or closed before a whole response head.
    #[error("connection failed before a response ({error}{})", if *.reused { ", reused connection" } else { "" })]
    Reset {
        /// What happened.
        error: io::Error,
        /// On a connection from the pool.
        reused: bool,
        /// Some response bytes had arrived.
        partial: bool,
    },
    /// The server's answer is not HTTP.
    #[error("bad response: {0}")]
    BadResponse(&'static str),
    /// The request body failed (the client's fault).
    #[error("request body: {0}")]
    Body(BoxError),
}

impl SendError {
    /// The request never reached the server.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

/// A cheap hasher for pool keys (addresses from the config, not from
/// clients: no flooding to fear).
#[derive(Default, Clone, Copy, Debug)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

type KeyMap<V> = HashMap<Key, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// Idle connections per key, newest last.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<KeyMap<VecDeque<UpConn>>>,
    idle_timeout: Duration,
    max_idle: usize,
}

impl Pool {
    /// A pool keeping at most `max_idle` idle connections per server, each
    /// for at most `idle_timeout`.
    pub fn new(idle_timeout: Duration, max_idle: usize) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(KeyMap::default()),
            idle_timeout,
            max_idle,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyMap<VecDeque<UpConn>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn checkout(&self, key: Key) -> Option<UpConn> {
        let mut m = self.lock();
        let q = m.get_mut(&key)?;
        let now = Instant::now();
        while let Some(c) = q.pop_back() {
            if now.duration_since(c.idle_since) < self.idle_timeout {
                return Some(c);
            }
            // The newest is too old: so are the rest.
            q.clear();
        }
        None
    }

    fn checkin(&self, key: Key, mut c: UpConn) {
        let now = Instant::now();
        c.idle_since = now;

        let mut m = self.lock();
        let q = m.entry(key).or_default();
        while q
            .front()
            .is_some_and(|o| now.duration_since(o.idle_since) >= self.idle_timeout)
        {
            q.pop_front();
        }
        if q.len() >= self.max_idle {
            q.pop_front();
        }
        q.push_back(c);
    }

    /// Closes idle connections past their time, and every idle connection
    /// to servers `keep` rejects.
    pub fn sweep(&self, keep: impl Fn(&Key) -> bool) {
        let now = Instant::now();
        let mut m = self.lock();
        m.retain(|k, q| {
            if !keep(k) {
                return false;
            }
            q.retain(|c| now.duration_since(c.idle_since) < self.idle_timeout);
            !q.is_empty()
        });
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        self.lock().values().map(VecDeque::len).sum()
    }

    async fn connect(&self, t: &Target<'_>) -> Result<UpConn, SendError> {
        let conn = async {
            let s = TcpStream::connect(t.addr).await?;
            let _ = s.set_nodelay(true);
            let io = match t.tls {
                None => UpIo::Tcp(s),
                Some(tls) => {
                    let name = tls.name.clone().unwrap_or_else(|| {
                        rustls::pki_types::ServerName::IpAddress(t.addr.ip().into())
                    });
                    let c = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
                    UpIo::Tls(Box::new(c.connect(name, s).await?))
                }
            };
            Ok::<_, io::Error>(io)
        };
        let io = match tokio::time::timeout(t.connect_timeout, conn).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => return Err(SendError::Connect(e)),
            Err(_) => {
                return Err(SendError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connect timed out",
                )))
            }
        };
        Ok(UpConn {
            io,
            buf: BytesMut::new(),
            idle_since: Instant::now(),
        })
    }

    /// Sends one request and reads the response head: `req`'s fields are
    /// sent as they are, except for the body fields, which follow `body`.
    pub async fn send(
        self: &Arc<Self>,
        t: &Target<'_>,
        req: &ReqHead<'_>,
        body: OutBody,
    ) -> Result<Response<UpBody>, SendError> {
        let ReqHead {
            method,
            target,
            host,
            headers,
            extra,
        } = *req;
        let key = Key {
            addr: t.addr,
            tls: t.tls.map_or(0, |t| t.id),
        };
        let framing = match &body {
            OutBody::Empty if expects_body(method) => Framing::Length(0),
            OutBody::Empty => Framing::Empty,
            OutBody::Full(b) => Framing::Length(b.len() as u64),
            OutBody::Stream(b) => match b.size_hint().exact() {
                Some(n) => Framing::Length(n),
                None => Framing::Chunked,
            },
        };
        let mut head = Vec::with_capacity(256 + extra.len() + 32 * headers.len());
        parse::write_request_head(&mut head, method, target, host, headers, extra, framing);
        let (mut pump, full) = match body {
            OutBody::Stream(b) => (Some(Pump::new(b, framing == Framing::Chunked)), None),
            OutBody::Full(b) => (None, Some(b)),
            OutBody::Empty => (None, None),
        };
        let mut fresh = false;
        loop {
            let (mut c, reused) = match (!fresh).then(|| self.checkout(key)).flatten() {
                Some(c) => (c, true),
                // Boxed (in a plain function): a new connection is the
                // rare case, and its 1.3 KB of state would otherwise sit in
                // every request's future.
                None => (connect_boxed(self, t).await?, false),
            };
            match exchange(&mut c, &head, full.as_ref(), pump.as_mut(), method).await {
                Ok(resp) => return Ok(self.response(key, c, resp, pump)),
                Err(SendError::Reset {
                    error,
                    partial: false,
                    ..
                }) if reused && pump.as_ref().is_none_or(|p| !p.started) => {
                    // The keep-alive race: once more on a new connection.
                    tracing::debug!(server = %t.addr, error = %error, "reused connection failed: sending again on a new one");
                    fresh = true;
                    continue;
                }
                Err(SendError::Reset { error, partial, .. }) => {
                    return Err(SendError::Reset {
                        error,
                        reused,
                        partial,
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn response(
        self: &Arc<Self>,
        key: Key,
        c: UpConn,
        head: parse::ResponseHead,
        pump: Option<Pump>,
    ) -> Response<UpBody> {
        // (The parser left its hop-by-hop fields out, but for a 101's.)
        let parse::ResponseHead {
            parts,
            framing,
            keep_alive,
            ..
        } = head;
        let upgrade = parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
        let pump = pump.filter(|p| !p.done);
        let state = match framing {
            _ if upgrade => BodyState::Upgrade,
            Framing::Empty => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkedDecoder::default()),
            Framing::Close => BodyState::Close,
        };
        let mut body = UpBody {
            conn: Some(c),
            state,
            pump,
            keep_alive,
            pool: Arc::clone(self),
            key,
        };
        if matches!(body.state, BodyState::Done) {
            body.finished();
        }
        Response::from_parts(parts, body)
    }
}

/// Methods whose requests carry a body by convention (an empty one gets
/// `Content-Length: 0`, as servers expect).
fn expects_body(m: &Method) -> bool {
    *m == Method::POST || *m == Method::PUT || *m == Method::PATCH
}

fn reset(error: io::Error, partial: bool) -> SendError {
    SendError::Reset {
        error,
        reused: false,
        partial,
    }
}

/// Writes the request (head, whole body, or the start of a streamed body)
/// and reads the response head, streaming the body meanwhile.
async fn exchange(
    c: &mut UpConn,
    head: &[u8],
    full: Option<&Bytes>,
    mut pump: Option<&mut Pump>,
    method: &Method,
) -> Result<parse::ResponseHead, SendError> {
    // Head and whole body in one write.
    let body: &[u8] = full.map_or(&[], |b| &b[..]);
    if let Err(e) = write_all2(&mut c.io, head, body).await {
        return Err(reset(e, false));
    }
    let mut write_failed = None;
    poll_fn(|cx| {
        if let Some(p) = pump.as_deref_mut() {
            if !p.done && write_failed.is_none() {
                match p.poll(cx, &mut c.io) {
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                    Poll::Ready(Err(PumpError::Body(e))) => {
                        return Poll::Ready(Err(SendError::Body(e)))
                    }
                    // The server may have answered and closed (413, 401...):
                    // its response is read below.
                    Poll::Ready(Err(PumpError::Io(e))) => write_failed = Some(e),
                }
            }
        }
        loop {
            if !c.buf.is_empty() {
                match parse::parse_response(&mut c.buf, method, MAX_HEAD) {
                    Ok(Some(h)) => return Poll::Ready(Ok(h)),
                    Ok(None) => {}
                    Err(parse::ResponseError::Bad(why)) => {
                        return Poll::Ready(Err(SendError::BadResponse(why)))
                    }
                    Err(parse::ResponseError::TooLarge) => {
                        return Poll::Ready(Err(SendError::BadResponse("response head too large")))
                    }
                }
            }
            let partial = !c.buf.is_empty();
            match ready!(poll_read_buf(&mut c.io, cx, &mut c.buf, HEAD_CHUNK)) {
                Ok(0) => {
                    let e = write_failed.take().unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")
                    });
                    return Poll::Ready(Err(reset(e, partial)));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(reset(e, partial))),
            }
        }
    })
    .await
}

/// [`Pool::connect`], boxed.
fn connect_boxed<'a>(
    pool: &'a Pool,
    t: &'a Target<'_>,
) -> Pin<Box<impl Future<Output = Result<UpConn, SendError>> + 'a>> {
    Box::pin(pool.connect(t))
}

#[cfg(test)]
mod tests;
