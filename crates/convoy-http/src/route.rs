//! Route matching: the first route whose every condition holds decides the
//! pool, priority class and cost; no match means the listener's pool with
//! the default class.

use std::net::IpAddr;

use convoy_config::{Listener, Route};
use http::Request;

/// What a route decided for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Pool name.
    pub pool: &'a str,
    /// Priority class, 0 highest.
    pub class: usize,
    /// Cost.
    pub cost: u32,
    /// Route name ("default" when none matched).
    pub route: &'a str,
    /// Largest request body in bytes (0 = no limit).
    pub max_body: u64,
    /// The listener's cache may answer.
    pub cache: bool,
    /// Refresh cached responses ahead of expiry.
    pub hot: bool,
}

/// The host of a request, without port, lower-cased: from the URI
/// authority (HTTP/2, absolute form) or the Host header.
pub fn host_of<B>(req: &Request<B>) -> Option<String> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| match h.rsplit_once(':') {
                    Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
                        host.to_string()
                    }
                    _ => h.to_string(),
                })
        })?;
    Some(raw.to_ascii_lowercase())
}

fn matches<B>(r: &Route, req: &Request<B>, host: Option<&str>, client: Option<IpAddr>) -> bool {
    if let Some(c) = &r.client {
        let inside = match (client, convoy_config::parse_net(c)) {
            (Some(ip), Some((net, len))) => {
                // An IPv4 client over an IPv6 socket is matched as IPv4.
                let ip = match ip {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                    v4 => v4,
                };
                ip.is_ipv4() == net.is_ipv4() && convoy_config::mask(ip, len) == net
            }
            _ => false,
        };
        if !inside {
            return false;
        }
    }
    if let Some(c) = &r.cookie {
        let (name, value) = match c.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (c.trim(), None),
        };
        let found = req
            .headers()
            .get_all(http::header::COOKIE)
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
            .any(|(k, v)| k == name && value.is_none_or(|want| want == v));
        if !found {
            return false;
        }
    }
    if let Some(h) = &r.host {
        if host != Some(h.to_ascii_lowercase().as_str()) {
            return false;
        }
    }
    let path = req.uri().path();
    if r.path.as_ref().is_some_and(|p| p != path) {
        return false;
    }
    if r.path_prefix
        .as_ref()
        .is_some_and(|p| !path.starts_with(p.as_str()))
    {
        return false;
    }
    if r.method
        .as_ref()
        .is_some_and(|m| m != req.method().as_str())
    {
        return false;
    }
    if let Some(h) = &r.header {
        let (name, value) = match h.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (h.trim(), None),
        };
        match (req.headers().get(name), value) {
            (None, _) => return false,
            (Some(got), Some(want)) if got.as_bytes() != want.as_bytes() => return false,
            _ => {}
        }
    }
    true
}

/// Decides pool, class and cost for `req` on listener `l` (routes with a
/// `client` condition never match: see [`decide_from`]).
pub fn decide<'a, B>(l: &'a Listener, req: &Request<B>) -> Decision<'a> {
    decide_from(l, req, None)
}

/// Decides pool, class and cost for `req` from `client` on listener `l`.
pub fn decide_from<'a, B>(
    l: &'a Listener,
    req: &Request<B>,
    client: Option<IpAddr>,
) -> Decision<'a> {
    if l.routes.is_empty() {
        return default_decision(l);
    }
    let host = if l.routes.iter().any(|r| r.host.is_some()) {
        host_of(req)
    } else {
        None
    };
    for r in &l.routes {
        if matches(r, req, host.as_deref(), client) {
            return Decision {
                pool: r.pool.as_deref().unwrap_or(&l.pool),
                class: usize::from(r.priority),
                cost: r.cost,
                route: &r.name,
                max_body: r.max_body.unwrap_or(l.max_body),
                cache: r.cache,
                hot: r.hot,
            };
        }
    }
    default_decision(l)
}

fn default_decision(l: &Listener) -> Decision<'_> {
    Decision {
        pool: &l.pool,
        class: 4,
        cost: 1,
        route: "default",
        max_body: l.max_body,
        cache: true,
        hot: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_config::Config;

    fn listener() -> Listener {
        let text = r#"
[[listeners]]
protocol = "http"
address = "127.0.0.1:1"
pool = "web"
[[listeners.routes]]
name = "media"
path_prefix = "/media/"
pool = "media"
cost = 10
[[listeners.routes]]
name = "admin"
host = "Admin.Example"
method = "POST"
priority = 0
[[listeners.routes]]
name = "vip"
header = "X-Tier: gold"
priority = 1
[[listeners.routes]]
name = "office"
client = "10.1.0.0/16"
priority = 2
[[listeners.routes]]
name = "beta"
cookie = "beta=yes"
priority = 3
[[listeners.routes]]
name = "session"
cookie = "sid"
priority = 5
[pools.web]
[[pools.web.servers]]
address = "127.0.0.1:2"
[pools.media]
[[pools.media.servers]]
address = "127.0.0.1:3"
"#;
        Config::parse("t", text).unwrap().listeners.remove(0)
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn routes_in_order() {
        let l = listener();
        let d = decide(&l, &req("GET", "/media/a.mp4", &[]));
        assert_eq!((d.pool, d.cost, d.route), ("media", 10, "media"));
        let d = decide(&l, &req("POST", "/x", &[("host", "admin.example:8080")]));
        assert_eq!((d.pool, d.class, d.route), ("web", 0, "admin"));
        let d = decide(&l, &req("GET", "/x", &[("host", "admin.example")]));
        assert_eq!(d.route, "default", "method must match too");
        let d = decide(&l, &req("GET", "/x", &[("x-tier", "gold")]));
        assert_eq!((d.class, d.route), (1, "vip"));
        let d = decide(&l, &req("GET", "/x", &[("x-tier", "silver")]));
        assert_eq!((d.class, d.cost), (4, 1));
    }

    #[test]
    fn client_networks_and_cookies() {
        let l = listener();
        let from = |ip: &str| Some(ip.parse().unwrap());
        let plain = req("GET", "/x", &[]);
        assert_eq!(decide_from(&l, &plain, from("10.1.200.3")).route, "office");
        assert_eq!(
            decide_from(&l, &plain, from("::ffff:10.1.0.9")).route,
            "office"
        );
        assert_eq!(decide_from(&l, &plain, from("10.2.0.1")).route, "default");
        assert_eq!(
            decide(&l, &plain).route,
            "default",
            "no client address, no match"
        );
        let beta = req("GET", "/x", &[("cookie", "a=1; beta=yes")]);
        assert_eq!(decide(&l, &beta).route, "beta");
        let not_beta = req("GET", "/x", &[("cookie", "beta=no; sid=7")]);
        assert_eq!(decide(&l, &not_beta).route, "session");
        let none = req("GET", "/x", &[("cookie", "sidx=1")]);
        assert_eq!(decide(&l, &none).route, "default");
    }
}
