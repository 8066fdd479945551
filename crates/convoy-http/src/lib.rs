//! convoy's HTTP gateway: HTTP/1.1 and HTTP/2 (h2c prior knowledge) from
//! clients, a route picks the pool, the priority class and the request
//! cost, the pool's admission (high-water marks, priority queue) gives the
//! request a slot on one server, and the request is forwarded over a
//! keep-alive connection pool with the forwarding headers set. Bodies stream
//! both ways; the slot is held until the response body ends (or the client
//! goes away) and then handed to the next queued request.
#![forbid(unsafe_code)]

pub mod cache;
pub mod compress;
pub mod h1;
pub mod headers;
pub mod http2;
pub mod proxy;
pub mod route;
mod spare;
pub mod tls;

pub use proxy::serve;
