//! The HTTP/1.1 codec without I/O: request and response heads parsed with
//! `httparse` into `http` types (header values share the read buffer, no
//! copy), message framing decided by RFC 9112 §6 with every ambiguity
//! refused, the chunked decoder, and the heads convoy writes.
//!
//! Refused (the request never reaches a server): differing
//! `Content-Length`s, `Content-Length` with `Transfer-Encoding`, a transfer
//! coding other than `chunked`, `Transfer-Encoding` in HTTP/1.0, bad
//! header names or values (CR, LF, NUL; obs-fold), a missing or repeated
//! `Host` in HTTP/1.1, bad chunk sizes and chunk lines; heads over the
//! size limit or with too many fields get 431.

mod chunked;
mod fields;
mod request;
mod response;
mod write;

pub use chunked::{chunk_head, ChunkError, ChunkedDecoder, Decoded};
pub use fields::{recycle, strip_hop, Span};
pub use request::{parse_request, HeadError, Limits, RequestHead};
pub use response::{parse_response, ResponseError, ResponseHead};
pub use write::{write_dec, write_request_head, ResponseWrite};

/// Most header fields in one head.
pub const MAX_HEADERS: usize = 100;

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Hop-by-hop fields seen in a head (a bit each), so that removing them
/// costs nothing when there are none.
pub mod hop {
    /// `Connection`.
    pub const CONNECTION: u16 = 1;
    /// `Keep-Alive`.
    pub const KEEP_ALIVE: u16 = 2;
    /// `Proxy-Connection`.
    pub const PROXY_CONNECTION: u16 = 4;
    /// `Proxy-Authenticate` / `Proxy-Authorization`.
    pub const PROXY_AUTH: u16 = 8;
    /// `TE`.
    pub const TE: u16 = 16;
    /// `Trailer`.
    pub const TRAILER: u16 = 32;
    /// `Transfer-Encoding`.
    pub const TRANSFER_ENCODING: u16 = 64;
    /// `Upgrade`.
    pub const UPGRADE: u16 = 128;
    /// `Connection` names other fields (they are hop-by-hop too).
    pub const NAMED: u16 = 256;
    /// Every kind above.
    pub const ALL: u16 = 511;
}
