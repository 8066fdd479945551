//! The way to servers: HTTP/1.1 on convoy's own keep-alive pool
//! ([`crate::h1::client`]) and HTTP/2 on hyper's client, in clear or over
//! TLS, with the TLS client settings of each pool built on first use and
//! again when they change.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use convoy_config::UpstreamTls;
use convoy_core::PoolRuntime;
use http::{HeaderValue, Request, Response};
use http_body_util::{Either, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::bodies::{Prefixed, UpResp};
use super::request::Outgoing;

/// Request body to servers: the client's streamed body (its first frame
/// already read and checked), or nothing (a bodiless request sent again to
/// another server).
pub(super) type ReqBody = Either<Prefixed, Either<Full<Bytes>, Empty<Bytes>>>;

/// Why a request to a server got no response head.
#[derive(Debug)]
pub(super) enum UpErr {
    H1(crate::h1::client::SendError),
    H2(hyper_util::client::legacy::Error),
}

impl UpErr {
    /// The connect failed for lack of a resource of this node (file
    /// descriptors, local ports): not the server's fault. Counted.
    pub(super) fn is_local(&self) -> bool {
        match self {
            UpErr::H1(crate::h1::client::SendError::Connect(e)) => {
                convoy_core::local::note(e, "connect to a server")
            }
            UpErr::H1(_) => false,
            UpErr::H2(e) => {
                use std::error::Error as _;
                let mut src = e.source();
                while let Some(s) = src {
                    if let Some(io) = s.downcast_ref::<std::io::Error>() {
                        return convoy_core::local::note(io, "connect to a server");
                    }
                    src = s.source();
                }
                false
            }
        }
    }

    /// The request never reached the server (it may go to another).
    pub(super) fn is_connect(&self) -> bool {
        match self {
            UpErr::H1(e) => e.is_connect(),
            UpErr::H2(e) => e.is_connect(),
        }
    }
}

impl std::fmt::Display for UpErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpErr::H1(e) => e.fmt(f),
            UpErr::H2(e) => e.fmt(f),
        }
    }
}

type Upstream = Client<HttpConnector, ReqBody>;
type TlsUpstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, ReqBody>;

/// A request that cannot be sent: TLS to the pool's servers cannot be set
/// up (its CA file cannot be read, its SNI name is not valid), or the
/// target does not make a URI for HTTP/2.
#[derive(Debug, thiserror::Error)]
pub(super) enum TlsMisconfigured {
    /// `tls` is not set for the pool.
    #[error("the pool has no TLS settings")]
    NoTls,
    /// The pool's `tls.ca`.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The pool's `tls.sni`.
    #[error("tls.sni {0:?}: {1}")]
    Sni(String, rustls::pki_types::InvalidDnsNameError),
    /// The request target.
    #[error("request target: {0}")]
    Target(#[from] http::uri::InvalidUri),
}

/// A request on its way to a server, until its response head.
pub(super) type Sending<'a> =
    Pin<Box<dyn Future<Output = Result<Response<UpResp>, UpErr>> + Send + 'a>>;

/// What one attempt sends: the client's head (already rewritten), the
/// path and query, the Host to add when the head has none, and the
/// forwarding lines.
pub(super) struct Outbound<'a> {
    pub(super) parts: &'a http::request::Parts,
    pub(super) path: &'a str,
    pub(super) host: Option<HeaderValue>,
    pub(super) fwd: &'a Bytes,
}

