//! A request head as its fields are decoded: the checks of RFC 9113 §8
//! (pseudo-headers, connection-specific fields, `te`, `content-length`)
//! and the `http::Request` built from it.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};

use super::body::H2Body;
use super::hpack::{self, Name, Pseudo};

/// Connection-specific fields (RFC 9113 §8.2.2).
pub(super) fn connection_specific(n: &HeaderName) -> bool {
    use http::header::*;
    n == CONNECTION
        || n == TRANSFER_ENCODING
        || n == UPGRADE
        || n.as_str() == "keep-alive"
        || n.as_str() == "proxy-connection"
}

/// A request head as its fields are decoded.
#[derive(Default)]
pub(super) struct ReqHead {
    pub(super) method: Option<Bytes>,
    pub(super) scheme: Option<Bytes>,
    pub(super) authority: Option<Bytes>,
    pub(super) path: Option<Bytes>,
    pub(super) headers: HeaderMap,
    pub(super) cookies: usize,
    pub(super) size: usize,
    pub(super) regular: bool,
    pub(super) bad: Option<&'static str>,
}

impl ReqHead {
    pub(super) fn field(&mut self, n: &Name, v: hpack::Value, size: usize, limit: usize) {
        self.size += size;
        if self.size > limit || self.bad.is_some() {
            return;
        }
        match (n, v) {
            (_, hpack::Value::Bad) => self.bad = Some("invalid field value"),
            (Name::Pseudo(p), hpack::Value::Raw(v)) => {
                if self.regular {
                    self.bad = Some("pseudo-header after a regular field");
                    return;
                }
                let slot = match p {
                    Pseudo::Method => &mut self.method,
                    Pseudo::Scheme => &mut self.scheme,
                    Pseudo::Authority => &mut self.authority,
                    Pseudo::Path => &mut self.path,
                    Pseudo::Status | Pseudo::Protocol => {
                        self.bad = Some("pseudo-header a request may not have");
                        return;
                    }
                };
                if slot.is_some() {
                    self.bad = Some("pseudo-header twice");
                    return;
                }
                *slot = Some(v);
            }
            (Name::Field(n), hpack::Value::Field(v)) => {
                self.regular = true;
                let b = v.as_bytes();
                if matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
                {
                    self.bad = Some("field value with leading or trailing whitespace");
                    return;
                }
                if connection_specific(n) {
                    self.bad = Some("connection-specific field");
                    return;
                }
                if n == http::header::TE && v != "trailers" {
                    self.bad = Some("te other than trailers");
                    return;
                }
                if n == http::header::COOKIE {
                    self.cookies += 1;
                }
                self.headers.append(n.clone(), v);
            }
            _ => self.bad = Some("invalid field name"),
        }
    }

    /// The request, and its `content-length`; `None` if malformed.
    pub(super) fn build(&mut self, end: bool) -> Option<(Request<H2Body>, Option<u64>)> {
        if self.bad.is_some() {
            return None;
        }
        let Some(method) = self.method.take() else {
            self.bad = Some("no :method");
            return None;
        };
        let Ok(method) = Method::from_bytes(&method) else {
            self.bad = Some("invalid :method");
            return None;
        };
        let uri = self.target(&method)?;
        let mut headers = std::mem::take(&mut self.headers);
        if self.cookies > 1 {
            join_cookies(&mut headers);
        }
        let expect = match content_length(&headers) {
            Ok(n) => n,
            Err(why) => {
                self.bad = Some(why);
                return None;
            }
        };
        if end && expect.is_some_and(|n| n != 0) {
            self.bad = Some("content-length with no body");
            return None;
        }
        let mut req = Request::new(H2Body::empty());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = headers;
        Some((req, expect))
    }

    /// The request's URI from its pseudo-headers (and `host`); `None` if
    /// malformed.
    fn target(&mut self, method: &Method) -> Option<Uri> {
        let mut parts = http::uri::Parts::default();
        if method == Method::CONNECT {
            if self.scheme.is_some() || self.path.is_some() || self.authority.is_none() {
                self.bad = Some("CONNECT with :scheme or :path, or without :authority");
                return None;
            }
        } else {
            let (Some(scheme), Some(path)) = (self.scheme.take(), self.path.take()) else {
                self.bad = Some("no :scheme or :path");
                return None;
            };
            // origin-form, or `*` for OPTIONS (RFC 9113 §8.3.1).
            if !(path.starts_with(b"/") || (&path[..] == b"*" && method == Method::OPTIONS)) {
                self.bad = Some(":path neither origin-form nor * for OPTIONS");
                return None;
            }
            parts.scheme = http::uri::Scheme::try_from(&scheme[..]).ok();
            parts.path_and_query = http::uri::PathAndQuery::from_maybe_shared(path).ok();
            if parts.scheme.is_none() || parts.path_and_query.is_none() {
                self.bad = Some("invalid :scheme or :path");
                return None;
            }
        }
        if let Some(a) = self.authority.take() {
            if a.contains(&b'@') {
                self.bad = Some(":authority with userinfo");
                return None;
            }
            // Routing reads the authority and the server gets Host: they
            // must name the same host (RFC 9113 §8.3.1).
            if let Some(h) = self.headers.get(http::header::HOST) {
                if !h.as_bytes().eq_ignore_ascii_case(&a) {
                    self.bad = Some(":authority and host differ");
                    return None;
                }
            }
            match http::uri::Authority::from_maybe_shared(a) {
                Ok(a) => parts.authority = Some(a),
                Err(_) => {
                    self.bad = Some("invalid :authority");
                    return None;
                }
            }
        } else if parts.scheme.is_some() {
            // A URI with a scheme needs an authority: take Host's.
            let host = self
                .headers
                .get(http::header::HOST)
                .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
            match host {
                Some(a) => parts.authority = Some(a),
                None => {
                    parts.scheme = None;
                }
            }
        }
        let Ok(uri) = Uri::from_parts(parts) else {
            self.bad = Some("invalid request target");
            return None;
        };
        Some(uri)
    }
}

/// One cookie field for HTTP/1.1 servers (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut joined = Vec::new();
    for c in headers.get_all(http::header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(c.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(http::header::COOKIE, v);
    }
}

/// The request's `content-length`. Every content-length field must be a
/// number, and the same one (as the HTTP/1 parser requires), whatever
/// their order.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut expect = None;
    for v in headers.get_all(http::header::CONTENT_LENGTH) {
        let n = std::str::from_utf8(v.as_bytes())
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok());
        match (n, expect) {
            (None, _) => return Err("invalid content-length"),
            (Some(n), Some(e)) if n != e => return Err("content-length fields differ"),
            (n, _) => expect = n,
        }
    }
    Ok(expect)
}
