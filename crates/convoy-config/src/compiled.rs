//! The runtime model: the parts of the TOML schema that are strings for
//! the user (a route's `header = "X-Tier: gold"`, `client = "10.0.0.0/8"`,
//! a pool's `hash_on = "cookie:sid"`) compiled once into typed values
//! when a config is loaded or reloaded, so the data plane never parses a
//! string per request and a mistake in one is found by `convoy check`.
//!
//! Each parser here is also what validation calls (`validate.rs`): what
//! `convoy check` accepts is exactly what compiles. Compiling a config
//! that skipped validation cannot fail either: a route condition that
//! does not parse compiles to one that never matches.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::{Listener, Pool, Route};

/// An address or network a route's `client` condition names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    /// The network's address, its host bits cleared.
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl Network {
    /// "10.0.0.0/8", "2001:db8::/32", or one address.
    pub fn parse(s: &str) -> Result<Network, String> {
        crate::parse_net(s)
            .map(|(addr, len)| Network { addr, len })
            .ok_or_else(|| format!("{s:?} is not an address or network (e.g. \"10.0.0.0/8\")"))
    }

    /// Whether `ip` is inside (an IPv4 client over an IPv6 socket is
    /// matched as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && crate::mask(ip, self.len) == self.addr
    }
}

/// A route's `header` condition: the field is present, with this exact
/// value when one is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Field name.
    pub name: HeaderName,
    /// Exact value wanted (`None`: any).
    pub value: Option<HeaderValue>,
}

impl HeaderMatch {
    /// "Name" or "Name: value".
    pub fn parse(s: &str) -> Result<HeaderMatch, String> {
        let bad = || format!("{s:?} must be \"Name\" or \"Name: value\" with a valid header name");
        let (name, value) = match s.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (s.trim(), None),
        };
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let value = match value {
            Some(v) if visible(v) => Some(HeaderValue::from_str(v).map_err(|_| bad())?),
            Some(_) => return Err(bad()),
            None => None,
        };
        Ok(HeaderMatch { name, value })
    }

    /// Whether the request's fields satisfy it (the first field of the
    /// name is compared).
    pub fn matches(&self, h: &HeaderMap) -> bool {
        match (h.get(&self.name), &self.value) {
            (None, _) => false,
            (Some(got), Some(want)) => got.as_bytes() == want.as_bytes(),
            (Some(_), None) => true,
        }
    }
}

/// A route's `cookie` condition: the cookie is sent, with this exact value
/// when one is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieMatch {
    /// Cookie name.
    pub name: String,
    /// Exact value wanted (`None`: any).
    pub value: Option<String>,
}

impl CookieMatch {
    /// "name" or "name=value".
    pub fn parse(s: &str) -> Result<CookieMatch, String> {
        let (name, value) = match s.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (s.trim(), None),
        };
        if !cookie_name(name) {
            return Err(format!("{s:?} must be \"name\" or \"name=value\""));
        }
        Ok(CookieMatch {
            name: name.to_string(),
            value,
        })
    }
}

/// What a pool's `algorithm = "hash"` hashes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum HashOn {
    /// The client's address.
    #[default]
    Client,
    /// A request field's value (the client's address when absent).
    Header(HeaderName),
    /// A cookie's value (the client's address when absent).
    Cookie(String),
}

impl HashOn {
    /// "client", "header:NAME" or "cookie:NAME".
    pub fn parse(s: &str) -> Result<HashOn, String> {
        let bad = || format!("{s:?} is not \"client\", \"header:NAME\" or \"cookie:NAME\"");
        if s == "client" {
            return Ok(HashOn::Client);
        }
        if let Some(n) = s.strip_prefix("header:") {
            return HeaderName::from_bytes(n.as_bytes())
                .map(HashOn::Header)
                .map_err(|_| bad());
        }
        match s.strip_prefix("cookie:") {
            Some(n) if cookie_name(n) => Ok(HashOn::Cookie(n.to_string())),
            _ => Err(bad()),
        }
    }

