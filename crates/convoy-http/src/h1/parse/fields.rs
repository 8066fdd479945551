//! Header helpers shared by request and response heads: the spans of
//! the fields httparse found, the field map built from them (values share
//! the head's bytes), what the framing and hop-by-hop fields say, and the
//! removal of hop-by-hop fields.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::{hop, MAX_HEADERS};
use crate::headers::Noted;

/// What the framing fields of a head said.
#[derive(Default)]
pub(super) struct Fields {
    pub(super) length: Option<u64>,
    pub(super) lengths_differ: bool,
    pub(super) bad_length: bool,
    /// Transfer codings listed, and whether the last is chunked.
    pub(super) te_tokens: u32,
    pub(super) te_chunked: bool,
    pub(super) close: bool,
    pub(super) keep_alive: bool,
    pub(super) hosts: u32,
    pub(super) expect_continue: bool,
    pub(super) hop: u16,
    /// An `X-Forwarded-*` field, and `X-Convoy-Explain`, are there.
    pub(super) forwarding: bool,
    pub(super) explain: bool,
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Parses a decimal `Content-Length` (digits only, no sign, no overflow).
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

impl Fields {
    /// Notes one `Content-Length` value.
    fn length_of(&mut self, n: u64) {
        match self.length {
            Some(m) if m != n => self.lengths_differ = true,
            _ => self.length = Some(n),
        }
    }

    /// Notes one field; `name` is already the `http` name. `true`: a
    /// hop-by-hop field (RFC 9110 §7.6.1).
    fn note(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        if *name == header::CONTENT_LENGTH {
            // Nearly always one plain number; else a list of equal values
            // is one length (RFC 9110 §8.6).
            if let Some(n) = parse_length(value) {
                self.length_of(n);
            } else {
                for part in value.split(|&b| b == b',') {
                    match parse_length(trim(part)) {
                        Some(n) => self.length_of(n),
                        None => self.bad_length = true,
                    }
                }
            }
            return false;
        } else if *name == header::TRANSFER_ENCODING {
            self.hop |= hop::TRANSFER_ENCODING;
            for part in value.split(|&b| b == b',') {
                let t = trim(part);
                if !t.is_empty() {
                    self.te_tokens += 1;
                    self.te_chunked = t.eq_ignore_ascii_case(b"chunked");
                }
            }
            if self.te_tokens == 0 {
                // An empty Transfer-Encoding is still one that is there.
                self.te_tokens = u32::MAX / 2;
            }
        } else if *name == header::CONNECTION {
            self.hop |= hop::CONNECTION;
            // Nearly always one of these two alone.
            if value.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
                return true;
            }
            if value.eq_ignore_ascii_case(b"close") {
                self.close = true;
                return true;
            }
            for part in value.split(|&b| b == b',') {
                let t = trim(part);
                if t.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    // Upgrade itself is marked below.
                } else if !t.is_empty() {
                    self.hop |= hop::NAMED;
                }
            }
        } else if *name == header::HOST {
            self.hosts += 1;
            return false;
        } else if *name == header::EXPECT {
            if trim(value).eq_ignore_ascii_case(b"100-continue") {
                self.expect_continue = true;
            }
            return false;
        } else if *name == header::UPGRADE {
            self.hop |= hop::UPGRADE;
        } else if *name == header::TE {
            self.hop |= hop::TE;
        } else if *name == header::TRAILER {
            self.hop |= hop::TRAILER;
        } else if *name == header::PROXY_AUTHENTICATE || *name == header::PROXY_AUTHORIZATION {
            self.hop |= hop::PROXY_AUTH;
        } else if name.as_str() == "keep-alive" {
            self.hop |= hop::KEEP_ALIVE;
        } else if name.as_str() == "proxy-connection" {
            self.hop |= hop::PROXY_CONNECTION;
        } else {
            match crate::headers::noted(name.as_str()) {
                Some(Noted::Forwarding) => self.forwarding = true,
                Some(Noted::Explain) => self.explain = true,
                None => {}
            }
            return false;
        }
        true
    }
}

/// Offsets of one field in the head.
#[derive(Clone, Copy, Default)]
pub struct Span {
    pub(super) name: (usize, usize),
    pub(super) value: (usize, usize),
}

