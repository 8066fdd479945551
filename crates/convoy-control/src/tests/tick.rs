//! What the node does by the clock, on tokio's paused clock: passive
//! retries, zones, slow start, drains, convergence, standby, the
//! latency window.

use std::sync::Arc;
use std::time::Duration;

use convoy_core::control::{Command, ServerAction};
use convoy_core::{AdminState, ServerState};
use convoy_l4::DataEvent;
use tokio::time::advance;

use super::{config, free_port, node, pool, tcp_listener, NO_ADMIN};
use crate::{Node, NodeState};

fn text(pool_text: &str) -> String {
    format!(
        "{NO_ADMIN}{}{pool_text}",
        tcp_listener("web", free_port(), "p")
    )
}

fn state(n: &Node, server: &str) -> Arc<ServerState> {
    Arc::clone(&n.snap().pools["p"].server(server).unwrap().state)
}

fn fail(n: &mut Node, s: &Arc<ServerState>) {
    n.on_data_event(DataEvent::Failure {
        server: Arc::clone(s),
        reason: "connect: refused".into(),
    });
}

#[tokio::test(start_paused = true)]
async fn passive_failures_take_a_server_down_until_retry_after() {
    let (mut n, _inputs) = node(&text(&pool(
        "p",
        &[
            ("a", 1, "zone = \"z1\""),
            ("b", 2, "zone = \"z1\""),
            ("c", 3, "zone = \"z2\""),
        ],
    )))
    .await;
    let (a, b) = (state(&n, "a"), state(&n, "b"));
    fail(&mut n, &a);
    fail(&mut n, &a);
    assert!(a.is_up(), "two failures of three");
    fail(&mut n, &a);
    assert!(!a.is_up());
    assert_eq!(n.snap().pools["p"].tables().eligible, 2);
    assert_eq!(n.zones_down(), (vec![], 0));
    for _ in 0..3 {
        fail(&mut n, &b);
    }
    // Every server of z1 is down: one zone event.
    assert_eq!(n.zones_down(), (vec![("p".into(), "z1".into())], 1));
    fail(&mut n, &b);
    assert_eq!(n.zones_down().1, 1);

    advance(Duration::from_millis(9_900)).await;
    n.on_tick();
    assert!(!a.is_up(), "retry_after (10 s) has not passed");
    advance(Duration::from_millis(100)).await;
    n.on_tick();
    assert!(a.is_up() && b.is_up(), "tried again after retry_after");
    assert!(n.passive_retry.is_empty());
    assert_eq!(n.zones_down(), (vec![], 1));
    // A probe report takes a server down and up the same way.
    n.on_health(convoy_health::Report {
        server: Arc::clone(&a),
        up: false,
        detail: "timeout".into(),
        agent: None,
    });
    assert!(!a.is_up());
    assert!(n.passive_retry.is_empty(), "active reports need no retry");
}

#[tokio::test(start_paused = true)]
async fn an_enabled_server_ramps_up_for_slow_start() {
    let p = pool("p", &[("a", 1, ""), ("b", 2, "")])
        .replace("slow_start = \"0s\"", "slow_start = \"10s\"");
    let (mut n, _inputs) = node(&text(&p)).await;
    let tables = |n: &Node| n.snap().pools["p"].tables().ramping;
    assert!(!tables(&n), "servers present at start are at full weight");
    let cmd = |action| Command::Server {
        pool: "p".into(),
        server: "a".into(),
        action,
    };
    n.command(cmd(ServerAction::Disable)).unwrap();
    n.command(cmd(ServerAction::Enable)).unwrap();
    assert!(tables(&n), "a ramps up");
    advance(Duration::from_secs(5)).await;
    n.on_tick();
    assert!(tables(&n));
    advance(Duration::from_secs(5)).await;
    n.on_tick();
    assert!(!tables(&n), "the ramp ended");
}

