//! UDP listeners: each client address is a flow bound to one server (chosen
//! with the listener's mode and affinity) through its own connected socket;
//! replies from the server go back to that client from the listener's
//! address. A flow with no traffic for the idle timeout expires. When its
//! server goes down or is drained, the flow's next datagram picks again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use convoy_core::clock;

use convoy_core::{ListenerRuntime, ServerState};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{Context, DataEvent};

struct Flow {
    upstream: Arc<UdpSocket>,
    /// `clock::now_ms()` of the last datagram either way.
    last: AtomicU64,
    /// Datagrams sent to the server (for `responses`).
    sent: AtomicU64,
    /// Ends the flow's reply task (`responses = 0`).
    end: tokio::sync::Notify,
    server: Arc<ServerState>,
    _guard: convoy_core::state::ConnGuard,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>;

/// Binds one UDP socket.
pub fn bind(sa: SocketAddr) -> std::io::Result<Arc<UdpSocket>> {
    let domain = if sa.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, None)?;
    if sa.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&sa.into())
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {sa}: {e}")))?;
    Ok(Arc::new(UdpSocket::from_std(s.into())?))
}

/// Serves one bound UDP socket until `stop` changes to true.
pub async fn serve(
    ctx: Context,
    listener: Arc<ListenerRuntime>,
    socket: Arc<UdpSocket>,
    mut stop: watch::Receiver<bool>,
) {
    let flows: Flows = Arc::new(Mutex::new(HashMap::new()));
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors surface here on some systems; not fatal.
                    debug!(listener = %listener.cfg.name, error = %e, "udp receive error");
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        // Counted as sent under the map's lock: a flow that ends after its
        // answers (`responses`) decides under the same lock, so it never
        // ends with a datagram still expecting one.
        let existing = flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .inspect(|f| {
                f.sent.fetch_add(1, Ordering::Relaxed);
            })
            .cloned();
        let flow = match existing {
            Some(f) if f.server.is_eligible() => f,
            old => {
                if let Some(old) = old {
                    flows
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&peer);
                    debug!(server = %old.server.name, client = %peer, "flow moved off an unavailable server");
                }
                match new_flow(&ctx, &listener, &socket, &flows, peer, &stop).await {
                    Some(f) => {
                        f.sent.fetch_add(1, Ordering::Relaxed);
                        f
                    }
                    None => continue,
                }
            }
        };
        if let Err(e) = flow.upstream.send(&buf[..n]).await {
            if convoy_core::local::note(&e, "UDP send to a server") {
                continue;
            }
            let _ = ctx.events.send(DataEvent::Failure {
                server: Arc::clone(&flow.server),
                reason: format!("udp send: {e}"),
            });
        } else {
            flow.server.add_bytes(n as u64, 0);
            flow.last.store(clock::now_ms(), Ordering::Relaxed);
            if listener.cfg.responses == Some(0) {
                // One-way (syslog): nothing to wait for.
                flow.end.notify_one();
                let mut map = flows.lock().unwrap_or_else(|e| e.into_inner());
                if map.get(&peer).is_some_and(|f| Arc::ptr_eq(f, &flow)) {
                    map.remove(&peer);
                }
            }
        }
    }
    flows.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

