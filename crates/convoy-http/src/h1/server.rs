//! One client's HTTP/1.1 connection: read a request head, hand the
//! request to the request path, feed its body while waiting for the
//! response, write the response (one write for a small one), and go on
//! with the next request on the same connection.
//!
//! - **Timeouts**: a head must arrive whole within `header_timeout` of
//!   its first byte (408 otherwise: slowloris); a connection with no
//!   request for `idle_timeout` is closed, and so is one whose client
//!   takes no response byte for `idle_timeout` (it stopped reading); a
//!   new connection that sends nothing is closed after `header_timeout`.
//! - **The client leaves**: its end of stream or an error at any time
//!   drops the request in progress at once (its server slot is freed).
//! - **Bad input** gets its status (400, 405, 431, 501, 505) and the
//!   connection closes; nothing reaches a server.
//! - **Memory**: an idle plain-TCP connection keeps no read buffer; it
//!   waits for the socket to become readable.
//! - **Upgrades**: after a server's `101`, the two connections are joined
//!   byte for byte (see [`Tunnel`]).

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::body::{Chan, ReqBody};
use super::client::{poll_read_buf, BoxError, UpIo};
use super::parse::{self, ChunkedDecoder, Decoded, Framing, Limits};

/// A client connection's stream.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Waits until the stream can be read, without a buffer (plain TCP);
    /// streams that cannot tell are always ready.
    fn poll_idle(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl ClientStream for TcpStream {
    fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {}

#[cfg(test)]
impl ClientStream for tokio::io::DuplexStream {}

/// The connection's timeouts and limits.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// A head must arrive within this of its first byte.
    pub header_timeout: Duration,
    /// A connection without a request closes after this.
    pub idle_timeout: Duration,
    /// Head size limit.
    pub limits: Limits,
}

/// What ends or winds down a connection from outside: a graceful stop
/// (finish the request in progress, then close) and kills (close now).
/// Checking costs an atomic load per receiver; a waiter registered once
/// wakes the connection when any of them changes.
pub struct Signals {
    stop: watch::Receiver<bool>,
    kills: [watch::Receiver<u64>; 2],
    wake: Arc<tokio::sync::Notify>,
    waiter: Option<Pin<Box<tokio::sync::futures::OwnedNotified>>>,
    stopping: bool,
}

impl Signals {
    /// From the graceful-stop flag and the kill counters (each a change
    /// from now on is a kill).
    /// `wake` is notified whenever a signal may have changed.
    pub fn new(
        stop: watch::Receiver<bool>,
        mut kills: [watch::Receiver<u64>; 2],
        wake: Arc<tokio::sync::Notify>,
    ) -> Signals {
        for k in kills.iter_mut() {
            k.mark_unchanged();
        }
        let stopping = *stop.borrow();
        Signals {
            stopping,
            stop,
            kills,
            wake,
            waiter: None,
        }
    }

    /// `Ready(())`: kill. A stop only sets `stopping`. The wait is polled
    /// only when it is new (to register this connection's waker): every
    /// notification comes with a change of a signal, which the checks
    /// then see, so a registered wait need not be polled again until a
    /// change was seen.
    fn poll_kill(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.waiter.is_none() {
                let mut w = Box::pin(Arc::clone(&self.wake).notified_owned());
                // Registered before the checks below, so that a change
                // made after them still wakes this connection.
                let _ = w.as_mut().poll(cx);
                self.waiter = Some(w);
            }
            if self.kills.iter().any(|k| k.has_changed().unwrap_or(false)) {
                return Poll::Ready(());
            }
            if !self.stopping && self.stop.has_changed().unwrap_or(false) && *self.stop.borrow() {
                // The wait was used up by this change: a new one for the
                // kills still to come.
                self.stopping = true;
                self.waiter = None;
                continue;
            }
            return Poll::Pending;
        }
    }
}

