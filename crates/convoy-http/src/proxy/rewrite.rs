//! HTTP rewriting on the request path: the request id, redirects, path
//! prefix rewrites, field operations on requests and responses (their
//! templates filled in per request), and the bodies of convoy's own error
//! answers. The settings are compiled by `convoy_config::rewrite`.

use std::sync::Arc;

use bytes::Bytes;
use convoy_config::rewrite::{FieldOps, Rewrite, Template, Var};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::bodies::RespBody;

/// A response convoy made itself (an error page may replace its body).
#[derive(Clone, Copy, Debug)]
pub(super) struct LocalAnswer;

/// The server that answered, put in the response's extensions for
/// `{server}` in response fields.
#[derive(Clone, Debug)]
pub(super) struct ServedBy(pub Arc<str>);

/// What templates are filled in with, for one request.
#[derive(Debug, Default)]
pub(super) struct Vars {
    pub client_ip: String,
    pub request_id: Option<String>,
    pub host: String,
    pub listener: String,
    pub route: String,
    pub scheme: &'static str,
    pub path: String,
}

impl Vars {
    /// The value of `v` (`server`: the one that answered, if known).
    pub(super) fn value(&self, v: Var, server: Option<&str>) -> String {
        match v {
            Var::ClientIp => self.client_ip.clone(),
            Var::RequestId => self.request_id.clone().unwrap_or_default(),
            Var::Host => self.host.clone(),
            Var::Listener => self.listener.clone(),
            Var::Route => self.route.clone(),
            Var::Server => server.unwrap_or_default().to_string(),
            Var::Scheme => self.scheme.to_string(),
            Var::Path => self.path.clone(),
        }
    }
}

/// A new request id: 128 random bits in hex.
pub(super) fn new_request_id() -> String {
    let a = fastrand_u64();
    let b = fastrand_u64();
    format!("{a:016x}{b:016x}")
}

/// A random 64-bit value (not for secrets: ids only).
fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS once per thread, then each
    // instance differs: enough for unique ids.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(convoy_core::clock::now_ms());
    h.finish()
}

/// Applies field operations to `h`: remove, then set, then add. A value
/// that does not make a valid field (e.g. a control character from a
/// variable) is left out.
pub(super) fn apply(h: &mut HeaderMap, ops: &FieldOps, vars: &Vars, server: Option<&str>) {
    for n in &ops.remove {
        h.remove(n.as_str());
    }
    for (n, t, append) in ops
        .set
        .iter()
        .map(|(n, t)| (n, t, false))
        .chain(ops.add.iter().map(|(n, t)| (n, t, true)))
    {
        let Ok(name) = HeaderName::from_bytes(n.as_bytes()) else {
            continue;
        };
        let Ok(v) = HeaderValue::from_str(&t.render(|v| vars.value(v, server))) else {
            continue;
        };
        if append {
            h.append(name, v);
        } else {
            h.insert(name, v);
        }
    }
}

/// The redirect a route answers with.
pub(super) fn redirect(t: &Template, status: u16, vars: &Vars) -> Response<RespBody> {
    let location = t.render(|v| vars.value(v, None));
    let mut r = Response::new(
        Full::new(Bytes::new())
            .map_err(|never: std::convert::Infallible| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            r.headers_mut().insert(http::header::LOCATION, v);
        }
        Err(_) => *r.status_mut() = StatusCode::BAD_REQUEST,
    }
    r
}

/// The path and query with `w`'s prefix rewritten, if it applies.
pub(super) fn rewritten_path(w: &Rewrite, uri: &http::Uri) -> Option<http::Uri> {
    let (from, to) = w.prefix.as_ref()?;
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let new = convoy_config::rewrite::replace_prefix(pq, from, to)?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(new.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

/// The error pages of a listener, by status, read from their files.
#[derive(Debug, Default)]
pub(super) struct ErrorPages(std::collections::HashMap<u16, (Bytes, &'static str)>);

impl ErrorPages {
    /// Reads the pages of `l`; a page that cannot be read is logged and
    /// left out (convoy's own text is answered instead).
    pub(super) fn load(l: &convoy_config::Listener) -> ErrorPages {
        let mut m = std::collections::HashMap::new();
        for (status, path) in &l.error_pages {
            let Ok(code) = status.parse::<u16>() else {
                continue;
            };
            match std::fs::read(path) {
                Ok(b) => {
                    let ct = match path.extension().and_then(|e| e.to_str()) {
                        Some("html" | "htm") => "text/html; charset=utf-8",
                        Some("json") => "application/json",
                        _ => "text/plain; charset=utf-8",
                    };
                    m.insert(code, (Bytes::from(b), ct));
                }
                Err(e) => {
                    tracing::warn!(event = "error_page_unreadable", listener = %l.name, status = code, file = %path.display(), error = %e);
                }
            }
        }
        ErrorPages(m)
    }

    /// `r` with its body replaced by the page of its status, if convoy
    /// made it and there is one.
    pub(super) fn dress(&self, r: Response<RespBody>) -> Response<RespBody> {
        if self.0.is_empty() || r.extensions().get::<LocalAnswer>().is_none() {
            return r;
        }
        let Some((body, ct)) = self.0.get(&r.status().as_u16()) else {
            return r;
        };
        let (mut parts, _) = r.into_parts();
        parts
            .headers
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
        parts.headers.remove(http::header::CONTENT_LENGTH);
        Response::from_parts(
            parts,
            Full::new(body.clone())
                .map_err(|never: std::convert::Infallible| match never {})
                .boxed_unsync(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars {
            client_ip: "203.0.113.9".into(),
            request_id: Some("abc".into()),
            host: "shop.example".into(),
            listener: "web".into(),
            route: "api".into(),
            scheme: "http",
            path: "/api/x?y=1".into(),
        }
    }

    #[test]
    fn fields_are_removed_set_and_added_with_their_variables() {
        let mut ops = convoy_config::HeaderOps::default();
        ops.remove.push("X-Secret".into());
        ops.set.insert("X-Client".into(), "{client_ip}".into());
        ops.add
            .insert("Via".into(), "convoy {listener}/{route} {server}".into());
        let ops = convoy_config::rewrite::field_ops(&ops).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-secret", HeaderValue::from_static("s"));
        h.insert("x-client", HeaderValue::from_static("spoofed"));
        h.insert("via", HeaderValue::from_static("1.1 other"));
        apply(&mut h, &ops, &vars(), Some("web-1"));
        assert!(h.get("x-secret").is_none());
        assert_eq!(h["x-client"], "203.0.113.9");
        let via: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(via, ["1.1 other", "convoy web/api web-1"]);
    }

    #[test]
    fn redirects_and_prefixes() {
        let t = Template::parse("https://{host}{path}").unwrap();
        let r = redirect(&t, 308, &vars());
        assert_eq!(r.status(), 308);
        assert_eq!(r.headers()["location"], "https://shop.example/api/x?y=1");
        let w = Rewrite {
            prefix: Some(("/api".into(), "".into())),
            ..Rewrite::default()
        };
        let u: http::Uri = "/api/v1/items?a=1".parse().unwrap();
        assert_eq!(rewritten_path(&w, &u).unwrap(), "/v1/items?a=1");
        let abs: http::Uri = "https://h.example/api/x".parse().unwrap();
        assert_eq!(
            rewritten_path(&w, &abs).unwrap().to_string(),
            "https://h.example/x"
        );
        assert!(rewritten_path(&w, &"/other".parse().unwrap()).is_none());
    }

    #[test]
    fn request_ids_differ() {
        let a = new_request_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_request_id());
    }
}
