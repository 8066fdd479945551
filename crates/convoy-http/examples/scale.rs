//! The cost of scale, without I/O: a pool of N servers (table build time,
//! the tables' memory, a health change's rebuild, the time to build the
//! pool again as a reload does, the cost of one choice with and without
//! client affinity), and a listener with R routes (the cost of matching a
//! request that matches the last route, or none).
//!
//!   cargo run --release -p convoy-http --example scale [N] [R]
//!
//! (bench/scale.sh runs it; figures in bench/RESULTS.md.)

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use tokio::time::Instant;

use convoy_balance::AffinityKind;
use convoy_config::Config;
use convoy_core::PoolRuntime;

fn config(n: usize, routes: usize) -> Config {
    let mut t = String::from("[[listeners]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"127.0.0.1:1\"\npool = \"p\"\n");
    for r in 0..routes {
        t.push_str(&format!(
            "[[listeners.routes]]\nname = \"r{r}\"\nhost = \"host{r}.example\"\npath_prefix = \"/app{r}/\"\n"
        ));
    }
    t.push_str("[pools.p]\nslow_start = \"0s\"\nhealth = { check = \"none\" }\n");
    for i in 0..n {
        let a = Ipv4Addr::from(0x0a00_0000u32 + i as u32 + 1);
        t.push_str(&format!(
            "[[pools.p.servers]]\nname = \"s{i}\"\naddress = \"{a}:8080\"\n"
        ));
    }
    Config::parse("scale.toml", &t).expect("config")
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let routes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let t = Instant::now();
    let cfg = config(n, routes);
    println!(
        "config of {n} servers and {routes} routes parsed and validated in {:?}",
        t.elapsed()
    );
    let pool_cfg = &cfg.pools["p"];

    let before = rss_kb();
    let t = Instant::now();
    let pool = Arc::new(PoolRuntime::new("p", pool_cfg, None));
    let built = t.elapsed();
    let after = rss_kb();
    println!(
        "pool of {n}: built in {built:?} (tables of {} entries), RSS +{} KB",
        convoy_balance::maglev::table_size(n),
        after.saturating_sub(before)
    );

    // A health change: one server down, tables rebuilt.
    let mut times = Vec::new();
    for i in 0..5 {
        pool.servers[i].state.set_up(false);
        let t = Instant::now();
        pool.rebuild_now();
        times.push(t.elapsed());
        pool.servers[i].state.set_up(true);
    }
    times.sort();
    println!(
        "a health change's table rebuild: median {:?}, max {:?}",
        times[2], times[4]
    );

    // A reload: the pool built again from the same config, carrying state.
    let t = Instant::now();
    let again = PoolRuntime::new("p", pool_cfg, Some(&pool));
    println!("a reload's pool rebuild: {:?}", t.elapsed());
    drop(again);

    // One choice, round robin and with client affinity.
    let picks = 1_000_000u32;
    for (name, aff) in [
        ("round robin", AffinityKind::None),
        ("client affinity", AffinityKind::Client),
    ] {
        let t = Instant::now();
        let mut sum = 0usize;
        for i in 0..picks {
            let c = IpAddr::V4(Ipv4Addr::from(0xc000_0200u32.wrapping_add(i)));
            sum = sum.wrapping_add(pool.pick(aff, c, &[]).unwrap_or(0));
        }
        println!(
            "one choice ({name}): {:.0} ns ({sum})",
            t.elapsed().as_nanos() as f64 / f64::from(picks)
        );
    }

    // Routes: a request that matches the last route, and one that
    // matches none, against a listener with `routes` routes.
    let table = &cfg.listeners[0];
    let rt = convoy_config::compiled::RouteTable::compile(table);
    let last = routes.saturating_sub(1);
    let reqs = [
        (
            "the last route",
            format!("/app{last}/x"),
            format!("host{last}.example"),
        ),
        ("no route", "/none".to_string(), "other.example".to_string()),
    ];
    for (what, path, host) in reqs {
        let req = http::Request::get(path)
            .header("host", host)
            .body(())
            .unwrap();
        let rounds = 20_000u32;
        let t = Instant::now();
        let mut hit = 0usize;
        for _ in 0..rounds {
            let d = convoy_http::route::decide_from(&rt, &req, None);
            hit = hit.wrapping_add(d.route.len());
        }
        println!(
            "route match with {routes} routes ({what}): {:.0} ns ({hit})",
            t.elapsed().as_nanos() as f64 / f64::from(rounds)
        );
    }
}
