//! Active health probes. One task per server connects to it every
//! `interval` (with `timeout`) and feeds the result to a rise/fall
//! [`HealthMachine`]; transitions are reported to the control plane, which
//! owns the decision (it flips the server state, rebuilds tables and logs).
//! A server taken down by a passive signal is seen as down here too, so it
//! needs `rise` good probes to return.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use convoy_balance::{HealthMachine, Transition};
use convoy_config::Health;
use convoy_core::ServerState;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{interval, MissedTickBehavior};

/// A health transition seen by a probe.
#[derive(Debug)]
pub struct Report {
    /// The server.
    pub server: Arc<ServerState>,
    /// New state.
    pub up: bool,
    /// Last probe result, for the log.
    pub detail: String,
}

/// Probes `addr` with a TCP connect.
pub async fn probe_tcp(addr: SocketAddr, cfg: &Health) -> Result<(), String> {
    match tokio::time::timeout(cfg.timeout.get(), TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err(format!("connect timed out after {}", cfg.timeout)),
    }
}

/// Starts the probe task for one server.
pub fn spawn(
    server: Arc<ServerState>,
    addr: SocketAddr,
    cfg: Health,
    reports: mpsc::UnboundedSender<Report>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut m = HealthMachine::new(cfg.rise, cfg.fall, server.is_up());
        let mut tick = interval(cfg.interval.get());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Passive signals may have changed the state behind our back.
            if m.is_up() != server.is_up() {
                m.force(server.is_up());
            }
            let r = probe_tcp(addr, &cfg).await;
            let detail = match &r {
                Ok(()) => "tcp connect ok".to_string(),
                Err(e) => e.clone(),
            };
            if let Some(t) = m.observe(r.is_ok()) {
                let up = t == Transition::Up;
                if reports
                    .send(Report {
                        server: Arc::clone(&server),
                        up,
                        detail,
                    })
                    .is_err()
                {
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_config::Dur;
    use convoy_core::AdminState;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn reports_down_then_up() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l); // nothing listens: probes fail
        let s = Arc::new(ServerState::new("p", "a", AdminState::Enabled));
        let cfg = Health {
            interval: Dur::ms(20),
            timeout: Dur::ms(200),
            rise: 2,
            fall: 2,
            ..Health::default()
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let h = spawn(Arc::clone(&s), addr, cfg, tx);
        let r = rx.recv().await.unwrap();
        assert!(!r.up, "{r:?}");
        s.set_up(false);
        let _l = TcpListener::bind(addr).await.unwrap();
        let r = rx.recv().await.unwrap();
        assert!(r.up, "{r:?}");
        h.abort();
    }
}
