//! Response compression: gzip, brotli or zstd, chosen from the client's
//! `Accept-Encoding` q-values and the listener's order of preference;
//! only compressible types above a size; never a response that is already
//! encoded, partial (206, `Range`), bodiless or marked `no-transform`.
//! Streaming: each body frame is compressed and flushed as it passes, so
//! nothing is buffered whole and streamed responses keep flowing.
//! `Vary: Accept-Encoding` is added and a strong `ETag` weakened (the
//! bytes differ from the uncompressed representation).

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use convoy_config::Compression;
use http::header::{
    HeaderValue, ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_TYPE, ETAG, RANGE, VARY,
};
use http_body::{Body, Frame, SizeHint};

/// A content coding convoy can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// gzip (RFC 1952).
    Gzip,
    /// Brotli (RFC 7932).
    Br,
    /// Zstandard (RFC 8878).
    Zstd,
}

impl Coding {
    fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
        }
    }

    fn parse(s: &str) -> Option<Coding> {
        match s {
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            "br" => Some(Coding::Br),
            "zstd" => Some(Coding::Zstd),
            _ => None,
        }
    }
}

/// The coding to use for a client's `Accept-Encoding`, given the codings
/// enabled in order of preference: the highest q-value wins, ties go to
/// the listener's preference; `q=0` refuses a coding (also through `*`).
pub fn negotiate(accept: &str, enabled: &[Coding]) -> Option<Coding> {
    let q_of = |c: Coding| -> Option<f32> {
        let mut star = None;
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| {
                    let p = p.trim();
                    p.strip_prefix("q=").or_else(|| p.strip_prefix("Q="))
                })
                .filter_map(|v| v.trim().parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            if Coding::parse(&name) == Some(c) {
                return Some(q);
            }
            if name == "*" {
                star = Some(q);
            }
        }
        star
    };
    let mut best: Option<(Coding, f32)> = None;
    for &c in enabled {
        if let Some(q) = q_of(c) {
            if q > 0.0 && best.is_none_or(|(_, bq)| q > bq) {
                best = Some((c, q));
            }
        }
    }
    best.map(|(c, _)| c)
}

/// The listener's compression settings in a ready form.
#[derive(Clone, Debug)]
pub struct Policy {
    codings: Vec<Coding>,
    min_size: u64,
    types: Vec<String>,
    level: u32,
}

impl Policy {
    /// From the config (validated: codings are known names).
    pub fn new(c: &Compression) -> Policy {
        Policy {
            codings: c
                .algorithms
                .iter()
                .filter_map(|a| Coding::parse(a))
                .collect(),
            min_size: c.min_size,
            types: c.types.iter().map(|t| t.to_ascii_lowercase()).collect(),
            level: c.level,
        }
    }

    fn compressible(&self, content_type: &str) -> bool {
        let ct = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.types.iter().any(|t| match t.strip_suffix("/*") {
            Some(major) => ct.split('/').next() == Some(major),
            None => *t == ct,
        })
    }

    /// Decides, from the request and the response head, whether and how to
    /// compress.
    pub fn choose(
        &self,
        req: &http::HeaderMap,
        method: &http::Method,
        resp: &http::response::Parts,
    ) -> Option<Coding> {
        if !self.qualifies(req, method, resp) {
            return None;
        }
        let accept: Vec<&str> = req
            .get_all(ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        negotiate(&accept.join(","), &self.codings)
    }

    /// Whether the response would be compressed for a client that accepts
    /// a coding: then its representation varies with `Accept-Encoding`,
    /// also when this client gets it uncompressed.
    pub fn qualifies(
        &self,
        req: &http::HeaderMap,
        method: &http::Method,
        resp: &http::response::Parts,
    ) -> bool {
        self.qualifies_inner(req, method, resp).is_some()
    }

    fn qualifies_inner(
        &self,
        req: &http::HeaderMap,
        method: &http::Method,
        resp: &http::response::Parts,
    ) -> Option<()> {
        if method == http::Method::HEAD
            || resp.status != http::StatusCode::OK
            || req.contains_key(RANGE)
            || resp.headers.contains_key(CONTENT_ENCODING)
        {
            return None;
        }
        let no_transform = resp
            .headers
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("no-transform"));
        if no_transform {
            return None;
        }
        let ct = resp.headers.get(CONTENT_TYPE)?.to_str().ok()?;
        if !self.compressible(ct) {
            return None;
        }
        let len = resp
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if len.is_some_and(|n| n < self.min_size) {
            return None;
        }
        Some(())
    }

