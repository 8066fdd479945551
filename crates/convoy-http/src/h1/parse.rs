//! The HTTP/1.1 codec without I/O: request and response heads parsed with
//! `httparse` into `http` types (header values share the read buffer, no
//! copy), message framing decided by RFC 9112 §6 with every ambiguity
//! refused, the chunked decoder, and the heads convoy writes.
//!
//! Refused (the request never reaches a server): differing
//! `Content-Length`s, `Content-Length` with `Transfer-Encoding`, a transfer
//! coding other than `chunked`, `Transfer-Encoding` in HTTP/1.0, bad
//! header names or values (CR, LF, NUL; obs-fold), a missing or repeated
//! `Host` in HTTP/1.1, bad chunk sizes and chunk lines; heads over the
//! size limit or with too many fields get 431.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

/// Most header fields in one head.
pub const MAX_HEADERS: usize = 100;

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Hop-by-hop fields seen in a head (a bit each), so that removing them
/// costs nothing when there are none.
pub mod hop {
    /// `Connection`.
    pub const CONNECTION: u16 = 1;
    /// `Keep-Alive`.
    pub const KEEP_ALIVE: u16 = 2;
    /// `Proxy-Connection`.
    pub const PROXY_CONNECTION: u16 = 4;
    /// `Proxy-Authenticate` / `Proxy-Authorization`.
    pub const PROXY_AUTH: u16 = 8;
    /// `TE`.
    pub const TE: u16 = 16;
    /// `Trailer`.
    pub const TRAILER: u16 = 32;
    /// `Transfer-Encoding`.
    pub const TRANSFER_ENCODING: u16 = 64;
    /// `Upgrade`.
    pub const UPGRADE: u16 = 128;
    /// `Connection` names other fields (they are hop-by-hop too).
    pub const NAMED: u16 = 256;
    /// Every kind above.
    pub const ALL: u16 = 511;
}

/// Why a request head is refused, with the status the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// 400: malformed or ambiguous.
    Bad(&'static str),
    /// 431: too large or too many fields.
    TooLarge,
    /// 501: a transfer coding convoy does not decode.
    NotImplemented,
    /// 405: a method convoy does not proxy (CONNECT).
    Method,
    /// 505: an HTTP version other than 1.x.
    Version,
    /// Not HTTP at all (no `HTTP/` version): closed without an answer,
    /// which such a client could not read (an HTTP/2 client with a bad
    /// preface sees the connection close, RFC 9113 §3.4).
    NotHttp,
}

impl HeadError {
    /// The status to answer with.
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::Bad(_) => StatusCode::BAD_REQUEST,
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            HeadError::Method => StatusCode::METHOD_NOT_ALLOWED,
            HeadError::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            HeadError::NotHttp => StatusCode::BAD_REQUEST,
        }
    }

    /// A short reason for logs and the error body.
    pub fn reason(self) -> &'static str {
        match self {
            HeadError::Bad(r) => r,
            HeadError::TooLarge => "request head too large",
            HeadError::NotImplemented => "transfer coding not supported",
            HeadError::Method => "method not supported by this proxy",
            HeadError::Version => "HTTP version not supported",
            HeadError::NotHttp => "not an HTTP request",
        }
    }
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and fields.
    pub parts: http::request::Parts,
    /// How its body is delimited.
    pub framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// Hop-by-hop fields present ([`hop`] bits).
    pub hop: u16,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status, version and fields.
    pub parts: http::response::Parts,
    /// How its body is delimited (given the request's method).
    pub framing: Framing,
    /// The server keeps the connection open after this response.
    pub keep_alive: bool,
    /// Hop-by-hop fields present ([`hop`] bits).
    pub hop: u16,
}

