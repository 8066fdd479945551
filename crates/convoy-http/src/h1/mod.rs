//! convoy's own HTTP/1.1, on both sides of the proxy: the codec without
//! I/O ([`parse`]), the client connection loop ([`server`]) and the
//! keep-alive connections to servers ([`client`]). HTTP/2 from clients is
//! [`crate::http2`]; HTTP/2 to servers is hyper's client.
//! Written for the request path's cost: header values share the read
//! buffer, hop-by-hop fields are removed only when present, an idle
//! client connection holds no buffer, and a small response leaves in one
//! write.

pub mod body;
pub mod client;
pub mod parse;
pub mod server;
