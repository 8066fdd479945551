//! Steering in network namespaces the tests build and remove: three
//! convoy nodes share virtual address 10.88.0.100 and one MAC on a
//! flooding switch (`steering = "shared"`); a client namespace with 64
//! source addresses; a server namespace with two demo servers that name
//! the node that carried each connection.
//!
//! Needs root (CI runs as root and sets CONVOY_REQUIRE_NETNS): without
//! it, each test says it skipped.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use convoy_testkit::netns::{Lab, Load};
use convoy_testkit::{wait_until, Convoy};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_convoy");
const KEY: &str = "a cluster key for the steering tests, 32+ bytes";
const VIP: &str = "10.88.0.100";
const MAC: &str = "02:bf:0a:58:00:64";

/// A UDP server that answers each datagram with "Hello from udp at ADDR,
/// for PEER" (the node that carried it).
const UDP_SERVER: &str = "import socket,sys
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind((sys.argv[1],int(sys.argv[2])))
while True:
    d,a=s.recvfrom(2048); s.sendto(('Hello from udp at %s, for %s:%d' % (sys.argv[1],a[0],a[1])).encode(),a)
";

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Node `i`'s address (1-based).
fn addr(i: usize) -> String {
    format!("10.88.0.{}", 10 + i)
}

/// The cluster: the lab, the nodes (None: stopped), their configs.
struct Shared {
    lab: Lab,
    nodes: Vec<Option<Convoy>>,
    configs: Vec<String>,
    sources: Vec<String>,
}

/// Node `i`'s config (of `n`), with load weight `w` for both listeners
/// and `extra` appended to its pool (a mismatch).
fn node_config(i: usize, n: usize, w: u32, key: &std::path::Path, extra: &str) -> String {
    let seeds: Vec<String> = (1..=n)
        .filter(|j| *j != i)
        .map(|j| format!("\"{}:7946\"", addr(j)))
        .collect();
    format!(
        "[node]\nname = \"n{i}\"\ndrain_timeout = \"30s\"\n\n\
         [[listeners]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"{VIP}:80\"\npool = \"p\"\n\n\
         [[listeners]]\nname = \"tcp\"\naddress = \"{VIP}:81\"\npool = \"p\"\n\n\
         [[listeners]]\nname = \"dns\"\nprotocol = \"udp\"\naddress = \"{VIP}:53\"\npool = \"u\"\n\n\
         [pools.u]\nhealth = {{ check = \"none\" }}\n[[pools.u.servers]]\nname = \"u1\"\naddress = \"10.88.2.1:5353\"\n\n\
         [pools.p]\nslow_start = \"0s\"\nhealth = {{ interval = \"200ms\", timeout = \"200ms\", rise = 1, fall = 2 }}\n{extra}\n\
         [[pools.p.servers]]\nname = \"s1\"\naddress = \"10.88.2.1:8000\"\n\
         [[pools.p.servers]]\nname = \"s2\"\naddress = \"10.88.2.2:8000\"\n\n\
         [cluster]\npriority = {i}\naddress = \"{a}:7946\"\nseeds = [{seeds}]\nkey_file = \"{key}\"\n\
         steering = \"shared\"\nvips = [\"{VIP}\"]\ninterface = \"eth0\"\n\
         load_weight = {{ web = {w}, tcp = {w} }}\n",
        a = addr(i),
        seeds = seeds.join(", "),
        key = key.display(),
    )
}

