//! Frame dispatch: the connection preface, every frame read from the
//! client taken apart and checked (RFC 9113 §6), and the connection-level
//! frames (SETTINGS, PING, GOAWAY, WINDOW_UPDATE, PRIORITY, RST_STREAM).

use std::future::Future;
use std::task::Wake;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::Body;

use super::body::H2Body;
use super::conn::Conn;
use super::frame::{self, Head, Reason};
use super::stream::End;
use super::{BoxError, Error, STOP_PING};

impl<S, H, F, B> Conn<S, H, F, B>
where
    S: crate::h1::server::ClientStream,
    H: FnMut(Request<H2Body>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Handles every whole frame in the read buffer.
    pub(super) fn frames(&mut self) -> Result<(), Error> {
        if !self.preface {
            if self.rbuf.len() < frame::PREFACE.len() {
                if !frame::PREFACE.starts_with(&self.rbuf[..]) {
                    return Err(Error::Protocol(
                        Reason::PROTOCOL_ERROR,
                        "bad connection preface",
                    ));
                }
                return Ok(());
            }
            if &self.rbuf[..24] != frame::PREFACE {
                return Err(Error::Protocol(
                    Reason::PROTOCOL_ERROR,
                    "bad connection preface",
                ));
            }
            self.rbuf.advance(24);
            self.preface = true;
        }
        while self.rbuf.len() >= 9 {
            let h = Head::parse(self.rbuf[..9].try_into().expect("9 bytes"));
            if h.len > frame::OUR_MAX_FRAME {
                return Err(Error::Protocol(
                    Reason::FRAME_SIZE_ERROR,
                    "frame larger than SETTINGS_MAX_FRAME_SIZE",
                ));
            }
            if self.rbuf.len() < 9 + h.len {
                self.rbuf.reserve(9 + h.len - self.rbuf.len());
                break;
            }
            if !self.settings_seen && h.kind != frame::SETTINGS {
                return Err(Error::Protocol(
                    Reason::PROTOCOL_ERROR,
                    "first frame is not SETTINGS",
                ));
            }
            if let Some(c) = &self.cont {
                if h.kind != frame::CONTINUATION || h.stream != c.id {
                    return Err(Error::Protocol(
                        Reason::PROTOCOL_ERROR,
                        "header block interrupted",
                    ));
                }
            }
            let payload = match h.kind {
                // Kept as shared bytes: data and header values are not copied.
                frame::DATA | frame::HEADERS | frame::CONTINUATION => {
                    let mut f = self.rbuf.split_to(9 + h.len);
                    f.advance(9);
                    f.freeze()
                }
                _ => {
                    let f = Bytes::copy_from_slice(&self.rbuf[9..9 + h.len]);
                    self.rbuf.advance(9 + h.len);
                    f
                }
            };
            self.frame(h, payload)?;
            if self.failed.is_some() {
                break;
            }
        }
        Ok(())
    }

    fn frame(&mut self, h: Head, p: Bytes) -> Result<(), Error> {
        use frame::*;
        match h.kind {
            DATA => self.data(h, p),
            HEADERS => self.headers(h, p),
            CONTINUATION => self.continuation(h, p),
            PRIORITY => self.priority(h, &p),
            RST_STREAM => self.rst_stream(h, &p),
            SETTINGS => self.settings(h, &p),
            PUSH_PROMISE => proto("PUSH_PROMISE from a client"),
            PING => self.ping(h, &p),
            GOAWAY => self.goaway(h, &p),
            WINDOW_UPDATE => self.window_update(h, &p),
            // Unknown types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn priority(&mut self, h: Head, p: &[u8]) -> Result<(), Error> {
        if h.stream == 0 {
            return proto("PRIORITY on stream 0");
        }
        if p.len() != 5 {
            // A stream error; taken for the whole connection, as
            // the stream may be idle.
            return Err(Error::Protocol(Reason::FRAME_SIZE_ERROR, "PRIORITY size"));
        }
        if u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff == h.stream {
            // A stream may not depend on itself (RFC 9113 §5.3.1):
            // an open stream is reset; for any other the error
            // is the connection's (no reset may name an idle one).
            if !self.streams.contains_key(&h.stream) {
                return proto("stream depends on itself");
            }
            self.remove(h.stream, End::Reset(Reason::PROTOCOL_ERROR));
        }
        Ok(())
    }

    fn rst_stream(&mut self, h: Head, p: &[u8]) -> Result<(), Error> {
        if h.stream == 0 {
            return proto("RST_STREAM on stream 0");
        }
        if p.len() != 4 {
            return Err(Error::Protocol(Reason::FRAME_SIZE_ERROR, "RST_STREAM size"));
        }
        if h.stream > self.last_id || h.stream.is_multiple_of(2) {
            return proto("RST_STREAM on an idle stream");
        }
        // The request path is dropped: its slot comes free.
        self.remove(h.stream, End::ByClient);
        Ok(())
    }

    fn ping(&mut self, h: Head, p: &[u8]) -> Result<(), Error> {
        use frame::*;
        if h.stream != 0 {
            return proto("PING on a stream");
        }
        if p.len() != 8 {
            return Err(Error::Protocol(Reason::FRAME_SIZE_ERROR, "PING size"));
        }
        if h.flags & ACK == 0 {
            frame::head(&mut self.out.buf, 8, PING, ACK, 0);
            self.out.buf.extend_from_slice(p);
        } else if p[..] == STOP_PING[..] {
            // Every stream the client opened before our first
            // GOAWAY has arrived by now.
            self.finish_stop();
        }
        Ok(())
    }

    fn goaway(&mut self, h: Head, p: &[u8]) -> Result<(), Error> {
        if h.stream != 0 {
            return proto("GOAWAY on a stream");
        }
        if p.len() < 8 {
            return Err(Error::Protocol(Reason::FRAME_SIZE_ERROR, "GOAWAY size"));
        }
        let code = Reason(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        if code != Reason::NO_ERROR {
            return Err(Error::Peer(code));
        }
        // No new streams come; the open ones finish.
        self.stopping = true;
        Ok(())
    }

    fn window_update(&mut self, h: Head, p: &[u8]) -> Result<(), Error> {
        use frame::MAX_WINDOW;
        if p.len() != 4 {
            return Err(Error::Protocol(
                Reason::FRAME_SIZE_ERROR,
                "WINDOW_UPDATE size",
            ));
        }
        let inc = i64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff);
        if h.stream == 0 {
            if inc == 0 {
                return proto("WINDOW_UPDATE of 0");
            }
            self.out.window += inc;
            if self.out.window > MAX_WINDOW {
                return Err(Error::Protocol(
                    Reason::FLOW_CONTROL_ERROR,
                    "connection window over 2^31-1",
                ));
            }
            self.window_stalled = None;
            for id in std::mem::take(&mut self.conn_blocked) {
                self.requeue(id);
            }
            return Ok(());
        }
        if h.stream > self.last_id || h.stream.is_multiple_of(2) {
            return proto("WINDOW_UPDATE on an idle stream");
        }
        let Some(s) = self.streams.get_mut(&h.stream) else {
            return Ok(());
        };
        if inc == 0 {
            self.remove(h.stream, End::Reset(Reason::PROTOCOL_ERROR));
            return Ok(());
        }
        s.send_window += inc;
        if s.send_window > MAX_WINDOW {
            self.remove(h.stream, End::Reset(Reason::FLOW_CONTROL_ERROR));
            return Ok(());
        }
        s.wake.wake_by_ref();
        Ok(())
    }

    fn settings(&mut self, h: Head, p: &[u8]) -> Result<(), Error> {
        use frame::*;
        if h.stream != 0 {
            return Err(Error::Protocol(
                Reason::PROTOCOL_ERROR,
                "SETTINGS on a stream",
            ));
        }
        if h.flags & ACK != 0 {
            if !p.is_empty() {
                return Err(Error::Protocol(
                    Reason::FRAME_SIZE_ERROR,
                    "SETTINGS ACK with a payload",
                ));
            }
            return Ok(());
        }
        if !p.len().is_multiple_of(6) {
            return Err(Error::Protocol(Reason::FRAME_SIZE_ERROR, "SETTINGS size"));
        }
        self.settings_seen = true;
        // Only the frame's last INITIAL_WINDOW_SIZE is applied to the
        // streams (once, not once per entry).
        let mut window = None;
        for s in p.chunks_exact(6) {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match id {
                HEADER_TABLE_SIZE => self.out.enc.set_max(v as usize),
                ENABLE_PUSH if v > 1 => {
                    return Err(Error::Protocol(
                        Reason::PROTOCOL_ERROR,
                        "ENABLE_PUSH not 0 or 1",
                    ));
                }
                INITIAL_WINDOW_SIZE => {
                    let v = i64::from(v);
                    if v > MAX_WINDOW {
                        return Err(Error::Protocol(
                            Reason::FLOW_CONTROL_ERROR,
                            "INITIAL_WINDOW_SIZE over 2^31-1",
                        ));
                    }
                    window = Some(v);
                }
                MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&v) {
                        return Err(Error::Protocol(
                            Reason::PROTOCOL_ERROR,
                            "MAX_FRAME_SIZE out of range",
                        ));
                    }
                    self.out.max_frame = v as usize;
                }
                // MAX_CONCURRENT_STREAMS limits pushes (we make none);
                // MAX_HEADER_LIST_SIZE is advisory; others are unknown.
                _ => {}
            }
        }
        if let Some(v) = window {
            let delta = v - self.peer_window;
            self.peer_window = v;
            for s in self.streams.values_mut() {
                s.send_window += delta;
                if s.send_window > MAX_WINDOW {
                    return Err(Error::Protocol(
                        Reason::FLOW_CONTROL_ERROR,
                        "stream window over 2^31-1",
                    ));
                }
                if delta > 0 {
                    s.wake.wake_by_ref();
                }
            }
        }
        frame::head(&mut self.out.buf, 0, SETTINGS, ACK, 0);
        Ok(())
    }
}

/// A connection error with PROTOCOL_ERROR.
pub(super) fn proto(why: &'static str) -> Result<(), Error> {
    Err(Error::Protocol(Reason::PROTOCOL_ERROR, why))
}
