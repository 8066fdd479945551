//! HPACK (RFC 7541): the header compression of HTTP/2.
//!
//! - [`Decoder`] reads a client's header blocks: indexed fields (static
//!   and dynamic table), literals with and without indexing, Huffman
//!   strings, table size updates. Names and values come out as `http`
//!   types, values of the dynamic table shared (no copy per request once
//!   a client's fields are indexed).
//! - [`Encoder`] writes response heads: `:status` from the static table
//!   where it can, every other field indexed in the dynamic table after
//!   its first use (`set-cookie` never indexed), strings Huffman-coded
//!   when that is shorter.
//!
//! Errors are compression errors: the connection cannot go on (the two
//! tables would disagree).

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};

/// A header block the decoder cannot read: the connection ends with
/// `COMPRESSION_ERROR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("hpack: {0}")]
pub struct HpackError(pub &'static str);

/// A field's name as HTTP/2 sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// A pseudo-header (`:method` …).
    Pseudo(Pseudo),
    /// A regular field with a valid lowercase name.
    Field(HeaderName),
    /// A name no request may carry (uppercase, invalid characters, an
    /// unknown pseudo-header): the request is malformed.
    Bad,
}

/// The pseudo-headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pseudo {
    Method,
    Scheme,
    Authority,
    Path,
    Status,
    Protocol,
}

impl Name {
    fn parse(b: &[u8]) -> Name {
        if let Some(p) = b.strip_prefix(b":") {
            return match p {
                b"method" => Name::Pseudo(Pseudo::Method),
                b"scheme" => Name::Pseudo(Pseudo::Scheme),
                b"authority" => Name::Pseudo(Pseudo::Authority),
                b"path" => Name::Pseudo(Pseudo::Path),
                b"status" => Name::Pseudo(Pseudo::Status),
                b"protocol" => Name::Pseudo(Pseudo::Protocol),
                _ => Name::Bad,
            };
        }
        // `from_lowercase` refuses uppercase, which HTTP/2 forbids.
        HeaderName::from_lowercase(b).map_or(Name::Bad, Name::Field)
    }
}

/// A field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A regular field's value.
    Field(HeaderValue),
    /// A pseudo-header's value (checked by what parses it), or the value
    /// of a bad name.
    Raw(Bytes),
    /// Bytes no field value may have (NUL, CR, LF, other controls): the
    /// request is malformed.
    Bad,
}

fn value(n: &Name, b: Bytes) -> Value {
    match n {
        Name::Field(_) => HeaderValue::from_maybe_shared(b).map_or(Value::Bad, Value::Field),
        _ => Value::Raw(b),
    }
}

impl Value {
    /// The value's bytes (empty for a bad one).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Field(v) => v.as_bytes(),
            Value::Raw(b) => b,
            Value::Bad => b"",
        }
    }
}

const fn f(n: &'static str) -> Name {
    Name::Field(HeaderName::from_static(n))
}

const fn p(x: Pseudo) -> Name {
    Name::Pseudo(x)
}

const fn v(s: &'static str) -> Value {
    Value::Field(HeaderValue::from_static(s))
}

const fn r(s: &'static str) -> Value {
    Value::Raw(Bytes::from_static(s.as_bytes()))
}