/// What the framing fields of a head said.
#[derive(Default)]
struct Fields {
    length: Option<u64>,
    lengths_differ: bool,
    bad_length: bool,
    /// Transfer codings listed, and whether the last is chunked.
    te_tokens: u32,
    te_chunked: bool,
    close: bool,
    keep_alive: bool,
    hosts: u32,
    expect_continue: bool,
    hop: u16,
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Parses a decimal `Content-Length` (digits only, no sign, no overflow).
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

impl Fields {
    /// Notes one field; `name` is already the `http` name.
    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == header::CONTENT_LENGTH {
            // A list of equal values is one length (RFC 9110 §8.6).
            for part in value.split(|&b| b == b',') {
                match parse_length(trim(part)) {
                    Some(n) => match self.length {
                        Some(m) if m != n => self.lengths_differ = true,
                        _ => self.length = Some(n),
                    },
                    None => self.bad_length = true,
                }
            }
        } else if *name == header::TRANSFER_ENCODING {
            self.hop |= hop::TRANSFER_ENCODING;
            for part in value.split(|&b| b == b',') {
                let t = trim(part);
                if !t.is_empty() {
                    self.te_tokens += 1;
                    self.te_chunked = t.eq_ignore_ascii_case(b"chunked");
                }
            }
            if self.te_tokens == 0 {
                // An empty Transfer-Encoding is still one that is there.
                self.te_tokens = u32::MAX / 2;
            }
        } else if *name == header::CONNECTION {
            self.hop |= hop::CONNECTION;
            for part in value.split(|&b| b == b',') {
                let t = trim(part);
                if t.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    // Upgrade itself is marked below.
                } else if !t.is_empty() {
                    self.hop |= hop::NAMED;
                }
            }
        } else if *name == header::HOST {
            self.hosts += 1;
        } else if *name == header::EXPECT {
            if trim(value).eq_ignore_ascii_case(b"100-continue") {
                self.expect_continue = true;
            }
        } else if *name == header::UPGRADE {
            self.hop |= hop::UPGRADE;
        } else if *name == header::TE {
            self.hop |= hop::TE;
        } else if *name == header::TRAILER {
            self.hop |= hop::TRAILER;
        } else if *name == header::PROXY_AUTHENTICATE || *name == header::PROXY_AUTHORIZATION {
            self.hop |= hop::PROXY_AUTH;
        } else if name.as_str() == "keep-alive" {
            self.hop |= hop::KEEP_ALIVE;
        } else if name.as_str() == "proxy-connection" {
            self.hop |= hop::PROXY_CONNECTION;
        }
    }
}

/// Offsets of one field in the head.
#[derive(Clone, Copy, Default)]
pub struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

