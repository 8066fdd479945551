//! A client's HTTP/1 request body on its way to a server: the client
//! connection loop ([`super::server`]) reads and decodes it and pushes
//! the pieces into a small bounded channel; the request path reads them as
//! an `http_body::Body`. The loop stops reading from the client while the
//! channel holds [`HIGH_WATER`] bytes, so a slow server slows the client
//! down instead of growing a buffer.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Bytes buffered between the client and the request path at most.
pub const HIGH_WATER: usize = 64 * 1024;

#[derive(Default)]
struct State {
    frames: VecDeque<Bytes>,
    buffered: usize,
    /// Bytes still to come when the length is known.
    left: Option<u64>,
    end: bool,
    error: Option<&'static str>,
    /// The reader's waker.
    rx: Option<Waker>,
    /// The connection loop's waker, when it waits for room.
    tx: Option<Waker>,
    /// The body was asked for (time for `100 Continue`).
    wanted: bool,
    /// The reader is gone.
    dropped: bool,
}

/// The shared end of a request body, held by the connection loop.
#[derive(Clone, Default)]
pub struct Chan(Arc<Mutex<State>>);

impl std::fmt::Debug for Chan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Chan")
    }
}

impl Chan {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A channel for a body of `len` bytes (`None`: chunked).
    pub fn new(len: Option<u64>) -> Chan {
        Chan(Arc::new(Mutex::new(State {
            left: len,
            ..State::default()
        })))
    }

    /// Whether the loop may read more now; if not, the loop is woken
    /// when there is room again (or the reader went away).
    pub fn has_room(&self, cx: &mut Context<'_>) -> bool {
        let mut s = self.lock();
        if s.dropped || s.buffered < HIGH_WATER {
            return true;
        }
        if !s.tx.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.tx = Some(cx.waker().clone());
        }
        false
    }

    /// The reader asked for the body at least once; if not, the loop is
    /// woken when it does (time for `100 Continue`).
    pub fn wanted(&self, cx: &mut Context<'_>) -> bool {
        let mut s = self.lock();
        if s.wanted || s.dropped {
            return true;
        }
        if !s.tx.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.tx = Some(cx.waker().clone());
        }
        false
    }

    /// The reader is gone (what is read from now on is thrown away).
    pub fn dropped(&self) -> bool {
        self.lock().dropped
    }

    /// Hands a piece of body to the reader.
    pub fn push(&self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        let mut s = self.lock();
        if s.dropped {
            return;
        }
        s.buffered += b.len();
        s.frames.push_back(b);
        if let Some(w) = s.rx.take() {
            w.wake();
        }
    }

    /// The body is complete.
    pub fn finish(&self) {
        let mut s = self.lock();
        s.end = true;
        if let Some(w) = s.rx.take() {
            w.wake();
        }
    }

    /// The body failed (malformed, or the client went away).
    pub fn fail(&self, why: &'static str) {
        let mut s = self.lock();
        if s.end {
            return;
        }
        s.error = Some(why);
        if let Some(w) = s.rx.take() {
            w.wake();
        }
    }
}

/// The request body as the request path reads it (`None`: no body).
#[derive(Debug)]
pub struct ReqBody(pub Option<Chan>);

impl ReqBody {
    /// A request without a body.
    pub fn empty() -> ReqBody {
        ReqBody(None)
    }
}

impl Drop for ReqBody {
    fn drop(&mut self) {
        let Some(ch) = &self.0 else {
            return;
        };
        let mut s = ch.lock();
        s.dropped = true;
        s.frames.clear();
        s.buffered = 0;
        if let Some(w) = s.tx.take() {
            w.wake();
        }
    }
}

/// An error of the client's body.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub &'static str);

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(ch) = &self.0 else {
            return Poll::Ready(None);
        };
        let mut s = ch.lock();
        if let Some(b) = s.frames.pop_front() {
            let was_full = s.buffered >= HIGH_WATER;
            s.buffered -= b.len();
            if let Some(l) = s.left.as_mut() {
                *l = l.saturating_sub(b.len() as u64);
            }
            if was_full && s.buffered < HIGH_WATER {
                if let Some(w) = s.tx.take() {
                    w.wake();
                }
            }
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if let Some(e) = s.error {
            return Poll::Ready(Some(Err(BodyError(e))));
        }
        if s.end {
            return Poll::Ready(None);
        }
        if !s.wanted {
            s.wanted = true;
            // The loop may wait for the reader to want it (100 Continue).
            if let Some(w) = s.tx.take() {
                w.wake();
            }
        }
        if !s.rx.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.rx = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let Some(ch) = &self.0 else {
            return true;
        };
        let s = ch.lock();
        s.end && s.frames.is_empty() && s.error.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let Some(ch) = &self.0 else {
            return SizeHint::with_exact(0);
        };
        let s = ch.lock();
        match s.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn pieces_flow_and_room_comes_back() {
        let ch = Chan::new(Some(HIGH_WATER as u64 + 10));
        let mut body = ReqBody(Some(ch.clone()));
        assert_eq!(body.size_hint().exact(), Some(HIGH_WATER as u64 + 10));
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(ch.has_room(&mut cx));
        ch.push(Bytes::from(vec![1u8; HIGH_WATER]));
        assert!(!ch.has_room(&mut cx), "full");
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap().len(), HIGH_WATER);
        assert!(ch.has_room(&mut cx));
        // The reader asks for more once it finds nothing waiting.
        let wait = Chan::new(None);
        let mut quiet = ReqBody(Some(wait.clone()));
        let woken = Arc::new(Flag::default());
        let loop_waker = Waker::from(Arc::clone(&woken));
        let mut loop_cx = Context::from_waker(&loop_waker);
        assert!(!wait.wanted(&mut loop_cx), "nobody has asked yet");
        assert!(Pin::new(&mut quiet).poll_frame(&mut cx).is_pending());
        assert!(
            woken.0.load(std::sync::atomic::Ordering::SeqCst),
            "the loop waiting to send 100 Continue is woken when the body is asked for"
        );
        assert!(
            wait.wanted(&mut loop_cx),
            "an empty poll says the body is wanted"
        );
        ch.push(Bytes::from_static(b"0123456789"));
        ch.finish();
        assert_eq!(body.size_hint().exact(), Some(10));
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(&rest[..], b"0123456789");
    }

    #[tokio::test]
    async fn errors_and_drop() {
        let ch = Chan::new(None);
        let mut body = ReqBody(Some(ch.clone()));
        ch.fail("client went away");
        assert!(body.frame().await.unwrap().is_err());
        drop(body);
        assert!(ch.dropped());
        ch.push(Bytes::from_static(b"x"));
        let waker = futures_noop_waker();
        assert!(ch.has_room(&mut Context::from_waker(&waker)));
    }

    #[derive(Default)]
    struct Flag(std::sync::atomic::AtomicBool);
    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn futures_noop_waker() -> Waker {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        Waker::from(Arc::new(Noop))
    }
}
