//! The connection's state and its loop: reading into frames, polling the
//! woken streams, writing our output, and the clock for every timeout.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::HeaderValue;
use http::{Request, Response};
use http_body::Body;
use tokio::time::{Instant, Sleep};

use super::body::H2Body;
use super::frame::{self, Reason};
use super::hpack;
use super::output::Out;
use super::stream::{End, IdMap, Ready, Stream};
use super::{BoxError, Error, Settings};

/// The output buffer's first room.
const OUT_ROOM: usize = 1024;

pub(super) struct Conn<S, H, F, B> {
    pub(super) io: S,
    pub(super) set: Settings,
    pub(super) handler: H,
    pub(super) rbuf: BytesMut,
    pub(super) out: Out,
    pub(super) dec: hpack::Decoder,
    pub(super) streams: IdMap<Stream<F, B>>,
    /// Boxes of request paths that finished, for the next streams'
    /// (`Pin::set`: no allocation and free per stream); dropped when the
    /// connection has no stream left, so an idle connection holds none.
    pub(super) spare_futs: Vec<Pin<Box<F>>>,
    pub(super) ready: Arc<Ready>,
    /// Streams that wait for our output to drain, or for the connection
    /// window.
    pub(super) blocked: Vec<u32>,
    pub(super) conn_blocked: Vec<u32>,
    /// The highest stream id the client opened.
    pub(super) last_id: u32,
    /// Recently closed streams, oldest first: (id, we reset it).
    pub(super) closed: VecDeque<(u32, bool)>,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE.
    pub(super) peer_window: i64,
    /// What the client may still send on the connection, and what it
    /// has sent that we have not given back.
    pub(super) recv_window: i64,
    pub(super) recv_unacked: u32,
    /// The preface and the client's first SETTINGS have arrived.
    pub(super) preface: bool,
    pub(super) settings_seen: bool,
    /// A header block continues in CONTINUATION frames.
    pub(super) cont: Option<Cont>,
    /// The final GOAWAY sent (a graceful stop, or the client's GOAWAY):
    /// no new stream is taken.
    pub(super) stopping: bool,
    /// A graceful stop's first GOAWAY (last id 2^31-1) and PING are out:
    /// streams the client opened before it saw them are still served;
    /// the final GOAWAY goes out at the PING's answer.
    pub(super) soft_stop: bool,
    /// GOAWAY sent for an error: flush it and end.
    pub(super) failed: Option<Error>,
    /// The client said GOAWAY, or closed its side.
    pub(super) peer_gone: bool,
    /// Requests the client reset before their response; earns back one
    /// per response completed.
    pub(super) resets: u32,
    /// One clock for every timeout: armed at the earliest deadline that
    /// may be due, checked when it fires.
    pub(super) clock: Pin<Box<Sleep>>,
    pub(super) armed: bool,
    pub(super) last_read: Instant,
    pub(super) write_stalled: Option<Instant>,
    /// Since when streams wait for the connection's window.
    pub(super) window_stalled: Option<Instant>,
    pub(super) started: Instant,
}

pub(super) struct Cont {
    pub(super) id: u32,
    pub(super) end: bool,
    /// The HEADERS frame made the stream depend on itself.
    pub(super) self_dep: bool,
    pub(super) block: BytesMut,
}