async fn new_flow(
    ctx: &Context,
    l: &Arc<ListenerRuntime>,
    socket: &Arc<UdpSocket>,
    flows: &Flows,
    peer: SocketAddr,
    stop: &watch::Receiver<bool>,
) -> Option<Arc<Flow>> {
    if !l.admit() {
        if l.refused_log.allow() {
            warn!(event = "flow_refused", listener = %l.cfg.name, client = %peer, reason = "max_connections", refused_total = l.counters().refused);
        }
        return None;
    }
    let snap = ctx.snapshot.load();
    let chosen = snap
        .pools
        .get(&l.cfg.pool)
        .and_then(|pool| l.choose(pool, peer.ip(), &[]).ok().map(|i| (pool, i)));
    let Some((pool, idx)) = chosen else {
        l.count_failed();
        l.release();
        if l.failed_log.allow() {
            info!(event = "no_server", listener = %l.cfg.name, client = %peer, failed_total = l.counters().failed);
        }
        return None;
    };
    let entry = &pool.servers[idx];
    let mut addr = entry.cfg.address.0;
    if l.cfg.same_port {
        if let Ok(local) = socket.local_addr() {
            addr.set_port(local.port());
        }
    }
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let up = match UdpSocket::bind(bind).await {
        Ok(u) => u,
        Err(e) => {
            if !convoy_core::local::note(&e, "UDP socket for a flow") {
                warn!(error = %e, "cannot open a UDP socket for a flow");
            }
            l.release();
            return None;
        }
    };
    if let Err(e) = up.connect(addr).await {
        l.release();
        if convoy_core::local::note(&e, "UDP flow to a server") {
            return None;
        }
        let _ = ctx.events.send(DataEvent::Failure {
            server: Arc::clone(&entry.state),
            reason: format!("udp connect: {e}"),
        });
        return None;
    }
    let flow = Arc::new(Flow {
        upstream: Arc::new(up),
        last: AtomicU64::new(clock::now_ms()),
        sent: AtomicU64::new(0),
        end: tokio::sync::Notify::new(),
        server: Arc::clone(&entry.state),
        _guard: entry.state.open(),
    });
    flows
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(peer, Arc::clone(&flow));
    let idle = l.cfg.idle_timeout().get();
    let (socket, flows, l2, f2) = (
        Arc::clone(socket),
        Arc::clone(flows),
        Arc::clone(l),
        Arc::clone(&flow),
    );
    let mut stop = stop.clone();
    let events = ctx.events.clone();
    let mut kill = ctx.kill.clone();
    let mut server_kill = entry.state.kill_signal();
    let mut listener_kill = l.kill_signal();
    kill.mark_unchanged();
    server_kill.mark_unchanged();
    listener_kill.mark_unchanged();
    let responses = l.cfg.responses.map(u64::from);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        let mut answers = 0u64;
        loop {
            let since = clock::now_ms().saturating_sub(f2.last.load(Ordering::Relaxed));
            let wait = idle.saturating_sub(Duration::from_millis(since));
            let r = tokio::select! {
                r = tokio::time::timeout(wait, f2.upstream.recv(&mut buf)) => r,
                _ = f2.end.notified() => break,
                _ = stop.wait_for(|s| *s) => break,
                _ = kill.changed() => break,
                _ = server_kill.changed() => break,
                _ = listener_kill.changed() => break,
            };
            match r {
                Ok(Ok(n)) => {
                    f2.server.record_success();
                    f2.server.add_bytes(0, n as u64);
                    f2.last.store(clock::now_ms(), Ordering::Relaxed);
                    if socket.send_to(&buf[..n], peer).await.is_err() {
                        break;
                    }
                    answers += 1;
                    if let Some(r) = responses {
                        let mut map = flows.lock().unwrap_or_else(|e| e.into_inner());
                        if answers >= r * f2.sent.load(Ordering::Relaxed) {
                            // Every datagram got its answers: the flow
                            // ends (the next datagram opens a new one).
                            if map.get(&peer).is_some_and(|f| Arc::ptr_eq(f, &f2)) {
                                map.remove(&peer);
                            }
                            break;
                        }
                    }
                }
                // ECONNREFUSED from an ICMP port unreachable: the server
                // is not listening. A passive failure signal.
                Ok(Err(e)) => {
                    debug!(server = %f2.server.name, error = %e, "udp flow error");
                    let _ = events.send(DataEvent::Failure {
                        server: Arc::clone(&f2.server),
                        reason: format!("udp receive: {e}"),
                    });
                    break;
                }
                Err(_) => {
                    // Expire only if the client has not sent either.
                    let since = clock::now_ms().saturating_sub(f2.last.load(Ordering::Relaxed));
                    if Duration::from_millis(since) >= idle {
                        debug!(server = %f2.server.name, client = %peer, "udp flow expired");
                        break;
                    }
                }
            }
        }
        let mut map = flows.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&peer).is_some_and(|f| Arc::ptr_eq(f, &f2)) {
            map.remove(&peer);
        }
        drop(map);
        l2.release();
    });
    Some(flow)
}
