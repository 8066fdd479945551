//! UDP through convoy: replies reach the right client, client affinity
//! keeps each client on one server, flows fail over when a server is
//! taken out.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use convoy_testkit::config::{Config, Listener, Pool, Server};
use convoy_testkit::{free_udp_port, Convoy, UdpBackend};
use tokio::net::UdpSocket;

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

async fn ask(sock: &UdpSocket, to: SocketAddr, msg: &str) -> String {
    for _ in 0..5 {
        sock.send_to(msg.as_bytes(), to).await.unwrap();
        let mut buf = [0u8; 1500];
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await
        {
            assert_eq!(from, to, "reply must come from the listener address");
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    panic!("no UDP reply for {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_round_trip_with_client_affinity() {
    let bs = [
        UdpBackend::start("u1").await,
        UdpBackend::start("u2").await,
        UdpBackend::start("u3").await,
    ];
    let port = free_udp_port();
    // With a `victim`, every server says whether it is enabled: all but
    // the victim.
    let cfg = |victim: Option<&str>| {
        let unchecked = Pool::new("dns").health([("check", "none".into())]);
        let pool = bs.iter().fold(unchecked, |p, b| {
            let s = Server::new(&b.name, b.addr);
            p.server(match victim {
                Some(v) => s.set("enabled", b.name != v),
                None => s,
            })
        });
        Config::new()
            .listener(
                Listener::udp(port, "dns")
                    .set("affinity", "client")
                    .set("idle_timeout", "2s"),
            )
            .pool(pool)
            .build()
    };
    let c = Convoy::start(BIN, &cfg(None)).await;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut owner = HashMap::new();
    for i in 1..=30u8 {
        let sock = UdpSocket::bind(format!("127.0.4.{i}:0")).await.unwrap();
        let mut names = HashSet::new();
        for j in 0..3 {
            let msg = format!("q{i}-{j}");
            let reply = ask(&sock, to, &msg).await;
            let (name, echoed) = reply.split_once(':').unwrap();
            assert_eq!(echoed, msg, "reply reached the wrong client");
            names.insert(name.to_string());
        }
        assert_eq!(names.len(), 1, "client 127.0.4.{i} moved: {names:?}");
        owner.insert(i, names.into_iter().next().unwrap());
    }
    let used: HashSet<_> = owner.values().collect();
    assert!(used.len() >= 2, "{owner:?}");

    // Disable one server: its clients' next datagrams go elsewhere, the
    // others stay.
    let victim = owner[&1].clone();
    assert_eq!(c.reload(&cfg(Some(&victim))).await, "reload_applied");
    for i in 1..=30u8 {
        let sock = UdpSocket::bind(format!("127.0.4.{i}:0")).await.unwrap();
        let reply = ask(&sock, to, "again").await;
        let name = reply.split_once(':').unwrap().0;
        if owner[&i] == victim {
            assert_ne!(name, victim);
        } else {
            assert_eq!(name, owner[&i]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_port_range_with_same_port() {
    // Two consecutive UDP ports free on 127.0.0.1 and 127.0.0.2.
    let (p1, p2) = loop {
        let p = free_udp_port();
        let ok = [
            ("127.0.0.1", p),
            ("127.0.0.1", p + 1),
            ("127.0.0.2", p),
            ("127.0.0.2", p + 1),
        ]
        .iter()
        .all(|a| std::net::UdpSocket::bind(a).is_ok());
        if ok && p < u16::MAX {
            break (p, p + 1);
        }
    };
    let mut servers = Vec::new();
    for (port, name) in [(p1, "first"), (p2, "second")] {
        let s = UdpSocket::bind(("127.0.0.2", port)).await.unwrap();
        servers.push(tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = s.recv_from(&mut buf).await {
                let mut out = format!("{name}:").into_bytes();
                out.extend_from_slice(&buf[..n]);
                let _ = s.send_to(&out, peer).await;
            }
        }));
    }
    let cfg = Config::new()
        .listener(
            Listener::udp(p1, "u")
                .set("address", format!("127.0.0.1:{p1}-{p2}"))
                .set("same_port", true),
        )
        .pool(
            Pool::new("u")
                .health([("check", "none".into())])
                .server(Server::at(SocketAddr::from(([127, 0, 0, 2], p1)))),
        )
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (port, want) in [(p1, "first"), (p2, "second")] {
        let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert_eq!(ask(&sock, to, "hi").await, format!("{want}:hi"));
    }
    for s in servers {
        s.abort();
    }
}

/// Open UDP flows of the listener, from `convoy ctl query`.
fn active(c: &Convoy) -> u64 {
    let o = std::process::Command::new(BIN)
        .args(["ctl", "--admin", &c.admin_addr(), "--json", "query"])
        .output()
        .unwrap();
    let q: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    q["listeners"][0]["active"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_ends_once_its_answers_came() {
    let b = UdpBackend::start("dns").await;
    let port = free_udp_port();
    let cfg = |responses: Option<u32>| {
        let mut l = Listener::udp(port, "dns").set("idle_timeout", "30s");
        if let Some(r) = responses {
            l = l.set("responses", i64::from(r));
        }
        Config::new()
            .listener(l)
            .pool(
                Pool::new("dns")
                    .health([("check", "none".into())])
                    .server(Server::at(b.addr)),
            )
            .build()
    };
    // responses = 1 (DNS): 50 queries, each from a new port, each
    // answered; no flow stays for the 30 s idle timeout.
    let c = Convoy::start(BIN, &cfg(Some(1))).await;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for i in 0..50 {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(ask(&s, to, &format!("q{i}")).await, format!("dns:q{i}"));
    }
    // One client asking twice before reading: both answered.
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(b"a", to).await.unwrap();
    s.send_to(b"aaaa", to).await.unwrap();
    let mut got = HashSet::new();
    for _ in 0..2 {
        let mut buf = [0u8; 64];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut buf))
            .await
            .expect("both answers")
            .unwrap();
        got.insert(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(
        got,
        HashSet::from(["dns:a".to_string(), "dns:aaaa".to_string()])
    );
    assert!(
        convoy_testkit::wait_until(Duration::from_secs(3), || active(&c) == 0).await,
        "flows still open: {}",
        active(&c)
    );
    drop(c);
    // responses = 0 (syslog): forwarded, and the flow ends at once.
    let c = Convoy::start(BIN, &cfg(Some(0))).await;
    for i in 0..20 {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.send_to(format!("log {i}").as_bytes(), to).await.unwrap();
    }
    assert!(
        convoy_testkit::wait_until(Duration::from_secs(3), || active(&c) == 0).await,
        "flows still open: {}",
        active(&c)
    );
    // Without `responses`, a flow waits for its idle timeout.
    drop(c);
    let c = Convoy::start(BIN, &cfg(None)).await;
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(ask(&s, to, "x").await, "dns:x");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(active(&c), 1);
}
