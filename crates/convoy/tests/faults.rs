//! Fault injection: servers that reset, hang, send garbage, close a
//! keep-alive connection as it is reused, or answer byte by byte; clients
//! that disconnect mid-request or mid-response, half-close, or sit idle by
//! the thousand; running out of file descriptors. Each checks what the
//! client sees and that the counters (in flight, open connections) return
//! to zero through the admin API.

use std::process::Command;
use std::time::Duration;

use convoy_testkit::config::{table, Config, Listener, Pool, Server};
use convoy_testkit::http::HttpOrigin;
use convoy_testkit::{free_port, wait_until, Convoy};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

/// How the bad server misbehaves.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Headers and half the body, then a reset.
    ResetMidBody,
    /// Headers announcing 100 bytes, then nothing.
    HangAfterHeaders,
    /// Not HTTP at all.
    Garbage,
    /// A keep-alive answer, then the connection closes at once.
    CloseAfterAnswer,
    /// The answer one byte at a time.
    Slow,
    /// Answers the first request of each connection and keeps it open,
    /// then reads the next one and closes without a word: exactly the
    /// keep-alive race (a server closing an idle connection just as the
    /// proxy reuses it).
    CloseOnReuse,
}

async fn bad_server(mode: Mode) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut answered = 0;
                loop {
                    let mut buf = [0u8; 4096];
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    match mode {
                        Mode::ResetMidBody => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf")
                                .await;
                            #[allow(deprecated)]
                            let _ = s.set_linger(Some(Duration::ZERO));
                            return;
                        }
                        Mode::HangAfterHeaders => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
                                .await;
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        Mode::Garbage => {
                            let _ = s.write_all(b"garbage \x00\x01\x02\r\n\r\n").await;
                            return;
                        }
                        Mode::CloseAfterAnswer => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                            return;
                        }
                        Mode::CloseOnReuse => {
                            if answered > 0 {
                                return;
                            }
                            answered += 1;
                            // Read the body (if any) before answering.
                            let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                            let len: usize = text
                                .split("content-length:")
                                .nth(1)
                                .and_then(|v| v.split("\r\n").next())
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                            let mut have = head.len() - end;
                            while have < len {
                                match s.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => have += n,
                                }
                            }
                            let body = format!("ok {len}");
                            let _ = s
                                .write_all(
                                    format!(
                                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                        body.len()
                                    )
                                    .as_bytes(),
                                )
                                .await;
                        }
                        Mode::Slow => {
                            for b in b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow" {
                                if s.write_all(&[*b]).await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn query(admin: &str) -> Value {
    let o = Command::new(BIN)
        .args(["ctl", "--admin", admin, "--json", "query"])
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

/// In flight and open connections over the whole node.
fn busy(admin: &str) -> (u64, u64) {
    let q = query(admin);
    let mut in_flight = 0;
    for p in q["pools"].as_array().into_iter().flatten() {
        for z in p["zones"].as_array().into_iter().flatten() {
            for s in z["servers"].as_array().into_iter().flatten() {
                in_flight += s["in_flight"].as_u64().unwrap_or(0);
            }
        }
    }
    let open = q["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| l["active"].as_u64().unwrap_or(0))
        .sum();
    (in_flight, open)
}

async fn settles(admin: &str, what: &str) {
    let mut last = (0, 0);
    let ok = wait_until(Duration::from_secs(5), || {
        last = busy(admin);
        last == (0, 0)
    })
    .await;
    assert!(
        ok,
        "{what}: counters did not return to zero: in flight, open = {last:?}"
    );
}

async fn ask(port: u16, req: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.write_all(req).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// The HTTP listener "web" on `port`.
fn web(port: u16) -> Listener {
    Listener::http(port, "web").set("name", "web")
}

/// `listener` in front of one server, "s" at `addr`, that is never checked,
/// marked down or ejected: what the client sees is convoy's answer to
/// each fault.
fn one_server(listener: Listener, addr: std::net::SocketAddr) -> String {
    Config::new()
        .listener(listener)
        .pool(
            Pool::new("web")
                .health([("check", "none".into())])
                .set("outlier", table([("consecutive", 0.into())]))
                .set("passive", table([("failures", 0.into())]))
                .server(Server::new("s", addr)),
        )
        .build()
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_servers() {
    for mode in [
        Mode::ResetMidBody,
        Mode::HangAfterHeaders,
        Mode::Garbage,
        Mode::CloseAfterAnswer,
        Mode::Slow,
        Mode::CloseOnReuse,
    ] {
        let addr = bad_server(mode).await;
        let port = free_port();
        let cfg = one_server(web(port).set("response_timeout", "1s"), addr);
        let c = Convoy::start(BIN, &cfg).await;
        let admin = c.admin_addr();
        match mode {
            Mode::ResetMidBody | Mode::HangAfterHeaders => {
                // The head went out; the body is cut: the client sees a
                // short body and a closed connection, never a hang.
                let t = tokio::time::Instant::now();
                let a = ask(port, GET).await;
                assert!(a.starts_with("HTTP/1.1 200"), "{mode:?}: {a:?}");
                // The declared length is kept and the body is short of it:
                // the client can tell the response was cut.
                let (head, body) = a.split_once("\r\n\r\n").unwrap_or((&a, ""));
                assert!(
                    head.to_ascii_lowercase().contains("content-length: 100"),
                    "{mode:?}: {head:?}"
                );
                assert!(body.len() < 100, "{mode:?}: {} body bytes", body.len());
                // A reset ends at once; a hang is cut after
                // response_timeout (1 s), well before the client's own
                // 5 s limit.
                assert!(
                    t.elapsed() < Duration::from_secs(3),
                    "{mode:?}: {:?}",
                    t.elapsed()
                );
            }
            Mode::Garbage => {
                let a = ask(port, GET).await;
                assert!(a.starts_with("HTTP/1.1 502"), "{a:?}");
            }
            Mode::CloseAfterAnswer => {
                // Many requests over convoy's pooled connections to a
                // server that closes each one after answering: the race
                // of reusing a connection just as it closes must never
                // reach the client.
                for i in 0..50 {
                    let a = ask(port, GET).await;
                    assert!(
                        a.starts_with("HTTP/1.1 200") && a.ends_with("ok"),
                        "request {i}: {a:?}"
                    );
                }
            }
            Mode::CloseOnReuse => {
                // Every second use of a pooled connection meets a server
                // that took the request and closed: convoy sends it again
                // on a new connection (nothing reached the client yet),
                // for a GET and for a POST whose body it still holds.
                for i in 0..20 {
                    let a = ask(port, GET).await;
                    assert!(
                        a.starts_with("HTTP/1.1 200") && a.ends_with("ok 0"),
                        "GET {i}: {a:?}"
                    );
                    let post = b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
                    let a = ask(port, post).await;
                    assert!(
                        a.starts_with("HTTP/1.1 200") && a.ends_with("ok 5"),
                        "POST {i}: {a:?}"
                    );
                }
            }
            Mode::Slow => {
                let a = ask(port, GET).await;
                assert!(
                    a.starts_with("HTTP/1.1 200") && a.ends_with("slow"),
                    "{a:?}"
                );
            }
        }
        settles(&admin, &format!("{mode:?}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_clients() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let c = Convoy::start(BIN, &one_server(web(port), o.addr)).await;
    let admin = c.admin_addr();

    // Gone mid-request: an upload that stops, then the connection closes.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(
        b"POST /echo?sleep_ms=200 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nsome bytes",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);
    settles(&admin, "client").await;

    // Gone mid-response: a large download read in part.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /text/5000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let _ = s.read(&mut buf).await.unwrap();
    drop(s);
    settles(&admin, "client").await;

    // Half-closed: the request, then FIN. convoy takes the end of stream
    // as the client leaving (so a slot is never held for a client that is
    // gone): the connection closes and nothing stays counted.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /?sleep_ms=100 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "the connection ends");
    settles(&admin, "client").await;

    // Thousands of idle connections: memory stays bounded.
    let pid = c.pid();
    let rss = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    };
    let before = rss();
    let mut idle = Vec::new();
    for _ in 0..2000 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        // One request each, so each connection is a served keep-alive one.
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        idle.push(s);
    }
    for s in idle.iter_mut() {
        let mut b = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
    }
    let after = rss();
    let per_conn_kb = after.saturating_sub(before) as f64 / 2000.0;
    println!(
        "memory per idle keep-alive connection: {per_conn_kb:.1} KiB (RSS {before} -> {after} KiB)"
    );
    assert!(per_conn_kb < 64.0, "{per_conn_kb} KiB per idle connection");
    assert_eq!(busy(&admin).1, 2000);
    drop(idle);
    settles(&admin, "client").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_backs_off_and_recovers() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let cfg = one_server(web(port), o.addr);
    let c = Convoy::start_wrapped(BIN, &cfg, &["prlimit", "--nofile=96"]).await;
    // Far more connections than descriptors.
    let mut held = Vec::new();
    for _ in 0..150 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            held.push(s);
        }
    }
    assert!(
        c.wait_event("local_resource_error", Duration::from_secs(5))
            .await,
        "convoy reports running out of descriptors: {}",
        c.stderr()
    );
    drop(held);
    // Service resumes once descriptors are free again.
    let ok = wait_until(Duration::from_secs(10), || {
        let o = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{port}/"),
            ])
            .output()
            .unwrap();
        o.stdout == b"o"
    })
    .await;
    assert!(ok, "service resumed: {}", c.stderr());
}

type H2Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

/// A client that speaks HTTP/2 by prior knowledge (one connection per
/// address, streams multiplexed on it).
fn h2_client() -> H2Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// GET `url` with `client`; the response with its body unread.
async fn h2_get(client: &H2Client, url: String) -> http::Response<hyper::body::Incoming> {
    client
        .request(
            http::Request::get(url)
                .body(http_body_util::Empty::new())
                .unwrap(),
        )
        .await
        .expect("request")
}

/// HTTP/2 from a client: 50 requests multiplexed on one connection all
/// answered; a stream the client resets mid-request frees its server slot
/// at once while the connection goes on serving; nothing stays counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_multiplex_and_a_reset_stream_frees_its_slot() {
    use http_body_util::BodyExt;
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let c = Convoy::start(BIN, &one_server(web(port), o.addr)).await;
    let admin = c.admin_addr();
    let client = h2_client();
    let get = |path: &str| {
        let (client, url) = (client.clone(), format!("http://127.0.0.1:{port}{path}"));
        async move {
            let r = h2_get(&client, url).await;
            let v = r.version();
            let status = r.status().as_u16();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            (v, status, body)
        }
    };
    let all: Vec<_> = (0..50)
        .map(|i| tokio::spawn(get(&format!("/m{i}?sleep_ms=50"))))
        .collect();
    for t in all {
        let (v, status, body) = t.await.unwrap();
        assert_eq!(
            (v, status, &body[..]),
            (http::Version::HTTP_2, 200, &b"o"[..])
        );
    }
    assert_eq!(busy(&admin), (0, 1), "one connection carried them all");
    assert!(o.seen.peak.load(std::sync::atomic::Ordering::SeqCst) > 1);

    // A stream reset while its request waits on the server.
    let slow = tokio::spawn(get("/slow?sleep_ms=4000"));
    assert!(
        wait_until(Duration::from_secs(3), || busy(&admin).0 == 1).await,
        "the slow request reaches the server"
    );
    slow.abort(); // hyper resets the stream (RST_STREAM CANCEL)
    assert!(
        wait_until(Duration::from_secs(2), || busy(&admin).0 == 0).await,
        "the reset stream still holds its slot: {:?}",
        busy(&admin)
    );
    // The connection goes on; the server got the :authority as Host.
    let r = h2_get(&client, format!("http://127.0.0.1:{port}/after")).await;
    assert_eq!(r.status(), 200);
    let authority = format!("127.0.0.1:{port}");
    assert_eq!(r.headers()["x-seen-host"], authority.as_str());
    assert_eq!(r.headers()["x-seen-x-forwarded-host"], authority.as_str());
    assert_eq!(r.headers()["x-seen-version"], "1.1");
    drop(r);
    assert_eq!(busy(&admin), (0, 1));
    drop(client);
    settles(&admin, "http2 client").await;
}