/// The static table (RFC 7541 Appendix A), index 1 first.
static STATIC: [(Name, Value, usize); 61] = {
    use Pseudo::*;
    // (name, value, entry size less the 32 bytes of overhead)
    [
        (p(Authority), r(""), 10),
        (p(Method), r("GET"), 10),
        (p(Method), r("POST"), 11),
        (p(Path), r("/"), 6),
        (p(Path), r("/index.html"), 16),
        (p(Scheme), r("http"), 11),
        (p(Scheme), r("https"), 12),
        (p(Status), r("200"), 10),
        (p(Status), r("204"), 10),
        (p(Status), r("206"), 10),
        (p(Status), r("304"), 10),
        (p(Status), r("400"), 10),
        (p(Status), r("404"), 10),
        (p(Status), r("500"), 10),
        (f("accept-charset"), v(""), 14),
        (f("accept-encoding"), v("gzip, deflate"), 28),
        (f("accept-language"), v(""), 15),
        (f("accept-ranges"), v(""), 13),
        (f("accept"), v(""), 6),
        (f("access-control-allow-origin"), v(""), 27),
        (f("age"), v(""), 3),
        (f("allow"), v(""), 5),
        (f("authorization"), v(""), 13),
        (f("cache-control"), v(""), 13),
        (f("content-disposition"), v(""), 19),
        (f("content-encoding"), v(""), 16),
        (f("content-language"), v(""), 16),
        (f("content-length"), v(""), 14),
        (f("content-location"), v(""), 16),
        (f("content-range"), v(""), 13),
        (f("content-type"), v(""), 12),
        (f("cookie"), v(""), 6),
        (f("date"), v(""), 4),
        (f("etag"), v(""), 4),
        (f("expect"), v(""), 6),
        (f("expires"), v(""), 7),
        (f("from"), v(""), 4),
        (f("host"), v(""), 4),
        (f("if-match"), v(""), 8),
        (f("if-modified-since"), v(""), 17),
        (f("if-none-match"), v(""), 13),
        (f("if-range"), v(""), 8),
        (f("if-unmodified-since"), v(""), 19),
        (f("last-modified"), v(""), 13),
        (f("link"), v(""), 4),
        (f("location"), v(""), 8),
        (f("max-forwards"), v(""), 12),
        (f("proxy-authenticate"), v(""), 18),
        (f("proxy-authorization"), v(""), 19),
        (f("range"), v(""), 5),
        (f("referer"), v(""), 7),
        (f("refresh"), v(""), 7),
        (f("retry-after"), v(""), 11),
        (f("server"), v(""), 6),
        (f("set-cookie"), v(""), 10),
        (f("strict-transport-security"), v(""), 25),
        (f("transfer-encoding"), v(""), 17),
        (f("user-agent"), v(""), 10),
        (f("vary"), v(""), 4),
        (f("via"), v(""), 3),
        (f("www-authenticate"), v(""), 16),
    ]
};

/// The static index of a response field's name, if it has one.
fn static_name(n: &HeaderName) -> Option<usize> {
    let i = match n.as_str() {
        "accept-charset" => 15,
        "accept-encoding" => 16,
        "accept-language" => 17,
        "accept-ranges" => 18,
        "accept" => 19,
        "access-control-allow-origin" => 20,
        "age" => 21,
        "allow" => 22,
        "authorization" => 23,
        "cache-control" => 24,
        "content-disposition" => 25,
        "content-encoding" => 26,
        "content-language" => 27,
        "content-length" => 28,
        "content-location" => 29,
        "content-range" => 30,
        "content-type" => 31,
        "cookie" => 32,
        "date" => 33,
        "etag" => 34,
        "expect" => 35,
        "expires" => 36,
        "from" => 37,
        "host" => 38,
        "if-match" => 39,
        "if-modified-since" => 40,
        "if-none-match" => 41,
        "if-range" => 42,
        "if-unmodified-since" => 43,
        "last-modified" => 44,
        "link" => 45,
        "location" => 46,
        "max-forwards" => 47,
        "proxy-authenticate" => 48,
        "proxy-authorization" => 49,
        "range" => 50,
        "referer" => 51,
        "refresh" => 52,
        "retry-after" => 53,
        "server" => 54,
        "set-cookie" => 55,
        "strict-transport-security" => 56,
        "transfer-encoding" => 57,
        "user-agent" => 58,
        "vary" => 59,
        "via" => 60,
        "www-authenticate" => 61,
        _ => return None,
    };
    Some(i)
}

// ---- Huffman code (RFC 7541 Appendix B) ----

/// Code length of every symbol, 0–255 and EOS (256). The code is
/// canonical: codes are assigned in order of (length, symbol), so the
/// lengths are all the table needs.
const HUFF_LEN: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

/// The canonical code, derived from the lengths at compile time.
struct Huff {
    /// Code of each symbol (right-aligned, `HUFF_LEN` bits).
    code: [u32; 257],
    /// Symbols in code order.
    sym: [u16; 257],
    /// Per length: first code, number of codes, first index in `sym`.
    first: [u32; 31],
    count: [u32; 31],
    start: [u32; 31],
}

const HUFF: Huff = {
    let mut h = Huff {
        code: [0; 257],
        sym: [0; 257],
        first: [0; 31],
        count: [0; 31],
        start: [0; 31],
    };
    let mut s = 0;
    while s < 257 {
        h.count[HUFF_LEN[s] as usize] += 1;
        s += 1;
    }
    let mut code = 0u32;
    let mut idx = 0u32;
    let mut l = 1;
    while l <= 30 {
        h.first[l] = code;
        h.start[l] = idx;
        let mut s = 0;
        while s < 257 {
            if HUFF_LEN[s] as usize == l {
                h.code[s] = code;
                h.sym[idx as usize] = s as u16;
                code += 1;
                idx += 1;
            }
            s += 1;
        }
        code <<= 1;
        l += 1;
    }
    h
};

