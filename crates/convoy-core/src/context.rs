//! What every data-plane task shares with the control plane: the snapshot
//! to read, the channel for passive failure signals, the node's kill signal.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::{ServerState, Snapshot};
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
    /// The access log, when on.
    pub access: Option<Arc<crate::access::AccessLog>>,
    /// The admin token: a request carrying it in `X-Convoy-Explain` gets
    /// an explanation of its server choice in the response.
    pub explain_token: Option<Arc<str>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("splice", &self.splice)
            .finish()
    }
}
