//! Request and response header rewriting at the proxy: hop-by-hop headers
//! are removed (RFC 9110 §7.6.1, including those named in `Connection`),
//! and `X-Forwarded-For`/`-Proto`/`-Host`, `Forwarded` (RFC 7239) and `Via`
//! are added. Values are built from parsed addresses and validated header
//! values only, so CR/LF can never be injected. The per-client parts are
//! built once per connection ([`ClientInfo`]); a request costs a few map
//! operations and at most two small allocations.

use std::net::{IpAddr, SocketAddr};

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, FORWARDED, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA,
};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The field an operator asks convoy to explain its choice with (the
/// admin token as its value); the answer comes back in one of the same
/// name.
pub const EXPLAIN: &str = "x-convoy-explain";

/// Request fields the request path looks up only when a head has one,
/// as the codecs note them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Noted {
    /// `X-Forwarded-*`: the client's own forwarding fields.
    Forwarding,
    /// [`EXPLAIN`].
    Explain,
}

/// Which noted kind a field name (lowercase) is, if any.
pub fn noted(name: &str) -> Option<Noted> {
    if name.starts_with("x-forwarded-") {
        Some(Noted::Forwarding)
    } else if name == EXPLAIN {
        Some(Noted::Explain)
    } else {
        None
    }
}

/// A hop-by-hop field's name (RFC 9110 §7.6.1; those a `Connection`
/// field names aside).
pub fn is_hop_by_hop(k: &HeaderName) -> bool {
    k == CONNECTION
        || k == TE
        || k == TRANSFER_ENCODING
        || k == UPGRADE
        || k == TRAILER
        || k == PROXY_AUTHORIZATION
        || k == PROXY_AUTHENTICATE
        || k == KEEP_ALIVE
        || k == PROXY_CONNECTION
}

/// Removes hop-by-hop headers. One pass over the names first: most
/// messages have none (HTTP/2 requests cannot carry most of them).
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.keys().any(is_hop_by_hop) {
        crate::h1::parse::strip_hop(h, crate::h1::parse::hop::ALL);
    }
}

/// The cookies a request sends, as (name, value) pairs, from every
/// `Cookie` field (`a=1; b=2`); a pair without `=` has an empty value.
pub fn cookies(h: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    h.get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(|kv| {
            let kv = kv.trim();
            match kv.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => (kv, ""),
            }
        })
}

/// The value of cookie `name` in the request's fields.
pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookies(h).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// What the forwarding headers say about one client connection: its
/// address (an IPv4-mapped IPv6 address as IPv4) and whether it came
/// over TLS, and the forwarding lines last built for it. Kept small: it
/// lives as long as the connection.
#[derive(Debug)]
pub struct ClientInfo {
    ip: IpAddr,
    https: bool,
    /// The last forwarding lines built, with the Host and version they
    /// were built for.
    lines: std::sync::Mutex<Option<(Option<HeaderValue>, http::Version, bytes::Bytes)>>,
}

impl ClientInfo {
    /// Whether the client came over TLS.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// For a connection from `client` over `proto` ("http" or "https").
    pub fn new(client: SocketAddr, proto: &'static str) -> Self {
        let ip = match client.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        ClientInfo {
            ip,
            https: proto == "https",
            lines: std::sync::Mutex::new(None),
        }
    }

    fn proto(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// `for=...;proto=...` of the `Forwarded` field.
    fn forwarded(&self) -> String {
        match self.ip {
            IpAddr::V4(ip) => format!("for={ip};proto={}", self.proto()),
            IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto={}", self.proto()),
        }
    }

    /// The forwarding fields, as header lines ready to be written, for a
    /// request whose client sent no `X-Forwarded-For`, `-Proto` or
    /// `-Host` of its own: the same fields [`add_forwarding`] adds. Built
    /// once per connection and Host.
    pub fn lines(&self, host: Option<&HeaderValue>, version: http::Version) -> bytes::Bytes {
        let mut c = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        // The same Host as last time (kept only when it was valid): the
        // same lines, without checking it again.
        if let Some((h, v, b)) = c.as_ref() {
            if h.as_ref() == host && *v == version {
                return b.clone();
            }
        }
        let host = host.filter(|v| v.to_str().is_ok_and(host_ok));
        let mut h = HeaderMap::new();
        add_forwarding(&mut h, self, host, version);
        let mut out = Vec::with_capacity(160);
        for (name, value) in &h {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let b = bytes::Bytes::from(out);
        // A copy of the Host: the request's own value shares (and would
        // keep alive) the buffer its head was read into.
        let kept = host.and_then(|h| HeaderValue::from_bytes(h.as_bytes()).ok());
        *c = Some((kept, version, b.clone()));
        b
    }
}

/// Adds header lines (`name: value\r\n`, as [`ClientInfo::lines`]
/// writes them) to a field map.
pub fn append_lines(h: &mut HeaderMap, lines: &[u8]) {
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (n, v) = (&line[..colon], &line[colon + 1..]);
        let v = v.strip_prefix(b" ").unwrap_or(v);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
            h.append(n, v);
        }
    }
}

/// Whether a client sent forwarding fields of its own (they must be
/// merged or replaced, not just added to).
pub fn has_forwarding(h: &HeaderMap) -> bool {
    h.contains_key(&XFF) || h.contains_key(&XFP) || h.contains_key(&XFH)
}

fn host_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

