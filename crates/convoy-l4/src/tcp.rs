//! TCP listeners: the accept loop (with `max_connections` and back-off when
//! descriptors run out) and the per-connection path: choose a server,
//! connect with a timeout, on failure try the next server so the client sees
//! no error while any healthy server remains, optionally send the PROXY
//! header, then relay.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use convoy_config::ProxyProtocol;
use convoy_core::listener::NoServer;
use convoy_core::state::ConnGuard;
use convoy_core::ListenerRuntime;
use std::os::fd::{AsFd, BorrowedFd};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::park::{Lot, Wake, Watcher};
use crate::relay::{relay, End, Progress, Relayed, Settings};
use crate::{Context, DataEvent};

/// Binds one listening socket (SO_REUSEADDR, no SO_REUSEPORT: a second
/// process on the same address is an error, not a silent traffic split).
pub fn bind(sa: SocketAddr) -> io::Result<Arc<TcpListener>> {
    let domain = if sa.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    if sa.is_ipv6() {
        // `[::]` means IPv6 only (as nginx does); IPv4 needs its own listener.
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&sa.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {sa}: {e}")))?;
    sock.listen(1024)?;
    Ok(Arc::new(TcpListener::from_std(sock.into())?))
}

/// What a TCP listener's connections share.
struct Shared {
    ctx: Context,
    l: Arc<ListenerRuntime>,
    /// Where idle connections are parked, and after how long (`None`:
    /// `park_after = "0s"`, or the lot could not be made).
    lot: Option<(Lot<Parked>, Duration)>,
}

/// Runs the accept loop of one bound socket until `stop` changes to true.
/// Connections idle for the listener's `park_after` are parked
/// ([`crate::park`]) until traffic comes back, their idle timeout passes
/// or a kill closes them.
pub async fn serve(
    ctx: Context,
    listener: Arc<ListenerRuntime>,
    socket: Arc<TcpListener>,
    stop: watch::Receiver<bool>,
) {
    let (lot, watcher) = crate::park::for_listener(&listener.cfg.name, listener.cfg.park_after());
    let sh = Arc::new(Shared {
        ctx,
        l: Arc::clone(&listener),
        lot,
    });
    // Stops the lot (parked connections handed back, relayed on) when
    // this ends, however it ends.
    let _lot_guard = watcher.and_then(|w| start_lot(&sh, w, stop.clone()));
    accept_loop(listener, socket, stop, move |client, peer, admitted| {
        let sh = Arc::clone(&sh);
        async move {
            if let Some((conn, client, server)) = open(&sh.ctx, &sh.l, client, peer).await {
                run(sh, conn, client, server, admitted, true).await;
            }
        }
    })
    .await;
}

/// A relayed connection: what it needs to go on and to be accounted for
/// at its end.
struct Conn {
    peer: SocketAddr,
    opened: Instant,
    /// Servers tried before this one.
    retries: u32,
    /// Counted on its server while it lasts.
    guard: ConnGuard,
    /// Node stop, its server's kill, its listener's kill.
    kills: [watch::Receiver<u64>; 3],
    progress: Progress,
}

impl Conn {
    /// One of its kill signals changed (or its sender is gone).
    fn killed(&self) -> bool {
        self.kills.iter().any(|k| k.has_changed().unwrap_or(true))
    }
}

/// An idle TCP connection out of its task: both sockets (out of tokio's
/// reactor: its registration of each would take about 0.35 KB) and its
/// record.
pub(crate) struct Parked {
    conn: Conn,
    client: std::net::TcpStream,
    server: std::net::TcpStream,
    admitted: Admitted,
    _counted: Counted,
}

impl crate::park::Sockets for Parked {
    fn sockets(&self) -> (BorrowedFd<'_>, Option<BorrowedFd<'_>>) {
        (self.client.as_fd(), Some(self.server.as_fd()))
    }
}

/// One of a listener's parked connections, counted in its
/// `parked_connections` until dropped.
pub struct Counted(Arc<ListenerRuntime>);

impl Counted {
    /// Counts one more parked connection of `l`.
    pub fn new(l: &Arc<ListenerRuntime>) -> Counted {
        l.count_parked();
        Counted(Arc::clone(l))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.count_unparked();
    }
}

/// Stops a lot when dropped.
pub struct StopLot<T: Send + 'static>(pub Lot<T>);

impl<T: Send + 'static> Drop for StopLot<T> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Starts the lot's watcher task (a connection it hands back is relayed on, in
/// a task on this runtime, or accounted for if its idle timeout passed)
/// and the task that closes parked connections whose kill signal changed.
fn start_lot(
    sh: &Arc<Shared>,
    watcher: Watcher<Parked>,
    stop: watch::Receiver<bool>,
) -> Option<StopLot<Parked>> {
    let (lot, _) = sh.lot.clone()?;
    let rt = tokio::runtime::Handle::current();
    let sh2 = Arc::clone(sh);
    let resumed = move |p: Parked, why: Wake| {
        rt.spawn(resume(Arc::clone(&sh2), p, why));
    };
    if let Err(e) = watcher.spawn(resumed) {
        warn!(listener = %sh.l.cfg.name, error = %e, "idle connections will not be parked");
        lot.stop();
        return None;
    }
    let signals = vec![
        sh.ctx.kill.clone(),
        sh.l.kill_signal(),
        convoy_core::state::server_kills(),
    ];
    let (sh2, l) = (Arc::clone(sh), lot.clone());
    tokio::spawn(crate::park::on_signals(signals, stop, move || {
        for p in l.take_where(|p| p.conn.killed()) {
            finish(&sh2.ctx, &sh2.l, p.conn, End::Killed);
        }
    }));
    Some(StopLot(lot))
}

/// A parked connection handed back: relayed on from where it was, or
/// closed if its idle timeout passed.
async fn resume(sh: Arc<Shared>, p: Parked, why: Wake) {
    let Parked {
        conn,
        client,
        server,
        admitted,
        _counted,
    } = p;
    drop(_counted);
    if why == Wake::Expired {
        return finish(&sh.ctx, &sh.l, conn, End::Idle);
    }
    let (client, server) = match (TcpStream::from_std(client), TcpStream::from_std(server)) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => {
            debug!(listener = %sh.l.cfg.name, error = %e, "a parked connection could not be watched again");
            return finish(&sh.ctx, &sh.l, conn, End::Killed);
        }
    };
    // Handed back by a stopping lot: relayed on here until it ends.
    Box::pin(run(
        sh,
        conn,
        client,
        server,
        admitted,
        why != Wake::Stopped,
    ))
    .await;
}

/// Relays a connection until it ends (then accounts for it); with `park`,
/// one idle for the park time is parked and the task ends. (A plain
/// function returning an `async move` block: see [`open`].)
// Not an `async fn` on purpose: see open.
#[allow(clippy::manual_async_fn)]
fn run(
    sh: Arc<Shared>,
    mut conn: Conn,
    mut client: TcpStream,
    mut server: TcpStream,
    mut admitted: Admitted,
    mut park: bool,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let idle = sh.l.cfg.idle_timeout().get();
        let end = loop {
            let set = Settings {
                splice: sh.ctx.splice,
                idle,
                park_after: sh.lot.as_ref().filter(|_| park).map(|(_, after)| *after),
            };
            let rest = match relay(client, server, set, conn.progress, &mut conn.kills).await {
                Relayed::Ended(out) => {
                    conn.progress.to_server = out.to_server;
                    conn.progress.to_client = out.to_client;
                    break out.end;
                }
                Relayed::Resting(rest) => rest,
            };
            conn.progress = rest.progress;
            let Some((lot, _)) = &sh.lot else {
                break End::Killed;
            };
            let parked = match (rest.client.into_std(), rest.server.into_std()) {
                (Ok(client), Ok(server)) => Parked {
                    conn,
                    client,
                    server,
                    admitted,
                    _counted: Counted::new(&sh.l),
                },
                (Err(e), _) | (_, Err(e)) => {
                    debug!(listener = %sh.l.cfg.name, error = %e, "an idle connection could not be parked");
                    break End::Killed;
                }
            };
            let deadline = parked.conn.progress.last + idle;
            // A kill signal seen now refuses it; one after finds it parked.
            let p = match lot.park_if(parked, deadline, |p| !p.conn.killed()) {
                Ok(()) => return,
                Err(p) => p,
            };
            let Parked {
                conn: c,
                client: cs,
                server: ss,
                admitted: a,
                _counted,
            } = p;
            (conn, admitted) = (c, a);
            if conn.killed() {
                break End::Killed;
            }
            // The lot takes no more (stopping): relayed on here.
            (client, server) = match (TcpStream::from_std(cs), TcpStream::from_std(ss)) {
                (Ok(c), Ok(s)) => (c, s),
                _ => break End::Killed,
            };
            park = false;
        };
        drop(admitted);
        finish(&sh.ctx, &sh.l, conn, end);
    }
}

