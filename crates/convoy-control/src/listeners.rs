//! The listeners the node runs: binding their sockets (reusing a running
//! listener's socket on the same address, or one inherited from the
//! process this one replaces), starting their accept or receive loops
//! with the response cache that goes with them, stopping them, and
//! giving them back the operator's state after a reload. Sockets are
//! `Arc`s shared with the loops, so a changed listener's new loops take
//! over the same sockets and no connection is refused in between.

use std::sync::Arc;

use convoy_config::{Listener, Protocol};
use convoy_core::control::{CmdError, CmdErrorKind, Reply};
use convoy_core::ListenerRuntime;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info};

use crate::error::{report, Error};
use crate::handover::Kind;
use crate::node::{Node, NodeState};

/// A listener's bound sockets, shared (`Arc`) so that a reload that changes
/// a listener's settings hands the same sockets to the new accept loops:
/// no moment without a listening socket, and no SO_REUSEPORT.
#[derive(Clone)]
pub(crate) enum Bound {
    Tcp(Vec<Arc<tokio::net::TcpListener>>),
    Udp(Vec<Arc<tokio::net::UdpSocket>>),
}

impl Bound {
    /// The local addresses of the sockets.
    pub(crate) fn addresses(&self) -> Vec<std::net::SocketAddr> {
        match self {
            Bound::Tcp(v) => v.iter().filter_map(|s| s.local_addr().ok()).collect(),
            Bound::Udp(v) => v.iter().filter_map(|s| s.local_addr().ok()).collect(),
        }
    }
}

/// A listener the node runs.
pub(crate) struct RunningListener {
    pub(crate) rt: Arc<ListenerRuntime>,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) sockets: Bound,
    /// TLS certificates in use (HTTPS listeners), and when the files
    /// were last checked for changes.
    pub(crate) tls: Option<(Arc<convoy_http::tls::TlsState>, Instant)>,
}

/// A listener ready to start: its sockets and its TLS state.
pub(crate) type Prepared = (Bound, Option<Arc<convoy_http::tls::TlsState>>);

impl Node {
    /// Binds every socket of a listener (nothing is served yet), reusing
    /// sockets of running listeners bound to the same address.
    pub(crate) fn bind_listener(&mut self, l: &Listener) -> Result<Prepared, Error> {
        let tls = match &l.tls {
            Some(t) => Some(convoy_http::tls::TlsState::new(t).map_err(Error::Tls)?),
            None => None,
        };
        Ok((self.bind_sockets(l)?, tls))
    }

    /// The running listener's socket bound to `sa` for `protocol`, if any.
    fn running_socket(&self, protocol: Protocol, sa: std::net::SocketAddr) -> Option<Bound> {
        self.listeners
            .iter()
            .find_map(|r| match (&r.sockets, protocol) {
                (Bound::Tcp(v), Protocol::Tcp | Protocol::Http) => v
                    .iter()
                    .find(|s| s.local_addr().ok() == Some(sa))
                    .map(|s| Bound::Tcp(vec![Arc::clone(s)])),
                (Bound::Udp(v), Protocol::Udp) => v
                    .iter()
                    .find(|s| s.local_addr().ok() == Some(sa))
                    .map(|s| Bound::Udp(vec![Arc::clone(s)])),
                _ => None,
            })
    }

    fn bind_sockets(&mut self, l: &Listener) -> Result<Bound, Error> {
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for sa in l.address.sockets() {
            match (self.running_socket(l.protocol, sa), l.protocol) {
                (Some(Bound::Tcp(mut v)), _) => tcp.append(&mut v),
                (Some(Bound::Udp(mut v)), _) => udp.append(&mut v),
                (None, Protocol::Tcp | Protocol::Http) => {
                    match self.inherited.take(Kind::Tcp, sa) {
                        Some(fd) => {
                            let std = std::net::TcpListener::from(fd);
                            std.set_nonblocking(true)?;
                            tcp.push(Arc::new(tokio::net::TcpListener::from_std(std)?));
                        }
                        None => tcp.push(convoy_l4::tcp::bind(sa)?),
                    }
                }
                (None, Protocol::Udp) => match self.inherited.take(Kind::Udp, sa) {
                    Some(fd) => {
                        let std = std::net::UdpSocket::from(fd);
                        std.set_nonblocking(true)?;
                        udp.push(Arc::new(tokio::net::UdpSocket::from_std(std)?));
                    }
                    None => udp.push(convoy_l4::udp::bind(sa)?),
                },
            }
        }
        Ok(match l.protocol {
            Protocol::Tcp | Protocol::Http => Bound::Tcp(tcp),
            Protocol::Udp => Bound::Udp(udp),
        })
    }

