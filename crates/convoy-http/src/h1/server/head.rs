//! Waiting for a request head: the read buffers idle connections give
//! back to the thread, the answer convoy writes for a refused head, and
//! the close that lingers so that the answer is not lost to a reset.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, Sleep};

use super::super::client::poll_read_buf;
use super::super::parse;
use super::{date, ClientStream, Settings, Signals};

/// A client connection's read buffer (a head, and what follows it): a
/// spare one of this thread's.
fn take_spare() -> BytesMut {
    crate::spare::heads().take()
}

/// Keeps a buffer nothing else refers to for the next request.
pub(super) fn put_spare(b: BytesMut) {
    crate::spare::heads().put(b)
}

/// A response convoy writes itself for a refused head.
pub(super) fn error_response(status: StatusCode, reason: &str) -> Vec<u8> {
    let body = format!("{reason}\n");
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Error").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain\r\ncontent-length: ");
    parse::write_dec(&mut out, body.len() as u64);
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(&date());
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// Closes after an error, reading what the client still sends for a
/// moment so that the answer is not lost to a reset.
pub(super) async fn linger_close<S: ClientStream>(mut io: S) {
    let _ = io.shutdown().await;
    let end = Instant::now() + Duration::from_secs(1);
    let mut sink = BytesMut::new();
    let mut total = 0usize;
    while total < 1 << 20 {
        sink.clear();
        let r = tokio::time::timeout_at(
            end,
            poll_fn(|cx| poll_read_buf(&mut io, cx, &mut sink, 16 * 1024)),
        )
        .await;
        match r {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}

/// How long an idle connection waits, after a graceful stop, for a
/// request the client may have sent before it learns of the stop.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// When the wait for a request head ends: `header_timeout` after its
/// first byte (or after the connection opened), else `idle_timeout`
/// after the last response; an idle connection's `stop_by` comes first.
pub(super) fn head_deadline(
    set: &Settings,
    head_start: Option<Instant>,
    first: bool,
    last: Instant,
    stop_by: Option<Instant>,
) -> Instant {
    let mut deadline = match head_start {
        Some(t) => t + set.header_timeout,
        None if first => last + set.header_timeout,
        None => last + set.idle_timeout,
    };
    if let (Some(s), None) = (stop_by, head_start) {
        deadline = deadline.min(s);
    }
    deadline
}

/// What ended a wait for a request head.
pub(super) enum Ev {
    Data,
    Closed,
    Timeout,
    Kill,
}

/// Waits for bytes of a request head (read into a spare buffer when the
/// connection holds none), a kill, or the timer.
pub(super) fn poll_head<S: ClientStream>(
    cx: &mut Context<'_>,
    io: &mut S,
    rbuf: &mut BytesMut,
    sig: &mut Signals,
    timer: &mut Pin<Box<Sleep>>,
    armed: &mut Instant,
    stop_by: &mut Option<Instant>,
) -> Poll<Ev> {
    if sig.poll_kill(cx).is_ready() {
        return Poll::Ready(Ev::Kill);
    }
    if sig.stopping && rbuf.is_empty() && stop_by.is_none() {
        // Closing an idle connection at once would reset a
        // request the client has just sent: it gets a moment
        // to arrive.
        let s = Instant::now() + STOP_GRACE;
        *stop_by = Some(s);
        if s < *armed {
            timer.as_mut().reset(s);
            *armed = s;
        }
    }
    let ready = if rbuf.is_empty() {
        io.poll_idle(cx)
    } else {
        Poll::Ready(Ok(()))
    };
    match ready {
        Poll::Ready(Ok(())) => {
            if rbuf.capacity() == 0 {
                *rbuf = take_spare();
            }
            match poll_read_buf(io, cx, rbuf, crate::spare::heads().size) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ev::Closed),
                Poll::Ready(Ok(_)) => return Poll::Ready(Ev::Data),
                // Nothing came after all (a stream that cannot tell, or a
                // readiness already used up): the wait holds no buffer.
                Poll::Pending if rbuf.is_empty() => put_spare(std::mem::take(rbuf)),
                Poll::Pending => {}
            }
        }
        Poll::Ready(Err(_)) => return Poll::Ready(Ev::Closed),
        Poll::Pending => {}
    }
    if timer.as_mut().poll(cx).is_ready() {
        return Poll::Ready(Ev::Timeout);
    }
    Poll::Pending
}
