//! HTTP/2 from clients (RFC 9113), on convoy's own connection loop.
//!
//! One task per connection owns everything: the socket, both HPACK
//! tables ([`hpack`]), the flow-control windows and every stream. A
//! stream's request path (the handler's future) and its response body
//! are polled by that task with a waker of the stream's own, so a wake-up
//! polls only the stream that has something to do, and the responses that
//! become ready together go out in one write. No lock is taken on the way
//! of a request without a body.
//!
//! Per stream:
//! - the request is checked as RFC 9113 §8 asks (pseudo-headers once and
//!   first, no connection-specific field, `te` only `trailers`, lowercase
//!   names, a body as long as its `content-length`); a malformed one is
//!   reset with PROTOCOL_ERROR and never reaches the handler; a header
//!   list over `max_header_list` gets 431;
//! - the request path runs until it has a response, unless the client
//!   resets the stream first: then it is dropped at once (the server's
//!   slot is freed);
//! - the response head goes out with connection-specific fields removed
//!   and `date` added when missing; the body is sent as the client's
//!   flow-control windows allow, trailers included; a body that fails on
//!   the server's side resets the stream with INTERNAL_ERROR;
//! - a stream the client gives no window for `idle_timeout` (it stopped
//!   reading, or announced a window of 0) is reset with CANCEL: it would
//!   otherwise hold the server's slot for as long as it likes.
//!
//! Request bodies ([`H2Body`]) give their window back as they are read,
//! so a slow server slows the client instead of filling memory.
//!
//! The connection: a client that sends nothing within `header_timeout`
//! of connecting, or has no stream open and sends nothing for
//! `idle_timeout`, is closed (GOAWAY); so is one that takes no byte of
//! what we write for `idle_timeout`. We stop reading while our output
//! waits (a client that floods PINGs or SETTINGS without reading the
//! answers only fills its own socket). Protocol errors end the connection
//! with GOAWAY and the RFC's error code; streams reset by the client
//! faster than they complete (the "rapid reset" attack) end it with
//! ENHANCE_YOUR_CALM.

pub mod frame;
pub mod hpack;

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use frame::{Head, Reason};
use hpack::{Name, Pseudo};

/// Limits of an HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Streams open at once per connection.
    pub max_concurrent_streams: u32,
    /// Initial flow-control window of each stream, bytes.
    pub stream_window: u32,
    /// Initial flow-control window of the connection, bytes.
    pub conn_window: u32,
    /// Largest header list a client may send, bytes.
    pub max_header_list: u32,
    /// Response bytes buffered per stream before waiting for the client
    /// (our output as a whole stops growing at this size too).
    pub max_send_buffer: usize,
    /// Time for a new connection's first bytes.
    pub header_timeout: Duration,
    /// Time without a stream in progress or a byte from the client; also
    /// the longest a client may leave our output unread.
    pub idle_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_concurrent_streams: 200,
            stream_window: 1024 * 1024,
            conn_window: 1024 * 1024,
            max_header_list: 16 * 1024,
            max_send_buffer: 400 * 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// The client broke the protocol: we sent GOAWAY with this code.
    #[error("client broke HTTP/2 ({0}): {1}")]
    Protocol(Reason, &'static str),
    /// The client ended the connection with an error code.
    #[error("client sent GOAWAY {0}")]
    Peer(Reason),
}

/// A request body that could not be read to its end.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(&'static str);

// ---- request bodies ----

#[derive(Debug, Default)]
struct RecvState {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// The client ended its side.
    end: bool,
    err: Option<BodyError>,
    /// The body's reader waits here.
    waker: Option<Waker>,
    /// Bytes received and not yet taken by the body.
    held: usize,
    /// Bytes taken and not yet given back to the client as window.
    released: usize,
    /// The body was dropped unread: what comes is thrown away.
    gone: bool,
    /// Bytes thrown away and not yet given back to the connection's
    /// window (the stream's stays shut: that client waits, not others).
    dropped: usize,
}

type Recv = Arc<Mutex<RecvState>>;

fn lock(r: &Recv) -> std::sync::MutexGuard<'_, RecvState> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for H2Body {
    fn drop(&mut self) {
        // Unread data gives the connection's window back, so that a
        // request path that left its body does not block the other
        // streams' uploads.
        if let Some(r) = &self.recv {
            let mut st = lock(r);
            st.gone = true;
            st.dropped += std::mem::take(&mut st.held);
            st.data.clear();
            drop(st);
            if let Some(w) = &self.stream {
                w.wake_by_ref();
            }
        }
    }
}

/// A client's HTTP/2 request body.
pub struct H2Body {
    /// `None`: the request ended with its head.
    recv: Option<Recv>,
    /// The stream's waker: tells the connection that window came free.
    stream: Option<Waker>,
    /// Bytes announced by `content-length` and not yet received.
    left: Option<u64>,
    done: bool,
}

