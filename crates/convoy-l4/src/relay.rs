//! Relays bytes both ways between a client and a server connection until
//! both directions end, with half-close propagation (EOF on one side becomes
//! `shutdown(SHUT_WR)` on the other), an idle timeout over both directions,
//! and external kill signals (drain timeout, node stop). Uses splice(2) on
//! Linux, a buffered copy elsewhere or when disabled.
//!
//! The bytes move in a task of their own that does nothing else, so a
//! wake-up for data polls only the two pumps; the caller's task supervises
//! (idle timeout, kill signals) and wakes only for those, aborting the mover
//! when needed. The hot path reads no clock: the supervisor samples a
//! transfer counter.
//!
//! With a park time, a connection idle that long is handed back whole
//! ([`Relayed::Resting`]) so its owner can park it outside any task
//! ([`crate::park`]): the mover stops only at a point where nothing is in
//! flight (both directions open and waiting to read, no buffer held), so
//! no byte is lost, and a later relay goes on from there.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::future::poll_fn;
use std::task::{ready, Context as TaskCx, Poll};

use futures_util::task::AtomicWaker;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

/// Why a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed cleanly.
    Done,
    /// No traffic for the idle timeout.
    Idle,
    /// Closed by a kill signal.
    Killed,
    /// The client side failed (e.g. reset).
    ClientError(io::ErrorKind),
    /// The server side failed (e.g. reset).
    ServerError(io::ErrorKind),
}

/// A relay's settings.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Bulk streams switch to splice(2) (Linux).
    pub splice: bool,
    /// No traffic either way for this long ends the relay.
    pub idle: Duration,
    /// No traffic for this long hands the connection back whole
    /// ([`Relayed::Resting`]); `None`: never.
    pub park_after: Option<Duration>,
}

/// Where a connection stands: bytes moved so far and when traffic was
/// last seen (a relay that goes on from a parked connection starts there).
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Client → server bytes.
    pub to_server: u64,
    /// Server → client bytes.
    pub to_client: u64,
    /// When traffic was last seen (its idle timeout counts from there).
    pub last: Instant,
}

impl Progress {
    /// A connection opened at `at`, nothing moved yet.
    pub fn new(at: Instant) -> Progress {
        Progress {
            to_server: 0,
            to_client: 0,
            last: at,
        }
    }
}

/// How a relay returned.
#[derive(Debug)]
pub enum Relayed {
    /// The connection is over.
    Ended(Outcome),
    /// Idle for the park time with nothing in flight: both sockets, to be
    /// parked or relayed again.
    Resting(Rest),
}

/// An idle connection handed back whole.
#[derive(Debug)]
pub struct Rest {
    /// The client's socket.
    pub client: TcpStream,
    /// The server's socket.
    pub server: TcpStream,
    /// Bytes so far and when traffic was last seen.
    pub progress: Progress,
}

/// Bytes moved and how the relay ended.
#[derive(Debug)]
pub struct Outcome {
    /// Client → server bytes.
    pub to_server: u64,
    /// Server → client bytes.
    pub to_client: u64,
    /// How it ended.
    pub end: End,
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Server,
}

/// Counters shared by the mover and the supervisor.
struct Counters {
    to_server: AtomicU64,
    to_client: AtomicU64,
    /// Transfers so far (both ways); the idle watchdog samples it.
    transfers: AtomicU64,
    /// The supervisor asks the mover to stop at rest.
    park: AtomicBool,
    /// Wakes the mover for that.
    park_waker: AtomicWaker,
    /// Whether the mover looks at `park` at all.
    may_park: bool,
}

impl Counters {
    fn new(from: &Progress, may_park: bool) -> Counters {
        Counters {
            to_server: AtomicU64::new(from.to_server),
            to_client: AtomicU64::new(from.to_client),
            transfers: AtomicU64::new(0),
            park: AtomicBool::new(false),
            park_waker: AtomicWaker::new(),
            may_park,
        }
    }

    /// The supervisor's request: stop at the next rest.
    fn ask_park(&self) {
        self.park.store(true, Ordering::Release);
        self.park_waker.wake();
    }

    /// The mover: whether parking was asked (the request is taken).
    fn park_asked(&self, cx: &TaskCx<'_>) -> bool {
        if !self.may_park {
            return false;
        }
        self.park_waker.register(cx.waker());
        self.park.load(Ordering::Acquire) && self.park.swap(false, Ordering::AcqRel)
    }
}

