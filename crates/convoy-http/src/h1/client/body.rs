//! Bodies on a server connection: the streamed request body pumped to
//! the server ([`Pump`]) and the response body read from the connection
//! ([`UpBody`]), which hands the connection back to the pool when it ends.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::super::parse::{self, ChunkedDecoder, Decoded};
use super::{consume, poll_read_buf, BoxError, Key, Pool, StreamBody, UpConn, UpIo, READ_CHUNK};

pub(super) enum PumpError {
    Body(BoxError),
    Io(io::Error),
}

/// Streams a request body to the server: each piece framed (chunked, or
/// as is under a Content-Length) and written.
pub(super) struct Pump {
    body: StreamBody,
    chunked: bool,
    pending: VecDeque<Bytes>,
    /// The body was polled (it cannot be sent again).
    pub(super) started: bool,
    ended: bool,
    /// Everything is written.
    pub(super) done: bool,
}

impl Pump {
    pub(super) fn new(body: StreamBody, chunked: bool) -> Pump {
        Pump {
            body,
            chunked,
            pending: VecDeque::new(),
            started: false,
            ended: false,
            done: false,
        }
    }

    /// Makes progress; `Ready(Ok)` once all of the body is written.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut UpIo,
    ) -> Poll<Result<(), PumpError>> {
        loop {
            // Write what is pending first.
            while !self.pending.is_empty() {
                let mut slices = [io::IoSlice::new(&[]); 8];
                let mut k = 0;
                for (s, b) in slices.iter_mut().zip(self.pending.iter()) {
                    *s = io::IoSlice::new(b);
                    k += 1;
                }
                let mut n = match ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k])) {
                    Ok(0) => {
                        return Poll::Ready(Err(PumpError::Io(io::ErrorKind::WriteZero.into())))
                    }
                    Ok(n) => n,
                    Err(e) => return Poll::Ready(Err(PumpError::Io(e))),
                };
                consume(&mut self.pending, &mut n);
            }
            if self.ended {
                if let Err(e) = ready!(Pin::new(&mut *io).poll_flush(cx)) {
                    return Poll::Ready(Err(PumpError::Io(e)));
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            self.started = true;
            match ready!(self.body.as_mut().poll_frame(cx)) {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        if d.is_empty() {
                            continue;
                        }
                        if self.chunked {
                            self.pending.push_back(parse::chunk_head(d.len()));
                            self.pending.push_back(d);
                            self.pending.push_back(Bytes::from_static(b"\r\n"));
                        } else {
                            self.pending.push_back(d);
                        }
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(PumpError::Body(e))),
                None => {
                    if self.chunked {
                        self.pending.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                    self.ended = true;
                }
            }
        }
    }
}

#[derive(Debug)]
pub(super) enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
    Upgrade,
    Done,
    Failed,
}

/// A server's response body, read from its connection; the connection
/// goes back to the pool when the body has ended (if the server keeps it
/// open and the request was sent whole).
pub struct UpBody {
    pub(super) conn: Option<UpConn>,
    pub(super) state: BodyState,
    pub(super) pump: Option<Pump>,
    pub(super) keep_alive: bool,
    pub(super) pool: Arc<Pool>,
    pub(super) key: Key,
}

impl std::fmt::Debug for UpBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpBody")
            .field("state", &self.state)
            .finish()
    }
}

/// An error while reading a response body.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UpBodyError(pub String);

impl UpBody {
    pub(super) fn finished(&mut self) {
        self.state = BodyState::Done;
        if let Some(c) = self.conn.take() {
            if self.keep_alive && self.pump.is_none() && c.buf.is_empty() {
                self.pool.checkin(self.key, c);
            }
        }
    }

    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = BodyState::Failed;
        self.conn = None;
        Poll::Ready(Some(Err(Box::new(UpBodyError(why)))))
    }

    /// After a `101 Switching Protocols`: the connection and the bytes
    /// the server sent after its head.
    pub fn into_upgraded(mut self) -> Option<(UpIo, BytesMut)> {
        if !matches!(self.state, BodyState::Upgrade) {
            return None;
        }
        let c = self.conn.take()?;
        Some((c.io, c.buf))
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(c) = this.conn.as_mut() else {
                // Ended, failed or handed over: nothing more comes.
                return Poll::Ready(None);
            };
            if let Some(p) = this.pump.as_mut() {
                match p.poll(cx, &mut c.io) {
                    Poll::Ready(Ok(())) => this.pump = None,
                    Poll::Pending => {}
                    Poll::Ready(Err(PumpError::Body(e))) => {
                        return this.fail(format!("request body failed: {e}"))
                    }
                    Poll::Ready(Err(PumpError::Io(_))) => {
                        // The server stopped reading: its response goes on,
                        // the connection is not kept.
                        this.pump = None;
                        this.keep_alive = false;
                    }
                }
            }
            match &mut this.state {
                BodyState::Done | BodyState::Failed | BodyState::Upgrade => {
                    return Poll::Ready(None)
                }
                BodyState::Length(left) => {
                    if !c.buf.is_empty() {
                        let n = (c.buf.len() as u64).min(*left) as usize;
                        *left -= n as u64;
                        let d = c.buf.split_to(n).freeze();
                        if *left == 0 {
                            this.finished();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(d))));
                    }
                }
                BodyState::Chunked(dec) => match dec.decode(&mut c.buf) {
                    Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                    Ok(Decoded::End) => {
                        this.finished();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return this.fail(format!("bad chunked response body: {e}")),
                },
                BodyState::Close => {
                    if !c.buf.is_empty() {
                        let d = c.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(d))));
                    }
                }
            }
            let Some(c) = this.conn.as_mut() else {
                continue;
            };
            match poll_read_buf(&mut c.io, cx, &mut c.buf, READ_CHUNK) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if matches!(this.state, BodyState::Close) {
                        this.keep_alive = false;
                        this.finished();
                        return Poll::Ready(None);
                    }
                    return this.fail("server closed the connection mid-body".into());
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(format!("reading the response body: {e}")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done | BodyState::Upgrade)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Done | BodyState::Upgrade => SizeHint::with_exact(0),
            _ => SizeHint::new(),
        }
    }
}
