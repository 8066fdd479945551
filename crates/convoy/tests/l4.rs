//! End-to-end tests of the L4 data plane: a real `convoy run` process,
//! real loopback sockets, backends that name themselves.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use convoy_testkit::config::{Config, Listener, Pool, Server};
use convoy_testkit::{ask_name, free_port, wait_until, Convoy, NamedBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

/// The server for a backend: its name and address.
fn server(b: &NamedBackend) -> Server {
    Server::new(&b.name, b.addr)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Asks `n` times with up to `par` concurrent connections; returns counts
/// per backend name and the number of failures.
async fn spread(to: SocketAddr, n: usize, par: usize) -> (HashMap<String, usize>, usize) {
    let mut counts = HashMap::new();
    let mut failed = 0;
    let mut left = n;
    while left > 0 {
        let batch = left.min(par);
        left -= batch;
        let tasks: Vec<_> = (0..batch)
            .map(|_| tokio::spawn(async move { ask_name(None, to).await.map(|(n, _)| n) }))
            .collect();
        for t in tasks {
            match t.await.unwrap() {
                Ok(name) => *counts.entry(name).or_insert(0) += 1,
                Err(_) => failed += 1,
            }
        }
    }
    (counts, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_1_2_3_over_3000_connections() {
    let bs = [
        NamedBackend::start("a").await,
        NamedBackend::start("b").await,
        NamedBackend::start("c").await,
    ];
    let port = free_port();
    let pool = bs.iter().zip([1, 2, 3]).fold(Pool::new("p"), |p, (b, w)| {
        p.server(server(b).set("weight", w))
    });
    let cfg = Config::new()
        .listener(Listener::tcp(port, "p"))
        .pool(pool)
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (counts, failed) = spread(to, 3000, 32).await;
    assert_eq!(failed, 0);
    for (name, w) in [("a", 1.0), ("b", 2.0), ("c", 3.0)] {
        let share = counts[name] as f64 / 3000.0;
        let want = w / 6.0;
        assert!(
            (share - want).abs() / want <= 0.05,
            "{name}: share {share:.4}, want {want:.4} ±5% ({counts:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_network_affinity_and_minimal_disruption() {
    let bs = [
        NamedBackend::start("a").await,
        NamedBackend::start("b").await,
        NamedBackend::start("c").await,
        NamedBackend::start("d").await,
    ];
    let (pc, pn) = (free_port(), free_port());
    // All four servers; `disabled`, if named, with `enabled = false`.
    let cfg = |disabled: Option<&str>| {
        let pool = bs.iter().fold(Pool::new("p"), |p, b| {
            if disabled == Some(b.name.as_str()) {
                p.server(server(b).set("enabled", false))
            } else {
                p.server(server(b))
            }
        });
        Config::new()
            .listener(
                Listener::tcp(pc, "p")
                    .set("name", "client")
                    .set("affinity", "client"),
            )
            .listener(
                Listener::tcp(pn, "p")
                    .set("name", "network")
                    .set("affinity", "network"),
            )
            .pool(pool)
            .build()
    };
    let c = Convoy::start(BIN, &cfg(None)).await;
    let client: SocketAddr = format!("127.0.0.1:{pc}").parse().unwrap();
    let network: SocketAddr = format!("127.0.0.1:{pn}").parse().unwrap();

    // client: one source address always lands on one server
    let mut map = HashMap::new();
    for i in 1..=60u8 {
        let src = ip(&format!("127.0.9.{i}"));
        let first = ask_name(Some(src), client).await.unwrap().0;
        for _ in 0..3 {
            assert_eq!(ask_name(Some(src), client).await.unwrap().0, first, "{src}");
        }
        map.insert(src, first);
    }
    let used: std::collections::HashSet<_> = map.values().collect();
    assert!(
        used.len() >= 3,
        "60 clients should spread over the servers: {map:?}"
    );

    // network: addresses of one /24 land together; other /24s spread
    let mut per_net = Vec::new();
    for net in 10..30u8 {
        let mut names = std::collections::HashSet::new();
        for host in [1u8, 77, 200] {
            let src = ip(&format!("127.0.{net}.{host}"));
            names.insert(ask_name(Some(src), network).await.unwrap().0);
        }
        assert_eq!(names.len(), 1, "127.0.{net}.0/24 split over {names:?}");
        per_net.push(names.into_iter().next().unwrap());
    }
    let nets_used: std::collections::HashSet<_> = per_net.iter().collect();
    assert!(nets_used.len() >= 2, "{per_net:?}");

    // removing one server moves only its clients
    let victim = map[&ip("127.0.9.1")].clone();
    assert_eq!(c.reload(&cfg(Some(&victim))).await, "reload_applied");
    let mut moved_other = 0;
    for (src, before) in &map {
        let now = ask_name(Some(*src), client).await.unwrap().0;
        if *before == victim {
            assert_ne!(now, victim);
        } else if now != *before {
            moved_other += 1;
        }
    }
    assert_eq!(moved_other, 0, "clients of other servers moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_costs_no_failed_connection_and_returns() {
    let a = NamedBackend::start("a").await;
    let mut b = NamedBackend::start("b").await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::tcp(port, "p"))
        .pool(
            Pool::new("p")
                .set("slow_start", "0s")
                .health([
                    ("interval", "100ms".into()),
                    ("timeout", "100ms".into()),
                    ("rise", 2.into()),
                    ("fall", 2.into()),
                ])
                .server(server(&a))
                .server(server(&b)),
        )
        .build();
    let c = Convoy::start(BIN, &cfg).await;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (counts, failed) = spread(to, 100, 10).await;
    assert_eq!(failed, 0);
    assert!(counts.get("b").copied().unwrap_or(0) > 30, "{counts:?}");

    // Kill b. Before detection, connects to b are refused and retried on
    // a; after detection b is out of the tables. No client sees a failure.
    // (A connection b had already accepted when it died is lost, as with
    // any L4 balancer: its bytes were already relayed.)
    let b_addr = b.addr;
    b.stop().await;
    drop(b);
    let (counts, failed) = spread(to, 400, 8).await;
    assert_eq!(
        failed, 0,
        "failed connections after a server died: {counts:?}"
    );
    assert!(c.wait_event("server_down", Duration::from_secs(5)).await);
    let (counts, failed) = spread(to, 50, 5).await;
    assert_eq!((failed, counts.get("b")), (0, None), "{counts:?}");

    // It comes back on the same address: health checks bring it back.
    let _b2 = NamedBackend::start_on("b", b_addr).await;
    assert!(c.wait_event("server_up", Duration::from_secs(5)).await);
    let (counts, failed) = spread(to, 100, 10).await;
    assert_eq!(failed, 0);
    assert!(counts.get("b").copied().unwrap_or(0) > 20, "{counts:?}");
}

async fn single_mode(failback: &str) -> (Vec<String>, Convoy) {
    let mut s1 = NamedBackend::start("p1").await;
    let s2 = NamedBackend::start("p2").await;
    let s3 = NamedBackend::start("p3").await;
    let port = free_port();
    let cfg = Config::new()
        .listener(
            Listener::tcp(port, "p")
                .set("mode", "single")
                .set("failback", failback),
        )
        .pool(
            Pool::new("p")
                .health([
                    ("interval", "100ms".into()),
                    ("timeout", "100ms".into()),
                    ("rise", 2.into()),
                    ("fall", 2.into()),
                ])
                .server(server(&s3).set("priority", 3))
                .server(server(&s1).set("priority", 1))
                .server(server(&s2).set("priority", 2)),
        )
        .build();
    let c = Convoy::start(BIN, &cfg).await;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut seen = Vec::new();
    let (counts, _) = spread(to, 20, 4).await;
    assert_eq!(
        counts.get("p1"),
        Some(&20),
        "all traffic to priority 1: {counts:?}"
    );
    seen.push("p1".to_string());
    let addr1 = s1.addr;
    s1.stop().await;
    drop(s1);
    let (counts, failed) = spread(to, 20, 4).await;
    assert_eq!(failed, 0, "{counts:?} {}", c.stderr());
    assert_eq!(
        counts.get("p2"),
        Some(&20),
        "failover to priority 2: {counts:?}"
    );
    seen.push("p2".to_string());
    assert!(c.wait_event("server_down", Duration::from_secs(5)).await);
    let _s1 = NamedBackend::start_on("p1", addr1).await;
    assert!(c.wait_event("server_up", Duration::from_secs(5)).await);
    let (counts, failed) = spread(to, 20, 4).await;
    assert_eq!(failed, 0);
    assert_eq!(counts.len(), 1, "{counts:?}");
    seen.push(counts.into_keys().next().unwrap());
    drop((s2, s3));
    (seen, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_mode_fails_over_and_back_automatically() {
    let (seen, _c) = single_mode("automatic").await;
    assert_eq!(seen, ["p1", "p2", "p1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_mode_manual_failback_stays() {
    let (seen, _c) = single_mode("manual").await;
    assert_eq!(seen, ["p1", "p2", "p2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_server_keeps_its_connection_and_gets_no_new_ones() {
    let a = NamedBackend::start("a").await;
    let b = NamedBackend::start("b").await;
    let port = free_port();
    let cfg = |drain_b: bool| {
        let second = if drain_b {
            server(&b).set("drain", true)
        } else {
            server(&b)
        };
        Config::new()
            .listener(Listener::tcp(port, "p").set("affinity", "client"))
            .pool(Pool::new("p").server(server(&a)).server(second))
            .build()
    };
    let c = Convoy::start(BIN, &cfg(false)).await;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Find a client address that lands on b and keep its connection open.
    let mut held = None;
    for i in 1..=50u8 {
        let src = ip(&format!("127.0.3.{i}"));
        let (name, s) = ask_name(Some(src), to).await.unwrap();
        if name == "b" {
            held = Some((src, s));
            break;
        }
    }
    let (src, mut conn) = held.expect("some client maps to b");
    assert_eq!(c.reload(&cfg(true)).await, "reload_applied");
    // New connections, even from b's client, go elsewhere.
    for _ in 0..10 {
        assert_eq!(ask_name(Some(src), to).await.unwrap().0, "a");
    }
    // The open connection still works.
    conn.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    assert!(c.events("drain_finished").is_empty());
    drop(conn);
    assert!(
        c.wait_event("drain_finished", Duration::from_secs(5)).await,
        "{}",
        c.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drainstop_exits_after_last_connection() {
    let a = NamedBackend::start("a").await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::tcp(port, "p"))
        .pool(Pool::new("p").server(server(&a)))
        .build();
    let mut c = Convoy::start(BIN, &cfg).await;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, mut conn) = ask_name(None, to).await.unwrap();
    c.signal("QUIT");
    assert!(c.wait_event("drainstop", Duration::from_secs(5)).await);
    // No new connections...
    assert!(
        wait_until(Duration::from_secs(5), || std::net::TcpStream::connect(to)
            .is_err())
        .await
    );
    // ...the open one still works, and the node waits for it.
    conn.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
    assert_eq!(
        c.wait_exit(Duration::from_millis(300)).await,
        None,
        "exited with a connection open"
    );
    drop(conn);
    assert_eq!(c.wait_exit(Duration::from_secs(5)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_the_excess_cleanly() {
    let a = NamedBackend::start("a").await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::tcp(port, "p").set("max_connections", 2))
        .pool(Pool::new("p").server(server(&a)))
        .build();
    let c = Convoy::start(BIN, &cfg).await;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, c1) = ask_name(None, to).await.unwrap();
    let (_, c2) = ask_name(None, to).await.unwrap();
    assert!(
        ask_name(None, to).await.is_err(),
        "third connection must be refused"
    );
    assert!(
        c.wait_event("connection_refused", Duration::from_secs(2))
            .await
    );
    drop((c1, c2));
    assert!(
        wait_until(Duration::from_secs(5), || a
            .open
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0)
        .await
    );
    assert_eq!(ask_name(None, to).await.unwrap().0, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_down_is_one_event() {
    let mut a1 = NamedBackend::start("a1").await;
    let mut a2 = NamedBackend::start("a2").await;
    let b1 = NamedBackend::start("b1").await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::tcp(port, "p"))
        .pool(
            Pool::new("p")
                .health([("interval", "100ms".into()), ("timeout", "100ms".into())])
                .server(server(&a1).set("zone", "host-a"))
                .server(server(&a2).set("zone", "host-a"))
                .server(server(&b1).set("zone", "host-b")),
        )
        .build();
    let c = Convoy::start(BIN, &cfg).await;
    a1.stop().await;
    a2.stop().await;
    assert!(
        c.wait_events("server_down", 2, Duration::from_secs(5))
            .await
    );
    assert!(c.wait_event("zone_down", Duration::from_secs(2)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let z = c.events("zone_down");
    assert_eq!(z.len(), 1, "{z:?}");
    assert_eq!(z[0]["zone"], "host-a");
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (counts, failed) = spread(to, 20, 4).await;
    assert_eq!((failed, counts.get("b1")), (0, Some(&20)));
    // The query view groups servers by zone.
    c.signal("USR2");
    assert!(c.wait_event("query", Duration::from_secs(2)).await);
    let q: serde_json::Value =
        serde_json::from_str(c.events("query")[0]["state"].as_str().unwrap()).unwrap();
    let zones = &q["pools"][0]["zones"];
    assert_eq!(zones[0]["zone"], "host-a");
    assert_eq!(zones[0]["down"], true);
    assert_eq!(zones[0]["servers"].as_array().unwrap().len(), 2);
    assert_eq!(zones[1]["zone"], "host-b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_the_running_config() {
    let a = NamedBackend::start("a").await;
    let port = free_port();
    let pool = Pool::new("p").server(server(&a));
    let cfg = Config::new()
        .listener(Listener::tcp(port, "p"))
        .pool(pool.clone())
        .build();
    let c = Convoy::start(BIN, &cfg).await;
    // The listener names a pool that does not exist.
    let bad = Config::new()
        .listener(Listener::tcp(port, "missing"))
        .pool(pool)
        .build();
    assert_eq!(c.reload(&bad).await, "reload_refused");
    let ev = &c.events("reload_refused")[0];
    assert!(
        ev["error"]
            .as_str()
            .unwrap()
            .contains("unknown pool \"missing\""),
        "{ev}"
    );
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(ask_name(None, to).await.unwrap().0, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_headers_reach_the_server() {
    use tokio::net::TcpListener;
    for version in ["v1", "v2"] {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // The health probe connects too: take the first connection
            // that sends a header.
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut b = [0u8; 256];
                loop {
                    let n = s.read(&mut b).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&b[..n]);
                    if let Ok(Some(h)) = convoy_l4::proxy_protocol::parse(&buf) {
                        return (h, buf[h.len..].to_vec());
                    }
                }
            }
        });
        let port = free_port();
        let cfg = Config::new()
            .listener(Listener::tcp(port, "p").set("proxy_protocol", version))
            .pool(Pool::new("p").server(Server::at(addr)))
            .build();
        let _c = Convoy::start(BIN, &cfg).await;
        let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut s = convoy_testkit::connect_from(ip("127.0.0.42"), to)
            .await
            .unwrap();
        let local = s.local_addr().unwrap();
        s.write_all(b"hello").await.unwrap();
        let (h, rest) = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        let (src, dst) = h.addrs.unwrap();
        assert_eq!(src, local, "{version}");
        assert_eq!(dst, to, "{version}");
        assert!(b"hello".starts_with(&rest), "{version}: {rest:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_server_ramps_up_with_slow_start() {
    let a = NamedBackend::start("a").await;
    let mut b = NamedBackend::start("b").await;
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::tcp(port, "p"))
        .pool(
            Pool::new("p")
                .set("slow_start", "60s")
                .health([
                    ("interval", "100ms".into()),
                    ("timeout", "100ms".into()),
                    ("rise", 1.into()),
                    ("fall", 1.into()),
                ])
                .server(server(&a))
                .server(server(&b)),
        )
        .build();
    let c = Convoy::start(BIN, &cfg).await;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (counts, _) = spread(to, 200, 10).await;
    assert!(counts["b"] > 80, "equal weights at start: {counts:?}");
    let addr = b.addr;
    b.stop().await;
    drop(b);
    assert!(c.wait_event("server_down", Duration::from_secs(5)).await);
    let _b = NamedBackend::start_on("b", addr).await;
    assert!(c.wait_event("server_up", Duration::from_secs(5)).await);
    // In the first seconds of a 60 s ramp b gets about 10% (weight ramps
    // from a tenth), far from its steady 50%.
    let (counts, failed) = spread(to, 400, 10).await;
    assert_eq!(failed, 0);
    let share = counts.get("b").copied().unwrap_or(0) as f64 / 400.0;
    assert!(
        share > 0.02 && share < 0.25,
        "share during slow start {share} ({counts:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_server_closes_its_connections() {
    let a = NamedBackend::start("a").await;
    let b = NamedBackend::start("b").await;
    let port = free_port();
    let cfg = |b_on: bool| {
        Config::new()
            .listener(Listener::tcp(port, "p"))
            .pool(
                Pool::new("p")
                    .server(server(&a))
                    .server(server(&b).set("enabled", b_on)),
            )
            .build()
    };
    let c = Convoy::start(BIN, &cfg(true)).await;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut held = None;
    for _ in 0..10 {
        let (name, s) = ask_name(None, to).await.unwrap();
        if name == "b" {
            held = Some(s);
            break;
        }
    }
    let mut conn = held.expect("a connection to b");
    assert_eq!(c.reload(&cfg(false)).await, "reload_applied");
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "connection to a disabled server stayed open: {r:?}"
    );
    assert_eq!(ask_name(None, to).await.unwrap().0, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_drainstop_stops_at_once() {
    let a = NamedBackend::start("a").await;
    let port = free_port();
    let cfg = Config::new()
        .node("drain_timeout", "1h")
        .listener(Listener::tcp(port, "p"))
        .pool(Pool::new("p").server(server(&a)))
        .build();
    let mut c = Convoy::start(BIN, &cfg).await;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, mut conn) = ask_name(None, to).await.unwrap();
    c.signal("QUIT");
    assert!(c.wait_event("drainstop", Duration::from_secs(5)).await);
    c.signal("TERM");
    assert_eq!(c.wait_exit(Duration::from_secs(5)).await, Some(0));
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_range_with_same_port_reaches_the_matching_server_port() {
    let (p1, p2) = convoy_testkit::free_port_pair();
    // Servers listen on the same ports on another loopback address.
    let b1 = NamedBackend::start_on("port1", format!("127.0.0.2:{p1}").parse().unwrap()).await;
    let b2 = NamedBackend::start_on("port2", format!("127.0.0.2:{p2}").parse().unwrap()).await;
    let cfg = Config::new()
        .listener(
            Listener::tcp(p1, "p")
                .set("address", format!("127.0.0.1:{p1}-{p2}"))
                .set("same_port", true),
        )
        .pool(Pool::new("p").server(Server::at(b1.addr)))
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    for (port, want) in [(p1, "port1"), (p2, "port2")] {
        let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert_eq!(ask_name(None, to).await.unwrap().0, want);
    }
    drop(b2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drainstop_waits_for_connections_of_a_reloaded_listener() {
    let a = NamedBackend::start("a").await;
    let port = free_port();
    let cfg = |idle: &str| {
        Config::new()
            .listener(Listener::tcp(port, "p").set("idle_timeout", idle))
            .pool(Pool::new("p").server(server(&a)))
            .build()
    };
    let mut c = Convoy::start(BIN, &cfg("10m")).await;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, mut old_conn) = ask_name(None, to).await.unwrap();
    // The listener changes: new accept loop, same socket, old connection kept.
    assert_eq!(c.reload(&cfg("9m")).await, "reload_applied");
    assert_eq!(ask_name(None, to).await.unwrap().0, "a");
    c.signal("QUIT");
    assert!(c.wait_event("drainstop", Duration::from_secs(5)).await);
    assert_eq!(
        c.wait_exit(Duration::from_millis(300)).await,
        None,
        "exited with a connection open"
    );
    old_conn.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    old_conn.read_exact(&mut b).await.unwrap();
    drop(old_conn);
    assert_eq!(c.wait_exit(Duration::from_secs(5)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_shows_connections_bytes_and_the_single_server_in_use() {
    let s1 = NamedBackend::start("p1").await;
    let s2 = NamedBackend::start("p2").await;
    let port = free_port();
    let cfg = Config::new()
        .listener(
            Listener::tcp(port, "p")
                .set("name", "front")
                .set("mode", "single"),
        )
        .pool(
            Pool::new("p")
                .health([("check", "none".into())])
                .server(server(&s2).set("priority", 2))
                .server(server(&s1).set("priority", 1)),
        )
        .build();
    let c = Convoy::start(BIN, &cfg).await;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (counts, failed) = spread(to, 5, 1).await;
    assert_eq!((counts.get("p1"), failed), (Some(&5), 0), "{counts:?}");
    let out = c.ctl(BIN, &["query"]);
    let text = String::from_utf8_lossy(&out.stdout);
    // An L4 pool is shown with connections and bytes, not HTTP columns.
    assert!(
        text.contains("pool p (TCP/UDP): 2 available, affinity none; single: front uses p1"),
        "{text}"
    );
    for col in ["PRIO", "CONNS", "TOTAL", "FAILED", "BYTES-IN", "BYTES-OUT"] {
        assert!(text.contains(col), "{col}: {text}");
    }
    assert!(!text.contains("P99MS"), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains("p1 *"))
        .unwrap_or_else(|| panic!("the server in use is marked: {text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // ZONE SERVER * ADDRESS STATE WEIGHT PRIO CONNS TOTAL FAILED IN OUT
    assert_eq!(cells[cells.len() - 4], "5", "total connections: {row}");
    assert_ne!(cells[cells.len() - 1], "0", "bytes out: {row}");
    // The JSON says the same.
    let out = c.ctl(BIN, &["--json", "query"]);
    let q: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(q["pools"][0]["serves"], "l4");
    assert_eq!(q["pools"][0]["single"]["front"], "p1");
}

/// A server whose side of each accepted connection goes to the test (its
/// pool has no health check: every connection it gets is a client's).
async fn held_backend() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<tokio::net::TcpStream>,
    tokio::task::JoinHandle<()>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            if tx.send(s).is_err() {
                return;
            }
        }
    });
    (addr, rx, task)
}

/// Reads exactly `want` within 5 s.
async fn expect(s: &mut tokio::net::TcpStream, want: &[u8]) {
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("bytes in time")
        .unwrap();
    assert_eq!(got, want);
}

/// Waits (up to 10 s) for the end of stream; a clean end, no bytes.
async fn expect_end(s: &mut tokio::net::TcpStream) {
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await;
    assert!(matches!(r, Ok(Ok(0))), "not a clean end: {r:?}");
}

/// A listener "db" parking after 200 ms, idle timeout 3 s.
fn parking_listener(port: u16) -> Listener {
    Listener::tcp(port, "p")
        .set("name", "db")
        .set("park_after", "200ms")
        .set("idle_timeout", "3s")
}

const PARKED: &str = r#"convoy_listener_parked_connections{listener="db",protocol="tcp"}"#;

async fn parked(c: &Convoy, n: u64) -> bool {
    wait_until(Duration::from_secs(5), || c.metric(PARKED) == Some(n)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_are_parked_woken_by_either_side_and_timed_out() {
    let (addr, mut accepted, _backend) = held_backend().await;
    let port = free_port();
    let cfg = Config::new()
        .listener(parking_listener(port))
        .pool(
            Pool::new("p")
                .health([("check", "none".into())])
                .server(Server::new("a", addr)),
        )
        .build();
    let c = Convoy::start(BIN, &cfg).await;
    let mut pairs = Vec::new();
    for i in 0..8u8 {
        let mut client = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        client.write_all(&[b'h', i]).await.unwrap();
        let mut server = accepted.recv().await.unwrap();
        expect(&mut server, &[b'h', i]).await;
        server.write_all(&[b'o', i]).await.unwrap();
        expect(&mut client, &[b'o', i]).await;
        pairs.push((client, server));
    }
    assert!(parked(&c, 8).await, "{:?}", c.metric(PARKED));
    let db = r#"{listener="db",protocol="tcp"}"#;
    assert_eq!(
        c.metric(&format!("convoy_listener_connections{db}")),
        Some(8)
    );

    // The client speaks first: relayed again, both ways.
    let (client, server) = &mut pairs[0];
    client.write_all(b"again").await.unwrap();
    expect(server, b"again").await;
    server.write_all(b"back").await.unwrap();
    expect(client, b"back").await;
    // The server speaks first (a push, a late greeting).
    let (client, server) = &mut pairs[1];
    server.write_all(b"push").await.unwrap();
    expect(client, b"push").await;
    // The server half-closes while parked: the client sees the end, and
    // its own late bytes still reach the server.
    let (client, server) = &mut pairs[2];
    server.shutdown().await.unwrap();
    expect_end(client).await;
    client.write_all(b"last").await.unwrap();
    expect(server, b"last").await;
    client.shutdown().await.unwrap();
    expect_end(server).await;
    // The client half-closes while parked: the server reads the end and
    // still answers.
    let (client, server) = &mut pairs[3];
    client.shutdown().await.unwrap();
    expect_end(server).await;
    server.write_all(b"bye").await.unwrap();
    server.shutdown().await.unwrap();
    expect(client, b"bye").await;
    expect_end(client).await;
    let touched = Instant::now();
    // 0 and 1 are parked again; 2 and 3 are over.
    assert!(parked(&c, 6).await, "{:?}", c.metric(PARKED));
    assert_eq!(
        c.metric(&format!("convoy_listener_connections{db}")),
        Some(6)
    );

    // The idle timeout holds, counted from each one's last traffic: the
    // untouched ones close first, then 0 and 1 about 3 s after theirs.
    let (client, server) = &mut pairs[5];
    expect_end(client).await;
    expect_end(server).await;
    let (client, _) = &mut pairs[1];
    expect_end(client).await;
    let t = touched.elapsed();
    assert!(
        t >= Duration::from_millis(2500) && t < Duration::from_secs(6),
        "closed {t:?} after its last traffic"
    );
    assert!(parked(&c, 0).await, "{:?}", c.metric(PARKED));
    let open = format!("convoy_listener_connections{db}");
    assert!(wait_until(Duration::from_secs(5), || c.metric(&open) == Some(0)).await);
    // Each connection's bytes were counted once, whole, across its parks.
    let a = r#"{pool="p",server="a",zone="default"}"#;
    let up = format!("convoy_server_client_to_server_bytes_total{a}");
    let down = format!("convoy_server_server_to_client_bytes_total{a}");
    let want = (Some(16 + 5 + 4), Some(16 + 4 + 4 + 3));
    let counted = wait_until(Duration::from_secs(5), || {
        (c.metric(&up), c.metric(&down)) == want
    })
    .await;
    assert!(counted, "{:?}", (c.metric(&up), c.metric(&down)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_kill_closes_only_its_own_parked_connections() {
    let (addr_a, mut acc_a, _ta) = held_backend().await;
    let (addr_b, mut acc_b, _tb) = held_backend().await;
    let port = free_port();
    let cfg = |b_on: bool| {
        Config::new()
            .listener(parking_listener(port).set("idle_timeout", "60s"))
            .pool(
                Pool::new("p")
                    .health([("check", "none".into())])
                    .set("algorithm", "round_robin")
                    .server(Server::new("a", addr_a))
                    .server(Server::new("b", addr_b).set("enabled", b_on)),
            )
            .build()
    };
    let c = Convoy::start(BIN, &cfg(true)).await;
    let mut on_a = None;
    let mut on_b = None;
    for _ in 0..2 {
        let mut client = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        client.write_all(b"hi").await.unwrap();
        tokio::select! {
            Some(mut s) = acc_a.recv() => { expect(&mut s, b"hi").await; on_a = Some((client, s)) }
            Some(mut s) = acc_b.recv() => { expect(&mut s, b"hi").await; on_b = Some((client, s)) }
        }
    }
    let (mut ca, mut sa) = on_a.expect("a connection to a");
    let (mut cb, _sb) = on_b.expect("a connection to b");
    assert!(parked(&c, 2).await, "{:?}", c.metric(PARKED));
    assert_eq!(c.reload(&cfg(false)).await, "reload_applied");
    let t = Instant::now();
    expect_end(&mut cb).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(parked(&c, 1).await, "{:?}", c.metric(PARKED));
    // a's connection stayed parked and still works.
    ca.write_all(b"still").await.unwrap();
    expect(&mut sa, b"still").await;
    // A listener disable closes the rest at once.
    assert!(parked(&c, 1).await);
    let out = c.ctl(BIN, &["listener", "db", "disable"]);
    assert!(out.status.success(), "{out:?}");
    let t = Instant::now();
    expect_end(&mut ca).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(parked(&c, 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_stop_relays_parked_connections_until_they_close() {
    let (addr, mut accepted, _backend) = held_backend().await;
    let port = free_port();
    let cfg = Config::new()
        .listener(parking_listener(port).set("idle_timeout", "60s"))
        .pool(
            Pool::new("p")
                .health([("check", "none".into())])
                .server(Server::new("a", addr)),
        )
        .build();
    let mut c = Convoy::start(BIN, &cfg).await;
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    client.write_all(b"hi").await.unwrap();
    let mut server = accepted.recv().await.unwrap();
    expect(&mut server, b"hi").await;
    assert!(parked(&c, 1).await);
    c.signal("QUIT");
    assert!(c.wait_event("drainstop", Duration::from_secs(5)).await);
    // Handed back by the stopping listener, it is relayed on, and the
    // node waits for it.
    client.write_all(b"during").await.unwrap();
    expect(&mut server, b"during").await;
    server.write_all(b"ok").await.unwrap();
    expect(&mut client, b"ok").await;
    assert_eq!(c.wait_exit(Duration::from_millis(500)).await, None);
    drop(client);
    expect_end(&mut server).await;
    drop(server);
    assert_eq!(c.wait_exit(Duration::from_secs(5)).await, Some(0));
}
