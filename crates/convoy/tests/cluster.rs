//! A cluster of real convoy processes on loopback addresses (127.0.0.1,
//! .2, .3): membership and convergence, a killed node (kill -9) dropped
//! by the others, cluster-wide commands, shared health, a mismatched
//! config isolated, a duplicate priority refused, and forged, replayed
//! and oversized datagrams refused and counted.

use std::time::Duration;

use convoy_testkit::{free_port, free_udp_port, wait_until, Convoy};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_convoy");
const KEY: &str = "a cluster key for the tests, 32+ bytes long";

/// A node's config: one TCP listener on its own address (same port on
/// every node), a pool of `servers` (addresses nobody listens on unless
/// the test says), cluster settings on 127.0.0.N:`cport`.
struct Node {
    n: u8,
    cport: u16,
    lport: u16,
    priority: u32,
    seeds: Vec<String>,
    weight: u32,
    servers: Vec<String>,
    key: std::path::PathBuf,
}

impl Node {
    fn config(&self) -> String {
        let servers: String = self
            .servers
            .iter()
            .enumerate()
            .map(|(i, a)| {
                format!(
                    "[[pools.p.servers]]\nname = \"s{}\"\naddress = \"{a}\"\nweight = {}\n",
                    i + 1,
                    self.weight
                )
            })
            .collect();
        let seeds: Vec<String> = self.seeds.iter().map(|s| format!("\"{s}\"")).collect();
        format!(
            "[node]\nname = \"node-{n}\"\n\n\
             [[listeners]]\nname = \"db\"\naddress = \"127.0.0.{n}:{lport}\"\npool = \"p\"\n\n\
             [pools.p]\nhealth = {{ interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }}\n{servers}\n\
             [cluster]\npriority = {prio}\naddress = \"127.0.0.{n}:{cport}\"\nseeds = [{seeds}]\n\
             key_file = \"{key}\"\nprobe_interval = \"100ms\"\nsuspicion = \"300ms\"\n",
            n = self.n,
            lport = self.lport,
            prio = self.priority,
            cport = self.cport,
            seeds = seeds.join(", "),
            key = self.key.display(),
        )
    }
}

fn ctl(c: &Convoy, args: &[&str]) -> (i32, Value) {
    let out = std::process::Command::new(BIN)
        .args(["ctl", "--admin", &c.admin_addr(), "--json"])
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

fn cluster(c: &Convoy) -> Value {
    ctl(c, &["cluster"]).1
}

/// The members that `c` sees in `state`.
fn members_in(v: &Value, state: &str) -> Vec<String> {
    v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["state"] == state)
        .filter_map(|m| m["name"].as_str().map(String::from))
        .collect()
}

async fn converged(c: &Convoy, n: usize) -> bool {
    wait_until(Duration::from_secs(15), || {
        let v = cluster(c);
        v["state"] == "converged" && members_in(&v, "converged").len() == n
    })
    .await
}

