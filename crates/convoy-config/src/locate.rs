//! Maps between key paths (`listeners[0].address`) and byte offsets in the
//! TOML text, using toml_edit's span-preserving parse. Serde errors come
//! with a span and need a path; validation errors come with a path and need
//! a span.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// The dotted path of the innermost key whose value contains `span`.
pub(crate) fn path_for_span(text: &str, span: &Range<usize>) -> String {
    let Ok(doc) = ImDocument::parse(text.to_string()) else {
        return String::new();
    };
    let mut path = String::new();
    walk_table(doc.as_table(), span.start, &mut path);
    path
}

fn contains(r: &Option<Range<usize>>, at: usize) -> bool {
    r.as_ref()
        .is_some_and(|r| r.start <= at && at < r.end.max(r.start + 1))
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn walk_table(t: &Table, at: usize, path: &mut String) -> bool {
    for (k, item) in t.iter() {
        let key_span = t.key(k).and_then(|key| key.span());
        let hit_key = contains(&key_span, at);
        let len = path.len();
        push_key(path, k);
        if hit_key || walk_item(item, at, path) {
            return true;
        }
        path.truncate(len);
    }
    false
}

fn walk_item(item: &Item, at: usize, path: &mut String) -> bool {
    match item {
        Item::Table(t) => walk_table(t, at, path) || contains(&t.span(), at),
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if walk_table(t, at, path) || contains(&t.span(), at) {
                    return true;
                }
                path.truncate(len);
            }
            false
        }
        Item::Value(v) => walk_value(v, at, path),
        Item::None => false,
    }
}

fn walk_value(v: &Value, at: usize, path: &mut String) -> bool {
    match v {
        Value::InlineTable(t) => {
            for (k, val) in t.iter() {
                let len = path.len();
                push_key(path, k);
                if walk_value(val, at, path) {
                    return true;
                }
                path.truncate(len);
            }
            contains(&v.span(), at)
        }
        Value::Array(a) => {
            for (i, val) in a.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if walk_value(val, at, path) {
                    return true;
                }
                path.truncate(len);
            }
            contains(&v.span(), at)
        }
        _ => contains(&v.span(), at),
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

/// The byte offset where the value at `path` starts; for a missing key, the
/// closest enclosing key or table that exists.
pub(crate) fn span_for_path(text: &str, path: &str) -> usize {
    match ImDocument::parse(text.to_string()) {
        Ok(doc) => resolve_in(doc.as_item(), path).unwrap_or(0),
        Err(_) => 0,
    }
}

fn resolve_in(item: &Item, path: &str) -> Option<usize> {
    let segs = segments(path);
    let mut cur = item;
    let mut best = None;
    for (n, seg) in segs.iter().enumerate() {
        match (seg, cur) {
            (Seg::Key(k), Item::Table(t)) => {
                if let Some(s) = t.key(k).and_then(|key| key.span()) {
                    best = Some(s.start);
                }
                match t.get(k) {
                    Some(next) => cur = next,
                    None => return best,
                }
            }
            (Seg::Index(i), Item::ArrayOfTables(a)) => {
                let t = a.get(*i)?;
                if let Some(s) = t.span() {
                    best = Some(s.start);
                }
                let rest: Vec<String> = segs[n + 1..]
                    .iter()
                    .map(|s| match s {
                        Seg::Key(k) => format!(".{k}"),
                        Seg::Index(i) => format!("[{i}]"),
                    })
                    .collect();
                let rest = rest.concat();
                let rest = rest.trim_start_matches('.');
                if rest.is_empty() {
                    return best;
                }
                return resolve_in(&Item::Table(t.clone()), rest).or(best);
            }
            (Seg::Key(k), Item::Value(Value::InlineTable(t))) => {
                let v = t.get(k)?;
                return v.span().map(|s| s.start).or(best);
            }
            _ => return best,
        }
    }
    if let Item::Value(v) = cur {
        if let Some(s) = v.span() {
            best = Some(s.start);
        }
    }
    best
}