    /// Adds `Vary: Accept-Encoding` unless the response already varies on
    /// it (or on everything).
    pub fn add_vary(h: &mut http::HeaderMap) {
        let has_vary = h
            .get_all(VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| {
                let v = v.trim();
                v == "*" || v.eq_ignore_ascii_case("accept-encoding")
            });
        if !has_vary {
            h.append(VARY, HeaderValue::from_static("accept-encoding"));
        }
    }

    /// Rewrites the response head for `coding` and wraps its body.
    pub fn apply<B>(
        &self,
        coding: Coding,
        parts: &mut http::response::Parts,
        body: B,
    ) -> Compressed<B> {
        let (enc, coding) = Encoder::new(coding, self.level);
        let h = &mut parts.headers;
        h.remove(CONTENT_LENGTH);
        h.remove(ACCEPT_RANGES);
        h.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
        Policy::add_vary(h);
        if let Some(tag) = h.get(ETAG).and_then(|v| v.to_str().ok()) {
            if tag.starts_with('"') {
                if let Ok(v) = HeaderValue::from_str(&format!("W/{tag}")) {
                    h.insert(ETAG, v);
                }
            }
        }
        Compressed {
            inner: body,
            enc: Some(enc),
            trailers: None,
        }
    }
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// The encoder for `c`, or gzip's when zstd cannot start (its C
    /// library failed to allocate); returns the coding used.
    fn new(c: Coding, level: u32) -> (Encoder, Coding) {
        if c == Coding::Zstd {
            if let Ok(e) = zstd::stream::write::Encoder::new(Vec::new(), level.clamp(1, 19) as i32)
            {
                return (Encoder::Zstd(e), Coding::Zstd);
            }
        }
        let c = if c == Coding::Zstd { Coding::Gzip } else { c };
        let e = match c {
            Coding::Gzip | Coding::Zstd => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level.min(9)),
            )),
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 * 1024,
                level.min(11),
                22,
            ))),
        };
        (e, c)
    }

    /// Compresses `data` and flushes, returning the bytes produced.
    fn push(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
            Encoder::Br(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
            Encoder::Zstd(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }

    /// Ends the stream, returning the last bytes.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Br(e) => Ok(e.into_inner()),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

/// A compressed response body.
pub struct Compressed<B> {
    inner: B,
    enc: Option<Encoder>,
    trailers: Option<http::HeaderMap>,
}

impl<B> Body for Compressed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: From<std::io::Error>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        loop {
            if self.enc.is_none() {
                // Finished: the trailers, if any, then the end.
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = match self.enc.as_mut() {
                            Some(enc) => enc.push(&data)?,
                            None => Vec::new(),
                        };
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            self.trailers = Some(t);
                        }
                    }
                },
                Poll::Ready(None) => {
                    let tail = match self.enc.take() {
                        Some(enc) => enc.finish()?,
                        None => Vec::new(),
                    };
                    if !tail.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(tail)))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.enc.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn negotiation_by_q_then_preference() {
        let all = [Coding::Br, Coding::Zstd, Coding::Gzip];
        assert_eq!(negotiate("gzip, deflate, br", &all), Some(Coding::Br));
        assert_eq!(negotiate("gzip;q=1.0, br;q=0.5", &all), Some(Coding::Gzip));
        assert_eq!(negotiate("br;q=0, gzip", &all), Some(Coding::Gzip));
        assert_eq!(negotiate("*", &all), Some(Coding::Br));
        assert_eq!(negotiate("*;q=0", &all), None);
        assert_eq!(negotiate("identity", &all), None);
        assert_eq!(negotiate("", &all), None);
        assert_eq!(negotiate("zstd, br", &[Coding::Gzip]), None);
        assert_eq!(
            negotiate("GZIP;q=0.3, zstd;q=0.2", &all),
            Some(Coding::Gzip)
        );
    }

    fn policy() -> Policy {
        Policy::new(&Compression::default())
    }

    fn resp(ct: &str, len: Option<usize>) -> http::response::Parts {
        let mut b = http::Response::builder().header(CONTENT_TYPE, ct);
        if let Some(n) = len {
            b = b.header(CONTENT_LENGTH, n);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn what_is_compressed() {
        let p = policy();
        let mut req = http::HeaderMap::new();
        req.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let get = http::Method::GET;
        assert_eq!(
            p.choose(&req, &get, &resp("text/html; charset=utf-8", Some(5000))),
            Some(Coding::Gzip)
        );
        assert_eq!(
            p.choose(&req, &get, &resp("application/json", None)),
            Some(Coding::Gzip)
        );
        assert_eq!(
            p.choose(&req, &get, &resp("image/png", Some(5000))),
            None,
            "images"
        );
        assert_eq!(
            p.choose(&req, &get, &resp("text/plain", Some(100))),
            None,
            "small"
        );
        assert_eq!(
            p.choose(&req, &http::Method::HEAD, &resp("text/plain", Some(5000))),
            None
        );
        let mut enc = resp("text/plain", Some(5000));
        enc.headers
            .insert(CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(p.choose(&req, &get, &enc), None, "already encoded");
        let mut nt = resp("text/plain", Some(5000));
        nt.headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, no-transform"),
        );
        assert_eq!(p.choose(&req, &get, &nt), None, "no-transform");
        let mut partial = resp("text/plain", Some(5000));
        partial.status = http::StatusCode::PARTIAL_CONTENT;
        assert_eq!(p.choose(&req, &get, &partial), None);
        let mut ranged = req.clone();
        ranged.insert(RANGE, HeaderValue::from_static("bytes=0-10"));
        assert_eq!(
            p.choose(&ranged, &get, &resp("text/plain", Some(5000))),
            None
        );
        // A client that accepts nothing gets the identity, but the
        // response still qualifies: it varies on Accept-Encoding.
        let none = http::HeaderMap::new();
        let text = resp("text/plain", Some(5000));
        assert_eq!(p.choose(&none, &get, &text), None);
        assert!(p.qualifies(&none, &get, &text));
        assert!(!p.qualifies(&none, &get, &resp("image/png", Some(5000))));
        let mut h = http::HeaderMap::new();
        h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        Policy::add_vary(&mut h);
        assert_eq!(h.get_all(VARY).iter().count(), 1, "not twice");
        // q-values in either case.
        assert_eq!(
            negotiate("gzip;Q=0, br;q=0.5", &[Coding::Gzip, Coding::Br]),
            Some(Coding::Br)
        );
    }

    async fn roundtrip(c: Coding, chunks: &[&[u8]]) -> (Vec<u8>, http::response::Parts) {
        let p = policy();
        let mut parts = resp("text/plain", Some(chunks.iter().map(|c| c.len()).sum()));
        parts
            .headers
            .insert(ETAG, HeaderValue::from_static("\"v1\""));
        let body = Chunks(chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect());
        let out = p.apply(c, &mut parts, body);
        let bytes = out.collect().await.unwrap().to_bytes();
        (bytes.to_vec(), parts)
    }

    /// A body made of the given chunks.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn each_coding_decompresses_to_the_original() {
        let text: Vec<u8> = (0..200_000u32)
            .map(|i| b"convoy balances requests "[(i % 25) as usize])
            .collect();
        let chunks: Vec<&[u8]> = text.chunks(7_000).collect();
        for c in [Coding::Gzip, Coding::Br, Coding::Zstd] {
            let (z, parts) = roundtrip(c, &chunks).await;
            assert!(z.len() < text.len() / 10, "{c:?}: {} bytes", z.len());
            let back = match c {
                Coding::Gzip => {
                    let mut d = flate2::read::GzDecoder::new(&z[..]);
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut d, &mut v).unwrap();
                    v
                }
                Coding::Br => {
                    let mut v = Vec::new();
                    brotli::BrotliDecompress(&mut &z[..], &mut v).unwrap();
                    v
                }
                Coding::Zstd => zstd::stream::decode_all(&z[..]).unwrap(),
            };
            assert_eq!(back, text, "{c:?}");
            assert_eq!(parts.headers[CONTENT_ENCODING], c.token());
            assert!(!parts.headers.contains_key(CONTENT_LENGTH));
            assert_eq!(parts.headers[VARY], "accept-encoding");
            assert_eq!(parts.headers[ETAG], "W/\"v1\"");
        }
    }
}
