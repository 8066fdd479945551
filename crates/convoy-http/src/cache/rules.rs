//! Freshness and RFC 9111 rules: the response directives the policy
//! crate does not act on, the cache key and the normalized requests the
//! policy sees, conditional requests, the 304 merge and header helpers.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, response, Method, StatusCode, Uri, Version};

use crate::headers::strip_hop_by_hop;

/// Parts of the stored response's `Cache-Control` that the policy crate does
/// not act on for us.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Directives {
    pub(super) swr: Option<Duration>,
    pub(super) sie: Option<Duration>,
    /// `must-revalidate`, `proxy-revalidate` or `no-cache`: never served stale
    /// without revalidation (stale-if-error excepted, RFC 5861 §4).
    pub(super) no_stale: bool,
    /// May answer a request carrying `Authorization` (RFC 9111 §3.5).
    pub(super) auth_ok: bool,
    pub(super) public: bool,
    pub(super) validator: bool,
}

impl Directives {
    pub(super) fn of(h: &HeaderMap) -> Self {
        let mut d = Directives {
            validator: h.contains_key(header::ETAG) || h.contains_key(header::LAST_MODIFIED),
            ..Default::default()
        };
        for (k, v) in cache_control(h) {
            let secs = || {
                v.as_deref()
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs)
            };
            match k.as_str() {
                "stale-while-revalidate" => d.swr = secs(),
                "stale-if-error" => d.sie = secs(),
                "must-revalidate" => {
                    d.no_stale = true;
                    d.auth_ok = true;
                }
                "proxy-revalidate" | "no-cache" => d.no_stale = true,
                "public" => {
                    d.public = true;
                    d.auth_ok = true;
                }
                // s-maxage implies proxy-revalidate for a shared cache
                // (RFC 9111 §5.2.2.10).
                "s-maxage" => {
                    d.auth_ok = true;
                    d.no_stale = true;
                }
                _ => {}
            }
        }
        d
    }
}

/// A request that only a plain hit can answer: no `Cache-Control`,
/// `Pragma` or `Authorization` of its own.
pub(super) fn plain_request(h: &HeaderMap) -> bool {
    !h.contains_key(header::CACHE_CONTROL)
        && !h.contains_key(header::PRAGMA)
        && !h.contains_key(header::AUTHORIZATION)
}

/// Lowercase host[:port] of the request: the absolute URI's authority wins
/// over `Host` (RFC 9112 §3.2.2); `:80` and `:443` are dropped.
pub(super) fn request_host(req: &request::Parts) -> String {
    let raw = match req.uri.authority() {
        Some(a) => a.as_str().rsplit('@').next().unwrap_or_default().to_owned(),
        None => req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .trim()
            .to_owned(),
    };
    let mut host = raw.to_ascii_lowercase();
    for port in [":80", ":443"] {
        if let Some(stripped) = host.strip_suffix(port) {
            host = stripped.to_owned();
            break;
        }
    }
    host
}

pub(super) fn key_of(host: &str, uri: &Uri) -> String {
    let path = uri.path();
    let path = if path.is_empty() { "/" } else { path };
    let mut key = String::with_capacity(host.len() + path.len() + 16);
    key.push_str(host);
    key.push_str(path);
    if let Some(q) = uri.query() {
        key.push('?');
        key.push_str(q);
    }
    key
}

/// The request as the policy sees it: GET, origin-form URI, normalized
/// `Host`, and without the client's own conditional headers (a conditional
/// request asks about the stored copy only).
pub(super) fn policy_request(req: &request::Parts, host: &str) -> request::Parts {
    let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri = Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
    let mut headers = req.headers.clone();
    for h in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
    ] {
        headers.remove(h);
    }
    match HeaderValue::from_str(host) {
        Ok(v) if !host.is_empty() => {
            headers.insert(header::HOST, v);
        }
        _ => {
            headers.remove(header::HOST);
        }
    }
    request_parts(Method::GET, uri, req.version, headers)
}

/// What a stored variant keeps of its request: `Host`, the headers named by
/// `Vary`, and the fact (not the value) of `Authorization` unless `Vary`
/// names it.
pub(super) fn stored_request(norm: &request::Parts, resp_headers: &HeaderMap) -> request::Parts {
    let mut headers = HeaderMap::new();
    if let Some(h) = norm.headers.get(header::HOST) {
        headers.insert(header::HOST, h.clone());
    }
    for name in comma_values(resp_headers.get_all(header::VARY)) {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        if headers.contains_key(&name) {
            continue;
        }
        for v in norm.headers.get_all(&name) {
            headers.append(name.clone(), v.clone());
        }
    }
    if norm.headers.contains_key(header::AUTHORIZATION)
        && !headers.contains_key(header::AUTHORIZATION)
    {
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("present"));
    }
    request_parts(Method::GET, norm.uri.clone(), norm.version, headers)
}

/// The client's request with the validators of the stored copy in place of
/// its own conditional headers.
pub(super) fn conditional_request(
    req: &request::Parts,
    policy_req: &request::Parts,
) -> request::Parts {
    let mut out = req.clone();
    for h in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_RANGE,
    ] {
        out.headers.remove(&h);
        for v in policy_req.headers.get_all(&h) {
            out.headers.append(h.clone(), v.clone());
        }
    }
    out
}

/// RFC 9111 §3.2: header fields of the 304 are added to the stored ones,
/// replacing all values of the same name, except framing/encoding fields.
pub(super) fn merge_304(stored: &HeaderMap, fresh: &HeaderMap) -> HeaderMap {
    let mut fresh = fresh.clone();
    strip_hop_by_hop(&mut fresh);
    for h in [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::CONTENT_RANGE,
    ] {
        fresh.remove(h);
    }
    let mut out = stored.clone();
    for name in fresh.keys() {
        out.remove(name);
    }
    for (name, value) in &fresh {
        out.append(name.clone(), value.clone());
    }
    out
}

/// Request directives that rule out serving stale while revalidating.
/// The request without `max-stale` in its Cache-Control.
pub(super) fn without_max_stale(req: &request::Parts) -> request::Parts {
    let kept: Vec<String> = cache_control(&req.headers)
        .filter(|(k, _)| k != "max-stale")
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k,
        })
        .collect();
    let mut headers = req.headers.clone();
    headers.remove(header::CACHE_CONTROL);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
            headers.insert(header::CACHE_CONTROL, v);
        }
    }
    request_parts(req.method.clone(), req.uri.clone(), req.version, headers)
}

pub(super) fn request_demands_validation(h: &HeaderMap) -> bool {
    cache_control(h).any(|(k, _)| k == "no-cache" || k == "max-age" || k == "min-fresh")
        || comma_values(h.get_all(header::PRAGMA)).any(|p| p.eq_ignore_ascii_case("no-cache"))
}

/// `Cache-Control` directives as (lowercase name, unquoted value).
pub(super) fn cache_control(h: &HeaderMap) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    comma_values(h.get_all(header::CACHE_CONTROL)).map(|d| match d.split_once('=') {
        Some((k, v)) => (
            k.trim().to_ascii_lowercase(),
            Some(v.trim().trim_matches('"').to_owned()),
        ),
        None => (d.to_ascii_lowercase(), None),
    })
}

/// Non-empty, trimmed comma-separated elements of all values of a header.
pub(super) fn comma_values<'a>(
    values: http::header::GetAll<'a, HeaderValue>,
) -> impl Iterator<Item = &'a str> + 'a {
    values
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

pub(super) fn request_parts(
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
) -> request::Parts {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    parts
}

pub(super) fn response_parts(
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
) -> response::Parts {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    parts
}
