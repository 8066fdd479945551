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

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::parse::{self, ChunkedDecoder, Decoded, Framing};

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

/// A connection to a server, plain or TLS.
#[derive(Debug)]
pub enum UpIo {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// An in-memory pipe to a scripted server (unit tests).
    #[cfg(test)]
    Mock(tokio::io::DuplexStream),
}

impl AsyncRead for UpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(test)]
            UpIo::Mock(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_write(cx, b),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
            #[cfg(test)]
            UpIo::Mock(s) => Pin::new(s).poll_write(cx, b),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_write_vectored(cx, b),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, b),
            #[cfg(test)]
            UpIo::Mock(s) => Pin::new(s).poll_write_vectored(cx, b),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpIo::Tcp(s) => s.is_write_vectored(),
            UpIo::Tls(s) => s.is_write_vectored(),
            #[cfg(test)]
            UpIo::Mock(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(test)]
            UpIo::Mock(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(test)]
            UpIo::Mock(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Reads what the stream has into the spare room of `buf` (grown when
/// short of room); `Ready(Ok(0))` is the end of the stream.
pub fn poll_read_buf<R: AsyncRead + Unpin>(
    r: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    grow: usize,
) -> Poll<io::Result<usize>> {
    use tokio::io::AsyncReadExt;
    if buf.capacity() - buf.len() < grow / 4 {
        buf.reserve(grow);
    }
    let fut = r.read_buf(buf);
    let mut fut = std::pin::pin!(fut);
    fut.as_mut().poll(cx)
}

use std::future::Future;

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
                None => (self.connect(t).await?, false),
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
        let parse::ResponseHead {
            mut parts,
            framing,
            keep_alive,
            hop,
        } = head;
        let upgrade = parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
        if !upgrade {
            parse::strip_hop(&mut parts.headers, hop);
        }
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

/// Writes `a` then `b`, in one write when the socket takes them.
async fn write_all2(io: &mut UpIo, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    while !a.is_empty() {
        let n = if b.is_empty() {
            io.write(a).await?
        } else {
            io.write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])
                .await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n >= a.len() {
            b = &b[n - a.len()..];
            a = &[];
        } else {
            a = &a[n..];
        }
    }
    if !b.is_empty() {
        io.write_all(b).await?;
    }
    Ok(())
}

/// Takes `n` written bytes off the front of a write queue.
pub fn consume(pending: &mut VecDeque<Bytes>, n: &mut usize) {
    while *n > 0 {
        let Some(front) = pending.front_mut() else {
            break;
        };
        if *n >= front.len() {
            *n -= front.len();
            pending.pop_front();
        } else {
            let _ = front.split_to(*n);
            *n = 0;
        }
    }
}

enum PumpError {
    Body(BoxError),
    Io(io::Error),
}

/// Streams a request body to the server: each piece framed (chunked, or
/// as is under a Content-Length) and written.
struct Pump {
    body: StreamBody,
    chunked: bool,
    pending: VecDeque<Bytes>,
    /// The body was polled (it cannot be sent again).
    started: bool,
    ended: bool,
    /// Everything is written.
    done: bool,
}

impl Pump {
    fn new(body: StreamBody, chunked: bool) -> Pump {
        Pump {
            body,
            chunked,
            pending: VecDeque::new(),
            started: false,
            ended: false,
            done: false,
        }
    }

    /// Makes progress; `Ready(Ok)` once all of the body is written.
    fn poll(&mut self, cx: &mut Context<'_>, io: &mut UpIo) -> Poll<Result<(), PumpError>> {
        loop {
            // Write what is pending first.
            while !self.pending.is_empty() {
                let mut slices = [io::IoSlice::new(&[]); 8];
                let mut k = 0;
                for (s, b) in slices.iter_mut().zip(self.pending.iter()) {
                    *s = io::IoSlice::new(b);
                    k += 1;
                }
                let mut n = match ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k])) {
                    Ok(0) => {
                        return Poll::Ready(Err(PumpError::Io(io::ErrorKind::WriteZero.into())))
                    }
                    Ok(n) => n,
                    Err(e) => return Poll::Ready(Err(PumpError::Io(e))),
                };
                consume(&mut self.pending, &mut n);
            }
            if self.ended {
                if let Err(e) = ready!(Pin::new(&mut *io).poll_flush(cx)) {
                    return Poll::Ready(Err(PumpError::Io(e)));
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            self.started = true;
            match ready!(self.body.as_mut().poll_frame(cx)) {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        if d.is_empty() {
                            continue;
                        }
                        if self.chunked {
                            self.pending.push_back(parse::chunk_head(d.len()));
                            self.pending.push_back(d);
                            self.pending.push_back(Bytes::from_static(b"\r\n"));
                        } else {
                            self.pending.push_back(d);
                        }
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(PumpError::Body(e))),
                None => {
                    if self.chunked {
                        self.pending.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                    self.ended = true;
                }
            }
        }
    }
}