/// A server connection to join with the client's after a `101`: put in
/// the response's extensions by the request path.
pub struct Tunnel {
    /// The server's connection.
    pub server: UpIo,
    /// Bytes the server sent after its `101` head.
    pub server_buf: BytesMut,
    /// Held until the tunnel ends (the server slot).
    pub hold: Box<dyn std::any::Any + Send>,
    /// Close the tunnel when any of these completes.
    pub kills: Vec<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// The response extension that carries a [`Tunnel`].
#[derive(Clone)]
pub struct TunnelSlot(pub Arc<Mutex<Option<Tunnel>>>);

impl TunnelSlot {
    /// Wraps a tunnel.
    pub fn new(t: Tunnel) -> TunnelSlot {
        TunnelSlot(Arc::new(Mutex::new(Some(t))))
    }

    fn take(&self) -> Option<Tunnel> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// What the request path is told besides the request.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    /// Hop-by-hop fields were already removed (requests that do not ask
    /// for an upgrade).
    pub stripped: bool,
}

/// Size of a client connection's read buffer (a head, and what follows it).
const SPARE: usize = 4096;

thread_local! {
    /// Read buffers of idle connections, kept for the next request on
    /// this thread (an idle connection holds none).
    static SPARES: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A read buffer: a spare one, or a new one.
fn take_spare() -> BytesMut {
    SPARES
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(SPARE))
}

/// Keeps a buffer nothing else refers to for the next request.
fn put_spare(mut b: BytesMut) {
    b.clear();
    // Only a buffer whose bytes nobody holds any more can be reused whole.
    if !b.try_reclaim(SPARE) || b.capacity() > 4 * SPARE {
        return;
    }
    SPARES.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < 64 {
            s.push(b);
        }
    });
}

/// The current `Date` value, formatted once a second per thread.
pub fn date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static CACHE: Cell<(u64, [u8; 29])> = const { Cell::new((0, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let (s, v) = c.get();
        if s == secs {
            return v;
        }
        let text = httpdate::fmt_http_date(now);
        let mut v = [b' '; 29];
        let n = text.len().min(29);
        v[..n].copy_from_slice(&text.as_bytes()[..n]);
        c.set((secs, v));
        v
    })
}

/// Feeds a request body from the connection into its channel.
enum Feed {
    None,
    Length { ch: Chan, left: u64 },
    Chunked { ch: Chan, dec: ChunkedDecoder },
}

/// The client closed or failed while sending its body.
struct Gone;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Most bytes read ahead from the client beyond the current request.
const READ_AHEAD: usize = 64 * 1024;

impl Feed {
    fn done(&self) -> bool {
        matches!(self, Feed::None)
    }

    fn chan(&self) -> Option<&Chan> {
        match self {
            Feed::None => None,
            Feed::Length { ch, .. } | Feed::Chunked { ch, .. } => Some(ch),
        }
    }

