//! The HTTP listener: the accept loop, telling HTTP/2 prior knowledge
//! from HTTP/1 by the first bytes (or ALPN after the TLS handshake), and
//! each client connection handed to the HTTP/1 loop ([`crate::h1::server`])
//! or the HTTP/2 one ([`crate::http2`]) with the request path as handler.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};

use bytes::Bytes;
use convoy_core::context::Context;
use convoy_core::ListenerRuntime;
use convoy_l4::tcp::{Admitted, Counted, StopLot};
use http::Request;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::bodies::InBody;
use super::request::respond;
use super::Shared;
use crate::headers::ClientInfo;

/// Serves HTTP on one bound socket until `stop` changes to true; open
/// connections then finish their current request and close.
pub async fn serve(
    ctx: Context,
    listener: Arc<ListenerRuntime>,
    socket: Arc<TcpListener>,
    stop: watch::Receiver<bool>,
    tls: Option<Arc<crate::tls::TlsState>>,
    cache: Option<Arc<crate::cache::Cache>>,
) {
    // Idle HTTP/1.1 connections in clear are parked (TLS ones keep their
    // task: their state lives in the TLS stream).
    let park_after = listener.cfg.park_after().filter(|_| tls.is_none());
    let (lot, watcher) = convoy_l4::park::for_listener(&listener.cfg.name, park_after);
    let shared = Arc::new(Shared::new(ctx, Arc::clone(&listener), cache, lot));
    // Stops the lot (parked connections handed back to wind down) when
    // this ends, however it ends.
    let _lot_guard = watcher.and_then(|w| start_lot(&shared, w, stop.clone()));
    let conn_stop = stop.clone();
    convoy_l4::tcp::accept_loop(listener, socket, stop, move |stream, peer, admitted| {
        let (sh, stop, tls) = (Arc::clone(&shared), conn_stop.clone(), tls.clone());
        async move {
            if !sh.listener.takes_new() {
                // A disabled (or operator-drained) listener takes no new
                // connection: it is closed at once, as on TCP listeners.
                sh.listener.count_failed();
                if sh.listener.failed_log.allow() {
                    info!(event = "no_server", listener = %sh.listener.cfg.name, client = %peer, reason = "listener disabled");
                }
                return;
            }
            let _ = stream.set_nodelay(true);
            match tls {
                None => {
                    let idle = serve_conn(&sh, stream, peer, "http", stop.clone(), false).await;
                    // Parked with its place in the limits (`admitted`).
                    if let Some(p) = idle.and_then(|idle| Parked::new(&sh, idle, peer, admitted)) {
                        park_or_serve(&sh, p, stop).await;
                    }
                }
                // Boxed: a plain connection's task does not carry the
                // room a TLS one needs.
                Some(tls) => {
                    // Held (moved in) until the connection ends.
                    let _admitted = admitted;
                    Box::pin(serve_tls(&sh, &tls, stream, peer, stop)).await
                }
            }
        }
    })
    .await;
}

/// An idle HTTP/1.1 connection out of its task ([`convoy_l4::park`]):
/// its socket, and what serving it again needs. Nothing it points to was
/// allocated for this connection alone (its client info is made again
/// when it wakes), so that the memory its task used can be reused whole.
pub(super) struct Parked {
    io: std::net::TcpStream,
    peer: SocketAddr,
    /// When its last response ended (its idle timeout counts from there).
    since: tokio::time::Instant,
    /// The node's and the listener's kill signals, as it has seen them.
    kills: [watch::Receiver<u64>; 2],
    /// Its place in the listener's limits.
    admitted: Admitted,
    /// Counted in the listener's parked connections while it exists.
    counted: Counted,
}