/// The clients to servers of one listener: HTTP/1.1 on convoy's own
/// keep-alive pool, HTTP/2 (h2c) on hyper's, and each pool's TLS settings
/// built on first use and again when they change.
pub(super) struct Upstreams {
    h1: Arc<crate::h1::client::Pool>,
    h1_tls: Mutex<HashMap<String, (UpstreamTls, Arc<crate::h1::client::TlsTarget>)>>,
    h2: Upstream,
    tls_clients: Mutex<HashMap<(String, bool), (UpstreamTls, TlsUpstream)>>,
    connect_timeout: Duration,
    /// Closes idle connections past their time even when nothing else
    /// happens.
    sweeper: tokio::task::JoinHandle<()>,
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

impl Upstreams {
    /// Clients that connect within `connect_timeout`.
    pub(super) fn new(connect_timeout: Duration) -> Upstreams {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let h2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(UPSTREAM_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .build(http);
        let h1 = crate::h1::client::Pool::new(UPSTREAM_IDLE, 256);
        let sweeper = {
            let h1 = Arc::downgrade(&h1);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let Some(p) = h1.upgrade() else { return };
                    p.sweep(|_| true);
                }
            })
        };
        Upstreams {
            h1,
            h1_tls: Mutex::default(),
            h2,
            tls_clients: Mutex::default(),
            connect_timeout,
            sweeper,
        }
    }

    /// Starts one request to `server` of `pool`: over HTTP/2 when the pool
    /// says so (and the request is no upgrade), HTTP/1.1 otherwise; the
    /// body taken from `body`.
    pub(super) fn send<'a>(
        &self,
        pool: &PoolRuntime,
        server: std::net::SocketAddr,
        req: Outbound<'a>,
        body: Option<Outgoing>,
        upgrade: bool,
    ) -> Result<Sending<'a>, TlsMisconfigured> {
        if pool.cfg.http2 && !upgrade {
            self.send_h2(pool, server, req, body)
        } else {
            self.send_h1(pool, server, req, body)
        }
    }

    fn send_h2<'a>(
        &self,
        pool: &PoolRuntime,
        server: std::net::SocketAddr,
        req: Outbound<'a>,
        body: Option<Outgoing>,
    ) -> Result<Sending<'a>, TlsMisconfigured> {
        let scheme = if pool.cfg.tls.is_some() {
            "https"
        } else {
            "http"
        };
        // The path was checked by the client-side parser: it makes a URI.
        let uri: http::Uri = format!("{scheme}://{server}{}", req.path).parse()?;
        let mut out = Request::from_parts(req.parts.clone(), ());
        *out.uri_mut() = uri;
        crate::headers::append_lines(out.headers_mut(), req.fwd);
        if let Some(h) = req.host {
            out.headers_mut().insert(http::header::HOST, h);
        }
        *out.version_mut() = http::Version::HTTP_2;
        let b = match body {
            Some(Outgoing::Stream(Some(b))) => Either::Left(b),
            Some(Outgoing::Full(b)) => Either::Right(Either::Left(Full::new(b))),
            _ => Either::Right(Either::Right(Empty::new())),
        };
        let out = out.map(|_| b);
        let f = if pool.cfg.tls.is_some() {
            self.tls_client(pool, true)?.request(out)
        } else {
            self.h2.request(out)
        };
        Ok(Box::pin(async move {
            f.await.map(|r| r.map(UpResp::H2)).map_err(UpErr::H2)
        }))
    }

    fn send_h1<'a>(
        &self,
        pool: &PoolRuntime,
        addr: std::net::SocketAddr,
        req: Outbound<'a>,
        body: Option<Outgoing>,
    ) -> Result<Sending<'a>, TlsMisconfigured> {
        let tls = match pool.cfg.tls.is_some() {
            false => None,
            true => Some(self.h1_tls(pool)?),
        };
        let out_body = match body {
            Some(Outgoing::Stream(Some(b))) => crate::h1::client::OutBody::Stream(Box::pin(b)),
            Some(Outgoing::Full(b)) => crate::h1::client::OutBody::Full(b),
            _ => crate::h1::client::OutBody::Empty,
        };
        let connect_timeout = self.connect_timeout;
        let pool_h1 = Arc::clone(&self.h1);
        Ok(Box::pin(async move {
            let t = crate::h1::client::Target {
                addr,
                tls: tls.as_deref(),
                connect_timeout,
            };
            // Written as its own line: the client's fields are not
            // copied to add one.
            let head = crate::h1::client::ReqHead {
                method: &req.parts.method,
                target: req.path,
                host: req.host.as_ref(),
                headers: &req.parts.headers,
                extra: req.fwd,
            };
            pool_h1
                .send(&t, &head, out_body)
                .await
                .map(|r| r.map(UpResp::H1))
                .map_err(UpErr::H1)
        }))
    }

    /// TLS for HTTP/1.1 to `pool`'s servers.
    fn h1_tls(
        &self,
        pool: &PoolRuntime,
    ) -> Result<Arc<crate::h1::client::TlsTarget>, TlsMisconfigured> {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        static IDS: AtomicU64 = AtomicU64::new(1);
        let Some(t) = &pool.cfg.tls else {
            return Err(TlsMisconfigured::NoTls);
        };
        let mut m = self.h1_tls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cfg, target)) = m.get(&pool.name) {
            if cfg == t {
                return Ok(Arc::clone(target));
            }
        }
        let mut config = crate::tls::client_config(t, false)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = match &t.sni {
            Some(n) => Some(
                rustls::pki_types::ServerName::try_from(n.clone())
                    .map_err(|e| TlsMisconfigured::Sni(n.clone(), e))?,
            ),
            None => None,
        };
        let target = Arc::new(crate::h1::client::TlsTarget {
            config: Arc::new(config),
            name,
            id: IDS.fetch_add(1, Relaxed),
        });
        m.insert(pool.name.clone(), (t.clone(), Arc::clone(&target)));
        Ok(target)
    }

    /// The TLS client for `pool`'s servers.
    fn tls_client(&self, pool: &PoolRuntime, h2: bool) -> Result<TlsUpstream, TlsMisconfigured> {
        let Some(t) = &pool.cfg.tls else {
            return Err(TlsMisconfigured::NoTls);
        };
        let key = (pool.name.clone(), h2);
        let mut m = self.tls_clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cfg, c)) = m.get(&key) {
            if cfg == t {
                return Ok(c.clone());
            }
        }
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.enforce_http(false);
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::client_config(t, h2)?)
            .https_only();
        let b = match &t.sni {
            Some(name) => {
                let sn = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|e| TlsMisconfigured::Sni(name.clone(), e))?;
                b.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(sn))
            }
            None => b,
        };
        let conn = if h2 {
            b.enable_http2().wrap_connector(http)
        } else {
            b.enable_http1().wrap_connector(http)
        };
        let c: TlsUpstream = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(UPSTREAM_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(h2)
            .build(conn);
        m.insert(key, (t.clone(), c.clone()));
        Ok(c)
    }
}

/// How long an idle connection to a server is kept for reuse.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pool_whose_tls_cannot_be_set_up_is_refused_before_any_connection() {
        let cfg: convoy_config::Pool = toml::from_str(
            "tls = { ca = \"/nonexistent/convoy-ca.pem\" }\n[[servers]]\naddress = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let p = PoolRuntime::new("secure", &cfg, None);
        let up = Upstreams::new(Duration::from_secs(1));
        let parts = Request::get("/").body(()).unwrap().into_parts().0;
        let fwd = Bytes::new();
        let out = || Outbound {
            parts: &parts,
            path: "/",
            host: None,
            fwd: &fwd,
        };
        let e = up
            .send(&p, "127.0.0.1:1".parse().unwrap(), out(), None, false)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("convoy-ca.pem"), "{e}");
    }
}