struct Dir<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    src_side: Side,
    dst_side: Side,
    bytes: &'a AtomicU64,
}

/// An error and the side it came from.
type SideError = (Side, io::Error);

/// Copy-buffer size; a read that fills it marks a bulk stream.
const COPY_BUF: usize = 16 * 1024;

/// Moves one direction until EOF. Starts by copying through a small
/// buffer, which costs the fewest syscalls for request/response traffic;
/// with `splice`, a read that fills the buffer (a bulk stream) switches the
/// direction to splice(2) for good, so large transfers stay zero-copy.
/// The buffer is held only while bytes flow: when the source has nothing
/// more to read it goes back to the thread's spares, so an idle
/// connection holds no buffer and no pipe. `rest` is true exactly while
/// the pump waits to read with nothing held (the mover may stop there).
async fn pump(
    d: Dir<'_>,
    splice: bool,
    transfers: &AtomicU64,
    rest: &AtomicBool,
) -> Result<(), SideError> {
    let (src_side, dst_side) = (d.src_side, d.dst_side);
    let at_src = |e| (src_side, e);
    let at_dst = |e| (dst_side, e);
    let (src, dst) = (d.src, d.dst);
    let mut held: Option<Vec<u8>> = None;
    loop {
        // A buffer is taken only once the source is readable, and given
        // back if the read finds nothing after all. A read shorter than
        // the buffer tells tokio the socket is drained (edge-triggered
        // epoll): the next wait waits, with no read that would only say
        // EAGAIN.
        let n = poll_fn(|cx| loop {
            let ready = src.poll_read_ready(cx);
            if ready.is_pending() {
                rest.store(true, Ordering::Relaxed);
            }
            ready!(ready)?;
            let b = held.get_or_insert_with(take_buf);
            match try_recv(src, b) {
                // Nothing after all (readiness now cleared): the next
                // turn waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    put_buf(held.take().unwrap_or_default());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return Poll::Ready(r),
            }
        })
        .await;
        rest.store(false, Ordering::Relaxed);
        let buf = held.take().unwrap_or_default();
        let n = match n {
            Ok(0) => {
                put_buf(buf);
                return shutdown_write(dst).map_err(at_dst);
            }
            Ok(n) => n,
            Err(e) => {
                put_buf(buf);
                return Err(at_src(e));
            }
        };
        let mut off = 0;
        while off < n {
            // Try first: a socket is nearly always writable, so waiting for
            // readiness first would cost a poll for nothing.
            match try_send(dst, &buf[off..n]) {
                Ok(m) => off += m,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Polled in place: `writable()`'s future would take
                    // 152 bytes in every connection's.
                    poll_fn(|cx| dst.poll_write_ready(cx))
                        .await
                        .map_err(at_dst)?;
                }
                Err(e) => return Err(at_dst(e)),
            }
        }
        d.bytes.fetch_add(n as u64, Ordering::Relaxed);
        transfers.fetch_add(1, Ordering::Relaxed);
        let full = n == buf.len();
        put_buf(buf);
        if splice && full && cfg!(target_os = "linux") {
            break;
        }
    }
    // Boxed: only bulk streams get here, and its futures would double
    // the size of every connection's.
    #[cfg(target_os = "linux")]
    Box::pin(splice_rest(src, dst, d.bytes, transfers, rest))
        .await
        .map_err(|(s, e)| (if s { src_side } else { dst_side }, e))?;
    shutdown_write(dst).map_err(at_dst)
}

