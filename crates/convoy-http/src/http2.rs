//! HTTP/2 from clients, on the `h2` crate's connection directly.
//!
//! Every stream of a connection runs inside the connection's own task:
//! the streams' futures sit in one [`FuturesUnordered`] polled beside the
//! connection, so a stream costs no task of its own, and the responses that
//! become ready together (a burst of multiplexed requests) are written in
//! one flush. Per stream:
//!
//! - the request path runs until it has a response, unless the client
//!   resets the stream first: then it is dropped at once (the server's
//!   slot is freed);
//! - the response head goes out with connection-specific fields removed
//!   (HTTP/2 forbids them) and `date` added when missing; a response known
//!   to be empty ends with its head;
//! - the body is sent as the client's flow-control window allows (at most
//!   `max_send_buffer` bytes wait per stream), trailers included; a body
//!   that fails on the server's side resets the stream.
//!
//! Request bodies ([`H2Body`]) give their flow-control window back as they
//! are read, so a slow server slows the client instead of filling memory.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::h2::server::SendResponse;
use ::h2::{Reason, RecvStream, SendStream};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::header::HeaderValue;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::conn::{ConnIo, ConnState, InProgress};

/// Limits of an HTTP/2 connection (hyper's defaults, which convoy used
/// before).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Streams open at once per connection.
    pub max_concurrent_streams: u32,
    /// Initial flow-control window of each stream, bytes.
    pub stream_window: u32,
    /// Initial flow-control window of the connection, bytes.
    pub conn_window: u32,
    /// Largest header list a client may send, bytes.
    pub max_header_list: u32,
    /// Response bytes buffered per stream before waiting for the client.
    pub max_send_buffer: usize,
    /// Time for a new connection's first bytes.
    pub header_timeout: Duration,
    /// Time without a stream in progress or a byte from the client.
    pub idle_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_concurrent_streams: 200,
            stream_window: 1024 * 1024,
            conn_window: 1024 * 1024,
            max_header_list: 16 * 1024,
            max_send_buffer: 400 * 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's HTTP/2 request body.
pub struct H2Body {
    rx: RecvStream,
    /// Bytes announced by `content-length` and not yet received.
    left: Option<u64>,
    data_done: bool,
}

