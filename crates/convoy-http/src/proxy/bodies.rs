//! The bodies on the request path: the client's request body as the
//! request path reads it ([`InBody`], HTTP/1 or HTTP/2), with its first
//! frame read ahead and its limit, pause clock and faults ([`Prefixed`]);
//! a server's response body ([`UpResp`]) holding the request's slot and
//! cut by the control plane or a stalled server ([`Guarded`]); and the
//! body that writes the access-log line when it ends ([`Tracked`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};
use std::time::Duration;

use bytes::Bytes;
use convoy_core::state::ErrorKind;
use convoy_core::PoolRuntime;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use tokio::sync::watch;
use tracing::debug;

use super::access::AccessRec;

/// Response body type: a streamed upstream body (possibly compressed) or
/// a local one.
pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// The client's body with its first frame read ahead: a body that is
/// malformed from its first byte (bad chunk size) is refused with 400
/// before anything reaches a server.
/// It also enforces the route's body limit and the body timeout: a body
/// growing past the limit, failing on the client's side (bad chunk,
/// aborted upload) or pausing longer than `body_timeout` ends the upstream
/// request with an error and records the client's fault in `fault`, so the
/// client gets 413 or 408 (or nothing, when it is gone) and the server is
/// not blamed.
pub(super) struct Prefixed {
    pub(super) first: Option<Frame<Bytes>>,
    pub(super) rest: InBody,
    pub(super) limit: u64,
    pub(super) seen: u64,
    pub(super) fault: Arc<Fault>,
    pub(super) pause: Duration,
    pub(super) timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A client's fault in sending its body, recorded by [`Prefixed`]: the
/// request failed because of the client, not the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ClientFault {
    /// Over the route's body limit (413).
    TooLarge,
    /// Malformed or aborted (400).
    Malformed,
    /// Paused longer than `body_timeout` (408).
    Slow,
}

/// Where [`Prefixed`] records a [`ClientFault`] for the request path
/// (the body itself is owned by the request to the server).
#[derive(Debug, Default)]
pub(super) struct Fault(std::sync::atomic::AtomicU8);

/// The fault of a request whose body is not streamed: never set.
pub(super) static NO_FAULT: Fault = Fault(std::sync::atomic::AtomicU8::new(0));

impl Fault {
    fn set(&self, f: ClientFault) {
        let v = match f {
            ClientFault::TooLarge => 1,
            ClientFault::Malformed => 2,
            ClientFault::Slow => 3,
        };
        self.0.store(v, std::sync::atomic::Ordering::Relaxed);
    }

    /// The fault recorded, if any.
    pub(super) fn get(&self) -> Option<ClientFault> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Some(ClientFault::TooLarge),
            2 => Some(ClientFault::Malformed),
            3 => Some(ClientFault::Slow),
            _ => None,
        }
    }
}

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body: from convoy's own HTTP/1 loop, or from an
/// HTTP/2 stream.
pub enum InBody {
    /// HTTP/1.
    H1(crate::h1::body::ReqBody),
    /// HTTP/2.
    H2(crate::http2::H2Body),
}