impl H2Body {
    fn empty() -> Self {
        H2Body {
            recv: None,
            stream: None,
            left: Some(0),
            done: true,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(recv) = &this.recv else {
            return Poll::Ready(None);
        };
        if this.done {
            return Poll::Ready(None);
        }
        let mut st = lock(recv);
        if let Some(b) = st.data.pop_front() {
            st.held -= b.len();
            st.released += b.len();
            drop(st);
            // The window comes back as the body is taken.
            if let Some(w) = &this.stream {
                w.wake_by_ref();
            }
            if let Some(n) = &mut this.left {
                *n = n.saturating_sub(b.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if let Some(e) = st.err {
            this.done = true;
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(t) = st.trailers.take() {
            this.done = true;
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if st.end {
            this.done = true;
            return Poll::Ready(None);
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        match &self.recv {
            None => true,
            Some(_) if self.done => true,
            Some(r) => {
                let st = lock(r);
                st.end && st.data.is_empty() && st.trailers.is_none() && st.err.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None if self.is_end_stream() => SizeHint::with_exact(0),
            None => SizeHint::new(),
        }
    }
}

// ---- wake-ups ----

/// Which streams were woken since the connection last looked.
#[derive(Default)]
struct Ready {
    ids: Mutex<Vec<u32>>,
    conn: AtomicWaker,
}

struct StreamWake {
    id: u32,
    queued: AtomicBool,
    ready: Arc<Ready>,
}

impl Wake for StreamWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready
                .ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.id);
        }
        self.ready.conn.wake();
    }
}

/// Stream ids are small odd numbers: a multiply spreads them enough.
#[derive(Default)]
struct IdHash(u64);

impl Hasher for IdHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 << 8 | u64::from(x)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHash>>;

// ---- streams ----

enum Phase<F, B> {
    /// The request path runs.
    Waiting(Pin<Box<F>>),
    /// The response head went out; its body follows.
    Body(B),
}

struct Stream<F, B> {
    wake: Arc<StreamWake>,
    waker: Waker,
    phase: Phase<F, B>,
    /// What we may still send on it.
    send_window: i64,
    /// The request body (shared with its [`H2Body`]).
    recv: Option<Recv>,
    /// The client may still send on it.
    recv_open: bool,
    /// What the client may still send on it.
    recv_window: i64,
    /// Bytes taken by the body and not yet given back.
    unacked: u32,
    /// `content-length` left to receive.
    expect: Option<u64>,
    /// Response data waiting for window.
    pending: Bytes,
    /// The body ended: END_STREAM goes with the last pending byte.
    end_pending: bool,
    trailers: Option<HeaderMap>,
    /// Since when it waits for the client's window.
    stalled: Option<Instant>,
}

impl<F, B> Stream<F, B> {
    /// Gives `n` bytes of the stream's window back to the client, in
    /// updates of at least half the window (`window`).
    fn give_back(&mut self, id: u32, n: u32, out: &mut Vec<u8>, window: u32) {
        self.unacked += n;
        if self.unacked > 0 && self.unacked >= window / 2 {
            frame::window_update(out, id, self.unacked);
            self.recv_window += i64::from(self.unacked);
            self.unacked = 0;
        }
    }
}

impl<F, B> Drop for Stream<F, B> {
    fn drop(&mut self) {
        // A body still being read elsewhere learns that no more comes.
        if let Some(r) = &self.recv {
            let mut st = lock(r);
            if !st.end && st.err.is_none() {
                st.err = Some(BodyError(
                    "HTTP/2 stream closed before the request body ended",
                ));
            }
            if let Some(w) = st.waker.take() {
                w.wake();
            }
        }
    }
}

/// How a stream ends (see `Conn::remove`).
#[derive(Clone, Copy)]
enum End {
    /// Its response was sent.
    Done,
    /// The client reset it.
    ByClient,
    /// We reset it with this reason.
    Reset(Reason),
}

/// What a stream's poll ended with.
enum Step {
    /// Waiting for its future, its body or the client's window.
    Idle,
    /// Our output is full: poll again once it has been written.
    Blocked,
    /// Finished: remove it.
    Done,
    /// Failed on the server's side: reset it.
    Reset(Reason),
}

/// Our output: frames waiting for the socket.
struct Out {
    buf: Vec<u8>,
    /// Written up to here.
    pos: usize,
    enc: hpack::Encoder,
    /// The client's SETTINGS_MAX_FRAME_SIZE.
    max_frame: usize,
    /// What we may still send on the connection.
    window: i64,
    /// The last `date` value, shared by the responses of one second.
    date: ([u8; 29], HeaderValue),
    /// Output stops growing at this size.
    high: usize,
}

impl Out {
    fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn full(&self) -> bool {
        self.len() >= self.high
    }

    /// Writes a header block as HEADERS (+ CONTINUATION) frames.
    fn headers(
        &mut self,
        id: u32,
        end: bool,
        encode: impl FnOnce(&mut hpack::Encoder, &mut Vec<u8>),
    ) {
        let at = self.buf.len();
        let flags = frame::END_HEADERS | if end { frame::END_STREAM } else { 0 };
        frame::head(&mut self.buf, 0, frame::HEADERS, flags, id);
        encode(&mut self.enc, &mut self.buf);
        let len = self.buf.len() - at - 9;
        if len <= self.max_frame {
            frame::patch_len(&mut self.buf, at, len);
            return;
        }
        // Too large for one frame: split it.
        let block = self.buf.split_off(at + 9);
        self.buf.truncate(at);
        let mut chunks = block.chunks(self.max_frame).peekable();
        let mut first = true;
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            let (kind, mut fl) = if first {
                (frame::HEADERS, if end { frame::END_STREAM } else { 0 })
            } else {
                (frame::CONTINUATION, 0)
            };
            if last {
                fl |= frame::END_HEADERS;
            }
            frame::head(&mut self.buf, c.len(), kind, fl, id);
            self.buf.extend_from_slice(c);
            first = false;
        }
    }

    fn response_head(&mut self, id: u32, end: bool, status: u16, h: &HeaderMap) {
        let now = crate::h1::server::date();
        if now != self.date.0 {
            if let Ok(v) = HeaderValue::from_bytes(&now) {
                self.date = (now, v);
            }
        }
        let date = (!h.contains_key(http::header::DATE)).then(|| self.date.1.clone());
        self.headers(id, end, |enc, dst| {
            enc.status(status, dst);
            for (n, v) in h {
                enc.field(n, v, dst);
            }
            if let Some(d) = &date {
                enc.field(&http::header::DATE, d, dst);
            }
        });
    }

    /// Trailers: a last HEADERS frame, ending the stream.
    fn trailers(&mut self, id: u32, t: &HeaderMap) {
        self.headers(id, true, |enc, dst| {
            enc.begin(dst);
            for (n, v) in t {
                enc.field(n, v, dst);
            }
        });
    }

    fn data(&mut self, id: u32, b: &[u8], end: bool) {
        frame::head(
            &mut self.buf,
            b.len(),
            frame::DATA,
            if end { frame::END_STREAM } else { 0 },
            id,
        );
        self.buf.extend_from_slice(b);
    }
}

/// Serves one HTTP/2 connection until it closes or `stop` (GOAWAY, then
/// the open streams finish) or `kill` (closed at once) completes.
/// `handler` answers each request.
pub async fn serve<S, H, F, B>(
    io: S,
    set: &Settings,
    stop: impl Future<Output = ()>,
    kill: impl Future<Output = ()>,
    handler: H,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<H2Body>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut c = Conn::new(io, set, handler);
    let mut stop = std::pin::pin!(stop);
    let mut kill = std::pin::pin!(kill);
    // A graceful stop in two steps (as RFC 9113 §6.8 advises): GOAWAY
    // with the largest stream id and a PING; at the PING's answer (or
    // after STOP_WAIT), GOAWAY with the last stream taken. A request the
    // client sent while the first GOAWAY was on its way is served, not
    // left for the client to retry.
    let mut stop_wait: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        if kill.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        if !c.stopping && !c.soft_stop && stop.as_mut().poll(cx).is_ready() {
            c.soft_stop = true;
            frame::goaway(&mut c.out.buf, 0x7fff_ffff, Reason::NO_ERROR, "");
            frame::head(&mut c.out.buf, 8, frame::PING, 0, 0);
            c.out.buf.extend_from_slice(&STOP_PING);
            stop_wait = Some(Box::pin(tokio::time::sleep(STOP_WAIT)));
        }
        if let Some(w) = &mut stop_wait {
            if !c.stopping && w.as_mut().poll(cx).is_ready() {
                c.finish_stop();
            }
        }
        c.poll(cx)
    })
    .await
}

/// The payload of the PING that follows a graceful stop's first GOAWAY.
const STOP_PING: [u8; 8] = *b"convoyGA";

/// How long a graceful stop waits for its PING's answer before the final
/// GOAWAY.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// Requests reset by the client that count against it (see `resets`).
const RESET_BUDGET: u32 = 200;

/// How many recently closed streams a connection remembers, to tell a
/// late frame on one of them (ignored after our own reset, a connection
/// error otherwise) from a stream id that was never opened.
const CLOSED_MEMORY: usize = 256;

struct Conn<S, H, F, B> {
    io: S,
    set: Settings,
    handler: H,
    rbuf: BytesMut,
    out: Out,
    dec: hpack::Decoder,
    streams: IdMap<Stream<F, B>>,
    ready: Arc<Ready>,
    /// Streams that wait for our output to drain, or for the connection
    /// window.
    blocked: Vec<u32>,
    conn_blocked: Vec<u32>,
    /// The highest stream id the client opened.
    last_id: u32,
    /// Recently closed streams, oldest first: (id, we reset it).
    closed: VecDeque<(u32, bool)>,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE.
    peer_window: i64,
    /// What the client may still send on the connection, and what it
    /// has sent that we have not given back.
    recv_window: i64,
    recv_unacked: u32,
    /// The preface and the client's first SETTINGS have arrived.
    preface: bool,
    settings_seen: bool,
    /// A header block continues in CONTINUATION frames.
    cont: Option<Cont>,
    /// The final GOAWAY sent (a graceful stop, or the client's GOAWAY):
    /// no new stream is taken.
    stopping: bool,
    /// A graceful stop's first GOAWAY (last id 2^31-1) and PING are out:
    /// streams the client opened before it saw them are still served;
    /// the final GOAWAY goes out at the PING's answer.
    soft_stop: bool,
    /// GOAWAY sent for an error: flush it and end.
    failed: Option<Error>,
    /// The client said GOAWAY, or closed its side.
    peer_gone: bool,
    /// Requests the client reset before their response; earns back one
    /// per response completed.
    resets: u32,
    /// One clock for every timeout: armed at the earliest deadline that
    /// may be due, checked when it fires.
    clock: Pin<Box<Sleep>>,
    armed: bool,
    last_read: Instant,
    write_stalled: Option<Instant>,
    /// Since when streams wait for the connection's window.
    window_stalled: Option<Instant>,
    started: Instant,
}

struct Cont {
    id: u32,
    end: bool,
    /// The HEADERS frame made the stream depend on itself.
    self_dep: bool,
    block: BytesMut,
}

impl<S, H, F, B> Conn<S, H, F, B>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<H2Body>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn new(io: S, set: &Settings, handler: H) -> Self {
        let now = Instant::now();
        let mut out = Out {
            buf: Vec::with_capacity(1024),
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

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.ready.conn.register(cx.waker());
        // Bounded: a stream that wakes itself at every poll must not keep
        // this task from yielding.
        for _ in 0..32 {
            let mut more = false;
            if self.failed.is_none() && !self.peer_gone && !self.out.full() {
                match crate::h1::client::poll_read_buf(&mut self.io, cx, &mut self.rbuf, 16 * 1024)
                {
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

    /// A graceful stop's final GOAWAY: the streams taken so far finish,
    /// no other is taken.
    fn finish_stop(&mut self) {
        if self.soft_stop && !self.stopping {
            self.stopping = true;
            frame::goaway(&mut self.out.buf, self.last_id, Reason::NO_ERROR, "");
        }
    }

    fn requeue(&self, id: u32) {
        if let Some(s) = self.streams.get(&id) {
            s.wake.wake_by_ref();
        }
    }

    /// Sends GOAWAY for a protocol error; the connection ends once it is
    /// written.
    fn fail(&mut self, e: Error) {
        if let Error::Protocol(r, why) = &e {
            tracing::debug!(reason = %r, why, "HTTP/2 connection error");
            frame::goaway(&mut self.out.buf, self.last_id, *r, why);
        }
        self.failed = Some(e);
    }

    fn write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
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
    fn arm_at(&mut self, at: Instant) {
        if !self.armed || self.clock.deadline() > at {
            self.armed = true;
            self.clock.as_mut().reset(at);
        }
    }

    fn arm(&mut self, after: Duration) {
        self.arm_at(Instant::now() + after);
    }

    /// The idle deadline, for a connection with no stream open.
    fn idle_at(&self) -> Option<Instant> {
        (self.preface && self.streams.is_empty()).then(|| self.last_read + self.set.idle_timeout)
    }

    /// Checks the timeouts when the clock fires.
    fn poll_clock(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
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

    // ---- input ----

    /// Handles every whole frame in the read buffer.
    fn frames(&mut self) -> Result<(), Error> {
        if !self.preface {
            if self.rbuf.len() < frame::PREFACE.len() {
                if !frame::PREFACE.starts_with(&self.rbuf[..]) {
                    return Err(Error::Protocol(
                        Reason::PROTOCOL_ERROR,
                        "bad connection preface",
                    ));
                }
                return Ok(());
            }
            if &self.rbuf[..24] != frame::PREFACE {
                return Err(Error::Protocol(
                    Reason::PROTOCOL_ERROR,
                    "bad connection preface",
                ));
            }
            self.rbuf.advance(24);
            self.preface = true;
        }
        while self.rbuf.len() >= 9 {
            let h = Head::parse(self.rbuf[..9].try_into().expect("9 bytes"));
            if h.len > frame::OUR_MAX_FRAME {
                return Err(Error::Protocol(
                    Reason::FRAME_SIZE_ERROR,
                    "frame larger than SETTINGS_MAX_FRAME_SIZE",
                ));
            }
            if self.rbuf.len() < 9 + h.len {
                self.rbuf.reserve(9 + h.len - self.rbuf.len());
                break;
            }
            if !self.settings_seen && h.kind != frame::SETTINGS {
                return Err(Error::Protocol(
                    Reason::PROTOCOL_ERROR,
                    "first frame is not SETTINGS",
                ));
            }
            if let Some(c) = &self.cont {
                if h.kind != frame::CONTINUATION || h.stream != c.id {
                    return Err(Error::Protocol(
                        Reason::PROTOCOL_ERROR,
                        "header block interrupted",
                    ));
                }
            }
            let payload = match h.kind {
                // Kept as shared bytes: data and header values are not copied.
                frame::DATA | frame::HEADERS | frame::CONTINUATION => {
                    let mut f = self.rbuf.split_to(9 + h.len);
                    f.advance(9);
                    f.freeze()
                }
                _ => {
                    let f = Bytes::copy_from_slice(&self.rbuf[9..9 + h.len]);
                    self.rbuf.advance(9 + h.len);
                    f
                }
            };
            self.frame(h, payload)?;
            if self.failed.is_some() {
                break;
            }
        }
        Ok(())
    }

    fn frame(&mut self, h: Head, p: Bytes) -> Result<(), Error> {
        use frame::*;
        let proto = |why| Err(Error::Protocol(Reason::PROTOCOL_ERROR, why));
        match h.kind {
            DATA => self.data(h, p),
            HEADERS => self.headers(h, p),
            CONTINUATION => {
                let Some(c) = &mut self.cont else {
                    return proto("CONTINUATION without HEADERS");
                };
                if c.block.len() + p.len() > 64 * 1024 {
                    return Err(Error::Protocol(
                        Reason::ENHANCE_YOUR_CALM,
                        "header block over 64 KiB",
                    ));
                }
                c.block.extend_from_slice(&p);
                if h.flags & END_HEADERS != 0 {
                    let c = self.cont.take().expect("continued block");
                    self.block(c.id, c.end, c.block.freeze(), c.self_dep)?;
                }
                Ok(())
            }
            PRIORITY => {
                if h.stream == 0 {
                    return proto("PRIORITY on stream 0");
                }
                if p.len() != 5 {
                    // A stream error; taken for the whole connection, as
                    // the stream may be idle.
                    return Err(Error::Protocol(Reason::FRAME_SIZE_ERROR, "PRIORITY size"));
                }
                if u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff == h.stream {
                    // A stream may not depend on itself (RFC 9113 §5.3.1):
                    // an open stream is reset; for any other the error
                    // is the connection's (no reset may name an idle one).
                    if !self.streams.contains_key(&h.stream) {
                        return proto("stream depends on itself");
                    }
                    self.remove(h.stream, End::Reset(Reason::PROTOCOL_ERROR));
                }
                Ok(())
            }
            RST_STREAM => {
                if h.stream == 0 {
                    return proto("RST_STREAM on stream 0");
                }
                if p.len() != 4 {
                    return Err(Error::Protocol(Reason::FRAME_SIZE_ERROR, "RST_STREAM size"));
                }
                if h.stream > self.last_id || h.stream.is_multiple_of(2) {
                    return proto("RST_STREAM on an idle stream");
                }
                // The request path is dropped: its slot comes free.
                self.remove(h.stream, End::ByClient);
                Ok(())
            }
            SETTINGS => self.settings(h, &p),
            PUSH_PROMISE => proto("PUSH_PROMISE from a client"),
            PING => {
                if h.stream != 0 {
                    return proto("PING on a stream");
                }
                if p.len() != 8 {
                    return Err(Error::Protocol(Reason::FRAME_SIZE_ERROR, "PING size"));
                }
                if h.flags & ACK == 0 {
                    frame::head(&mut self.out.buf, 8, PING, ACK, 0);
                    self.out.buf.extend_from_slice(&p);
                } else if p[..] == STOP_PING[..] {
                    // Every stream the client opened before our first
                    // GOAWAY has arrived by now.
                    self.finish_stop();
                }
                Ok(())
            }
            GOAWAY => {
                if h.stream != 0 {
                    return proto("GOAWAY on a stream");
                }
                if p.len() < 8 {
                    return Err(Error::Protocol(Reason::FRAME_SIZE_ERROR, "GOAWAY size"));
                }
                let code = Reason(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                if code != Reason::NO_ERROR {
                    return Err(Error::Peer(code));
                }
                // No new streams come; the open ones finish.
                self.stopping = true;
                Ok(())
            }
            WINDOW_UPDATE => {
                if p.len() != 4 {
                    return Err(Error::Protocol(
                        Reason::FRAME_SIZE_ERROR,
                        "WINDOW_UPDATE size",
                    ));
                }
                let inc = i64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff);
                if h.stream == 0 {
                    if inc == 0 {
                        return proto("WINDOW_UPDATE of 0");
                    }
                    self.out.window += inc;
                    if self.out.window > MAX_WINDOW {
                        return Err(Error::Protocol(
                            Reason::FLOW_CONTROL_ERROR,
                            "connection window over 2^31-1",
                        ));
                    }
                    self.window_stalled = None;
                    for id in std::mem::take(&mut self.conn_blocked) {
                        self.requeue(id);
                    }
                    return Ok(());
                }
                if h.stream > self.last_id || h.stream.is_multiple_of(2) {
                    return proto("WINDOW_UPDATE on an idle stream");
                }
                let Some(s) = self.streams.get_mut(&h.stream) else {
                    return Ok(());
                };
                if inc == 0 {
                    self.remove(h.stream, End::Reset(Reason::PROTOCOL_ERROR));
                    return Ok(());
                }
                s.send_window += inc;
                if s.send_window > MAX_WINDOW {
                    self.remove(h.stream, End::Reset(Reason::FLOW_CONTROL_ERROR));
                    return Ok(());
                }
                s.wake.wake_by_ref();
                Ok(())
            }
            // Unknown types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn settings(&mut self, h: Head, p: &[u8]) -> Result<(), Error> {
        use frame::*;
        if h.stream != 0 {
            return Err(Error::Protocol(
                Reason::PROTOCOL_ERROR,
                "SETTINGS on a stream",
            ));
        }
        if h.flags & ACK != 0 {
            if !p.is_empty() {
                return Err(Error::Protocol(
                    Reason::FRAME_SIZE_ERROR,
                    "SETTINGS ACK with a payload",
                ));
            }
            return Ok(());
        }
        if !p.len().is_multiple_of(6) {
            return Err(Error::Protocol(Reason::FRAME_SIZE_ERROR, "SETTINGS size"));
        }
        self.settings_seen = true;
        // Only the frame's last INITIAL_WINDOW_SIZE is applied to the
        // streams (once, not once per entry).
        let mut window = None;
        for s in p.chunks_exact(6) {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match id {
                HEADER_TABLE_SIZE => self.out.enc.set_max(v as usize),
                ENABLE_PUSH if v > 1 => {
                    return Err(Error::Protocol(
                        Reason::PROTOCOL_ERROR,
                        "ENABLE_PUSH not 0 or 1",
                    ));
                }
                INITIAL_WINDOW_SIZE => {
                    let v = i64::from(v);
                    if v > MAX_WINDOW {
                        return Err(Error::Protocol(
                            Reason::FLOW_CONTROL_ERROR,
                            "INITIAL_WINDOW_SIZE over 2^31-1",
                        ));
                    }
                    window = Some(v);
                }
                MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&v) {
                        return Err(Error::Protocol(
                            Reason::PROTOCOL_ERROR,
                            "MAX_FRAME_SIZE out of range",
                        ));
                    }
                    self.out.max_frame = v as usize;
                }
                // MAX_CONCURRENT_STREAMS limits pushes (we make none);
                // MAX_HEADER_LIST_SIZE is advisory; others are unknown.
                _ => {}
            }
        }
        if let Some(v) = window {
            let delta = v - self.peer_window;
            self.peer_window = v;
            for s in self.streams.values_mut() {
                s.send_window += delta;
                if s.send_window > MAX_WINDOW {
                    return Err(Error::Protocol(
                        Reason::FLOW_CONTROL_ERROR,
                        "stream window over 2^31-1",
                    ));
                }
                if delta > 0 {
                    s.wake.wake_by_ref();
                }
            }
        }
        frame::head(&mut self.out.buf, 0, SETTINGS, ACK, 0);
        Ok(())
    }

    /// Strips padding (and the priority fields of HEADERS, returning the
    /// stream dependency they name).
    fn unpad(h: &Head, mut p: Bytes, priority: bool) -> Result<(Bytes, Option<u32>), Error> {
        let mut pad = 0;
        let mut dep = None;
        if h.flags & frame::PADDED != 0 {
            if p.is_empty() {
                return Err(Error::Protocol(
                    Reason::PROTOCOL_ERROR,
                    "padded frame without pad length",
                ));
            }
            pad = usize::from(p[0]);
            p.advance(1);
        }
        if priority && h.flags & frame::PRIORITY_FLAG != 0 {
            if p.len() < 5 {
                return Err(Error::Protocol(
                    Reason::PROTOCOL_ERROR,
                    "HEADERS too short for its priority",
                ));
            }
            dep = Some(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff);
            p.advance(5);
        }
        if pad > p.len() {
            return Err(Error::Protocol(
                Reason::PROTOCOL_ERROR,
                "padding longer than the frame",
            ));
        }
        p.truncate(p.len() - pad);
        Ok((p, dep))
    }

    fn data(&mut self, h: Head, p: Bytes) -> Result<(), Error> {
        if h.stream == 0 {
            return Err(Error::Protocol(Reason::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        if h.stream > self.last_id || h.stream.is_multiple_of(2) {
            return Err(Error::Protocol(
                Reason::PROTOCOL_ERROR,
                "DATA on an idle stream",
            ));
        }
        let flow = p.len() as i64;
        self.recv_window -= flow;
        if self.recv_window < 0 {
            return Err(Error::Protocol(
                Reason::FLOW_CONTROL_ERROR,
                "client sent past the connection window",
            ));
        }
        let (data, _) = Self::unpad(&h, p, false)?;
        // Padding, and data nobody reads, is given back at once.
        let mut give_back = flow - data.len() as i64;
        let end = h.flags & frame::END_STREAM != 0;
        let id = h.stream;
        let mut reset = None;
        match self.streams.get_mut(&id) {
            Some(s) if s.recv_open => {
                s.recv_window -= flow;
                if s.recv_window < 0 {
                    reset = Some(Reason::FLOW_CONTROL_ERROR);
                } else {
                    let n = data.len() as u64;
                    let bad_len = match &mut s.expect {
                        Some(left) if n > *left || (end && n != *left) => true,
                        Some(left) => {
                            *left -= n;
                            false
                        }
                        None => false,
                    };
                    if bad_len {
                        reset = Some(Reason::PROTOCOL_ERROR);
                    } else {
                        let r = s.recv.as_ref().expect("receiving");
                        let mut st = lock(r);
                        if st.gone {
                            give_back = flow;
                        } else if !data.is_empty() {
                            st.held += data.len();
                            // A small frame is copied: held as a slice it
                            // would keep its whole read buffer alive.
                            let data = if data.len() < 4096 {
                                Bytes::copy_from_slice(&data)
                            } else {
                                data
                            };
                            st.data.push_back(data);
                        }
                        if end {
                            st.end = true;
                        }
                        if let Some(w) = st.waker.take() {
                            w.wake();
                        }
                        drop(st);
                        // Padding goes back to the stream's window too.
                        let pad = (flow - n as i64) as u32;
                        if !end {
                            s.give_back(id, pad, &mut self.out.buf, self.set.stream_window);
                        }
                        if end {
                            s.recv_open = false;
                        }
                    }
                }
                if reset.is_some() {
                    give_back = flow;
                }
            }
            // Closed for receiving: reset unless we already did.
            Some(_) => {
                give_back = flow;
                reset = Some(Reason::STREAM_CLOSED);
            }
            // Closed: ignored after our own reset (the client may have
            // sent it before seeing ours); after both ends closed, or
            // after the client's reset, a connection error (§5.1).
            None => {
                give_back = flow;
                if self.closed_by_us(id) == Some(false) {
                    return Err(Error::Protocol(
                        Reason::STREAM_CLOSED,
                        "DATA on a closed stream",
                    ));
                }
            }
        }
        if let Some(r) = reset {
            self.remove(id, End::Reset(r));
        }
        self.give_back(give_back as u32);
        Ok(())
    }

    /// Gives `n` bytes of connection window back to the client, in
    /// updates of at least half the window.
    fn give_back(&mut self, n: u32) {
        self.recv_unacked += n;
        if self.recv_unacked >= self.set.conn_window / 2 && self.recv_unacked > 0 {
            frame::window_update(&mut self.out.buf, 0, self.recv_unacked);
            self.recv_window += i64::from(self.recv_unacked);
            self.recv_unacked = 0;
        }
    }

    fn headers(&mut self, h: Head, p: Bytes) -> Result<(), Error> {
        let id = h.stream;
        if id == 0 || id.is_multiple_of(2) {
            return Err(Error::Protocol(
                Reason::PROTOCOL_ERROR,
                "HEADERS on a stream a client may not open",
            ));
        }
        let (block, dep) = Self::unpad(&h, p, true)?;
        let self_dep = dep == Some(id);
        let end = h.flags & frame::END_STREAM != 0;
        if h.flags & frame::END_HEADERS == 0 {
            let mut b = BytesMut::with_capacity(block.len() * 2);
            b.extend_from_slice(&block);
            self.cont = Some(Cont {
                id,
                end,
                self_dep,
                block: b,
            });
            return Ok(());
        }
        self.block(id, end, block, self_dep)
    }

    /// A whole header block: a new request, or trailers.
    fn block(&mut self, id: u32, end: bool, block: Bytes, self_dep: bool) -> Result<(), Error> {
        if id <= self.last_id {
            return self.trailers(id, end, block, self_dep);
        }
        let mut req = ReqHead::default();
        let limit = self.set.max_header_list as usize;
        self.dec
            .decode(&block, |n, v, size| req.field(n, v, size, limit))
            .map_err(|e| Error::Protocol(Reason::COMPRESSION_ERROR, e.0))?;
        self.last_id = id;
        if self.stopping {
            // Opened after our GOAWAY: ignored (RFC 9113 §6.8), and so
            // is what follows on it.
            self.note_closed(id, true);
            return Ok(());
        }
        if self_dep {
            // RFC 9113 §5.3.1: a stream error.
            self.refuse(id, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        if self.streams.len() >= self.set.max_concurrent_streams as usize {
            self.refuse(id, Reason::REFUSED_STREAM);
            return Ok(());
        }
        if req.size > limit {
            self.answer(id, end, 431);
            return Ok(());
        }
        let Some((mut request, expect)) = req.build(end) else {
            tracing::debug!(
                stream = id,
                why = req.bad.unwrap_or("?"),
                "malformed HTTP/2 request: stream reset"
            );
            self.refuse(id, Reason::PROTOCOL_ERROR);
            return Ok(());
        };
        if request.method() == Method::CONNECT {
            // convoy makes no tunnels (and offers no extended CONNECT,
            // RFC 8441): refused as over HTTP/1, never forwarded.
            tracing::debug!(stream = id, "CONNECT refused: 405");
            self.answer(id, end, 405);
            return Ok(());
        }
        let wake = Arc::new(StreamWake {
            id,
            queued: AtomicBool::new(false),
            ready: Arc::clone(&self.ready),
        });
        let waker = Waker::from(Arc::clone(&wake));
        let recv = (!end).then(|| Arc::new(Mutex::new(RecvState::default())));
        if let Some(r) = &recv {
            *request.body_mut() = H2Body {
                recv: Some(Arc::clone(r)),
                stream: Some(waker.clone()),
                left: expect,
                done: false,
            };
            if request
                .headers()
                .get(http::header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
            {
                // Answered here: the client may send its body at once.
                request.headers_mut().remove(http::header::EXPECT);
                self.out.headers(id, false, |enc, dst| enc.status(100, dst));
            }
        }
        let fut = (self.handler)(request);
        wake.wake_by_ref();
        self.streams.insert(
            id,
            Stream {
                wake,
                waker,
                phase: Phase::Waiting(Box::pin(fut)),
                send_window: self.peer_window,
                recv_open: recv.is_some(),
                recv,
                recv_window: i64::from(self.set.stream_window),
                unacked: 0,
                expect,
                pending: Bytes::new(),
                end_pending: false,
                trailers: None,
                stalled: None,
            },
        );
        Ok(())
    }

    fn trailers(&mut self, id: u32, end: bool, block: Bytes, self_dep: bool) -> Result<(), Error> {
        let mut fields = HeaderMap::new();
        let mut size = 0;
        let mut bad = false;
        let limit = self.set.max_header_list as usize;
        self.dec
            .decode(&block, |n, v, s| {
                size += s;
                if size > limit {
                    return;
                }
                match (n, v) {
                    (Name::Field(n), hpack::Value::Field(v)) if !connection_specific(n) => {
                        fields.append(n.clone(), v);
                    }
                    _ => bad = true,
                }
            })
            .map_err(|e| Error::Protocol(Reason::COMPRESSION_ERROR, e.0))?;
        let Some(s) = self.streams.get_mut(&id) else {
            // A stream that is over: ignored after our own reset; after
            // both ends closed or the client's reset, a connection error
            // (§5.1); a lower id never opened is refused (§5.1.1).
            return match self.closed_by_us(id) {
                Some(true) => Ok(()),
                Some(false) => Err(Error::Protocol(
                    Reason::STREAM_CLOSED,
                    "HEADERS on a closed stream",
                )),
                None => Err(Error::Protocol(
                    Reason::PROTOCOL_ERROR,
                    "stream id lower than one already opened",
                )),
            };
        };
        if self_dep {
            self.remove(id, End::Reset(Reason::PROTOCOL_ERROR));
            return Ok(());
        }
        let (true, Some(r)) = (s.recv_open, &s.recv) else {
            self.remove(id, End::Reset(Reason::STREAM_CLOSED));
            return Ok(());
        };
        if !end
            || bad
            || size > self.set.max_header_list as usize
            || s.expect.is_some_and(|l| l != 0)
        {
            self.remove(id, End::Reset(Reason::PROTOCOL_ERROR));
            return Ok(());
        }
        let mut st = lock(r);
        st.trailers = Some(fields);
        st.end = true;
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        drop(st);
        s.recv_open = false;
        Ok(())
    }

    // ---- streams ----

    /// Polls every woken stream; true when one made progress.
    fn run_streams(&mut self) -> bool {
        let ids = std::mem::take(&mut *self.ready.ids.lock().unwrap_or_else(|e| e.into_inner()));
        if ids.is_empty() {
            return false;
        }
        let mut stalled = false;
        for id in ids {
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.wake.queued.store(false, Ordering::Release);
            // Window taken by the request body goes back to the client.
            let (taken, dropped) = s.recv.as_ref().map_or((0, 0), |r| {
                let mut st = lock(r);
                let d = std::mem::take(&mut st.dropped) as u32;
                (std::mem::take(&mut st.released) as u32, d)
            });
            if s.recv_open {
                s.give_back(id, taken, &mut self.out.buf, self.set.stream_window);
            }
            let step = Self::step(s, id, &mut self.out, &mut self.conn_blocked);
            stalled |= s.stalled.is_some();
            self.give_back(taken + dropped);
            match step {
                Step::Idle => {}
                Step::Blocked => self.blocked.push(id),
                Step::Done => self.remove(id, End::Done),
                Step::Reset(r) => self.remove(id, End::Reset(r)),
            }
        }
        if !self.conn_blocked.is_empty() && self.window_stalled.is_none() {
            self.window_stalled = Some(Instant::now());
            stalled = true;
        }
        if stalled {
            self.arm(self.set.idle_timeout);
        }
        true
    }

    fn step(s: &mut Stream<F, B>, id: u32, out: &mut Out, conn_blocked: &mut Vec<u32>) -> Step {
        let mut cx = Context::from_waker(&s.waker);
        loop {
            match &mut s.phase {
                Phase::Waiting(fut) => {
                    // A panic in one request path resets its stream, not
                    // the connection's others.
                    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        fut.as_mut().poll(&mut cx)
                    }));
                    let resp = match polled {
                        Ok(Poll::Ready(resp)) => resp,
                        Ok(Poll::Pending) => return Step::Idle,
                        Err(_) => {
                            tracing::error!(
                                stream = id,
                                "HTTP/2 request path panicked: stream reset"
                            );
                            return Step::Reset(Reason::INTERNAL_ERROR);
                        }
                    };
                    let (mut parts, body) = resp.into_parts();
                    crate::headers::strip_hop_by_hop(&mut parts.headers);
                    let end = body.is_end_stream();
                    let status = parts.status.as_u16();
                    if let Some(n) = body.size_hint().exact() {
                        if n > 0
                            && status >= 200
                            && status != 204
                            && status != 304
                            && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
                        {
                            parts
                                .headers
                                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
                        }
                    }
                    out.response_head(id, end, status, &parts.headers);
                    if end {
                        return Step::Done;
                    }
                    s.phase = Phase::Body(body);
                }
                Phase::Body(body) => {
                    if !s.pending.is_empty() || s.end_pending {
                        // Send what the windows allow.
                        let n = (s.pending.len() as i64)
                            .min(s.send_window)
                            .min(out.window)
                            .min(out.max_frame as i64)
                            .max(0) as usize;
                        if n == 0 && !s.pending.is_empty() {
                            if s.send_window > 0 {
                                // The connection's window: the client may
                                // be reading other streams (its clock is
                                // the connection's).
                                if !conn_blocked.contains(&id) {
                                    conn_blocked.push(id);
                                }
                            } else if s.stalled.is_none() {
                                s.stalled = Some(Instant::now());
                            }
                            return Step::Idle;
                        }
                        s.stalled = None;
                        let chunk = s.pending.split_to(n);
                        let last = s.pending.is_empty() && s.end_pending && s.trailers.is_none();
                        out.data(id, &chunk, last);
                        s.send_window -= n as i64;
                        out.window -= n as i64;
                        if s.pending.is_empty() {
                            if let Some(t) = s.trailers.take() {
                                out.trailers(id, &t);
                                return Step::Done;
                            }
                            if s.end_pending {
                                return Step::Done;
                            }
                        }
                        if out.full() {
                            return Step::Blocked;
                        }
                        continue;
                    }
                    if out.full() {
                        return Step::Blocked;
                    }
                    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        Pin::new(&mut *body).poll_frame(&mut cx)
                    }));
                    let Ok(polled) = polled else {
                        tracing::error!(stream = id, "HTTP/2 response body panicked: stream reset");
                        return Step::Reset(Reason::INTERNAL_ERROR);
                    };
                    match polled {
                        Poll::Pending => return Step::Idle,
                        Poll::Ready(None) => {
                            s.end_pending = true;
                        }
                        Poll::Ready(Some(Err(e))) => {
                            let e: BoxError = e.into();
                            tracing::debug!(error = %e, "response body failed: stream reset");
                            return Step::Reset(Reason::INTERNAL_ERROR);
                        }
                        Poll::Ready(Some(Ok(f))) => match f.into_data() {
                            Ok(d) => {
                                s.pending = d;
                                s.end_pending = body.is_end_stream();
                            }
                            Err(f) => {
                                if let Ok(t) = f.into_trailers() {
                                    s.trailers = Some(t);
                                    s.end_pending = true;
                                }
                            }
                        },
                    }
                    if s.end_pending && s.pending.is_empty() {
                        if let Some(t) = s.trailers.take() {
                            out.trailers(id, &t);
                        } else {
                            out.data(id, &[], true);
                        }
                        return Step::Done;
                    }
                }
            }
        }
    }

    /// Remembers a closed stream (`reset`: by our RST_STREAM).
    fn note_closed(&mut self, id: u32, reset: bool) {
        if self.closed.len() == CLOSED_MEMORY {
            self.closed.pop_front();
        }
        self.closed.push_back((id, reset));
    }

    /// For a recently closed stream: whether we reset it.
    fn closed_by_us(&self, id: u32) -> Option<bool> {
        self.closed
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|&(_, r)| r)
    }

    /// Resets a stream that never reached the request path.
    fn refuse(&mut self, id: u32, why: Reason) {
        frame::rst_stream(&mut self.out.buf, id, why);
        self.note_closed(id, true);
    }

    /// Answers a stream with a bodiless `status` of convoy's own (the
    /// request path never sees it); a client still sending is told to
    /// stop (RST_STREAM NO_ERROR, RFC 9113 §8.1).
    fn answer(&mut self, id: u32, end: bool, status: u16) {
        self.out.response_head(id, true, status, &HeaderMap::new());
        if !end {
            frame::rst_stream(&mut self.out.buf, id, Reason::NO_ERROR);
        }
        self.note_closed(id, !end);
    }

    /// Removes a stream: its request path is dropped and what its body
    /// held is given back. At most one RST_STREAM goes out: the reason
    /// given, or after a complete response `NO_ERROR` if the client may
    /// still send (RFC 9113 §8.1), none after the client's own reset. A
    /// stream that ends before its response, by the client's reset or by
    /// one it provoked, counts against the reset budget; a completed one
    /// earns one back.
    fn remove(&mut self, id: u32, how: End) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        let mut back = 0;
        if let Some(r) = &s.recv {
            let st = lock(r);
            back = (st.held + st.released + st.dropped) as u32;
        }
        let rst = match how {
            End::Done => s.recv_open.then_some(Reason::NO_ERROR),
            End::ByClient => None,
            End::Reset(r) => Some(r),
        };
        if let Some(r) = rst {
            frame::rst_stream(&mut self.out.buf, id, r);
        }
        self.note_closed(id, rst.is_some());
        if matches!(how, End::Done) {
            self.resets = self.resets.saturating_sub(1);
        } else if matches!(s.phase, Phase::Waiting(_)) {
            self.resets += 1;
            if self.resets > RESET_BUDGET && self.failed.is_none() {
                self.fail(Error::Protocol(
                    Reason::ENHANCE_YOUR_CALM,
                    "too many streams reset before their response",
                ));
            }
        }
        drop(s);
        self.give_back(back);
        if self.streams.is_empty() {
            self.last_read = Instant::now();
        }
    }
}

/// Connection-specific fields (RFC 9113 §8.2.2).
fn connection_specific(n: &HeaderName) -> bool {
    use http::header::*;
    n == CONNECTION
        || n == TRANSFER_ENCODING
        || n == UPGRADE
        || n.as_str() == "keep-alive"
        || n.as_str() == "proxy-connection"
}

/// A request head as its fields are decoded.
#[derive(Default)]
struct ReqHead {
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    headers: HeaderMap,
    cookies: usize,
    size: usize,
    regular: bool,
    bad: Option<&'static str>,
}

impl ReqHead {
    fn field(&mut self, n: &Name, v: hpack::Value, size: usize, limit: usize) {
        self.size += size;
        if self.size > limit || self.bad.is_some() {
            return;
        }
        match (n, v) {
            (_, hpack::Value::Bad) => self.bad = Some("invalid field value"),
            (Name::Pseudo(p), hpack::Value::Raw(v)) => {
                if self.regular {
                    self.bad = Some("pseudo-header after a regular field");
                    return;
                }
                let slot = match p {
                    Pseudo::Method => &mut self.method,
                    Pseudo::Scheme => &mut self.scheme,
                    Pseudo::Authority => &mut self.authority,
                    Pseudo::Path => &mut self.path,
                    Pseudo::Status | Pseudo::Protocol => {
                        self.bad = Some("pseudo-header a request may not have");
                        return;
                    }
                };
                if slot.is_some() {
                    self.bad = Some("pseudo-header twice");
                    return;
                }
                *slot = Some(v);
            }
            (Name::Field(n), hpack::Value::Field(v)) => {
                self.regular = true;
                let b = v.as_bytes();
                if matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
                {
                    self.bad = Some("field value with leading or trailing whitespace");
                    return;
                }
                if connection_specific(n) {
                    self.bad = Some("connection-specific field");
                    return;
                }
                if n == http::header::TE && v != "trailers" {
                    self.bad = Some("te other than trailers");
                    return;
                }
                if n == http::header::COOKIE {
                    self.cookies += 1;
                }
                self.headers.append(n.clone(), v);
            }
            _ => self.bad = Some("invalid field name"),
        }
    }

    /// The request, and its `content-length`; `None` if malformed.
    fn build(&mut self, end: bool) -> Option<(Request<H2Body>, Option<u64>)> {
        if self.bad.is_some() {
            return None;
        }
        let Some(method) = self.method.take() else {
            self.bad = Some("no :method");
            return None;
        };
        let Ok(method) = Method::from_bytes(&method) else {
            self.bad = Some("invalid :method");
            return None;
        };
        let mut parts = http::uri::Parts::default();
        if method == Method::CONNECT {
            if self.scheme.is_some() || self.path.is_some() || self.authority.is_none() {
                self.bad = Some("CONNECT with :scheme or :path, or without :authority");
                return None;
            }
        } else {
            let (Some(scheme), Some(path)) = (self.scheme.take(), self.path.take()) else {
                self.bad = Some("no :scheme or :path");
                return None;
            };
            // origin-form, or `*` for OPTIONS (RFC 9113 §8.3.1).
            if !(path.starts_with(b"/") || (&path[..] == b"*" && method == Method::OPTIONS)) {
                self.bad = Some(":path neither origin-form nor * for OPTIONS");
                return None;
            }
            parts.scheme = http::uri::Scheme::try_from(&scheme[..]).ok();
            parts.path_and_query = http::uri::PathAndQuery::from_maybe_shared(path).ok();
            if parts.scheme.is_none() || parts.path_and_query.is_none() {
                self.bad = Some("invalid :scheme or :path");
                return None;
            }
        }
        if let Some(a) = self.authority.take() {
            if a.contains(&b'@') {
                self.bad = Some(":authority with userinfo");
                return None;
            }
            // Routing reads the authority and the server gets Host: they
            // must name the same host (RFC 9113 §8.3.1).
            if let Some(h) = self.headers.get(http::header::HOST) {
                if !h.as_bytes().eq_ignore_ascii_case(&a) {
                    self.bad = Some(":authority and host differ");
                    return None;
                }
            }
            match http::uri::Authority::from_maybe_shared(a) {
                Ok(a) => parts.authority = Some(a),
                Err(_) => {
                    self.bad = Some("invalid :authority");
                    return None;
                }
            }
        } else if parts.scheme.is_some() {
            // A URI with a scheme needs an authority: take Host's.
            let host = self
                .headers
                .get(http::header::HOST)
                .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
            match host {
                Some(a) => parts.authority = Some(a),
                None => {
                    parts.scheme = None;
                }
            }
        }
        let Ok(uri) = Uri::from_parts(parts) else {
            self.bad = Some("invalid request target");
            return None;
        };
        let mut headers = std::mem::take(&mut self.headers);
        if self.cookies > 1 {
            // One cookie field for HTTP/1.1 servers (RFC 9113 §8.2.3).
            let mut joined = Vec::new();
            for c in headers.get_all(http::header::COOKIE) {
                if !joined.is_empty() {
                    joined.extend_from_slice(b"; ");
                }
                joined.extend_from_slice(c.as_bytes());
            }
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                headers.insert(http::header::COOKIE, v);
            }
        }
        // Every content-length field must be a number, and the same one
        // (as the HTTP/1 parser requires), whatever their order.
        let mut expect = None;
        for v in headers.get_all(http::header::CONTENT_LENGTH) {
            let n = std::str::from_utf8(v.as_bytes())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            match (n, expect) {
                (None, _) => {
                    self.bad = Some("invalid content-length");
                    return None;
                }
                (Some(n), Some(e)) if n != e => {
                    self.bad = Some("content-length fields differ");
                    return None;
                }
                (n, _) => expect = n,
            }
        }
        if end && expect.is_some_and(|n| n != 0) {
            self.bad = Some("content-length with no body");
            return None;
        }
        let mut req = Request::new(H2Body::empty());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = headers;
        Some((req, expect))
    }
}

#[cfg(test)]
mod tests;