/// Starts the lot's watcher task (a connection it hands back gets a task on
/// this runtime) and the task that closes parked connections on a kill.
fn start_lot(
    sh: &Arc<Shared>,
    watcher: convoy_l4::park::Watcher<Parked>,
    stop: watch::Receiver<bool>,
) -> Option<StopLot<Parked>> {
    let (lot, _) = sh.lot.clone()?;
    let rt = tokio::runtime::Handle::current();
    let (sh2, stop2) = (Arc::clone(sh), stop.clone());
    let resumed = move |p: Parked, _why: convoy_l4::park::Wake| {
        // Readable, expired or stopping: the loop tells which from the
        // socket, the clock and the stop flag.
        let (sh, stop) = (Arc::clone(&sh2), stop2.clone());
        rt.spawn(resume(sh, p, stop));
    };
    if let Err(e) = watcher.spawn(resumed) {
        warn!(listener = %sh.listener.cfg.name, error = %e, "idle connections will not be parked");
        lot.stop();
        return None;
    }
    let signals = vec![sh.ctx.kill.clone(), sh.listener.kill_signal()];
    let l = lot.clone();
    tokio::spawn(convoy_l4::park::on_signals(signals, stop, move || {
        // Closed (dropped) at once.
        drop(l.take_where(Parked::killed));
    }));
    Some(StopLot(lot))
}

/// A parked connection handed back: served again from where it was.
async fn resume(sh: Arc<Shared>, p: Parked, stop: watch::Receiver<bool>) {
    if let Some(p) = serve_again(&sh, p, stop.clone(), true).await {
        park_or_serve(&sh, p, stop).await;
    }
}

impl convoy_l4::park::Sockets for Parked {
    fn sockets(
        &self,
    ) -> (
        std::os::fd::BorrowedFd<'_>,
        Option<std::os::fd::BorrowedFd<'_>>,
    ) {
        (std::os::fd::AsFd::as_fd(&self.io), None)
    }
}

impl Parked {
    /// The record of an idle connection, its socket out of tokio's
    /// reactor (its registration would take about 0.35 KB; `None`: that
    /// failed, the connection is closed).
    fn new(
        sh: &Shared,
        idle: crate::h1::server::Idle<tokio::net::TcpStream>,
        peer: SocketAddr,
        admitted: Admitted,
    ) -> Option<Parked> {
        Some(Parked {
            io: idle.io.into_std().ok()?,
            peer,
            since: idle.since,
            kills: idle.kills,
            admitted,
            counted: Counted::new(&sh.listener),
        })
    }

    /// A kill it has not seen came (node stop, listener disabled); a gone
    /// sender is no kill, as for a connection being served.
    fn killed(&self) -> bool {
        self.kills.iter().any(|k| k.has_changed().unwrap_or(false))
    }
}

/// Serves a connection out of the lot again from the end of its last
/// response; with `park`, hands it back as a new record once idle again.
async fn serve_again(
    sh: &Arc<Shared>,
    p: Parked,
    stop: watch::Receiver<bool>,
    park: bool,
) -> Option<Parked> {
    let Parked {
        io,
        peer,
        since,
        kills,
        admitted,
        counted,
    } = p;
    drop(counted);
    let io = tokio::net::TcpStream::from_std(io).ok()?;
    let info = Arc::new(ClientInfo::new(peer, "http"));
    let rbuf = bytes::BytesMut::new();
    let from = Some((since, kills));
    let idle = serve_h1(sh, io, rbuf, peer, info, stop, from, park).await?;
    Parked::new(sh, idle, peer, admitted)
}

/// Parks an idle connection, or (no lot, or it takes no more) serves it
/// on in this task without parking.
async fn park_or_serve(sh: &Arc<Shared>, p: Parked, stop: watch::Receiver<bool>) {
    let p = match &sh.lot {
        Some((lot, _)) => {
            let deadline = p.since + sh.idle_timeout;
            // A kill seen now refuses it (it closes here); one after
            // finds it parked.
            match lot.park_if(p, deadline, |p| !p.killed()) {
                Ok(()) => return,
                Err(p) => p,
            }
        }
        None => p,
    };
    if p.killed() {
        return;
    }
    Box::pin(serve_again(sh, p, stop, false)).await;
}