/// Decodes a Huffman string.
fn huff_decode(src: &[u8], dst: &mut BytesMut) -> Result<(), HpackError> {
    const BAD: HpackError = HpackError("invalid Huffman string");
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &b in src {
        acc = (acc << 8) | u64::from(b);
        bits += 8;
        'sym: while bits >= 5 {
            let mut l = 5;
            while l <= bits.min(30) {
                let c = ((acc >> (bits - l)) & ((1 << l) - 1)) as u32;
                let li = l as usize;
                if c < HUFF.first[li] + HUFF.count[li] {
                    let s = HUFF.sym[(HUFF.start[li] + c - HUFF.first[li]) as usize];
                    if s == 256 {
                        return Err(BAD);
                    }
                    dst.put_u8(s as u8);
                    bits -= l;
                    continue 'sym;
                }
                l += 1;
            }
            if bits >= 30 {
                return Err(BAD);
            }
            break;
        }
    }
    // What is left is padding: fewer than 8 bits, all ones.
    if bits >= 8 || (acc & ((1 << bits) - 1)) != (1 << bits) - 1 {
        return Err(BAD);
    }
    Ok(())
}

fn huff_len(src: &[u8]) -> usize {
    let bits: usize = src.iter().map(|&b| usize::from(HUFF_LEN[b as usize])).sum();
    bits.div_ceil(8)
}

