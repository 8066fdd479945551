//! The heads convoy writes: request heads to servers and response heads
//! to clients, with the framing fields replaced by the framing given.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use super::Framing;

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

#[cfg(test)]
mod tests {
    use super::super::chunk_head;
    use super::*;

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
