//! Request and response header rewriting at the proxy: hop-by-hop headers
//! are removed (RFC 9110 §7.6.1, including those named in `Connection`),
//! and `X-Forwarded-For`/`-Proto`/`-Host`, `Forwarded` (RFC 7239) and `Via`
//! are added. Values are built from parsed addresses and validated header
//! values only, so CR/LF can never be injected.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION};

const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP {
        h.remove(*n);
    }
}

fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("\"[{a}]\""),
    }
}

/// Adds the forwarding headers for a request from `client`, with the
/// original `host` (if any), received over `proto` ("http"/"https").
pub fn add_forwarding(h: &mut HeaderMap, client: SocketAddr, host: Option<&str>, proto: &str) {
    let ip = match client.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    h.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if proto == "https" { "https" } else { "http" }),
    );
    let mut fwd = format!("for={};proto={proto}", forwarded_node(ip));
    if let Some(host) = host.and_then(|x| HeaderValue::from_str(x).ok()) {
        if let Ok(s) = host.to_str() {
            if s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
            {
                fwd.push_str(&format!(";host={s}"));
                h.insert("x-forwarded-host", host.clone());
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&fwd) {
        h.append("forwarded", v);
    }
    h.append("via", HeaderValue::from_static("1.1 convoy"));
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
    }

    #[test]
    fn forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        add_forwarding(
            &mut h,
            "127.0.0.7:5000".parse().unwrap(),
            Some("example.com"),
            "http",
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["forwarded"], "for=127.0.0.7;proto=http;host=example.com");
        assert_eq!(h["via"], "1.1 convoy");
        let mut h = HeaderMap::new();
        add_forwarding(
            &mut h,
            "[::1]:5000".parse().unwrap(),
            Some("bad host\""),
            "http",
        );
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
        assert!(!h.contains_key("x-forwarded-host"));
    }
}
