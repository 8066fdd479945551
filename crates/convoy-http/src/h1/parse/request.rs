//! Request heads: the request line and fields parsed, the framing of the
//! body decided (RFC 9112 §6) with every ambiguity refused, and the
//! status a refused head gets.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

use super::fields::{fields, raw_headers, span_of, with_spans, Fields, Span};
use super::{hop, Framing};

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
    /// Hop-by-hop fields the head had ([`hop`](super::hop) bits). They
    /// are not in `parts.headers` (nor the fields `Connection` names),
    /// unless the request asks for an upgrade (`hop::UPGRADE`).
    pub hop: u16,
    /// It has `X-Forwarded-*` fields (`false`: the request path need not
    /// look for the forwarding fields a client sent).
    pub forwarding: bool,
    /// It has an `X-Convoy-Explain` field.
    pub explain: bool,
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
    let Some((len, method, target, minor)) = request_line(buf, limits, spans)? else {
        return Ok(None);
    };
    if len > limits.max_head {
        return Err(HeadError::TooLarge);
    }
    let (Some(method), Some(target)) = (method, target) else {
        return Err(HeadError::Bad("malformed request line"));
    };
    let head = buf.split_to(len).freeze();
    let (method, uri) = method_and_target(&head, method, target)?;
    let mut f = Fields::default();
    // Hop-by-hop fields stay only in a request that asks for an upgrade:
    // the request path sends them on for it.
    let headers =
        fields(&head, spans, &mut f, 8, |f| f.hop & hop::UPGRADE == 0).map_err(HeadError::Bad)?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let framing = request_framing(&f, version)?;
    check_host(&f, version, &uri, &headers)?;
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
        forwarding: f.forwarding,
        explain: f.explain,
    }))
}

/// Where a whole request head ends, and the spans of its method and
/// target, with its minor version; its fields' spans go to `spans`.
type RequestLine = (usize, Option<(usize, usize)>, Option<(usize, usize)>, u8);

/// Runs httparse over the head at the start of `buf`. `Ok(None)`:
/// incomplete (read more).
fn request_line(
    buf: &mut BytesMut,
    limits: Limits,
    spans: &mut Vec<Span>,
) -> Result<Option<RequestLine>, HeadError> {
    let mut raw = raw_headers();
    let mut req = httparse::Request::new(&mut []);
    let line = match req.parse_with_uninit_headers(buf, &mut raw) {
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
                return request_line(buf, limits, spans);
            }
            return Err(HeadError::Version);
        }
        Err(httparse::Error::HeaderName) => return Err(HeadError::Bad("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(HeadError::Bad("invalid header value")),
        Err(httparse::Error::Token) => return Err(HeadError::Bad("invalid request line")),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    Ok(Some(line))
}

/// The method and the request target of a head, checked.
fn method_and_target(
    head: &Bytes,
    method: (usize, usize),
    target: (usize, usize),
) -> Result<(Method, Uri), HeadError> {
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
    Ok((method, uri))
}

/// How the request's body is delimited, from its framing fields
/// (RFC 9112 §6.1, §6.3): every ambiguity is refused.
fn request_framing(f: &Fields, version: Version) -> Result<Framing, HeadError> {
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
    Ok(framing)
}

/// Exactly one `Host` (HTTP/1.0: at most one), naming the same host as an
/// absolute-form target's authority.
fn check_host(
    f: &Fields,
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), HeadError> {
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
    // (Host is looked up only for an absolute-form target.)
    if let Some((a, h)) = uri
        .authority()
        .and_then(|a| Some((a, headers.get(http::header::HOST)?)))
    {
        if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
            return Err(HeadError::Bad(
                "Host differs from the request target's authority",
            ));
        }
    }
    Ok(())
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
        assert!(!h.forwarding && !h.explain);
        // Fields the request path would otherwise look up.
        let h = req(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\nX-Convoy-Explain: t\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(h.forwarding && h.explain);
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
        assert_eq!(h.hop, hop::CONNECTION | hop::NAMED);
        // Hop-by-hop fields, and those Connection names, are left out.
        let hm = &h.parts.headers;
        assert!(hm.get("x-secret").is_none() && hm.get("connection").is_none());
        assert!(hm.get("host").is_some());
        // An upgrade request keeps its hop-by-hop fields (the request
        // path passes Upgrade and Connection on, and removes the rest).
        let h = req(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nTE: trailers\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.hop, hop::CONNECTION | hop::UPGRADE | hop::TE);
        let hm = &h.parts.headers;
        assert_eq!(hm["connection"], "Upgrade");
        assert_eq!(hm["upgrade"], "websocket");
        assert_eq!(hm["te"], "trailers");
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
}
