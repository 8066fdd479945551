//! Our output: the frames waiting for the socket, written with the
//! connection's HPACK encoder and split to the client's frame size.

use http::header::HeaderValue;
use http::HeaderMap;

use super::frame;
use super::hpack;

/// Our output: frames waiting for the socket.
pub(super) struct Out {
    pub(super) buf: Vec<u8>,
    /// Written up to here.
    pub(super) pos: usize,
    pub(super) enc: hpack::Encoder,
    /// The client's SETTINGS_MAX_FRAME_SIZE.
    pub(super) max_frame: usize,
    /// What we may still send on the connection.
    pub(super) window: i64,
    /// The last `date` value, shared by the responses of one second.
    pub(super) date: ([u8; 29], HeaderValue),
    /// Output stops growing at this size.
    pub(super) high: usize,
}

impl Out {
    pub(super) fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(super) fn full(&self) -> bool {
        self.len() >= self.high
    }

    /// Writes a header block as HEADERS (+ CONTINUATION) frames.
    pub(super) fn headers(
        &mut self,
        id: u32,
        end: bool,
        encode: impl FnOnce(&mut hpack::Encoder, &mut Vec<u8>),
    ) {
        let at = self.buf.len();
        let flags = frame::END_HEADERS | if end { frame::END_STREAM } else { 0 };
        frame::head(&mut self.buf, 0, frame::HEADERS, flags, id);
        encode(&mut self.enc, &mut self.buf);
        let len = self.buf.len() - at - 9;
        if len <= self.max_frame {
            frame::patch_len(&mut self.buf, at, len);
            return;
        }
        // Too large for one frame: split it.
        let block = self.buf.split_off(at + 9);
        self.buf.truncate(at);
        let mut chunks = block.chunks(self.max_frame).peekable();
        let mut first = true;
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            let (kind, mut fl) = if first {
                (frame::HEADERS, if end { frame::END_STREAM } else { 0 })
            } else {
                (frame::CONTINUATION, 0)
            };
            if last {
                fl |= frame::END_HEADERS;
            }
            frame::head(&mut self.buf, c.len(), kind, fl, id);
            self.buf.extend_from_slice(c);
            first = false;
        }
    }

    pub(super) fn response_head(&mut self, id: u32, end: bool, status: u16, h: &HeaderMap) {
        let now = crate::h1::server::date();
        if now != self.date.0 {
            if let Ok(v) = HeaderValue::from_bytes(&now) {
                self.date = (now, v);
            }
        }
        let date = (!h.contains_key(http::header::DATE)).then(|| self.date.1.clone());
        self.headers(id, end, |enc, dst| {
            enc.status(status, dst);
            for (n, v) in h {
                enc.field(n, v, dst);
            }
            if let Some(d) = &date {
                enc.field(&http::header::DATE, d, dst);
            }
        });
    }

    /// Trailers: a last HEADERS frame, ending the stream.
    pub(super) fn trailers(&mut self, id: u32, t: &HeaderMap) {
        self.headers(id, true, |enc, dst| {
            enc.begin(dst);
            for (n, v) in t {
                enc.field(n, v, dst);
            }
        });
    }

    pub(super) fn data(&mut self, id: u32, b: &[u8], end: bool) {
        frame::head(
            &mut self.buf,
            b.len(),
            frame::DATA,
            if end { frame::END_STREAM } else { 0 },
            id,
        );
        self.buf.extend_from_slice(b);
    }
}
