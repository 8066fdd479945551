//! An HTTP/2 client connection's socket with convoy's own client timeouts
//! (HTTP/1.1 connections run on convoy's own loop, `h1::server`, which
//! keeps these clocks itself):
//!
//! - **header timeout**: a new connection must send its first bytes (the
//!   preface) within `header_timeout`, or it is closed quietly.
//! - **idle timeout**: a connection with no stream in progress and no
//!   byte from the client for `idle_timeout` is closed (the `h2` crate
//!   would otherwise keep it forever).
//!
//! The timers live in the socket wrapper itself: the `h2` connection polls
//! the socket for reading whenever it waits, so the wrapper's `poll_read`
//! sees the deadline pass and ends the stream. Streams in progress are
//! counted in [`ConnState`] by [`crate::http2`], from accept until the
//! response has been sent.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What the request handler shares with the connection's socket wrapper.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Requests started on this connection.
    started: AtomicU64,
    /// Requests whose response has ended (or was dropped).
    ended: AtomicU64,
    /// Woken when the last request in progress ends, so that the socket
    /// wrapper re-arms its idle timer.
    waker: Mutex<Option<Waker>>,
}

impl ConnState {
    /// A request started.
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

/// The client socket with the header and idle timeouts.
#[derive(Debug)]
pub struct ConnIo<S> {
    s: S,
    st: Arc<ConnState>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// A byte has come from the client.
    heard: bool,
    /// Last byte received, or last response ended.
    last: Instant,
    /// `ended` count seen at `last`.
    seen_ended: u64,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl<S> ConnIo<S> {
    /// Wraps an accepted socket.
    pub fn new(s: S, st: Arc<ConnState>, header_timeout: Duration, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        ConnIo {
            s,
            st,
            header_timeout,
            idle_timeout,
            heard: false,
            last: now,
            seen_ended: 0,
            timer: Box::pin(tokio::time::sleep_until(now + header_timeout)),
            armed: Some(now + header_timeout),
        }
    }

    /// The deadline in force now (`None`: a stream is in progress).
    fn deadline(&mut self) -> Option<Instant> {
        if self.st.busy() {
            return None;
        }
        let ended = self.st.ended.load(Ordering::Relaxed);
        if ended != self.seen_ended {
            self.seen_ended = ended;
            self.last = Instant::now();
        }
        Some(match self.heard {
            false => self.last + self.header_timeout,
            true => self.last + self.idle_timeout,
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ConnIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.s).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.heard = true;
                    this.last = Instant::now();
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        let Some(deadline) = this.deadline() else {
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
        // Silent or idle for too long: end of stream, closed quietly.
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ConnIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.s).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.s).poll_write_vectored(cx, bufs)
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
