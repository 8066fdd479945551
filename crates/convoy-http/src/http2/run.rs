//! Running the streams: polling each woken stream's request path and
//! response body, sending what the windows allow, and closing streams
//! (refusals, our own answers, resets and the reset budget).

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use tokio::time::Instant;

use super::body::{lock, H2Body};
use super::conn::Conn;
use super::frame::{self, Reason};
use super::output::Out;
use super::stream::{End, Phase, Step, Stream};
use super::{BoxError, Error, CLOSED_MEMORY, RESET_BUDGET};

/// Most finished request-path boxes a connection keeps for its next
/// streams (each a few KB, held only while streams are open).
const SPARE_FUTS: usize = 16;

impl<S, H, F, B> Conn<S, H, F, B>
where
    S: crate::h1::server::ClientStream,
    H: FnMut(Request<H2Body>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Polls every woken stream; true when one made progress.
    pub(super) fn run_streams(&mut self) -> bool {
        let ids = std::mem::take(&mut *self.ready.ids.lock().unwrap_or_else(|e| e.into_inner()));
        if ids.is_empty() {
            return false;
        }
        let mut stalled = false;
        for id in ids {
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.wake.queued.store(false, Ordering::Release);
            // Window taken by the request body goes back to the client.
            let (taken, dropped) = s.recv.as_ref().map_or((0, 0), |r| {
                let mut st = lock(r);
                let d = std::mem::take(&mut st.dropped) as u32;
                (std::mem::take(&mut st.released) as u32, d)
            });
            if s.recv_open {
                s.give_back(id, taken, &mut self.out.buf, self.set.stream_window);
            }
            let step = Self::step(
                s,
                id,
                &mut self.out,
                &mut self.conn_blocked,
                &mut self.spare_futs,
            );
            stalled |= s.stalled.is_some();
            self.give_back(taken + dropped);
            match step {
                Step::Idle => {}
                Step::Blocked => self.blocked.push(id),
                Step::Done => self.remove(id, End::Done),
                Step::Reset(r) => self.remove(id, End::Reset(r)),
            }
        }
        if !self.conn_blocked.is_empty() && self.window_stalled.is_none() {
            self.window_stalled = Some(Instant::now());
            stalled = true;
        }
        if stalled {
            self.arm(self.set.idle_timeout);
        }
        true
    }

    /// Polls one stream: its request path, then its response body, sent
    /// as far as the windows and our output allow.
    fn step(
        s: &mut Stream<F, B>,
        id: u32,
        out: &mut Out,
        conn_blocked: &mut Vec<u32>,
        spare_futs: &mut Vec<Pin<Box<F>>>,
    ) -> Step {
        loop {
            match &mut s.phase {
                Phase::Waiting(fut) => {
                    let mut cx = Context::from_waker(&s.waker);
                    match Self::respond(fut, id, &mut cx, out) {
                        ControlFlow::Break(step) => return step,
                        ControlFlow::Continue(body) => {
                            // The finished request path's box serves the
                            // next stream.
                            if let Phase::Waiting(done) =
                                std::mem::replace(&mut s.phase, Phase::Body(body))
                            {
                                if spare_futs.len() < SPARE_FUTS {
                                    spare_futs.push(done);
                                }
                            }
                        }
                    }
                }
                Phase::Body(_) if !s.pending.is_empty() || s.end_pending => {
                    if let Some(step) = Self::send_pending(s, id, out, conn_blocked) {
                        return step;
                    }
                }
                Phase::Body(body) => {
                    if out.full() {
                        return Step::Blocked;
                    }
                    let mut cx = Context::from_waker(&s.waker);
                    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        Pin::new(&mut *body).poll_frame(&mut cx)
                    }));
                    let Ok(polled) = polled else {
                        tracing::error!(stream = id, "HTTP/2 response body panicked: stream reset");
                        return Step::Reset(Reason::INTERNAL_ERROR);
                    };
                    match polled {
                        Poll::Pending => return Step::Idle,
                        Poll::Ready(None) => {
                            s.end_pending = true;
                        }
                        Poll::Ready(Some(Err(e))) => {
                            let e: BoxError = e.into();
                            tracing::debug!(error = %e, "response body failed: stream reset");
                            return Step::Reset(Reason::INTERNAL_ERROR);
                        }
                        Poll::Ready(Some(Ok(f))) => match f.into_data() {
                            Ok(d) => {
                                s.pending = d;
                                s.end_pending = body.is_end_stream();
                            }
                            Err(f) => {
                                if let Ok(t) = f.into_trailers() {
                                    s.trailers = Some(t);
                                    s.end_pending = true;
                                }
                            }
                        },
                    }
                    if s.end_pending && s.pending.is_empty() {
                        if let Some(t) = s.trailers.take() {
                            out.trailers(id, &t);
                        } else {
                            out.data(id, &[], true);
                        }
                        return Step::Done;
                    }
                }
            }
        }
    }

    /// Polls a stream's request path; once it has a response, writes the
    /// response head and continues with its body (or breaks with what the
    /// stream's poll ends with).
    fn respond(
        fut: &mut Pin<Box<F>>,
        id: u32,
        cx: &mut Context<'_>,
        out: &mut Out,
    ) -> ControlFlow<Step, B> {
        // A panic in one request path resets its stream, not
        // the connection's others.
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx)));
        let resp = match polled {
            Ok(Poll::Ready(resp)) => resp,
            Ok(Poll::Pending) => return ControlFlow::Break(Step::Idle),
            Err(_) => {
                tracing::error!(stream = id, "HTTP/2 request path panicked: stream reset");
                return ControlFlow::Break(Step::Reset(Reason::INTERNAL_ERROR));
            }
        };
        let (mut parts, body) = resp.into_parts();
        crate::headers::strip_hop_by_hop(&mut parts.headers);
        let end = body.is_end_stream();
        let status = parts.status.as_u16();
        if let Some(n) = body.size_hint().exact() {
            if n > 0
                && status >= 200
                && status != 204
                && status != 304
                && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
            {
                parts
                    .headers
                    .insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        out.response_head(id, end, status, &parts.headers);
        // The head is written: its map serves the next head parsed here.
        crate::h1::parse::recycle(std::mem::take(&mut parts.headers));
        if end {
            return ControlFlow::Break(Step::Done);
        }
        ControlFlow::Continue(body)
    }

    /// Sends the stream's pending response data as far as the windows
    /// allow; `None`: sent, go on with the stream.
    fn send_pending(
        s: &mut Stream<F, B>,
        id: u32,
        out: &mut Out,
        conn_blocked: &mut Vec<u32>,
    ) -> Option<Step> {
        // Send what the windows allow.
        let n = (s.pending.len() as i64)
            .min(s.send_window)
            .min(out.window)
            .min(out.max_frame as i64)
            .max(0) as usize;
        if n == 0 && !s.pending.is_empty() {
            if s.send_window > 0 {
                // The connection's window: the client may
                // be reading other streams (its clock is
                // the connection's).
                if !conn_blocked.contains(&id) {
                    conn_blocked.push(id);
                }
            } else if s.stalled.is_none() {
                s.stalled = Some(Instant::now());
            }
            return Some(Step::Idle);
        }
        s.stalled = None;
        let chunk = s.pending.split_to(n);
        let last = s.pending.is_empty() && s.end_pending && s.trailers.is_none();
        out.data(id, &chunk, last);
        s.send_window -= n as i64;
        out.window -= n as i64;
        if s.pending.is_empty() {
            if let Some(t) = s.trailers.take() {
                out.trailers(id, &t);
                return Some(Step::Done);
            }
            if s.end_pending {
                return Some(Step::Done);
            }
        }
        if out.full() {
            return Some(Step::Blocked);
        }
        None
    }

    /// Remembers a closed stream (`reset`: by our RST_STREAM).
    pub(super) fn note_closed(&mut self, id: u32, reset: bool) {
        if self.closed.len() == CLOSED_MEMORY {
            self.closed.pop_front();
        }
        self.closed.push_back((id, reset));
    }

    /// For a recently closed stream: whether we reset it.
    pub(super) fn closed_by_us(&self, id: u32) -> Option<bool> {
        self.closed
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|&(_, r)| r)
    }

    /// Resets a stream that never reached the request path.
    pub(super) fn refuse(&mut self, id: u32, why: Reason) {
        frame::rst_stream(&mut self.out.buf, id, why);
        self.note_closed(id, true);
    }

    /// Answers a stream with a bodiless `status` of convoy's own (the
    /// request path never sees it); a client still sending is told to
    /// stop (RST_STREAM NO_ERROR, RFC 9113 §8.1).
    pub(super) fn answer(&mut self, id: u32, end: bool, status: u16) {
        self.out.response_head(id, true, status, &HeaderMap::new());
        if !end {
            frame::rst_stream(&mut self.out.buf, id, Reason::NO_ERROR);
        }
        self.note_closed(id, !end);
    }

    /// Removes a stream: its request path is dropped and what its body
    /// held is given back. At most one RST_STREAM goes out: the reason
    /// given, or after a complete response `NO_ERROR` if the client may
    /// still send (RFC 9113 §8.1), none after the client's own reset. A
    /// stream that ends before its response, by the client's reset or by
    /// one it provoked, counts against the reset budget; a completed one
    /// earns one back.
    pub(super) fn remove(&mut self, id: u32, how: End) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        let mut back = 0;
        if let Some(r) = &s.recv {
            let st = lock(r);
            back = (st.held + st.released + st.dropped) as u32;
        }
        let rst = match how {
            End::Done => s.recv_open.then_some(Reason::NO_ERROR),
            End::ByClient => None,
            End::Reset(r) => Some(r),
        };
        if let Some(r) = rst {
            frame::rst_stream(&mut self.out.buf, id, r);
        }
        self.note_closed(id, rst.is_some());
        if matches!(how, End::Done) {
            self.resets = self.resets.saturating_sub(1);
        } else if matches!(s.phase, Phase::Waiting(_)) {
            self.resets += 1;
            if self.resets > RESET_BUDGET && self.failed.is_none() {
                self.fail(Error::Protocol(
                    Reason::ENHANCE_YOUR_CALM,
                    "too many streams reset before their response",
                ));
            }
        }
        drop(s);
        self.give_back(back);
        if self.streams.is_empty() {
            self.last_read = Instant::now();
            self.spare_futs = Vec::new();
        }
    }
}
