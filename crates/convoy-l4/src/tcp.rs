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
use convoy_core::ListenerRuntime;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::relay::{relay, End};
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

/// Runs the accept loop of one bound socket until `stop` changes to true.
pub async fn serve(
    ctx: Context,
    listener: Arc<ListenerRuntime>,
    socket: Arc<TcpListener>,
    stop: watch::Receiver<bool>,
) {
    let l = Arc::clone(&listener);
    accept_loop(listener, socket, stop, move |client, peer, admitted| {
        let (ctx, l) = (ctx.clone(), Arc::clone(&l));
        async move {
            let _admitted = admitted;
            handle(&ctx, &l, client, peer).await
        }
    })
    .await;
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

/// One client connection: a server, the connect, the PROXY header, the
/// relay, the accounting. (A plain function returning an `async move`
/// block: an `async fn` keeps its arguments twice in the future every
/// connection carries.)
// Not an `async fn` on purpose: see above.
#[allow(clippy::manual_async_fn)]
fn handle<'a>(
    ctx: &'a Context,
    l: &'a ListenerRuntime,
    client: TcpStream,
    peer: SocketAddr,
) -> impl std::future::Future<Output = ()> + Send + 'a {
    async move {
        let opened = tokio::time::Instant::now();
        let _ = client.set_nodelay(true);
        // The address the client reached (not the listening one, which may be
        // a wildcard): the PROXY header's destination and, with `same_port`,
        // the port to use on the server.
        let local = client.local_addr().ok();
        let snap = ctx.snapshot.load_full();
        let Some(pool) = snap.pools.get(&l.cfg.pool) else {
            l.count_failed();
            return;
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
                    return;
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
                        return;
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
                return;
            }
        }
        let mut kills = [ctx.kill.clone(), entry.state.kill_signal(), l.kill_signal()];
        for k in kills.iter_mut() {
            k.mark_unchanged();
        }
        let out = relay(
            client,
            server,
            ctx.splice,
            l.cfg.idle_timeout().get(),
            &mut kills,
        )
        .await;
        entry.state.add_bytes(out.to_server, out.to_client);
        // Passive signals: a reset before any response byte counts as a failed
        // connection; any response proves the server alive.
        match out.end {
            End::ServerError(io::ErrorKind::ConnectionReset) if out.to_client == 0 => {
                let _ = ctx.events.send(DataEvent::Failure {
                    server: Arc::clone(&entry.state),
                    reason: "connection reset by server before any response".into(),
                });
            }
            // Any response, or a clean close both ways (protocols where the
            // server never answers, e.g. syslog), proves the server alive.
            _ if out.to_client > 0 || out.end == End::Done => entry.state.record_success(),
            _ => {}
        }
        debug!(listener = %l.cfg.name, server = %entry.cfg.name, client = %peer, to_server = out.to_server, to_client = out.to_client, end = ?out.end, "connection closed");
        if let Some(log) = &ctx.access {
            log.write(format!(
            "{{\"time_ms\":{},\"kind\":\"tcp\",\"listener\":{},\"client\":\"{}\",\"server\":{},\"duration_ms\":{},\"bytes_in\":{},\"bytes_out\":{},\"end\":\"{:?}\",\"retries\":{}}}",
            convoy_core::access::epoch_ms(),
            json_str(&l.cfg.name),
            peer,
            json_str(&entry.cfg.name),
            opened.elapsed().as_millis(),
            out.to_server,
            out.to_client,
            out.end,
            tried.len(),
        ));
        }
        drop(guard);
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
