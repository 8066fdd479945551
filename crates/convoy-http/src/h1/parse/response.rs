//! Response heads from servers: the status line and fields parsed,
//! informational responses skipped, and the framing of the body decided
//! for the request's method.

use bytes::BytesMut;
use http::{Method, StatusCode, Version};

use super::fields::{fields, raw_headers, span_of, with_spans, Fields, Span};
use super::Framing;

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status, version and fields.
    pub parts: http::response::Parts,
    /// How its body is delimited (given the request's method).
    pub framing: Framing,
    /// The server keeps the connection open after this response.
    pub keep_alive: bool,
    /// Hop-by-hop fields the head had ([`hop`](super::hop) bits). They
    /// are not in `parts.headers` (nor the fields `Connection` names),
    /// unless the status is 101.
    pub hop: u16,
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
        // A 101 keeps its Connection and Upgrade for the client.
        let headers = fields(&head, spans, &mut f, 4, |_| {
            status != StatusCode::SWITCHING_PROTOCOLS
        })
        .map_err(ResponseError::Bad)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(text: &[u8], m: &Method) -> Result<Option<ResponseHead>, ResponseError> {
        let mut b = BytesMut::from(text);
        parse_response(&mut b, m, 64 * 1024)
    }

    #[test]
    fn hop_by_hop_fields_are_left_out_but_a_101_keeps_them() {
        let get = Method::GET;
        let h = resp(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
              X-Hop: 1\r\nTransfer-Encoding: chunked\r\nServer: s\r\nHost: h\r\n\r\n",
            &get,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.keep_alive);
        assert_eq!(
            h.hop,
            super::super::hop::CONNECTION
                | super::super::hop::NAMED
                | super::super::hop::KEEP_ALIVE
                | super::super::hop::TRANSFER_ENCODING
        );
        let mut names: Vec<&str> = h.parts.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        // Host is never taken as hop-by-hop, whatever Connection says.
        assert_eq!(names, ["host", "server"]);
        let h = resp(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            &get,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.parts.headers["upgrade"], "websocket");
        assert_eq!(h.parts.headers["connection"], "Upgrade");
        // A hop-by-hop field's value is checked even when left out.
        assert!(resp(b"HTTP/1.1 200 OK\r\nKeep-Alive: a\x7fb\r\n\r\n", &get).is_err());
    }

    #[test]
    fn a_recycled_map_serves_the_next_head_empty() {
        let get = Method::GET;
        let h = resp(
            b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nContent-Length: 0\r\n\r\n",
            &get,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.parts.headers.len(), 3);
        let cap = h.parts.headers.capacity();
        super::super::recycle(h.parts.headers);
        let h = resp(b"HTTP/1.1 204 No Content\r\nC: 3\r\n\r\n", &get)
            .unwrap()
            .unwrap();
        let names: Vec<&str> = h.parts.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["c"]);
        // The same map (a new one for this head would be smaller).
        assert!(http::HeaderMap::<http::HeaderValue>::with_capacity(5).capacity() < cap);
        assert_eq!(h.parts.headers.capacity(), cap, "the recycled map");
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
}
