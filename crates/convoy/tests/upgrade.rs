//! Seamless binary upgrade under load: a second convoy process takes over
//! the listening sockets (TCP, HTTP and the admin API's) of the running
//! one; the old one drains and exits. No request or connection fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use convoy_testkit::http::HttpOrigin;
use convoy_testkit::{ask_name, free_port, temp_dir, Convoy, NamedBackend};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

async fn http_get(port: u16) -> Result<u16, String> {
    // A new client per request: a new connection each time.
    let c: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let r = c
        .get(format!("http://127.0.0.1:{port}/").parse().unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let st = r.status().as_u16();
    r.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(st)
}

async fn tcp_echo(port: u16) -> Result<(), String> {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, mut s) = ask_name(None, addr).await.map_err(|e| e.to_string())?;
    s.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    if &buf != b"ping" {
        return Err("bad echo".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_loses_nothing() {
    let origin = HttpOrigin::start("o", Duration::from_millis(1)).await;
    let backend = NamedBackend::start("t").await;
    let (hport, tport) = (free_port(), free_port());
    let sock = temp_dir("upgrade-sock").join("convoy.sock");
    let cfg = format!(
        "[node]\nupgrade_socket = \"{}\"\ndrain_timeout = \"10s\"\n\n\
         [[listeners]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"127.0.0.1:{hport}\"\npool = \"web\"\n\
         [[listeners]]\nname = \"tcp\"\naddress = \"127.0.0.1:{tport}\"\npool = \"tcp\"\n\n\
         [pools.web]\n[[pools.web.servers]]\nname = \"o\"\naddress = \"{}\"\n\
         [pools.tcp]\n[[pools.tcp.servers]]\nname = \"t\"\naddress = \"{}\"\n",
        sock.display(),
        origin.addr,
        backend.addr
    );
    let mut old = Convoy::start(BIN, &cfg).await;
    let admin = old.admin_addr();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for i in 0..4 {
        let (stop, ok, errors) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&errors));
        load.push(tokio::spawn(async move {
            // Bounded: 30 s at most.
            let end = tokio::time::Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < end {
                let r = if i % 2 == 0 {
                    http_get(hport).await.and_then(|st| {
                        if st == 200 {
                            Ok(())
                        } else {
                            Err(format!("status {st}"))
                        }
                    })
                } else {
                    tcp_echo(tport).await
                };
                match r {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.lock().unwrap().push(e),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A long-lived TCP connection opened before the upgrade keeps working
    // through the old process until it ends.
    let (_, mut long) = ask_name(None, format!("127.0.0.1:{tport}").parse().unwrap())
        .await
        .unwrap();

    let new = old.start_upgrade(BIN).await;
    assert!(
        new.wait_event("upgrade_took_over", Duration::from_secs(5))
            .await,
        "{}",
        new.stderr()
    );
    assert!(
        old.wait_event("upgrade_handover", Duration::from_secs(5))
            .await,
        "{}",
        old.stderr()
    );
    // The old process waits for the long connection.
    long.write_all(b"still").await.unwrap();
    let mut buf = [0u8; 5];
    long.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still");
    drop(long);
    let code = old.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(
        code,
        Some(0),
        "the old process drains and exits: {}",
        old.stderr()
    );
    // Load goes on through the new process alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    assert!(ok > 100, "load ran: {ok}");
    assert!(
        errors.is_empty(),
        "{} of {} failed: {:?}",
        errors.len(),
        ok,
        &errors[..errors.len().min(5)]
    );
    // The admin API moved with the sockets: same address, new process.
    let out = std::process::Command::new(BIN)
        .args(["ctl", "--admin", &admin, "query"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the new process can itself be upgraded later.
    assert!(sock.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_frees_its_addresses_for_the_next_one() {
    // Without an upgrade socket: SIGQUIT the old node, start the new one
    // on the same config while the old one still drains a connection.
    let backend = NamedBackend::start("t").await;
    let (tport, aport) = (free_port(), free_port());
    let cfg = format!(
        "[node]\ndrain_timeout = \"10s\"\n[admin]\naddress = \"127.0.0.1:{aport}\"\n\n\
         [[listeners]]\naddress = \"127.0.0.1:{tport}\"\npool = \"tcp\"\n\
         [pools.tcp]\n[[pools.tcp.servers]]\nname = \"t\"\naddress = \"{}\"\n",
        backend.addr
    );
    let mut old = Convoy::start(BIN, &cfg).await;
    let (_, mut long) = ask_name(None, format!("127.0.0.1:{tport}").parse().unwrap())
        .await
        .unwrap();
    old.signal("QUIT");
    assert!(old.wait_event("admin_closed", Duration::from_secs(5)).await);
    let new = Convoy::start(BIN, &cfg).await;
    assert_eq!(new.admin_addr(), format!("127.0.0.1:{aport}"));
    // The old connection still works until it ends; then the old exits.
    long.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    long.read_exact(&mut b).await.unwrap();
    drop(long);
    assert_eq!(old.wait_exit(Duration::from_secs(10)).await, Some(0));
    tcp_echo(tport).await.unwrap();
}

fn query(admin: &str) -> serde_json::Value {
    let o = std::process::Command::new(BIN)
        .args(["ctl", "--admin", admin, "--json", "query"])
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

fn server<'a>(q: &'a serde_json::Value, pool: &str, name: &str) -> &'a serde_json::Value {
    q["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == pool)
        .flat_map(|p| p["zones"].as_array().unwrap())
        .flat_map(|z| z["servers"].as_array().unwrap())
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no server {pool}/{name} in {q}"))
}

fn ctl(admin: &str, args: &[&str]) {
    let o = std::process::Command::new(BIN)
        .args(["ctl", "--admin", admin])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The new process takes over what the old one knew: the operator's
/// changes (a weight, a disabled server), each server's latency EWMA, and
/// the requests the old one still has in flight, which count against the
/// high-water mark until they end: a server with `max_in_flight = 1`
/// never sees two requests at once across the two processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_hands_over_server_state_and_load() {
    let a = HttpOrigin::start("a", Duration::from_millis(20)).await;
    let b = HttpOrigin::start("b", Duration::ZERO).await;
    let one = HttpOrigin::start("one", Duration::ZERO).await;
    let (port, port1) = (free_port(), free_port());
    let sock = temp_dir("upgrade-state").join("convoy.sock");
    let cfg = format!(
        "[node]\nupgrade_socket = \"{}\"\ndrain_timeout = \"10s\"\n\n\
         [[listeners]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"127.0.0.1:{port}\"\npool = \"web\"\n\
         [[listeners]]\nname = \"one\"\nprotocol = \"http\"\naddress = \"127.0.0.1:{port1}\"\npool = \"one\"\n\n\
         [pools.web]\nslow_start = \"0s\"\n\
         [[pools.web.servers]]\nname = \"a\"\naddress = \"{}\"\n\
         [[pools.web.servers]]\nname = \"b\"\naddress = \"{}\"\n\
         [pools.one]\nmax_in_flight = 1\nqueue_timeout = \"10s\"\n\
         [[pools.one.servers]]\nname = \"s\"\naddress = \"{}\"\n",
        sock.display(),
        a.addr,
        b.addr,
        one.addr
    );
    let mut old = Convoy::start(BIN, &cfg).await;
    let admin = old.admin_addr();
    for _ in 0..20 {
        assert_eq!(http_get(port).await, Ok(200));
    }
    ctl(&admin, &["weight", "web", "b", "7"]);
    ctl(&admin, &["server", "web", "a", "disable"]);
    let before = query(&admin);
    let lat_a = server(&before, "web", "a")["latency_us"].as_f64().unwrap();
    assert!(lat_a > 10_000.0, "a's EWMA reflects its 20 ms: {lat_a}");

    // A long request on the old process holds the one slot of `one/s`.
    let slow = tokio::spawn(async move {
        let c: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let t = tokio::time::Instant::now();
        let r = c
            .get(
                format!("http://127.0.0.1:{port1}/?sleep_ms=1500")
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap();
        r.into_body().collect().await.unwrap();
        t.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let new = old.start_upgrade(BIN).await;
    assert!(
        new.wait_event("upgrade_took_over", Duration::from_secs(5))
            .await
    );
    assert!(
        new.wait_event("upgrade_state_taken_over", Duration::from_secs(1))
            .await,
        "{}",
        new.stderr()
    );
    // The admin API is the new process's now.
    let after = query(&admin);
    assert_eq!(server(&after, "web", "b")["weight"], 7, "{after}");
    assert_eq!(server(&after, "web", "a")["admin"], "disabled", "{after}");
    let lat_a2 = server(&after, "web", "a")["latency_us"].as_f64().unwrap();
    assert!(
        (lat_a2 - lat_a).abs() < lat_a * 0.5,
        "EWMA carried: {lat_a} then {lat_a2}"
    );
    // The old process's request counts on the new one's high-water mark.
    assert!(
        convoy_testkit::wait_until(Duration::from_secs(2), || server(
            &query(&admin),
            "one",
            "s"
        )["in_flight"]
            == 1)
        .await,
        "the old process's request is counted: {}",
        query(&admin)
    );
    let t = tokio::time::Instant::now();
    assert_eq!(http_get(port1).await, Ok(200));
    let waited = t.elapsed();
    let first = slow.await.unwrap();
    assert!(first >= Duration::from_millis(1400), "{first:?}");
    assert!(
        waited >= Duration::from_millis(600),
        "the new request waited for the old one's slot: {waited:?}"
    );
    assert_eq!(
        one.seen.peak.load(Ordering::SeqCst),
        1,
        "never two requests at once on a server with max_in_flight = 1"
    );
    // The disabled server stays out for new requests.
    let a_before = a.seen.count.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(http_get(port).await, Ok(200));
    }
    assert_eq!(
        a.seen.count.load(Ordering::SeqCst),
        a_before,
        "a takes nothing new"
    );
    assert_eq!(old.wait_exit(Duration::from_secs(15)).await, Some(0));
    // Once the old process is gone, its load is gone too.
    assert!(
        convoy_testkit::wait_until(Duration::from_secs(2), || server(
            &query(&admin),
            "one",
            "s"
        )["in_flight"]
            == 0)
        .await
    );
    drop(new);
}

/// Failed requests in a wrk summary (socket errors other than connect,
/// non-2xx answers), and requests done.
fn wrk_failures(out: &str) -> (u64, u64) {
    let mut failed = 0;
    let mut done = 0;
    for l in out.lines() {
        let l = l.trim();
        if let Some(rest) = l.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in rest.split(',') {
                let mut w = part.split_whitespace();
                if let (Some(k), Some(v)) = (w.next(), w.next()) {
                    failed += v.parse::<u64>().unwrap_or(0) * u64::from(k != "connect");
                }
            }
        } else if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            failed += rest.trim().parse::<u64>().unwrap_or(0);
        } else if l.contains("requests in") {
            done = l
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    (failed, done)
}

/// Failed requests in an h2load summary (failed + errored + timeout), and
/// requests that succeeded.
fn h2load_failures(out: &str) -> (u64, u64) {
    // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout"
    let line = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or("");
    let num = |what: &str| -> u64 {
        line.split(',')
            .find(|p| p.trim().ends_with(what))
            .and_then(|p| p.split_whitespace().find_map(|w| w.parse().ok()))
            .unwrap_or(0)
    };
    (
        num("failed") + num("errored") + num("timeout"),
        num("succeeded"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_upgrades_under_keep_alive_load_lose_no_request() {
    for tool in ["wrk", "h2load"] {
        assert!(
            convoy_testkit::have(tool),
            "{tool} is missing (scripts/test.sh installs it: apt-get install wrk nghttp2-client)"
        );
    }
    let origin = HttpOrigin::start("o", Duration::ZERO).await;
    let hport = free_port();
    let sock = temp_dir("upgrade-ka").join("convoy.sock");
    let cfg = format!(
        "[node]\nupgrade_socket = \"{}\"\ndrain_timeout = \"10s\"\n\n\
         [[listeners]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"127.0.0.1:{hport}\"\npool = \"web\"\n\n\
         [pools.web]\n[[pools.web.servers]]\nname = \"o\"\naddress = \"{}\"\n",
        sock.display(),
        origin.addr,
    );
    let mut cur = Convoy::start(BIN, &cfg).await;
    let url = format!("http://127.0.0.1:{hport}/");
    // Keep-alive load from three clients for 25 s (they end by themselves):
    // wrk and h2load over HTTP/1.1, h2load over HTTP/2 (4 streams per
    // connection).
    let spawn = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let wrk = spawn(&["wrk", "-t1", "-c10", "-d25s", &url]);
    let h1 = spawn(&["h2load", "--h1", "-c10", "-D", "25", &url]);
    // HTTP/2: h2load opens no new connection after a GOAWAY (and counts
    // the request it then declines to send as failed), so the HTTP/2 leg
    // is a client that behaves as browsers do: on GOAWAY it finishes its
    // open streams and opens a new connection.
    let h2_deadline = tokio::time::Instant::now() + Duration::from_secs(24);
    let h2 = tokio::spawn(h2_load(hport, 4, 4, h2_deadline));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut upgrades = 0;
    // The first process's directory holds the config every upgrade reads:
    // the old processes' handles are kept to the end.
    let mut gone = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(22);
    while upgrades < 20 && tokio::time::Instant::now() < end {
        let next = cur.start_upgrade(BIN).await;
        let code = cur.wait_exit(Duration::from_secs(12)).await;
        assert_eq!(
            code,
            Some(0),
            "upgrade {upgrades}: the old process exits: {}",
            cur.stderr()
        );
        gone.push(std::mem::replace(&mut cur, next));
        upgrades += 1;
    }
    let outs: Vec<(String, String)> = tokio::task::spawn_blocking(move || {
        [("wrk", wrk), ("h2load --h1", h1)]
            .into_iter()
            .map(|(n, c)| {
                let o = c.wait_with_output().unwrap();
                (
                    n.to_string(),
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                )
            })
            .collect()
    })
    .await
    .unwrap();
    assert!(upgrades >= 10, "only {upgrades} upgrades in 22 s");
    for (name, out) in &outs {
        let (failed, done) = if name == "wrk" {
            wrk_failures(out)
        } else {
            h2load_failures(out)
        };
        eprintln!("{name}: {done} requests, {failed} failed over {upgrades} upgrades");
        assert!(done > 1000, "{name} ran: {out}");
        assert_eq!(
            failed, 0,
            "{name} lost requests over {upgrades} upgrades:\n{out}"
        );
    }
    let h2 = h2.await.unwrap();
    eprintln!(
        "HTTP/2: {} requests on {} connections, {} refused unprocessed and retried, {} lost over {upgrades} upgrades",
        h2.ok, h2.connections, h2.refused, h2.lost
    );
    assert!(h2.ok > 1000, "HTTP/2 load ran: {h2:?}");
    assert!(
        h2.connections > upgrades as u64 / 2,
        "HTTP/2 clients moved to the new processes: {h2:?}"
    );
    assert_eq!(h2.lost, 0, "HTTP/2 requests lost: {h2:?}");
}

/// What [`h2_load`] saw.
#[derive(Debug, Default)]
struct H2Load {
    /// Requests answered 200 with their whole body.
    ok: u64,
    /// Requests sent and then failed: reset, cut by a closed connection,
    /// or answered with another status.
    lost: u64,
    /// Requests sent above a GOAWAY's last stream id or refused
    /// (REFUSED_STREAM): not processed by the server, retried.
    refused: u64,
    /// Connections opened.
    connections: u64,
}

/// HTTP/2 keep-alive load until `deadline`: `conns` connections at a time,
/// `streams` requests in flight on each. A connection that goes away
/// (GOAWAY) is replaced by a new one; a request the server says it did
/// not process is retried, as RFC 9113 §8.7 allows.
async fn h2_load(
    port: u16,
    conns: usize,
    streams: usize,
    deadline: tokio::time::Instant,
) -> H2Load {
    let workers: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(h2_connection_loop(port, streams, deadline)))
        .collect();
    let mut all = H2Load::default();
    for w in workers {
        let r = w.await.unwrap();
        all.ok += r.ok;
        all.lost += r.lost;
        all.refused += r.refused;
        all.connections += r.connections;
    }
    all
}

async fn h2_connection_loop(port: u16, streams: usize, deadline: tokio::time::Instant) -> H2Load {
    let mut r = H2Load::default();
    while tokio::time::Instant::now() < deadline {
        let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok((send, conn)) = h2::client::handshake(tcp).await else {
            continue;
        };
        r.connections += 1;
        let driver = tokio::spawn(conn);
        let tasks: Vec<_> = (0..streams)
            .map(|_| tokio::spawn(h2_stream_loop(send.clone(), port, deadline)))
            .collect();
        drop(send);
        for t in tasks {
            let s = t.await.unwrap();
            r.ok += s.ok;
            r.lost += s.lost;
            r.refused += s.refused;
        }
        driver.abort();
    }
    r
}

/// Requests one after another on one HTTP/2 connection until it goes away
/// or `deadline`.
async fn h2_stream_loop(
    mut send: h2::client::SendRequest<Bytes>,
    port: u16,
    deadline: tokio::time::Instant,
) -> H2Load {
    let mut r = H2Load::default();
    while tokio::time::Instant::now() < deadline {
        send = match send.ready().await {
            Ok(s) => s,
            Err(_) => break, // going away: a new connection
        };
        let req = http::Request::get(format!("http://127.0.0.1:{port}/"))
            .body(())
            .unwrap();
        // An error here is local: the request was not sent.
        let Ok((resp, _)) = send.send_request(req, true) else {
            break;
        };
        let unprocessed = |e: &h2::Error| {
            e.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR))
        };
        match resp.await {
            Ok(resp) => {
                let status = resp.status();
                let mut body = resp.into_body();
                let mut whole = true;
                while let Some(chunk) = body.data().await {
                    match chunk {
                        Ok(c) => {
                            let _ = body.flow_control().release_capacity(c.len());
                        }
                        Err(e) => {
                            eprintln!("HTTP/2 body cut: {e}");
                            whole = false;
                            break;
                        }
                    }
                }
                if status == 200 && whole {
                    r.ok += 1;
                } else {
                    eprintln!("HTTP/2 request lost: status {status}, whole body {whole}");
                    r.lost += 1;
                }
            }
            Err(e) if unprocessed(&e) => {
                r.refused += 1;
                break;
            }
            Err(e) => {
                eprintln!("HTTP/2 request lost: {e:?}");
                r.lost += 1;
                break;
            }
        }
    }
    r
}

/// One keep-alive client: GET after GET on one connection until the
/// server answers `Connection: close` (or `deadline`): (answered, lost).
/// A request sent and not answered (a reset, or a close before the
/// answer) is lost.
async fn keep_alive_client(port: u16, deadline: tokio::time::Instant) -> (u64, u64) {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, 0);
    };
    let mut ok = 0;
    let mut buf = Vec::new();
    while tokio::time::Instant::now() < deadline {
        if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .is_err()
        {
            return (ok, 1);
        }
        // Read one answer: its head, then content-length bytes.
        let answer = async {
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        buf.drain(..end + 4 + len);
                        return Some(head.contains("connection: close"));
                    }
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), answer).await {
            Ok(Some(close)) => {
                ok += 1;
                if close {
                    return (ok, 0);
                }
            }
            _ => return (ok, 1),
        }
    }
    (ok, 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stop_under_keep_alive_load_answers_every_request_it_read() {
    let origin = HttpOrigin::start("o", Duration::ZERO).await;
    let hport = free_port();
    let cfg = format!(
        "[node]\ndrain_timeout = \"10s\"\n\n\
         [[listeners]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"127.0.0.1:{hport}\"\npool = \"web\"\n\n\
         [pools.web]\n[[pools.web.servers]]\nname = \"o\"\naddress = \"{}\"\n",
        origin.addr,
    );
    let mut c = Convoy::start(BIN, &cfg).await;
    // 20 keep-alive clients sending without pause (bounded: 8 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let clients: Vec<_> = (0..20)
        .map(|_| tokio::spawn(keep_alive_client(hport, deadline)))
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // SIGQUIT: drain-stop, then exit when the last connection ends.
    c.signal("QUIT");
    assert_eq!(
        c.wait_exit(Duration::from_secs(12)).await,
        Some(0),
        "{}",
        c.stderr()
    );
    let (mut ok, mut lost) = (0, 0);
    for t in clients {
        let (o, l) = t.await.unwrap();
        ok += o;
        lost += l;
    }
    assert!(ok > 1000, "load ran: {ok}");
    assert_eq!(
        lost, 0,
        "{lost} requests lost in the drain-stop ({ok} answered)"
    );
}