/// Adds the forwarding headers for a request of the client `c` that
/// arrived over `version`; `host` is the request's Host (header or HTTP/2
/// authority). Every `X-Forwarded-For` line the client sent is kept, in
/// order, with the client's address appended; a client's own
/// `X-Forwarded-Host` never passes (it is replaced by the Host, or removed).
pub fn add_forwarding(
    h: &mut HeaderMap,
    c: &ClientInfo,
    host: Option<&HeaderValue>,
    version: http::Version,
) {
    let ip = c.ip.to_string();
    let mut prev = h.get_all(&XFF).iter().filter_map(|v| v.to_str().ok());
    let xff = match prev.next() {
        Some(first) => {
            let mut s = String::with_capacity(first.len() + 2 + ip.len());
            s.push_str(first);
            for more in prev {
                s.push_str(", ");
                s.push_str(more);
            }
            s.push_str(", ");
            s.push_str(&ip);
            HeaderValue::from_str(&s).ok()
        }
        None => HeaderValue::from_str(&ip).ok(),
    };
    if let Some(v) = xff {
        h.insert(&XFF, v);
    }
    h.insert(&XFP, HeaderValue::from_static(c.proto()));
    let host = host.filter(|v| v.to_str().is_ok_and(host_ok));
    let forwarded = c.forwarded();
    let fwd = match host.and_then(|v| v.to_str().ok()) {
        Some(hs) => {
            let mut s = String::with_capacity(forwarded.len() + 8 + hs.len());
            s.push_str(&forwarded);
            // A host with a port (or an IPv6 literal) is not an RFC 7239
            // token: quote it.
            if hs.contains(':') {
                s.push_str(";host=\"");
                s.push_str(hs);
                s.push('"');
            } else {
                s.push_str(";host=");
                s.push_str(hs);
            }
            HeaderValue::from_str(&s).ok()
        }
        None => HeaderValue::from_str(&forwarded).ok(),
    };
    match host {
        Some(host) => {
            h.insert(&XFH, host.clone());
        }
        None => {
            h.remove(&XFH);
        }
    }
    if let Some(v) = fwd {
        h.append(FORWARDED, v);
    }
    let via = match version {
        http::Version::HTTP_2 => "2.0 convoy",
        http::Version::HTTP_10 => "1.0 convoy",
        _ => "1.1 convoy",
    };
    h.append(VIA, HeaderValue::from_static(via));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
        // Each one alone, without a Connection field, goes too.
        for name in [
            "te",
            "transfer-encoding",
            "upgrade",
            "trailer",
            "proxy-authorization",
            "proxy-authenticate",
            "keep-alive",
            "proxy-connection",
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static("x"));
            h.insert("x-keep", HeaderValue::from_static("yes"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name} stayed");
        }
        // Host stays whatever Connection names; every Connection field
        // counts, not only the first.
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.com"));
        h.append("connection", HeaderValue::from_static("Host, x-one"));
        h.append("connection", HeaderValue::from_static("x-two"));
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["host"], "example.com");
    }

    #[test]
    fn forwarding_lines_match_the_fields() {
        let c = ClientInfo::new("127.0.0.7:5000".parse().unwrap(), "https");
        let host = HeaderValue::from_static("example.com");
        let l = c.lines(Some(&host), http::Version::HTTP_11);
        assert_eq!(
            std::str::from_utf8(&l).unwrap(),
            "x-forwarded-for: 127.0.0.7\r\nx-forwarded-proto: https\r\nx-forwarded-host: example.com\r\nforwarded: for=127.0.0.7;proto=https;host=example.com\r\nvia: 1.1 convoy\r\n"
        );
        // Cached for the same Host, rebuilt for another.
        assert_eq!(c.lines(Some(&host), http::Version::HTTP_11), l);
        let l2 = c.lines(None, http::Version::HTTP_2);
        assert!(!std::str::from_utf8(&l2)
            .unwrap()
            .contains("x-forwarded-host"));
        assert!(std::str::from_utf8(&l2)
            .unwrap()
            .contains("via: 2.0 convoy"));
        // A Host that is no host name is never passed on, cached or not.
        let bad = HeaderValue::from_static("a b");
        for _ in 0..2 {
            let lb = c.lines(Some(&bad), http::Version::HTTP_2);
            assert_eq!(lb, l2, "{lb:?}");
        }
        assert_eq!(c.lines(Some(&host), http::Version::HTTP_11), l);
        let mut h = HeaderMap::new();
        append_lines(&mut h, &l);
        assert_eq!(h["forwarded"], "for=127.0.0.7;proto=https;host=example.com");
        assert_eq!(h.len(), 5);
        let mut h = HeaderMap::new();
        assert!(!has_forwarding(&h));
        h.insert("x-forwarded-host", HeaderValue::from_static("e"));
        assert!(has_forwarding(&h));
    }

    #[test]
    fn forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        let c = ClientInfo::new("127.0.0.7:5000".parse().unwrap(), "http");
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        add_forwarding(
            &mut h,
            &c,
            Some(&HeaderValue::from_static("example.com")),
            http::Version::HTTP_11,
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 198.51.100.1, 127.0.0.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["forwarded"], "for=127.0.0.7;proto=http;host=example.com");
        assert_eq!(h["via"], "1.1 convoy");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        let c = ClientInfo::new("[::1]:5000".parse().unwrap(), "http");
        add_forwarding(
            &mut h,
            &c,
            Some(&HeaderValue::from_static("bad host\"")),
            http::Version::HTTP_2,
        );
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
        assert!(!h.contains_key("x-forwarded-host"));
        assert_eq!(h["via"], "2.0 convoy");
        let mut h = HeaderMap::new();
        add_forwarding(
            &mut h,
            &c,
            Some(&HeaderValue::from_static("example.com:8080")),
            http::Version::HTTP_11,
        );
        assert_eq!(
            h["forwarded"],
            "for=\"[::1]\";proto=http;host=\"example.com:8080\""
        );
    }
}
