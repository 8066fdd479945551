//! End-to-end tests of the HTTP gateway: a real convoy process, origins
//! that count their own concurrency, a hyper client and curl.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use convoy_testkit::config::{table, Config, Listener, Pool, Route, Server};
use convoy_testkit::http::HttpOrigin;
use convoy_testkit::{free_port, wait_until, Convoy};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Reply {
    status: u16,
    body: String,
    headers: http::HeaderMap,
}

async fn get(c: &TestClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = http::Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = c
        .request(b.body(Empty::new()).unwrap())
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        headers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_with_headers_and_weighted_round_robin() {
    let a = HttpOrigin::start("a", Duration::ZERO).await;
    let b = HttpOrigin::start("b", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(
            Pool::new("web")
                .server(Server::from_origin(&a).set("weight", 1))
                .server(Server::from_origin(&b).set("weight", 3)),
        )
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/hello");
    let r = get(
        &c,
        &url,
        &[
            ("host", "shop.example"),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-seen-x-forwarded-for"], "127.0.0.1");
    assert_eq!(r.headers["x-seen-x-forwarded-proto"], "http");
    assert_eq!(r.headers["x-seen-x-forwarded-host"], "shop.example");
    assert_eq!(
        r.headers["x-seen-forwarded"],
        "for=127.0.0.1;proto=http;host=shop.example"
    );
    assert_eq!(r.headers["x-seen-via"], "1.1 convoy");
    assert_eq!(r.headers["x-seen-host"], "shop.example");
    assert!(
        !r.headers.contains_key("x-seen-x-hop"),
        "a header named in Connection must not reach the server"
    );
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let r = get(&c, &url, &[]).await;
        assert_eq!(r.status, 200);
        *counts.entry(r.body).or_default() += 1;
    }
    // Smooth WRR is exact per cycle of 4 requests.
    assert_eq!((counts["a"], counts["b"]), (100, 300), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_water_mark_queues_and_origins_never_exceed_it() {
    let a = HttpOrigin::start("a", Duration::from_millis(40)).await;
    let b = HttpOrigin::start("b", Duration::from_millis(40)).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(
            Pool::new("web")
                .set("max_in_flight", 2)
                .set("algorithm", "least_outstanding")
                .origins(&[&a, &b]),
        )
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { get(&c, &url, &[]).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    for o in [&a, &b] {
        let peak = o.seen.peak.load(Ordering::SeqCst);
        assert!(peak <= 2, "{} saw {peak} requests at once", o.name);
    }
    assert_eq!(
        a.seen.count.load(Ordering::SeqCst) + b.seen.count.load(Ordering::SeqCst),
        50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_class_queued_later_is_served_first_and_timeouts_get_503() {
    let o = HttpOrigin::start("o", Duration::from_millis(10)).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(
            Listener::http(port, "web")
                .route(
                    Route::unnamed()
                        .set("path_prefix", "/vip")
                        .set("priority", 0),
                )
                .route(
                    Route::unnamed()
                        .set("path_prefix", "/bulk")
                        .set("priority", 7),
                ),
        )
        .pool(
            Pool::new("web")
                .set("max_in_flight", 1)
                .set("queue_timeout", "3s")
                .set("queue_aging", "0s")
                .origins(&[&o]),
        )
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let c = client();
    let base = format!("http://127.0.0.1:{port}");
    // Occupy the only slot for a while.
    let hold = {
        let (c, u) = (c.clone(), format!("{base}/hold?sleep_ms=600"));
        tokio::spawn(async move { get(&c, &u, &[]).await.status })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let low = {
        let (c, u) = (c.clone(), format!("{base}/bulk"));
        tokio::spawn(async move { get(&c, &u, &[]).await.status })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let high = {
        let (c, u) = (c.clone(), format!("{base}/vip"));
        tokio::spawn(async move { get(&c, &u, &[]).await.status })
    };
    assert_eq!(hold.await.unwrap(), 200);
    assert_eq!(low.await.unwrap(), 200);
    assert_eq!(high.await.unwrap(), 200);
    let paths = o.seen.paths.lock().unwrap().clone();
    assert_eq!(
        paths,
        ["/hold", "/vip", "/bulk"],
        "the higher class queued later goes first"
    );

    // Queue timeout: hold the slot longer than queue_timeout.
    let hold = {
        let (c, u) = (c.clone(), format!("{base}/hold?sleep_ms=4000"));
        tokio::spawn(async move { get(&c, &u, &[]).await.status })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = get(&c, &format!("{base}/late"), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "3");
    assert_eq!(hold.await.unwrap(), 200);
    assert!(!o.seen.paths.lock().unwrap().contains(&"/late".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_origin_costs_no_failed_get() {
    let a = HttpOrigin::start("a", Duration::ZERO).await;
    let mut b = HttpOrigin::start("b", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(Pool::new("web").origins(&[&a, &b]))
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    b.stop().await;
    for _ in 0..100 {
        let r = get(&c, &url, &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "a"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_with_curl() {
    assert!(convoy_testkit::have("curl"), "curl is needed");
    let a = HttpOrigin::start("a", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(Pool::new("web").origins(&[&a]))
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-w",
            " %{http_version}",
            &format!("http://127.0.0.1:{port}/h2"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a 2");
}

/// HTTP/2 clients of other makers than the tests' own (hyper's): curl
/// sends a 5 MB body through the client-side windows and gets it back
/// byte for byte, also with `Expect: 100-continue`; h2load runs 3000
/// requests as 80 concurrent streams on 4 connections, all answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_curl_and_h2load_upload_and_multiplex() {
    assert!(convoy_testkit::have("curl"), "curl is needed");
    assert!(
        convoy_testkit::have("h2load"),
        "h2load (nghttp2-client) is needed"
    );
    let a = HttpOrigin::start("a", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(Pool::new("web").origins(&[&a]))
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let dir = convoy_testkit::temp_dir("h2-upload");
    let up = dir.join("up.bin");
    let down = dir.join("down.bin");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let data: Vec<u8> = (0..5_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&up, &data).unwrap();
    for expect in ["Expect:", "Expect: 100-continue"] {
        let _ = std::fs::remove_file(&down);
        let out = tokio::process::Command::new("curl")
            .args([
                "-s",
                "--http2-prior-knowledge",
                "-H",
                expect,
                "--data-binary",
            ])
            .arg(format!("@{}", up.display()))
            .arg("-o")
            .arg(&down)
            .args(["-w", "%{http_code} %{http_version}"])
            .arg(format!("http://127.0.0.1:{port}/echo"))
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2", "{expect}");
        let back = std::fs::read(&down).unwrap();
        assert_eq!(back.len(), data.len(), "{expect}");
        assert!(back == data, "{expect}: the body came back changed");
    }
    let out = tokio::process::Command::new("h2load")
        .args(["-n", "3000", "-c", "4", "-m", "20", "-t", "1"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 3000 2xx"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_requests_avoid_the_server_busy_with_media() {
    let a = HttpOrigin::start("a", Duration::ZERO).await;
    let b = HttpOrigin::start("b", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(
            Listener::http(port, "web").route(
                Route::new("media")
                    .set("path_prefix", "/media/")
                    .set("cost", 10),
            ),
        )
        .pool(
            Pool::new("web")
                .set("algorithm", "least_outstanding")
                .origins(&[&a, &b]),
        )
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let c = client();
    let base = format!("http://127.0.0.1:{port}");
    for round in 0..5 {
        // A long media request occupies one server (cost 10)...
        let busy = {
            let (c, u) = (c.clone(), format!("{base}/media/long-{round}?sleep_ms=400"));
            tokio::spawn(async move { get(&c, &u, &[]).await.body })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ...while several cheap requests are in flight on the other one.
        let cheap: Vec<_> = (0..3)
            .map(|_| {
                let (c, u) = (c.clone(), format!("{base}/page?sleep_ms=300"));
                tokio::spawn(async move { get(&c, &u, &[]).await.body })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A new media request counts cost, not requests: it avoids the
        // server busy with media even though the other has more requests.
        let next = get(&c, &format!("{base}/media/next-{round}"), &[])
            .await
            .body;
        let busy_server = busy.await.unwrap();
        assert_ne!(next, busy_server, "round {round}");
        for t in cheap {
            t.await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_sends_a_slow_server_little_and_cuts_the_tail() {
    let mut origins = Vec::new();
    for (i, ms) in [5u64, 5, 5, 50].iter().enumerate() {
        origins.push(HttpOrigin::start(&format!("o{i}"), Duration::from_millis(*ms)).await);
    }
    let refs: Vec<&HttpOrigin> = origins.iter().collect();
    let (p_rr, p_qos) = (free_port(), free_port());
    let cfg = Config::new()
        .listener(Listener::http(p_rr, "rr").set("name", "rr"))
        .listener(Listener::http(p_qos, "qos").set("name", "qos"))
        .pool(
            Pool::new("rr")
                .set("algorithm", "round_robin")
                .origins(&refs),
        )
        .pool(Pool::new("qos").set("algorithm", "qos").origins(&refs))
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let c = client();
    // The same bounded load on each: 8 concurrent clients, 5 warm-up
    // batches (qos must first measure the servers), then 800 requests.
    async fn run(c: &TestClient, port: u16) -> (Vec<Duration>, HashMap<String, usize>) {
        let url = format!("http://127.0.0.1:{port}/");
        for _ in 0..5 {
            let w: Vec<_> = (0..8)
                .map(|_| {
                    let (c, u) = (c.clone(), url.clone());
                    tokio::spawn(async move { get(&c, &u, &[]).await.status })
                })
                .collect();
            for t in w {
                t.await.unwrap();
            }
        }
        let mut lat = Vec::new();
        let mut by = HashMap::new();
        for _ in 0..100 {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let (c, u) = (c.clone(), url.clone());
                    tokio::spawn(async move {
                        let t = tokio::time::Instant::now();
                        let r = get(&c, &u, &[]).await;
                        (t.elapsed(), r.body)
                    })
                })
                .collect();
            for t in tasks {
                let (d, who) = t.await.unwrap();
                lat.push(d);
                *by.entry(who).or_insert(0) += 1;
            }
        }
        lat.sort();
        (lat, by)
    }
    let (rr_lat, rr_by) = run(&c, p_rr).await;
    let (q_lat, q_by) = run(&c, p_qos).await;
    let p99 = |v: &Vec<Duration>| v[v.len() * 99 / 100];
    let slow_share = q_by.get("o3").copied().unwrap_or(0) as f64 / 800.0;
    assert!(
        slow_share < 0.05,
        "qos gave the slow server {slow_share} ({q_by:?})"
    );
    assert_eq!(
        rr_by.get("o3"),
        Some(&200),
        "round robin gives it a quarter: {rr_by:?}"
    );
    // The tail: round robin sends a quarter of the requests to the slow
    // server, so its p90 is the slow server's latency; qos sends it
    // under 5%, so its p90 is a fast server's. (The p99 depends on
    // whether that share is under 1%, which on a loaded test machine it
    // need not be: bench/quality.sh measures the p99 against HAProxy.)
    let p90 = |v: &Vec<Duration>| v[v.len() * 90 / 100];
    assert!(
        p90(&q_lat) * 2 < p90(&rr_lat),
        "qos p90 {:?} vs round robin p90 {:?} (p99 {:?} vs {:?})",
        p90(&q_lat),
        p90(&rr_lat),
        p99(&q_lat),
        p99(&rr_lat)
    );
}

/// Sends raw bytes and returns the status code of the reply (0 if the
/// connection closed without one).
async fn raw(port: u16, bytes: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_rejected_and_never_reach_the_server() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(Pool::new("web").origins(&[&o]))
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("two CL", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(), 400),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  folded\r\n\r\n".to_vec(), 400),
        ("bad header name", b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n".to_vec(), 400),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(), 400),
        ("huge headers", huge.into_bytes(), 431),
    ];
    let mut report = Vec::new();
    for (name, bytes, want) in &cases {
        let got = raw(port, bytes).await;
        report.push(format!("{name}: got {got}, want {want}"));
    }
    let seen = o.seen.count.load(Ordering::SeqCst);
    let wrong: Vec<_> = report
        .iter()
        .filter(|r| {
            let mut p = r.rsplitn(2, "want ");
            let want = p.next().unwrap();
            !r.contains(&format!("got {want},"))
        })
        .collect();
    assert!(
        wrong.is_empty() && seen == 0,
        "origin saw {seen} requests; {report:#?}"
    );

    // Content-Length with Transfer-Encoding: ambiguous framing, the
    // classic request-smuggling vector. Refused with 400 (RFC 9112 §6.3
    // allows it) and the connection closes: nothing reaches the origin,
    // neither the request nor the bytes behind it.
    let smuggle = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(port, smuggle).await, 400);
    // A transfer coding convoy does not decode: 501; an HTTP/1.1 request
    // without Host: 400; CONNECT is not proxied: 405.
    assert_eq!(
        raw(
            port,
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"
        )
        .await,
        501
    );
    assert_eq!(raw(port, b"GET / HTTP/1.1\r\n\r\n").await, 400);
    assert_eq!(
        raw(port, b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n").await,
        405
    );
    let paths = o.seen.paths.lock().unwrap().clone();
    assert!(paths.is_empty(), "nothing reaches the origin: {paths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_server_is_ejected_and_returns() {
    let a = HttpOrigin::start("a", Duration::ZERO).await;
    let b = HttpOrigin::start("b", Duration::ZERO).await;
    let bad = HttpOrigin::start("bad", Duration::ZERO).await;
    bad.seen.status.store(500, Ordering::SeqCst);
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(
            Pool::new("web")
                .set(
                    "outlier",
                    table([("consecutive", 3.into()), ("base_ejection", "1s".into())]),
                )
                .origins(&[&a, &b, &bad]),
        )
        .build();
    let c_node = Convoy::start(BIN, &cfg).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    let mut errors = 0;
    for _ in 0..12 {
        if get(&c, &url, &[]).await.status == 500 {
            errors += 1;
        }
    }
    assert_eq!(
        errors,
        3,
        "three 5xx in a row eject the server: {}",
        c_node.stderr()
    );
    assert!(
        c_node
            .wait_event("server_ejected", Duration::from_secs(2))
            .await
    );
    // Explain says why, and for how long.
    let out = std::process::Command::new(BIN)
        .args([
            "ctl",
            "--admin",
            &c_node.admin_addr(),
            "--json",
            "explain",
            "web",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ejected as an outlier (consecutive 5xx) for "),
        "{text}"
    );
    for _ in 0..60 {
        assert_eq!(get(&c, &url, &[]).await.status, 200);
    }
    // Healed: after the ejection time it takes requests again.
    bad.seen.status.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = bad.seen.count.load(Ordering::SeqCst);
    for _ in 0..30 {
        assert_eq!(get(&c, &url, &[]).await.status, 200);
    }
    assert!(bad.seen.count.load(Ordering::SeqCst) >= before + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_one_gets_traffic_only_when_tier_zero_is_saturated() {
    let p1 = HttpOrigin::start("primary-1", Duration::ZERO).await;
    let p2 = HttpOrigin::start("primary-2", Duration::ZERO).await;
    let m = HttpOrigin::start("mirror", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(
            Pool::new("web")
                .set("max_in_flight", 2)
                .server(Server::from_origin(&p1).set("tier", 0))
                .server(Server::from_origin(&p2).set("tier", 0))
                .server(Server::from_origin(&m).set("tier", 1)),
        )
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let c = client();
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..40 {
        assert_ne!(get(&c, &format!("{base}/"), &[]).await.body, "mirror");
    }
    assert_eq!(m.seen.count.load(Ordering::SeqCst), 0);
    // Fill tier 0 (2 servers × 2 slots), then one more request.
    let hold: Vec<_> = (0..4)
        .map(|_| {
            let (c, u) = (c.clone(), format!("{base}/hold?sleep_ms=500"));
            tokio::spawn(async move { get(&c, &u, &[]).await.body })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(get(&c, &format!("{base}/spill"), &[]).await.body, "mirror");
    for h in hold {
        assert_ne!(h.await.unwrap(), "mirror");
    }
}

/// A request body of `left` pseudo-random bytes in 64 KiB frames, with a
/// running checksum of what it produced.
struct Gen {
    left: usize,
    state: u64,
    sum: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl http_body::Body for Gen {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(64 * 1024);
        let mut v = Vec::with_capacity(n);
        let mut x = self.state;
        while v.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes()[..(n - v.len()).min(8)]);
        }
        self.state = x;
        self.left -= n;
        let h = fold(self.sum.load(Ordering::Relaxed), &v);
        self.sum.store(h, Ordering::Relaxed);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(v)))))
    }
}

fn fold(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_100_mb_up_and_down() {
    stream_100_mb(false).await;
}

/// The same over HTTP/2 (prior knowledge): flow control both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_100_mb_up_and_down_over_http2() {
    stream_100_mb(true).await;
}

async fn stream_100_mb(h2: bool) {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(Pool::new("web").origins(&[&o]))
        .build();
    let node = Convoy::start(BIN, &cfg).await;
    let c: Client<_, Gen> = Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0xcbf2_9ce4_8422_2325));
    let size = 100 * 1024 * 1024;
    let body = Gen {
        left: size,
        state: 0x1234_5678_9abc_def1,
        sum: std::sync::Arc::clone(&sent),
    };
    let req = http::Request::post(format!("http://127.0.0.1:{port}/echo"))
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(60), c.request(req))
        .await
        .unwrap();
    let resp = resp.unwrap_or_else(|e| panic!("{e:?}\n{}", node.stderr()));
    assert_eq!(resp.status(), 200);
    let want = if h2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    assert_eq!(resp.version(), want);
    let mut body = resp.into_body();
    let mut got = 0usize;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            got += d.len();
            h = fold(h, &d);
        }
    }
    assert_eq!(got, size);
    assert_eq!(h, sent.load(Ordering::Relaxed), "echoed bytes differ");
    // Streamed, not buffered: convoy's memory stays far below 100 MB.
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{}/status", node.pid()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        rss_kb < 60 * 1024,
        "convoy peak RSS {rss_kb} KB: bodies must stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_http_check_takes_a_server_out_and_back() {
    let a = HttpOrigin::start("a", Duration::ZERO).await;
    let b = HttpOrigin::start("b", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(
            Pool::new("web")
                .set("outlier", table([("consecutive", 0.into())]))
                .set("slow_start", "0s")
                .health([
                    ("check", "http".into()),
                    ("path", "/health".into()),
                    ("expect_status", 200.into()),
                    ("interval", "100ms".into()),
                    ("rise", 2.into()),
                    ("fall", 2.into()),
                ])
                .origins(&[&a, &b]),
        )
        .build();
    let node = Convoy::start(BIN, &cfg).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    b.seen.status.store(503, Ordering::SeqCst);
    assert!(node.wait_event("server_down", Duration::from_secs(5)).await);
    let ev = &node.events("server_down")[0];
    assert_eq!(ev["server"], "b");
    assert!(
        ev["detail"].as_str().unwrap().contains("status 503"),
        "{ev}"
    );
    for _ in 0..20 {
        assert_eq!(get(&c, &url, &[]).await.body, "a");
    }
    b.seen.status.store(0, Ordering::SeqCst);
    assert!(node.wait_event("server_up", Duration::from_secs(5)).await);
    let mut saw_b = false;
    for _ in 0..20 {
        saw_b |= get(&c, &url, &[]).await.body == "b";
    }
    assert!(saw_b, "b takes requests again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_is_relayed_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(Pool::new("web").set("max_in_flight", 5).origins(&[&o]))
        .build();
    let c = Convoy::start(BIN, &cfg).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "closed before the 101");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [
        &b"hello"[..],
        &[0u8, 255, 13, 10, 7][..],
        &vec![42u8; 100_000][..],
    ] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    // The tunnel's bytes count on the server, while it is open.
    let sent = (5 + 5 + 100_000) as u64;
    let counted = wait_until(Duration::from_secs(3), || {
        let o = std::process::Command::new(BIN)
            .args(["ctl", "--admin", &c.admin_addr(), "--json", "query"])
            .output()
            .unwrap();
        let q: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let s = &q["pools"][0]["zones"][0]["servers"][0];
        s["bytes_in"].as_u64().unwrap_or(0) >= sent && s["bytes_out"].as_u64().unwrap_or(0) >= sent
    })
    .await;
    assert!(
        counted,
        "the upgraded connection's bytes are counted on the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_stops_a_retry_storm() {
    let live = HttpOrigin::start("live", Duration::ZERO).await;
    let mut dead: Vec<HttpOrigin> = Vec::new();
    for i in 0..3 {
        dead.push(HttpOrigin::start(&format!("dead{i}"), Duration::ZERO).await);
    }
    for d in dead.iter_mut() {
        d.stop().await;
    }
    let port = free_port();
    let mut refs: Vec<&HttpOrigin> = dead.iter().collect();
    refs.push(&live);
    // No health checks, no passive detection, no ejection: the dead
    // servers stay in rotation, so only the budget limits retries.
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(
            Pool::new("web")
                .set("retry_budget", 20)
                .health([("check", "none".into())])
                .set("passive", table([("failures", 0.into())]))
                .set("outlier", table([("consecutive", 0.into())]))
                .origins(&refs),
        )
        .build();
    let node = Convoy::start(BIN, &cfg).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    let mut ok = 0;
    let mut failed = 0;
    for _ in 0..200 {
        match get(&c, &url, &[]).await.status {
            200 => ok += 1,
            502 => failed += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    // Round robin over 4 servers, 3 dead: without a budget every request
    // would be retried until it reached the live one (up to 3 retries
    // each, 450 in all); with 20% + 10 about 50 retries are allowed.
    assert!(
        failed > 50,
        "the budget must refuse most retries: ok {ok}, failed {failed}"
    );
    // First attempts reach the live server for a quarter (50); budgeted
    // retries (≈ 50, each landing on a random untried server) add some.
    assert!(
        (55..=105).contains(&ok),
        "requests that drew the live server, plus some budgeted retries: ok {ok}"
    );
    assert!(
        node.wait_event("retry_budget_exhausted", Duration::from_secs(2))
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_servers_switch_on_under_overload_and_off_after() {
    let main = HttpOrigin::start("main", Duration::from_millis(100)).await;
    let spare = HttpOrigin::start("spare", Duration::from_millis(100)).await;
    let dir = convoy_testkit::temp_dir("hook");
    let log = dir.join("hook.log");
    let hook = dir.join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$CONVOY_POOL $CONVOY_STANDBY $CONVOY_SERVERS queue=$CONVOY_QUEUE\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status()
        .unwrap();
    let port = free_port();
    let standby = table([
        ("queue_above", 2.into()),
        ("queue_below", 0.into()),
        ("hold", "300ms".into()),
        ("hook", vec![hook.display().to_string()].into()),
    ]);
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(
            Pool::new("web")
                .set("max_in_flight", 1)
                .set("queue_timeout", "20s")
                .set("standby", standby)
                .origins(&[&main])
                .server(Server::from_origin(&spare).set("standby", true)),
        )
        .build();
    let node = Convoy::start(BIN, &cfg).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    // Light load: the spare stays off.
    for _ in 0..5 {
        assert_eq!(get(&c, &url, &[]).await.body, "main");
    }
    // Overload: 30 concurrent requests on a server taking one at a time.
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let (c, u) = (c.clone(), url.clone());
            tokio::spawn(async move { get(&c, &u, &[]).await })
        })
        .collect();
    let mut by = HashMap::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        *by.entry(r.body).or_insert(0) += 1;
    }
    assert!(node.wait_event("standby_on", Duration::from_secs(1)).await);
    assert!(
        by.get("spare").copied().unwrap_or(0) > 0,
        "the spare helped: {by:?}"
    );
    // Recovered: off again after the hold time.
    assert!(
        node.wait_event("standby_off", Duration::from_secs(5)).await,
        "{}",
        node.stderr()
    );
    let spare_before = spare.seen.count.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(get(&c, &url, &[]).await.body, "main");
    }
    assert_eq!(spare.seen.count.load(Ordering::SeqCst), spare_before);
    // The hook ran for both changes, with its variables.
    assert!(
        convoy_testkit::wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 2)
        })
        .await
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("web on spare queue="), "{text}");
    assert!(lines[1].starts_with("web off spare queue=0"), "{text}");
    convoy_testkit::remove(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_and_header_hash_keep_users_on_their_server() {
    let os = [
        HttpOrigin::start("a", Duration::ZERO).await,
        HttpOrigin::start("b", Duration::ZERO).await,
        HttpOrigin::start("c", Duration::ZERO).await,
    ];
    let refs: Vec<&HttpOrigin> = os.iter().collect();
    let (p_cookie, p_hash) = (free_port(), free_port());
    let cfg = Config::new()
        .listener(Listener::http(p_cookie, "sticky"))
        .listener(Listener::http(p_hash, "hashed"))
        .pool(
            Pool::new("sticky")
                .set("sticky_cookie", "SRV")
                .origins(&refs),
        )
        .pool(
            Pool::new("hashed")
                .set("algorithm", "hash")
                .set("hash_on", "header:X-User")
                .origins(&refs),
        )
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let c = client();
    // Cookie: the first answer sets it; requests carrying it stay put while
    // round robin would rotate.
    let url = format!("http://127.0.0.1:{p_cookie}/");
    let first = get(&c, &url, &[]).await;
    let set = first.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(set.starts_with("SRV=") && set.contains("HttpOnly"), "{set}");
    let value = set.split(';').next().unwrap().trim_start_matches("SRV=");
    assert!(
        value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit()),
        "an opaque id, not the server's name or address: {value}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    for _ in 0..12 {
        let r = get(&c, &url, &[("cookie", &format!("theme=dark; {cookie}"))]).await;
        assert_eq!(r.body, first.body);
        assert!(
            !r.headers.contains_key("set-cookie"),
            "no new cookie while it holds"
        );
    }
    // A bogus cookie is ignored (and replaced).
    let r = get(&c, &url, &[("cookie", "SRV=zzz")]).await;
    assert!(r.headers.contains_key("set-cookie"));
    // Header hash: each user always lands on one server; users spread.
    let url = format!("http://127.0.0.1:{p_hash}/");
    let mut owners = std::collections::HashSet::new();
    for u in 0..30 {
        let user = format!("user-{u}");
        let first = get(&c, &url, &[("x-user", &user)]).await.body;
        for _ in 0..3 {
            assert_eq!(
                get(&c, &url, &[("x-user", &user)]).await.body,
                first,
                "{user}"
            );
        }
        owners.insert(first);
    }
    assert!(owners.len() >= 2, "{owners:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_route_limit_get_413() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(
            Listener::http(port, "web")
                .set("max_body", 1_000_000)
                .route(
                    Route::unnamed()
                        .set("path_prefix", "/upload")
                        .set("max_body", 1000),
                ),
        )
        .pool(Pool::new("web").origins(&[&o]))
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let big = "x".repeat(5000);
    // Declared length over the limit: refused before any server sees it.
    let req = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{big}");
    assert_eq!(raw(port, req.as_bytes()).await, 413);
    assert_eq!(o.seen.count.load(Ordering::SeqCst), 0);
    // Chunked, growing past the limit: 413 as soon as it does.
    let req = format!("POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n{big}\r\n0\r\n\r\n");
    assert_eq!(raw(port, req.as_bytes()).await, 413);
    // Within the limits: forwarded (the listener default applies elsewhere).
    let req =
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    assert_eq!(raw(port, req.as_bytes()).await, 200);
    let req = format!(
        "POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n{big}"
    );
    assert_eq!(raw(port, req.as_bytes()).await, 200);
}
