//! The node's loop: commands through the channel the admin API uses,
//! and signals through the channel the binary feeds.

use std::time::Duration;

use convoy_core::control::{Answer, Command, Request};
use tokio::sync::{mpsc, oneshot};

use super::{free_port, node, node_with_file, pool, tcp_listener, TempConfig, NO_ADMIN};
use crate::{run, Next, Signal};

fn text(port: u16, weight: u32) -> String {
    format!(
        "{NO_ADMIN}{}{}",
        tcp_listener("web", port, "p"),
        pool("p", &[("a", 1, &format!("weight = {weight}"))])
    )
}

async fn ask(tx: &mpsc::Sender<Request>, cmd: Command) -> Answer {
    let (reply, rx) = oneshot::channel();
    tx.send(Request { cmd, reply }).await.unwrap();
    rx.await.unwrap().unwrap()
}

async fn weight(tx: &mpsc::Sender<Request>) -> u32 {
    let Answer::Query(q) = ask(tx, Command::Query).await else {
        panic!("query");
    };
    q.pools[0].zones[0].servers[0].weight
}

#[tokio::test]
async fn commands_and_a_reload_by_signal_then_stop() {
    let port = free_port();
    let file = TempConfig::new(&text(port, 1));
    let (n, inputs) = node_with_file(&file).await;
    let commands = inputs.commands();
    let (signals, rx) = mpsc::channel(4);
    let task = tokio::spawn(run(n, inputs, rx));
    assert_eq!(weight(&commands).await, 1);
    file.write(&text(port, 6));
    signals.send(Signal::Hangup).await.unwrap();
    // The loop takes its inputs in no set order: the query may come first.
    let mut w = 0;
    for _ in 0..100 {
        w = weight(&commands).await;
        if w == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(w, 6, "SIGHUP reloaded the file");
    signals.send(Signal::Terminate).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("SIGTERM stops the loop")
        .unwrap();
    // The listening socket closes as its accept loop sees the stop.
    let mut free = false;
    for _ in 0..100 {
        free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(free, "the listening socket is closed");
}

#[tokio::test]
async fn quit_drain_stops_and_the_loop_ends_when_idle() {
    let (n, inputs) = node(&text(free_port(), 1)).await;
    let (signals, rx) = mpsc::channel(4);
    let task = tokio::spawn(run(n, inputs, rx));
    signals.send(Signal::Quit).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("an idle node exits after SIGQUIT")
        .unwrap();
}

#[tokio::test]
async fn signals_map_to_what_the_node_does() {
    let (mut n, _inputs) = node(&text(free_port(), 1)).await;
    assert_eq!(n.on_signal(Signal::User2), Next::Continue);
    assert_eq!(n.on_signal(Signal::Hangup), Next::Continue);
    assert_eq!(n.reloads_refused, 1, "no file to reload");
    assert_eq!(n.on_signal(Signal::Interrupt), Next::Stop("SIGINT"));
    assert_eq!(n.on_signal(Signal::User1), Next::Continue);
    assert_eq!(n.state(), crate::NodeState::Draining);
    assert!(matches!(n.drain, Some((_, true))), "exits at the end");
    assert_eq!(n.drain_step(), Next::Exit);
}