    /// The pool's, compiled (the client's address if it does not parse,
    /// which validation rules out).
    pub fn of(pool: &Pool) -> HashOn {
        HashOn::parse(&pool.hash_on).unwrap_or_default()
    }
}

/// What a route decides for the requests it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDecision {
    /// Route name ("default" when none matched).
    pub route: String,
    /// Pool name.
    pub pool: String,
    /// Priority class, 0 highest.
    pub class: usize,
    /// Cost of one request.
    pub cost: u32,
    /// Largest request body in bytes (0 = no limit).
    pub max_body: u64,
    /// The listener's cache may answer.
    pub cache: bool,
    /// Refresh cached responses ahead of expiry.
    pub hot: bool,
    /// What it rewrites (none: nothing).
    pub rewrite: Option<std::sync::Arc<crate::rewrite::Rewrite>>,
}

/// A route's conditions, typed; every one given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Host, lower-cased, without port.
    pub host: Option<String>,
    /// Exact path.
    pub path: Option<String>,
    /// Path prefix.
    pub path_prefix: Option<String>,
    /// Method.
    pub method: Option<Method>,
    /// A request field.
    pub header: Option<HeaderMatch>,
    /// A cookie.
    pub cookie: Option<CookieMatch>,
    /// The client's network.
    pub client: Option<Network>,
    /// A condition did not compile (an unvalidated config): never
    /// matches.
    pub never: bool,
}

/// One compiled route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRoute {
    /// When it applies.
    pub when: Conditions,
    /// What it decides.
    pub then: RouteDecision,
}

/// A listener's routes in order, and the decision when none matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTable {
    /// The routes, first match wins.
    pub routes: Vec<CompiledRoute>,
    /// No route matched.
    pub default: RouteDecision,
    /// Some route has a host condition (the request's host is worked out
    /// only then).
    pub needs_host: bool,
    /// The routes with a host condition, by host: indices into `routes`,
    /// ascending. A request looks only at its host's routes and the
    /// host-less ones, so matching does not grow with the number of
    /// virtual hosts.
    pub by_host: std::collections::HashMap<String, Vec<u32>>,
    /// The routes without a host condition: indices, ascending.
    pub any_host: Vec<u32>,
}

impl RouteTable {
    /// Compiles the listener's routes.
    pub fn compile(l: &Listener) -> RouteTable {
        let routes: Vec<CompiledRoute> = l.routes.iter().map(|r| compile_route(l, r)).collect();
        let mut by_host: std::collections::HashMap<String, Vec<u32>> = Default::default();
        let mut any_host = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            match &r.when.host {
                Some(h) => by_host.entry(h.clone()).or_default().push(i as u32),
                None => any_host.push(i as u32),
            }
        }
        RouteTable {
            needs_host: !by_host.is_empty(),
            by_host,
            any_host,
            routes,
            default: RouteDecision {
                route: "default".into(),
                pool: l.pool.clone(),
                class: 4,
                cost: 1,
                max_body: l.max_body,
                cache: true,
                hot: false,
                rewrite: Some(crate::rewrite::of_listener(l))
                    .filter(|w| !w.is_empty())
                    .map(std::sync::Arc::new),
            },
        }
    }
}

