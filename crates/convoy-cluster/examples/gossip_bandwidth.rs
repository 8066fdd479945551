//! Cluster traffic per node with N nodes in one process (bench/cluster.sh
//! runs it): N agents on 127.0.0.1 with the default timings (probe every
//! 200 ms, suspicion 300 ms), converged, then the bytes each sends and
//! receives over a window. Usage: gossip_bandwidth N SECONDS

use std::sync::atomic::Ordering;
use std::time::Duration;

use convoy_cluster::agent::{start, Local, Settings};
use convoy_cluster::doc::MemberState;
use convoy_cluster::fingerprint::Fingerprint;
use convoy_cluster::view::ListenerRule;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let mut f = Fingerprint::default();
    f.sections.insert("pools.web".into(), 1);
    let local = Local {
        fingerprint: f,
        rules: vec![ListenerRule {
            name: "web".into(),
            single: false,
            servers: Vec::new(),
        }],
        weights: Default::default(),
        min_members: 0,
    };
    let addrs: Vec<std::net::SocketAddr> = (0..n)
        .map(|_| {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect();
    let mut nodes = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let s = Settings {
            name: format!("node-{i}"),
            priority: i as u32 + 1,
            address: *a,
            seeds: if i == 0 { vec![] } else { vec![addrs[0]] },
            key: b"bandwidth bench key, 32 bytes long!".to_vec(),
            probe_interval: Duration::from_millis(200),
            suspicion: Duration::from_millis(300),
        };
        nodes.push(start(s, local.clone()).await.unwrap());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let all = nodes.iter().all(|h| {
            let v = h.view.borrow();
            v.state == Some(MemberState::Converged) && v.candidates.len() == n
        });
        if all {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Settle, then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let read = |h: &convoy_cluster::agent::Handle| {
        (
            h.stats.bytes_out.load(Ordering::Relaxed),
            h.stats.bytes_in.load(Ordering::Relaxed),
        )
    };
    let before: Vec<(u64, u64)> = nodes.iter().map(read).collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after: Vec<(u64, u64)> = nodes.iter().map(read).collect();
    let out: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0 - b.0) as f64 / secs as f64)
        .collect();
    let inn: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.1 - b.1) as f64 / secs as f64)
        .collect();
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "nodes={n} sent_avg={:.0} B/s sent_max={:.0} B/s received_avg={:.0} B/s",
        avg(&out),
        max(&out),
        avg(&inn)
    );
}