impl H2Body {
    fn new(rx: RecvStream, headers: &HeaderMap) -> Self {
        let left = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        H2Body {
            rx,
            left,
            data_done: false,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = ::h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ::h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match std::task::ready!(this.rx.poll_data(cx)) {
                Some(Ok(b)) => {
                    // The window comes back as the body is taken.
                    let _ = this.rx.flow_control().release_capacity(b.len());
                    if let Some(n) = &mut this.left {
                        *n = n.saturating_sub(b.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match std::task::ready!(this.rx.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None if self.rx.is_end_stream() => SizeHint::with_exact(0),
            None => SizeHint::new(),
        }
    }
}

/// Removes the fields HTTP/2 forbids in a response (RFC 9113 §8.2.2:
/// the hop-by-hop fields, removed by the same code as for HTTP/1), adds
/// `date` when missing.
fn h2_head(h: &mut HeaderMap) {
    crate::headers::strip_hop_by_hop(h);
    if !h.contains_key(http::header::DATE) {
        let d = crate::h1::server::date();
        if let Ok(v) = HeaderValue::from_bytes(&d) {
            h.insert(http::header::DATE, v);
        }
    }
}

/// Serves one HTTP/2 connection until it closes or `stop` (GOAWAY, then
/// the open streams finish) or `kill` (closed at once) completes.
/// `handler` answers each request. The connection's clocks
/// ([`crate::conn`]) count a stream in progress until its response has
/// been sent or the stream was reset.
pub async fn serve<S, H, F, B>(
    io: S,
    set: &Settings,
    stop: impl Future<Output = ()>,
    kill: impl Future<Output = ()>,
    mut handler: H,
) -> Result<(), ::h2::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<H2Body>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let st = Arc::new(ConnState::default());
    let io = ConnIo::new(io, Arc::clone(&st), set.header_timeout, set.idle_timeout);
    let mut conn = ::h2::server::Builder::new()
        .max_concurrent_streams(set.max_concurrent_streams)
        .initial_window_size(set.stream_window)
        .initial_connection_window_size(set.conn_window)
        .max_header_list_size(set.max_header_list)
        .max_send_buffer_size(set.max_send_buffer)
        .max_local_error_reset_streams(Some(1024))
        .handshake::<_, Bytes>(io)
        .await?;
    let mut streams = FuturesUnordered::new();
    let mut stop = std::pin::pin!(stop);
    let mut kill = std::pin::pin!(kill);
    let mut stopping = false;
    poll_fn(|cx| {
        if kill.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        if !stopping && stop.as_mut().poll(cx).is_ready() {
            stopping = true;
            conn.graceful_shutdown();
        }
        loop {
            // Streams first: what they send goes out in the flush below.
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    let (parts, rx) = req.into_parts();
                    let body = H2Body::new(rx, &parts.headers);
                    let busy = InProgress::new(&st);
                    let fut = handler(Request::from_parts(parts, body));
                    streams.push(stream(fut, respond, busy, set.idle_timeout));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// One stream: the response once the handler has it, then its body
/// (`busy` is dropped with the stream).
async fn stream<F, B>(fut: F, mut respond: SendResponse<Bytes>, busy: InProgress, stall: Duration)
where
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut fut = std::pin::pin!(fut);
    let resp = poll_fn(|cx| {
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        // The client gave up on this stream: drop the request path.
        match respond.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let Some(resp) = resp else { return };
    let (mut parts, mut body) = resp.into_parts();
    h2_head(&mut parts.headers);
    let end = body.is_end_stream();
    let Ok(tx) = respond.send_response(Response::from_parts(parts, ()), end) else {
        return;
    };
    if !end {
        send_body(tx, &mut body, stall).await;
    }
    drop(busy);
}

/// Sends `body` on `tx` as the client's window allows. A client that
/// gives no window for `stall` (it stopped reading, or announced a
/// window of 0) gets the stream reset: it would otherwise hold the
/// server's slot for as long as it likes.
async fn send_body<B>(mut tx: SendStream<Bytes>, body: &mut B, stall: Duration)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    loop {
        let frame = poll_fn(|cx| {
            if let Poll::Ready(f) = Pin::new(&mut *body).poll_frame(cx) {
                return Poll::Ready(Some(f));
            }
            match tx.poll_reset(cx) {
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let frame = match frame {
            // The client reset the stream.
            None => return,
            Some(None) => {
                let _ = tx.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(e))) => {
                let e: BoxError = e.into();
                tracing::debug!(error = %e, "response body failed: stream reset");
                tx.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
            Some(Some(Ok(f))) => f,
        };
        let mut data = match frame.into_data() {
            Ok(d) => d,
            Err(f) => {
                if let Ok(t) = f.into_trailers() {
                    let _ = tx.send_trailers(t);
                    return;
                }
                continue;
            }
        };
        while !data.is_empty() {
            tx.reserve_capacity(data.len());
            let mut room = tx.capacity();
            if room == 0 {
                match tokio::time::timeout(stall, poll_fn(|cx| tx.poll_capacity(cx))).await {
                    Ok(Some(Ok(n))) => room = n,
                    // Reset or connection gone.
                    Ok(_) => return,
                    Err(_) => {
                        tracing::debug!(
                            "client took no response bytes for the idle timeout: stream reset"
                        );
                        tx.send_reset(Reason::CANCEL);
                        return;
                    }
                }
                if room == 0 {
                    continue;
                }
            }
            let chunk = data.split_to(room.min(data.len()));
            let end = data.is_empty() && body.is_end_stream();
            if tx.send_data(chunk, end).is_err() || end {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_fields_go_and_date_comes() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        h2_head(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h[http::header::DATE].len(), 29);
        // A date from the server stays.
        let mut h = HeaderMap::new();
        h.insert(
            "date",
            HeaderValue::from_static("Tue, 01 Dec 2026 00:00:00 GMT"),
        );
        h2_head(&mut h);
        assert_eq!(h["date"], "Tue, 01 Dec 2026 00:00:00 GMT");
    }
}
