//! HTTP gateway timeouts and fault attribution, end to end: slow clients
//! get 408 and never reach a server, idle connections close, slow servers
//! get 504, client faults never count against a server, a disabled
//! listener serves nothing, and queued requests survive a reload.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use convoy_testkit::config::{table, Config, Listener, Pool, Server};
use convoy_testkit::http::HttpOrigin;
use convoy_testkit::{free_port, Convoy};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

/// The HTTP listener "web" on `port`, for the pool "web".
fn web(port: u16) -> Listener {
    Listener::http(port, "web").set("name", "web")
}

/// Reads until the peer closes (or 10 s); returns what was read and how
/// long the close took.
async fn read_to_close(s: &mut TcpStream) -> (String, Duration) {
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    (String::from_utf8_lossy(&buf).into_owned(), t.elapsed())
}

async fn get_status(port: u16, path: &str) -> u16 {
    let c: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let r = c
        .get(format!("http://127.0.0.1:{port}{path}").parse().unwrap())
        .await
        .expect("request");
    let st = r.status().as_u16();
    let _ = r.into_body().collect().await;
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_get_408_and_idle_connections_close() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(
            web(port)
                .set("header_timeout", "600ms")
                .set("idle_timeout", "1200ms"),
        )
        .pool(Pool::new("web").origins(&[&o]))
        .build();
    let _c = Convoy::start(BIN, &cfg).await;

    // Slowloris: part of a head, then nothing.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let (text, took) = read_to_close(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 408"), "got {text:?}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // Bytes trickling in do not extend the header timeout.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let t = Instant::now();
    let trickle = async {
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(4), trickle).await;
    let (text, _) = read_to_close(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 408"), "got {text:?}");
    // The head had 600 ms from its first byte. A clock restarted by each
    // byte would answer only after the whole trickle (43 bytes × 50 ms)
    // plus 600 ms, about 2.75 s.
    assert!(
        t.elapsed() < Duration::from_millis(1800),
        "the trickle extended the header timeout: {:?}",
        t.elapsed()
    );

    // A connection that sends nothing is closed quietly.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (text, took) = read_to_close(&mut s).await;
    assert_eq!(text, "");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // A keep-alive connection: one request, then idle until idle_timeout
    // (longer than the header timeout: being idle is not a slow head).
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let (text, took) = read_to_close(&mut s).await;
    assert_eq!(text, "", "an idle close sends nothing");
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(5),
        "idle close after {took:?}"
    );

    // An HTTP/2 connection that goes idle is closed too.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let t = Instant::now();
    let mut sink = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
    assert!(r.is_ok(), "an idle h2c connection must be closed");
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );

    assert_eq!(
        o.seen.count.load(Ordering::SeqCst),
        1,
        "only the one whole request reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_is_the_clients_fault_and_slow_server_gets_504() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let o2 = HttpOrigin::start("o2", Duration::ZERO).await;
    let port = free_port();
    // Servers are ejected after a single failure blamed on them (half of
    // the pool may be ejected).
    let cfg = Config::new()
        .listener(
            web(port)
                .set("body_timeout", "500ms")
                .set("response_timeout", "700ms"),
        )
        .pool(
            Pool::new("web")
                .set(
                    "outlier",
                    table([("consecutive", 1.into()), ("base_ejection", "30s".into())]),
                )
                .set("passive", table([("failures", 1.into())]))
                .origins(&[&o, &o2]),
        )
        .build();
    let c = Convoy::start(BIN, &cfg).await;

    // A body that never starts: 408 before any server is chosen.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_to_close(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 408"), "got {text:?}");
    // A body that stops half way, on its way to a server that waits for
    // it: 408 again, and the server is not blamed.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"POST /x?sleep_ms=1500 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf")
        .await
        .unwrap();
    let (text, _) = read_to_close(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 408"), "got {text:?}");
    // An upload aborted mid-body.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"POST /x?sleep_ms=1500 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nsome")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The server was not blamed: it still takes requests.
    assert_eq!(get_status(port, "/fine").await, 200);
    assert!(
        c.events("server_ejected").is_empty(),
        "client faults must not eject: {}",
        c.stderr()
    );

    // A server slower than response_timeout: 504, and now it is its fault.
    assert_eq!(get_status(port, "/slow?sleep_ms=2000").await, 504);
    assert!(
        convoy_testkit::wait_until(Duration::from_secs(3), || !c
            .events("server_ejected")
            .is_empty())
        .await,
        "a response timeout counts against the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_http_listener_serves_nothing() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(web(port).set("mode", "disabled"))
        .pool(Pool::new("web").origins(&[&o]))
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (text, _) = read_to_close(&mut s).await;
    assert_eq!(text, "");
    assert_eq!(o.seen.count.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_survive_a_reload_and_keep_their_order() {
    let o = HttpOrigin::start("o", Duration::from_millis(300)).await;
    let port = free_port();
    let pool = Pool::new("web")
        .set("max_in_flight", 1)
        .set("queue_timeout", "10s")
        .origins(&[&o]);
    let cfg = Config::new().listener(web(port)).pool(pool.clone()).build();
    let c = Convoy::start(BIN, &cfg).await;
    let mut tasks = Vec::new();
    for i in 0..3 {
        tasks.push(tokio::spawn(get_status(
            port,
            if i == 0 {
                "/a"
            } else if i == 1 {
                "/b"
            } else {
                "/c"
            },
        )));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reload while /b and /c wait: the queue carries over.
    let next = Config::new()
        .listener(web(port))
        .pool(pool.set("retry_budget", 10))
        .build();
    assert_eq!(c.reload(&next).await, "reload_applied");
    // A request of the new pool queues behind them, not around them.
    tasks.push(tokio::spawn(get_status(port, "/d")));
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let paths = o.seen.paths.lock().unwrap().clone();
    assert_eq!(paths, ["/a", "/b", "/c", "/d"]);
    assert_eq!(o.seen.peak.load(Ordering::SeqCst), 1);
}

async fn get_headers(port: u16, path: &str) -> (u16, http::HeaderMap, String) {
    let c: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let r = c
        .get(format!("http://127.0.0.1:{port}{path}").parse().unwrap())
        .await
        .expect("request");
    let st = r.status().as_u16();
    let h = r.headers().clone();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (st, h, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_may_speak_http2_to_their_servers() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let pool = Pool::new("web").origins(&[&o]);
    let cfg = Config::new()
        .listener(web(port))
        .pool(pool.clone().set("http2", true))
        .build();
    let c = Convoy::start(BIN, &cfg).await;
    // Concurrent requests share the multiplexed connection.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(get_headers(port, "/?sleep_ms=50")));
    }
    for t in tasks {
        let (st, h, _) = t.await.unwrap();
        assert_eq!(st, 200);
        assert_eq!(h["x-seen-version"], "2", "the origin got HTTP/2");
    }
    // And back to HTTP/1.1 by reload.
    let http1 = Config::new().listener(web(port)).pool(pool).build();
    assert_eq!(c.reload(&http1).await, "reload_applied");
    let (_, h, _) = get_headers(port, "/").await;
    assert_eq!(h["x-seen-version"], "1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tier_spills_into_the_next() {
    let slow = HttpOrigin::start("slow", Duration::from_millis(60)).await;
    let backup = HttpOrigin::start("backup", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(
            Pool::new("web")
                .set("tier_latency_above", "20ms")
                .origins(&[&slow])
                .server(Server::from_origin(&backup).set("tier", 1)),
        )
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    // Tier 0 takes the first request (no latency known yet).
    let (_, _, first) = get_headers(port, "/").await;
    assert_eq!(first, "slow");
    let mut backup_n = 0;
    for _ in 0..100 {
        let (st, _, who) = get_headers(port, "/").await;
        assert_eq!(st, 200);
        if who == "backup" {
            backup_n += 1;
        }
    }
    // Every request but the one-in-twenty probes goes to tier 1.
    assert!(backup_n >= 90, "backup got {backup_n} of 100");
    assert!(backup_n < 100, "tier 0 still gets probes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_after_a_reset_others_are_not() {
    // A server that accepts, reads the request and closes without an
    // answer, next to a good one.
    let bad = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad_addr = bad.local_addr().unwrap();
    let resets = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r2 = std::sync::Arc::clone(&resets);
    let bad_task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = bad.accept().await else {
                continue;
            };
            let r3 = std::sync::Arc::clone(&r2);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                r3.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let good = HttpOrigin::start("good", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(
            Pool::new("web")
                .set("retry_budget", 100)
                .set("outlier", table([("consecutive", 0.into())]))
                .set("passive", table([("failures", 0.into())]))
                .server(Server::new("bad", bad_addr))
                .origins(&[&good]),
        )
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    for _ in 0..10 {
        assert_eq!(get_status(port, "/").await, 200, "GET is retried");
    }
    assert!(
        resets.load(Ordering::SeqCst) >= 4,
        "the bad server was tried"
    );
    // A DELETE is idempotent too; a POST (even bodiless) is not repeated.
    let mut post_502 = 0;
    for _ in 0..10 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(
            b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let (text, _) = read_to_close(&mut s).await;
        if text.starts_with("HTTP/1.1 502") {
            post_502 += 1;
        } else {
            assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
        }
    }
    assert!(
        post_502 >= 3,
        "POSTs reaching the bad server fail: {post_502}"
    );
    bad_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_compressed_for_clients_that_accept_it() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(web(port).set("compression", table([("min_size", 1000.into())])))
        .pool(Pool::new("web").origins(&[&o]))
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let original: Vec<u8> = (0..100_000)
        .map(|i| b"convoy text body line\n"[i % 22])
        .collect();
    let url = format!("http://127.0.0.1:{port}/text/100000");
    for enc in ["gzip", "br", "zstd"] {
        // curl asks for one coding and decodes it itself.
        let o = std::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "-H",
                &format!("accept-encoding: {enc}"),
                "-D",
                "/dev/stderr",
                "--compressed",
                &url,
            ])
            .output()
            .unwrap();
        let headers = String::from_utf8_lossy(&o.stderr).to_ascii_lowercase();
        assert!(
            headers.contains(&format!("content-encoding: {enc}")),
            "{enc}: {headers}"
        );
        assert!(headers.contains("vary: accept-encoding"), "{headers}");
        assert!(
            headers.contains("etag: w/\"body-v1\""),
            "strong etag weakened: {headers}"
        );
        assert_eq!(o.stdout, original, "{enc} decodes to the original");
        // And the wire really carried fewer bytes.
        let raw = std::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "-H",
                &format!("accept-encoding: {enc}"),
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                &url,
            ])
            .output()
            .unwrap();
        let n: usize = String::from_utf8_lossy(&raw.stdout).parse().unwrap();
        assert!(n < original.len() / 10, "{enc}: {n} bytes on the wire");
    }
    // Images, small bodies and clients that do not ask stay as they are.
    for (path, ae) in [
        ("/png/5000", "gzip, br"),
        ("/text/500", "gzip"),
        ("/text/5000", "identity"),
    ] {
        let o = std::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "-H",
                &format!("accept-encoding: {ae}"),
                "-D",
                "/dev/stderr",
                "-o",
                "/dev/null",
            ])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        let headers = String::from_utf8_lossy(&o.stderr).to_ascii_lowercase();
        assert!(!headers.contains("content-encoding"), "{path}: {headers}");
    }
}

/// The listener "web"'s line of a metric.
fn metric(c: &Convoy, name: &str) -> Option<u64> {
    c.metric(&format!("{name}{{listener=\"web\",protocol=\"http\"}}"))
}

/// Sends one request on `s` and returns the response head.
async fn ask(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_parked_and_served_again_timed_out_and_killed() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(
            web(port)
                .set("park_after", "200ms")
                .set("idle_timeout", "3s"),
        )
        .pool(Pool::new("web").origins(&[&o]))
        .build();
    let c = Convoy::start(BIN, &cfg).await;
    let mut conns = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let a = ask(&mut s, &format!("/first/{i}")).await;
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
        conns.push(s);
    }
    let parked = |n: u64| {
        let c = &c;
        async move {
            convoy_testkit::wait_until(Duration::from_secs(5), || {
                metric(c, "convoy_listener_parked_connections") == Some(n)
            })
            .await
        }
    };
    assert!(parked(20).await, "all 20 idle connections parked");
    assert_eq!(metric(&c, "convoy_listener_connections"), Some(20));

    // A parked connection is served again when its next request comes,
    // and parked again once idle.
    for (i, s) in conns.iter_mut().enumerate().take(10) {
        let a = ask(s, &format!("/again/{i}")).await;
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
        assert!(!a.contains("connection: close"), "{a}");
    }
    let answered = Instant::now();
    assert!(parked(20).await, "parked again");
    assert_eq!(o.seen.count.load(Ordering::SeqCst), 30);

    // The idle timeout still holds, counted from each last response: the
    // ten not asked again close first, the others about 3 s after their
    // second answer.
    let (text, _) = read_to_close(&mut conns[15]).await;
    assert_eq!(text, "", "an idle close sends nothing");
    let (text, _) = read_to_close(&mut conns[5]).await;
    assert_eq!(text, "");
    let t = answered.elapsed();
    assert!(
        t >= Duration::from_millis(2500) && t < Duration::from_secs(6),
        "closed {t:?} after its last answer"
    );
    assert!(
        parked(0).await,
        "{:?}",
        metric(&c, "convoy_listener_parked_connections")
    );
    drop(conns);

    // Disabling the listener closes parked connections at once.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let a = ask(&mut s, "/before-disable").await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert!(parked(1).await);
    let out = c.ctl(BIN, &["listener", "web", "disable"]);
    assert!(out.status.success(), "{out:?}");
    let (text, took) = read_to_close(&mut s).await;
    assert_eq!(text, "");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(parked(0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_stop_wakes_parked_connections_answers_a_late_request_and_exits() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(
            web(port)
                .set("park_after", "100ms")
                .set("idle_timeout", "60s"),
        )
        .pool(Pool::new("web").origins(&[&o]))
        .build();
    let mut c = Convoy::start(BIN, &cfg).await;
    let mut conns = Vec::new();
    for i in 0..5 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let a = ask(&mut s, &format!("/{i}")).await;
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
        conns.push(s);
    }
    assert!(
        convoy_testkit::wait_until(Duration::from_secs(5), || {
            metric(&c, "convoy_listener_parked_connections") == Some(5)
        })
        .await
    );
    let t = Instant::now();
    c.signal("QUIT");
    // A request the client sends as the stop begins is answered (and the
    // connection closed after it), not lost.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = ask(&mut conns[0], "/late").await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert!(a.to_ascii_lowercase().contains("connection: close"), "{a}");
    // The others are closed after the stop's grace, not kept until their
    // idle timeout: the node exits.
    for s in conns.iter_mut().skip(1) {
        let (text, _) = read_to_close(s).await;
        assert_eq!(text, "");
    }
    assert_eq!(c.wait_exit(Duration::from_secs(10)).await, Some(0));
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
}
