//! An HTTP origin for tests that counts its own concurrency: each request
//! waits `delay` (or `?sleep_ms=N`), then answers with the origin's name.
//! It records the peak number of requests in flight, every request's path
//! in arrival order, and echoes the forwarding headers it received as
//! `x-seen-*` response headers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What an origin saw.
#[derive(Default)]
pub struct Seen {
    /// Requests in flight now.
    pub now: AtomicUsize,
    /// Peak requests in flight.
    pub peak: AtomicUsize,
    /// Requests served.
    pub count: AtomicUsize,
    /// Paths in arrival order.
    pub paths: Mutex<Vec<String>>,
    /// Status to answer with (0 = 200).
    pub status: std::sync::atomic::AtomicU16,
}

/// A running origin.
pub struct HttpOrigin {
    /// Its name (the response body).
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    /// What it saw.
    pub seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl HttpOrigin {
    /// Starts on a free loopback port; each request takes `delay`.
    pub async fn start(name: &str, delay: Duration) -> HttpOrigin {
        Self::start_on(name, delay, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on `addr` (e.g. the address of an origin that was stopped).
    pub async fn start_on(name: &str, delay: Duration, addr: SocketAddr) -> HttpOrigin {
        let l = TcpListener::bind(addr).await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let (s2, n2) = (Arc::clone(&seen), name.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else {
                    continue;
                };
                let (s3, n3) = (Arc::clone(&s2), n2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |mut req: Request<hyper::body::Incoming>| {
                            let (s, n) = (Arc::clone(&s3), n3.clone());
                            async move {
                                if req.headers().contains_key("upgrade") {
                                    // Upgrade: answer 101 and echo raw bytes.
                                    let up = hyper::upgrade::on(&mut req);
                                    tokio::spawn(async move {
                                        if let Ok(io) = up.await {
                                            let mut io = TokioIo::new(io);
                                            let mut buf = [0u8; 4096];
                                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                                            while let Ok(k) = io.read(&mut buf).await {
                                                if k == 0 || io.write_all(&buf[..k]).await.is_err()
                                                {
                                                    break;
                                                }
                                            }
                                        }
                                    });
                                    let mut r =
                                        Response::new(Either::Left(Full::new(Bytes::new())));
                                    *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                                    r.headers_mut().insert(
                                        "connection",
                                        http::HeaderValue::from_static("upgrade"),
                                    );
                                    r.headers_mut()
                                        .insert("upgrade", req.headers()["upgrade"].clone());
                                    return Ok::<_, Infallible>(r);
                                }
                                let cur = s.now.fetch_add(1, Ordering::SeqCst) + 1;
                                s.peak.fetch_max(cur, Ordering::SeqCst);
                                s.paths.lock().unwrap().push(req.uri().path().to_string());
                                let sleep = req
                                    .uri()
                                    .query()
                                    .and_then(|q| q.strip_prefix("sleep_ms="))
                                    .and_then(|v| v.parse().ok())
                                    .map(Duration::from_millis)
                                    .unwrap_or(delay);
                                tokio::time::sleep(sleep).await;
                                // /text/N and /png/N: N bytes of text or of
                                // "image", for compression and caching tests.
                                let path = req.uri().path().to_string();
                                for (prefix, ct) in [
                                    ("/text/", "text/plain; charset=utf-8"),
                                    ("/png/", "image/png"),
                                ] {
                                    if let Some(n) = path
                                        .strip_prefix(prefix)
                                        .and_then(|n| n.parse::<usize>().ok())
                                    {
                                        let body: Vec<u8> = (0..n)
                                            .map(|i| b"convoy text body line\n"[i % 22])
                                            .collect();
                                        s.count.fetch_add(1, Ordering::SeqCst);
                                        s.now.fetch_sub(1, Ordering::SeqCst);
                                        let mut r = Response::new(Either::Left(Full::new(
                                            Bytes::from(body),
                                        )));
                                        r.headers_mut().insert(
                                            "content-type",
                                            http::HeaderValue::from_static(ct),
                                        );
                                        r.headers_mut().insert(
                                            "etag",
                                            http::HeaderValue::from_static("\"body-v1\""),
                                        );
                                        return Ok::<_, Infallible>(r);
                                    }
                                }
                                if req.uri().path() == "/echo" {
                                    // Streams the request body straight back.
                                    s.count.fetch_add(1, Ordering::SeqCst);
                                    s.now.fetch_sub(1, Ordering::SeqCst);
                                    return Ok::<_, Infallible>(Response::new(Either::Right(
                                        req.into_body(),
                                    )));
                                }
                                let mut r = Response::new(Either::Left(Full::new(Bytes::from(n))));
                                let st = s.status.load(Ordering::SeqCst);
                                if st != 0 {
                                    *r.status_mut() = hyper::StatusCode::from_u16(st).unwrap();
                                }
                                for h in [
                                    "x-forwarded-for",
                                    "x-forwarded-proto",
                                    "x-forwarded-host",
                                    "forwarded",
                                    "via",
                                    "connection",
                                    "x-hop",
                                    "host",
                                    "x-client",
                                    "x-secret",
                                    "x-request-id",
                                ] {
                                    if let Some(v) = req.headers().get(h) {
                                        r.headers_mut().insert(
                                            http::HeaderName::from_bytes(
                                                format!("x-seen-{h}").as_bytes(),
                                            )
                                            .unwrap(),
                                            v.clone(),
                                        );
                                    }
                                }
                                r.headers_mut().insert(
                                    "x-seen-version",
                                    http::HeaderValue::from_static(match req.version() {
                                        http::Version::HTTP_2 => "2",
                                        http::Version::HTTP_10 => "1.0",
                                        _ => "1.1",
                                    }),
                                );
                                s.count.fetch_add(1, Ordering::SeqCst);
                                s.now.fetch_sub(1, Ordering::SeqCst);
                                Ok::<_, Infallible>(r)
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        HttpOrigin {
            name: name.to_string(),
            addr,
            seen,
            task,
        }
    }

    /// Stops accepting and waits until the socket is closed.
    pub async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for HttpOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}