/// `Body` for an enum of two bodies, by delegation.
macro_rules! either_body {
    ($t:ident, $a:ident, $b:ident) => {
        impl Body for $t {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(
                self: Pin<&mut Self>,
                cx: &mut TaskCx<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                match self.get_mut() {
                    $t::$a(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
                    $t::$b(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
                }
            }
            fn is_end_stream(&self) -> bool {
                match self {
                    $t::$a(b) => b.is_end_stream(),
                    $t::$b(b) => b.is_end_stream(),
                }
            }
            fn size_hint(&self) -> SizeHint {
                match self {
                    $t::$a(b) => b.size_hint(),
                    $t::$b(b) => b.size_hint(),
                }
            }
        }
    };
}

either_body!(InBody, H1, H2);

/// A server's response body: from convoy's own HTTP/1 client, or from
/// hyper (HTTP/2 to servers).
pub enum UpResp {
    /// HTTP/1.
    H1(crate::h1::client::UpBody),
    /// HTTP/2.
    H2(Incoming),
}

either_body!(UpResp, H1, H2);

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match self.first.take() {
            Some(f) => f,
            None => match Pin::new(&mut self.rest).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => f,
                Poll::Ready(Some(Err(e))) => {
                    self.fault.set(ClientFault::Malformed);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    let pause = self.pause;
                    let t = self
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
                    if std::future::Future::poll(t.as_mut(), cx).is_ready() {
                        self.fault.set(ClientFault::Slow);
                        return Poll::Ready(Some(Err("request body timed out".into())));
                    }
                    return Poll::Pending;
                }
            },
        };
        // A frame arrived: the pause clock starts again.
        self.timer = None;
        if let Some(d) = frame.data_ref() {
            self.seen += d.len() as u64;
            if self.limit > 0 && self.seen > self.limit {
                self.fault.set(ClientFault::TooLarge);
                return Poll::Ready(Some(Err("request body over the route's limit".into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }
    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let n = self
            .first
            .as_ref()
            .and_then(|f| f.data_ref())
            .map_or(0, |d| d.len() as u64);
        // Unknown length stays unknown (chunked); only an exact length may
        // become a Content-Length.
        match rest.exact() {
            Some(e) => SizeHint::with_exact(e + n),
            None => {
                let mut h = SizeHint::new();
                h.set_lower(rest.lower() + n);
                if let Some(u) = rest.upper() {
                    h.set_upper(u + n);
                }
                h
            }
        }
    }
}

/// Holds a request's slot on a server; dropping it releases the slot to
/// the next queued request.
pub(super) struct Slot {
    pub(super) pool: Arc<PoolRuntime>,
    pub(super) idx: usize,
    pub(super) cost: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.release(self.idx, self.cost);
    }
}

/// The upstream response body, keeping the slot until it ends. A server
/// whose connections are closed by the control plane (drain timeout,
/// disabled, removed) has its responses cut at their next frame.
pub(super) struct Guarded {
    pub(super) inner: UpResp,
    pub(super) slot: Slot,
    pub(super) kill: watch::Receiver<u64>,
    /// A server that stops sending mid-body for `response_timeout` has
    /// its response cut (created at the first wait).
    pub(super) pause: Duration,
    pub(super) timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if r.is_pending() {
            let pause = self.pause;
            let t = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
            if std::future::Future::poll(t.as_mut(), cx).is_ready() {
                let s = &self.slot.pool.servers[self.slot.idx];
                s.state.count_error(ErrorKind::Timeout);
                debug!(server = %s.cfg.name, "response body timed out: cut");
                return Poll::Ready(Some(Err("server stopped sending its response".into())));
            }
            return Poll::Pending;
        }
        // (The clock is read only when a wait armed the timer.)
        let pause = self.pause;
        if let Some(t) = self.timer.as_mut() {
            t.as_mut().reset(tokio::time::Instant::now() + pause);
        }
        if self.kill.has_changed().unwrap_or(true) {
            debug!(server = %self.slot.pool.servers[self.slot.idx].cfg.name, "response cut: server connections closed");
            // An error, not an end: the client must not take a cut
            // response for a whole one (nor may the cache store it).
            return Poll::Ready(Some(Err("the server's connections were closed".into())));
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that writes the request's access-log line when it
/// ends.
pub(super) struct Tracked {
    pub(super) inner: RespBody,
    pub(super) rec: Option<Box<AccessRec>>,
    pub(super) access: Option<Arc<convoy_core::access::AccessLog>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let (Some(rec), Some(log)) = (self.rec.take(), &self.access) {
            log.write(rec.line());
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Some(rec), Poll::Ready(Some(Ok(f)))) = (&mut self.rec, &r) {
            if let Some(d) = f.data_ref() {
                rec.bytes += d.len() as u64;
            }
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::body::{Chan, ReqBody};
    use http_body_util::BodyExt;

    fn prefixed(ch: &Chan, limit: u64, fault: &Arc<Fault>) -> Prefixed {
        Prefixed {
            first: Some(Frame::data(Bytes::from_static(b"12345"))),
            rest: InBody::H1(ReqBody(Some(ch.clone()))),
            limit,
            seen: 0,
            fault: Arc::clone(fault),
            pause: Duration::from_secs(5),
            timer: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_body_records_the_clients_fault() {
        // Over the limit: 413, not the server's fault.
        let (ch, fault) = (Chan::new(None), Arc::new(Fault::default()));
        let mut b = prefixed(&ch, 8, &fault);
        ch.push(Bytes::from_static(b"6789"));
        assert!(b.frame().await.unwrap().is_ok(), "the first 5 bytes pass");
        assert!(b.frame().await.unwrap().is_err());
        assert_eq!(fault.get(), Some(ClientFault::TooLarge));
        // Aborted or malformed.
        let (ch, fault) = (Chan::new(None), Arc::new(Fault::default()));
        let mut b = prefixed(&ch, 0, &fault);
        ch.fail("client went away");
        let _ = b.frame().await;
        assert!(b.frame().await.unwrap().is_err());
        assert_eq!(fault.get(), Some(ClientFault::Malformed));
        // A pause longer than the body timeout.
        let (ch, fault) = (Chan::new(None), Arc::new(Fault::default()));
        let mut b = prefixed(&ch, 0, &fault);
        let _ = b.frame().await;
        assert!(b.frame().await.unwrap().is_err());
        assert_eq!(fault.get(), Some(ClientFault::Slow));
        // A good body ends cleanly and records nothing.
        let (ch, fault) = (Chan::new(Some(5)), Arc::new(Fault::default()));
        ch.finish();
        let got = prefixed(&ch, 0, &fault).collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"12345");
        assert_eq!(fault.get(), None);
    }
}