    /// The cache for listener `l`: the running one if its settings did not
    /// change, else a new one.
    fn cache_for(&mut self, l: &Listener) -> Option<Arc<convoy_http::cache::Cache>> {
        let Some(settings) = &l.cache else {
            self.caches.remove(&l.name);
            return None;
        };
        if let Some((s, c)) = self.caches.get(&l.name) {
            if s == settings {
                return Some(Arc::clone(c));
            }
        }
        use convoy_http::cache::{Cache, CacheConfig, Eviction};
        let c = Arc::new(Cache::new(CacheConfig {
            max_bytes: settings.max_bytes,
            // An object never takes more than the whole budget.
            max_object_bytes: settings.max_object.min(settings.max_bytes),
            eviction: match settings.eviction {
                convoy_config::Eviction::Lfu => Eviction::Lfu,
                convoy_config::Eviction::Fifo => Eviction::Fifo,
                convoy_config::Eviction::Lru => Eviction::Lru,
            },
            stale_while_revalidate_default: settings.stale_while_revalidate.map(|d| d.get()),
        }));
        self.caches
            .insert(l.name.clone(), (settings.clone(), Arc::clone(&c)));
        Some(c)
    }

    /// Starts serving a listener; `previous`: the runtime of the listener
    /// it replaces, whose counters and per-client state carry over.
    pub(crate) fn spawn_listener(
        &mut self,
        l: &Listener,
        (bound, tls): Prepared,
        previous: Option<&ListenerRuntime>,
    ) -> RunningListener {
        let cache = self.cache_for(l);
        let mut rt = ListenerRuntime::with_node(l.clone(), Arc::clone(&self.conns));
        if let Some(p) = previous {
            rt.carry_from(p);
        }
        let rt = Arc::new(rt);
        let (stop, stop_rx) = watch::channel(false);
        match bound.clone() {
            Bound::Tcp(socks) => {
                for s in socks {
                    let addr = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    if l.protocol == Protocol::Http {
                        info!(event = "listening", listener = %l.name, protocol = "http", address = %addr);
                        let f = convoy_http::serve(
                            self.ctx.clone(),
                            Arc::clone(&rt),
                            s,
                            stop_rx.clone(),
                            tls.clone(),
                            cache.clone(),
                        );
                        tokio::spawn(f);
                    } else {
                        info!(event = "listening", listener = %l.name, protocol = "tcp", address = %addr);
                        let f = convoy_l4::tcp::serve(
                            self.ctx.clone(),
                            Arc::clone(&rt),
                            s,
                            stop_rx.clone(),
                        );
                        tokio::spawn(f);
                    }
                }
            }
            Bound::Udp(socks) => {
                for s in socks {
                    let addr = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    info!(event = "listening", listener = %l.name, protocol = "udp", address = %addr);
                    let f = convoy_l4::udp::serve(
                        self.ctx.clone(),
                        Arc::clone(&rt),
                        s,
                        stop_rx.clone(),
                    );
                    tokio::spawn(f);
                }
            }
        }
        RunningListener {
            rt,
            stop,
            sockets: bound,
            tls: tls.map(|t| (t, Instant::now())),
        }
    }

    /// Stops every accept loop and closes the listening sockets (the
    /// loops hold the last other references).
    pub(crate) fn stop_listeners(&mut self) {
        for l in &mut self.listeners {
            let _ = l.stop.send(true);
            l.rt.wake_connections();
            l.sockets = match l.sockets {
                Bound::Tcp(_) => Bound::Tcp(Vec::new()),
                Bound::Udp(_) => Bound::Udp(Vec::new()),
            };
        }
    }

    /// Gives listeners their operator state again after a reload replaced
    /// their runtimes.
    pub(crate) fn reapply_listener_admin(&mut self) {
        for l in &self.listeners {
            if let Some(a) = self.overrides.listener_admin.get(&l.rt.cfg.name) {
                if l.rt.admin() != *a {
                    l.rt.set_admin(*a);
                }
            }
        }
    }

    /// Binds and starts every listener of the config in force (API
    /// `start` after a stop).
    pub(crate) fn start_serving(&mut self) -> Reply {
        let snap = self.snap();
        let mut bound = Vec::new();
        for l in &snap.config.listeners {
            match self.bind_listener(l) {
                Ok(b) => bound.push((l.clone(), b)),
                Err(e) => {
                    let msg = format!("listener {}: {}", l.name, report(&e));
                    error!(event = "start_failed", error = %msg);
                    return Err(CmdError::new(CmdErrorKind::Failed, msg));
                }
            }
        }
        for old in self.listeners.drain(..) {
            let _ = old.stop.send(true);
            old.rt.wake_connections();
            self.retired.push(old.rt);
        }
        for (l, b) in bound {
            let r = self.spawn_listener(&l, b, None);
            self.listeners.push(r);
        }
        self.reapply_listener_admin();
        self.state = NodeState::Converging;
        self.start_converging();
        info!(
            event = "started",
            listeners = self.listeners.len(),
            "node serving"
        );
        Ok(self.state_answer())
    }
}