/// recv(2) under tokio's readiness: a read shorter than the buffer marks
/// the socket drained (edge-triggered epoll: the next wait waits instead
/// of reading only to learn EAGAIN). Made through rustix, not std: in a
/// process with more than one thread glibc's wrappers enter and leave
/// cancellation mode around each call (about 70 instructions).
fn try_recv(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    let r = s.try_io(tokio::io::Interest::READABLE, || {
        let (n, _) = rustix::net::recv(s, &mut *buf, rustix::net::RecvFlags::empty())?;
        got = n;
        if n > 0 && n < buf.len() {
            // Readiness cleared as of before the read: data that came
            // after it wakes the next wait.
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        r => r,
    }
}

/// send(2) under tokio's readiness (EAGAIN clears it), through rustix as
/// [`try_recv`]; never raises SIGPIPE.
fn try_send(s: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    s.try_io(tokio::io::Interest::WRITABLE, || {
        Ok(rustix::net::send(s, buf, rustix::net::SendFlags::NOSIGNAL)?)
    })
}

/// The rest of a bulk direction, through a pipe with splice(2), until the
/// source's end of stream; an error says whether the source had it.
/// `rest` as in [`pump`].
#[cfg(target_os = "linux")]
async fn splice_rest(
    src: &TcpStream,
    dst: &TcpStream,
    bytes: &AtomicU64,
    transfers: &AtomicU64,
    rest: &AtomicBool,
) -> Result<(), (bool, io::Error)> {
    let p = crate::splice::Pipe::new().map_err(|e| (false, e))?;
    loop {
        // Waiting for the source with the pipe empty (all of it was
        // written on) is a rest too: a parked connection's direction
        // starts again in copy mode, with a new pipe if it streams again.
        let n = {
            let mut fill = std::pin::pin!(p.fill(src));
            poll_fn(|cx| {
                let r = fill.as_mut().poll(cx);
                rest.store(r.is_pending(), Ordering::Relaxed);
                r
            })
            .await
        };
        let n = n.map_err(|e| (true, e))?;
        if n == 0 {
            return Ok(());
        }
        p.drain(dst, n).await.map_err(|e| (false, e))?;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        transfers.fetch_add(1, Ordering::Relaxed);
    }
}

thread_local! {
    /// Copy buffers not in use on this thread.
    static SPARES: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How many spare copy buffers a thread keeps (16 KB each).
const MAX_SPARES: usize = 64;

/// A copy buffer of `COPY_BUF` bytes (zeroed when made, then reused as
/// it is): a spare, or a new one.
fn take_buf() -> Vec<u8> {
    SPARES.with(|s| s.borrow_mut().pop()).unwrap_or_else(|| {
        #[cfg(test)]
        tests::MADE.with(|m| m.set(m.get() + 1));
        vec![0; COPY_BUF]
    })
}

/// Gives a copy buffer back to the thread's spares (or frees it).
fn put_buf(b: Vec<u8>) {
    if b.len() != COPY_BUF {
        return;
    }
    SPARES.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < MAX_SPARES {
            s.push(b);
        }
    });
}

fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(s).shutdown(Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        r => r,
    }
}

/// How the mover returned.
enum Moved {
    /// The connection is over.
    End(End),
    /// Stopped at rest (parking asked): both sockets, nothing in flight.
    Rest(TcpStream, TcpStream),
}

