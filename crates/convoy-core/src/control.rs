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
    /// Opens the access log file again (after logrotate moved it).
    ReopenLog,
    /// The cluster: members, their states and shares, this node's part.
    Cluster,
    /// A command for every node of the cluster.
    ClusterWide(ClusterCmd),
    /// Removes cached responses whose key (host + path + query) starts
    /// with `prefix` ("" for all), in one listener's cache or in all.
    Purge {
        /// Only this listener's cache.
        listener: Option<String>,
        /// Key prefix, e.g. "www.example.com/images/".
        prefix: String,
    },
}

/// A command given on one node for the whole cluster: every node applies
/// it, and a node that (re)joins later gets it too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterCmd {
    /// A server command on every node.
    Server {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
        /// What to do.
        action: ServerAction,
    },
    /// A listener command on every node.
    Listener {
        /// Listener name.
        name: String,
        /// What to do.
        action: ListenerAction,
    },
    /// Drain-stop the node named (it hands its flows over, finishes its
    /// connections and stays stopped), or start it again.
    Node {
        /// The node's cluster name.
        name: String,
        /// `true`: drain-stop; `false`: start.
        drainstop: bool,
    },
}

impl ClusterCmd {
    /// The register it sets in the cluster's command map, and its value.
    pub fn target_value(&self) -> (String, String) {
        match self {
            ClusterCmd::Server {
                pool,
                server,
                action,
            } => match action {
                ServerAction::Weight(w) => {
                    (format!("server/{pool}/{server}/weight"), w.to_string())
                }
                a => (
                    format!("server/{pool}/{server}/admin"),
                    match a {
                        ServerAction::Enable => "enable",
                        ServerAction::Disable => "disable",
                        _ => "drain",
                    }
                    .to_string(),
                ),
            },
            ClusterCmd::Listener { name, action } => (
                format!("listener/{name}/admin"),
                match action {
                    ListenerAction::Enable => "enable",
                    ListenerAction::Disable => "disable",
                    ListenerAction::Drain => "drain",
                }
                .to_string(),
            ),
            ClusterCmd::Node { name, drainstop } => (
                format!("node/{name}"),
                if *drainstop { "drainstop" } else { "start" }.to_string(),
            ),
        }
    }
}

/// One member of the cluster, as `convoy ctl cluster` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterMember {
    /// Name.
    pub name: String,
    /// Cluster address.
    pub address: String,
    /// State (joining, converging, converged, draining, mismatched,
    /// conflict, left).
    pub state: String,
    /// Priority (1 highest).
    pub priority: u32,
    /// This node.
    pub me: bool,
    /// Open connections, as it last said.
    pub connections: u64,
    /// Flow buckets it owns, per listener.
    pub buckets: std::collections::BTreeMap<String, usize>,
    /// Its config fingerprint (hex).
    pub fingerprint: String,
    /// Milliseconds since its last doc arrived (none for this node).
    pub heard_ms_ago: Option<u64>,
}

/// The cluster as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterInfo {
    /// This node's name.
    pub name: String,
    /// This node's state in the cluster.
    pub state: String,
    /// The config sections where this node differs from the majority.
    pub differs: Vec<String>,
    /// Buckets per listener.
    pub buckets: usize,
    /// Members, by name.
    pub members: Vec<ClusterMember>,
    /// Servers down for the cluster, as "pool/server".
    pub down: Vec<String>,
    /// Convergences of this node, and the last one's duration.
    pub convergences: u64,
    /// The last convergence's duration, ms.
    pub last_convergence_ms: Option<u64>,
    /// Datagrams refused, by reason.
    pub refused: std::collections::BTreeMap<String, u64>,
    /// Cluster traffic received, bytes.
    pub bytes_in: u64,
    /// Cluster traffic sent, bytes.
    pub bytes_out: u64,
    /// How client traffic reaches this node (none without steering).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steering: Option<SteeringInfo>,
}

/// What this node's steering does now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SteeringInfo {
    /// "shared" or "ecmp".
    pub mode: String,
    /// shared: convoy's rules are in place; ecmp: the virtual addresses
    /// are announced.
    pub active: bool,
    /// shared: buckets this node takes new flows of, per listener.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub owned: std::collections::BTreeMap<String, u64>,
    /// The last command's error, if it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Commands run (table replacements, announcements, withdrawals).
    pub changes: u64,
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
                | Command::Cluster
        )
    }
}

/// Why a command failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CmdErrorKind {
    /// Unknown listener, pool, server or route.
    NotFound,
    /// Not possible in the node's current state (e.g. suspended).
    Conflict,
    /// A bad argument, or a config the node refuses.
    Invalid,
    /// Something failed inside the node (e.g. a socket cannot be bound).
    Failed,
}

