//! An HTTP/2 client connection's socket with convoy's own client timeouts
//! (HTTP/1.1 connections run on convoy's own loop, `h1::server`, which
//! keeps these clocks itself):
//!
//! - **header timeout**: once a request head has started (its first byte,
//!   or the connection's start), the whole head must arrive within
//!   `header_timeout`; otherwise an HTTP/1 client that sent part of a head
//!   gets `408 Request Timeout`, and the connection closes (a client that
//!   sent nothing is closed quietly). This defends against slowloris.
//! - **idle timeout**: a connection with no request in progress and no
//!   byte from the client for `idle_timeout` is closed (for HTTP/2 too,
//!   which hyper would otherwise keep forever).
//! - after an upgrade (WebSocket), only the idle timeout applies, counting
//!   traffic both ways.
//!
//! The timers live in the socket wrapper itself: hyper polls the socket for
//! reading whenever it waits for a request, so the wrapper's `poll_read`
//! sees the deadline pass and ends the read. Requests in progress are
//! counted in [`ConnState`] by the request handler and the response body.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// What the request handler shares with the connection's socket wrapper.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Requests started (heads parsed) on this connection.
    started: AtomicU64,
    /// Requests whose response has ended (or was dropped).
    ended: AtomicU64,
    /// The connection was upgraded (a byte tunnel now).
    upgraded: AtomicBool,
    /// Woken when the last request in progress ends, so that the socket
    /// wrapper re-arms its idle timer.
    waker: Mutex<Option<Waker>>,
    /// Notified when an upgraded connection's tunnel ends.
    tunnel_done: tokio::sync::Notify,
}

impl ConnState {
    /// A request head was parsed.
    pub fn begin(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// A response ended (or its request was dropped).
    pub fn end(&self) {
        let ended = self.ended.fetch_add(1, Ordering::Relaxed) + 1;
        if ended == self.started.load(Ordering::Relaxed) {
            let w = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(w) = w {
                w.wake();
            }
        }
    }

    /// The connection became a tunnel.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    /// The connection is (or is becoming) a tunnel.
    pub fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Relaxed)
    }

    /// The tunnel ended.
    pub fn tunnel_ended(&self) {
        self.tunnel_done.notify_one();
    }

    /// Waits until the tunnel ends.
    pub async fn tunnel_end(&self) {
        self.tunnel_done.notified().await;
    }

    fn busy(&self) -> bool {
        self.started.load(Ordering::Relaxed) != self.ended.load(Ordering::Relaxed)
    }
}

/// Counts one request as in progress until dropped.
#[derive(Debug)]
pub struct InProgress(pub Arc<ConnState>);

impl InProgress {
    /// Starts counting a request.
    pub fn new(st: &Arc<ConnState>) -> Self {
        st.begin();
        InProgress(Arc::clone(st))
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A client stream on which a 408 can be written directly (plain TCP);
/// on TLS the connection is closed without one.
pub trait RawWrite {
    /// Writes `b` now if the socket takes it, without waiting.
    fn try_write_raw(&self, b: &[u8]);
}

impl RawWrite for TcpStream {
    fn try_write_raw(&self, b: &[u8]) {
        let _ = self.try_write(b);
    }
}

impl RawWrite for tokio_rustls::server::TlsStream<TcpStream> {
    fn try_write_raw(&self, _b: &[u8]) {}
}

/// The client socket with header and idle timeouts.
#[derive(Debug)]
pub struct ConnIo<S = TcpStream> {
    s: S,
    st: Arc<ConnState>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// When the current request head started, and the `started` count
    /// then (the head is over once that count moves).
    head: Option<(Instant, u64)>,
    /// Bytes of the current head received (0 = the client sent nothing).
    head_bytes: bool,
    /// Last byte received, or last response ended.
    last: Instant,
    /// `ended` count seen at `last`.
    seen_ended: u64,
    /// The connection speaks HTTP/2 (no 408 text on it).
    h2: bool,
    first_read: bool,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

impl<S> ConnIo<S> {
    /// Wraps an accepted socket.
    pub fn new(s: S, st: Arc<ConnState>, header_timeout: Duration, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        ConnIo {
            s,
            st,
            header_timeout,
            idle_timeout,
            head: Some((now, 0)),
            head_bytes: false,
            last: now,
            seen_ended: 0,
            h2: false,
            first_read: true,
            timer: Box::pin(tokio::time::sleep_until(now + header_timeout)),
            armed: Some(now + header_timeout),
        }
    }

    /// The deadline in force now, and whether it is a header deadline.
    fn deadline(&mut self) -> Option<(Instant, bool)> {
        if self.st.upgraded.load(Ordering::Relaxed) {
            return Some((self.last + self.idle_timeout, false));
        }
        let started = self.st.started.load(Ordering::Relaxed);
        if self.st.busy() {
            self.head = None;
            return None;
        }
        let ended = self.st.ended.load(Ordering::Relaxed);
        if ended != self.seen_ended {
            self.seen_ended = ended;
            self.last = Instant::now();
        }
        match self.head {
            Some((t, gen)) if gen == started => Some((t + self.header_timeout, true)),
            _ => {
                self.head = None;
                Some((self.last + self.idle_timeout, false))
            }
        }
    }

    /// Bytes arrived from the client.
    fn note_read(&mut self) {
        let now = Instant::now();
        self.last = now;
        if self.h2 || self.st.upgraded.load(Ordering::Relaxed) || self.st.busy() {
            return;
        }
        let started = self.st.started.load(Ordering::Relaxed);
        match self.head {
            Some((_, gen)) if gen == started => {}
            _ => self.head = Some((now, started)),
        }
        self.head_bytes = true;
    }
}

const TIMEOUT_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

impl<S: AsyncRead + AsyncWrite + RawWrite + Unpin> AsyncRead for ConnIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.s).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = &buf.filled()[before..];
                if filled.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                if this.first_read {
                    this.first_read = false;
                    let n = filled.len().min(H2_PREFACE_START.len());
                    this.h2 = filled[..n] == H2_PREFACE_START[..n];
                    if this.h2 {
                        // HTTP/2 frames (SETTINGS, PING) are not request
                        // heads: the connection is idle until a stream
                        // opens.
                        this.head = None;
                    }
                }
                this.note_read();
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        let Some((deadline, header)) = this.deadline() else {
            // A request is in progress: wake up when it ends to re-arm.
            let mut w = this.st.waker.lock().unwrap_or_else(|e| e.into_inner());
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
            drop(w);
            // It may have ended between the check and the registration.
            if !this.st.busy() {
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        };
        if this.armed != Some(deadline) {
            this.timer.as_mut().reset(deadline);
            this.armed = Some(deadline);
        }
        if this.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if header && this.head_bytes {
            if !this.h2 {
                // Best effort: the socket is idle for writing here.
                this.s.try_write_raw(TIMEOUT_408);
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client did not send a whole request head in time",
            )));
        }
        // Idle (or a silent new connection): end of stream, closed quietly.
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ConnIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.s).poll_write(cx, buf);
        if this.st.upgraded.load(Ordering::Relaxed) && matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.last = Instant::now();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.s).poll_write_vectored(cx, bufs);
        if this.st.upgraded.load(Ordering::Relaxed) && matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.last = Instant::now();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.s.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.s).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.s).poll_shutdown(cx)
    }
}
