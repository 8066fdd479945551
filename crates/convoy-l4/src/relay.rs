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

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{ready, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
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
#[derive(Default)]
struct Counters {
    to_server: AtomicU64,
    to_client: AtomicU64,
    /// Transfers so far (both ways); the idle watchdog samples it.
    transfers: AtomicU64,
}

struct Dir<'a> {
    src: ReadHalf<'a>,
    dst: WriteHalf<'a>,
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
/// connection holds no buffer and no pipe.
async fn pump(mut d: Dir<'_>, splice: bool, transfers: &AtomicU64) -> Result<(), SideError> {
    let (src_side, dst_side) = (d.src_side, d.dst_side);
    let at_src = |e| (src_side, e);
    let at_dst = |e| (dst_side, e);
    let dst: &TcpStream = d.dst.as_ref();
    let mut held: Option<Vec<u8>> = None;
    loop {
        // A buffer is taken only once the source is readable, and given
        // back if the read finds nothing after all. A read shorter than
        // the buffer tells tokio the socket is drained (edge-triggered
        // epoll): the next wait waits, with no read that would only say
        // EAGAIN.
        let n = poll_fn(|cx| {
            ready!(d.src.as_ref().poll_read_ready(cx))?;
            let b = held.get_or_insert_with(take_buf);
            let mut rb = ReadBuf::new(&mut b[..]);
            match Pin::new(&mut d.src).poll_read(cx, &mut rb) {
                Poll::Ready(r) => Poll::Ready(r.map(|()| rb.filled().len())),
                Poll::Pending => {
                    put_buf(held.take().unwrap_or_default());
                    Poll::Pending
                }
            }
        })
        .await;
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
            match dst.try_write(&buf[off..n]) {
                Ok(m) => off += m,
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
    Box::pin(splice_rest(d.src.as_ref(), dst, d.bytes, transfers))
        .await
        .map_err(|(s, e)| (if s { src_side } else { dst_side }, e))?;
    shutdown_write(dst).map_err(at_dst)
}

/// The rest of a bulk direction, through a pipe with splice(2), until the
/// source's end of stream; an error says whether the source had it.
#[cfg(target_os = "linux")]
async fn splice_rest(
    src: &TcpStream,
    dst: &TcpStream,
    bytes: &AtomicU64,
    transfers: &AtomicU64,
) -> Result<(), (bool, io::Error)> {
    let p = crate::splice::Pipe::new().map_err(|e| (false, e))?;
    loop {
        let n = p.fill(src).await.map_err(|e| (true, e))?;
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

/// Moves bytes both ways until both directions end or one fails; on a reset
/// from one side, resets the other (SO_LINGER 0) rather than closing it
/// gracefully, so the peer learns the exchange was cut. (A plain function
/// returning an `async move` block: an `async fn` keeps its arguments
/// twice in the future every connection's mover task carries.)
// Not an `async fn` on purpose: see above.
#[allow(clippy::manual_async_fn)]
fn mover(
    mut client: TcpStream,
    mut server: TcpStream,
    splice: bool,
    c: Arc<Counters>,
) -> impl Future<Output = End> + Send {
    async move {
        let (client_r, client_w) = client.split();
        let (server_r, server_w) = server.split();
        let up = Dir {
            src: client_r,
            dst: server_w,
            src_side: Side::Client,
            dst_side: Side::Server,
            bytes: &c.to_server,
        };
        let down = Dir {
            src: server_r,
            dst: client_w,
            src_side: Side::Server,
            dst_side: Side::Client,
            bytes: &c.to_client,
        };
        let r = tokio::try_join!(
            pump(up, splice, &c.transfers),
            pump(down, splice, &c.transfers)
        );
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
        end
    }
}

/// Relays until both directions end, the idle timeout passes with no
/// traffic, or one of `kills` changes. Takes both streams and closes them.
/// (A plain function returning an `async move` block, as [`mover`].)
// Not an `async fn` on purpose: see mover.
#[allow(clippy::manual_async_fn)]
pub fn relay<'a>(
    client: TcpStream,
    server: TcpStream,
    splice: bool,
    idle: Duration,
    kills: &'a mut [watch::Receiver<u64>],
) -> impl Future<Output = Outcome> + Send + 'a {
    async move {
        let counters = Arc::new(Counters::default());
        let mut task = tokio::spawn(mover(client, server, splice, Arc::clone(&counters)));
        // The watchdog wakes every quarter of the idle timeout and notes when
        // the transfer count last moved: an idle connection closes between 1×
        // and 1.25× the idle timeout after its last byte.
        let step = (idle / 4).max(Duration::from_millis(10));
        let mut seen = 0;
        let mut last_change = Instant::now();
        let mut next = last_change + step;
        let end = loop {
            tokio::select! {
                r = &mut task => break r.unwrap_or(End::Killed),
                _ = sleep_until(next) => {
                    let now = counters.transfers.load(Ordering::Relaxed);
                    if now != seen {
                        seen = now;
                        last_change = Instant::now();
                    } else if last_change.elapsed() >= idle {
                        task.abort();
                        break End::Idle;
                    }
                    next = Instant::now() + step;
                }
                _ = any_changed(kills) => {
                    task.abort();
                    break End::Killed;
                }
            }
        };
        Outcome {
            to_server: counters.to_server.load(Ordering::Relaxed),
            to_client: counters.to_client.load(Ordering::Relaxed),
            end,
        }
    }
}

/// Resolves when any receiver sees a change (never, if there are none).
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

    #[tokio::test]
    async fn bytes_go_both_ways_and_half_close_is_passed_on() {
        for splice in [false, true] {
            let (mut client, c_side) = pair().await;
            let (mut server, s_side) = pair().await;
            let relay = tokio::spawn(relay(
                c_side,
                s_side,
                splice,
                Duration::from_secs(5),
                &mut [],
            ));
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
        let relay = tokio::spawn(relay(
            c_side,
            s_side,
            false,
            Duration::from_secs(5),
            &mut [],
        ));
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
        let out = relay(c_side, s_side, false, Duration::from_millis(100), &mut []).await;
        assert_eq!(out.end, End::Idle);
        let (_client, c_side) = pair().await;
        let (_server, s_side) = pair().await;
        let (kill, rx) = watch::channel(0u64);
        let r = tokio::spawn(async move {
            let mut kills = [rx];
            relay(c_side, s_side, false, Duration::from_secs(60), &mut kills).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        kill.send_replace(1);
        let out = tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .expect("killed at once")
            .unwrap();
        assert_eq!(out.end, End::Killed);
    }

    #[tokio::test]
    async fn a_reset_on_one_side_resets_the_other() {
        let (client, c_side) = pair().await;
        let (mut server, s_side) = pair().await;
        let r = tokio::spawn(relay(
            c_side,
            s_side,
            false,
            Duration::from_secs(5),
            &mut [],
        ));
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
