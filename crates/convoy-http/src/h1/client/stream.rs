//! The connection to a server (plain TCP or TLS) and the read and write
//! helpers the HTTP/1 loops share.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A connection to a server, plain or TLS.
#[derive(Debug)]
pub enum UpIo {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// An in-memory pipe to a scripted server (unit tests).
    #[cfg(test)]
    Mock(tokio::io::DuplexStream),
}

impl AsyncRead for UpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(test)]
            UpIo::Mock(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_write(cx, b),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
            #[cfg(test)]
            UpIo::Mock(s) => Pin::new(s).poll_write(cx, b),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_write_vectored(cx, b),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, b),
            #[cfg(test)]
            UpIo::Mock(s) => Pin::new(s).poll_write_vectored(cx, b),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpIo::Tcp(s) => s.is_write_vectored(),
            UpIo::Tls(s) => s.is_write_vectored(),
            #[cfg(test)]
            UpIo::Mock(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(test)]
            UpIo::Mock(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(test)]
            UpIo::Mock(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Reads what the stream has into the spare room of `buf` (grown when
/// short of room); `Ready(Ok(0))` is the end of the stream.
pub fn poll_read_buf<R: AsyncRead + Unpin>(
    r: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    grow: usize,
) -> Poll<io::Result<usize>> {
    use tokio::io::AsyncReadExt;
    if buf.capacity() - buf.len() < grow / 4 {
        buf.reserve(grow);
    }
    let fut = r.read_buf(buf);
    let mut fut = std::pin::pin!(fut);
    fut.as_mut().poll(cx)
}

/// Writes `a` then `b`, in one write when the socket takes them.
pub(super) async fn write_all2(io: &mut UpIo, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    while !a.is_empty() {
        let n = if b.is_empty() {
            io.write(a).await?
        } else {
            io.write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])
                .await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n >= a.len() {
            b = &b[n - a.len()..];
            a = &[];
        } else {
            a = &a[n..];
        }
    }
    if !b.is_empty() {
        io.write_all(b).await?;
    }
    Ok(())
}

/// Takes `n` written bytes off the front of a write queue.
pub fn consume(pending: &mut VecDeque<Bytes>, n: &mut usize) {
    while *n > 0 {
        let Some(front) = pending.front_mut() else {
            break;
        };
        if *n >= front.len() {
            *n -= front.len();
            pending.pop_front();
        } else {
            let _ = front.split_to(*n);
            *n = 0;
        }
    }
}
