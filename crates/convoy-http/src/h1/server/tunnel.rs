//! Upgrades: after a server's `101`, the client's and the server's
//! connections joined byte for byte until either side closes, nothing
//! moves for the idle timeout, or a kill fires.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::super::client::{poll_read_buf, UpIo};
use super::ClientStream;

/// A server connection to join with the client's after a `101`: put in
/// the response's extensions by the request path.
pub struct Tunnel {
    /// The server's connection.
    pub server: UpIo,
    /// Bytes the server sent after its `101` head.
    pub server_buf: BytesMut,
    /// Held until the tunnel ends (the server slot).
    pub hold: Box<dyn std::any::Any + Send>,
    /// Close the tunnel when any of these completes.
    pub kills: Vec<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Told the bytes moved (client to server, server to client) as
    /// they move, for the server's counters.
    pub on_bytes: Box<dyn FnMut(u64, u64) + Send>,
}

/// The response extension that carries a [`Tunnel`].
#[derive(Clone)]
pub struct TunnelSlot(pub Arc<Mutex<Option<Tunnel>>>);

impl TunnelSlot {
    /// Wraps a tunnel.
    pub fn new(t: Tunnel) -> TunnelSlot {
        TunnelSlot(Arc::new(Mutex::new(Some(t))))
    }

    pub(super) fn take(&self) -> Option<Tunnel> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Joins the client and server connections until either side closes,
/// nothing moves for `idle`, or a kill fires.
pub(super) async fn tunnel<S: ClientStream>(
    client: &mut S,
    client_buf: BytesMut,
    t: Tunnel,
    idle: Duration,
) {
    let Tunnel {
        mut server,
        server_buf,
        hold,
        mut kills,
        mut on_bytes,
    } = t;
    let mut up = Dir::new(client_buf);
    let mut down = Dir::new(server_buf);
    let mut timer = Box::pin(tokio::time::sleep(idle));
    let mut last = Instant::now();
    poll_fn(|cx| {
        for k in kills.iter_mut() {
            if k.as_mut().poll(cx).is_ready() {
                tracing::debug!("tunnel closed by the control plane");
                return Poll::Ready(());
            }
        }
        let a = up.poll(cx, &mut *client, &mut server);
        let b = down.poll(cx, &mut server, &mut *client);
        if up.moved || down.moved {
            up.moved = false;
            down.moved = false;
            on_bytes(
                std::mem::take(&mut up.written),
                std::mem::take(&mut down.written),
            );
            last = Instant::now();
            timer.as_mut().reset(last + idle);
        }
        match (a, b) {
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => return Poll::Ready(()),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(()),
            _ => {}
        }
        if timer.as_mut().poll(cx).is_ready() {
            tracing::debug!("tunnel idle: closed");
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
    drop(hold);
}

/// One direction of a tunnel.
struct Dir {
    buf: BytesMut,
    eof: bool,
    shut: bool,
    moved: bool,
    /// Bytes written since last told.
    written: u64,
}

impl Dir {
    fn new(buf: BytesMut) -> Dir {
        Dir {
            buf,
            eof: false,
            shut: false,
            moved: false,
            written: 0,
        }
    }

    /// Copies from `r` to `w`; `Ready(Ok)` once `r` ended and `w` was
    /// shut down.
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            while !self.buf.is_empty() {
                let n = std::task::ready!(Pin::new(&mut *w).poll_write(cx, &self.buf))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                let _ = self.buf.split_to(n);
                self.moved = true;
                self.written += n as u64;
            }
            if self.eof {
                if !self.shut {
                    std::task::ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                    self.shut = true;
                }
                return Poll::Ready(Ok(()));
            }
            std::task::ready!(Pin::new(&mut *w).poll_flush(cx))?;
            match std::task::ready!(poll_read_buf(r, cx, &mut self.buf, 16 * 1024))? {
                0 => self.eof = true,
                _ => self.moved = true,
            }
        }
    }
}
