//! HTTP rewriting, compiled: the field operations of a listener and its
//! routes (`request_headers`, `response_headers`), a route's redirect and
//! path prefix rewrite, as typed values with their templates parsed once.
//! Validation calls the same parsers, so what `convoy check` accepts is
//! exactly what runs.

use crate::{HeaderOps, Listener, Route};

/// A value that may hold variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(pub Vec<Piece>);

/// A piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text as written.
    Text(String),
    /// A variable, filled in per request.
    Var(Var),
}

/// The variables a template may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    /// The client's address (without port).
    ClientIp,
    /// The request id (`request_id`), empty without one.
    RequestId,
    /// The request's host (without port).
    Host,
    /// The listener's name.
    Listener,
    /// The route's name ("default" when none matched).
    Route,
    /// The server that answered (responses only).
    Server,
    /// "http" or "https".
    Scheme,
    /// The path and query as received.
    Path,
}

impl Var {
    fn of(name: &str) -> Option<Var> {
        Some(match name {
            "client_ip" => Var::ClientIp,
            "request_id" => Var::RequestId,
            "host" => Var::Host,
            "listener" => Var::Listener,
            "route" => Var::Route,
            "server" => Var::Server,
            "scheme" => Var::Scheme,
            "path" => Var::Path,
            _ => return None,
        })
    }
}

/// The variables, as written, for error messages.
pub const VARS: &str =
    "{client_ip}, {request_id}, {host}, {listener}, {route}, {server}, {scheme}, {path}";

impl Template {
    /// Parses `s`: `{name}` is a variable, `{{` and `}}` are braces.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut out = Vec::new();
        let mut text = String::new();
        let mut it = s.chars().peekable();
        while let Some(c) = it.next() {
            match c {
                '{' if it.peek() == Some(&'{') => {
                    it.next();
                    text.push('{');
                }
                '}' if it.peek() == Some(&'}') => {
                    it.next();
                    text.push('}');
                }
                '{' => {
                    let name: String = it.by_ref().take_while(|c| *c != '}').collect();
                    let v = Var::of(&name)
                        .ok_or_else(|| format!("unknown variable {{{name}}} (known: {VARS})"))?;
                    if !text.is_empty() {
                        out.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    out.push(Piece::Var(v));
                }
                '}' => return Err("a lone '}' (write '}}' for a brace)".into()),
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            out.push(Piece::Text(text));
        }
        Ok(Template(out))
    }

    /// Whether it uses `v`.
    pub fn uses(&self, v: Var) -> bool {
        self.0.contains(&Piece::Var(v))
    }

    /// Fills it in with `value` of each variable.
    pub fn render(&self, value: impl Fn(Var) -> String) -> String {
        let mut s = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => s.push_str(t),
                Piece::Var(v) => s.push_str(&value(*v)),
            }
        }
        s
    }
}

/// Field operations, in order: remove, set, add.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldOps {
    /// Names removed (lower-case).
    pub remove: Vec<String>,
    /// Names set, with their values.
    pub set: Vec<(String, Template)>,
    /// Names added, with their values.
    pub add: Vec<(String, Template)>,
}

impl FieldOps {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    fn extend(&mut self, o: &FieldOps) {
        self.remove.extend(o.remove.iter().cloned());
        self.set.extend(o.set.iter().cloned());
        self.add.extend(o.add.iter().cloned());
    }
}