/// A connection's place in its listener's limits (per client address,
/// total, node-wide), given back when it is dropped. The connection's
/// task holds it: the accept loop spawns the handler's future itself,
/// with no wrapper (an `async` wrapper that awaits a captured future
/// stores it twice: the task would double in size).
pub struct Admitted {
    listener: Arc<ListenerRuntime>,
    ip: std::net::IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.listener.release_from(self.ip);
    }
}

/// The accept loop every TCP-based listener (L4 and HTTP) runs on one
/// bound socket until `stop` changes to true. Accept errors (EMFILE,
/// ENFILE, ENOBUFS: descriptors run out) back off instead of spinning; a
/// client over the listener's limits (per address, total, node-wide) is
/// closed at once and logged at a limited rate; every other connection
/// runs `handle` in its own task, and its place in the limits is given
/// back when that ends.
pub async fn accept_loop<F, Fut>(
    listener: Arc<ListenerRuntime>,
    socket: Arc<TcpListener>,
    mut stop: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Admitted) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = socket.accept() => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (client, peer) = match accepted {
            Ok(c) => {
                backoff = Duration::from_millis(5);
                c
            }
            Err(e) => {
                if !convoy_core::local::note(&e, "accept") {
                    warn!(event = "accept_error", listener = %listener.cfg.name, error = %e, backoff_ms = backoff.as_millis() as u64);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(why) = listener.admit_from(peer.ip()) {
            if listener.refused_log.allow() {
                warn!(event = "connection_refused", listener = %listener.cfg.name, client = %peer, reason = why.as_str(), refused_total = listener.counters().refused);
            }
            drop(client);
            continue;
        }
        let admitted = Admitted {
            listener: Arc::clone(&listener),
            ip: peer.ip(),
        };
        tokio::spawn(handle(client, peer, admitted));
    }
    debug!(listener = %listener.cfg.name, "accept loop stopped");
}

/// A new client connection: a server, the connect, the PROXY header;
/// the connection to relay and both sockets, or `None` (closed, counted
/// and logged). (A plain function returning an `async move` block: an
/// `async fn` keeps its arguments twice in the future every connection
/// carries.)
// Not an `async fn` on purpose: see above.
#[allow(clippy::manual_async_fn)]
fn open<'a>(
    ctx: &'a Context,
    l: &'a ListenerRuntime,
    client: TcpStream,
    peer: SocketAddr,
) -> impl std::future::Future<Output = Option<(Conn, TcpStream, TcpStream)>> + Send + 'a {
    async move {
        let opened = Instant::now();
        let _ = client.set_nodelay(true);
        // The address the client reached (not the listening one, which may be
        // a wildcard): the PROXY header's destination and, with `same_port`,
        // the port to use on the server.
        let local = client.local_addr().ok();
        let snap = ctx.snapshot.load_full();
        let Some(pool) = snap.pools.get(&l.cfg.pool) else {
            l.count_failed();
            return None;
        };
        let mut tried: Vec<usize> = Vec::new();
        let (server_stream, idx) = loop {
            let idx = match l.choose(pool, peer.ip(), &tried) {
                Ok(i) => i,
                Err(why) => {
                    l.count_failed();
                    if l.failed_log.allow() {
                        let reason = match why {
                            NoServer::Disabled => "listener disabled",
                            NoServer::NoneAvailable => "no server available",
                        };
                        info!(event = "no_server", listener = %l.cfg.name, client = %peer, reason, tried = tried.len(), failed_total = l.counters().failed);
                    }
                    return None;
                }
            };
            let s = &pool.servers[idx];
            let mut addr = s.cfg.address.0;
            if let (true, Some(local)) = (l.cfg.same_port, local) {
                addr.set_port(local.port());
            }
            match connect(addr, l.cfg.connect_timeout.get()).await {
                Ok(stream) => break (stream, idx),
                Err(e) => {
                    if convoy_core::local::note(&e, "connect to a server") {
                        // This node is out of descriptors or ports: not the
                        // server's fault; the client's connection closes.
                        return None;
                    }
                    let _ = ctx.events.send(DataEvent::Failure {
                        server: Arc::clone(&s.state),
                        reason: format!("connect: {e}"),
                    });
                    debug!(listener = %l.cfg.name, server = %s.cfg.name, error = %e, "connect failed, trying another server");
                    tried.push(idx);
                }
            }
        };
        let entry = &pool.servers[idx];
        let guard = entry.state.open();
        let mut server = server_stream;
        if let (Some(pp), Some(local)) = (l.cfg.proxy_protocol, local) {
            let hdr = match pp {
                ProxyProtocol::V1 => crate::proxy_protocol::v1(peer, local),
                ProxyProtocol::V2 => crate::proxy_protocol::v2(peer, local),
            };
            if let Err(e) = server.write_all(&hdr).await {
                debug!(server = %entry.cfg.name, error = %e, "cannot send PROXY header");
                return None;
            }
        }
        let mut kills = [ctx.kill.clone(), entry.state.kill_signal(), l.kill_signal()];
        for k in kills.iter_mut() {
            k.mark_unchanged();
        }
        let conn = Conn {
            peer,
            opened,
            retries: tried.len() as u32,
            guard,
            kills,
            progress: Progress::new(opened),
        };
        Some((conn, client, server))
    }
}

