//! `steering = "ecmp"` in network namespaces the tests build and remove:
//! a router namespace runs bird2 with a BGP session (and BFD) to each of
//! three convoy nodes and puts the virtual address's routes in its
//! kernel as one multipath route (`merge paths`, layer-4 hash); each
//! node runs bird as its child and announces 10.88.0.100/32 while it
//! serves; a client namespace with 64 addresses behind the router; a
//! server namespace with two demo servers beside the nodes.
//!
//! Needs root and bird2 (CI runs as root, installs bird2 and sets
//! CONVOY_REQUIRE_NETNS): without them, each test says it skipped.

use std::time::Duration;

use tokio::time::Instant;

use convoy_testkit::netns::Lab;
use convoy_testkit::{have, wait_until, Convoy};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_convoy");
const KEY: &str = "a cluster key for the ecmp tests, 32+ bytes long";
const VIP: &str = "10.88.0.100";

fn addr(i: usize) -> String {
    format!("10.89.0.{}", 10 + i)
}

/// The router's bird: a session with BFD to each node, every learned
/// path of a prefix merged into one kernel route.
fn router_bird(n: usize) -> String {
    let mut s = String::from(
        "router id 10.89.0.1;\nlog stderr all;\nprotocol device { scan time 1; }\n\
         protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }\n\
         protocol kernel { ipv4 { import none; export all; }; merge paths on; }\n\
         template bgp node { local as 65000; hold time 3; connect retry time 1; error wait time 1, 10; bfd on;\n\
           ipv4 { import all; export none; }; }\n",
    );
    for i in 1..=n {
        s.push_str(&format!(
            "protocol bgp n{i} from node {{ neighbor {} as 65001; }}\n",
            addr(i)
        ));
    }
    s
}

fn node_config(i: usize, n: usize, key: &std::path::Path) -> String {
    let seeds: Vec<String> = (1..=n)
        .filter(|j| *j != i)
        .map(|j| format!("\"{}:7946\"", addr(j)))
        .collect();
    format!(
        "[node]\nname = \"n{i}\"\ndrain_timeout = \"30s\"\n\n\
         [[listeners]]\nname = \"tcp\"\naddress = \"{VIP}:81\"\npool = \"p\"\naffinity = \"client\"\n\n\
         [pools.p]\nslow_start = \"0s\"\nhealth = {{ interval = \"200ms\", timeout = \"200ms\", rise = 1, fall = 2 }}\n\
         [[pools.p.servers]]\nname = \"s1\"\naddress = \"10.89.0.21:8000\"\n\
         [[pools.p.servers]]\nname = \"s2\"\naddress = \"10.89.0.22:8000\"\n\n\
         [cluster]\npriority = {i}\naddress = \"{a}:7946\"\nseeds = [{seeds}]\nkey_file = \"{key}\"\n\
         steering = \"ecmp\"\nvips = [\"{VIP}\"]\ninterface = \"lo\"\n\n\
         [cluster.bgp]\nlocal_as = 65001\nneighbors = [{{ address = \"10.89.0.1\", as = 65000 }}]\n",
        a = addr(i),
        seeds = seeds.join(", "),
        key = key.display(),
    )
}

struct Ecmp {
    lab: Lab,
    nodes: Vec<Option<Convoy>>,
    sources: Vec<String>,
}

