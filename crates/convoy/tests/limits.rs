//! Resource limits and abuse: per-client connection and request-rate
//! limits, the node-wide connection limit, no open proxy, no header
//! injection.

use std::time::Duration;

use convoy_testkit::config::{table, Config, Listener, Pool, Server};
use convoy_testkit::http::HttpOrigin;
use convoy_testkit::{free_port, Convoy, NamedBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

/// Sends `req` on a new connection and returns the whole answer.
async fn exchange(port: u16, req: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.write_all(req).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether a new connection stays open (is served) rather than being
/// closed at once.
async fn served(port: u16) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => None,
        // The TCP backend names itself: served.
        Ok(Ok(_)) => Some(s),
        // Nothing yet (HTTP waits for a request): open.
        Err(_) => Some(s),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_and_node_limits() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let b = NamedBackend::start("t").await;
    let (hport, tport) = (free_port(), free_port());
    let cfg = Config::new()
        .node("max_connections", 5)
        .listener(
            Listener::http(hport, "web")
                .set("name", "web")
                .set("max_connections_per_ip", 2)
                .set(
                    "rate_limit",
                    table([("per_second", 5.into()), ("burst", 5.into())]),
                ),
        )
        .listener(Listener::tcp(tport, "tcp").set("name", "raw"))
        .pool(Pool::new("web").origins(&[&o]))
        .pool(Pool::new("tcp").server(Server::new(&b.name, b.addr)))
        .build();
    let c = Convoy::start(BIN, &cfg).await;

    // Two connections per client address on the HTTP listener.
    let h1 = served(hport).await.expect("first");
    let h2 = served(hport).await.expect("second");
    assert!(
        served(hport).await.is_none(),
        "a third from the same address is refused"
    );
    drop(h1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let h3 = served(hport)
        .await
        .expect("a slot freed by a closed connection is usable");

    // The node-wide limit: 2 HTTP connections are open, 3 more TCP ones
    // fit, the sixth does not.
    let mut t = Vec::new();
    for _ in 0..3 {
        t.push(served(tport).await.expect("within the node limit"));
    }
    assert!(served(tport).await.is_none(), "over node.max_connections");
    drop(t);
    drop((h2, h3));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(served(tport).await.is_some(), "service resumes");
    let refused: Vec<String> = c
        .events("connection_refused")
        .iter()
        .filter_map(|e| e["reason"].as_str().map(String::from))
        .collect();
    assert!(
        refused.contains(&"max_connections_per_ip".to_string()),
        "{refused:?}"
    );
    assert!(
        refused.contains(&"node_max_connections".to_string()),
        "{refused:?}"
    );

    // Requests per second per address: a burst of 5, then 429.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        let a = exchange(
            hport,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        codes.push(a.split_whitespace().nth(1).unwrap_or("").to_string());
        if a.contains(" 429 ") {
            assert!(a.to_ascii_lowercase().contains("retry-after: 1"), "{a}");
        }
    }
    let ok = codes.iter().filter(|c| *c == "200").count();
    let limited = codes.iter().filter(|c| *c == "429").count();
    assert!((5..=6).contains(&ok) && ok + limited == 8, "{codes:?}");
    // Counted in /metrics.
    let m = std::process::Command::new(BIN)
        .args(["ctl", "--admin", &c.admin_addr(), "metrics"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&m.stdout);
    assert!(
        text.contains(&format!(
            "convoy_listener_rate_limited_total{{listener=\"web\",protocol=\"http\"}} {limited}"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_open_proxy_and_no_header_injection() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    // A second origin that the config does not name: it must never be
    // reached, whatever the request says.
    let other = HttpOrigin::start("other", Duration::ZERO).await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::http(port, "web"))
        .pool(Pool::new("web").origins(&[&o]))
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let target = other.addr;
    for req in [
        format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Host: {target}\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let a = exchange(port, req.as_bytes()).await;
        assert!(
            a.ends_with("\r\n\r\no") || !a.contains("\r\n\r\nother"),
            "{req:?} -> {a:?}"
        );
    }
    assert_eq!(
        other.seen.count.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "an address outside the config was reached"
    );
    // CR/LF cannot be injected through what convoy adds: a Host with
    // CR/LF is refused by the parser, and values convoy builds come from
    // parsed addresses.
    let a = exchange(
        port,
        b"GET / HTTP/1.1\r\nHost: x\rInjected: yes\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 400"), "{a:?}");
    let a = exchange(
        port,
        b"GET / HTTP/1.1\r\nHost: evil\r\n\tcontinued: yes\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 400"), "obs-fold: {a:?}");
    let a = exchange(
        port,
        b"GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
    )
    .await;
    // Either refused, or passed with a Host the origin echoes; never a
    // Forwarded/X-Forwarded-Host built from it.
    assert!(
        !a.to_ascii_lowercase()
            .contains("x-seen-x-forwarded-host: a b"),
        "{a:?}"
    );
}
