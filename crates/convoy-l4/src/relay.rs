//! Relays bytes both ways between a client and a server connection until
//! both directions end, with half-close propagation (EOF on one side becomes
//! `shutdown(SHUT_WR)` on the other), an idle timeout over both directions,
//! and external kill signals (drain timeout, node stop). Uses splice(2) on
//! Linux, a buffered copy elsewhere or when disabled.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

struct Dir<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    src_side: Side,
    dst_side: Side,
    bytes: AtomicU64,
}

/// An error and the side it came from.
type SideError = (Side, io::Error);

async fn pump(
    d: &Dir<'_>,
    splice: bool,
    activity: &AtomicU64,
    start: Instant,
) -> Result<(), SideError> {
    let (src_side, dst_side) = (d.src_side, d.dst_side);
    let at_src = |e| (src_side, e);
    let at_dst = |e| (dst_side, e);
    #[cfg(target_os = "linux")]
    if splice {
        // Wait for data before creating the pipe: idle connections hold no
        // pipe descriptors.
        d.src.readable().await.map_err(at_src)?;
        let p = crate::splice::Pipe::new().map_err(at_dst)?;
        loop {
            let n = p.fill(d.src).await.map_err(at_src)?;
            if n == 0 {
                break;
            }
            p.drain(d.dst, n).await.map_err(at_dst)?;
            d.bytes.fetch_add(n as u64, Ordering::Relaxed);
            activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        return shutdown_write(d.dst).map_err(at_dst);
    }
    let _ = splice;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        d.src.readable().await.map_err(at_src)?;
        let n = match d.src.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(at_src(e)),
        };
        if n == 0 {
            break;
        }
        let mut off = 0;
        while off < n {
            d.dst.writable().await.map_err(at_dst)?;
            match d.dst.try_write(&buf[off..n]) {
                Ok(m) => off += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(at_dst(e)),
            }
        }
        d.bytes.fetch_add(n as u64, Ordering::Relaxed);
        activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    shutdown_write(d.dst).map_err(at_dst)
}

fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(s).shutdown(Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        r => r,
    }
}

/// Relays until both directions end, the idle timeout passes with no
/// traffic, or one of `kills` changes.
pub async fn relay(
    client: &TcpStream,
    server: &TcpStream,
    splice: bool,
    idle: Duration,
    kills: &mut [watch::Receiver<u64>],
) -> Outcome {
    let start = Instant::now();
    let activity = AtomicU64::new(0);
    let up = Dir {
        src: client,
        dst: server,
        src_side: Side::Client,
        dst_side: Side::Server,
        bytes: AtomicU64::new(0),
    };
    let down = Dir {
        src: server,
        dst: client,
        src_side: Side::Server,
        dst_side: Side::Client,
        bytes: AtomicU64::new(0),
    };
    let both = async {
        tokio::try_join!(
            pump(&up, splice, &activity, start),
            pump(&down, splice, &activity, start)
        )
    };
    let idle_watch = async {
        loop {
            let last = Duration::from_millis(activity.load(Ordering::Relaxed));
            let deadline = start + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            sleep_until(deadline).await;
        }
    };
    let killed = async {
        let waits = kills.iter_mut().map(|k| Box::pin(k.changed()));
        if waits.len() == 0 {
            std::future::pending::<()>().await;
        }
        let _ = futures_select_any(waits.collect()).await;
    };
    let end = tokio::select! {
        r = both => match r {
            Ok(_) => End::Done,
            Err((Side::Client, e)) => End::ClientError(e.kind()),
            Err((Side::Server, e)) => End::ServerError(e.kind()),
        },
        _ = idle_watch => End::Idle,
        _ = killed => End::Killed,
    };
    if matches!(end, End::ClientError(io::ErrorKind::ConnectionReset)) {
        let _ = socket2::SockRef::from(server).set_linger(Some(Duration::ZERO));
    }
    if matches!(end, End::ServerError(io::ErrorKind::ConnectionReset)) {
        let _ = socket2::SockRef::from(client).set_linger(Some(Duration::ZERO));
    }
    Outcome {
        to_server: up.bytes.load(Ordering::Relaxed),
        to_client: down.bytes.load(Ordering::Relaxed),
        end,
    }
}

/// Resolves when the first of `futs` resolves.
async fn futures_select_any<F: std::future::Future + Unpin>(mut futs: Vec<F>) {
    std::future::poll_fn(|cx| {
        for f in futs.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}
