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
