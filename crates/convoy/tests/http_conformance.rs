//! HTTP correctness that clients meet on the wire, end to end with a
//! real convoy process: `Expect: 100-continue` answered before the body
//! (raw client and curl, clear and TLS, HTTP/1.1 and HTTP/2), Host always
//! reaching the server, the request-line corner cases of RFC 9112 and
//! RFC 9110, and what an h2c-capable port does with a bad preface.

use std::time::Duration;

use tokio::time::Instant;

use convoy_testkit::config::{Config, Listener, Pool};
use convoy_testkit::http::HttpOrigin;
use convoy_testkit::{free_port, Convoy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

/// One origin behind a plain and a TLS listener; a request body may
/// pause up to 20 s (so a 100 Continue held back until then shows).
async fn setup() -> (HttpOrigin, Convoy, u16, u16) {
    let origin = HttpOrigin::start("o", Duration::ZERO).await;
    let (cert, key) = convoy_testkit::self_signed();
    let (port, tls_port) = (free_port(), free_port());
    let cfg = Config::new()
        .listener(
            Listener::http(port, "web")
                .set("name", "plain")
                .set("body_timeout", "20s"),
        )
        .listener(
            Listener::http(tls_port, "web")
                .set("name", "tls")
                .set("body_timeout", "20s")
                .tls(&cert, &key),
        )
        .pool(Pool::new("web").origins(&[&origin]))
        .build();
    let c = Convoy::start(BIN, &cfg).await;
    (origin, c, port, tls_port)
}

/// Sends `req` on a new connection and reads until the server closes or
/// `until` appears; what arrived.
async fn exchange(port: u16, req: &[u8], until: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&got).contains(until) {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body() {
    assert!(convoy_testkit::have("curl"), "curl is needed");
    let (_o, _c, port, tls_port) = setup().await;

    // A raw client that really waits for the 100 before its body.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("100 Continue comes before the body is sent, not at the body timeout")
            .unwrap();
        assert!(n > 0, "closed");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    while !String::from_utf8_lossy(&rest).ends_with("hello") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the response")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&rest));
        rest.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");

    // curl waits for the 100 (here up to 30 s) before a large body, in
    // clear and over TLS, HTTP/1.1 and HTTP/2.
    let dir = convoy_testkit::temp_dir("expect");
    let up = dir.join("up.bin");
    std::fs::write(&up, vec![b'u'; 2_000_000]).unwrap();
    let plain = format!("http://127.0.0.1:{port}/echo");
    let tls = format!("https://localhost:{tls_port}/echo");
    let cases: [(&str, &str, &str); 4] = [
        ("--http1.1", &plain, "HTTP/1.1 100"),
        ("--http1.1", &tls, "HTTP/1.1 100"),
        ("--http2-prior-knowledge", &plain, "HTTP/2 100"),
        ("--http2", &tls, "HTTP/2 100"),
    ];
    for (version, url, continue_line) in cases {
        let started = Instant::now();
        let out = tokio::process::Command::new("curl")
            .args(["-sk", "-v", version, "--expect100-timeout", "30"])
            .args(["-H", "Expect: 100-continue", "-o", "/dev/null"])
            .args(["-w", "%{http_code} %{size_download}"])
            .arg("--resolve")
            .arg(format!("localhost:{tls_port}:127.0.0.1"))
            .arg("--data-binary")
            .arg(format!("@{}", up.display()))
            .arg(url)
            .output()
            .await
            .unwrap();
        let took = started.elapsed();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(stdout, "200 2000000", "{version} {url}: {stderr}");
        assert!(
            stderr.contains(&format!("< {continue_line}")),
            "{version} {url}: no 100 Continue: {stderr}"
        );
        // Held back until the body timeout, it would take 20 s.
        assert!(took < Duration::from_secs(10), "{version} {url}: {took:?}");
    }
    convoy_testkit::remove(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_always_gets_a_host() {
    let (o, _c, port, _) = setup().await;
    // `Connection: Host` does not make Host hop-by-hop.
    let r = exchange(
        port,
        b"GET /a HTTP/1.1\r\nHost: shop.example\r\nConnection: Host, x-hop\r\nx-hop: 1\r\n\r\n",
        "\r\n\r\no",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("x-seen-host: shop.example\r\n"), "{r}");
    assert!(!r.contains("x-seen-x-hop"), "{r}");
    // HTTP/1.0 without Host: the server (HTTP/1.1) gets its own address.
    let r = exchange(port, b"GET /b HTTP/1.0\r\n\r\n", "\r\n\r\no").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains(&format!("x-seen-host: {}\r\n", o.addr)), "{r}");
    // A later HTTP/1 minor version is served as HTTP/1.1 (RFC 9110 §2.5).
    let r = exchange(port, b"GET /c HTTP/1.2\r\nHost: x\r\n\r\n", "\r\n\r\no").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_lines_and_trailers_are_refused() {
    let (o, _c, port, _) = setup().await;
    for (req, status) in [
        (&b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"[..], "400"),
        (b"GET /a#top HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", "505"),
        (
            b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            "400",
        ),
    ] {
        let r = exchange(port, req, "\r\n\r\n").await;
        assert!(
            r.starts_with(&format!("HTTP/1.1 {status} ")),
            "{}: {r}",
            String::from_utf8_lossy(req)
        );
    }
    let paths = o.seen.paths.lock().unwrap().clone();
    assert!(
        !paths.iter().any(|p| p == "/smuggled"),
        "a trailer line reached the server as a request: {paths:?}"
    );
    // Not HTTP at all on a port that also speaks h2c: closed, no answer
    // an HTTP/2 client would misread as frames.
    let r = exchange(port, b"INVALID CONNECTION PREFACE\r\n\r\n", "never").await;
    assert_eq!(r, "");
}