impl Shared {
    /// Builds the namespaces, starts the servers and `weights.len()`
    /// nodes (node i with `extra[i]` in its pool), and waits until the
    /// nodes `owners` (all, if empty) and only they own buckets.
    async fn start(tag: &str, weights: &[u32], extra: &[&str], owners: &[usize]) -> Option<Shared> {
        let mut lab = Lab::new(tag)?;
        let sources: Vec<String> = (1..=64).map(|i| format!("10.88.1.{i}")).collect();
        let client_addrs: Vec<String> = sources.iter().map(|s| format!("{s}/16")).collect();
        let caddrs: Vec<&str> = client_addrs.iter().map(String::as_str).collect();
        let node_addrs: Vec<String> = (1..=weights.len())
            .map(|i| format!("{}/16", addr(i)))
            .collect();
        let mut hosts: Vec<(String, Vec<&str>, Option<&str>)> = vec![
            ("c".into(), caddrs, None),
            ("s".into(), vec!["10.88.2.1/16", "10.88.2.2/16"], None),
        ];
        for (i, a) in node_addrs.iter().enumerate() {
            hosts.push((format!("n{}", i + 1), vec![a.as_str()], Some(MAC)));
        }
        let hosts_ref: Vec<(&str, &[&str], Option<&str>)> = hosts
            .iter()
            .map(|(h, a, m)| (h.as_str(), a.as_slice(), *m))
            .collect();
        lab.segment("sw", &hosts_ref);
        lab.spawn(
            "s",
            &[BIN, "demo-servers", "10.88.2.1:8000", "10.88.2.2:8000"],
        );
        lab.spawn("s", &["python3", "-c", UDP_SERVER, "10.88.2.1", "5353"]);
        let key = convoy_testkit::write_temp("cluster.key", KEY);
        let n = weights.len();
        let configs: Vec<String> = (1..=n)
            .map(|i| {
                node_config(
                    i,
                    n,
                    weights[i - 1],
                    &key,
                    extra.get(i - 1).copied().unwrap_or(""),
                )
            })
            .collect();
        let mut s = Shared {
            lab,
            nodes: Vec::new(),
            configs,
            sources,
        };
        for i in 1..=n {
            let c = s.start_node(i).await;
            s.nodes.push(Some(c));
        }
        let all: Vec<usize> = (1..=n).collect();
        let owners = if owners.is_empty() { &all[..] } else { owners };
        s.wait_owned(owners, Duration::from_secs(15)).await;
        Some(s)
    }

    async fn start_node(&self, i: usize) -> Convoy {
        let ns = self.lab.ns(&format!("n{i}"));
        Convoy::start_wrapped(BIN, &self.configs[i - 1], &["ip", "netns", "exec", &ns]).await
    }

    fn node(&self, i: usize) -> &Convoy {
        self.nodes[i - 1].as_ref().expect("node is running")
    }

    /// `convoy ctl --json ARGS` against node `i`, from its namespace.
    fn ctl(&self, i: usize, args: &[&str]) -> Value {
        self.lab
            .ctl(&format!("n{i}"), BIN, &self.node(i).admin_addr(), args)
    }

    /// Buckets of listener `l` that node `i`'s rules take new flows of.
    fn owned(&self, i: usize, l: &str) -> u64 {
        self.ctl(i, &["cluster"])["steering"]["owned"][l]
            .as_u64()
            .unwrap_or(0)
    }

    /// Waits until exactly the nodes `with` own buckets (of both
    /// listeners) and, together, all 4096; panics after `t`.
    async fn wait_owned(&self, with: &[usize], t: Duration) {
        let running: Vec<usize> = (1..=self.nodes.len())
            .filter(|i| self.nodes[i - 1].is_some())
            .collect();
        let ok = wait_until(t, || {
            ["web", "tcp"].iter().all(|l| {
                let owned: Vec<(usize, u64)> =
                    running.iter().map(|i| (*i, self.owned(*i, l))).collect();
                owned.iter().map(|(_, n)| n).sum::<u64>() == 4096
                    && owned.iter().all(|(i, n)| (*n > 0) == with.contains(i))
            })
        })
        .await;
        assert!(
            ok,
            "owners never settled on {with:?}: {:?}",
            running
                .iter()
                .map(|i| (i, self.ctl(*i, &["cluster"])))
                .collect::<Vec<_>>()
        );
    }