impl<S, H, F, B> Conn<S, H, F, B>
where
    S: crate::h1::server::ClientStream,
    H: FnMut(Request<H2Body>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub(super) fn new(io: S, set: &Settings, handler: H) -> Self {
        let now = Instant::now();
        let mut out = Out {
            buf: Vec::with_capacity(OUT_ROOM),
            pos: 0,
            enc: hpack::Encoder::default(),
            max_frame: frame::OUR_MAX_FRAME,
            window: frame::DEFAULT_WINDOW,
            date: ([0; 29], HeaderValue::from_static("")),
            high: set.max_send_buffer.max(64 * 1024),
        };
        frame::settings(
            &mut out.buf,
            &[
                (frame::MAX_CONCURRENT_STREAMS, set.max_concurrent_streams),
                (frame::INITIAL_WINDOW_SIZE, set.stream_window),
                (frame::MAX_HEADER_LIST_SIZE, set.max_header_list),
            ],
        );
        let conn_window =
            i64::from(set.conn_window).clamp(frame::DEFAULT_WINDOW, frame::MAX_WINDOW);
        if conn_window > frame::DEFAULT_WINDOW {
            frame::window_update(
                &mut out.buf,
                0,
                (conn_window - frame::DEFAULT_WINDOW) as u32,
            );
        }
        Conn {
            io,
            set: set.clone(),
            handler,
            rbuf: BytesMut::new(),
            out,
            dec: hpack::Decoder::new(4096),
            streams: IdMap::default(),
            spare_futs: Vec::new(),
            ready: Arc::new(Ready::default()),
            blocked: Vec::new(),
            conn_blocked: Vec::new(),
            last_id: 0,
            closed: VecDeque::new(),
            peer_window: frame::DEFAULT_WINDOW,
            recv_window: conn_window,
            recv_unacked: 0,
            preface: false,
            settings_seen: false,
            cont: None,
            stopping: false,
            soft_stop: false,
            failed: None,
            peer_gone: false,
            resets: 0,
            clock: Box::pin(tokio::time::sleep_until(now + set.header_timeout)),
            armed: true,
            last_read: now,
            write_stalled: None,
            window_stalled: None,
            started: now,
        }
    }

    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.ready.conn.register(cx.waker());
        // Bounded: a stream that wakes itself at every poll must not keep
        // this task from yielding.
        for _ in 0..32 {
            let mut more = false;
            // A read skipped while the output is backed up leaves no
            // waker on the stream: once the output drains, this loop
            // must come round to read, or frames already sent would wait
            // for the clock.
            let backed_up = self.out.full();
            if self.failed.is_none() && !self.peer_gone && !backed_up {
                match self.poll_read(cx) {
                    Poll::Ready(Ok(0)) => self.peer_gone = true,
                    Poll::Ready(Ok(_)) => {
                        self.last_read = Instant::now();
                        more = true;
                        if let Err(e) = self.frames() {
                            self.fail(e);
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                    Poll::Pending => {}
                }
            }
            if self.peer_gone && self.failed.is_none() {
                // The client closed its side: nobody is left to answer.
                return Poll::Ready(Ok(()));
            }
            if self.failed.is_none() {
                more |= self.run_streams();
            }
            match self.write(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                Poll::Ready(Ok(())) => {
                    if let Some(e) = self.failed.take() {
                        return Poll::Ready(Err(e));
                    }
                    if !self.blocked.is_empty() {
                        for id in std::mem::take(&mut self.blocked) {
                            self.requeue(id);
                        }
                        more = true;
                    }
                    more |= backed_up;
                    if self.stopping && self.streams.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Pending => {}
            }
            if !more {
                return self.poll_clock(cx);
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads what the client sent. Between frames (nothing buffered) the
    /// connection waits for its stream to become readable without a
    /// buffer, and a read that finds nothing gives its buffer back to the
    /// thread's spares: an idle connection holds no 16 KB read buffer.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let frames = crate::spare::frames();
        if self.rbuf.is_empty() {
            if self.io.poll_idle(cx)?.is_pending() {
                self.release_if_idle();
                return Poll::Pending;
            }
            if self.rbuf.capacity() == 0 {
                self.rbuf = frames.take();
            }
        }
        let r = crate::h1::client::poll_read_buf(&mut self.io, cx, &mut self.rbuf, frames.size);
        match r {
            Poll::Pending if self.rbuf.is_empty() => self.release_if_idle(),
            Poll::Ready(Ok(n)) if n > 0 && self.out.buf.capacity() == 0 => {
                // Room for the answers again, at once rather than by
                // doubling.
                self.out.buf.reserve(OUT_ROOM);
            }
            _ => {}
        }
        r
    }

    /// Waiting with nothing read: the read buffer goes back to the
    /// thread's spares, and with no stream open and nothing to send the
    /// output buffer (1 KB or more) goes too, until the client sends
    /// again. (The emptied stream map stays: given up too, it saved 1 KB
    /// per idle connection but cost 380 instructions per h2c request, the
    /// map growing again by rehashes for every burst of streams.)
    fn release_if_idle(&mut self) {
        if self.rbuf.capacity() > 0 {
            crate::spare::frames().put(std::mem::take(&mut self.rbuf));
        }
        if self.streams.is_empty() && self.out.len() == 0 && self.out.buf.capacity() > 0 {
            self.out.buf = Vec::new();
            self.out.pos = 0;
        }
    }

    /// A graceful stop's final GOAWAY: the streams taken so far finish,
    /// no other is taken.
    pub(super) fn finish_stop(&mut self) {
        if self.soft_stop && !self.stopping {
            self.stopping = true;
            frame::goaway(&mut self.out.buf, self.last_id, Reason::NO_ERROR, "");
        }
    }

    pub(super) fn requeue(&self, id: u32) {
        if let Some(s) = self.streams.get(&id) {
            s.wake.wake_by_ref();
        }
    }

    /// Sends GOAWAY for a protocol error; the connection ends once it is
    /// written.
    pub(super) fn fail(&mut self, e: Error) {
        if let Error::Protocol(r, why) = &e {
            tracing::debug!(reason = %r, why, "HTTP/2 connection error");
            frame::goaway(&mut self.out.buf, self.last_id, *r, why);
        }
        self.failed = Some(e);
    }

    pub(super) fn write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.out.len() > 0 {
            match Pin::new(&mut self.io).poll_write(cx, &self.out.buf[self.out.pos..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => {
                    self.out.pos += n;
                    self.write_stalled = None;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if self.write_stalled.is_none() {
                        self.write_stalled = Some(Instant::now());
                        self.arm(self.set.idle_timeout);
                    }
                    return Poll::Pending;
                }
            }
        }
        self.out.buf.clear();
        self.out.pos = 0;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Makes the clock fire at `at` at the latest.
    pub(super) fn arm_at(&mut self, at: Instant) {
        if !self.armed || self.clock.deadline() > at {
            self.armed = true;
            self.clock.as_mut().reset(at);
        }
    }

    pub(super) fn arm(&mut self, after: Duration) {
        self.arm_at(Instant::now() + after);
    }

    /// The idle deadline, for a connection with no stream open.
    pub(super) fn idle_at(&self) -> Option<Instant> {
        (self.preface && self.streams.is_empty()).then(|| self.last_read + self.set.idle_timeout)
    }

    /// Checks the timeouts when the clock fires.
    pub(super) fn poll_clock(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if let Some(at) = self.idle_at() {
            self.arm_at(at);
        }
        if !self.armed || self.clock.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.armed = false;
        let now = Instant::now();
        let idle = self.set.idle_timeout;
        if !self.preface && now >= self.started + self.set.header_timeout {
            tracing::debug!("HTTP/2 client sent no preface in time: closed");
            return Poll::Ready(Ok(()));
        }
        if self.write_stalled.is_some_and(|t| now >= t + idle) {
            tracing::debug!("HTTP/2 client took no bytes for the idle timeout: closed");
            return Poll::Ready(Ok(()));
        }
        if !self
            .conn_blocked
            .iter()
            .any(|id| self.streams.contains_key(id))
        {
            self.window_stalled = None;
        }
        if self.window_stalled.is_some_and(|t| now >= t + idle) {
            tracing::debug!("HTTP/2 client gave no connection window for the idle timeout: closed");
            return Poll::Ready(Ok(()));
        }
        if self.idle_at().is_some_and(|at| now >= at) {
            frame::goaway(&mut self.out.buf, self.last_id, Reason::NO_ERROR, "idle");
            // One try to say goodbye; the connection ends either way.
            let _ = self.write(cx);
            return Poll::Ready(Ok(()));
        }
        // Streams waiting for window too long are reset.
        let gone: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| s.stalled.is_some_and(|t| now >= t + idle))
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            tracing::debug!("client took no response bytes for the idle timeout: stream reset");
            self.remove(id, End::Reset(Reason::CANCEL));
        }
        // The next deadline of what is still waiting.
        let deadlines = [
            (!self.preface).then(|| self.started + self.set.header_timeout),
            self.write_stalled.map(|t| t + idle),
            self.window_stalled.map(|t| t + idle),
            self.idle_at(),
            self.streams
                .values()
                .filter_map(|s| s.stalled)
                .min()
                .map(|t| t + idle),
        ];
        if let Some(at) = deadlines.into_iter().flatten().min() {
            self.arm_at(at.max(now + Duration::from_millis(1)));
        }
        // Poll again: the resets are written and the new clock registered.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