/// A TLS connection: the handshake (within the header timeout), then the
/// protocol ALPN chose.
// Not an `async fn` on purpose: see serve_conn.
#[allow(clippy::manual_async_fn)]
fn serve_tls<'a>(
    sh: &'a Arc<Shared>,
    tls: &'a crate::tls::TlsState,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'a {
    async move {
        // The handshake's future is boxed on its own (gone once done) and
        // the session it yields is boxed too: what an idle TLS connection
        // keeps is a plain connection's future, not also the handshake's
        // room or the 1.2 KB session several times over.
        let Some(s) = Box::pin(handshake(sh, tls, stream, peer)).await else {
            return;
        };
        let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
        // Never handed back: TLS listeners do not park.
        let _ = serve_conn(sh, s, peer, "https", stop, h2).await;
    }
}

/// The TLS handshake, within the header timeout.
async fn handshake(
    sh: &Arc<Shared>,
    tls: &crate::tls::TlsState,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    match tokio::time::timeout(sh.header_timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(s)) => Some(Box::new(s)),
        Ok(Err(e)) => {
            debug!(client = %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(client = %peer, "TLS handshake timed out");
            None
        }
    }
}

/// The start of the HTTP/2 connection preface.
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// A stream that first gives back bytes already read from it.
pub(super) struct Rewind<S> {
    pub(super) pre: Bytes,
    pub(super) s: S,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let b = self.pre.split_to(n);
            buf.put_slice(&b);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.s).poll_read(cx, buf)
    }
}

impl<S: crate::h1::server::ClientStream> crate::h1::server::ClientStream for Rewind<S> {
    fn poll_idle(&self, cx: &mut TaskCx<'_>) -> Poll<std::io::Result<()>> {
        if self.pre.is_empty() {
            self.s.poll_idle(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.s).poll_write(cx, b)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        b: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.s).poll_write_vectored(cx, b)
    }
    fn is_write_vectored(&self) -> bool {
        self.s.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.s).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.s).poll_shutdown(cx)
    }
}

/// The future that completes when the node or the listener closes its
/// connections.
pub(super) fn kill_future(sh: &Shared) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let mut kill = sh.ctx.kill.clone();
    kill.mark_unchanged();
    let mut lkill = sh.listener.kill_signal();
    lkill.mark_unchanged();
    Box::pin(async move {
        tokio::select! {
            _ = kill.changed() => {}
            _ = lkill.changed() => {}
        }
    })
}

/// Serves one client connection (plain or TLS) until it ends, the
/// listener stops (graceful) or the node or listener kills it: HTTP/1.1
/// on convoy's own loop, HTTP/2 (ALPN `h2`, or the prior-knowledge
/// preface) on convoy's own HTTP/2 loop. An HTTP/1.1 connection idle for
/// the listener's park time (listeners that park) is handed back with
/// the time its last response ended. (A plain function returning an
/// `async move` block: an `async fn` would keep its arguments twice in
/// the future every connection carries.)
// Not an `async fn` on purpose: see above.
#[allow(clippy::manual_async_fn)]
pub(super) fn serve_conn<'a, S>(
    sh: &'a Arc<Shared>,
    mut stream: S,
    peer: SocketAddr,
    proto: &'static str,
    stop: watch::Receiver<bool>,
    alpn_h2: bool,
) -> impl Future<Output = Option<crate::h1::server::Idle<S>>> + Send + 'a
where
    S: crate::h1::server::ClientStream,
{
    async move {
        let info = Arc::new(ClientInfo::new(peer, proto));
        let mut rbuf = bytes::BytesMut::new();
        let mut h2 = alpn_h2;
        if !h2 {
            match sniff(&mut stream, &mut rbuf, sh.header_timeout).await {
                Some(prior_knowledge) => h2 = prior_knowledge,
                // Nothing (or not enough to tell) in time: closed quietly.
                None => return None,
            }
        }
        if !h2 {
            let park = sh.lot.is_some();
            return serve_h1(sh, stream, rbuf, peer, info, stop, None, park).await;
        }
        // Boxed: HTTP/1 connections (most) do not carry the HTTP/2 state.
        Box::pin(serve_h2(sh, stream, rbuf, peer, info, stop)).await;
        None
    }
}