thread_local! {
    /// Field offsets of the head being parsed (kept to avoid a fresh
    /// array per head).
    static SPANS: std::cell::Cell<Vec<Span>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` with the thread's span scratch vector, emptied.
fn with_spans<R>(f: impl FnOnce(&mut Vec<Span>) -> R) -> R {
    let mut v = SPANS.with(std::cell::Cell::take);
    v.clear();
    let r = f(&mut v);
    SPANS.with(|c| c.set(v));
    r
}

/// Uninitialized room for httparse's fields (no zeroing per head).
fn raw_headers<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

fn span_of(base: &[u8], part: &[u8]) -> (usize, usize) {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    (start, start + part.len())
}

/// Builds the field map from spans into the frozen head, noting framing
/// fields on the way.
fn fields(
    head: &Bytes,
    spans: &[Span],
    f: &mut Fields,
    room: usize,
) -> Result<HeaderMap, &'static str> {
    let mut map = HeaderMap::with_capacity(spans.len() + room);
    for s in spans {
        let name =
            HeaderName::from_bytes(&head[s.name.0..s.name.1]).map_err(|_| "invalid header name")?;
        let raw = head.slice(s.value.0..s.value.1);
        f.note(&name, &raw);
        let value = HeaderValue::from_maybe_shared(raw).map_err(|_| "invalid header value")?;
        map.append(name, value);
    }
    Ok(map)
}

/// Limits for request heads.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest head in bytes (request line and fields).
    pub max_head: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 64 * 1024,
        }
    }
}

/// Parses a request head at the start of `buf`. `Ok(None)`: incomplete
/// (read more); on success the head's bytes are taken off `buf` (the body
/// or the next request follow).
pub fn parse_request(buf: &mut BytesMut, limits: Limits) -> Result<Option<RequestHead>, HeadError> {
    with_spans(|spans| parse_request_in(buf, limits, spans))
}

fn parse_request_in(
    buf: &mut BytesMut,
    limits: Limits,
    spans: &mut Vec<Span>,
) -> Result<Option<RequestHead>, HeadError> {
    // Empty lines before a request line are ignored (RFC 9112 §2.2).
    let skip = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if skip > 0 {
        let _ = buf.split_to(skip);
    }
    let mut raw = raw_headers();
    let mut req = httparse::Request::new(&mut []);
    let (len, method, target, minor) = match req.parse_with_uninit_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete(len)) => {
            for h in req.headers.iter() {
                spans.push(Span {
                    name: span_of(buf, h.name.as_bytes()),
                    value: span_of(buf, h.value),
                });
            }
            let method = req.method.map(|m| span_of(buf, m.as_bytes()));
            let target = req.path.map(|p| span_of(buf, p.as_bytes()));
            (len, method, target, req.version.unwrap_or(1))
        }
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_head {
                return Err(HeadError::TooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => {
            if bump_minor_version(buf)? {
                // `HTTP/1.2` and later minors are served as 1.1 (RFC 9110
                // §2.5): the version was rewritten in place.
                return parse_request_in(buf, limits, spans);
            }
            return Err(HeadError::Version);
        }
        Err(httparse::Error::HeaderName) => return Err(HeadError::Bad("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(HeadError::Bad("invalid header value")),
        Err(httparse::Error::Token) => return Err(HeadError::Bad("invalid request line")),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    if len > limits.max_head {
        return Err(HeadError::TooLarge);
    }
    let (Some(method), Some(target)) = (method, target) else {
        return Err(HeadError::Bad("malformed request line"));
    };
    let head = buf.split_to(len).freeze();
    let method = Method::from_bytes(&head[method.0..method.1])
        .map_err(|_| HeadError::Bad("invalid method"))?;
    if head[target.0..target.1].contains(&b'#') {
        // A fragment is the client's own business (RFC 9110 §4.2.5):
        // one on the wire is malformed, not stripped.
        return Err(HeadError::Bad("fragment in the request target"));
    }
    if method == Method::CONNECT {
        return Err(HeadError::Method);
    }
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.1))
        .map_err(|_| HeadError::Bad("invalid request target"))?;
    // Origin form, absolute form, or "*" (OPTIONS only).
    if uri.scheme().is_none()
        && !uri.path().starts_with('/')
        && !(uri.path() == "*" && method == Method::OPTIONS)
    {
        return Err(HeadError::Bad("invalid request target"));
    }
    let mut f = Fields::default();
    let headers = fields(&head, spans, &mut f, 8).map_err(HeadError::Bad)?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if f.bad_length || f.lengths_differ {
        return Err(HeadError::Bad("invalid or conflicting Content-Length"));
    }
    let framing = if f.te_tokens > 0 {
        if version == Version::HTTP_10 {
            return Err(HeadError::Bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if f.length.is_some() {
            return Err(HeadError::Bad("both Content-Length and Transfer-Encoding"));
        }
        if !(f.te_tokens == 1 && f.te_chunked) {
            return Err(HeadError::NotImplemented);
        }
        Framing::Chunked
    } else {
        match f.length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };
    if version == Version::HTTP_11 && f.hosts != 1 {
        return Err(HeadError::Bad(if f.hosts == 0 {
            "missing Host header"
        } else {
            "more than one Host header"
        }));
    }
    if f.hosts > 1 {
        return Err(HeadError::Bad("more than one Host header"));
    }
    // An absolute-form target's authority is what routing reads, Host
    // what the server gets: they must agree (RFC 9112 §3.2.2 has a
    // proxy replace Host; refusing keeps the two from ever differing).
    if let (Some(a), Some(h)) = (uri.authority(), headers.get(http::header::HOST)) {
        if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
            return Err(HeadError::Bad(
                "Host differs from the request target's authority",
            ));
        }
    }
    let keep_alive = match version {
        Version::HTTP_10 => f.keep_alive && !f.close,
        _ => !f.close,
    };
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead {
        parts,
        framing,
        keep_alive,
        expect_continue: f.expect_continue && version == Version::HTTP_11,
        hop: f.hop,
    }))
}

/// Looks at a request line httparse refused for its version:
/// `Ok(true)` when it was `HTTP/1.x` with x ≥ 2 and now says `HTTP/1.1`;
/// `Ok(false)` for another `HTTP/d.d` (505); a space in the target is a
/// 400, a line without any `HTTP/` version is not HTTP at all.
fn bump_minor_version(buf: &mut BytesMut) -> Result<bool, HeadError> {
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let words: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    if words.len() > 3 {
        return Err(HeadError::Bad("whitespace in the request target"));
    }
    let [_, _, version] = words[..] else {
        return Err(HeadError::Bad("malformed request line"));
    };
    if !version.starts_with(b"HTTP/") {
        return Err(HeadError::NotHttp);
    }
    match version {
        [.., major, b'.', minor]
            if version.len() == 8 && major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            if *major != b'1' {
                return Ok(false);
            }
            // The minor digit is the line's last byte before CR LF.
            let at = line.len() - 1;
            buf[at] = b'1';
            Ok(true)
        }
        _ => Err(HeadError::Bad("invalid HTTP version")),
    }
}

/// Why a response head is refused (the server gets the blame: 502).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// Malformed or ambiguous.
    Bad(&'static str),
    /// Over the size limit.
    TooLarge,
}

/// Parses a response head at the start of `buf` for a request of
/// `method`. `Ok(None)`: incomplete. Informational responses other than
/// 101 are skipped (taken off `buf`, parsing goes on with what follows).
pub fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
    max_head: usize,
) -> Result<Option<ResponseHead>, ResponseError> {
    with_spans(|spans| parse_response_in(buf, method, max_head, spans))
}

fn parse_response_in(
    buf: &mut BytesMut,
    method: &Method,
    max_head: usize,
    spans: &mut Vec<Span>,
) -> Result<Option<ResponseHead>, ResponseError> {
    loop {
        spans.clear();
        let mut raw = raw_headers();
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut raw);
        let (len, code, minor) = match parsed {
            Ok(httparse::Status::Complete(len)) => {
                for h in resp.headers.iter() {
                    spans.push(Span {
                        name: span_of(buf, h.name.as_bytes()),
                        value: span_of(buf, h.value),
                    });
                }
                (len, resp.code.unwrap_or(0), resp.version.unwrap_or(1))
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > max_head {
                    return Err(ResponseError::TooLarge);
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
            Err(_) => return Err(ResponseError::Bad("malformed response head")),
        };
        let status =
            StatusCode::from_u16(code).map_err(|_| ResponseError::Bad("invalid status"))?;
        let head = buf.split_to(len).freeze();
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 Continue, 103 Early Hints...: not forwarded.
            continue;
        }
        let mut f = Fields::default();
        let headers = fields(&head, spans, &mut f, 4).map_err(ResponseError::Bad)?;
        let version = if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let bodiless = *method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = if *method == Method::CONNECT && status.is_success() {
            // A 2xx to CONNECT makes the connection a tunnel (RFC 9112
            // §6.3): no message framing follows and it is never reused.
            Framing::Close
        } else if bodiless {
            Framing::Empty
        } else if f.te_tokens > 0 {
            // A length beside a transfer coding is ignored (RFC 9112
            // §6.3). Codings other than chunked alone are not decoded
            // here, and cannot be passed on without their field: refused.
            if !(f.te_tokens == 1 && f.te_chunked) {
                return Err(ResponseError::Bad("unsupported transfer coding"));
            }
            Framing::Chunked
        } else if f.bad_length || f.lengths_differ {
            return Err(ResponseError::Bad("invalid or conflicting Content-Length"));
        } else {
            match f.length {
                Some(0) => Framing::Empty,
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        };
        let keep_alive = framing != Framing::Close
            // A length field beside a transfer coding (valid or not):
            // the message is suspect, the connection is not reused.
            && !(f.te_tokens > 0 && (f.length.is_some() || f.bad_length || f.lengths_differ))
            && match version {
                Version::HTTP_10 => f.keep_alive && !f.close,
                _ => !f.close,
            };
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        return Ok(Some(ResponseHead {
            parts,
            framing,
            keep_alive,
            hop: f.hop,
        }));
    }
}

/// Removes the hop-by-hop fields noted in `mask` (RFC 9110 §7.6.1),
/// including those named by `Connection`. Costs nothing for `mask == 0`.
pub fn strip_hop(h: &mut HeaderMap, mask: u16) {
    if mask == 0 {
        return;
    }
    if mask & hop::NAMED != 0 {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            // Host is end to end whatever Connection says: routing read
            // it, and the server must get the same (RFC 9110 §7.6.1 lets
            // no client turn it into a hop-by-hop field).
            .filter(|n| n != header::HOST)
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    if mask & hop::CONNECTION != 0 {
        h.remove(header::CONNECTION);
    }
    if mask & hop::KEEP_ALIVE != 0 {
        h.remove("keep-alive");
    }
    if mask & hop::PROXY_CONNECTION != 0 {
        h.remove("proxy-connection");
    }
    if mask & hop::PROXY_AUTH != 0 {
        h.remove(header::PROXY_AUTHENTICATE);
        h.remove(header::PROXY_AUTHORIZATION);
    }
    if mask & hop::TE != 0 {
        h.remove(header::TE);
    }
    if mask & hop::TRAILER != 0 {
        h.remove(header::TRAILER);
    }
    if mask & hop::TRANSFER_ENCODING != 0 {
        h.remove(header::TRANSFER_ENCODING);
    }
    if mask & hop::UPGRADE != 0 {
        h.remove(header::UPGRADE);
    }
}

/// Why a chunked body is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChunkError(pub &'static str);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of a chunk size.
    Size,
    /// After the size: extensions up to CR.
    Ext,
    /// Expecting LF after the size line's CR.
    SizeLf,
    /// Chunk data.
    Data,
    /// CR after the data.
    DataCr,
    /// LF after the data.
    DataLf,
    /// A trailer line's first byte (CR of the final empty line, or a field).
    TrailerStart,
    /// A trailer field's name, up to its colon.
    TrailerName,
    /// A trailer field's value, up to its CR.
    Trailer,
    /// LF after a trailer field.
    TrailerLf,
    /// LF of the final empty line.
    EndLf,
    /// The body ended.
    Done,
}

/// Most bytes of chunk extensions on one size line, and of all trailers.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// Decodes the chunked transfer coding (RFC 9112 §7.1) incrementally.
/// Trailer fields are checked for size and dropped.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    digits: u32,
    line: usize,
    trailers: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
        }
    }
}

/// One step of [`ChunkedDecoder::decode`].
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The body is complete (its last byte was taken off the buffer).
    End,
    /// Everything in the buffer was consumed; read more.
    NeedMore,
}

impl ChunkedDecoder {
    /// The whole body was decoded.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Takes the next piece of body from `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        use bytes::Buf;
        loop {
            match self.state {
                ChunkState::Done => return Ok(Decoded::End),
                ChunkState::Data => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = (buf.len() as u64).min(self.size) as usize;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                _ => {}
            }
            let mut i = 0;
            while i < buf.len() && !matches!(self.state, ChunkState::Data | ChunkState::Done) {
                self.step(buf[i])?;
                i += 1;
            }
            buf.advance(i);
            if !matches!(self.state, ChunkState::Data | ChunkState::Done) {
                return Ok(Decoded::NeedMore);
            }
        }
    }

    /// Counts one byte of trailers against their limit.
    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkError("trailers too large"));
        }
        Ok(())
    }

    /// One byte of a size line, data delimiter or trailer.
    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        use ChunkState::*;
        match self.state {
            Size => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if self.digits >= 15 {
                        return Err(ChunkError("chunk size too large"));
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    self.size = self.size * 16 + u64::from(d);
                    self.digits += 1;
                }
                b';' | b' ' | b'\t' if self.digits > 0 => {
                    self.state = Ext;
                    self.line = 0;
                }
                b'\r' if self.digits > 0 => self.state = SizeLf,
                _ => return Err(ChunkError("invalid chunk size")),
            },
            Ext => match b {
                b'\r' => self.state = SizeLf,
                b'\n' | 0 => return Err(ChunkError("invalid chunk extension")),
                _ => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(ChunkError("chunk extension too long"));
                    }
                }
            },
            SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError("invalid chunk size line"));
                }
                self.digits = 0;
                self.state = if self.size == 0 { TrailerStart } else { Data };
            }
            DataCr => {
                if b != b'\r' {
                    return Err(ChunkError("chunk data longer than its size"));
                }
                self.state = DataLf;
            }
            DataLf => {
                if b != b'\n' {
                    return Err(ChunkError("invalid chunk end"));
                }
                self.state = Size;
                self.size = 0;
            }
            // A trailer line is a field, `name: value` (RFC 9112 §7.1.2):
            // anything else (a request line smuggled after the last
            // chunk, a bare word) is refused.
            TrailerStart => match b {
                b'\r' => self.state = EndLf,
                _ if is_tchar(b) => {
                    self.state = TrailerName;
                    self.count_trailer()?;
                }
                _ => return Err(ChunkError("invalid trailer field")),
            },
            TrailerName => match b {
                b':' => {
                    self.state = Trailer;
                    self.count_trailer()?;
                }
                _ if is_tchar(b) => self.count_trailer()?,
                _ => return Err(ChunkError("invalid trailer field name")),
            },
            Trailer => match b {
                b'\r' => self.state = TrailerLf,
                b'\t' | b' '..=b'~' | 0x80..=0xff => self.count_trailer()?,
                _ => return Err(ChunkError("invalid trailer field value")),
            },
            TrailerLf => {
                if b != b'\n' {
                    return Err(ChunkError("invalid trailer"));
                }
                self.state = TrailerStart;
            }
            EndLf => {
                if b != b'\n' {
                    return Err(ChunkError("invalid end of chunked body"));
                }
                self.state = Done;
            }
            Data | Done => {}
        }
        Ok(())
    }
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Writes `METHOD target HTTP/1.1` and the fields of a request to a
/// server, with the framing of its body (`None`: no body).
/// `Content-Length` and `Transfer-Encoding` in `h` are replaced by the
/// framing given.
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    host: Option<&HeaderValue>,
    h: &HeaderMap,
    extra: &[u8],
    framing: Framing,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(v) = host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    write_fields(out, h);
    out.extend_from_slice(extra);
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            write_dec(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::Close => {}
    }
    out.extend_from_slice(b"\r\n");
}

