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

mod exchange;
mod head;
mod out;
mod signals;
mod tunnel;

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::body::ReqBody;
use super::client::BoxError;
use super::parse::{self, Limits};
use exchange::{exchange, Done};
use head::{error_response, head_deadline, linger_close, poll_head, put_spare, Ev};

pub use signals::Signals;
pub use tunnel::{Tunnel, TunnelSlot};

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

/// A TLS connection, boxed: its session state (1.2 KB) is then not
/// carried, moved and reserved again in each layer of the connection's
/// future.
impl ClientStream for Box<tokio_rustls::server::TlsStream<TcpStream>> {
    /// Waits on the socket while the TLS session holds nothing to read
    /// (no plaintext, no close_notify; a record is decrypted as soon as
    /// it is whole, so anything else needs more bytes from the socket).
    /// One case waits longer than a read would: a bad record that came
    /// in the same read as the last request's end leaves tokio-rustls an
    /// error it returns at the next read; the wait ends with the client's
    /// next bytes, its close, or the idle timeout (a broken client's
    /// connection, held as an idle one).
    fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, tls) = self.get_ref();
        if tls.wants_read() {
            tcp.poll_read_ready(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

/// An in-memory pipe (tests, fuzzing): it cannot tell when it is
/// readable.
impl ClientStream for tokio::io::DuplexStream {}

/// An idle connection handed back by [`serve`] to be parked.
pub struct Idle<S> {
    /// The client's stream.
    pub io: S,
    /// When its last response ended (its idle timeout counts from there).
    pub since: Instant,
    /// Its kill receivers as it has seen them.
    pub kills: [tokio::sync::watch::Receiver<u64>; 2],
}

/// The connection's timeouts and limits.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// A head must arrive within this of its first byte.
    pub header_timeout: Duration,
    /// A connection without a request closes after this.
    pub idle_timeout: Duration,
    /// Head size limit.
    pub limits: Limits,
    /// A connection idle this long between requests is handed back by
    /// [`serve`] to be parked outside its task (`None`: never).
    pub park_after: Option<Duration>,
}

/// What the request path is told besides the request.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    /// The request has no hop-by-hop fields (the HTTP/1 codec left them
    /// out of a request that asks for no upgrade, or an HTTP/2 request
    /// had none).
    pub stripped: bool,
    /// The request may carry `X-Forwarded-*` fields (`false`: its head
    /// had none).
    pub forwarding: bool,
    /// The request may carry `X-Convoy-Explain`.
    pub explain: bool,
}

impl Meta {
    /// For a request whose fields no codec noted (HTTP/2), from one pass
    /// over their names: cheaper than the lookups it spares the request
    /// path.
    pub fn of_fields(h: &http::HeaderMap) -> Meta {
        let mut m = Meta {
            stripped: true,
            forwarding: false,
            explain: false,
        };
        for k in h.keys() {
            use crate::headers::{noted, Noted};
            if crate::headers::is_hop_by_hop(k) {
                m.stripped = false;
            } else {
                match noted(k.as_str()) {
                    Some(Noted::Forwarding) => m.forwarding = true,
                    Some(Noted::Explain) => m.explain = true,
                    None => {}
                }
            }
        }
        m
    }
}

/// The type of response bodies the loop writes.
pub type BoxedResp = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

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

