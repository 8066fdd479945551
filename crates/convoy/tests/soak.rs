//! Rolling maintenance under load (the seeds' servers "patched on a
//! rotating basis"): four servers behind convoy, a steady bounded load,
//! and one server at a time drained, stopped, restarted and enabled again,
//! while the config is reloaded every couple of seconds. No request may
//! fail; descriptors and memory at the end match those after warm-up.
//!
//! `CONVOY_SOAK_SECONDS` sets the length (default 8 s for CI; bench/soak.sh
//! runs it for 10 minutes).

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use convoy_testkit::config::{Config, Listener, Pool, Server};
use convoy_testkit::http::HttpOrigin;
use convoy_testkit::{free_port, Convoy};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

fn config(port: u16, origins: &[(String, std::net::SocketAddr)], round: usize) -> String {
    let mut pool = Pool::new("web")
        .set("algorithm", "least_outstanding")
        .set("slow_start", "1s")
        .health([
            ("check", "http".into()),
            ("path", "/".into()),
            ("interval", "200ms".into()),
            ("timeout", "200ms".into()),
            ("rise", 1.into()),
            ("fall", 1.into()),
        ]);
    for (i, (name, addr)) in origins.iter().enumerate() {
        // Weights move with each reload.
        let w = 1 + (i + round) % 3;
        pool = pool.server(Server::new(name, *addr).set("weight", w as i64));
    }
    Config::new()
        .listener(Listener::http(port, "web").set("name", "web"))
        .pool(pool)
        .build()
}

fn ctl(admin: &str, args: &[&str]) -> serde_json::Value {
    let o = Command::new(BIN)
        .args(["ctl", "--admin", admin, "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    (fds, rss)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_maintenance_under_load() {
    let secs: u64 = std::env::var("CONVOY_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mut origins = Vec::new();
    for i in 0..4 {
        origins.push(HttpOrigin::start(&format!("s{i}"), Duration::from_millis(2)).await);
    }
    let addrs: Vec<(String, std::net::SocketAddr)> =
        origins.iter().map(|o| (o.name.clone(), o.addr)).collect();
    let port = free_port();
    let c = Convoy::start(BIN, &config(port, &addrs, 0)).await;
    let admin = c.admin_addr();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, errors) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&errors));
        load.push(tokio::spawn(async move {
            let client: Client<_, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let end = Instant::now() + Duration::from_secs(secs + 30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let r = client
                    .get(format!("http://127.0.0.1:{port}/").parse().unwrap())
                    .await;
                match r {
                    Ok(resp) if resp.status() == 200 => match resp.into_body().collect().await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.lock().unwrap().push(format!("body: {e}")),
                    },
                    Ok(resp) => errors
                        .lock()
                        .unwrap()
                        .push(format!("status {}", resp.status())),
                    Err(e) => errors.lock().unwrap().push(format!("{e:?}")),
                }
            }
        }));
    }
    // Warm-up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let warm = fds_and_rss(c.pid());

    let start = Instant::now();
    let mut round = 0usize;
    let mut last_reload = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        let i = round % origins.len();
        let name = origins[i].name.clone();
        let addr = origins[i].addr;
        // Drain, wait for it to finish, stop the server.
        ctl(&admin, &["server", "web", &name, "drain"]);
        let drained = convoy_testkit::wait_until(Duration::from_secs(10), || {
            let q = ctl(&admin, &["query"]);
            q["pools"][0]["zones"][0]["servers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == name.as_str() && s["in_flight"] == 0 && s["active"] == 0)
        })
        .await;
        assert!(drained, "{name} drained");
        origins[i].stop().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // "Patched": back on the same address, then enabled.
        origins[i] = HttpOrigin::start_on(&name, Duration::from_millis(2), addr).await;
        ctl(&admin, &["server", "web", &name, "enable"]);
        // Reload every couple of seconds, weights changing.
        if last_reload.elapsed() >= Duration::from_secs(2) {
            assert_eq!(
                c.reload(&config(port, &addrs, round)).await,
                "reload_applied"
            );
            last_reload = Instant::now();
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let slow start finish, then compare with warm-up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end = fds_and_rss(c.pid());
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let ok = ok.load(Ordering::Relaxed);
    let errors = errors.lock().unwrap().clone();
    println!(
        "soak: {secs} s, {round} maintenance rounds, {ok} requests, {} failed; fds {} -> {}, RSS {} -> {} KiB",
        errors.len(),
        warm.0,
        end.0,
        warm.1,
        end.1
    );
    assert!(
        round >= 4,
        "every server went through maintenance: {round} rounds"
    );
    assert!(ok > 500, "load ran: {ok}");
    assert!(
        errors.is_empty(),
        "{} failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    // Descriptors: the same give or take pooled keep-alive connections.
    assert!(
        end.0 <= warm.0 + 8,
        "descriptors grew: {} -> {}",
        warm.0,
        end.0
    );
    assert!(
        end.1 <= warm.1 + warm.1 / 2 + 4096,
        "memory grew: {} -> {} KiB",
        warm.1,
        end.1
    );
}