thread_local! {
    /// Field offsets of the head being parsed (kept to avoid a fresh
    /// array per head).
    static SPANS: std::cell::Cell<Vec<Span>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` with the thread's span scratch vector, emptied.
pub(super) fn with_spans<R>(f: impl FnOnce(&mut Vec<Span>) -> R) -> R {
    let mut v = SPANS.with(std::cell::Cell::take);
    v.clear();
    let r = f(&mut v);
    SPANS.with(|c| c.set(v));
    r
}

/// Uninitialized room for httparse's fields (no zeroing per head).
pub(super) fn raw_headers<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

pub(super) fn span_of(base: &[u8], part: &[u8]) -> (usize, usize) {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    (start, start + part.len())
}

/// Builds the field map from spans into the frozen head, noting framing
/// fields on the way.
///
/// Hop-by-hop fields (RFC 9110 §7.6.1), and the fields their `Connection`
/// names, are left out of the map when `strip(f)` says so once the whole
/// head is read (a request that asks for no upgrade, a response other
/// than 101): they would be removed before the message goes on, and most
/// heads carry one (`Connection: keep-alive`). Otherwise they are kept,
/// after the other fields.
pub(super) fn fields(
    head: &Bytes,
    spans: &[Span],
    f: &mut Fields,
    room: usize,
    strip: impl FnOnce(&Fields) -> bool,
) -> Result<HeaderMap, &'static str> {
    let mut map = take_map(spans.len() + room);
    // Spans of the hop-by-hop fields, a bit each (at most MAX_HEADERS).
    let mut held: u128 = 0;
    for (i, s) in spans.iter().enumerate() {
        let name =
            HeaderName::from_bytes(&head[s.name.0..s.name.1]).map_err(|_| "invalid header name")?;
        let bytes = &head[s.value.0..s.value.1];
        if f.note(&name, bytes) {
            if !bytes.iter().all(|&b| valid_value_byte(b)) {
                return Err("invalid header value");
            }
            held |= 1 << i;
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(s.value.0..s.value.1))
            .map_err(|_| "invalid header value")?;
        map.append(name, value);
    }
    if held != 0 {
        hop_fields(head, spans, held, f, strip(f), &mut map)?;
    }
    Ok(map)
}

const _: () = assert!(MAX_HEADERS <= 128, "hop-by-hop spans are bits of a u128");

/// The byte rule of `http`'s `HeaderValue` (visible ASCII, space, tab,
/// obs-text), for values checked without being built.
fn valid_value_byte(b: u8) -> bool {
    (b >= 0x20 && b != 0x7f) || b == b'\t'
}

/// The hop-by-hop fields of a head (`held`, by span index): put in the map
/// (`!strip`), or left out with the fields their `Connection` names.
#[cold]
fn hop_fields(
    head: &Bytes,
    spans: &[Span],
    held: u128,
    f: &Fields,
    strip: bool,
    map: &mut HeaderMap,
) -> Result<(), &'static str> {
    let held = spans
        .iter()
        .enumerate()
        .filter(|&(i, _)| held & (1 << i) != 0)
        .map(|(_, s)| s);
    if !strip {
        for s in held {
            let name = HeaderName::from_bytes(&head[s.name.0..s.name.1])
                .map_err(|_| "invalid header name")?;
            let value = HeaderValue::from_maybe_shared(head.slice(s.value.0..s.value.1))
                .map_err(|_| "invalid header value")?;
            map.append(name, value);
        }
    } else if f.hop & hop::NAMED != 0 {
        for s in held {
            if !head[s.name.0..s.name.1].eq_ignore_ascii_case(b"connection") {
                continue;
            }
            for n in head[s.value.0..s.value.1].split(|&b| b == b',') {
                // Host is end to end whatever Connection says (see
                // `strip_hop`).
                if let Ok(n) = HeaderName::from_bytes(trim(n)) {
                    if n != header::HOST {
                        map.remove(n);
                    }
                }
            }
        }
    }
    Ok(())
}

thread_local! {
    /// Field maps of finished messages, emptied, for the next heads (a
    /// fresh map costs two allocations and their frees per head).
    static MAPS: std::cell::RefCell<Vec<HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Most maps kept per thread, and the largest and smallest kept (in
/// fields): a map too small for a usual head would only be grown again.
const MAPS_KEPT: usize = 64;
const MAP_KEPT_CAPACITY: usize = 64;
const MAP_MIN_CAPACITY: usize = 12;

/// A map for at least `n` fields: a recycled one, or a new one.
fn take_map(n: usize) -> HeaderMap {
    match MAPS.with(|m| m.borrow_mut().pop()) {
        Some(mut map) => {
            map.reserve(n);
            map
        }
        None => HeaderMap::with_capacity(n),
    }
}

/// Gives a message's field map back once the message is written, for
/// the next head parsed on this thread (emptied; a large one is dropped).
pub fn recycle(mut map: HeaderMap) {
    if !(MAP_MIN_CAPACITY..=MAP_KEPT_CAPACITY).contains(&map.capacity()) {
        return;
    }
    map.clear();
    MAPS.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() < MAPS_KEPT {
            m.push(map);
        }
    });
}

/// Removes the hop-by-hop fields noted in `mask` (RFC 9110 §7.6.1),
/// including those named by `Connection`. Costs nothing for `mask == 0`.
pub fn strip_hop(h: &mut HeaderMap, mask: u16) {
    if mask == 0 {
        return;
    }
    if mask & hop::NAMED != 0 {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            // Host is end to end whatever Connection says: routing read
            // it, and the server must get the same (RFC 9110 §7.6.1 lets
            // no client turn it into a hop-by-hop field).
            .filter(|n| n != header::HOST)
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    if mask & hop::CONNECTION != 0 {
        h.remove(header::CONNECTION);
    }
    if mask & hop::KEEP_ALIVE != 0 {
        h.remove("keep-alive");
    }
    if mask & hop::PROXY_CONNECTION != 0 {
        h.remove("proxy-connection");
    }
    if mask & hop::PROXY_AUTH != 0 {
        h.remove(header::PROXY_AUTHENTICATE);
        h.remove(header::PROXY_AUTHORIZATION);
    }
    if mask & hop::TE != 0 {
        h.remove(header::TE);
    }
    if mask & hop::TRAILER != 0 {
        h.remove(header::TRAILER);
    }
    if mask & hop::TRANSFER_ENCODING != 0 {
        h.remove(header::TRANSFER_ENCODING);
    }
    if mask & hop::UPGRADE != 0 {
        h.remove(header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Maps kept for the next heads: one of a usual size is, one too
    /// small to hold a usual head (it would be grown again) or too large
    /// to keep is not.
    #[test]
    fn only_maps_of_a_usual_size_are_kept() {
        let kept = || MAPS.with(|m| m.borrow().len());
        let before = kept();
        let mut small = HeaderMap::new();
        small.insert("a", HeaderValue::from_static("1"));
        assert!(small.capacity() < MAP_MIN_CAPACITY);
        recycle(small);
        recycle(HeaderMap::with_capacity(4 * MAP_KEPT_CAPACITY));
        assert_eq!(kept(), before);
        recycle(HeaderMap::with_capacity(MAP_MIN_CAPACITY));
        assert_eq!(kept(), before + 1);
    }
}