#[tokio::test(start_paused = true)]
async fn a_drain_is_reported_when_idle_and_cut_at_drain_timeout() {
    let t = text(&pool("p", &[("a", 1, ""), ("b", 2, "")])).replace(
        NO_ADMIN,
        &format!("{NO_ADMIN}[node]\ndrain_timeout = \"30s\"\n"),
    );
    let (mut n, _inputs) = node(&t).await;
    let a = state(&n, "a");
    let mut cut = a.request_kill_signal();
    cut.borrow_and_update();
    a.begin_request(1);
    n.command(Command::Server {
        pool: "p".into(),
        server: "a".into(),
        action: ServerAction::Drain,
    })
    .unwrap();
    let key = ("p".to_string(), "a".to_string());
    n.on_tick();
    assert!(n.draining_since.contains_key(&key));
    assert!(!n.drain_reported.contains(&key), "a request is in flight");
    advance(Duration::from_secs(29)).await;
    n.on_tick();
    assert!(!cut.has_changed().unwrap());
    advance(Duration::from_secs(1)).await;
    n.on_tick();
    assert!(cut.has_changed().unwrap(), "cut at drain_timeout");
    a.end_request(1);
    n.on_tick();
    assert!(n.drain_reported.contains(&key), "drain_finished");
    assert_eq!(a.admin(), AdminState::Draining, "still draining");
    // Enabled again: the drain is forgotten.
    n.command(Command::Server {
        pool: "p".into(),
        server: "a".into(),
        action: ServerAction::Enable,
    })
    .unwrap();
    n.on_tick();
    assert!(n.draining_since.is_empty() && n.drain_reported.is_empty());
}

#[tokio::test(start_paused = true)]
async fn converging_until_probes_had_time_and_probes_follow_the_config() {
    let port = free_port();
    let probed = |check: &str| {
        format!(
            "{NO_ADMIN}{}[pools.p]\n[pools.p.health]\ncheck = \"{check}\"\ninterval = \"1s\"\nrise = 2\nfall = 3\n\
             [[pools.p.servers]]\nname = \"a\"\naddress = \"127.0.0.1:9\"\n\
             [[pools.p.servers]]\nname = \"b\"\naddress = \"127.0.0.1:19\"\n",
            tcp_listener("web", port, "p")
        )
    };
    let (mut n, _inputs) = node(&probed("tcp")).await;
    assert_eq!(n.state(), NodeState::Converging);
    assert_eq!(n.probes.len(), 2);
    advance(Duration::from_millis(2_999)).await;
    n.on_tick();
    assert_eq!(n.state(), NodeState::Converging);
    advance(Duration::from_millis(1)).await;
    n.on_tick();
    assert_eq!(n.state(), NodeState::Converged);
    // No more probes: they stop, and there is nothing to wait for.
    n.apply(config(&probed("none")), "test").unwrap();
    assert!(n.probes.is_empty());
    assert_eq!(n.state(), NodeState::Converged);
}

#[tokio::test(start_paused = true)]
async fn standby_servers_switch_on_when_latency_stays_high() {
    let p = format!(
        "{}[pools.p.standby]\nlatency_above = \"100ms\"\nhold = \"1s\"\n",
        pool("p", &[("a", 1, ""), ("spare", 2, "standby = true")])
    );
    let (mut n, _inputs) = node(&text(&p)).await;
    let pool = Arc::clone(&n.snap().pools["p"]);
    assert!(!pool.standby_is_on());
    state(&n, "a").observe(500_000.0, false);
    n.on_tick();
    assert!(!pool.standby_is_on(), "the condition must hold for 1 s");
    advance(Duration::from_millis(1_000)).await;
    state(&n, "a").observe(500_000.0, false);
    n.on_tick();
    assert!(pool.standby_is_on());
}

#[tokio::test(start_paused = true)]
async fn the_latency_window_rotates_every_five_seconds() {
    let (mut n, _inputs) = node(&text(&pool("p", &[("a", 1, "")]))).await;
    n.on_tick();
    assert!(n.prev_window.is_empty());
    // Each rotation keeps the readings taken when the window began: the
    // first window began with none.
    advance(Duration::from_secs(5)).await;
    n.on_tick();
    assert!(n.prev_window.is_empty());
    let key = ("p".to_string(), "a".to_string());
    assert!(n.window.1.contains_key(&key));
    advance(Duration::from_millis(4_900)).await;
    n.on_tick();
    assert!(n.prev_window.is_empty(), "not 5 s yet");
    advance(Duration::from_millis(100)).await;
    n.on_tick();
    assert!(n.prev_window.contains_key(&key));
}
