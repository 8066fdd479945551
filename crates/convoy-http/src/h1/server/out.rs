//! The response bytes waiting to be written to the client: the head and
//! the body pieces, chunked when the framing says so, written in one
//! (vectored) write where possible.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Body;
use tokio::io::AsyncWrite;

use super::super::parse;
use super::BoxedResp;

/// The response bytes waiting to be written: the head (its buffer kept
/// for the next response) and body pieces.
#[derive(Default)]
pub(super) struct Out {
    pub(super) head: Vec<u8>,
    pub(super) head_off: usize,
    pub(super) pending: std::collections::VecDeque<Bytes>,
    pub(super) queued: usize,
    /// Bytes written so far (to see a client that stopped reading).
    pub(super) written: u64,
    pub(super) chunked: bool,
    pub(super) ended: bool,
    pub(super) end_queued: bool,
}

impl Out {
    /// Nothing queued yet; room for a usual head.
    pub(super) fn new() -> Out {
        Out {
            head: Vec::with_capacity(512),
            ..Out::default()
        }
    }

    /// Starts a response whose head is in `self.head`.
    fn start(&mut self, chunked: bool) {
        self.pending.clear();
        self.head_off = 0;
        self.queued = self.head.len();
        self.chunked = chunked;
        self.ended = false;
        self.end_queued = false;
    }

    /// Starts a response with the head `w` writes.
    pub(super) fn start_response(&mut self, w: parse::ResponseWrite<'_>) {
        self.head.clear();
        w.write(&mut self.head);
        self.start(w.framing == parse::Framing::Chunked);
    }

    fn push(&mut self, b: Bytes) {
        self.queued += b.len();
        self.pending.push_back(b);
    }

    fn data(&mut self, d: Bytes) {
        if d.is_empty() {
            return;
        }
        if !self.chunked && self.pending.is_empty() && self.head_off == 0 && d.len() <= 2048 {
            // A small body right behind a head not yet written: one
            // buffer, one plain write.
            self.head.extend_from_slice(&d);
            self.queued += d.len();
            return;
        }
        if self.chunked {
            self.push(parse::chunk_head(d.len()));
            self.push(d);
            self.push(Bytes::from_static(b"\r\n"));
        } else {
            self.push(d);
        }
    }

    fn end(&mut self) {
        self.ended = true;
        if self.chunked && !self.end_queued {
            self.end_queued = true;
            self.push(Bytes::from_static(b"0\r\n\r\n"));
        }
    }

    /// Gathers what the body has now and writes it in one go, until the
    /// body or the client makes it wait (`Pending`): `Ready(true)` when
    /// the whole response is out, `Ready(false)` when it cannot be (a
    /// write failed, or the body failed and what came of it is out).
    pub(super) fn poll_send<S: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        body: &mut BoxedResp,
        cut: &mut bool,
        bodiless: bool,
    ) -> Poll<bool> {
        loop {
            let waiting = self.gather(cx, body, cut, bodiless);
            match self.poll_write(cx, io) {
                Poll::Ready(Ok(true)) => return Poll::Ready(true),
                Poll::Ready(Ok(false)) if *cut => return Poll::Ready(false),
                Poll::Ready(Ok(false)) if !waiting => continue,
                Poll::Ready(Ok(false)) | Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(false),
            }
        }
    }

    /// Queues what the body has now (up to 64 KiB waiting); `true` when
    /// the body made it wait. A body that fails sets `cut`.
    fn gather(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut BoxedResp,
        cut: &mut bool,
        bodiless: bool,
    ) -> bool {
        let mut waiting = false;
        while !*cut && !self.ended && self.queued < 64 * 1024 {
            if bodiless {
                self.ended = true;
                break;
            }
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        self.data(d);
                    }
                }
                Poll::Ready(None) => self.end(),
                Poll::Ready(Some(Err(e))) => {
                    // Cut: what came goes out, then the connection closes, so
                    // the client cannot take it for whole (short of its
                    // length, or no last chunk).
                    tracing::debug!(error = %e, "response body failed: closing");
                    *cut = true;
                    break;
                }
                Poll::Pending => {
                    waiting = true;
                    break;
                }
            }
        }
        waiting
    }

    /// Writes what is queued: `Ok(true)` when the whole response is out,
    /// `Ok(false)` when the queue emptied but the body goes on.
    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
    ) -> Poll<io::Result<bool>> {
        while self.queued > 0 {
            let head = &self.head[self.head_off..];
            let n = if self.pending.is_empty() {
                std::task::ready!(Pin::new(&mut *io).poll_write(cx, head))?
            } else if head.is_empty() && self.pending.len() == 1 {
                std::task::ready!(Pin::new(&mut *io).poll_write(cx, &self.pending[0]))?
            } else {
                let mut slices = [io::IoSlice::new(&[]); 16];
                let mut k = 0;
                if !head.is_empty() {
                    slices[0] = io::IoSlice::new(head);
                    k = 1;
                }
                for b in self.pending.iter() {
                    if k == slices.len() {
                        break;
                    }
                    slices[k] = io::IoSlice::new(b);
                    k += 1;
                }
                std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queued -= n;
            self.written += n as u64;
            let mut n = n;
            let in_head = (self.head.len() - self.head_off).min(n);
            self.head_off += in_head;
            n -= in_head;
            super::super::client::consume(&mut self.pending, &mut n);
        }
        if self.ended {
            std::task::ready!(Pin::new(&mut *io).poll_flush(cx))?;
            return Poll::Ready(Ok(true));
        }
        Poll::Ready(Ok(false))
    }
}