    /// Moves body bytes from `rbuf` and the socket into the channel;
    /// `Ready(Ok)` when the body is complete.
    fn poll<S: ClientStream>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        rbuf: &mut BytesMut,
        cont: &mut usize,
    ) -> Poll<Result<(), Gone>> {
        loop {
            match self {
                Feed::None => return Poll::Ready(Ok(())),
                Feed::Length { ch, left } => {
                    if !rbuf.is_empty() {
                        let n = (rbuf.len() as u64).min(*left) as usize;
                        *left -= n as u64;
                        ch.push(rbuf.split_to(n).freeze());
                        if *left == 0 {
                            ch.finish();
                            *self = Feed::None;
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
                Feed::Chunked { ch, dec } => {
                    if !rbuf.is_empty() {
                        match dec.decode(rbuf) {
                            Ok(Decoded::Data(d)) => {
                                ch.push(d);
                                continue;
                            }
                            Ok(Decoded::End) => {
                                ch.finish();
                                *self = Feed::None;
                                return Poll::Ready(Ok(()));
                            }
                            Ok(Decoded::NeedMore) => {}
                            Err(e) => {
                                tracing::debug!(error = %e, "malformed chunked request body");
                                ch.fail("malformed chunked request body");
                                return Poll::Ready(Err(Gone));
                            }
                        }
                    }
                }
            }
            let Some(ch) = self.chan() else {
                continue;
            };
            if ch.dropped() || !ch.has_room(cx) {
                // Nobody reads it (the answer came first), or the reader
                // is behind: the client waits.
                return Poll::Pending;
            }
            // `100 Continue` once the body is wanted.
            if *cont < CONTINUE.len() {
                if !ch.wanted(cx) {
                    return Poll::Pending;
                }
                match Pin::new(&mut *io).poll_write(cx, &CONTINUE[*cont..]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        *cont += n;
                        continue;
                    }
                    Poll::Ready(_) => {
                        ch.fail("client went away");
                        return Poll::Ready(Err(Gone));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            match poll_read_buf(io, cx, rbuf, 16 * 1024) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    ch.fail("client closed the connection mid-body");
                    return Poll::Ready(Err(Gone));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Reads ahead (pipelined requests) and notices a client that closed:
/// `Ready(())` when it is gone.
fn poll_gone<S: ClientStream>(cx: &mut Context<'_>, io: &mut S, rbuf: &mut BytesMut) -> Poll<()> {
    loop {
        if rbuf.len() >= READ_AHEAD {
            return Poll::Pending;
        }
        match poll_read_buf(io, cx, rbuf, 4096) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
            // More bytes (the next request): read until it would block.
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// A response convoy writes itself for a refused head.
fn error_response(status: StatusCode, reason: &str) -> Vec<u8> {
    let body = format!("{reason}\n");
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Error").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain\r\ncontent-length: ");
    parse::write_dec(&mut out, body.len() as u64);
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(&date());
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// Closes after an error, reading what the client still sends for a
/// moment so that the answer is not lost to a reset.
async fn linger_close<S: ClientStream>(mut io: S) {
    let _ = io.shutdown().await;
    let end = Instant::now() + Duration::from_secs(1);
    let mut sink = BytesMut::new();
    let mut total = 0usize;
    while total < 1 << 20 {
        sink.clear();
        let r = tokio::time::timeout_at(
            end,
            poll_fn(|cx| poll_read_buf(&mut io, cx, &mut sink, 16 * 1024)),
        )
        .await;
        match r {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}

/// How long an idle connection waits, after a graceful stop, for a
/// request the client may have sent before it learns of the stop.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Serves one client connection until it ends. `rbuf`: bytes already
/// read from it. `handler` answers each request.
pub async fn serve<S, F, Fut>(
    mut io: S,
    mut rbuf: BytesMut,
    set: Settings,
    mut sig: Signals,
    handler: F,
) where
    S: ClientStream,
    F: Fn(Request<ReqBody>, Meta) -> Fut,
    Fut: Future<Output = Response<BoxedResp>> + Send + 'static,
{
    let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(set.header_timeout));
    let mut armed = Instant::now() + set.header_timeout;
    // When the connection last finished a response (or started).
    let mut last = Instant::now();
    let mut first = true;
    // A graceful stop (drain, upgrade): an idle connection waits STOP_GRACE
    // for a request in flight (answered with `Connection: close`), then
    // closes.
    let mut stop_by: Option<Instant> = None;
    loop {
        // ---- a request head ----
        let mut head_start: Option<Instant> = (!rbuf.is_empty()).then(Instant::now);
        let head = loop {
            if !rbuf.is_empty() {
                match parse::parse_request(&mut rbuf, set.limits) {
                    Ok(Some(h)) => break h,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(error = e.reason(), "refused request head");
                        if e != parse::HeadError::NotHttp {
                            let _ = io.write_all(&error_response(e.status(), e.reason())).await;
                        }
                        linger_close(io).await;
                        return;
                    }
                }
                head_start.get_or_insert_with(Instant::now);
            }
            let mut deadline = match head_start {
                Some(t) => t + set.header_timeout,
                None if first => last + set.header_timeout,
                None => last + set.idle_timeout,
            };
            if let (Some(s), None) = (stop_by, head_start) {
                deadline = deadline.min(s);
            }
            if deadline != armed {
                timer.as_mut().reset(deadline);
                armed = deadline;
            }
            if rbuf.is_empty() && rbuf.capacity() > 0 {
                // Idle: no buffer held while waiting (it goes back to the
                // thread's spares when nothing else uses it).
                put_spare(std::mem::take(&mut rbuf));
            }
            enum Ev {
                Data,
                Closed,
                Timeout,
                Kill,
            }
            let ev = poll_fn(|cx| {
                if sig.poll_kill(cx).is_ready() {
                    return Poll::Ready(Ev::Kill);
                }
                if sig.stopping && rbuf.is_empty() && stop_by.is_none() {
                    // Closing an idle connection at once would reset a
                    // request the client has just sent: it gets a moment
                    // to arrive.
                    let s = Instant::now() + STOP_GRACE;
                    stop_by = Some(s);
                    if s < armed {
                        timer.as_mut().reset(s);
                        armed = s;
                    }
                }
                let ready = if rbuf.is_empty() {
                    io.poll_idle(cx)
                } else {
                    Poll::Ready(Ok(()))
                };
                match ready {
                    Poll::Ready(Ok(())) => {
                        if rbuf.capacity() == 0 {
                            rbuf = take_spare();
                        }
                        match poll_read_buf(&mut io, cx, &mut rbuf, SPARE) {
                            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                                return Poll::Ready(Ev::Closed)
                            }
                            Poll::Ready(Ok(_)) => return Poll::Ready(Ev::Data),
                            Poll::Pending => {}
                        }
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Ev::Closed),
                    Poll::Pending => {}
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ev::Timeout);
                }
                Poll::Pending
            })
            .await;
            match ev {
                Ev::Data => {}
                Ev::Closed | Ev::Kill => return,
                Ev::Timeout => {
                    if head_start.is_some() {
                        tracing::debug!("request head timed out: 408");
                        let _ = io
                            .write_all(&error_response(
                                StatusCode::REQUEST_TIMEOUT,
                                "request head timed out",
                            ))
                            .await;
                    }
                    // A FIN, then what the client still sends is read: a
                    // request that crossed it is not answered with a reset.
                    linger_close(io).await;
                    return;
                }
            }
        };
        first = false;
        match Box::pin(exchange(&mut io, &mut rbuf, &mut sig, &handler, head, set)).await {
            Done::Keep => {}
            Done::Close => return,
            Done::Shutdown => {
                let _ = io.shutdown().await;
                return;
            }
            Done::Linger => {
                Box::pin(linger_close(io)).await;
                return;
            }
        }
        last = Instant::now();
    }
}

/// How an exchange left the connection.
enum Done {
    /// Ready for the next request.
    Keep,
    /// Close now.
    Close,
    /// Shut down the writing side and close.
    Shutdown,
    /// Close after reading what the client still sends for a moment.
    Linger,
}

/// One request and its response, from a parsed head. Boxed by the
/// connection loop, so that an idle connection holds none of its state.
async fn exchange<S, F, Fut>(
    io: &mut S,
    rbuf: &mut BytesMut,
    sig: &mut Signals,
    handler: &F,
    head: parse::RequestHead,
    set: Settings,
) -> Done
where
    S: ClientStream,
    F: Fn(Request<ReqBody>, Meta) -> Fut,
    Fut: Future<Output = Response<BoxedResp>> + Send + 'static,
{
    let mut out = Out {
        head: Vec::with_capacity(512),
        ..Out::default()
    };
    // ---- the request ----
    let parse::RequestHead {
        mut parts,
        framing,
        keep_alive,
        expect_continue,
        hop,
    } = head;
    let mut keep = keep_alive && !sig.stopping;
    let is_head = parts.method == Method::HEAD;
    let http10 = parts.version == Version::HTTP_10;
    // Upgrade requests keep their Connection and Upgrade fields for
    // the request path, which removes the rest.
    let stripped = hop & parse::hop::UPGRADE == 0;
    if stripped {
        parse::strip_hop(&mut parts.headers, hop);
    }
    if expect_continue {
        // Answered here: the server need not.
        parts.headers.remove(http::header::EXPECT);
    }
    let (body, mut feed) = match framing {
        Framing::Length(n) => {
            let ch = Chan::new(Some(n));
            (ReqBody(Some(ch.clone())), Feed::Length { ch, left: n })
        }
        Framing::Chunked => {
            let ch = Chan::new(None);
            (
                ReqBody(Some(ch.clone())),
                Feed::Chunked {
                    ch,
                    dec: ChunkedDecoder::default(),
                },
            )
        }
        Framing::Empty | Framing::Close => (ReqBody::empty(), Feed::None),
    };
    let mut cont = if expect_continue { 0 } else { CONTINUE.len() };
    let mut fut = Box::pin(handler(Request::from_parts(parts, body), Meta { stripped }));
    let resp = poll_fn(|cx| {
        if sig.poll_kill(cx).is_ready() {
            return Poll::Ready(None);
        }
        if !feed.done() {
            if let Poll::Ready(Err(Gone)) = feed.poll(cx, io, rbuf, &mut cont) {
                // Malformed body: the request path answers 400; a
                // client that left is noticed when writing.
                keep = false;
            }
        }
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if feed.done() && poll_gone(cx, io, rbuf).is_ready() {
            // The client left: its request is dropped, the slot freed.
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await;
    drop(fut);
    let Some(resp) = resp else {
        return Done::Close;
    };
    if sig.stopping {
        keep = false;
    }

    // ---- the response ----
    let (rparts, mut rbody) = resp.into_parts();
    if rparts.status == StatusCode::SWITCHING_PROTOCOLS {
        keep = false;
        if let Some(t) = rparts
            .extensions
            .get::<TunnelSlot>()
            .and_then(TunnelSlot::take)
        {
            let mut head = Vec::with_capacity(256);
            parse::ResponseWrite {
                status: rparts.status,
                headers: &rparts.headers,
                framing: Framing::Empty,
                keep_fields: true,
                close: false,
                keep_alive_10: false,
                date: &date(),
            }
            .write(&mut head);
            if io.write_all(&head).await.is_err() {
                return Done::Close;
            }
            tunnel(io, std::mem::take(rbuf), t, set.idle_timeout).await;
            return Done::Close;
        }
    }
    if rparts
        .headers
        .get(http::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
    {
        keep = false;
    }
    let bodiless = is_head
        || rparts.status.is_informational()
        || rparts.status == StatusCode::NO_CONTENT
        || rparts.status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::Empty
    } else {
        match rbody.size_hint().exact() {
            Some(0) if rbody.is_end_stream() => Framing::Empty,
            Some(n) => Framing::Length(n),
            None if !http10 => Framing::Chunked,
            None => Framing::Close,
        }
    };
    if framing == Framing::Close {
        keep = false;
    }
    let mut headers = rparts.headers;
    headers.remove(http::header::CONNECTION);
    out.head.clear();
    parse::ResponseWrite {
        status: rparts.status,
        headers: &headers,
        framing,
        keep_fields: bodiless,
        close: !keep,
        keep_alive_10: keep && http10,
        date: &date(),
    }
    .write(&mut out.head);
    out.start(framing == Framing::Chunked);
    let mut cut = false;
    // A client that takes no response bytes for `idle_timeout` (it
    // stopped reading) is closed: it would hold the server's slot.
    let mut stall: Option<(Pin<Box<Sleep>>, u64)> = None;
    let ok = poll_fn(|cx| {
        if sig.poll_kill(cx).is_ready() {
            return Poll::Ready(false);
        }
        if !feed.done() {
            if let Poll::Ready(Err(Gone)) = feed.poll(cx, io, rbuf, &mut cont) {
                keep = false;
            }
        }
        loop {
            // Gather what the body has now, then write it in one go.
            let mut waiting = false;
            while !cut && !out.ended && out.queued < 64 * 1024 {
                if bodiless {
                    out.ended = true;
                    break;
                }
                match Pin::new(&mut rbody).poll_frame(cx) {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Ok(d) = f.into_data() {
                            out.data(d);
                        }
                    }
                    Poll::Ready(None) => out.end(),
                    Poll::Ready(Some(Err(e))) => {
                        // Cut: what came goes out, then the connection closes, so
                        // the client cannot take it for whole (short of its
                        // length, or no last chunk).
                        tracing::debug!(error = %e, "response body failed: closing");
                        cut = true;
                        break;
                    }
                    Poll::Pending => {
                        waiting = true;
                        break;
                    }
                }
            }
            match out.poll_write(cx, io) {
                Poll::Ready(Ok(true)) => return Poll::Ready(true),
                Poll::Ready(Ok(false)) if cut => return Poll::Ready(false),
                Poll::Ready(Ok(false)) if !waiting => continue,
                Poll::Ready(Ok(false)) | Poll::Pending => break,
                Poll::Ready(Err(_)) => return Poll::Ready(false),
            }
        }
        // Waiting for the body or the client: notice a client that left.
        if out.queued == 0 && feed.done() && poll_gone(cx, io, rbuf).is_ready() {
            return Poll::Ready(false);
        }
        if out.queued == 0 {
            // Waiting for the server: its clocks are the request path's.
            stall = None;
        } else {
            match &mut stall {
                Some((t, at)) if *at == out.written => {
                    if t.as_mut().poll(cx).is_ready() {
                        tracing::debug!(
                            "client took no response bytes for the idle timeout: closing"
                        );
                        return Poll::Ready(false);
                    }
                }
                Some((t, at)) => {
                    // Progress since: the clock starts again.
                    *at = out.written;
                    t.as_mut().reset(Instant::now() + set.idle_timeout);
                    let _ = t.as_mut().poll(cx);
                }
                None => {
                    let mut t = Box::pin(tokio::time::sleep(set.idle_timeout));
                    let _ = t.as_mut().poll(cx);
                    stall = Some((t, out.written));
                }
            }
        }
        Poll::Pending
    })
    .await;
    drop(rbody);
    if !ok {
        return Done::Close;
    }
    if !feed.done() {
        keep = false;
    }
    if !keep {
        if feed.done() && rbuf.is_empty() {
            return Done::Shutdown;
        }
        return Done::Linger;
    }
    Done::Keep
}

/// The type of response bodies the loop writes.
pub type BoxedResp = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// The response bytes waiting to be written: the head (its buffer kept
/// for the next response) and body pieces.
#[derive(Default)]
struct Out {
    head: Vec<u8>,
    head_off: usize,
    pending: std::collections::VecDeque<Bytes>,
    queued: usize,
    /// Bytes written so far (to see a client that stopped reading).
    written: u64,
    chunked: bool,
    ended: bool,
    end_queued: bool,
}

impl Out {
    /// Starts a response whose head is in `self.head`.
    fn start(&mut self, chunked: bool) {
        self.pending.clear();
        self.head_off = 0;
        self.queued = self.head.len();
        self.chunked = chunked;
        self.ended = false;
        self.end_queued = false;
    }

    fn push(&mut self, b: Bytes) {
        self.queued += b.len();
        self.pending.push_back(b);
    }

    fn data(&mut self, d: Bytes) {
        if d.is_empty() {
            return;
        }
        if !self.chunked && self.pending.is_empty() && self.head_off == 0 && d.len() <= 2048 {
            // A small body right behind a head not yet written: one
            // buffer, one plain write.
            self.head.extend_from_slice(&d);
            self.queued += d.len();
            return;
        }
        if self.chunked {
            self.push(parse::chunk_head(d.len()));
            self.push(d);
            self.push(Bytes::from_static(b"\r\n"));
        } else {
            self.push(d);
        }
    }

    fn end(&mut self) {
        self.ended = true;
        if self.chunked && !self.end_queued {
            self.end_queued = true;
            self.push(Bytes::from_static(b"0\r\n\r\n"));
        }
    }

    /// Writes what is queued: `Ok(true)` when the whole response is out,
    /// `Ok(false)` when the queue emptied but the body goes on.
    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
    ) -> Poll<io::Result<bool>> {
        while self.queued > 0 {
            let head = &self.head[self.head_off..];
            let n = if self.pending.is_empty() {
                std::task::ready!(Pin::new(&mut *io).poll_write(cx, head))?
            } else if head.is_empty() && self.pending.len() == 1 {
                std::task::ready!(Pin::new(&mut *io).poll_write(cx, &self.pending[0]))?
            } else {
                let mut slices = [io::IoSlice::new(&[]); 16];
                let mut k = 0;
                if !head.is_empty() {
                    slices[0] = io::IoSlice::new(head);
                    k = 1;
                }
                for b in self.pending.iter() {
                    if k == slices.len() {
                        break;
                    }
                    slices[k] = io::IoSlice::new(b);
                    k += 1;
                }
                std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queued -= n;
            self.written += n as u64;
            let mut n = n;
            let in_head = (self.head.len() - self.head_off).min(n);
            self.head_off += in_head;
            n -= in_head;
            super::client::consume(&mut self.pending, &mut n);
        }
        if self.ended {
            std::task::ready!(Pin::new(&mut *io).poll_flush(cx))?;
            return Poll::Ready(Ok(true));
        }
        Poll::Ready(Ok(false))
    }
}

/// Joins the client and server connections until either side closes,
/// nothing moves for `idle`, or a kill fires.
async fn tunnel<S: ClientStream>(client: &mut S, client_buf: BytesMut, t: Tunnel, idle: Duration) {
    let Tunnel {
        mut server,
        server_buf,
        hold,
        mut kills,
    } = t;
    let mut up = Dir::new(client_buf);
    let mut down = Dir::new(server_buf);
    let mut timer = Box::pin(tokio::time::sleep(idle));
    let mut last = Instant::now();
    poll_fn(|cx| {
        for k in kills.iter_mut() {
            if k.as_mut().poll(cx).is_ready() {
                tracing::debug!("tunnel closed by the control plane");
                return Poll::Ready(());
            }
        }
        let a = up.poll(cx, &mut *client, &mut server);
        let b = down.poll(cx, &mut server, &mut *client);
        if up.moved || down.moved {
            up.moved = false;
            down.moved = false;
            last = Instant::now();
            timer.as_mut().reset(last + idle);
        }
        match (a, b) {
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => return Poll::Ready(()),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(()),
            _ => {}
        }
        if timer.as_mut().poll(cx).is_ready() {
            tracing::debug!("tunnel idle: closed");
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
    drop(hold);
}

/// One direction of a tunnel.
struct Dir {
    buf: BytesMut,
    eof: bool,
    shut: bool,
    moved: bool,
}

impl Dir {
    fn new(buf: BytesMut) -> Dir {
        Dir {
            buf,
            eof: false,
            shut: false,
            moved: false,
        }
    }

    /// Copies from `r` to `w`; `Ready(Ok)` once `r` ended and `w` was
    /// shut down.
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            while !self.buf.is_empty() {
                let n = std::task::ready!(Pin::new(&mut *w).poll_write(cx, &self.buf))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                let _ = self.buf.split_to(n);
                self.moved = true;
            }
            if self.eof {
                if !self.shut {
                    std::task::ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                    self.shut = true;
                }
                return Poll::Ready(Ok(()));
            }
            std::task::ready!(Pin::new(&mut *w).poll_flush(cx))?;
            match std::task::ready!(poll_read_buf(r, cx, &mut self.buf, 16 * 1024))? {
                0 => self.eof = true,
                _ => self.moved = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The connection loop against a client on an in-memory pipe.
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, DuplexStream};

    type Fut = Pin<Box<dyn Future<Output = Response<BoxedResp>> + Send>>;

    fn text(t: String) -> Response<BoxedResp> {
        Response::new(
            Full::new(Bytes::from(t))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
    }

    /// Serves one connection whose other end is returned; the signals'
    /// senders are kept alive with it.
    fn start<H>(handler: H) -> (DuplexStream, impl Drop)
    where
        H: Fn(Request<ReqBody>, Meta) -> Fut + Send + Sync + 'static,
    {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (stop_tx, stop) = watch::channel(false);
        let (k1, r1) = watch::channel(0u64);
        let (k2, r2) = watch::channel(0u64);
        let sig = Signals::new(stop, [r1, r2], Arc::new(tokio::sync::Notify::new()));
        let set = Settings {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            limits: Default::default(),
        };
        let task = tokio::spawn(serve(server, BytesMut::new(), set, sig, handler));
        struct Guard(
            tokio::task::JoinHandle<()>,
            #[allow(dead_code)] (watch::Sender<bool>, watch::Sender<u64>, watch::Sender<u64>),
        );
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        (client, Guard(task, (stop_tx, k1, k2)))
    }

    /// Reads until `want` responses (by their blank line) arrived, or the
    /// connection closed.
    async fn read_until(c: &mut DuplexStream, marker: &str, n: usize) -> String {
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        while String::from_utf8_lossy(&got).matches(marker).count() < n {
            let k = tokio::time::timeout(Duration::from_secs(30), c.read(&mut b))
                .await
                .expect("an answer")
                .unwrap();
            if k == 0 {
                break;
            }
            got.extend_from_slice(&b[..k]);
        }
        String::from_utf8(got).unwrap()
    }

    fn path_echo(req: Request<ReqBody>, _: Meta) -> Fut {
        Box::pin(async move { text(format!("<{}>", req.uri().path())) })
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (mut c, _g) = start(path_echo);
        c.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let out = read_until(&mut c, "</", 2).await;
        let (a, b) = (out.find("</one>").unwrap(), out.find("</two>").unwrap());
        assert!(a < b, "{out}");
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
        assert!(!out.contains("connection: close"), "kept alive: {out}");
    }

    #[tokio::test]
    async fn expect_continue_is_sent_when_the_body_is_asked_for() {
        let (mut c, _g) = start(|req: Request<ReqBody>, _| {
            Box::pin(async move {
                let b = req.into_body().collect().await.unwrap().to_bytes();
                text(format!("got {}", b.len()))
            }) as Fut
        });
        c.write_all(
            b"PUT /u HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        // Nothing of the body is sent before the 100.
        let first = read_until(&mut c, "\r\n\r\n", 1).await;
        assert_eq!(first, "HTTP/1.1 100 Continue\r\n\r\n");
        c.write_all(b"hello").await.unwrap();
        let out = read_until(&mut c, "got 5", 1).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_does_not_arrive_in_time_gets_408() {
        let (mut c, _g) = start(path_echo);
        c.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let out = read_until(&mut c, "\r\n\r\n", 1).await;
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        assert!(out.contains("connection: close"), "{out}");
    }

    #[tokio::test]
    async fn a_malformed_head_gets_400_and_never_reaches_the_handler() {
        let calls = Arc::new(AtomicUsize::new(0));
        let n = Arc::clone(&calls);
        let (mut c, _g) = start(move |req, m| {
            n.fetch_add(1, Ordering::SeqCst);
            path_echo(req, m)
        });
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
            .await
            .unwrap();
        let out = read_until(&mut c, "\r\n\r\n", 1).await;
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_client_that_leaves_drops_its_request() {
        struct Flag(Arc<AtomicUsize>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let d = Arc::clone(&dropped);
        let (mut c, _g) = start(move |_req, _| {
            let f = Flag(Arc::clone(&d));
            Box::pin(async move {
                let _f = f;
                std::future::pending::<()>().await;
                text(String::new())
            }) as Fut
        });
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::task::yield_now().await;
        drop(c);
        let gone = tokio::time::timeout(Duration::from_secs(5), async {
            while dropped.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(gone.is_ok(), "the request path was not dropped");
    }
}