/// Three nodes: priorities 1-3, the same listener port and pool.
async fn three(servers: &[String]) -> (Vec<Convoy>, Vec<Node>) {
    let key = convoy_testkit::write_temp("cluster.key", KEY);
    let lport = free_port();
    let cports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let first = format!("127.0.0.1:{}", cports[0]);
    let mut nodes = Vec::new();
    let mut procs = Vec::new();
    for n in 1..=3u8 {
        let node = Node {
            n,
            cport: cports[usize::from(n - 1)],
            lport,
            priority: u32::from(n),
            seeds: if n == 1 { vec![] } else { vec![first.clone()] },
            weight: 1,
            servers: servers.to_vec(),
            key: key.clone(),
        };
        procs.push(Convoy::start(BIN, &node.config()).await);
        nodes.push(node);
    }
    (procs, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_split_the_buckets_and_drop_a_killed_one() {
    let (procs, _) = three(&["127.0.0.1:1".into()]).await;
    for p in &procs {
        assert!(converged(p, 3).await, "{:#}", cluster(p));
    }
    // Every node agrees on the split: together they own every bucket,
    // each about a third.
    let v = cluster(&procs[0]);
    let owned: Vec<u64> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["buckets"]["db"].as_u64().unwrap())
        .collect();
    assert_eq!(owned.iter().sum::<u64>(), 4096, "{v:#}");
    assert!(owned.iter().all(|n| (1100..=1650).contains(n)), "{owned:?}");
    for p in &procs[1..] {
        let w = cluster(p);
        for m in w["members"].as_array().unwrap() {
            let same = v["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == m["name"])
                .unwrap();
            assert_eq!(m["buckets"], same["buckets"], "nodes disagree");
        }
    }
    assert!(
        procs[0]
            .wait_event("cluster_converged", Duration::from_secs(1))
            .await
    );
    // kill -9 the third: the others drop it and converge on two.
    let dead = procs[2].pid();
    assert!(std::process::Command::new("kill")
        .args(["-9", &dead.to_string()])
        .status()
        .unwrap()
        .success());
    for p in &procs[..2] {
        assert!(converged(p, 2).await, "{:#}", cluster(p));
        let v = cluster(p);
        assert!(
            !v["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "node-3"),
            "{v:#}"
        );
    }
    let left = procs[0].events("cluster_member");
    assert!(
        left.iter()
            .any(|e| e["member"] == "node-3" && e["to"] == "left"),
        "{left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_health_are_shared_by_the_cluster() {
    // s1 listens nowhere: down everywhere; s2 is a live backend.
    let backend = convoy_testkit::NamedBackend::start("s2").await;
    let servers = ["127.0.0.1:1".to_string(), backend.addr.to_string()];
    let (procs, _) = three(&servers).await;
    for p in &procs {
        assert!(converged(p, 3).await, "{:#}", cluster(p));
    }
    // The dead server is down for the cluster, on every node.
    for p in &procs {
        assert!(
            wait_until(Duration::from_secs(10), || cluster(p)["down"]
                .as_array()
                .is_some_and(|d| d.iter().any(|s| s == "p/s1")))
            .await,
            "{:#}",
            cluster(p)
        );
        assert!(
            p.events("server_down")
                .iter()
                .any(|e| e["server"] == "s1" && e["source"] == "cluster"),
            "the health in force is the cluster's verdict"
        );
    }
    // A command with --cluster on node 2 is applied by every node.
    let (code, v) = ctl(&procs[1], &["--cluster", "server", "p", "s2", "drain"]);
    assert_eq!(code, 0, "{v:#}");
    let mut applied: Vec<&str> = v["applied"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    applied.sort();
    assert_eq!(applied, ["node-1", "node-2", "node-3"], "{v:#}");
    for p in &procs {
        assert!(
            wait_until(Duration::from_secs(5), || {
                let q = ctl(p, &["query"]).1;
                q["pools"][0]["zones"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|z| z["servers"].as_array().cloned().unwrap_or_default())
                    .any(|s| s["name"] == "s2" && s["admin"] == "draining")
            })
            .await,
            "{:#}",
            ctl(p, &["query"]).1
        );
    }
    // A node drain-stopped by name from another: it hands its buckets
    // over and stops; the others own them all.
    let (code, v) = ctl(&procs[0], &["cluster", "drainstop", "node-3"]);
    assert_eq!(code, 0, "{v:#}");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let v = cluster(&procs[0]);
            let m = v["members"].as_array().cloned().unwrap_or_default();
            m.iter()
                .any(|x| x["name"] == "node-3" && x["state"] == "draining")
                && m.iter()
                    .filter(|x| x["name"] != "node-3")
                    .map(|x| x["buckets"]["db"].as_u64().unwrap_or(0))
                    .sum::<u64>()
                    == 4096
        })
        .await,
        "{:#}",
        cluster(&procs[0])
    );
    assert!(
        procs[2]
            .wait_event("drainstop", Duration::from_secs(5))
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_node_and_a_duplicate_priority_take_no_flows() {
    let (procs, nodes) = three(&["127.0.0.1:1".into()]).await;
    for p in &procs {
        assert!(converged(p, 3).await);
    }
    // A fourth node whose pool weights differ.
    let odd = Node {
        n: 4,
        cport: free_udp_port(),
        priority: 4,
        weight: 2,
        seeds: vec![format!("127.0.0.1:{}", nodes[0].cport)],
        ..clone_node(&nodes[0])
    };
    let d = Convoy::start(BIN, &odd.config()).await;
    assert!(
        wait_until(Duration::from_secs(10), || cluster(&d)["state"]
            == "mismatched")
        .await,
        "{:#}",
        cluster(&d)
    );
    assert_eq!(cluster(&d)["differs"], serde_json::json!(["pools.p"]));
    assert!(
        d.wait_event("cluster_mismatched", Duration::from_secs(2))
            .await
    );
    let ev = &d.events("cluster_mismatched")[0];
    assert_eq!(ev["differs"], "pools.p", "the event names the key");
    assert!(converged(&procs[0], 3).await, "the others go on");
    let v = cluster(&procs[0]);
    let m = v["members"].as_array().unwrap();
    let dm = m.iter().find(|x| x["name"] == "node-4").unwrap();
    assert_eq!(
        (dm["state"].as_str(), dm["buckets"]["db"].as_u64()),
        (Some("mismatched"), Some(0))
    );
    drop(d);
    // A fifth node with node 1's priority: refused (it started later).
    let dup = Node {
        n: 5,
        cport: free_udp_port(),
        priority: 1,
        seeds: vec![format!("127.0.0.1:{}", nodes[0].cport)],
        ..clone_node(&nodes[0])
    };
    let e = Convoy::start(BIN, &dup.config()).await;
    assert!(
        wait_until(Duration::from_secs(10), || cluster(&e)["state"]
            == "conflict")
        .await,
        "{:#}",
        cluster(&e)
    );
    assert!(
        e.wait_event("cluster_conflict", Duration::from_secs(2))
            .await
    );
    assert!(converged(&procs[0], 3).await, "node 1 keeps its place");
}

fn clone_node(n: &Node) -> Node {
    Node {
        n: n.n,
        cport: n.cport,
        lport: n.lport,
        priority: n.priority,
        seeds: n.seeds.clone(),
        weight: n.weight,
        servers: n.servers.clone(),
        key: n.key.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_oversized_datagrams_are_refused() {
    use convoy_cluster::envelope::Envelope;
    let (procs, nodes) = three(&["127.0.0.1:1".into()]).await;
    assert!(converged(&procs[0], 3).await);
    let target = format!("127.0.0.1:{}", nodes[0].cport);
    let sock = std::net::UdpSocket::bind("127.0.0.9:0").unwrap();
    // Garbage, and a datagram over the size limit.
    sock.send_to(&[b'x'; 100], &target).unwrap();
    sock.send_to(&vec![7u8; 1500], &target).unwrap();
    // Sealed with another key: forged.
    let mut forger = Envelope::new(b"someone else's key, 32 bytes long", 42, 1);
    let mut d = Vec::new();
    forger.seal(
        1,
        b"\x00\x00\x00\x00\x00\x00\x00\x09\x00\x00\x00\x01hi",
        &mut d,
    );
    sock.send_to(&d, &target).unwrap();
    // With the right key, sent twice: the copy is a replay.
    let mut insider = Envelope::new(KEY.as_bytes(), 43, 1);
    insider.seal(9, b"unknown kind: ignored", &mut d);
    sock.send_to(&d, &target).unwrap();
    sock.send_to(&d, &target).unwrap();
    let refused = |r: &str| cluster(&procs[0])["refused"][r].as_u64().unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(5), || refused("bad_tag") >= 1
            && refused("replay") >= 1
            && refused("malformed") >= 1
            && refused("foreign") >= 1)
        .await,
        "{:#}",
        cluster(&procs[0])
    );
    assert!(
        procs[0]
            .wait_event("cluster_refused", Duration::from_secs(2))
            .await
    );
    // None of it changed the cluster.
    assert!(converged(&procs[0], 3).await);
    let metrics = std::process::Command::new(BIN)
        .args(["ctl", "--admin", &procs[0].admin_addr(), "metrics"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.lines().any(
            |l| l.starts_with("convoy_cluster_refused_total{reason=\"bad_tag\"} ")
                && !l.ends_with(" 0")
        ),
        "{text}"
    );
    assert!(
        text.contains("convoy_cluster_members{state=\"converged\"} 3"),
        "{text}"
    );
}

/// Status of `GET /` on `addr` (a new connection each time, from
/// 127.0.0.1 unless `from` says).
async fn get_status(addr: &str) -> u16 {
    get_status_from("127.0.0.1", addr).await
}

async fn get_status_from(from: &str, addr: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = convoy_testkit::connect_from(from.parse().unwrap(), addr.parse().unwrap())
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_rate_limit_holds_over_the_whole_cluster() {
    let origin = convoy_testkit::http::HttpOrigin::start("o", Duration::ZERO).await;
    let key = convoy_testkit::write_temp("cluster.key", KEY);
    let (lport, c1, c2) = (free_port(), free_udp_port(), free_udp_port());
    let cfg = |n: u8, cport: u16, seeds: &str| {
        format!(
            "[node]\nname = \"node-{n}\"\n\
             [[listeners]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"127.0.0.{n}:{lport}\"\npool = \"p\"\n\
             rate_limit = {{ per_second = 0.2, burst = 4 }}\n\
             [pools.p]\n[[pools.p.servers]]\nname = \"o\"\naddress = \"{}\"\n\
             [cluster]\npriority = {n}\naddress = \"127.0.0.{n}:{cport}\"\nseeds = [{seeds}]\nkey_file = \"{}\"\n",
            origin.addr,
            key.display()
        )
    };
    let a = Convoy::start(BIN, &cfg(1, c1, "")).await;
    let b = Convoy::start(BIN, &cfg(2, c2, &format!("\"127.0.0.1:{c1}\""))).await;
    assert!(converged(&a, 2).await && converged(&b, 2).await);
    // The client spends its burst on node 1...
    for i in 0..4 {
        assert_eq!(
            get_status(&format!("127.0.0.1:{lport}")).await,
            200,
            "request {i}"
        );
    }
    // ...and once node 2 has heard of it (a tick), node 2 refuses it too,
    // where alone it would have had a burst of its own.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(get_status(&format!("127.0.0.2:{lport}")).await, 429);
    // Another client is not touched (the rate is per client address).
    assert_eq!(
        get_status_from("127.0.0.9", &format!("127.0.0.2:{lport}")).await,
        200
    );
}
