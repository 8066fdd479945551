//! The L4 data plane: accept loops for TCP listeners (choose a server, connect
//! with timeout and failover, relay both ways with splice(2) on Linux), UDP
//! listeners with per-client flows, and the PROXY protocol header.
//!
//! It reads the current [`convoy_core::Snapshot`] through `ArcSwap::load()`
//! for every new connection and never waits on the control plane; passive
//! failure signals go back to it over a channel.
#![forbid(unsafe_code)]

pub mod proxy_protocol;
pub mod relay;
#[cfg(target_os = "linux")]
mod splice;
pub mod tcp;
pub mod udp;

use std::sync::Arc;

use arc_swap::ArcSwap;
use convoy_core::{ServerState, Snapshot};
use tokio::sync::{mpsc, watch};

/// Signals from the data plane to the control plane.
#[derive(Debug)]
pub enum DataEvent {
    /// A connect to this server failed, or it reset a connection.
    Failure {
        /// The server.
        server: Arc<ServerState>,
        /// What happened.
        reason: String,
    },
}

/// What every listener task shares.
#[derive(Clone)]
pub struct Context {
    /// The snapshot in force.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Passive failure signals.
    pub events: mpsc::UnboundedSender<DataEvent>,
    /// Changes when every connection of the node must close (node `stop`).
    pub kill: watch::Receiver<u64>,
    /// Use splice(2) when available.
    pub splice: bool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("splice", &self.splice)
            .finish()
    }
}
