//! What the client sends on streams: DATA into request bodies (with the
//! flow-control windows given back), and header blocks that open a
//! stream or end its request with trailers.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;

use super::body::{lock, H2Body, RecvState};
use super::conn::{Conn, Cont};
use super::frame::{self, Head, Reason};
use super::hpack::{self, Name};
use super::input::proto;
use super::request::{connection_specific, ReqHead};
use super::stream::{End, Phase, Stream, StreamWake};
use super::{BoxError, Error};

impl<S, H, F, B> Conn<S, H, F, B>
where
    S: crate::h1::server::ClientStream,
    H: FnMut(Request<H2Body>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Strips padding (and the priority fields of HEADERS, returning the
    /// stream dependency they name).
    fn unpad(h: &Head, mut p: Bytes, priority: bool) -> Result<(Bytes, Option<u32>), Error> {
        let mut pad = 0;
        let mut dep = None;
        if h.flags & frame::PADDED != 0 {
            if p.is_empty() {
                return Err(Error::Protocol(
                    Reason::PROTOCOL_ERROR,
                    "padded frame without pad length",
                ));
            }
            pad = usize::from(p[0]);
            p.advance(1);
        }
        if priority && h.flags & frame::PRIORITY_FLAG != 0 {
            if p.len() < 5 {
                return Err(Error::Protocol(
                    Reason::PROTOCOL_ERROR,
                    "HEADERS too short for its priority",
                ));
            }
            dep = Some(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff);
            p.advance(5);
        }
        if pad > p.len() {
            return Err(Error::Protocol(
                Reason::PROTOCOL_ERROR,
                "padding longer than the frame",
            ));
        }
        p.truncate(p.len() - pad);
        Ok((p, dep))
    }

    pub(super) fn data(&mut self, h: Head, p: Bytes) -> Result<(), Error> {
        if h.stream == 0 {
            return Err(Error::Protocol(Reason::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        if h.stream > self.last_id || h.stream.is_multiple_of(2) {
            return Err(Error::Protocol(
                Reason::PROTOCOL_ERROR,
                "DATA on an idle stream",
            ));
        }
        let flow = p.len() as i64;
        self.recv_window -= flow;
        if self.recv_window < 0 {
            return Err(Error::Protocol(
                Reason::FLOW_CONTROL_ERROR,
                "client sent past the connection window",
            ));
        }
        let (data, _) = Self::unpad(&h, p, false)?;
        // Padding, and data nobody reads, is given back at once.
        let mut give_back = flow - data.len() as i64;
        let end = h.flags & frame::END_STREAM != 0;
        let id = h.stream;
        let mut reset = None;
        match self.streams.get_mut(&id) {
            Some(s) if s.recv_open => {
                s.recv_window -= flow;
                if s.recv_window < 0 {
                    reset = Some(Reason::FLOW_CONTROL_ERROR);
                } else {
                    let n = data.len() as u64;
                    let bad_len = match &mut s.expect {
                        Some(left) if n > *left || (end && n != *left) => true,
                        Some(left) => {
                            *left -= n;
                            false
                        }
                        None => false,
                    };
                    if bad_len {
                        reset = Some(Reason::PROTOCOL_ERROR);
                    } else {
                        let r = s.recv.as_ref().expect("receiving");
                        let mut st = lock(r);
                        if st.gone {
                            give_back = flow;
                        } else if !data.is_empty() {
                            st.held += data.len();
                            // A small frame is copied: held as a slice it
                            // would keep its whole read buffer alive.
                            let data = if data.len() < 4096 {
                                Bytes::copy_from_slice(&data)
                            } else {
                                data
                            };
                            st.data.push_back(data);
                        }
                        if end {
                            st.end = true;
                        }
                        if let Some(w) = st.waker.take() {
                            w.wake();
                        }
                        drop(st);
                        // Padding goes back to the stream's window too.
                        let pad = (flow - n as i64) as u32;
                        if !end {
                            s.give_back(id, pad, &mut self.out.buf, self.set.stream_window);
                        }
                        if end {
                            s.recv_open = false;
                        }
                    }
                }
                if reset.is_some() {
                    give_back = flow;
                }
            }
            // Closed for receiving: reset unless we already did.
            Some(_) => {
                give_back = flow;
                reset = Some(Reason::STREAM_CLOSED);
            }
            // Closed: ignored after our own reset (the client may have
            // sent it before seeing ours); after both ends closed, or
            // after the client's reset, a connection error (§5.1).
            None => {
                give_back = flow;
                if self.closed_by_us(id) == Some(false) {
                    return Err(Error::Protocol(
                        Reason::STREAM_CLOSED,
                        "DATA on a closed stream",
                    ));
                }
            }
        }
        if let Some(r) = reset {
            self.remove(id, End::Reset(r));
        }
        self.give_back(give_back as u32);
        Ok(())
    }

    /// Gives `n` bytes of connection window back to the client, in
    /// updates of at least half the window.
    pub(super) fn give_back(&mut self, n: u32) {
        self.recv_unacked += n;
        if self.recv_unacked >= self.set.conn_window / 2 && self.recv_unacked > 0 {
            frame::window_update(&mut self.out.buf, 0, self.recv_unacked);
            self.recv_window += i64::from(self.recv_unacked);
            self.recv_unacked = 0;
        }
    }

    pub(super) fn headers(&mut self, h: Head, p: Bytes) -> Result<(), Error> {
        let id = h.stream;
        if id == 0 || id.is_multiple_of(2) {
            return Err(Error::Protocol(
                Reason::PROTOCOL_ERROR,
                "HEADERS on a stream a client may not open",
            ));
        }
        let (block, dep) = Self::unpad(&h, p, true)?;
        let self_dep = dep == Some(id);
        let end = h.flags & frame::END_STREAM != 0;
        if h.flags & frame::END_HEADERS == 0 {
            let mut b = BytesMut::with_capacity(block.len() * 2);
            b.extend_from_slice(&block);
            self.cont = Some(Cont {
                id,
                end,
                self_dep,
                block: b,
            });
            return Ok(());
        }
        self.block(id, end, block, self_dep)
    }

    /// A CONTINUATION frame: more of the header block in progress.
    pub(super) fn continuation(&mut self, h: Head, p: Bytes) -> Result<(), Error> {
        let Some(c) = &mut self.cont else {
            return proto("CONTINUATION without HEADERS");
        };
        if c.block.len() + p.len() > 64 * 1024 {
            return Err(Error::Protocol(
                Reason::ENHANCE_YOUR_CALM,
                "header block over 64 KiB",
            ));
        }
        c.block.extend_from_slice(&p);
        if h.flags & frame::END_HEADERS != 0 {
            let c = self.cont.take().expect("continued block");
            self.block(c.id, c.end, c.block.freeze(), c.self_dep)?;
        }
        Ok(())
    }

    /// A whole header block: a new request, or trailers.
    fn block(&mut self, id: u32, end: bool, block: Bytes, self_dep: bool) -> Result<(), Error> {
        if id <= self.last_id {
            return self.trailers(id, end, block, self_dep);
        }
        let mut req = ReqHead::default();
        let limit = self.set.max_header_list as usize;
        self.dec
            .decode(&block, |n, v, size| req.field(n, v, size, limit))
            .map_err(|e| Error::Protocol(Reason::COMPRESSION_ERROR, e.0))?;
        self.last_id = id;
        if self.stopping {
            // Opened after our GOAWAY: ignored (RFC 9113 §6.8), and so
            // is what follows on it.
            self.note_closed(id, true);
            return Ok(());
        }
        if self_dep {
            // RFC 9113 §5.3.1: a stream error.
            self.refuse(id, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        if self.streams.len() >= self.set.max_concurrent_streams as usize {
            self.refuse(id, Reason::REFUSED_STREAM);
            return Ok(());
        }
        if req.size > limit {
            self.answer(id, end, 431);
            return Ok(());
        }
        let Some((mut request, expect)) = req.build(end) else {
            tracing::debug!(
                stream = id,
                why = req.bad.unwrap_or("?"),
                "malformed HTTP/2 request: stream reset"
            );
            self.refuse(id, Reason::PROTOCOL_ERROR);
            return Ok(());
        };
        if request.method() == Method::CONNECT {
            // convoy makes no tunnels (and offers no extended CONNECT,
            // RFC 8441): refused as over HTTP/1, never forwarded.
            tracing::debug!(stream = id, "CONNECT refused: 405");
            self.answer(id, end, 405);
            return Ok(());
        }
        let wake = Arc::new(StreamWake {
            id,
            queued: AtomicBool::new(false),
            ready: Arc::clone(&self.ready),
        });
        let waker = Waker::from(Arc::clone(&wake));
        let recv = (!end).then(|| Arc::new(Mutex::new(RecvState::default())));
        if let Some(r) = &recv {
            *request.body_mut() = H2Body {
                recv: Some(Arc::clone(r)),
                stream: Some(waker.clone()),
                left: expect,
                done: false,
            };
            if request
                .headers()
                .get(http::header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
            {
                // Answered here: the client may send its body at once.
                request.headers_mut().remove(http::header::EXPECT);
                self.out.headers(id, false, |enc, dst| enc.status(100, dst));
            }
        }
        let fut = match self.spare_futs.pop() {
            // A finished request path's box: the new one written in place.
            Some(mut b) => {
                b.as_mut().set((self.handler)(request));
                b
            }
            None => Box::pin((self.handler)(request)),
        };
        wake.wake_by_ref();
        self.streams.insert(
            id,
            Stream {
                wake,
                waker,
                phase: Phase::Waiting(fut),
                send_window: self.peer_window,
                recv_open: recv.is_some(),
                recv,
                recv_window: i64::from(self.set.stream_window),
                unacked: 0,
                expect,
                pending: Bytes::new(),
                end_pending: false,
                trailers: None,
                stalled: None,
            },
        );
        Ok(())
    }

    fn trailers(&mut self, id: u32, end: bool, block: Bytes, self_dep: bool) -> Result<(), Error> {
        let mut fields = HeaderMap::new();
        let mut size = 0;
        let mut bad = false;
        let limit = self.set.max_header_list as usize;
        self.dec
            .decode(&block, |n, v, s| {
                size += s;
                if size > limit {
                    return;
                }
                match (n, v) {
                    (Name::Field(n), hpack::Value::Field(v)) if !connection_specific(n) => {
                        fields.append(n.clone(), v);
                    }
                    _ => bad = true,
                }
            })
            .map_err(|e| Error::Protocol(Reason::COMPRESSION_ERROR, e.0))?;
        let Some(s) = self.streams.get_mut(&id) else {
            // A stream that is over: ignored after our own reset; after
            // both ends closed or the client's reset, a connection error
            // (§5.1); a lower id never opened is refused (§5.1.1).
            return match self.closed_by_us(id) {
                Some(true) => Ok(()),
                Some(false) => Err(Error::Protocol(
                    Reason::STREAM_CLOSED,
                    "HEADERS on a closed stream",
                )),
                None => Err(Error::Protocol(
                    Reason::PROTOCOL_ERROR,
                    "stream id lower than one already opened",
                )),
            };
        };
        if self_dep {
            self.remove(id, End::Reset(Reason::PROTOCOL_ERROR));
            return Ok(());
        }
        let (true, Some(r)) = (s.recv_open, &s.recv) else {
            self.remove(id, End::Reset(Reason::STREAM_CLOSED));
            return Ok(());
        };
        if !end
            || bad
            || size > self.set.max_header_list as usize
            || s.expect.is_some_and(|l| l != 0)
        {
            self.remove(id, End::Reset(Reason::PROTOCOL_ERROR));
            return Ok(());
        }
        let mut st = lock(r);
        st.trailers = Some(fields);
        st.end = true;
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        drop(st);
        s.recv_open = false;
        Ok(())
    }
}