impl CmdErrorKind {
    /// The kind as written in the API (`kind` of an error answer).
    pub fn as_str(self) -> &'static str {
        match self {
            CmdErrorKind::NotFound => "not_found",
            CmdErrorKind::Conflict => "conflict",
            CmdErrorKind::Invalid => "invalid",
            CmdErrorKind::Failed => "failed",
        }
    }
}

/// A failed command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CmdError {
    /// Kind of failure.
    pub kind: CmdErrorKind,
    /// What went wrong, for a human.
    pub error: String,
}

impl CmdError {
    /// A failure of `kind`.
    pub fn new(kind: CmdErrorKind, error: impl Into<String>) -> Self {
        CmdError {
            kind,
            error: error.into(),
        }
    }
}

impl std::fmt::Display for CmdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

impl std::error::Error for CmdError {}

/// The node's serving state (WLBS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Serving; health checks have not had time to run yet.
    Converging,
    /// Serving.
    Converged,
    /// Drain-stopping: no new connections, open ones finish.
    Draining,
    /// Not serving (the process stays up).
    Stopped,
    /// Stopped, and refusing every command but resume and the read-only
    /// ones.
    Suspended,
}

impl NodeState {
    /// The state as written in the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Converging => "converging",
            NodeState::Converged => "converged",
            NodeState::Draining => "draining",
            NodeState::Stopped => "stopped",
            NodeState::Suspended => "suspended",
        }
    }
}

/// A config the node applied (reload, or an operator change that goes
/// through the same path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The node serves it: its running listeners and its pools.
    /// JSON: `{"applied": true, "listeners": N, "pools": N}`.
    Serving {
        /// Running listeners.
        listeners: usize,
        /// Pools.
        pools: usize,
    },
    /// The node is stopped or drain-stopping: the config is stored and
    /// the next `start` binds it. JSON: `{"applied": true, "serving": false}`.
    Stored,
}

impl Serialize for Applied {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("applied", &true)?;
        match self {
            Applied::Serving { listeners, pools } => {
                m.serialize_entry("listeners", listeners)?;
                m.serialize_entry("pools", pools)?;
            }
            Applied::Stored => m.serialize_entry("serving", &false)?,
        }
        m.end()
    }
}

/// What a command answers. Typed here; the admin API turns it into JSON
/// (each variant's JSON is given with it).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// `query`: the whole node.
    Query(crate::query::Query),
    /// `start`, `stop`, `drainstop`, `suspend`, `resume`: the node's
    /// serving state afterwards. JSON: `{"state": "stopped"}`.
    State {
        /// The state.
        state: NodeState,
    },
    /// `reload` and route changes: the config applied.
    Applied(Applied),
    /// A listener command: the listener's operator state afterwards.
    /// JSON: `{"listener": NAME, "state": "draining"}`.
    Listener {
        /// Listener name.
        listener: String,
        /// Its operator state.
        state: crate::AdminState,
    },
    /// A server command: the server's operator state and weight
    /// afterwards. JSON: `{"pool", "server", "admin", "weight"}`.
    Server {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
        /// Its operator state.
        admin: Option<crate::AdminState>,
        /// Its weight.
        weight: Option<u32>,
    },
    /// `explain`: the pool's candidates, tiers and recent decisions, as
    /// `PoolRuntime::explain` builds them (JSON already: the figures are
    /// taken as plain numbers on the request path and named only here).
    Explain(serde_json::Value),
    /// `purge`: how many cached responses were removed.
    /// JSON: `{"purged": N}`.
    Purged {
        /// Entries removed.
        purged: usize,
    },
    /// `events`: the newest sequence number and the events after the one
    /// asked for (log events, JSON objects). JSON: `{"last", "events"}`.
    Events {
        /// The newest sequence number.
        last: u64,
        /// The events, oldest first.
        events: Vec<serde_json::Value>,
    },
    /// `metrics`: the Prometheus (OpenMetrics) text, served as is.
    Metrics(String),
    /// `log reopen`: the file the access log writes to now.
    /// JSON: `{"reopened": PATH}`.
    Reopened {
        /// The access log's destination.
        reopened: String,
    },
    /// The cluster.
    Cluster(ClusterInfo),
    /// A cluster-wide command: the nodes that applied it, and those that
    /// had not yet when the answer was given.
    ClusterCommand {
        /// Its register.
        target: String,
        /// Its value.
        value: String,
        /// Nodes that applied it.
        applied: Vec<String>,
        /// Live nodes that had not (yet).
        pending: Vec<String>,
    },
}

/// The answer to a command, or why it failed.
pub type Reply = Result<Answer, CmdError>;

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
