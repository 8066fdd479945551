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
use http::Request;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

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
    let shared = Arc::new(Shared::new(ctx, Arc::clone(&listener), cache));
    let conn_stop = stop.clone();
    convoy_l4::tcp::accept_loop(listener, socket, stop, move |stream, peer, admitted| {
        let (sh, stop, tls) = (Arc::clone(&shared), conn_stop.clone(), tls.clone());
        async move {
            // Held (moved in) until the connection ends.
            let _ = &admitted;
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
                None => serve_conn(&sh, stream, peer, "http", stop, false).await,
                // Boxed: a plain connection's task does not carry the
                // room a TLS one needs.
                Some(tls) => Box::pin(serve_tls(&sh, &tls, stream, peer, stop)).await,
            }
        }
    })
    .await;
}

/// A TLS connection: the handshake (within the header timeout), then the
/// protocol ALPN chose.
async fn serve_tls(
    sh: &Arc<Shared>,
    tls: &crate::tls::TlsState,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let acceptor = tls.acceptor();
    match tokio::time::timeout(sh.header_timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_conn(sh, s, peer, "https", stop, h2).await
        }
        Ok(Err(e)) => debug!(client = %peer, error = %e, "TLS handshake failed"),
        Err(_) => debug!(client = %peer, "TLS handshake timed out"),
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
/// preface) on convoy's own HTTP/2 loop. (A plain function returning an
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
) -> impl Future<Output = ()> + Send + 'a
where
    S: crate::h1::server::ClientStream,
{
    async move {
        let info = Arc::new(ClientInfo::new(peer, proto));
        let mut rbuf = bytes::BytesMut::new();
        let mut h2 = alpn_h2;
        if !h2 {
            // The first bytes tell HTTP/2 prior knowledge from HTTP/1.
            let sniff = async {
                use tokio::io::AsyncReadExt;
                loop {
                    rbuf.reserve(4096);
                    match stream.read_buf(&mut rbuf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(_) => {}
                    }
                    let n = rbuf.len().min(H2_PREFACE.len());
                    if rbuf[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len() {
                        return true;
                    }
                }
            };
            match tokio::time::timeout(sh.header_timeout, sniff).await {
                Ok(true) => {}
                // Nothing (or not enough to tell) in time: closed quietly.
                _ => return,
            }
            h2 = rbuf.starts_with(H2_PREFACE);
        }
        if !h2 {
            let set = crate::h1::server::Settings {
                header_timeout: sh.header_timeout,
                idle_timeout: sh.idle_timeout,
                limits: Default::default(),
            };
            let sig = crate::h1::server::Signals::new(
                stop,
                [sh.ctx.kill.clone(), sh.listener.kill_signal()],
                sh.listener.connection_wake(),
            );
            let handler = |req: Request<crate::h1::body::ReqBody>,
                           meta: crate::h1::server::Meta| {
                respond(
                    Arc::clone(sh),
                    req.map(InBody::H1),
                    peer,
                    Arc::clone(&info),
                    meta.stripped,
                )
            };
            crate::h1::server::serve(stream, rbuf, set, sig, handler).await;
            return;
        }
        // Boxed: HTTP/1 connections (most) do not carry the HTTP/2 state.
        Box::pin(serve_h2(sh, stream, rbuf, peer, info, stop)).await;
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
        respond(
            Arc::clone(sh),
            req.map(InBody::H2),
            peer,
            Arc::clone(&info),
            false,
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
