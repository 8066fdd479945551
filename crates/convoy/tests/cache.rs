//! The response cache end to end: an origin that counts its requests per
//! path and answers with the cache headers each test needs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use convoy_testkit::config::{table, Config, Listener, Pool, Route, Server};
use convoy_testkit::{free_port, Convoy};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

#[derive(Default)]
struct Origin {
    counts: Mutex<HashMap<String, usize>>,
    failing: AtomicBool,
}

impl Origin {
    fn count(&self, path: &str) -> usize {
        self.counts.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

async fn origin() -> (Arc<Origin>, std::net::SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let o = Arc::new(Origin::default());
    let o2 = Arc::clone(&o);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let o = Arc::clone(&o2);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let o = Arc::clone(&o);
                        async move {
                            let path = req.uri().path().to_string();
                            let n = {
                                let mut c = o.counts.lock().unwrap();
                                let e = c.entry(path.clone()).or_default();
                                *e += 1;
                                *e
                            };
                            let mut b = http::Response::builder();
                            if o.failing.load(Ordering::SeqCst) {
                                b = b.status(500);
                                return Ok::<_, Infallible>(
                                    b.body(Full::new(Bytes::from("down"))).unwrap(),
                                );
                            }
                            let inm = req
                                .headers()
                                .get("if-none-match")
                                .map(|v| v.to_str().unwrap().to_string());
                            let body = match path.as_str() {
                                "/max60" => {
                                    b = b
                                        .header("cache-control", "max-age=60")
                                        .header("etag", "\"v1\"");
                                    format!("max60 #{n}")
                                }
                                "/short" => {
                                    b = b
                                        .header("cache-control", "max-age=1")
                                        .header("etag", "\"e1\"");
                                    if inm.as_deref() == Some("\"e1\"") {
                                        b = b.status(304);
                                        return Ok(b.body(Full::new(Bytes::new())).unwrap());
                                    }
                                    format!("short #{n}")
                                }
                                "/vary" => {
                                    let v = req
                                        .headers()
                                        .get("x-variant")
                                        .map(|v| v.to_str().unwrap().to_string())
                                        .unwrap_or_default();
                                    b = b
                                        .header("cache-control", "max-age=60")
                                        .header("vary", "X-Variant");
                                    format!("variant {v} #{n}")
                                }
                                "/nostore" => {
                                    b = b.header("cache-control", "no-store");
                                    format!("nostore #{n}")
                                }
                                "/slow" => {
                                    tokio::time::sleep(Duration::from_millis(300)).await;
                                    b = b.header("cache-control", "max-age=60");
                                    format!("slow #{n}")
                                }
                                "/hot" => {
                                    b = b.header("cache-control", "max-age=2");
                                    format!("hot #{n}")
                                }
                                "/sie" => {
                                    b = b.header("cache-control", "max-age=1, stale-if-error=60");
                                    format!("sie #{n}")
                                }
                                "/odd304" => {
                                    // Any conditional request gets a 304
                                    // naming another version.
                                    b = b.header("cache-control", "max-age=1");
                                    if inm.is_some() {
                                        b = b.status(304).header("etag", "\"other\"");
                                        return Ok(b.body(Full::new(Bytes::new())).unwrap());
                                    }
                                    b = b.header("etag", "\"v1\"");
                                    format!("odd #{n}")
                                }
                                "/ranged" => {
                                    b = b.header("cache-control", "max-age=60");
                                    if req.headers().contains_key("range") {
                                        b = b.status(206).header("content-range", "bytes 0-1/9");
                                        return Ok(b.body(Full::new(Bytes::from("ra"))).unwrap());
                                    }
                                    format!("ranged #{n}")
                                }
                                "/mr" => {
                                    b = b
                                        .header("cache-control", "max-age=1, must-revalidate")
                                        .header("etag", "\"m1\"");
                                    if inm.as_deref() == Some("\"m1\"") {
                                        b = b.status(304);
                                        return Ok(b.body(Full::new(Bytes::new())).unwrap());
                                    }
                                    format!("mr #{n}")
                                }
                                _ => format!("other #{n}"),
                            };
                            Ok(b.body(Full::new(Bytes::from(body))).unwrap())
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (o, addr)
}

async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String, http::HeaderMap) {
    let c: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut b = http::Request::get(format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let r = c.request(b.body(Empty::new()).unwrap()).await.unwrap();
    let st = r.status().as_u16();
    let h = r.headers().clone();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (st, String::from_utf8_lossy(&body).into_owned(), h)
}

fn xcache(h: &http::HeaderMap) -> &str {
    h.get("x-cache").map_or("", |v| v.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_revalidation_variants_coalescing_stale_and_purge() {
    let (o, addr) = origin().await;
    let port = free_port();
    let cfg = Config::new()
        .admin("address", "127.0.0.1:0")
        .listener(
            Listener::http(port, "web")
                .set("name", "web")
                .set("cache", table([("max_bytes", 1_000_000.into())]))
                .route(
                    Route::new("nocache")
                        .set("path", "/other")
                        .set("cache", false),
                )
                .route(Route::new("hot").set("path", "/hot").set("hot", true)),
        )
        .pool(
            Pool::new("web")
                .health([("check", "none".into())])
                .server(Server::new("o", addr)),
        )
        .build();
    let c = Convoy::start(BIN, &cfg).await;

    // Served from the cache: the origin sees one request.
    let (st, body, h) = get(port, "/max60", &[]).await;
    assert_eq!((st, body.as_str(), xcache(&h)), (200, "max60 #1", "MISS"));
    for _ in 0..5 {
        let (_, body, h) = get(port, "/max60", &[]).await;
        assert_eq!((body.as_str(), xcache(&h)), ("max60 #1", "HIT"));
        assert!(h.contains_key("age"));
    }
    assert_eq!(o.count("/max60"), 1);
    // A client's own If-None-Match is answered from the cache.
    let (st, _, _) = get(port, "/max60", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(st, 304);
    assert_eq!(o.count("/max60"), 1);

    // Vary separates variants.
    let (_, a, _) = get(port, "/vary", &[("x-variant", "a")]).await;
    let (_, b, _) = get(port, "/vary", &[("x-variant", "b")]).await;
    let (_, a2, h) = get(port, "/vary", &[("x-variant", "a")]).await;
    assert_eq!((a.as_str(), b.as_str()), ("variant a #1", "variant b #2"));
    assert_eq!((a2.as_str(), xcache(&h)), ("variant a #1", "HIT"));
    assert_eq!(o.count("/vary"), 2);

    // no-store is never stored; a route may bypass the cache.
    for _ in 0..3 {
        get(port, "/nostore", &[]).await;
        get(port, "/other", &[]).await;
    }
    assert_eq!((o.count("/nostore"), o.count("/other")), (3, 3));

    // Expiry and revalidation: after max-age the origin gets a
    // conditional request, answers 304, and the entry is fresh again.
    let (_, body, _) = get(port, "/short", &[]).await;
    assert_eq!(body, "short #1");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (st, body, h) = get(port, "/short", &[]).await;
    assert_eq!(
        (st, body.as_str(), xcache(&h)),
        (200, "short #1", "REVALIDATED")
    );
    assert_eq!(o.count("/short"), 2, "one conditional request");
    let (_, _, h) = get(port, "/short", &[]).await;
    assert_eq!(xcache(&h), "HIT");

    // 100 concurrent misses for one key: one origin request.
    let mut tasks = Vec::new();
    for _ in 0..100 {
        tasks.push(tokio::spawn(get(port, "/slow", &[])));
    }
    for t in tasks {
        let (st, body, _) = t.await.unwrap();
        assert_eq!((st, body.as_str()), (200, "slow #1"));
    }
    assert_eq!(o.count("/slow"), 1, "coalesced into one request");

    // stale-if-error: the origin fails, the stale copy is served.
    get(port, "/sie", &[]).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    o.failing.store(true, Ordering::SeqCst);
    let (st, body, h) = get(port, "/sie", &[]).await;
    assert_eq!((st, body.as_str(), xcache(&h)), (200, "sie #1", "STALE"));
    o.failing.store(false, Ordering::SeqCst);

    // A hot route is refreshed ahead of expiry: in the last quarter of its
    // lifetime a hit triggers a background fetch, and after the original
    // expiry clients still get hits.
    let (_, body, _) = get(port, "/hot", &[]).await;
    assert_eq!(body, "hot #1");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (_, body, h) = get(port, "/hot", &[]).await;
    assert_eq!((body.as_str(), xcache(&h)), ("hot #1", "HIT"));
    let refreshed =
        convoy_testkit::wait_until(Duration::from_secs(2), || o.count("/hot") == 2).await;
    assert!(refreshed, "refreshed in the background");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, body, h) = get(port, "/hot", &[]).await;
    assert_eq!((body.as_str(), xcache(&h)), ("hot #2", "HIT"));

    // Purge through the admin API: the next request goes to the origin.
    let admin = c.admin_addr();
    let out = std::process::Command::new(BIN)
        .args(["ctl", "--admin", &admin, "purge", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, body, h) = get(port, "/max60", &[]).await;
    assert_eq!((body.as_str(), xcache(&h)), ("max60 #2", "MISS"));

    // The counters are in /metrics.
    let m = std::process::Command::new(BIN)
        .args(["ctl", "--admin", &admin, "metrics"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&m.stdout);
    let hits = text
        .lines()
        .find(|l| l.starts_with("convoy_cache_hits_total{listener=\"web\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(hits >= 6, "{text}");
}

fn metric(admin: &str, name: &str) -> u64 {
    let m = std::process::Command::new(BIN)
        .args(["ctl", "--admin", admin, "metrics"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&m.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{listener=\"web\"}}")))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// What the cache must not do: store convoy's own per-client headers,
/// hand a client a 304 it did not ask for, let a Range request knock a
/// copy out, serve past must-revalidate because the client allows
/// staleness, or count a coalesced wait as a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_keeps_to_the_rules() {
    let (o, addr) = origin().await;
    let port = free_port();
    let cfg = Config::new()
        .admin("address", "127.0.0.1:0")
        .listener(
            Listener::http(port, "web")
                .set("name", "web")
                .set("cache", table([("max_bytes", 1_000_000.into())])),
        )
        .pool(
            Pool::new("web")
                .set("sticky_cookie", "lb")
                .health([("check", "none".into())])
                .server(Server::new("o", addr)),
        )
        .build();
    let c = Convoy::start(BIN, &cfg).await;
    let admin = c.admin_addr();
    let mut misses_seen = 0;
    let mut note = |h: &http::HeaderMap| {
        if xcache(h) == "MISS" {
            misses_seen += 1;
        }
    };

    // The first client gets convoy's sticky cookie; the copy stored is the
    // server's response without it, and the next client gets a hit
    // without anyone else's cookie.
    let (_, _, h) = get(port, "/max60", &[]).await;
    note(&h);
    assert!(
        h.contains_key("set-cookie"),
        "sticky cookie for the first client"
    );
    let (_, body, h) = get(port, "/max60", &[]).await;
    note(&h);
    assert_eq!((body.as_str(), xcache(&h)), ("max60 #1", "HIT"));
    assert!(
        !h.contains_key("set-cookie"),
        "no stored sticky cookie: {h:?}"
    );

    // A 304 that does not match the stored copy is not passed on: the
    // client that sent a plain GET gets the full response.
    let (_, body, h) = get(port, "/odd304", &[]).await;
    note(&h);
    assert_eq!(body, "odd #1");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (st, body, h) = get(port, "/odd304", &[]).await;
    note(&h);
    assert_eq!((st, body.as_str()), (200, "odd #3"), "{h:?}");

    // Range requests pass by and leave the stored copy alone.
    let (_, _, h) = get(port, "/ranged", &[]).await;
    note(&h);
    let (st, body, _) = get(port, "/ranged", &[("range", "bytes=0-1")]).await;
    assert_eq!((st, body.as_str()), (206, "ra"));
    let (_, body, h) = get(port, "/ranged", &[]).await;
    note(&h);
    assert_eq!((body.as_str(), xcache(&h)), ("ranged #1", "HIT"));
    assert_eq!(o.count("/ranged"), 2);

    // must-revalidate wins over a client's max-stale.
    let (_, _, h) = get(port, "/mr", &[]).await;
    note(&h);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, body, h) = get(port, "/mr", &[("cache-control", "max-stale=60")]).await;
    note(&h);
    assert_eq!((body.as_str(), xcache(&h)), ("mr #1", "REVALIDATED"));
    assert_eq!(o.count("/mr"), 2);

    // Coalesced waits are hits, not misses: the counter matches what
    // clients saw.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(get(port, "/slow", &[])));
    }
    for t in tasks {
        let (_, _, h) = t.await.unwrap();
        note(&h);
    }
    assert_eq!(o.count("/slow"), 1);
    assert_eq!(metric(&admin, "convoy_cache_misses_total"), misses_seen);
}
