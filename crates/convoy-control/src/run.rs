//! The node's loop ([`run`]): one task that takes, one at a time, the
//! data plane's passive failures, the probes' reports, the admin API's
//! commands, the upgrade socket's messages, the 250 ms tick, a 20 ms poll
//! while a drain-stop is in progress, and the process's signals, which
//! arrive as [`Signal`]s on a channel (the binary owns the OS handlers).
//! Also here: drain-stop, stop, and closing every connection.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::node::{Node, NodeState};
use crate::startup::Inputs;

/// A signal the process received, as the node's loop takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: reload the config file.
    Hangup,
    /// SIGUSR2: log the query view.
    User2,
    /// SIGQUIT: drain-stop, then exit.
    Quit,
    /// SIGUSR1: drain-stop, then exit.
    User1,
    /// SIGTERM: stop at once.
    Terminate,
    /// SIGINT: stop at once.
    Interrupt,
}

impl Signal {
    /// Its name, as logged (`by`).
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hangup => "SIGHUP",
            Signal::User2 => "SIGUSR2",
            Signal::Quit => "SIGQUIT",
            Signal::User1 => "SIGUSR1",
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        }
    }
}

/// What a signal leaves the loop to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Go on.
    Continue,
    /// Stop now (close every connection) and return.
    Stop(&'static str),
    /// The drain-stop has ended and the process exits.
    Exit,
}

/// Runs the node until a signal or a drain-stop ends it. `signals`: the
/// process's signals, forwarded by the binary's handlers.
pub async fn run(mut node: Node, mut inputs: Inputs, mut signals: mpsc::Receiver<Signal>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut drain_poll = tokio::time::interval(Duration::from_millis(20));
    // While drain-stopping, everything else goes on: health, passive
    // signals, per-server drains, and a SIGTERM/SIGINT still stops at once.
    loop {
        let next = tokio::select! {
            Some(ev) = inputs.events.recv() => { node.on_data_event(ev); Next::Continue }
            Some(r) = inputs.health.recv() => { node.on_health(r); Next::Continue }
            Some(req) = inputs.commands.recv() => { node.on_command(req); Next::Continue }
            Some(m) = inputs.upgrade.recv() => { node.on_upgrade(m); Next::Continue }
            _ = tick.tick() => { node.on_tick(); Next::Continue }
            _ = drain_poll.tick(), if node.drain.is_some() => node.drain_step(),
            Some(sig) = signals.recv() => node.on_signal(sig),
            Some(v) = next_view(&mut inputs.cluster) => { node.on_cluster_view(v); Next::Continue }
        };
        match next {
            Next::Continue => {}
            Next::Exit => {
                node.leave_cluster().await;
                return;
            }
            Next::Stop(by) => return node.stop(by).await,
        }
    }
}

/// The cluster's next view (never, without a cluster or once its agent
/// is gone).
async fn next_view(
    rx: &mut Option<tokio::sync::watch::Receiver<std::sync::Arc<convoy_cluster::view::View>>>,
) -> Option<std::sync::Arc<convoy_cluster::view::View>> {
    let Some(r) = rx else {
        return std::future::pending().await;
    };
    if r.changed().await.is_err() {
        *rx = None;
        return std::future::pending().await;
    }
    Some(std::sync::Arc::clone(&r.borrow_and_update()))
}

impl Node {
    /// Acts on a signal.
    pub fn on_signal(&mut self, sig: Signal) -> Next {
        match sig {
            Signal::Hangup => {
                let _ = self.reload_file();
            }
            Signal::User2 => self.log_query(),
            Signal::Quit | Signal::User1 => self.begin_drainstop(sig.name(), true),
            Signal::Terminate | Signal::Interrupt => return Next::Stop(sig.name()),
        }
        Next::Continue
    }

    /// During a drain-stop (every 20 ms): when no connection is left,
    /// the process exits or the node is stopped; at the deadline the rest
    /// are closed.
    pub fn drain_step(&mut self) -> Next {
        let Some((deadline, exit)) = self.drain else {
            return Next::Continue;
        };
        if self.active() == 0 {
            if exit {
                info!(
                    event = "stopped",
                    by = "drainstop",
                    "node stopped after drain"
                );
                return Next::Exit;
            }
            self.drain = None;
            self.state = NodeState::Stopped;
            info!(
                event = "drain_finished",
                scope = "node",
                "node drained: stopped"
            );
        } else if Instant::now() >= deadline {
            warn!(
                event = "drain_timeout",
                connections = self.active(),
                "closing remaining connections"
            );
            if exit {
                return Next::Stop("drain_timeout");
            }
            self.close_all();
            self.drain = None;
            self.state = NodeState::Stopped;
        }
        Next::Continue
    }

    /// Stops accepting; with `exit`, the process exits when the last
    /// connection ends or at `node.drain_timeout` (signals); otherwise the
    /// node stays up, stopped (admin API).
    pub(crate) fn begin_drainstop(&mut self, by: &str, exit: bool) {
        if let Some((_, e)) = &mut self.drain {
            // A signal during an API drain-stop makes it exit at its end.
            *e |= exit;
            if exit {
                self.close_admin();
            }
            return;
        }
        self.stop_listeners();
        if exit {
            self.close_admin();
        }
        let timeout = self.snap().config.node.drain_timeout.get();
        self.drain = Some((Instant::now() + timeout, exit));
        if self.state != NodeState::Suspended {
            self.state = NodeState::Draining;
        }
        info!(event = "drainstop", by, connections = self.active(), timeout = %self.snap().config.node.drain_timeout, "node draining: no new connections");
    }

    /// Stops the admin API and closes its socket (this process is going
    /// away; a new one may bind or has taken over the address).
    fn close_admin(&mut self) {
        if let Some(t) = self.admin_task.take() {
            t.abort();
            info!(
                event = "admin_closed",
                "admin API closed: this process exits after its drain"
            );
        }
        self.admin_fd = None;
    }

    /// Closes every open connection of the node.
    pub(crate) fn close_all(&mut self) {
        self.kill.send_modify(|v| *v += 1);
        for rt in self
            .listeners
            .iter()
            .map(|l| &l.rt)
            .chain(self.retired.iter())
        {
            rt.wake_connections();
        }
    }

    /// Stops the node: listeners closed, every connection closed (waiting
    /// up to 2 s for them to go).
    pub async fn stop(mut self, by: &str) {
        self.leave_cluster().await;
        self.stop_listeners();
        let n = self.active();
        self.close_all();
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.active() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        info!(event = "stopped", by, closed = n, "node stopped");
    }
}