fn write_fields(out: &mut Vec<u8>, h: &HeaderMap) {
    for (name, value) in h {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes a decimal number.
pub fn write_dec(out: &mut Vec<u8>, mut n: u64) {
    let mut d = [0u8; 20];
    let mut i = d.len();
    loop {
        i -= 1;
        d[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&d[i..]);
}

/// Writes a status line and fields of a response to a client. `framing`
/// replaces the body fields in `h` unless the response has no body by
/// its nature (`keep_fields`: HEAD, 204, 304, where `Content-Length`
/// describes the representation and passes unchanged). `close` adds
/// `Connection: close`; an HTTP/1.0 client that asked for keep-alive gets
/// `Connection: keep-alive`. `date`: added when the response has none.
pub struct ResponseWrite<'a> {
    /// The status.
    pub status: StatusCode,
    /// The fields.
    pub headers: &'a HeaderMap,
    /// The framing toward the client.
    pub framing: Framing,
    /// Keep the response's own body fields (a bodiless response).
    pub keep_fields: bool,
    /// Close after this response.
    pub close: bool,
    /// The client speaks HTTP/1.0 and keeps the connection.
    pub keep_alive_10: bool,
    /// The current `Date` value.
    pub date: &'a [u8],
}

impl ResponseWrite<'_> {
    /// Appends the head to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(
            self.status
                .canonical_reason()
                .unwrap_or("Unknown")
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        if self.keep_fields {
            for (name, value) in self.headers {
                if name == header::TRANSFER_ENCODING {
                    continue;
                }
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        } else {
            write_fields(out, self.headers);
            match self.framing {
                Framing::Length(n) => {
                    out.extend_from_slice(b"content-length: ");
                    write_dec(out, n);
                    out.extend_from_slice(b"\r\n");
                }
                Framing::Empty => {
                    if self.status != StatusCode::NO_CONTENT
                        && self.status != StatusCode::NOT_MODIFIED
                        && !self.status.is_informational()
                    {
                        out.extend_from_slice(b"content-length: 0\r\n");
                    }
                }
                Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
                Framing::Close => {}
            }
        }
        if !self.headers.contains_key(header::DATE) {
            out.extend_from_slice(b"date: ");
            out.extend_from_slice(self.date);
            out.extend_from_slice(b"\r\n");
        }
        if self.close {
            out.extend_from_slice(b"connection: close\r\n");
        } else if self.keep_alive_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The head of a chunk of `n` bytes (`{hex}\r\n`).
pub fn chunk_head(n: usize) -> Bytes {
    Bytes::from(format!("{n:x}\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        let mut b = BytesMut::from(text);
        parse_request(&mut b, Limits::default())
    }

    #[test]
    fn request_heads() {
        let h = req(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.parts.method, Method::GET);
        assert_eq!(h.parts.uri.path_and_query().unwrap().as_str(), "/a?b=1");
        assert_eq!(h.parts.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive);
        assert_eq!(h.hop, 0);
        // Incomplete.
        assert!(req(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        // Bodies.
        let h = req(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        let h = req(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        let h = req(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(h.hop, hop::TRANSFER_ENCODING);
        // HTTP/1.0 keep-alive only on request.
        let h = req(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = req(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h =
            req(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(!h.keep_alive);
        let mut hm = h.parts.headers;
        strip_hop(&mut hm, h.hop);
        assert!(hm.get("x-secret").is_none() && hm.get("connection").is_none());
        assert!(hm.get("host").is_some());
        // Expect.
        let h =
            req(b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(h.expect_continue);
        // Absolute form and OPTIONS *.
        let h = req(b"GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.parts.uri.host(), Some("a.example"));
        assert!(req(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .is_some());
        // Leading empty lines.
        assert!(req(b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .is_some());
    }

    #[test]
    fn refused_request_heads() {
        let bad: &[(&[u8], HeadError)] = &[
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", HeadError::Bad("invalid or conflicting Content-Length")),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", HeadError::Bad("invalid or conflicting Content-Length")),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", HeadError::Bad("invalid or conflicting Content-Length")),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::Bad("both Content-Length and Transfer-Encoding")),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", HeadError::NotImplemented),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", HeadError::NotImplemented),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::NotImplemented),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::Bad("Transfer-Encoding in an HTTP/1.0 request")),
            (b"GET / HTTP/1.1\r\n\r\n", HeadError::Bad("missing Host header")),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", HeadError::Bad("more than one Host header")),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", HeadError::Method),
            (b"GET foo HTTP/1.1\r\nHost: x\r\n\r\n", HeadError::Bad("invalid request target")),
            (b"GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n", HeadError::Bad("Host differs from the request target's authority")),
        ];
        for (text, want) in bad {
            assert_eq!(
                req(text).err(),
                Some(*want),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        for text in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  folded\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\rInjected: yes\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
            b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(
                matches!(req(text), Err(HeadError::Bad(_))),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        assert_eq!(
            req(b"GET / HTTP/2.0\r\n\r\n").err(),
            Some(HeadError::Version)
        );
        // A space in the target is a malformed line, not a version; a
        // fragment is refused, not stripped; a line with no HTTP version
        // at all (an HTTP/2 client's bad preface) is not HTTP.
        for (text, want) in [
            (
                &b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"[..],
                HeadError::Bad("whitespace in the request target"),
            ),
            (
                b"GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n",
                HeadError::Bad("fragment in the request target"),
            ),
            (
                b"GET / HTTP/1.x\r\nHost: x\r\n\r\n",
                HeadError::Bad("invalid HTTP version"),
            ),
            (b"INVALID CONNECTION PREFACE\r\n\r\n", HeadError::NotHttp),
        ] {
            assert_eq!(
                req(text).err(),
                Some(want),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        // A later minor version of HTTP/1 is served as HTTP/1.1.
        let h = req(b"GET /v HTTP/1.2\r\nHost: x\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.parts.version, Version::HTTP_11);
        assert_eq!(h.parts.uri.path(), "/v");
        // Too large: a partial head past the limit, or too many fields.
        let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 70_000));
        assert_eq!(req(&big).err(), Some(HeadError::TooLarge));
        let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..120 {
            many.extend(format!("X-{i}: 1\r\n").bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(req(&many).err(), Some(HeadError::TooLarge));
    }

    fn resp(text: &[u8], m: &Method) -> Result<Option<ResponseHead>, ResponseError> {
        let mut b = BytesMut::from(text);
        parse_response(&mut b, m, 64 * 1024)
    }

    #[test]
    fn response_heads() {
        let get = Method::GET;
        let h = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n", &get)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(6));
        assert!(h.keep_alive);
        let h = resp(
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n",
            &Method::HEAD,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        let h = resp(b"HTTP/1.1 200 OK\r\n\r\n", &get).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.keep_alive);
        let h = resp(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            &get,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive, "CL beside TE: close after it");
        let h = resp(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", &get)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = resp(b"HTTP/1.1 204 No Content\r\n\r\n", &get)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive);
        // 100 Continue is skipped; 101 is kept.
        let mut b = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nrest"
                [..],
        );
        let h = parse_response(&mut b, &get, 1 << 16).unwrap().unwrap();
        assert_eq!(h.parts.status, StatusCode::CREATED);
        assert_eq!(&b[..], b"rest");
        let h = resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", &get)
            .unwrap()
            .unwrap();
        assert_eq!(h.parts.status, StatusCode::SWITCHING_PROTOCOLS);
        assert!(resp(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            &get
        )
        .is_err());
        assert!(resp(b"HTTP/1.1 2000 OK\r\n\r\n", &get).is_err());
        // A 2xx to CONNECT turns the connection into a tunnel: no framing
        // follows and it is never reused (a 4xx keeps its framing).
        let h = resp(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            &Method::CONNECT,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = resp(
            b"HTTP/1.1 403 No\r\nContent-Length: 0\r\n\r\n",
            &Method::CONNECT,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        assert!(resp(b"garbage\r\n\r\n", &get).is_err());
        assert!(resp(b"HTTP/1.1 200 OK\r\n", &get).unwrap().is_none());
    }

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, bool, Vec<u8>), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        let mut done = false;
        for piece in input.chunks(split.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match d.decode(&mut buf)? {
                    Decoded::Data(b) => out.extend_from_slice(&b),
                    Decoded::End => {
                        done = true;
                        break;
                    }
                    Decoded::NeedMore => break,
                }
            }
            if done {
                break;
            }
        }
        Ok((out, done, buf.to_vec()))
    }

    #[test]
    fn chunked_bodies() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for split in [1, 2, 3, 7, 100] {
            let (out, done, rest) = decode_all(body, split).unwrap();
            assert_eq!(out, b"hello world", "split {split}");
            assert!(done);
            if split >= 100 {
                assert_eq!(rest, b"NEXT");
            }
        }
        let (out, done, _) = decode_all(b"A\r\n0123456789\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!((out.len(), done), (10, true));
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello!\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"\r\n",
            b"-5\r\nhello\r\n",
            b"5\r\nhello\r\n0\r\n bad\r\n\r\n",
            // Trailer lines must be fields: a request line smuggled after
            // the last chunk, a bare word, a bad name, a control byte.
            b"5\r\nhello\r\n0\r\nGET /admin HTTP/1.1\r\n\r\n",
            b"0\r\nword\r\n\r\n",
            b"0\r\nX T: 1\r\n\r\n",
            b"0\r\n: 1\r\n\r\n",
            b"0\r\nX-T: a\x01b\r\n\r\n",
        ] {
            assert!(
                decode_all(bad, 1).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Incomplete stays incomplete.
        let (out, done, _) = decode_all(b"5\r\nhel", 100).unwrap();
        assert_eq!((out.as_slice(), done), (&b"hel"[..], false));
    }

    #[test]
    fn heads_written() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("x"));
        h.insert("content-length", HeaderValue::from_static("99"));
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            &Method::POST,
            "/p?q",
            None,
            &h,
            b"via: 1.1 convoy\r\n",
            Framing::Length(5),
        );
        assert_eq!(
            out,
            b"POST /p?q HTTP/1.1\r\nhost: x\r\nvia: 1.1 convoy\r\ncontent-length: 5\r\n\r\n"
        );
        // The Host of an HTTP/2 request (its :authority) comes first.
        let mut out = Vec::new();
        let mut h2 = HeaderMap::new();
        h2.insert("accept", HeaderValue::from_static("*/*"));
        write_request_head(
            &mut out,
            &Method::GET,
            "/",
            Some(&HeaderValue::from_static("example.com")),
            &h2,
            b"",
            Framing::Empty,
        );
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nhost: example.com\r\naccept: */*\r\n\r\n"
        );
        let mut out = Vec::new();
        ResponseWrite {
            status: StatusCode::OK,
            headers: &h,
            framing: Framing::Chunked,
            keep_fields: false,
            close: true,
            keep_alive_10: false,
            date: b"Tue, 01 Dec 2026 00:00:00 GMT",
        }
        .write(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nhost: x\r\ntransfer-encoding: chunked\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\nconnection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        write_dec(&mut out, 0);
        write_dec(&mut out, 18446744073709551615);
        assert_eq!(out, b"018446744073709551615");
        assert_eq!(&chunk_head(255)[..], b"ff\r\n");
    }
}
