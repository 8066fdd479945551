//! HTTP/2 from clients (RFC 9113), on convoy's own connection loop.
//!
//! One task per connection owns everything: the socket, both HPACK
//! tables ([`hpack`]), the flow-control windows and every stream. A
//! stream's request path (the handler's future) and its response body
//! are polled by that task with a waker of the stream's own, so a wake-up
//! polls only the stream that has something to do, and the responses that
//! become ready together go out in one write. No lock is taken on the way
//! of a request without a body.
//!
//! Per stream:
//! - the request is checked as RFC 9113 §8 asks (pseudo-headers once and
//!   first, no connection-specific field, `te` only `trailers`, lowercase
//!   names, a body as long as its `content-length`); a malformed one is
//!   reset with PROTOCOL_ERROR and never reaches the handler; a header
//!   list over `max_header_list` gets 431;
//! - the request path runs until it has a response, unless the client
//!   resets the stream first: then it is dropped at once (the server's
//!   slot is freed);
//! - the response head goes out with connection-specific fields removed
//!   and `date` added when missing; the body is sent as the client's
//!   flow-control windows allow, trailers included; a body that fails on
//!   the server's side resets the stream with INTERNAL_ERROR;
//! - a stream the client gives no window for `idle_timeout` (it stopped
//!   reading, or announced a window of 0) is reset with CANCEL: it would
//!   otherwise hold the server's slot for as long as it likes.
//!
//! Request bodies ([`H2Body`]) give their window back as they are read,
//! so a slow server slows the client instead of filling memory.
//!
//! The connection: a client that sends nothing within `header_timeout`
//! of connecting, or has no stream open and sends nothing for
//! `idle_timeout`, is closed (GOAWAY); so is one that takes no byte of
//! what we write for `idle_timeout`. We stop reading while our output
//! waits (a client that floods PINGs or SETTINGS without reading the
//! answers only fills its own socket). Protocol errors end the connection
//! with GOAWAY and the RFC's error code; streams reset by the client
//! faster than they complete (the "rapid reset" attack) end it with
//! ENHANCE_YOUR_CALM.

pub mod frame;
pub mod hpack;

mod body;
mod conn;
mod input;
mod output;
mod recv;
mod request;
mod run;
mod stream;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;

pub use body::{BodyError, H2Body};
use conn::Conn;
use frame::Reason;

/// Limits of an HTTP/2 connection.
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
    /// Response bytes buffered per stream before waiting for the client
    /// (our output as a whole stops growing at this size too).
    pub max_send_buffer: usize,
    /// Time for a new connection's first bytes.
    pub header_timeout: Duration,
    /// Time without a stream in progress or a byte from the client; also
    /// the longest a client may leave our output unread.
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

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// The client broke the protocol: we sent GOAWAY with this code.
    #[error("client broke HTTP/2 ({0}): {1}")]
    Protocol(Reason, &'static str),
    /// The client ended the connection with an error code.
    #[error("client sent GOAWAY {0}")]
    Peer(Reason),
}

/// Serves one HTTP/2 connection until it closes or `stop` (GOAWAY, then
/// the open streams finish) or `kill` (closed at once) completes.
/// `handler` answers each request.
pub async fn serve<S, H, F, B>(
    io: S,
    set: &Settings,
    stop: impl Future<Output = ()>,
    kill: impl Future<Output = ()>,
    handler: H,
) -> Result<(), Error>
where
    S: crate::h1::server::ClientStream,
    H: FnMut(Request<H2Body>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut c = Conn::new(io, set, handler);
    let mut stop = std::pin::pin!(stop);
    let mut kill = std::pin::pin!(kill);
    // A graceful stop in two steps (as RFC 9113 §6.8 advises): GOAWAY
    // with the largest stream id and a PING; at the PING's answer (or
    // after STOP_WAIT), GOAWAY with the last stream taken. A request the
    // client sent while the first GOAWAY was on its way is served, not
    // left for the client to retry.
    let mut stop_wait: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        if kill.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        if !c.stopping && !c.soft_stop && stop.as_mut().poll(cx).is_ready() {
            c.soft_stop = true;
            frame::goaway(&mut c.out.buf, 0x7fff_ffff, Reason::NO_ERROR, "");
            frame::head(&mut c.out.buf, 8, frame::PING, 0, 0);
            c.out.buf.extend_from_slice(&STOP_PING);
            stop_wait = Some(Box::pin(tokio::time::sleep(STOP_WAIT)));
        }
        if let Some(w) = &mut stop_wait {
            if !c.stopping && w.as_mut().poll(cx).is_ready() {
                c.finish_stop();
            }
        }
        c.poll(cx)
    })
    .await
}

/// The payload of the PING that follows a graceful stop's first GOAWAY.
const STOP_PING: [u8; 8] = *b"convoyGA";

/// How long a graceful stop waits for its PING's answer before the final
/// GOAWAY.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// Requests reset by the client that count against it (see `resets`).
const RESET_BUDGET: u32 = 200;

/// How many recently closed streams a connection remembers, to tell a
/// late frame on one of them (ignored after our own reset, a connection
/// error otherwise) from a stream id that was never opened.
const CLOSED_MEMORY: usize = 256;

#[cfg(test)]
mod tests;