/// Whether `n` is a field name (RFC 9110 token).
pub fn field_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Compiles `ops`; every mistake, as (key under `ops`, reason).
pub fn field_ops(ops: &HeaderOps) -> Result<FieldOps, Vec<(String, String)>> {
    let mut errs = Vec::new();
    let mut out = FieldOps::default();
    for n in &ops.remove {
        if field_name(n) {
            out.remove.push(n.to_ascii_lowercase());
        } else {
            errs.push(("remove".to_string(), format!("{n:?} is not a field name")));
        }
    }
    for (kind, map) in [("set", &ops.set), ("add", &ops.add)] {
        for (n, v) in map {
            if !field_name(n) {
                errs.push((format!("{kind}.{n}"), format!("{n:?} is not a field name")));
                continue;
            }
            if v.bytes().any(|b| b < b' ' && b != b'\t' || b == 0x7f) {
                errs.push((
                    format!("{kind}.{n}"),
                    "a field value holds no control characters".into(),
                ));
                continue;
            }
            match Template::parse(v) {
                Ok(t) if kind == "set" => out.set.push((n.to_ascii_lowercase(), t)),
                Ok(t) => out.add.push((n.to_ascii_lowercase(), t)),
                Err(e) => errs.push((format!("{kind}.{n}"), e)),
            }
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

/// What a route (or the listener, for requests no route matched) rewrites.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// On the request, before it goes to a server.
    pub request: FieldOps,
    /// On the response.
    pub response: FieldOps,
    /// Answer with this redirect: the `Location` template and the status.
    pub redirect: Option<(Template, u16)>,
    /// Replace this path prefix with that one.
    pub prefix: Option<(String, String)>,
}

impl Rewrite {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.request.is_empty()
            && self.response.is_empty()
            && self.redirect.is_none()
            && self.prefix.is_none()
    }
}

/// The listener's own rewriting (for every request), or `None`.
pub fn of_listener(l: &Listener) -> Rewrite {
    Rewrite {
        request: field_ops(&l.request_headers).unwrap_or_default(),
        response: field_ops(&l.response_headers).unwrap_or_default(),
        redirect: None,
        prefix: None,
    }
}

/// A route's rewriting: the listener's field operations, then its own.
pub fn of_route(l: &Listener, r: &Route) -> Rewrite {
    let mut w = of_listener(l);
    w.request
        .extend(&field_ops(&r.request_headers).unwrap_or_default());
    w.response
        .extend(&field_ops(&r.response_headers).unwrap_or_default());
    w.redirect = r
        .redirect
        .as_ref()
        .and_then(|d| Template::parse(&d.to).ok().map(|t| (t, d.status)));
    w.prefix = match (&r.path_prefix, &r.rewrite_prefix) {
        (Some(p), Some(to)) => Some((p.clone(), to.clone())),
        _ => None,
    };
    w
}

/// Replaces `prefix` at the start of `path_and_query` with `to` (a path
/// left empty becomes "/").
pub fn replace_prefix(path_and_query: &str, prefix: &str, to: &str) -> Option<String> {
    let rest = path_and_query.strip_prefix(prefix)?;
    let mut s = format!("{to}{rest}");
    if !s.starts_with('/') {
        s.insert(0, '/');
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = Template::parse("https://{host}{path}").unwrap();
        assert_eq!(
            t.render(|v| match v {
                Var::Host => "a.example".into(),
                Var::Path => "/x?y=1".into(),
                _ => String::new(),
            }),
            "https://a.example/x?y=1"
        );
        assert!(t.uses(Var::Host) && !t.uses(Var::Server));
        assert_eq!(
            Template::parse("{{literal}}")
                .unwrap()
                .render(|_| String::new()),
            "{literal}"
        );
        assert!(Template::parse("{nope}")
            .unwrap_err()
            .contains("unknown variable {nope}"));
        assert!(Template::parse("a}b").is_err());
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            replace_prefix("/api/v1/x?q", "/api", "").as_deref(),
            Some("/v1/x?q")
        );
        assert_eq!(replace_prefix("/api", "/api", "").as_deref(), Some("/"));
        assert_eq!(
            replace_prefix("/old/a", "/old/", "/new/").as_deref(),
            Some("/new/a")
        );
        assert_eq!(replace_prefix("/other", "/api", ""), None);
    }

    #[test]
    fn field_ops_report_every_mistake() {
        let mut ops = HeaderOps::default();
        ops.set.insert("X-Good".into(), "{client_ip}".into());
        ops.set.insert("Bad Name".into(), "v".into());
        ops.add.insert("X-Var".into(), "{nope}".into());
        ops.remove.push("X Bad".into());
        let e = field_ops(&ops).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        ops.set.remove("Bad Name");
        ops.add.clear();
        ops.remove.clear();
        let ok = field_ops(&ops).unwrap();
        assert_eq!(ok.set[0].0, "x-good");
    }
}