    /// The load client's settings against `port`.
    fn load(&self, port: u16, extra: Value) -> Value {
        let mut v =
            json!({"target": format!("{VIP}:{port}"), "sources": self.sources, "timeout": 2.0});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    fn kill(&mut self, i: usize) {
        let c = self.nodes[i - 1].take().expect("node is running");
        c.signal("KILL");
        drop(c);
    }
}

/// The share of answered attempts each node carried.
fn shares(l: &Load) -> BTreeMap<String, f64> {
    let per = l.per_node();
    let total: usize = per.values().sum();
    per.into_iter()
        .map(|(n, c)| (n, c as f64 / total.max(1) as f64))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_each_connection_has_one_node_and_the_split_follows_the_weights() {
    let Some(s) = Shared::start("split", &[100, 100, 200], &[], &[]).await else {
        return;
    };
    // 300 connections, each from the next of 64 source addresses and a
    // new port: the TCP listener hashes address and port.
    let l = s.lab.load("c", &s.load(81, json!({"count": 300})));
    assert_eq!(l.attempts.len(), 300);
    assert!(l.failures().is_empty(), "failed: {:?}", l.failures());
    let sh = shares(&l);
    eprintln!("shares of 300 connections: {sh:?}");
    assert_eq!(sh.len(), 3, "every node carries some: {sh:?}");
    let (a, b, c) = (sh[&addr(1)], sh[&addr(2)], sh[&addr(3)]);
    assert!(
        (0.15..0.35).contains(&a) && (0.15..0.35).contains(&b),
        "{sh:?}"
    );
    assert!(
        (0.38..0.62).contains(&c),
        "weight 200 takes about half: {sh:?}"
    );
    // The HTTP listener hashes the client address: all 64 work too.
    let h = s.lab.load("c", &s.load(80, json!({"count": 128})));
    assert!(h.failures().is_empty(), "failed: {:?}", h.failures());
    assert_eq!(h.per_node().len(), 3, "{:?}", h.per_node());
    // UDP flows alike: each datagram answered once, by one node.
    let u = s
        .lab
        .load("c", &s.load(53, json!({"udp": true, "count": 200})));
    assert_eq!(u.attempts.len(), 200);
    assert!(u.failures().is_empty(), "UDP: {:?}", u.failures());
    assert_eq!(u.per_node().len(), 3, "{:?}", u.per_node());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_kill_then_return_new_flows_recover_and_established_ones_stay() {
    let Some(mut s) = Shared::start("kill", &[100, 100, 100], &[], &[]).await else {
        return;
    };
    // 9 s of new connections (25/s) over 30 held connections.
    let run = s.lab.load_start(
        "c",
        &s.load(
            81,
            json!({"duration": 9.0, "interval": 0.04, "hold": 30, "hold_every": 0.2}),
        ),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = now();
    s.kill(2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let back_at = now();
    let c = s.start_node(2).await;
    s.nodes[1] = Some(c);
    let l = tokio::task::spawn_blocking(move || run.finish())
        .await
        .unwrap();
    // New connections: failures only around the kill, none 2 s after it.
    let fails = l.failures();
    // A SYN that reached no owner is sent again after 1 s: such an
    // attempt took that long. After 2 s every new connection is prompt.
    let stalled: Vec<f64> = l
        .attempts
        .iter()
        .filter(|a| a.at > killed_at - 2.5 && a.at < back_at && a.secs > 0.9)
        .map(|a| a.at - killed_at)
        .collect();
    eprintln!(
        "{} attempts, {} failed, {} stalled by the kill, the last starting {:.3} s after it",
        l.attempts.len(),
        fails.len(),
        stalled.len(),
        stalled.last().copied().unwrap_or(0.0)
    );
    assert!(
        stalled.iter().all(|t| *t < 2.0),
        "new connections still stalled 2 s after the kill: {stalled:?}"
    );
    let late: Vec<_> = fails
        .iter()
        .filter(|(t, _)| *t < killed_at - 2.5 || *t > killed_at + 2.0)
        .collect();
    assert!(
        late.is_empty(),
        "failures away from the kill: {late:?} (kill at {killed_at})"
    );
    // Established connections on the survivors: none broken, through the
    // kill and the return.
    let n2 = addr(2);
    let broken: Vec<_> = l
        .held
        .iter()
        .filter(|h| h.node.as_deref() != Some(n2.as_str()) && h.broke.is_some())
        .collect();
    assert!(
        broken.is_empty(),
        "held connections broken on the survivors: {broken:?}"
    );
    assert!(
        l.held
            .iter()
            .any(|h| h.node.as_deref() == Some(n2.as_str())),
        "some held connection was on node 2: {:?}",
        l.held
    );
    // The returned node takes new flows again.
    let after: Vec<_> = l
        .attempts
        .iter()
        .filter(|a| a.at > back_at + 3.0 && a.ok)
        .collect();
    assert!(
        after.iter().any(|a| a.node.as_deref() == Some(n2.as_str())),
        "node 2 took no new flow after it came back ({} attempts after)",
        after.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_drain_stop_under_load_fails_nothing() {
    let Some(s) = Shared::start("drain", &[100, 100, 100], &[], &[]).await else {
        return;
    };
    let tcp = s.lab.load_start(
        "c",
        &s.load(
            81,
            json!({"duration": 6.0, "interval": 0.04, "hold": 12, "hold_every": 0.2}),
        ),
    );
    let http = s
        .lab
        .load_start("c", &s.load(80, json!({"duration": 6.0, "interval": 0.04})));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let drained_at = now();
    let r = s.ctl(1, &["drainstop"]);
    assert!(r.is_object(), "drainstop answered {r}");
    let (tcp, http) = tokio::task::spawn_blocking(move || (tcp.finish(), http.finish()))
        .await
        .unwrap();
    for (name, l) in [("tcp", &tcp), ("http", &http)] {
        assert!(l.failures().is_empty(), "{name}: failed {:?}", l.failures());
        let late_on_1: Vec<_> = l
            .attempts
            .iter()
            .filter(|a| a.at > drained_at + 1.5 && a.node.as_deref() == Some(addr(1).as_str()))
            .collect();
        assert!(
            late_on_1.is_empty(),
            "{name}: node 1 took new flows after its drain: {late_on_1:?}"
        );
    }
    let broken: Vec<_> = tcp.held.iter().filter(|h| h.broke.is_some()).collect();
    assert!(broken.is_empty(), "held connections broken: {broken:?}");
    assert_eq!(s.owned(1, "tcp"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_a_mismatched_node_takes_no_traffic() {
    let mismatch = "algorithm = \"least_outstanding\"\n";
    let Some(s) = Shared::start("mism", &[100, 100, 100], &["", "", mismatch], &[1, 2]).await
    else {
        return;
    };
    assert_eq!(s.ctl(3, &["cluster"])["state"], "mismatched");
    let l = s.lab.load("c", &s.load(81, json!({"count": 150})));
    assert!(l.failures().is_empty(), "failed: {:?}", l.failures());
    assert!(!l.per_node().contains_key(&addr(3)), "{:?}", l.per_node());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_a_node_cut_off_from_its_servers_gives_up_its_buckets() {
    let Some(s) = Shared::start("cut", &[100, 100, 100], &[], &[]).await else {
        return;
    };
    // Node 2 loses its path to the servers (a table of the test's own).
    s.lab.must(
        "n2",
        &["nft", "add table ip cut; add chain ip cut out { type filter hook output priority 0; }; add rule ip cut out ip daddr 10.88.2.0/24 drop"],
    );
    s.wait_owned(&[1, 3], Duration::from_secs(10)).await;
    let l = s.lab.load("c", &s.load(81, json!({"count": 150})));
    assert!(l.failures().is_empty(), "failed: {:?}", l.failures());
    assert!(!l.per_node().contains_key(&addr(2)), "{:?}", l.per_node());
    // Its path back: it takes its share again.
    s.lab.must("n2", &["nft", "delete table ip cut"]);
    s.wait_owned(&[1, 2, 3], Duration::from_secs(10)).await;
}

/// Runs the example's script with `arg`, this build's binary and its own
/// state directory.
fn example(arg: &str, state: &std::path::Path) -> std::process::Output {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/cluster-netns/cluster.sh"
    );
    std::process::Command::new("bash")
        .arg(script)
        .arg(arg)
        .env("CONVOY", BIN)
        .env("CONVOY_EX_STATE", state)
        .output()
        .expect("run the example")
}

/// Takes the example down even when the test fails.
struct ExampleDown(std::path::PathBuf);

impl Drop for ExampleDown {
    fn drop(&mut self) {
        let _ = example("down", &self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_netns_example_comes_up_serves_and_goes_away() {
    // The lab holds the one-at-a-time turn; the example makes its own
    // namespaces.
    let Some(lab) = Lab::new("ex") else {
        return;
    };
    let state = convoy_testkit::temp_dir("example-state");
    let down = ExampleDown(state.clone());
    let up = example("up", &state);
    assert!(
        up.status.success(),
        "up failed: {}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(String::from_utf8_lossy(&up.stdout).contains("Three convoy nodes share 10.88.0.100"));
    // Twenty client addresses: all answered, by more than one node.
    let mut nodes = std::collections::BTreeSet::new();
    for a in 1..=20 {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", "convoy-ex-c", "curl", "-s", "-m", "3"])
            .args([
                "--interface",
                &format!("10.88.1.{a}"),
                "http://10.88.0.100/",
            ])
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            body.starts_with("Hello from demo-"),
            "from 10.88.1.{a}: {body:?}"
        );
        nodes.insert(
            body.rsplit("for ")
                .next()
                .unwrap_or("")
                .split(':')
                .next()
                .unwrap_or("")
                .to_string(),
        );
    }
    assert!(nodes.len() >= 2, "one node carried everything: {nodes:?}");
    drop(down);
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains("convoy-ex-"),
        "down left namespaces: {}",
        String::from_utf8_lossy(&list.stdout)
    );
    assert!(!state.exists(), "down left its state directory");
    drop(lab);
}

/// Median and max of `v` (sorted in place).
fn median_max(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (0.0, 0.0);
    }
    (v[v.len() / 2], v[v.len() - 1])
}

/// Held connections broken on nodes other than `except`.
fn broken_elsewhere(l: &Load, except: &str) -> usize {
    l.held
        .iter()
        .filter(|h| h.node.as_deref() != Some(except) && h.broke.is_some())
        .count()
}

/// When new connections were all prompt again after `t`: the start of
/// the last attempt that failed or waited for a SYN retransmission,
/// relative to `t` (0 if none).
fn recovered_after(l: &Load, t: f64) -> f64 {
    l.attempts
        .iter()
        .filter(|a| a.at > t - 1.0 && (!a.ok || a.secs > 0.9))
        .map(|a| a.at - t)
        .fold(0.0, f64::max)
}

/// `wrk` from the client namespace for 5 s: requests per second.
fn wrk(lab: &Lab, url: &str) -> f64 {
    let out = lab.must("c", &["wrk", "-t1", "-c32", "-d5s", url]);
    out.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk said: {out}"))
}

/// bench/steering.sh: kills, joins and drains under load, and the
/// throughput of 3 nodes against 1, with `steering = "shared"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/steering.sh runs it"]
async fn bench_shared() {
    let rounds: usize = std::env::var("CONVOY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let Some(mut s) = Shared::start("bench", &[100, 100, 100], &[], &[]).await else {
        return;
    };
    let n2 = addr(2);
    let (mut recov, mut failed, mut broken_kill, mut broken_join, mut held) =
        (Vec::new(), 0, 0, 0, 0);
    for _ in 0..rounds {
        let run = s.lab.load_start(
            "c",
            &s.load(
                81,
                json!({"duration": 4.0, "interval": 0.02, "hold": 30, "hold_every": 0.2}),
            ),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = now();
        s.kill(2);
        let l = tokio::task::spawn_blocking(move || run.finish())
            .await
            .unwrap();
        recov.push(recovered_after(&l, t));
        for (a, e) in l.failures().iter().filter(|(a, _)| *a > t) {
            println!("  failed after the kill: +{:.3} s {e}", a - t);
            failed += 1;
        }
        broken_kill += broken_elsewhere(&l, &n2);
        held += l.held.len();
        // The node comes back under load.
        let run = s.lab.load_start(
            "c",
            &s.load(
                81,
                json!({"duration": 4.0, "interval": 0.02, "hold": 30, "hold_every": 0.2}),
            ),
        );
        tokio::time::sleep(Duration::from_millis(800)).await;
        let back = now();
        let c = s.start_node(2).await;
        s.nodes[1] = Some(c);
        let l = tokio::task::spawn_blocking(move || run.finish())
            .await
            .unwrap();
        broken_join += l.held.iter().filter(|h| h.broke.is_some()).count();
        for (a, e) in l.failures() {
            println!("  failed during the join: {a:.3} {e} (join at {back:.3})");
            failed += 1;
        }
        s.wait_owned(&[1, 2, 3], Duration::from_secs(10)).await;
    }
    let (med, max) = median_max(&mut recov);
    println!(
        "shared: kill -9 -> new connections all prompt again: median {med:.3} s, max {max:.3} s over {rounds} kills; \
         new connections failed after the kill or during the join: {failed}; \
         held connections broken on the survivors: {broken_kill} during kills, {broken_join} during joins (of {held} each)"
    );
    // Drain under load.
    let run = s.lab.load_start(
        "c",
        &s.load(
            81,
            json!({"duration": 4.0, "interval": 0.02, "hold": 30, "hold_every": 0.2}),
        ),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.ctl(3, &["drainstop"]);
    let l = tokio::task::spawn_blocking(move || run.finish())
        .await
        .unwrap();
    println!(
        "shared: drain-stop under load: {} new connections failed, {} held connections broken (of {})",
        l.failures().len(),
        l.held.iter().filter(|h| h.broke.is_some()).count(),
        l.held.len()
    );
    // Started again once its drain has finished.
    wait_until(Duration::from_secs(10), || {
        s.ctl(3, &["start"]);
        s.ctl(3, &["query"])["state"] != "draining"
    })
    .await;
    s.wait_owned(&[1, 2, 3], Duration::from_secs(10)).await;
    let url = format!("http://{VIP}/");
    let three = wrk(&s.lab, &url);
    s.ctl(2, &["drainstop"]);
    s.ctl(3, &["drainstop"]);
    s.wait_owned(&[1], Duration::from_secs(10)).await;
    let one = wrk(&s.lab, &url);
    println!(
        "shared: HTTP throughput through the virtual address (wrk -c32, 5 s): 3 nodes {three:.0} req/s, 1 node {one:.0} req/s"
    );
}

/// A config with `steering` and the given extra `[cluster]` lines.
fn lone_config(steering: &str, extra: &str, key: &std::path::Path) -> String {
    format!(
        "[[listeners]]\nname = \"tcp\"\naddress = \"0.0.0.0:{port}\"\npool = \"p\"\n\n\
         [[pools.p.servers]]\naddress = \"127.0.0.1:9\"\n\n\
         [cluster]\npriority = 1\naddress = \"127.0.0.1:{cport}\"\nkey_file = \"{key}\"\n\
         steering = \"{steering}\"\nvips = [\"10.88.0.100\"]\ninterface = \"lo\"\n{extra}",
        port = convoy_testkit::free_port(),
        cport = convoy_testkit::free_udp_port(),
        key = key.display(),
    )
}

#[test]
fn run_refuses_clearly_without_nftables() {
    let key = convoy_testkit::write_temp("cluster.key", KEY);
    let cfg = convoy_testkit::write_temp("convoy.toml", &lone_config("shared", "", &key));
    // No nft on PATH: refused before anything changes, naming the package.
    let empty = convoy_testkit::temp_dir("no-tools");
    let out = std::process::Command::new(BIN)
        .args(["run", "-c"])
        .arg(&cfg)
        .env("PATH", &empty)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("apt-get install nftables"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_clearly_without_bird_and_changes_nothing() {
    // In a namespace of its own: a refused start must leave no table.
    let Some(mut lab) = Lab::new("nobird") else {
        return;
    };
    lab.add("n");
    let key = convoy_testkit::write_temp("cluster.key", KEY);
    let bgp = "[cluster.bgp]\nlocal_as = 65001\nneighbors = [{ address = \"10.89.0.1\", as = 65000 }]\nbird = \"/nonexistent/bird\"\n";
    let cfg = convoy_testkit::write_temp("convoy.toml", &lone_config("ecmp", bgp, &key));
    let out = lab.exec("n", &[BIN, "run", "-c", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("apt-get install bird2"), "{err}");
    let tables = lab.must("n", &["nft", "list", "tables"]);
    assert!(!tables.contains("convoy"), "left: {tables}");
    let addrs = lab.must("n", &["ip", "addr", "show", "dev", "lo"]);
    assert!(!addrs.contains("10.88.0.100"), "left: {addrs}");
}
