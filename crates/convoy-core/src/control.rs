//! Commands to a node's control plane (WLBS-style control), as sent by the
//! admin API and answered by the control loop. Every change an operator
//! makes goes through this one path, like a reload.

use serde::Serialize;
use tokio::sync::oneshot;

/// What an operator can do to a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerAction {
    /// Take new connections again.
    Enable,
    /// No new connections; open ones are closed.
    Disable,
    /// No new connections; open ones finish.
    Drain,
}

/// What an operator can do to a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAction {
    /// Take traffic again (slow start).
    Enable,
    /// No traffic; open connections are closed.
    Disable,
    /// No new traffic; open connections and requests finish.
    Drain,
    /// Set the weight (1-10000).
    Weight(u32),
}

/// A command to the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// The query view.
    Query,
    /// Start serving (after stop, drainstop or resume).
    Start,
    /// Stop serving now: listeners closed, connections closed.
    Stop,
    /// Stop taking connections; stopped once open ones have ended.
    DrainStop,
    /// Stop serving and refuse every command but resume and query.
    Suspend,
    /// Leave the suspended state (the node stays stopped until start).
    Resume,
    /// Reload the config file.
    Reload,
    /// A listener command.
    Listener {
        /// Listener name.
        name: String,
        /// What to do.
        action: ListenerAction,
    },
    /// A server command.
    Server {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
        /// What to do.
        action: ServerAction,
    },
    /// Change a route's priority class and/or cost at run time.
    Route {
        /// Listener name.
        listener: String,
        /// Route name.
        route: String,
        /// New priority class (0-7).
        priority: Option<u8>,
        /// New cost (≥ 1).
        cost: Option<u32>,
    },
    /// Why the pool's recent choices went where they did.
    Explain {
        /// Pool name.
        pool: String,
    },
    /// Recent events, newer than sequence number `since`.
    Events {
        /// Only events with a greater sequence number.
        since: u64,
    },
    /// Prometheus text exposition of the node's metrics.
    Metrics,
    /// Removes cached responses whose key (host + path + query) starts
    /// with `prefix` ("" for all), in one listener's cache or in all.
    Purge {
        /// Only this listener's cache.
        listener: Option<String>,
        /// Key prefix, e.g. "www.example.com/images/".
        prefix: String,
    },
}

impl Command {
    /// Commands a suspended node still takes.
    pub fn allowed_when_suspended(&self) -> bool {
        matches!(
            self,
            Command::Query
                | Command::Resume
                | Command::Explain { .. }
                | Command::Events { .. }
                | Command::Metrics
        )
    }
}

/// Why a command failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Unknown listener, pool, server or route.
    NotFound,
    /// Not possible in the node's current state (e.g. suspended).
    Conflict,
    /// A bad argument, or a config the node refuses.
    Invalid,
    /// Something failed inside the node (e.g. a socket cannot be bound).
    Failed,
}

/// A failed command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CmdError {
    /// Kind of failure.
    pub kind: ErrorKind,
    /// What went wrong, for a human.
    pub error: String,
}

impl CmdError {
    /// A failure of `kind`.
    pub fn new(kind: ErrorKind, error: impl Into<String>) -> Self {
        CmdError {
            kind,
            error: error.into(),
        }
    }
}

/// The answer: JSON, or for `Metrics`, a JSON string holding the text.
pub type Reply = Result<serde_json::Value, CmdError>;

/// A command with the channel for its answer.
#[derive(Debug)]
pub struct Request {
    /// The command.
    pub cmd: Command,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Reply>,
}

/// Compares two byte strings in time that depends only on their lengths
/// (for tokens).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}