/// Moves bytes both ways until both directions end or one fails; on a reset
/// from one side, resets the other (SO_LINGER 0) rather than closing it
/// gracefully, so the peer learns the exchange was cut. Asked to park, it
/// stops when both directions wait to read with nothing held, and gives
/// both sockets back. (A plain function returning an `async move` block:
/// an `async fn` keeps its arguments twice in the future every
/// connection's mover task carries.)
// Not an `async fn` on purpose: see above.
#[allow(clippy::manual_async_fn)]
fn mover(
    client: TcpStream,
    server: TcpStream,
    splice: bool,
    c: Arc<Counters>,
) -> impl Future<Output = Moved> + Send {
    async move {
        let rest = [AtomicBool::new(false), AtomicBool::new(false)];
        let r = {
            let up = Dir {
                src: &client,
                dst: &server,
                src_side: Side::Client,
                dst_side: Side::Server,
                bytes: &c.to_server,
            };
            let down = Dir {
                src: &server,
                dst: &client,
                src_side: Side::Server,
                dst_side: Side::Client,
                bytes: &c.to_client,
            };
            let mut pumps = std::pin::pin!(async {
                tokio::try_join!(
                    pump(up, splice, &c.transfers, &rest[0]),
                    pump(down, splice, &c.transfers, &rest[1])
                )
            });
            // The park request is looked at only when both pumps are
            // waiting: at rest, dropping them loses nothing.
            poll_fn(|cx| {
                if let Poll::Ready(r) = pumps.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                if c.park_asked(cx) && rest.iter().all(|r| r.load(Ordering::Relaxed)) {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await
        };
        let Some(r) = r else {
            return Moved::Rest(client, server);
        };
        let end = match r {
            Ok(_) => End::Done,
            Err((Side::Client, e)) => End::ClientError(e.kind()),
            Err((Side::Server, e)) => End::ServerError(e.kind()),
        };
        let reset = |s: &TcpStream| {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        };
        match end {
            End::ClientError(io::ErrorKind::ConnectionReset) => reset(&server),
            End::ServerError(io::ErrorKind::ConnectionReset) => reset(&client),
            _ => {}
        }
        Moved::End(end)
    }
}

/// Relays until both directions end, the idle timeout passes with no
/// traffic, or one of `kills` changes (takes both streams and closes
/// them); or, with a park time, until the connection has been idle that
/// long with nothing in flight (hands both streams back). `from`: where
/// the connection stands (a new one: [`Progress::new`]). (A plain function
/// returning an `async move` block, as [`mover`].)
// Not an `async fn` on purpose: see mover.
#[allow(clippy::manual_async_fn)]
pub fn relay<'a>(
    client: TcpStream,
    server: TcpStream,
    set: Settings,
    from: Progress,
    kills: &'a mut [watch::Receiver<u64>],
) -> impl Future<Output = Relayed> + Send + 'a {
    async move {
        let counters = Arc::new(Counters::new(&from, set.park_after.is_some()));
        let mut task = tokio::spawn(mover(client, server, set.splice, Arc::clone(&counters)));
        // The watchdog wakes every quarter of the idle timeout (or every
        // park time, if shorter) and notes when the transfer count last
        // moved: an idle connection closes between 1× and 1.25× the idle
        // timeout after its last byte, and is asked to park between 1×
        // and 2× the park time after it.
        let idle = set.idle;
        let step = set
            .park_after
            .map_or(idle / 4, |p| p.min(idle / 4))
            .max(Duration::from_millis(10));
        let mut seen = 0;
        let mut last_change = from.last;
        let mut next = Instant::now() + step;
        let end = loop {
            tokio::select! {
                r = &mut task => match r {
                    Ok(Moved::End(end)) => break end,
                    Ok(Moved::Rest(client, server)) => {
                        return Relayed::Resting(Rest {
                            client,
                            server,
                            progress: Progress {
                                to_server: counters.to_server.load(Ordering::Relaxed),
                                to_client: counters.to_client.load(Ordering::Relaxed),
                                last: rest_since(
                                    counters.transfers.load(Ordering::Relaxed),
                                    seen,
                                    last_change,
                                ),
                            },
                        });
                    }
                    Err(_) => break End::Killed,
                },
                _ = sleep_until(next) => {
                    let now = counters.transfers.load(Ordering::Relaxed);
                    let quiet = last_change.elapsed();
                    if now != seen {
                        seen = now;
                        last_change = Instant::now();
                    } else if quiet >= idle {
                        task.abort();
                        break End::Idle;
                    } else if set.park_after.is_some_and(|p| quiet >= p) {
                        counters.ask_park();
                    }
                    next = Instant::now() + step;
                }
                _ = any_changed(kills) => {
                    task.abort();
                    break End::Killed;
                }
            }
        };
        Relayed::Ended(Outcome {
            to_server: counters.to_server.load(Ordering::Relaxed),
            to_client: counters.to_client.load(Ordering::Relaxed),
            end,
        })
    }
}

/// Resolves when any receiver sees a change (never, if there are none).
/// When a resting connection last moved a byte: bytes can move between
/// the watchdog's ask to park and the mover's stop (`transfers` no longer
/// what the watchdog last saw), and then the last traffic was just now,
/// not at the watchdog's last change.
fn rest_since(transfers: u64, seen: u64, last_change: Instant) -> Instant {
    if transfers != seen {
        Instant::now()
    } else {
        last_change
    }
}

async fn any_changed(kills: &mut [watch::Receiver<u64>]) {
    let mut futs: Vec<_> = kills.iter_mut().map(|k| Box::pin(k.changed())).collect();
    std::future::poll_fn(|cx| {
        for f in futs.iter_mut() {
            if f.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    //! The relay between two real loopback connections (it needs TCP:
    //! half-close, SO_LINGER and splice(2) act on sockets).
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair: (the test's end, the end the relay takes).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    fn set(splice: bool, idle: Duration) -> Settings {
        Settings {
            splice,
            idle,
            park_after: None,
        }
    }

    /// A relay of a new connection between two fresh pairs, in a task of
    /// its own: (the client's end, the server's end, the task).
    async fn spawn_new(set: Settings) -> (TcpStream, TcpStream, tokio::task::JoinHandle<Relayed>) {
        let (client, c_side) = pair().await;
        let (server, s_side) = pair().await;
        let r = tokio::spawn(async move {
            relay(c_side, s_side, set, Progress::new(Instant::now()), &mut []).await
        });
        (client, server, r)
    }

    /// A relay of a new connection that is to end (not rest).
    async fn run(
        client: TcpStream,
        server: TcpStream,
        set: Settings,
        kills: &mut [watch::Receiver<u64>],
    ) -> Outcome {
        match relay(client, server, set, Progress::new(Instant::now()), kills).await {
            Relayed::Ended(out) => out,
            Relayed::Resting(_) => panic!("the relay rested"),
        }
    }

    #[tokio::test]
    async fn a_rest_after_late_bytes_dates_from_the_stop_not_the_last_tick() {
        let tick = Instant::now() - Duration::from_secs(30);
        assert_eq!(rest_since(7, 7, tick), tick, "nothing moved since the tick");
        let late = rest_since(8, 7, tick);
        assert!(
            late.elapsed() < Duration::from_secs(5),
            "bytes moved after the ask: now"
        );
    }

    #[tokio::test]
    async fn bytes_go_both_ways_and_half_close_is_passed_on() {
        for splice in [false, true] {
            let (mut client, c_side) = pair().await;
            let (mut server, s_side) = pair().await;
            let relay = tokio::spawn(async move {
                run(c_side, s_side, set(splice, Duration::from_secs(5)), &mut []).await
            });
            // A bulk upload (splice takes over after the first full read),
            // then the client's half-close; the server still answers.
            let up: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
            client.write_all(&up).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert!(got == up, "splice {splice}: the upload arrived changed");
            server.write_all(b"pong").await.unwrap();
            drop(server);
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"pong");
            let out = relay.await.unwrap();
            assert_eq!(out.end, End::Done);
            assert_eq!((out.to_server, out.to_client), (1_000_000, 4));
        }
    }

    thread_local! {
        /// Copy buffers made on this thread.
        pub(super) static MADE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Between exchanges a connection holds no copy buffer: every buffer
    /// made is back in the thread's spares (one thread here), and comes
    /// out again for the next exchange.
    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_connection_holds_no_buffer() {
        let spares = || SPARES.with(|s| s.borrow().len());
        let made = || MADE.with(|m| m.get());
        let (mut client, c_side) = pair().await;
        let (mut server, s_side) = pair().await;
        let relay = tokio::spawn(async move {
            run(c_side, s_side, set(false, Duration::from_secs(5)), &mut []).await
        });
        for round in 0..3 {
            client.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(b"pong").await.unwrap();
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"pong");
            // Let the relay see that both sides are drained.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert!(made() >= 1);
            assert_eq!(spares(), made(), "round {round}: every buffer is a spare");
        }
        drop((client, server));
        assert_eq!(relay.await.unwrap().end, End::Done);
    }

    #[tokio::test]
    async fn an_idle_relay_ends_and_a_kill_ends_it_at_once() {
        let (_client, c_side) = pair().await;
        let (_server, s_side) = pair().await;
        let out = run(
            c_side,
            s_side,
            set(false, Duration::from_millis(100)),
            &mut [],
        )
        .await;
        assert_eq!(out.end, End::Idle);
        let (_client, c_side) = pair().await;
        let (_server, s_side) = pair().await;
        let (kill, rx) = watch::channel(0u64);
        let r = tokio::spawn(async move {
            let mut kills = [rx];
            run(
                c_side,
                s_side,
                set(false, Duration::from_secs(60)),
                &mut kills,
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        kill.send_replace(1);
        let out = tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .expect("killed at once")
            .unwrap();
        assert_eq!(out.end, End::Killed);
    }

    fn parking(idle: Duration, after: Duration) -> Settings {
        Settings {
            splice: false,
            idle,
            park_after: Some(after),
        }
    }

    /// One ping from the client, one pong from the server, through a relay.
    async fn ping_pong(client: &mut TcpStream, server: &mut TcpStream) {
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
    }

    #[tokio::test]
    async fn an_idle_relay_rests_and_a_later_relay_goes_on_from_there() {
        let (mut client, c_side) = pair().await;
        let (mut server, s_side) = pair().await;
        let set = parking(Duration::from_secs(10), Duration::from_millis(50));
        let opened = Instant::now();
        let r = tokio::spawn(async move {
            relay(c_side, s_side, set, Progress::new(opened), &mut []).await
        });
        ping_pong(&mut client, &mut server).await;
        let answered = Instant::now();
        let rest = match tokio::time::timeout(Duration::from_secs(5), r).await {
            Ok(Ok(Relayed::Resting(rest))) => rest,
            other => panic!("no rest: {other:?}"),
        };
        let p = rest.progress;
        assert_eq!((p.to_server, p.to_client), (4, 4));
        assert!(p.last >= opened && p.last <= answered + Duration::from_millis(100));
        // The client speaks while nobody relays: nothing is lost.
        client.write_all(b"more").await.unwrap();
        let r = tokio::spawn(async move {
            let mut kills = [];
            relay(rest.client, rest.server, set, p, &mut kills).await
        });
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"more");
        ping_pong(&mut client, &mut server).await;
        drop((client, server));
        match r.await.unwrap() {
            Relayed::Ended(out) => {
                assert_eq!(out.end, End::Done);
                assert_eq!((out.to_server, out.to_client), (12, 8), "counted on");
            }
            Relayed::Resting(_) => panic!("rested instead of ending"),
        }
    }

    #[tokio::test]
    async fn a_stalled_write_or_a_half_close_never_rests() {
        // The server reads nothing: bytes wait in the relay's buffer.
        let set = parking(Duration::from_secs(10), Duration::from_millis(30));
        let (mut client, mut server, r) = spawn_new(set).await;
        let up: Vec<u8> = (0..8_000_000u32).map(|i| (i % 253) as u8).collect();
        let sent = up.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!r.is_finished(), "rested with bytes in flight");
        let mut got = vec![0u8; up.len()];
        server.read_exact(&mut got).await.unwrap();
        assert!(got == up, "the upload arrived changed");
        drop(writer.await.unwrap());
        r.abort();
        // Half-closed by the client: one direction is over, so it never
        // rests, and the server's late answer still arrives.
        let (mut client, mut server, r) = spawn_new(set).await;
        client.shutdown().await.unwrap();
        assert_eq!(server.read(&mut [0u8; 8]).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!r.is_finished(), "a half-closed connection rested");
        server.write_all(b"late").await.unwrap();
        drop(server);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"late");
        match r.await.unwrap() {
            Relayed::Ended(out) => assert_eq!(out.end, End::Done),
            Relayed::Resting(_) => panic!("rested"),
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_spliced_direction_rests_once_its_pipe_is_empty() {
        let set = Settings {
            splice: true,
            ..parking(Duration::from_secs(10), Duration::from_millis(50))
        };
        let (mut client, mut server, r) = spawn_new(set).await;
        // A bulk upload: the first full read switches it to splice(2).
        let up: Vec<u8> = (0..2_000_000u32).map(|i| (i % 249) as u8).collect();
        let sent = up.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client
        });
        let mut got = vec![0u8; up.len()];
        server.read_exact(&mut got).await.unwrap();
        assert!(got == up, "the upload arrived changed");
        let mut client = writer.await.unwrap();
        let rest = match tokio::time::timeout(Duration::from_secs(5), r).await {
            Ok(Ok(Relayed::Resting(rest))) => rest,
            other => panic!("a spliced connection did not rest: {other:?}"),
        };
        assert_eq!(rest.progress.to_server, 2_000_000);
        // Relayed on (copy mode again), both ways.
        let p = rest.progress;
        let r = tokio::spawn(async move { relay(rest.client, rest.server, set, p, &mut []).await });
        ping_pong(&mut client, &mut server).await;
        drop((client, server));
        match r.await.unwrap() {
            Relayed::Ended(out) => assert_eq!(out.to_server, 2_000_004),
            Relayed::Resting(_) => panic!("rested instead of ending"),
        }
    }

    #[tokio::test]
    async fn a_reset_on_one_side_resets_the_other() {
        let (client, c_side) = pair().await;
        let (mut server, s_side) = pair().await;
        let r = tokio::spawn(async move {
            run(c_side, s_side, set(false, Duration::from_secs(5)), &mut []).await
        });
        // The client resets (SO_LINGER 0, then close).
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        let out = r.await.unwrap();
        assert_eq!(out.end, End::ClientError(io::ErrorKind::ConnectionReset));
        let mut b = [0u8; 8];
        let e = server.read(&mut b).await;
        assert!(
            matches!(&e, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "the server sees a reset, not a clean end: {e:?}"
        );
    }
}
