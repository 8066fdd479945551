//! The HTTP gateway: the listener and each client connection
//! ([`listener`]), the request path ([`request`], [`fetch`], the cache's
//! part in [`cached`]), the bodies on that path ([`bodies`]), the way to
//! servers ([`upstream`]), convoy's own answers ([`answers`]), rewriting
//! (request id, redirects, prefixes, fields, error pages: [`rewrite`]),
//! the access log line ([`access`]) and the explanation header
//! ([`explain`]).

use std::sync::Arc;
use std::time::Duration;

use convoy_core::context::Context;
use convoy_core::ListenerRuntime;

mod access;
mod answers;
mod bodies;
mod cached;
mod explain;
mod fetch;
mod listener;
mod request;
mod rewrite;
mod upstream;

pub use bodies::{InBody, RespBody, UpResp};
pub use listener::serve;

/// What every connection and request of one HTTP listener shares.
struct Shared {
    ctx: Context,
    listener: Arc<ListenerRuntime>,
    /// The clients to servers.
    up: upstream::Upstreams,
    header_timeout: Duration,
    idle_timeout: Duration,
    compress: Option<crate::compress::Policy>,
    /// The listener's response cache.
    cache: Option<Arc<crate::cache::Cache>>,
    /// Add `X-Cache` to responses.
    cache_header: bool,
    body_timeout: Duration,
    response_timeout: Duration,
    request_timeout: Option<Duration>,
    /// Bodies for convoy's own error answers.
    error_pages: rewrite::ErrorPages,
    /// Where idle HTTP/1.1 connections in clear are parked, and after how
    /// long (`None`: TLS listeners, or `park_after = "0s"`).
    lot: Option<(convoy_l4::park::Lot<listener::Parked>, Duration)>,
}

impl Shared {
    /// From the listener's settings.
    fn new(
        ctx: Context,
        listener: Arc<ListenerRuntime>,
        cache: Option<Arc<crate::cache::Cache>>,
        lot: Option<(convoy_l4::park::Lot<listener::Parked>, Duration)>,
    ) -> Shared {
        let cfg = &listener.cfg;
        Shared {
            up: upstream::Upstreams::new(cfg.connect_timeout.get()),
            header_timeout: cfg.header_timeout().get(),
            compress: cfg.compression.as_ref().map(crate::compress::Policy::new),
            cache_header: cfg.cache.as_ref().is_some_and(|c| c.status_header),
            cache,
            idle_timeout: cfg.idle_timeout().get(),
            body_timeout: cfg.body_timeout().get(),
            response_timeout: cfg.response_timeout().get(),
            request_timeout: cfg.request_timeout.map(|d| d.get()),
            error_pages: rewrite::ErrorPages::load(cfg),
            lot,
            ctx,
            listener,
        }
    }
}