/// Serves one client connection until it ends. `rbuf`: bytes already
/// read from it; `since`: when the connection last finished a response,
/// for one that served requests before (parked and woken), else `None`.
/// `handler` answers each request.
///
/// With `set.park_after`, a connection that stays idle that long between
/// requests (no stop under way) is handed back ([`Idle`]), with the time
/// its last response ended: the caller parks it and serves it again from
/// there.
///
/// A plain function returning an `async move` block, not an `async fn`:
/// an `async fn` moves its arguments into locals and its future keeps
/// room for both (200 bytes here), which every idle connection carries.
// Not an `async fn` on purpose: see above.
#[allow(clippy::manual_async_fn)]
pub fn serve<S, F, Fut>(
    mut io: S,
    mut rbuf: BytesMut,
    since: Option<Instant>,
    set: Settings,
    mut sig: Signals,
    handler: F,
) -> impl Future<Output = Option<Idle<S>>>
where
    S: ClientStream,
    F: Fn(Request<ReqBody>, Meta) -> Fut,
    Fut: Future<Output = Response<BoxedResp>> + Send + 'static,
{
    async move {
        let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(set.header_timeout));
        let mut armed = Instant::now() + set.header_timeout;
        // When the connection last finished a response (or started).
        let mut last = since.unwrap_or_else(Instant::now);
        let mut first = since.is_none();
        // The park time counts from the last response, or from this start
        // for a connection woken from its lot (readable): it is not parked
        // again before its request is read.
        let mut idle_from = Instant::now();
        // A graceful stop (drain, upgrade): an idle connection waits STOP_GRACE
        // for a request in flight (answered with `Connection: close`), then
        // closes.
        let mut stop_by: Option<Instant> = None;
        loop {
            // ---- a request head ----
            let mut head_start: Option<Instant> = (!rbuf.is_empty()).then(Instant::now);
            let head = loop {
                if !rbuf.is_empty() {
                    // The parse result is not kept across the awaits below
                    // (it would take its 248 bytes in the connection's future).
                    let refused = match parse::parse_request(&mut rbuf, set.limits) {
                        Ok(Some(h)) => break h,
                        Ok(None) => None,
                        Err(e) => Some(e),
                    };
                    if let Some(e) = refused {
                        tracing::debug!(error = e.reason(), "refused request head");
                        if e != parse::HeadError::NotHttp {
                            let answer = error_response(e.status(), e.reason());
                            let _ = io.write_all(&answer).await;
                        }
                        Box::pin(linger_close(io)).await;
                        return None;
                    }
                    head_start.get_or_insert_with(Instant::now);
                }
                let due = head_deadline(&set, head_start, first, last, stop_by);
                let mut deadline = due;
                // Idle between requests: handed back to be parked when
                // this comes first.
                let park_at = match set.park_after {
                    Some(p)
                        if !first
                            && head_start.is_none()
                            && stop_by.is_none()
                            && !sig.stopping
                            && rbuf.is_empty() =>
                    {
                        Some(idle_from + p).filter(|t| *t < deadline)
                    }
                    _ => None,
                };
                if let Some(t) = park_at {
                    deadline = t;
                }
                // The timer is set again only for an earlier deadline: one
                // set for a later one fires early, and the wait goes on
                // with it set again (below). Keep-alive requests each move
                // the deadline later; they no longer move the timer.
                if deadline < armed {
                    timer.as_mut().reset(deadline);
                    armed = deadline;
                }
                if rbuf.is_empty() && rbuf.capacity() > 0 {
                    // Idle: no buffer held while waiting (it goes back to the
                    // thread's spares when nothing else uses it).
                    put_spare(std::mem::take(&mut rbuf));
                }
                let ev = poll_fn(|cx| {
                    poll_head(
                        cx,
                        &mut io,
                        &mut rbuf,
                        &mut sig,
                        &mut timer,
                        &mut armed,
                        &mut stop_by,
                    )
                })
                .await;
                match ev {
                    Ev::Data => {}
                    Ev::Closed | Ev::Kill => return None,
                    Ev::Timeout => {
                        let now = Instant::now();
                        if now < deadline {
                            // Set for an earlier deadline than this wait's.
                            timer.as_mut().reset(deadline);
                            armed = deadline;
                            continue;
                        }
                        if park_at.is_some() && now < due {
                            // The park time, not a timeout (that is still
                            // to come): parked unless a stop came meanwhile
                            // (then the wait goes on).
                            if !sig.stopping {
                                return Some(Idle {
                                    io,
                                    since: last,
                                    kills: sig.into_kills(),
                                });
                            }
                            continue;
                        }
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
                        Box::pin(linger_close(io)).await;
                        return None;
                    }
                }
            };
            first = false;
            match Box::pin(exchange(&mut io, &mut rbuf, &mut sig, &handler, head, set)).await {
                Done::Keep => {}
                Done::Close => return None,
                Done::Shutdown => {
                    let _ = io.shutdown().await;
                    return None;
                }
                Done::Linger => {
                    Box::pin(linger_close(io)).await;
                    return None;
                }
            }
            last = Instant::now();
            idle_from = last;
        }
    }
}

#[cfg(test)]
mod tests;
