//! Route matching on the listener's compiled routes
//! ([`RouteTable`]): the first route whose every condition holds decides
//! the pool, priority class and cost; no match means the listener's pool
//! with the default class. Nothing is parsed here: the conditions were
//! typed when the config was loaded.

use std::net::IpAddr;

use convoy_config::compiled::{Conditions, RouteDecision, RouteTable};
use http::Request;

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

fn matches<B>(
    c: &Conditions,
    req: &Request<B>,
    host: Option<&str>,
    client: Option<IpAddr>,
) -> bool {
    if c.never {
        return false;
    }
    if let Some(net) = &c.client {
        if !client.is_some_and(|ip| net.contains(ip)) {
            return false;
        }
    }
    if let Some(m) = &c.cookie {
        let found = crate::headers::cookies(req.headers())
            .any(|(k, v)| k == m.name && m.value.as_ref().is_none_or(|want| want == v));
        if !found {
            return false;
        }
    }
    if c.host.is_some() && c.host.as_deref() != host {
        return false;
    }
    let path = req.uri().path();
    if c.path.as_ref().is_some_and(|p| p != path) {
        return false;
    }
    if c.path_prefix
        .as_ref()
        .is_some_and(|p| !path.starts_with(p.as_str()))
    {
        return false;
    }
    if c.method.as_ref().is_some_and(|m| m != req.method()) {
        return false;
    }
    if c.header.as_ref().is_some_and(|h| !h.matches(req.headers())) {
        return false;
    }
    true
}

/// Decides pool, class and cost for `req` (routes with a `client`
/// condition never match: see [`decide_from`]).
pub fn decide<'a, B>(t: &'a RouteTable, req: &Request<B>) -> &'a RouteDecision {
    decide_from(t, req, None)
}

/// Decides pool, class and cost for `req` from `client`.
pub fn decide_from<'a, B>(
    t: &'a RouteTable,
    req: &Request<B>,
    client: Option<IpAddr>,
) -> &'a RouteDecision {
    if t.routes.is_empty() {
        return &t.default;
    }
    let host = if t.needs_host { host_of(req) } else { None };
    let for_host: &[u32] = host
        .as_deref()
        .and_then(|h| t.by_host.get(h))
        .map_or(&[], Vec::as_slice);
    // The host's routes and the host-less ones, merged in their order:
    // the first that matches wins, as if every route were tried.
    let (mut a, mut b) = (for_host.iter().peekable(), t.any_host.iter().peekable());
    loop {
        let i = match (a.peek(), b.peek()) {
            (Some(&&x), Some(&&y)) if x < y => a.next(),
            (Some(_), None) => a.next(),
            _ => b.next(),
        };
        let Some(&i) = i else {
            return &t.default;
        };
        let r = &t.routes[i as usize];
        if matches(&r.when, req, host.as_deref(), client) {
            return &r.then;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_config::Config;

    fn listener() -> RouteTable {
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
        RouteTable::compile(&Config::parse("t", text).unwrap().listeners.remove(0))
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
        assert_eq!(
            (d.pool.as_str(), d.cost, d.route.as_str()),
            ("media", 10, "media")
        );
        let d = decide(&l, &req("POST", "/x", &[("host", "admin.example:8080")]));
        assert_eq!(
            (d.pool.as_str(), d.class, d.route.as_str()),
            ("web", 0, "admin")
        );
        let d = decide(&l, &req("GET", "/x", &[("host", "admin.example")]));
        assert_eq!(d.route, "default", "method must match too");
        let d = decide(&l, &req("GET", "/x", &[("x-tier", "gold")]));
        assert_eq!((d.class, d.route.as_str()), (1, "vip"));
        let d = decide(&l, &req("GET", "/x", &[("x-tier", "silver")]));
        assert_eq!((d.class, d.cost), (4, 1));
    }

    /// The host index gives the answer a scan of every route in order
    /// gives, for host routes interleaved with host-less ones.
    #[test]
    fn host_index_keeps_first_match_order() {
        let text = r#"
[[listeners]]
protocol = "http"
address = "127.0.0.1:1"
pool = "web"
[[listeners.routes]]
name = "a-x"
host = "a.example"
path_prefix = "/x/"
[[listeners.routes]]
name = "any-xy"
path_prefix = "/x/y"
[[listeners.routes]]
name = "b-root"
host = "B.example"
path_prefix = "/"
[[listeners.routes]]
name = "a-root"
host = "a.example"
path_prefix = "/"
[[listeners.routes]]
name = "any-z"
path = "/z"
[pools.web]
[[pools.web.servers]]
address = "127.0.0.1:2"
"#;
        let t = RouteTable::compile(&Config::parse("t", text).unwrap().listeners.remove(0));
        assert_eq!(t.any_host, vec![1, 4]);
        assert_eq!(t.by_host["b.example"], vec![2]);
        let scan = |r: &Request<()>| {
            let host = host_of(r);
            t.routes
                .iter()
                .find(|x| matches(&x.when, r, host.as_deref(), None))
                .map_or("default", |x| x.then.route.as_str())
                .to_string()
        };
        let mut seen = std::collections::BTreeSet::new();
        for host in ["a.example", "A.EXAMPLE:80", "b.example", "c.example", ""] {
            for path in ["/x/y", "/x/q", "/z", "/", "/x"] {
                let hs: &[(&str, &str)] = if host.is_empty() {
                    &[]
                } else {
                    &[("host", host)]
                };
                let r = req("GET", path, hs);
                let got = decide(&t, &r).route.clone();
                assert_eq!(got, scan(&r), "{host} {path}");
                seen.insert(got);
            }
        }
        assert_eq!(
            seen.len(),
            6,
            "every route and the default chosen: {seen:?}"
        );
        let r = req("GET", "/x/y", &[("host", "b.example")]);
        assert_eq!(
            decide(&t, &r).route,
            "any-xy",
            "earlier host-less route wins"
        );
        let r = req("GET", "/z", &[("host", "a.example")]);
        assert_eq!(decide(&t, &r).route, "a-root", "earlier host route wins");
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
