//! One request and its response on a client connection: the request
//! body fed from the connection while the request path runs, the
//! response written (one write for a small one), and what the exchange
//! leaves of the connection.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, Sleep};

use super::super::body::{Chan, ReqBody};
use super::super::client::poll_read_buf;
use super::super::parse::{self, ChunkedDecoder, Decoded, Framing};
use super::out::Out;
use super::tunnel::{tunnel, TunnelSlot};
use super::{date, BoxedResp, ClientStream, Meta, Settings, Signals};

/// Feeds a request body from the connection into its channel.
enum Feed {
    None,
    Length { ch: Chan, left: u64 },
    Chunked { ch: Chan, dec: ChunkedDecoder },
}

/// The client closed or failed while sending its body.
struct Gone;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Most bytes read ahead from the client beyond the current request.
const READ_AHEAD: usize = 64 * 1024;

impl Feed {
    fn done(&self) -> bool {
        matches!(self, Feed::None)
    }

    /// Feeds the body on while it lasts (see [`Feed::poll`]); `true` when
    /// it failed (malformed, or the client left).
    fn pump<S: ClientStream>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        rbuf: &mut BytesMut,
        cont: &mut usize,
    ) -> bool {
        !self.done() && matches!(self.poll(cx, io, rbuf, cont), Poll::Ready(Err(Gone)))
    }

    fn chan(&self) -> Option<&Chan> {
        match self {
            Feed::None => None,
            Feed::Length { ch, .. } | Feed::Chunked { ch, .. } => Some(ch),
        }
    }

    /// Moves body bytes from `rbuf` and the socket into the channel;
    /// `Ready(Ok)` when the body is complete.
    fn poll<S: ClientStream>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        rbuf: &mut BytesMut,
        cont: &mut usize,
    ) -> Poll<Result<(), Gone>> {
        loop {
            match self {
                Feed::None => return Poll::Ready(Ok(())),
                Feed::Length { ch, left } => {
                    if !rbuf.is_empty() {
                        let n = (rbuf.len() as u64).min(*left) as usize;
                        *left -= n as u64;
                        ch.push(rbuf.split_to(n).freeze());
                        if *left == 0 {
                            ch.finish();
                            *self = Feed::None;
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
                Feed::Chunked { ch, dec } => {
                    if !rbuf.is_empty() {
                        match dec.decode(rbuf) {
                            Ok(Decoded::Data(d)) => {
                                ch.push(d);
                                continue;
                            }
                            Ok(Decoded::End) => {
                                ch.finish();
                                *self = Feed::None;
                                return Poll::Ready(Ok(()));
                            }
                            Ok(Decoded::NeedMore) => {}
                            Err(e) => {
                                tracing::debug!(error = %e, "malformed chunked request body");
                                ch.fail("malformed chunked request body");
                                return Poll::Ready(Err(Gone));
                            }
                        }
                    }
                }
            }
            let Some(ch) = self.chan() else {
                continue;
            };
            if ch.dropped() || !ch.has_room(cx) {
                // Nobody reads it (the answer came first), or the reader
                // is behind: the client waits.
                return Poll::Pending;
            }
            // `100 Continue` once the body is wanted.
            if *cont < CONTINUE.len() {
                if !ch.wanted(cx) {
                    return Poll::Pending;
                }
                match Pin::new(&mut *io).poll_write(cx, &CONTINUE[*cont..]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        *cont += n;
                        continue;
                    }
                    Poll::Ready(_) => {
                        ch.fail("client went away");
                        return Poll::Ready(Err(Gone));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            match poll_read_buf(io, cx, rbuf, 16 * 1024) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    ch.fail("client closed the connection mid-body");
                    return Poll::Ready(Err(Gone));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Reads ahead (pipelined requests) and notices a client that closed:
/// `Ready(())` when it is gone.
fn poll_gone<S: ClientStream>(cx: &mut Context<'_>, io: &mut S, rbuf: &mut BytesMut) -> Poll<()> {
    loop {
        if rbuf.len() >= READ_AHEAD {
            return Poll::Pending;
        }
        match poll_read_buf(io, cx, rbuf, 4096) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
            // More bytes (the next request): read until it would block.
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// How an exchange left the connection.
pub(super) enum Done {
    /// Ready for the next request.
    Keep,
    /// Close now.
    Close,
    /// Shut down the writing side and close.
    Shutdown,
    /// Close after reading what the client still sends for a moment.
    Linger,
}

impl Done {
    /// After a response written whole: the connection kept, or closed
    /// (shut down at once when the client has nothing more in flight:
    /// `quiet`).
    fn after(keep: bool, quiet: bool) -> Done {
        if keep {
            Done::Keep
        } else if quiet {
            Done::Shutdown
        } else {
            Done::Linger
        }
    }
}

/// One request and its response, from a parsed head. Boxed by the
/// connection loop, so that an idle connection holds none of its state.
pub(super) async fn exchange<S, F, Fut>(
    io: &mut S,
    rbuf: &mut BytesMut,
    sig: &mut Signals,
    handler: &F,
    head: parse::RequestHead,
    set: Settings,
) -> Done
where
    S: ClientStream,
    F: Fn(Request<ReqBody>, Meta) -> Fut,
    Fut: Future<Output = Response<BoxedResp>> + Send + 'static,
{
    let mut out = Out::new();
    // ---- the request ----
    let parse::RequestHead {
        mut parts,
        framing,
        keep_alive,
        expect_continue,
        hop,
        forwarding,
        explain,
    } = head;
    let mut keep = keep_alive && !sig.stopping;
    let is_head = parts.method == Method::HEAD;
    let http10 = parts.version == Version::HTTP_10;
    let stripped = strip_request(&mut parts.headers, hop, expect_continue);
    let (body, mut feed) = request_body(framing);
    let mut cont = if expect_continue { 0 } else { CONTINUE.len() };
    // The request path's future lives inside this one (itself boxed by
    // the connection loop for the exchange's time): one allocation and
    // one copy per request, not two (a box of its own cost 650
    // instructions per request).
    let mut fut = std::pin::pin!(handler(
        Request::from_parts(parts, body),
        Meta {
            stripped,
            forwarding,
            explain,
        },
    ));
    let resp = poll_fn(|cx| {
        if sig.poll_kill(cx).is_ready() {
            return Poll::Ready(None);
        }
        if feed.pump(cx, io, rbuf, &mut cont) {
            // Malformed body: the request path answers 400; a
            // client that left is noticed when writing.
            keep = false;
        }
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if feed.done() && poll_gone(cx, io, rbuf).is_ready() {
            // The client left: its request is dropped, the slot freed.
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await;
    let Some(resp) = resp else {
        return Done::Close;
    };
    if sig.stopping {
        keep = false;
    }

    // ---- the response ----
    let (rparts, mut rbody) = resp.into_parts();
    if rparts.status == StatusCode::SWITCHING_PROTOCOLS {
        keep = false;
        if let Some(t) = rparts
            .extensions
            .get::<TunnelSlot>()
            .and_then(TunnelSlot::take)
        {
            let head = upgrade_head(&rparts);
            if io.write_all(&head).await.is_err() {
                return Done::Close;
            }
            Box::pin(tunnel(io, std::mem::take(rbuf), t, set.idle_timeout)).await;
            return Done::Close;
        }
    }
    let mut headers = rparts.headers;
    let (bodiless, kept) = response_head(
        &mut out,
        rparts.status,
        &mut headers,
        &rbody,
        is_head,
        http10,
        keep,
    );
    keep = kept;
    // The head is written: its map serves the next head parsed here.
    parse::recycle(headers);
    let mut cut = false;
    // A client that takes no response bytes for `idle_timeout` (it
    // stopped reading) is closed: it would hold the server's slot.
    let mut stall: Option<(Pin<Box<Sleep>>, u64)> = None;
    let ok = poll_fn(|cx| {
        if sig.poll_kill(cx).is_ready() {
            return Poll::Ready(false);
        }
        if feed.pump(cx, io, rbuf, &mut cont) {
            keep = false;
        }
        if let Poll::Ready(whole) = out.poll_send(cx, io, &mut rbody, &mut cut, bodiless) {
            return Poll::Ready(whole);
        }
        // Waiting for the body or the client: notice a client that left.
        if out.queued == 0 && feed.done() && poll_gone(cx, io, rbuf).is_ready() {
            return Poll::Ready(false);
        }
        if client_stalled(cx, &mut stall, &out, set.idle_timeout) {
            return Poll::Ready(false);
        }
        Poll::Pending
    })
    .await;
    drop(rbody);
    if !ok {
        return Done::Close;
    }
    // A request body not read to its end leaves the connection unusable.
    Done::after(keep && feed.done(), feed.done() && rbuf.is_empty())
}

/// Removes `Expect` when it is answered here; `true`: the request's
/// hop-by-hop fields are gone (the parser left them out unless it asks
/// for an upgrade: then the request path removes the rest and keeps its
/// Connection and Upgrade fields).
fn strip_request(h: &mut http::HeaderMap, hop: u16, expect_continue: bool) -> bool {
    let stripped = hop & parse::hop::UPGRADE == 0;
    if expect_continue {
        // Answered here: the server need not.
        h.remove(http::header::EXPECT);
    }
    stripped
}

/// The request body handed to the request path, and what feeds it from
/// the connection.
fn request_body(framing: Framing) -> (ReqBody, Feed) {
    match framing {
        Framing::Length(n) => {
            let ch = Chan::new(Some(n));
            (ReqBody(Some(ch.clone())), Feed::Length { ch, left: n })
        }
        Framing::Chunked => {
            let ch = Chan::new(None);
            (
                ReqBody(Some(ch.clone())),
                Feed::Chunked {
                    ch,
                    dec: ChunkedDecoder::default(),
                },
            )
        }
        Framing::Empty | Framing::Close => (ReqBody::empty(), Feed::None),
    }
}

/// The head of a server's `101` as it goes to the client: its own
/// fields, no framing of convoy's.
fn upgrade_head(rparts: &http::response::Parts) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    parse::ResponseWrite {
        status: rparts.status,
        headers: &rparts.headers,
        framing: Framing::Empty,
        keep_fields: true,
        close: false,
        keep_alive_10: false,
        date: &date(),
    }
    .write(&mut head);
    head
}

/// Writes the head of a response (to a HEAD request: `is_head`; to an
/// HTTP/1.0 one: `http10`) into `out`: its framing toward the client, and
/// `Connection` as the connection goes on. Returns whether the response
/// is bodiless, and whether the connection is kept.
fn response_head(
    out: &mut Out,
    status: StatusCode,
    headers: &mut http::HeaderMap,
    body: &BoxedResp,
    is_head: bool,
    http10: bool,
    mut keep: bool,
) -> (bool, bool) {
    // (A server's Connection field never gets here: the HTTP/1 client
    // leaves it out. One a response built here carries is read and
    // removed in one lookup.)
    if headers
        .remove(http::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
    {
        keep = false;
    }
    let (bodiless, framing) = response_framing(is_head, http10, status, body);
    if framing == Framing::Close {
        keep = false;
    }
    out.start_response(parse::ResponseWrite {
        status,
        headers,
        framing,
        keep_fields: bodiless,
        close: !keep,
        keep_alive_10: keep && http10,
        date: &date(),
    });
    (bodiless, keep)
}

/// Whether a response has no body by its nature (a HEAD request's, 1xx,
/// 204, 304), and how its body is delimited toward the client.
fn response_framing(
    is_head: bool,
    http10: bool,
    status: StatusCode,
    body: &BoxedResp,
) -> (bool, Framing) {
    let bodiless = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::Empty
    } else {
        match body.size_hint().exact() {
            Some(0) if body.is_end_stream() => Framing::Empty,
            Some(n) => Framing::Length(n),
            None if !http10 => Framing::Chunked,
            None => Framing::Close,
        }
    };
    (bodiless, framing)
}

/// Whether the client took no response bytes for `idle` while some
/// wait for it (it stopped reading). The clock starts again at each
/// byte taken, and is off while nothing waits.
fn client_stalled(
    cx: &mut Context<'_>,
    stall: &mut Option<(Pin<Box<Sleep>>, u64)>,
    out: &Out,
    idle: Duration,
) -> bool {
    if out.queued == 0 {
        // Waiting for the server: its clocks are the request path's.
        *stall = None;
        return false;
    }
    match stall {
        Some((t, at)) if *at == out.written => {
            if t.as_mut().poll(cx).is_ready() {
                tracing::debug!("client took no response bytes for the idle timeout: closing");
                return true;
            }
        }
        Some((t, at)) => {
            // Progress since: the clock starts again.
            *at = out.written;
            t.as_mut().reset(Instant::now() + idle);
            let _ = t.as_mut().poll(cx);
        }
        None => {
            let mut t = Box::pin(tokio::time::sleep(idle));
            let _ = t.as_mut().poll(cx);
            *stall = Some((t, out.written));
        }
    }
    false
}