/// The conditions of `r`, each parsed by the function validation uses;
/// every mistake, by key, when some do not parse.
pub fn conditions(r: &Route) -> Result<Conditions, Vec<(&'static str, String)>> {
    let mut errs = Vec::new();
    let mut c = Conditions {
        host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
        path: r.path.clone(),
        path_prefix: r.path_prefix.clone(),
        ..Conditions::default()
    };
    if let Some(m) = &r.method {
        match Method::from_bytes(m.as_bytes()) {
            Ok(method) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
                c.method = Some(method)
            }
            _ => errs.push((
                "method",
                format!("{m:?} is not an HTTP method (e.g. \"GET\")"),
            )),
        }
    }
    if let Some(h) = &r.host {
        let ok = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:*[]".contains(&b));
        if !ok {
            errs.push((
                "host",
                format!("{h:?} is not a host name (e.g. \"www.example.com\")"),
            ));
        }
    }
    for (k, v) in [("path", &r.path), ("path_prefix", &r.path_prefix)] {
        if v.as_ref().is_some_and(|p| !p.starts_with('/')) {
            errs.push((k, "must start with '/'".into()));
        }
    }
    match r.header.as_deref().map(HeaderMatch::parse) {
        Some(Ok(h)) => c.header = Some(h),
        Some(Err(e)) => errs.push(("header", e)),
        None => {}
    }
    match r.cookie.as_deref().map(CookieMatch::parse) {
        Some(Ok(m)) => c.cookie = Some(m),
        Some(Err(e)) => errs.push(("cookie", e)),
        None => {}
    }
    match r.client.as_deref().map(Network::parse) {
        Some(Ok(n)) => c.client = Some(n),
        Some(Err(e)) => errs.push(("client", e)),
        None => {}
    }
    if errs.is_empty() {
        Ok(c)
    } else {
        Err(errs)
    }
}

fn compile_route(l: &Listener, r: &Route) -> CompiledRoute {
    CompiledRoute {
        when: conditions(r).unwrap_or(Conditions {
            never: true,
            ..Conditions::default()
        }),
        then: RouteDecision {
            route: r.name.clone(),
            pool: r.pool.clone().unwrap_or_else(|| l.pool.clone()),
            class: usize::from(r.priority),
            cost: r.cost,
            max_body: r.max_body.unwrap_or(l.max_body),
            cache: r.cache,
            hot: r.hot,
            rewrite: Some(crate::rewrite::of_route(l, r))
                .filter(|w| !w.is_empty())
                .map(std::sync::Arc::new),
        },
    }
}

/// A field value a route may match on: visible ASCII and spaces.
fn visible(v: &str) -> bool {
    v.bytes()
        .all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b))
}

/// A cookie name (RFC 6265 token).
fn cookie_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b > b' ' && b < 0x7f && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_accept_the_documented_forms_and_refuse_the_rest() {
        let h = HeaderMatch::parse("X-Tier: gold").unwrap();
        assert_eq!(h.name, "x-tier");
        assert_eq!(h.value.as_ref().unwrap(), "gold");
        assert!(HeaderMatch::parse("X-Tier").unwrap().value.is_none());
        for bad in ["Bad Name: x", "", ": v", "X-A: a\u{1}b", "Ä: x"] {
            assert!(HeaderMatch::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            CookieMatch::parse("beta=yes").unwrap(),
            CookieMatch {
                name: "beta".into(),
                value: Some("yes".into())
            }
        );
        assert!(CookieMatch::parse("a b").is_err());
        let n = Network::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "host", "10.0.0.0/x"] {
            assert!(Network::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(HashOn::parse("client").unwrap(), HashOn::Client);
        assert_eq!(
            HashOn::parse("header:X-User").unwrap(),
            HashOn::Header(HeaderName::from_static("x-user"))
        );
        assert_eq!(
            HashOn::parse("cookie:sid").unwrap(),
            HashOn::Cookie("sid".into())
        );
        for bad in [
            "header:",
            "header:a b",
            "header:a(b",
            "cookie:",
            "cookie:a;b",
            "ip",
        ] {
            assert!(HashOn::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_unvalidated_route_compiles_to_one_that_never_matches() {
        let mut l: Listener = toml::from_str(
            "protocol = \"http\"\naddress = \"127.0.0.1:1\"\npool = \"web\"\n\
             [[routes]]\nname = \"bad\"\nheader = \"Bad Name\"\n\
             [[routes]]\nname = \"ok\"\nhost = \"WWW.Example\"\npriority = 1\n",
        )
        .unwrap();
        l.max_body = 7;
        let t = RouteTable::compile(&l);
        assert!(t.routes[0].when.never);
        assert_eq!(t.routes[1].when.host.as_deref(), Some("www.example"));
        assert_eq!(t.routes[1].then.class, 1);
        assert_eq!(t.routes[1].then.pool, "web");
        assert!(t.needs_host);
        assert_eq!(t.default.max_body, 7);
    }
}