fn huff_encode(src: &[u8], dst: &mut Vec<u8>) {
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &b in src {
        let l = u32::from(HUFF_LEN[b as usize]);
        acc = (acc << l) | u64::from(HUFF.code[b as usize]);
        bits += l;
        while bits >= 8 {
            bits -= 8;
            dst.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        // Padding with the most significant bits of EOS (all ones).
        dst.push(((acc << (8 - bits)) as u8) | ((1u8 << (8 - bits)) - 1));
    }
}

// ---- integers and strings ----

/// Reads an integer with an `n`-bit prefix (RFC 7541 §5.1).
fn int(src: &[u8], pos: &mut usize, n: u32) -> Result<usize, HpackError> {
    const SHORT: HpackError = HpackError("truncated integer");
    let mask = (1usize << n) - 1;
    let first = *src.get(*pos).ok_or(SHORT)?;
    *pos += 1;
    let mut v = usize::from(first) & mask;
    if v < mask {
        return Ok(v);
    }
    let mut shift = 0;
    loop {
        let b = *src.get(*pos).ok_or(SHORT)?;
        *pos += 1;
        // Nothing in a header block needs more than 28 bits.
        if shift > 21 {
            return Err(HpackError("integer too large"));
        }
        v += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
}

fn put_int(dst: &mut Vec<u8>, flags: u8, n: u32, mut v: usize) {
    let mask = (1usize << n) - 1;
    if v < mask {
        dst.push(flags | v as u8);
        return;
    }
    dst.push(flags | mask as u8);
    v -= mask;
    while v >= 0x80 {
        dst.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    dst.push(v as u8);
}

/// Reads a string literal: a slice of the block, or its Huffman decoding.
fn string(block: &Bytes, pos: &mut usize) -> Result<Bytes, HpackError> {
    let huff = block.get(*pos).ok_or(HpackError("truncated string"))? & 0x80 != 0;
    let len = int(block, pos, 7)?;
    let end = pos
        .checked_add(len)
        .filter(|&e| e <= block.len())
        .ok_or(HpackError("truncated string"))?;
    let raw = &block[*pos..end];
    let out = if huff {
        let mut d = BytesMut::with_capacity(len + len / 2);
        huff_decode(raw, &mut d)?;
        d.freeze()
    } else {
        block.slice(*pos..end)
    };
    *pos = end;
    Ok(out)
}

fn put_string(dst: &mut Vec<u8>, s: &[u8]) {
    let h = huff_len(s);
    if h < s.len() {
        put_int(dst, 0x80, 7, h);
        huff_encode(s, dst);
    } else {
        put_int(dst, 0, 7, s.len());
        dst.extend_from_slice(s);
    }
}

// ---- the dynamic table ----

#[derive(Debug, Default)]
struct Table<N, V> {
    /// Newest first.
    entries: VecDeque<(N, V, usize)>,
    size: usize,
    max: usize,
}

impl<N, V> Table<N, V> {
    fn new(max: usize) -> Self {
        Table {
            entries: VecDeque::new(),
            size: 0,
            max,
        }
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            match self.entries.pop_back() {
                Some((_, _, s)) => self.size -= s,
                None => break,
            }
        }
    }

    fn resize(&mut self, max: usize) {
        self.max = max;
        self.evict_to(max);
    }

    /// `size` counts name and value lengths plus 32.
    fn insert(&mut self, n: N, v: V, size: usize) {
        if size > self.max {
            // Too large for the table: it empties (RFC 7541 §4.4).
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max - size);
        self.entries.push_front((n, v, size));
        self.size += size;
    }
}

/// A client's header blocks to fields.
#[derive(Debug)]
pub struct Decoder {
    /// Per entry: the name and its length.
    table: Table<(Name, usize), Value>,
    /// The largest table size the client may ask for (our
    /// SETTINGS_HEADER_TABLE_SIZE).
    limit: usize,
}

impl Decoder {
    /// A decoder whose table may grow to `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Decoder {
            table: Table::new(limit),
            limit,
        }
    }

    /// Decodes one whole header block, calling `out` with each field and
    /// its size (name + value + 32, as SETTINGS_MAX_HEADER_LIST_SIZE
    /// counts).
    pub fn decode(
        &mut self,
        block: &Bytes,
        mut out: impl FnMut(&Name, Value, usize),
    ) -> Result<(), HpackError> {
        let mut pos = 0;
        let mut first = true;
        while pos < block.len() {
            let b = block[pos];
            if b & 0x80 != 0 {
                let i = int(block, &mut pos, 7)?;
                let (n, v, size, _) = self.get(i)?;
                out(&n, v, size);
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update: only at the start of a block.
                if !first {
                    return Err(HpackError("table size update after a field"));
                }
                let max = int(block, &mut pos, 5)?;
                if max > self.limit {
                    return Err(HpackError("table size above the limit"));
                }
                self.table.resize(max);
                continue;
            } else {
                // A literal: with incremental indexing (01), without
                // (0000) or never indexed (0001).
                let (prefix, index) = if b & 0x40 != 0 { (6, true) } else { (4, false) };
                let i = int(block, &mut pos, prefix)?;
                let (name, name_len) = if i == 0 {
                    let s = string(block, &mut pos)?;
                    (Name::parse(&s), s.len())
                } else {
                    let (n, _, _, len) = self.get(i)?;
                    (n, len)
                };
                let mut s = string(block, &mut pos)?;
                let size = name_len + s.len() + 32;
                if index {
                    // Kept for the connection's life: its own bytes, not
                    // a slice pinning the frame it came in.
                    s = Bytes::copy_from_slice(&s);
                }
                let val = value(&name, s);
                if index {
                    self.table
                        .insert((name.clone(), name_len), val.clone(), size);
                }
                out(&name, val, size);
            }
            first = false;
        }
        Ok(())
    }

    /// Field `i` (1-based) of the static then the dynamic table: name,
    /// value, entry size, name length.
    fn get(&self, i: usize) -> Result<(Name, Value, usize, usize), HpackError> {
        if i == 0 {
            return Err(HpackError("index 0"));
        }
        if let Some((n, v, s)) = STATIC.get(i - 1) {
            return Ok((n.clone(), v.clone(), s + 32, s - v.as_bytes().len()));
        }
        let ((n, len), v, size) = self
            .table
            .entries
            .get(i - STATIC.len() - 1)
            .ok_or(HpackError("index past the table"))?;
        Ok((n.clone(), v.clone(), *size, *len))
    }
}

/// Response heads to header blocks.
#[derive(Debug)]
pub struct Encoder {
    table: Table<HeaderName, HeaderValue>,
    /// A size the client set that the next block must announce.
    update: Option<usize>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            table: Table::new(4096),
            update: None,
        }
    }
}

/// Values longer than this are not worth a table entry.
const MAX_INDEXED: usize = 512;

impl Encoder {
    /// The client's SETTINGS_HEADER_TABLE_SIZE (we use at most 4096).
    pub fn set_max(&mut self, max: usize) {
        let max = max.min(4096);
        if max != self.table.max {
            self.table.resize(max);
            self.update = Some(max);
        }
    }

