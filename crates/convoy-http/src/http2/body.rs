//! Request bodies of HTTP/2 streams: what the connection receives for a
//! stream ([`RecvState`], shared with the body), and the [`H2Body`] the
//! request path reads, which gives its flow-control window back as it is
//! read.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// A request body that could not be read to its end.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub(super) &'static str);

#[derive(Debug, Default)]
pub(super) struct RecvState {
    pub(super) data: VecDeque<Bytes>,
    pub(super) trailers: Option<HeaderMap>,
    /// The client ended its side.
    pub(super) end: bool,
    pub(super) err: Option<BodyError>,
    /// The body's reader waits here.
    pub(super) waker: Option<Waker>,
    /// Bytes received and not yet taken by the body.
    pub(super) held: usize,
    /// Bytes taken and not yet given back to the client as window.
    pub(super) released: usize,
    /// The body was dropped unread: what comes is thrown away.
    pub(super) gone: bool,
    /// Bytes thrown away and not yet given back to the connection's
    /// window (the stream's stays shut: that client waits, not others).
    pub(super) dropped: usize,
}

pub(super) type Recv = Arc<Mutex<RecvState>>;

pub(super) fn lock(r: &Recv) -> std::sync::MutexGuard<'_, RecvState> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for H2Body {
    fn drop(&mut self) {
        // Unread data gives the connection's window back, so that a
        // request path that left its body does not block the other
        // streams' uploads.
        if let Some(r) = &self.recv {
            let mut st = lock(r);
            st.gone = true;
            st.dropped += std::mem::take(&mut st.held);
            st.data.clear();
            drop(st);
            if let Some(w) = &self.stream {
                w.wake_by_ref();
            }
        }
    }
}

/// A client's HTTP/2 request body.
pub struct H2Body {
    /// `None`: the request ended with its head.
    pub(super) recv: Option<Recv>,
    /// The stream's waker: tells the connection that window came free.
    pub(super) stream: Option<Waker>,
    /// Bytes announced by `content-length` and not yet received.
    pub(super) left: Option<u64>,
    pub(super) done: bool,
}

impl H2Body {
    pub(super) fn empty() -> Self {
        H2Body {
            recv: None,
            stream: None,
            left: Some(0),
            done: true,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(recv) = &this.recv else {
            return Poll::Ready(None);
        };
        if this.done {
            return Poll::Ready(None);
        }
        let mut st = lock(recv);
        if let Some(b) = st.data.pop_front() {
            st.held -= b.len();
            st.released += b.len();
            drop(st);
            // The window comes back as the body is taken.
            if let Some(w) = &this.stream {
                w.wake_by_ref();
            }
            if let Some(n) = &mut this.left {
                *n = n.saturating_sub(b.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if let Some(e) = st.err {
            this.done = true;
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(t) = st.trailers.take() {
            this.done = true;
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if st.end {
            this.done = true;
            return Poll::Ready(None);
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        match &self.recv {
            None => true,
            Some(_) if self.done => true,
            Some(r) => {
                let st = lock(r);
                st.end && st.data.is_empty() && st.trailers.is_none() && st.err.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None if self.is_end_stream() => SizeHint::with_exact(0),
            None => SizeHint::new(),
        }
    }
}