/// An HTTP/2 client that stops reading a large response (its window
/// stays shut) does not hold the server's slot: after `idle_timeout`
/// without room the stream is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_that_stops_reading_loses_its_stream() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let cfg = one_server(web(port).set("idle_timeout", "1s"), o.addr);
    let c = Convoy::start(BIN, &cfg).await;
    let admin = c.admin_addr();
    let client = h2_client();
    let r = h2_get(&client, format!("http://127.0.0.1:{port}/text/50000000")).await;
    assert_eq!(r.status(), 200);
    // The body is never read: hyper gives no window back.
    assert_eq!(
        busy(&admin).0,
        1,
        "the download holds its slot while it runs"
    );
    assert!(
        wait_until(Duration::from_secs(6), || busy(&admin).0 == 0).await,
        "a client that reads nothing keeps the slot: {:?}",
        busy(&admin)
    );
    assert!(!c.stderr().contains("panicked"), "{}", c.stderr());
    drop(r);
    drop(client);
    settles(&admin, "stalled http2 client").await;
}

/// The same over HTTP/1.1: a client that stops reading a large response
/// is closed after `idle_timeout` without progress, and its slot freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_that_stops_reading_is_closed() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let cfg = one_server(web(port).set("idle_timeout", "1s"), o.addr);
    let c = Convoy::start(BIN, &cfg).await;
    let admin = c.admin_addr();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /text/50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Nothing is read: the socket buffers fill and convoy's writes stop.
    assert!(
        wait_until(Duration::from_secs(3), || busy(&admin).0 == 1).await,
        "the download starts"
    );
    assert!(
        wait_until(Duration::from_secs(6), || busy(&admin) == (0, 0)).await,
        "a client that reads nothing keeps its slot and connection: {:?}",
        busy(&admin)
    );
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_never_a_server_fault() {
    // Two UDP resolvers, each with a TCP port for its health check.
    let mut servers = Vec::new();
    let mut tcp = Vec::new();
    for n in ["r1", "r2"] {
        // The TCP port of the same number may be taken (by another
        // test's connection): then another UDP port.
        let mut tries = 0;
        let (u, t) = loop {
            let u = convoy_testkit::UdpBackend::start(n).await;
            match TcpListener::bind(u.addr).await {
                Ok(t) => break (u, t),
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("TCP {} taken ({e}): another port", u.addr);
                }
                Err(e) => panic!("no UDP port whose TCP twin is free: {e}"),
            }
        };
        tcp.push(tokio::spawn(async move {
            while let Ok((s, _)) = t.accept().await {
                drop(s);
            }
        }));
        servers.push(u);
    }
    let port = convoy_testkit::free_udp_port();
    let cfg = format!(
        "[[listeners]]\nname = \"dns\"\nprotocol = \"udp\"\naddress = \"127.0.0.1:{port}\"\npool = \"r\"\nidle_timeout = \"2s\"\n\n\
         [pools.r]\nhealth = {{ check = \"tcp\", interval = \"100ms\", timeout = \"500ms\", rise = 1, fall = 1 }}\n\
         [[pools.r.servers]]\nname = \"r1\"\naddress = \"{}\"\n\
         [[pools.r.servers]]\nname = \"r2\"\naddress = \"{}\"\n",
        servers[0].addr, servers[1].addr
    );
    // 64 descriptors, soft and hard: convoy cannot raise it.
    let c = Convoy::start_wrapped(BIN, &cfg, &["prlimit", "--nofile=64"]).await;
    let d = c.events("descriptors");
    assert_eq!(
        d.first().map(|e| e["limit"].clone()),
        Some(64.into()),
        "{d:?}"
    );
    // 300 queries, each from a new source port: a flow (and a socket)
    // each, far more than the descriptors.
    let mut clients = Vec::new();
    for i in 0..300u32 {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let _ = s.send_to(&i.to_be_bytes(), ("127.0.0.1", port)).await;
        clients.push(s);
    }
    assert!(
        c.wait_event("local_resource_error", Duration::from_secs(5))
            .await,
        "{}",
        c.stderr()
    );
    // The checks go on (a probe that cannot get a descriptor is tried
    // again); no resolver is taken down for this node's shortage.
    // The flows end after their idle timeout, freeing the descriptors.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(c.events("server_down").is_empty(), "{}", c.stderr());
    assert!(c.events("pool_down").is_empty(), "{}", c.stderr());
    let q = query(&c.admin_addr());
    assert!(
        q["local_errors"]["descriptors"].as_u64().unwrap_or(0) > 0,
        "{q}"
    );
    for t in tcp {
        t.abort();
    }
}