    /// Starts a block with `:status`.
    pub fn status(&mut self, status: u16, dst: &mut Vec<u8>) {
        if let Some(max) = self.update.take() {
            put_int(dst, 0x20, 5, max);
        }
        let i = match status {
            200 => 8,
            204 => 9,
            206 => 10,
            304 => 11,
            400 => 12,
            404 => 13,
            500 => 14,
            _ => 0,
        };
        if i != 0 {
            dst.push(0x80 | i);
            return;
        }
        // Literal without indexing, name `:status` (index 8).
        put_int(dst, 0, 4, 8);
        put_string(dst, &itoa_3(status));
    }

    /// Starts a block of trailers (no `:status`).
    pub fn begin(&mut self, dst: &mut Vec<u8>) {
        if let Some(max) = self.update.take() {
            put_int(dst, 0x20, 5, max);
        }
    }

    /// One field.
    pub fn field(&mut self, n: &HeaderName, v: &HeaderValue, dst: &mut Vec<u8>) {
        if let Some(i) = self
            .table
            .entries
            .iter()
            .position(|(tn, tv, _)| tv == v && tn == n)
        {
            put_int(dst, 0x80, 7, STATIC.len() + 1 + i);
            return;
        }
        let size = n.as_str().len() + v.len() + 32;
        let sensitive = v.is_sensitive() || *n == http::header::SET_COOKIE;
        let (flags, prefix, index) = if sensitive {
            (0x10, 4, false)
        } else if v.len() > MAX_INDEXED || size > self.table.max {
            (0x00, 4, false)
        } else {
            (0x40, 6, true)
        };
        match static_name(n) {
            Some(i) => put_int(dst, flags, prefix, i),
            None => {
                dst.push(flags);
                put_string(dst, n.as_str().as_bytes());
            }
        }
        put_string(dst, v.as_bytes());
        if index {
            self.table.insert(n.clone(), v.clone(), size);
        }
    }
}