#[derive(Debug)]
enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
    Upgrade,
    Done,
    Failed,
}

/// A server's response body, read from its connection; the connection
/// goes back to the pool when the body has ended (if the server keeps it
/// open and the request was sent whole).
pub struct UpBody {
    conn: Option<UpConn>,
    state: BodyState,
    pump: Option<Pump>,
    keep_alive: bool,
    pool: Arc<Pool>,
    key: Key,
}

impl std::fmt::Debug for UpBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpBody")
            .field("state", &self.state)
            .finish()
    }
}

/// An error while reading a response body.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UpBodyError(pub String);

impl UpBody {
    fn finished(&mut self) {
        self.state = BodyState::Done;
        if let Some(c) = self.conn.take() {
            if self.keep_alive && self.pump.is_none() && c.buf.is_empty() {
                self.pool.checkin(self.key, c);
            }
        }
    }

    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = BodyState::Failed;
        self.conn = None;
        Poll::Ready(Some(Err(Box::new(UpBodyError(why)))))
    }

    /// After a `101 Switching Protocols`: the connection and the bytes
    /// the server sent after its head.
    pub fn into_upgraded(mut self) -> Option<(UpIo, BytesMut)> {
        if !matches!(self.state, BodyState::Upgrade) {
            return None;
        }
        let c = self.conn.take()?;
        Some((c.io, c.buf))
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(c) = this.conn.as_mut() else {
                // Ended, failed or handed over: nothing more comes.
                return Poll::Ready(None);
            };
            if let Some(p) = this.pump.as_mut() {
                match p.poll(cx, &mut c.io) {
                    Poll::Ready(Ok(())) => this.pump = None,
                    Poll::Pending => {}
                    Poll::Ready(Err(PumpError::Body(e))) => {
                        return this.fail(format!("request body failed: {e}"))
                    }
                    Poll::Ready(Err(PumpError::Io(_))) => {
                        // The server stopped reading: its response goes on,
                        // the connection is not kept.
                        this.pump = None;
                        this.keep_alive = false;
                    }
                }
            }
            match &mut this.state {
                BodyState::Done | BodyState::Failed | BodyState::Upgrade => {
                    return Poll::Ready(None)
                }
                BodyState::Length(left) => {
                    if !c.buf.is_empty() {
                        let n = (c.buf.len() as u64).min(*left) as usize;
                        *left -= n as u64;
                        let d = c.buf.split_to(n).freeze();
                        if *left == 0 {
                            this.finished();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(d))));
                    }
                }
                BodyState::Chunked(dec) => match dec.decode(&mut c.buf) {
                    Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                    Ok(Decoded::End) => {
                        this.finished();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return this.fail(format!("bad chunked response body: {e}")),
                },
                BodyState::Close => {
                    if !c.buf.is_empty() {
                        let d = c.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(d))));
                    }
                }
            }
            let Some(c) = this.conn.as_mut() else {
                continue;
            };
            match poll_read_buf(&mut c.io, cx, &mut c.buf, READ_CHUNK) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if matches!(this.state, BodyState::Close) {
                        this.keep_alive = false;
                        this.finished();
                        return Poll::Ready(None);
                    }
                    return this.fail("server closed the connection mid-body".into());
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(format!("reading the response body: {e}")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done | BodyState::Upgrade)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Done | BodyState::Upgrade => SizeHint::with_exact(0),
            _ => SizeHint::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, DuplexStream};

    /// A pool holding one idle connection to `key`, whose server end is
    /// returned.
    fn pool_with_mock(key: Key) -> (Arc<Pool>, DuplexStream) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let p = Pool::new(Duration::from_secs(60), 4);
        p.checkin(
            key,
            UpConn {
                io: UpIo::Mock(a),
                buf: BytesMut::new(),
                idle_since: Instant::now(),
            },
        );
        (p, b)
    }

    /// Reads one request head from the server end.
    async fn read_head(s: &mut DuplexStream) -> String {
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "closed before a whole head");
            got.extend_from_slice(&b[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    fn target(addr: SocketAddr) -> Target<'static> {
        Target {
            addr,
            tls: None,
            connect_timeout: Duration::from_millis(200),
        }
    }

    fn get<'a>(m: &'a Method, h: &'a HeaderMap) -> ReqHead<'a> {
        ReqHead {
            method: m,
            target: "/a",
            host: None,
            headers: h,
            extra: b"via: 1.1 convoy\r\n",
        }
    }

    #[tokio::test]
    async fn a_response_body_ends_and_the_connection_goes_back_to_the_pool() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (pool, mut server) = pool_with_mock(Key { addr, tls: 0 });
        let (m, h) = (Method::GET, HeaderMap::new());
        let answer = tokio::spawn(async move {
            let head = read_head(&mut server).await;
            server
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\n\r\nhello")
                .await
                .unwrap();
            (head, server)
        });
        let resp = pool
            .send(&target(addr), &get(&m, &h), OutBody::Empty)
            .await
            .unwrap();
        let (head, _server) = answer.await.unwrap();
        assert_eq!(head, "GET /a HTTP/1.1\r\nvia: 1.1 convoy\r\n\r\n");
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("x-hop").is_none(), "hop-by-hop removed");
        assert_eq!(pool.idle_count(), 0, "in use until its body ends");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
        assert_eq!(pool.idle_count(), 1, "back in the pool");
    }

    #[tokio::test]
    async fn a_server_that_closes_is_not_reused() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (pool, mut server) = pool_with_mock(Key { addr, tls: 0 });
        let (m, h) = (Method::GET, HeaderMap::new());
        tokio::spawn(async move {
            read_head(&mut server).await;
            server
                .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
        });
        let resp = pool
            .send(&target(addr), &get(&m, &h), OutBody::Empty)
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        drop(resp);
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_reused_connection_closed_under_a_request_is_tried_again_on_a_new_one() {
        // The pooled connection's server went away (the keep-alive race);
        // the request goes to a new connection, here refused: the client
        // sees the connect error, not the reset of the stale connection.
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (pool, server) = pool_with_mock(Key { addr, tls: 0 });
        drop(server);
        let (m, h) = (Method::GET, HeaderMap::new());
        let e = pool
            .send(&target(addr), &get(&m, &h), OutBody::Empty)
            .await
            .unwrap_err();
        assert!(e.is_connect(), "{e}");
    }

    #[tokio::test]
    async fn a_malformed_answer_is_the_servers_fault() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (pool, mut server) = pool_with_mock(Key { addr, tls: 0 });
        let (m, h) = (Method::GET, HeaderMap::new());
        tokio::spawn(async move {
            read_head(&mut server).await;
            server
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .await
                .unwrap();
            let _ = server.read(&mut [0u8; 16]).await;
        });
        let e = pool
            .send(&target(addr), &get(&m, &h), OutBody::Empty)
            .await
            .unwrap_err();
        assert!(matches!(e, SendError::BadResponse(_)), "{e}");
    }
}