impl Ecmp {
    async fn start(tag: &str) -> Option<Ecmp> {
        if !have("bird") {
            assert!(
                std::env::var_os("CONVOY_REQUIRE_NETNS").is_none(),
                "CONVOY_REQUIRE_NETNS is set but bird is missing (apt-get install bird2)"
            );
            eprintln!("skipped: no bird (apt-get install bird2)");
            return None;
        }
        let mut lab = Lab::new(tag)?;
        let n = 3;
        let node_addrs: Vec<String> = (1..=n).map(|i| format!("{}/24", addr(i))).collect();
        let mut hosts: Vec<(String, Vec<&str>)> = vec![
            ("r".into(), vec!["10.89.0.1/24"]),
            ("s".into(), vec!["10.89.0.21/24", "10.89.0.22/24"]),
        ];
        for (i, a) in node_addrs.iter().enumerate() {
            hosts.push((format!("n{}", i + 1), vec![a.as_str()]));
        }
        let hosts_ref: Vec<(&str, &[&str], Option<&str>)> = hosts
            .iter()
            .map(|(h, a)| (h.as_str(), a.as_slice(), None))
            .collect();
        lab.segment("sw", &hosts_ref);
        // The client behind the router, with 64 addresses.
        lab.add("c");
        lab.link(("c", "eth0", "10.90.0.2/16"), ("r", "eth1", "10.90.0.1/16"));
        let sources: Vec<String> = (1..=64).map(|i| format!("10.90.1.{i}")).collect();
        for s in &sources {
            lab.ip("c", &["addr", "add", &format!("{s}/16"), "dev", "eth0"]);
        }
        lab.ip("c", &["route", "add", "default", "via", "10.90.0.1"]);
        for i in 1..=n {
            lab.ip(
                &format!("n{i}"),
                &["route", "add", "default", "via", "10.89.0.1"],
            );
        }
        lab.sysctl("r", "net.ipv4.ip_forward", "1");
        lab.sysctl("r", "net.ipv4.fib_multipath_hash_policy", "1");
        let dir = convoy_testkit::temp_dir("ecmp-router");
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, router_bird(n)).unwrap();
        let sock = dir.join("bird.ctl");
        lab.spawn(
            "r",
            &[
                "bird",
                "-f",
                "-c",
                conf.to_str().unwrap(),
                "-s",
                sock.to_str().unwrap(),
            ],
        );
        lab.spawn(
            "s",
            &[BIN, "demo-servers", "10.89.0.21:8000", "10.89.0.22:8000"],
        );
        let key = convoy_testkit::write_temp("cluster.key", KEY);
        let mut e = Ecmp {
            lab,
            nodes: Vec::new(),
            sources,
        };
        for i in 1..=n {
            let ns = e.lab.ns(&format!("n{i}"));
            let c =
                Convoy::start_wrapped(BIN, &node_config(i, n, &key), &["ip", "netns", "exec", &ns])
                    .await;
            e.nodes.push(Some(c));
        }
        let all: Vec<String> = (1..=n).map(addr).collect();
        e.wait_paths(&all, Duration::from_secs(20)).await;
        Some(e)
    }

    /// The next hops of the router's route to the virtual address.
    fn paths(&self) -> Vec<String> {
        let out = self
            .lab
            .exec("r", &["ip", "route", "show", &format!("{VIP}/32")]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut v: Vec<String> = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_string())
            .collect();
        v.sort();
        v
    }

    /// Waits until the router's paths are exactly `want`; how long it took.
    async fn wait_paths(&self, want: &[String], t: Duration) -> Duration {
        let start = Instant::now();
        let ok = wait_until(t, || self.paths() == want).await;
        assert!(
            ok,
            "the router's paths stayed {:?}, not {want:?}; nodes: {:?}",
            self.paths(),
            (1..=self.nodes.len())
                .filter(|i| self.nodes[i - 1].is_some())
                .map(|i| self.ctl(i, &["cluster"])["steering"].clone())
                .collect::<Vec<_>>()
        );
        start.elapsed()
    }

    fn ctl(&self, i: usize, args: &[&str]) -> Value {
        let c = self.nodes[i - 1].as_ref().expect("node is running");
        self.lab.ctl(&format!("n{i}"), BIN, &c.admin_addr(), args)
    }

    fn load(&self, extra: Value) -> Value {
        let mut v = json!({"target": format!("{VIP}:81"), "sources": self.sources, "timeout": 2.0});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecmp_routes_follow_the_nodes_and_clients_keep_their_server() {
    let Some(mut e) = Ecmp::start("ecmp").await else {
        return;
    };
    // Flows spread over the three nodes; every one answered.
    let l = e.lab.load("c", &e.load(json!({"count": 150})));
    assert!(l.failures().is_empty(), "failed: {:?}", l.failures());
    assert_eq!(l.per_node().len(), 3, "{:?}", l.per_node());
    // Affinity `client`: one client's connections reach several nodes
    // (its ports differ) and always the same server.
    let one = json!({"target": format!("{VIP}:81"), "sources": ["10.90.1.7"], "count": 40});
    let l = e.lab.load("c", &one);
    assert!(l.failures().is_empty(), "failed: {:?}", l.failures());
    assert!(
        l.per_node().len() >= 2,
        "one client reached {:?}",
        l.per_node()
    );
    let servers: std::collections::BTreeSet<String> =
        l.attempts.iter().filter_map(|a| a.server.clone()).collect();
    assert_eq!(servers.len(), 1, "one client, several servers: {servers:?}");

    // kill -9: bird dies with convoy, the router drops the path at once
    // (its session closes; BFD would tell within 300 ms otherwise).
    let c = e.nodes[1].take().unwrap();
    c.signal("KILL");
    drop(c);
    let took = e
        .wait_paths(&[addr(1), addr(3)], Duration::from_secs(4))
        .await;
    eprintln!("path of the killed node withdrawn after {took:?}");
    let l = e.lab.load("c", &e.load(json!({"count": 100})));
    assert!(
        l.failures().is_empty(),
        "failed after the kill: {:?}",
        l.failures()
    );

    // Drain-stop: withdrawn at once, nothing fails.
    let r = e.ctl(1, &["drainstop"]);
    assert!(r.is_object(), "drainstop answered {r}");
    let took = e.wait_paths(&[addr(3)], Duration::from_secs(2)).await;
    eprintln!("path of the drained node withdrawn after {took:?}");
    let l = e.lab.load("c", &e.load(json!({"count": 60})));
    assert!(
        l.failures().is_empty(),
        "failed after the drain: {:?}",
        l.failures()
    );
    assert_eq!(l.per_node().keys().collect::<Vec<_>>(), [&addr(3)]);
    assert_eq!(e.ctl(1, &["cluster"])["steering"]["active"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecmp_a_node_without_servers_withdraws() {
    let Some(e) = Ecmp::start("ecmpcut").await else {
        return;
    };
    e.lab.must(
        "n3",
        &["nft", "add table ip cut; add chain ip cut out { type filter hook output priority 0; }; add rule ip cut out ip daddr { 10.89.0.21, 10.89.0.22 } drop"],
    );
    e.wait_paths(&[addr(1), addr(2)], Duration::from_secs(5))
        .await;
    let l = e.lab.load("c", &e.load(json!({"count": 60})));
    assert!(l.failures().is_empty(), "failed: {:?}", l.failures());
    e.lab.must("n3", &["nft", "delete table ip cut"]);
    e.wait_paths(&[addr(1), addr(2), addr(3)], Duration::from_secs(8))
        .await;
    // A node gone from the network (no session close, no withdrawal):
    // BFD (100 ms × 3) tells the router.
    e.lab.ip("n3", &["link", "set", "eth0", "down"]);
    let took = e
        .wait_paths(&[addr(1), addr(2)], Duration::from_secs(2))
        .await;
    eprintln!("path of the unreachable node dropped after {took:?}");
    assert!(took < Duration::from_secs(1), "BFD took {took:?}");
}

/// Median and max of `v`.
fn median_max(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (0.0, 0.0);
    }
    (v[v.len() / 2], v[v.len() - 1])
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// bench/steering.sh: kills and joins under load, and the throughput of
/// 3 nodes against 1, with `steering = "ecmp"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/steering.sh runs it"]
async fn bench_ecmp() {
    let rounds: usize = std::env::var("CONVOY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let Some(mut e) = Ecmp::start("benchecmp").await else {
        return;
    };
    let key = convoy_testkit::write_temp("cluster.key", KEY);
    let n2 = addr(2);
    let (mut recov, mut withdrawn, mut failed) = (Vec::new(), Vec::new(), 0);
    let (mut broken_kill, mut broken_join, mut held) = (0, 0, 0);
    let load = json!({"duration": 4.0, "interval": 0.02, "hold": 30, "hold_every": 0.2});
    for _ in 0..rounds {
        let run = e.lab.load_start("c", &e.load(load.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = now();
        let c = e.nodes[1].take().unwrap();
        c.signal("KILL");
        drop(c);
        withdrawn.push(
            e.wait_paths(&[addr(1), addr(3)], Duration::from_secs(4))
                .await
                .as_secs_f64(),
        );
        let l = tokio::task::spawn_blocking(move || run.finish())
            .await
            .unwrap();
        recov.push(
            l.attempts
                .iter()
                .filter(|a| a.at > t - 1.0 && (!a.ok || a.secs > 0.9))
                .map(|a| a.at - t)
                .fold(0.0, f64::max),
        );
        for a in l
            .attempts
            .iter()
            .filter(|a| a.at > t - 1.0 && (!a.ok || a.secs > 0.9))
        {
            println!(
                "  around the kill: +{:.3} s {:?} {:.3} s",
                a.at - t,
                a.error,
                a.secs
            );
        }
        failed += l.failures().iter().filter(|(a, _)| *a > t).count();
        broken_kill += l
            .held
            .iter()
            .filter(|h| h.node.as_deref() != Some(n2.as_str()) && h.broke.is_some())
            .count();
        held += l.held.len();
        let run = e.lab.load_start("c", &e.load(load.clone()));
        tokio::time::sleep(Duration::from_millis(800)).await;
        let back = now();
        let ns = e.lab.ns("n2");
        let c = Convoy::start_wrapped(BIN, &node_config(2, 3, &key), &["ip", "netns", "exec", &ns])
            .await;
        e.nodes[1] = Some(c);
        let l = tokio::task::spawn_blocking(move || run.finish())
            .await
            .unwrap();
        broken_join += l.held.iter().filter(|h| h.broke.is_some()).count();
        for (a, err) in l.failures() {
            println!("  failed during the join: {:+.3} s {err}", a - back);
        }
        failed += l.failures().len();
        let all: Vec<String> = (1..=3).map(addr).collect();
        e.wait_paths(&all, Duration::from_secs(10)).await;
    }
    let (med, max) = median_max(&mut recov);
    let (wmed, wmax) = median_max(&mut withdrawn);
    println!(
        "ecmp: kill -9 -> path withdrawn at the router: median {:.1} ms, max {:.1} ms; new connections all prompt again: median {med:.3} s, max {max:.3} s over {rounds} kills; \
         new connections failed after the kill or during the join: {failed}; \
         held connections broken on the survivors: {broken_kill} during kills, {broken_join} during joins (of {held} each)",
        wmed * 1000.0,
        wmax * 1000.0
    );
    let url = format!("http://{VIP}:81/");
    let wrk = |lab: &Lab| -> f64 {
        let out = lab.must("c", &["wrk", "-t1", "-c32", "-d5s", &url]);
        out.lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("wrk said: {out}"))
    };
    let three = wrk(&e.lab);
    e.ctl(2, &["drainstop"]);
    e.ctl(3, &["drainstop"]);
    e.wait_paths(&[addr(1)], Duration::from_secs(10)).await;
    let one = wrk(&e.lab);
    println!(
        "ecmp: HTTP through the TCP listener on the virtual address (wrk -c32, 5 s): 3 nodes {three:.0} req/s, 1 node {one:.0} req/s"
    );
}