fn itoa_3(s: u16) -> [u8; 3] {
    let s = s.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    fn fields(d: &mut Decoder, block: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        d.decode(&hex(block), |n, v, _| {
            let n = match n {
                Name::Pseudo(p) => format!(":{}", format!("{p:?}").to_lowercase()),
                Name::Field(h) => h.to_string(),
                Name::Bad => "?".into(),
            };
            out.push((n, String::from_utf8(v.as_bytes().to_vec()).unwrap()));
        })
        .unwrap();
        out
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn huffman_code_is_the_rfc_one() {
        // Codes from RFC 7541 Appendix B.
        assert_eq!(
            (HUFF.code[b'0' as usize], HUFF_LEN[b'0' as usize]),
            (0x0, 5)
        );
        assert_eq!(
            (HUFF.code[b'a' as usize], HUFF_LEN[b'a' as usize]),
            (0x3, 5)
        );
        assert_eq!(
            (HUFF.code[b' ' as usize], HUFF_LEN[b' ' as usize]),
            (0x14, 6)
        );
        assert_eq!((HUFF.code[0], HUFF_LEN[0]), (0x1ff8, 13));
        assert_eq!((HUFF.code[255], HUFF_LEN[255]), (0x3ffffee, 26));
        assert_eq!(HUFF.code[256], 0x3fff_ffff);
        // Every byte string survives encode then decode.
        let all: Vec<u8> = (0..=255u8).chain(b"hello, world".iter().copied()).collect();
        let mut enc = Vec::new();
        huff_encode(&all, &mut enc);
        assert_eq!(enc.len(), huff_len(&all));
        let mut dec = BytesMut::new();
        huff_decode(&enc, &mut dec).unwrap();
        assert_eq!(&dec[..], &all[..]);
    }

    #[test]
    fn bad_huffman_padding_and_eos_are_refused() {
        let mut d = BytesMut::new();
        // "a" (00011) padded with zeros instead of ones.
        assert!(huff_decode(&[0b0001_1000], &mut d).is_err());
        // A whole byte of padding.
        assert!(huff_decode(&[0b0001_1111, 0xff], &mut d).is_err());
        // EOS itself (30 ones) inside the string.
        assert!(huff_decode(&[0xff, 0xff, 0xff, 0xfc], &mut d).is_err());
        d.clear();
        huff_decode(&[0b0001_1111], &mut d).unwrap();
        assert_eq!(&d[..], b"a");
    }

    #[test]
    fn rfc_7541_request_examples() {
        // C.3: without Huffman, one connection.
        let mut d = Decoder::new(4096);
        let first = pairs(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ]);
        assert_eq!(
            fields(&mut d, "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
            first
        );
        assert_eq!(d.table.size, 57);
        let mut second = first.clone();
        second.push(("cache-control".into(), "no-cache".into()));
        assert_eq!(fields(&mut d, "8286 84be 5808 6e6f 2d63 6163 6865"), second);
        assert_eq!(d.table.size, 110);
        let third = pairs(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ]);
        assert_eq!(
            fields(
                &mut d,
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"
            ),
            third
        );
        assert_eq!(d.table.size, 164);
        // C.4: the same with Huffman.
        let mut d = Decoder::new(4096);
        assert_eq!(
            fields(&mut d, "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
            first
        );
        assert_eq!(fields(&mut d, "8286 84be 5886 a8eb 1064 9cbf"), second);
        assert_eq!(
            fields(
                &mut d,
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"
            ),
            third
        );
        assert_eq!(d.table.size, 164);
    }

    #[test]
    fn bad_blocks_are_compression_errors() {
        let mut d = Decoder::new(4096);
        for block in [
            "80",                // index 0
            "be",                // index 62 of an empty dynamic table
            "ff",                // truncated integer
            "ff ff ff ff ff 7f", // integer too large
            "41 8a 6161",        // string past the end
            "82 3f e1 1f",       // size update after a field
            "3f e2 1f",          // size update above the limit
        ] {
            assert!(d.decode(&hex(block), |_, _, _| {}).is_err(), "{block}");
        }
    }

    #[test]
    fn malformed_names_and_values_are_marked_not_refused() {
        let mut d = Decoder::new(4096);
        let mut seen = Vec::new();
        // Literal with indexing: name "X-A" (uppercase), value "1";
        // then ":foo: 1"; then "x: a\nb".
        let block = hex("40 03 582d41 01 31  40 04 3a666f6f 01 31  40 01 78 03 610a62  be bf");
        d.decode(&block, |n, v, _| seen.push((n.clone(), v != Value::Bad)))
            .unwrap();
        assert_eq!(seen[0], (Name::Bad, true));
        assert_eq!(seen[1], (Name::Bad, true));
        assert!(!seen[2].1);
        // Indexed again from the table: still bad.
        assert!(!seen[3].1);
        assert_eq!(seen[4], (Name::Bad, true));
    }

    #[test]
    fn encoder_output_decodes_and_indexes_repeats() {
        let mut e = Encoder::default();
        let mut d = Decoder::new(4096);
        let head = [
            ("content-type", "text/plain"),
            ("server", "nginx"),
            ("x-custom", "Value With Spaces"),
            ("set-cookie", "id=1"),
        ];
        let mut sizes = Vec::new();
        for status in [200u16, 503, 200] {
            let mut buf = Vec::new();
            e.status(status, &mut buf);
            for (n, v) in head {
                e.field(
                    &HeaderName::from_static(n),
                    &HeaderValue::from_static(v),
                    &mut buf,
                );
            }
            sizes.push(buf.len());
            let mut got = Vec::new();
            d.decode(&Bytes::from(buf), |n, v, _| {
                got.push((n.clone(), v));
            })
            .unwrap();
            assert_eq!(got[0].0, Name::Pseudo(Pseudo::Status));
            assert_eq!(got[0].1.as_bytes(), status.to_string().as_bytes());
            for (i, (n, v)) in head.iter().enumerate() {
                assert_eq!(got[i + 1].0, Name::Field(HeaderName::from_static(n)));
                assert_eq!(got[i + 1].1.as_bytes(), v.as_bytes());
            }
        }
        // Once indexed, a field costs a byte (set-cookie stays literal).
        assert!(sizes[2] < 12, "{sizes:?}");
        assert!(sizes[2] < sizes[0] / 3, "{sizes:?}");
        // A smaller table announced by the client is announced back.
        e.set_max(0);
        let mut buf = Vec::new();
        e.status(200, &mut buf);
        assert_eq!(buf, [0x20, 0x88]);
        d.decode(&Bytes::from(buf), |_, _, _| {}).unwrap();
        assert_eq!(d.table.size, 0);
    }
}