/// Reads a connection's first bytes into `rbuf` until they tell HTTP/2
/// prior knowledge (its preface: `Some(true)`) from HTTP/1 (`Some(false)`);
/// `None` when it closes, fails, or does not tell within `within`.
async fn sniff<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut bytes::BytesMut,
    within: std::time::Duration,
) -> Option<bool> {
    let read = async {
        use tokio::io::AsyncReadExt;
        loop {
            rbuf.reserve(4096);
            match stream.read_buf(rbuf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            let n = rbuf.len().min(H2_PREFACE.len());
            if rbuf[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len() {
                return true;
            }
        }
    };
    match tokio::time::timeout(within, read).await {
        Ok(true) => Some(rbuf.starts_with(H2_PREFACE)),
        _ => None,
    }
}

/// An HTTP/1.1 connection on convoy's own loop ([`crate::h1::server`]),
/// from its first request or (`from`: when its last response ended, and
/// its kill receivers as it saw them) after being parked; handed back
/// when idle for the park time (`park`).
// Not an `async fn` on purpose: see serve_conn.
#[allow(clippy::manual_async_fn, clippy::too_many_arguments)]
fn serve_h1<'a, S>(
    sh: &'a Arc<Shared>,
    stream: S,
    rbuf: bytes::BytesMut,
    peer: SocketAddr,
    info: Arc<ClientInfo>,
    stop: watch::Receiver<bool>,
    from: Option<(tokio::time::Instant, [watch::Receiver<u64>; 2])>,
    park: bool,
) -> impl Future<Output = Option<crate::h1::server::Idle<S>>> + Send + 'a
where
    S: crate::h1::server::ClientStream,
{
    async move {
        let set = crate::h1::server::Settings {
            header_timeout: sh.header_timeout,
            idle_timeout: sh.idle_timeout,
            limits: Default::default(),
            park_after: sh.lot.as_ref().map(|(_, after)| *after).filter(|_| park),
        };
        let (since, kills) = match from {
            Some((since, kills)) => (Some(since), kills),
            None => {
                // A change from now on is a kill.
                let mut kills = [sh.ctx.kill.clone(), sh.listener.kill_signal()];
                for k in kills.iter_mut() {
                    k.mark_unchanged();
                }
                (None, kills)
            }
        };
        let sig = crate::h1::server::Signals::new(stop, kills, sh.listener.connection_wake());
        let handler = |req: Request<crate::h1::body::ReqBody>, meta: crate::h1::server::Meta| {
            respond(
                Arc::clone(sh),
                req.map(InBody::H1),
                peer,
                Arc::clone(&info),
                meta,
            )
        };
        crate::h1::server::serve(stream, rbuf, since, set, sig, handler).await
    }
}

/// An HTTP/2 connection, on convoy's own loop ([`crate::http2`]): its
/// streams run inside this connection's task.
pub(super) async fn serve_h2<S>(
    sh: &Arc<Shared>,
    stream: S,
    rbuf: bytes::BytesMut,
    peer: SocketAddr,
    info: Arc<ClientInfo>,
    mut stop: watch::Receiver<bool>,
) where
    S: crate::h1::server::ClientStream,
{
    let io = Rewind {
        pre: rbuf.freeze(),
        s: stream,
    };
    let handler = |req: Request<crate::http2::H2Body>| {
        let meta = crate::h1::server::Meta::of_fields(req.headers());
        respond(
            Arc::clone(sh),
            req.map(InBody::H2),
            peer,
            Arc::clone(&info),
            meta,
        )
    };
    let stopped = async {
        let _ = stop.wait_for(|s| *s).await;
    };
    let set = crate::http2::Settings {
        header_timeout: sh.header_timeout,
        idle_timeout: sh.idle_timeout,
        ..Default::default()
    };
    if let Err(e) = crate::http2::serve(io, &set, stopped, kill_future(sh), handler).await {
        debug!(client = %peer, error = %e, "http connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_rewound_stream_gives_the_sniffed_bytes_first() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = Rewind {
            pre: Bytes::from_static(b"PRI * "),
            s: a,
        };
        b.write_all(b"HTTP/2.0").await.unwrap();
        drop(b);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"PRI * HTTP/2.0");
    }
}