/// A connection's end: its server's byte counts and passive health
/// signal, the debug and access log lines, and its place on the server
/// given back.
fn finish(ctx: &Context, l: &ListenerRuntime, conn: Conn, end: End) {
    let Progress {
        to_server,
        to_client,
        ..
    } = conn.progress;
    let state = conn.guard.server();
    state.add_bytes(to_server, to_client);
    // Passive signals: a reset before any response byte counts as a failed
    // connection; any response proves the server alive.
    match end {
        End::ServerError(io::ErrorKind::ConnectionReset) if to_client == 0 => {
            let _ = ctx.events.send(DataEvent::Failure {
                server: Arc::clone(state),
                reason: "connection reset by server before any response".into(),
            });
        }
        // Any response, or a clean close both ways (protocols where the
        // server never answers, e.g. syslog), proves the server alive.
        _ if to_client > 0 || end == End::Done => state.record_success(),
        _ => {}
    }
    debug!(listener = %l.cfg.name, server = %state.name, client = %conn.peer, to_server, to_client, end = ?end, "connection closed");
    if let Some(log) = &ctx.access {
        log.write(format!(
            "{{\"time_ms\":{},\"kind\":\"tcp\",\"listener\":{},\"client\":\"{}\",\"server\":{},\"duration_ms\":{},\"bytes_in\":{},\"bytes_out\":{},\"end\":\"{:?}\",\"retries\":{}}}",
            convoy_core::access::epoch_ms(),
            json_str(&l.cfg.name),
            conn.peer,
            json_str(&state.name),
            conn.opened.elapsed().as_millis(),
            to_server,
            to_client,
            end,
            conn.retries,
        ));
    }
}

/// A JSON string literal (names come from the config, but quote them
/// properly anyway).
fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_nodelay(true)?;
    match tokio::time::timeout(timeout, sock.connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}
