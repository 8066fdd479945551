//! The config schema. Field defaults live here, next to the fields, and are
//! the single source for docs/CONFIG.md.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Dur;

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Node-wide settings.
    #[serde(default)]
    pub node: Node,
    /// Virtual services.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Server farms by name.
    #[serde(default)]
    pub pools: BTreeMap<String, Pool>,
    /// The admin API, metrics and dashboard.
    #[serde(default)]
    pub admin: Admin,
    /// Membership in a cluster of convoy nodes (none: a node alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
}

/// A node's membership in a cluster of convoy nodes: several nodes share
/// health, operator commands and the ownership of client flows, with no
/// dispatcher. Every message between them is authenticated with the
/// cluster key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// This node's name in the cluster (unique; default `node.name`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Unique priority, 1 the highest: `single` listeners go wholly to the
    /// live node with the highest priority.
    pub priority: u32,
    /// The address for cluster traffic (UDP), dedicated to it.
    pub address: SocketAddr,
    /// Other nodes' cluster addresses to join through (any live one is
    /// enough).
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    /// A file holding the cluster key (at least 32 characters; surrounding
    /// whitespace ignored). Never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<std::path::PathBuf>,
    /// Name of an environment variable holding the cluster key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    /// How often each node probes another (failure detection).
    #[serde(default = "default_probe_interval")]
    pub probe_interval: Dur,
    /// How long a node that missed its probes stays suspected before it
    /// is taken for down.
    #[serde(default = "default_suspicion")]
    pub suspicion: Dur,
    /// Below this many live members, this node claims no new flows (0:
    /// off). Set it to a majority to keep the smaller side of a split
    /// cluster from serving.
    #[serde(default)]
    pub min_members: usize,
    /// This node's share of each listener's flows, relative to the other
    /// nodes' (listener name → weight, 1-10000; default 100 each).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub load_weight: BTreeMap<String, u32>,
    /// How client traffic reaches the nodes: "none" (cluster state only),
    /// "shared" (every node holds the virtual addresses; nftables keeps
    /// each new flow on the node owning its bucket), "ecmp" (each node
    /// announces the virtual addresses with BGP through bird).
    #[serde(default)]
    pub steering: Steering,
    /// The cluster's virtual addresses (for "shared" and "ecmp").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<IpAddr>,
    /// The interface convoy puts the virtual addresses on once its rules
    /// are in place, and takes them off at exit (required for "shared";
    /// for "ecmp" usually "lo"; unset: the operator manages them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The BGP speaker convoy runs for `steering = "ecmp"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<Bgp>,
}

/// How client traffic reaches the cluster's nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Steering {
    /// Cluster state only (DNS steering, or an external device).
    #[default]
    None,
    /// A shared virtual address on one network segment (the WLBS way).
    Shared,
    /// Routes announced with BGP; routers spread flows by ECMP.
    Ecmp,
}

/// The BGP speaker of `steering = "ecmp"`: convoy runs bird2 as its
/// child (it dies with convoy, so a killed node's routes go with its
/// sessions) with a config written from these settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bgp {
    /// This node's autonomous system number.
    pub local_as: u32,
    /// bird's router id (default: the cluster address, when IPv4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<std::net::Ipv4Addr>,
    /// The routers to announce the virtual addresses to.
    pub neighbors: Vec<Neighbor>,
    /// BGP hold time (bird's minimum is 3 s).
    #[serde(default = "default_hold_time")]
    pub hold_time: Dur,
    /// Run BFD on the sessions: a dead node's routes are withdrawn within
    /// `bfd_interval` × 3 instead of the hold time (the routers must run
    /// BFD too).
    #[serde(default = "default_true")]
    pub bfd: bool,
    /// BFD's transmit and receive interval.
    #[serde(default = "default_bfd_interval")]
    pub bfd_interval: Dur,
    /// The bird binary.
    #[serde(default = "default_bird")]
    pub bird: String,
    /// The birdc binary.
    #[serde(default = "default_birdc")]
    pub birdc: String,
}

/// A BGP neighbor (a router).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neighbor {
    /// Its address.
    pub address: IpAddr,
    /// Its autonomous system number.
    #[serde(rename = "as")]
    pub asn: u32,
}

fn default_hold_time() -> Dur {
    Dur::ms(3000)
}

fn default_bfd_interval() -> Dur {
    Dur::ms(100)
}

fn default_bird() -> String {
    "bird".into()
}

fn default_birdc() -> String {
    "birdc".into()
}

fn default_probe_interval() -> Dur {
    Dur::ms(200)
}
fn default_suspicion() -> Dur {
    Dur::ms(300)
}

/// The smallest cluster key accepted, in bytes.
pub const MIN_CLUSTER_KEY: usize = 32;

impl Cluster {
    /// The cluster key, from `key_file` or `key_env`.
    pub fn resolve_key(&self) -> Result<Vec<u8>, String> {
        let (text, from) = if let Some(var) = &self.key_env {
            match std::env::var(var) {
                Ok(v) => (v, format!("environment variable {var}")),
                Err(_) => {
                    return Err(format!(
                        "cluster.key_env: environment variable {var} is not set"
                    ))
                }
            }
        } else if let Some(path) = &self.key_file {
            match std::fs::read_to_string(path) {
                Ok(v) => (v, path.display().to_string()),
                Err(e) => {
                    return Err(format!(
                        "cluster.key_file: cannot read {}: {e}",
                        path.display()
                    ))
                }
            }
        } else {
            return Err("cluster: set key_file or key_env".into());
        };
        let key = text.trim();
        if key.len() < MIN_CLUSTER_KEY {
            return Err(format!(
                "cluster key in {from}: {} characters, at least {MIN_CLUSTER_KEY} needed (e.g. openssl rand -base64 32)",
                key.len()
            ));
        }
        Ok(key.as_bytes().to_vec())
    }

    /// This node's load weight for `listener`.
    pub fn weight_of(&self, listener: &str) -> u32 {
        self.load_weight.get(listener).copied().unwrap_or(100)
    }
}

/// The admin API of the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Serve the admin API (default true).
    pub enabled: bool,
    /// Address of the admin API, metrics and dashboard (default
    /// 127.0.0.1:9900). A non-loopback address needs a token.
    pub address: std::net::SocketAddr,
    /// The bearer token, written in the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Name of an environment variable holding the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// A file holding the token (surrounding whitespace ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<std::path::PathBuf>,
    /// Serve the admin API, metrics and dashboard over TLS (the same
    /// settings as a listener's `tls`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            enabled: true,
            address: std::net::SocketAddr::from(([127, 0, 0, 1], 9900)),
            token: None,
            token_env: None,
            token_file: None,
            tls: None,
        }
    }
}

impl Admin {
    /// The token in force: from `token`, `token_env` or `token_file`
    /// (at most one may be set; `validate` checks). An error names the
    /// source that could not be read; the token itself is never included.
    pub fn resolve_token(&self) -> Result<Option<String>, String> {
        if let Some(t) = &self.token {
            return Ok(Some(t.trim().to_string()));
        }
        if let Some(var) = &self.token_env {
            return match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_string())),
                _ => Err(format!(
                    "admin.token_env: environment variable {var} is not set or empty"
                )),
            };
        }
        if let Some(path) = &self.token_file {
            return match std::fs::read_to_string(path) {
                Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_string())),
                Ok(_) => Err(format!("admin.token_file: {} is empty", path.display())),
                Err(e) => Err(format!(
                    "admin.token_file: cannot read {}: {e}",
                    path.display()
                )),
            };
        }
        Ok(None)
    }
}

/// Node-wide settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Node {
    /// Node name in logs (default: "convoy").
    pub name: String,
    /// Data-plane worker threads; 0 = one per core.
    pub workers: usize,
    /// How long draining servers and a draining node wait for connections.
    pub drain_timeout: Dur,
    /// Log format on stderr: "json" or "text".
    pub log_format: LogFormat,
    /// Use splice(2) zero-copy relaying on Linux (plain copy otherwise).
    pub splice: bool,
    /// Unix socket on which a new convoy process (`convoy run --upgrade`)
    /// takes over the listening sockets: seamless binary upgrade.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_socket: Option<std::path::PathBuf>,
    /// Access log: one JSON line per HTTP request and TCP connection, to
    /// "stderr", "stdout" or a file path. Off when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log: Option<String>,
    /// Open TCP and HTTP connections over every listener together; over
    /// it new ones are refused. 0 = no node-wide limit.
    pub max_connections: u64,
}

impl Default for Node {
    fn default() -> Self {
        Node {
            name: "convoy".into(),
            workers: 0,
            drain_timeout: Dur::secs(30),
            log_format: LogFormat::Text,
            splice: true,
            upgrade_socket: None,
            access_log: None,
            max_connections: 0,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Transport of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP, relayed byte for byte.
    Tcp,
    /// UDP datagrams, per-client flows.
    Udp,
    /// HTTP/1.1 and HTTP/2 (h2c), balanced per request.
    Http,
}

/// Port-rule filtering mode (WLBS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterMode {
    /// Spread over the pool.
    Multiple,
    /// Everything to the highest-priority available server.
    Single,
    /// Refuse all traffic.
    Disabled,
}

/// Client affinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// Weighted round robin.
    None,
    /// Same client IP, same server.
    Client,
    /// Same /24 (IPv4) or /56 (IPv6), same server.
    Network,
}

/// Failback policy for `single` mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    /// Go back to the highest-priority server when it returns.
    Automatic,
    /// Stay where we are until that server fails.
    Manual,
}

/// PROXY protocol version sent to servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// Text header.
    V1,
    /// Binary header.
    V2,
}

/// A listening address: one IP and one port or an inclusive port range,
/// written `127.0.0.1:80`, `[::1]:80` or `0.0.0.0:7000-7010`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenAddr {
    /// Address to bind.
    pub ip: IpAddr,
    /// First port.
    pub first: u16,
    /// Last port (equal to `first` for a single port).
    pub last: u16,
}

impl ListenAddr {
    /// Every socket address this listener binds.
    pub fn sockets(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        (self.first..=self.last).map(move |p| SocketAddr::new(self.ip, p))
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid address {s:?}: {why}");
        let (host, ports) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("expected IP:PORT or IP:FIRST-LAST"))?;
        let host = match host.strip_prefix('[') {
            Some(h) => h
                .strip_suffix(']')
                .ok_or_else(|| bad("unclosed '[' around the IPv6 address"))?,
            None if host.contains(':') => {
                return Err(bad("write an IPv6 address in brackets, e.g. [::1]:80"))
            }
            None => host,
        };
        let ip: IpAddr = host
            .parse()
            .map_err(|_| bad("not an IP address (write IPv6 as [::1]:PORT)"))?;
        let port = |p: &str| -> Result<u16, String> {
            p.parse::<u16>()
                .map_err(|_| bad(&format!("port {p:?} is not a number in 1-65535")))
        };
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(ports)?;
                (p, p)
            }
        };
        if first == 0 {
            return Err(bad("port 0 is not allowed"));
        }
        if first > last {
            return Err(bad("port range is reversed"));
        }
        Ok(ListenAddr { ip, first, last })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(a) => write!(f, "{a}:")?,
            IpAddr::V6(a) => write!(f, "[{a}]:")?,
        }
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A server address: `IP:PORT` (IPv6 as `[::1]:PORT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServerAddr(pub SocketAddr);

impl Serialize for ServerAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ServerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => Err(serde::de::Error::custom(format!(
                "invalid address {s:?}: port 0 is not allowed"
            ))),
            Ok(a) => Ok(ServerAddr(a)),
            Err(_) => Err(serde::de::Error::custom(format!(
                "invalid address {s:?}: expected IP:PORT, e.g. \"10.0.0.5:6379\" or \"[::1]:6379\" (host names are not resolved)"
            ))),
        }
    }
}

/// A virtual service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Name in logs and commands (default: the address).
    #[serde(default)]
    pub name: String,
    /// "tcp" (default) or "udp".
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// Address and port or port range.
    pub address: ListenAddr,
    /// Name of the pool served.
    pub pool: String,
    /// Filtering mode: "multiple" (default), "single", "disabled".
    #[serde(default = "default_mode")]
    pub mode: FilterMode,
    /// Affinity: "none" (default), "client", "network".
    #[serde(default = "default_affinity")]
    pub affinity: Affinity,
    /// Keep a client on its server for this long after its last
    /// connection, even across membership changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<Dur>,
    /// Failback in single mode: "automatic" (default) or "manual".
    #[serde(default = "default_failback")]
    pub failback: Failback,
    /// Concurrent connections (TCP) or flows (UDP) before new ones are refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
    /// Send a PROXY protocol header ("v1" or "v2") to servers (TCP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Connect to each server on the port the client connected to (for a
    /// port range served by servers listening on the same range), instead
    /// of the server's configured port.
    #[serde(default)]
    pub same_port: bool,
    /// UDP: the server's answers a client datagram expects; once they
    /// have come, the flow ends and frees its socket (DNS: 1; syslog and
    /// other one-way protocols: 0, the flow ends once the datagram is
    /// sent). Unset: a flow lasts until `idle_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responses: Option<u32>,
    /// Time allowed to connect to one server before trying the next.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// HTTP: largest request body in bytes, 0 = no limit (default 0);
    /// larger requests get 413.
    #[serde(default)]
    pub max_body: u64,
    /// HTTP routes, tried in order; a request no route matches goes to
    /// `pool` with the default class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// A connection (or UDP flow) with no traffic either way for this long is
    /// closed. Default 10m for TCP, 30s for UDP, 60s for HTTP (idle
    /// keep-alive connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    /// HTTP: time a client has to send a whole request head, counted from
    /// its first byte (or from the connection's start); then 408 and
    /// close. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<Dur>,
    /// TCP and HTTP: a connection idle this long is parked: it keeps its
    /// sockets and its place in the limits but gives up its tasks, timers
    /// and buffers until traffic comes back, its idle timeout or a stop.
    /// HTTP: HTTP/1.1 in clear between requests (about 0.4 KB instead of
    /// 2 KB); TCP: both directions open with nothing in flight. "0s":
    /// never parked. Default 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub park_after: Option<Dur>,
    /// HTTP: longest pause between two pieces of a request body; then the
    /// request fails with 408. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_timeout: Option<Dur>,
    /// HTTP: time a server has, from the moment the request is sent, to
    /// start its answer (the response head); then 504. Default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_timeout: Option<Dur>,
    /// HTTP: time from a request's head until its response head, queue
    /// wait included; then 504.
    /// Default: no limit beyond the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Dur>,
    /// HTTP: terminate TLS (HTTPS) with these certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// HTTP: compress responses (gzip, brotli, zstd) for clients that
    /// accept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Open connections one client address may have (TCP and HTTP);
    /// 0 = no limit.
    #[serde(default)]
    pub max_connections_per_ip: u32,
    /// Per client address: HTTP requests (or, on TCP listeners, new
    /// connections) per second, with a burst; over it HTTP gets 429 and
    /// TCP connections are closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// HTTP: a shared response cache (RFC 9111) in front of the pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSettings>,
    /// HTTP: fields set, added or removed on every request before it goes
    /// to a server (routes may add their own).
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub request_headers: HeaderOps,
    /// HTTP: fields set, added or removed on every response.
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub response_headers: HeaderOps,
    /// HTTP: a request id field (e.g. "X-Request-Id"): kept when the
    /// client sent one, made otherwise; sent to the server, returned to
    /// the client and written in the access log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// HTTP: bodies for convoy's own error answers, by status (e.g.
    /// `503 = "/etc/convoy/503.html"`), read at start and on reload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub error_pages: BTreeMap<String, std::path::PathBuf>,
}

/// Fields to set (replace), add (append) or remove. Values may use
/// `{client_ip}`, `{request_id}`, `{host}`, `{listener}`, `{route}`, and
/// in responses `{server}` (the server that answered).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderOps {
    /// Name → value; an existing field of that name is replaced.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Name → value; added beside any existing field of that name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Names removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOps {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A route that answers with a redirect instead of going to a server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// The `Location`: a template with `{scheme}`, `{host}`, `{path}`
    /// (path and query as received), e.g. "https://{host}{path}".
    pub to: String,
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

fn default_redirect_status() -> u16 {
    302
}

/// The response cache of an HTTP listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Memory budget for stored responses, in bytes.
    pub max_bytes: u64,
    /// Largest response body stored, in bytes (at most `max_bytes`).
    pub max_object: u64,
    /// What goes when the budget is full: "lru" (default), "lfu", "fifo".
    pub eviction: Eviction,
    /// Add `X-Cache: HIT|MISS|STALE|REVALIDATED` to responses.
    pub status_header: bool,
    /// `stale-while-revalidate` for responses that do not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate: Option<Dur>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_bytes: 64 << 20,
            max_object: 8 << 20,
            eviction: Eviction::Lru,
            status_header: true,
            stale_while_revalidate: None,
        }
    }
}

/// What a full response cache drops first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Eviction {
    /// The least recently used.
    #[default]
    Lru,
    /// The least frequently used (with aging).
    Lfu,
    /// The first stored.
    Fifo,
}

/// A TLS protocol version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    V1_3,
}

/// Whether a listener with `client_ca` requires a client certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A handshake without a valid client certificate is refused.
    #[default]
    Required,
    /// Clients may send none (one that is sent must be valid).
    Optional,
}

/// A token bucket per client address.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate, per second.
    pub per_second: f64,
    /// Requests allowed at once above the rate (default: one second's
    /// worth).
    #[serde(default)]
    pub burst: Option<f64>,
}

/// Response compression on an HTTP listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Compression {
    /// Codings in order of preference (ties in the client's q-values go
    /// to the first): "br", "zstd", "gzip".
    pub algorithms: Vec<String>,
    /// Responses with a known length below this are sent as they are.
    pub min_size: u64,
    /// Compressible media types ("text/*" matches every text type).
    pub types: Vec<String>,
    /// Compression level (gzip 1-9, brotli 0-11, zstd 1-19; capped per
    /// coding).
    pub level: u32,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            algorithms: vec!["br".into(), "zstd".into(), "gzip".into()],
            min_size: 1024,
            types: [
                "text/*",
                "application/json",
                "application/javascript",
                "application/xml",
                "application/xhtml+xml",
                "application/rss+xml",
                "application/atom+xml",
                "application/wasm",
                "image/svg+xml",
                "font/ttf",
                "font/otf",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            level: 5,
        }
    }
}

/// TLS termination on an HTTP listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificates, chosen by the client's SNI name; one without `names`
    /// is the default (for clients that send no name or an unknown one).
    pub certificates: Vec<Certificate>,
    /// Lowest protocol version: "1.2" (default) or "1.3".
    #[serde(default)]
    pub min_version: TlsVersion,
    /// CA certificates (PEM) that client certificates must chain to; set
    /// to ask clients for a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<std::path::PathBuf>,
    /// With `client_ca`: "required" (default) or "optional".
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Check the certificate and key files this often and load them when
    /// they change (unset: only on reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<Dur>,
}

/// A certificate chain and its key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// PEM file with the certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
    /// Server names it serves (exact, or "*.example.com"); empty: the
    /// default certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// TLS from convoy to a pool's servers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// CA certificates (PEM) the servers' certificates must chain to.
    pub ca: std::path::PathBuf,
    /// Name to send (SNI) and to verify in the servers' certificates
    /// (default: each server's IP address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

impl Listener {
    /// The idle timeout in force, with the protocol's default.
    pub fn idle_timeout(&self) -> Dur {
        self.idle_timeout.unwrap_or(match self.protocol {
            Protocol::Tcp => Dur::secs(600),
            Protocol::Udp => Dur::secs(30),
            Protocol::Http => Dur::secs(60),
        })
    }

    /// TCP and HTTP: when an idle connection is parked (`None`: never).
    pub fn park_after(&self) -> Option<std::time::Duration> {
        let d = self.park_after.unwrap_or(Dur::secs(2)).get();
        (!d.is_zero()).then_some(d)
    }

    /// HTTP header timeout in force.
    pub fn header_timeout(&self) -> Dur {
        self.header_timeout.unwrap_or(Dur::secs(10))
    }

    /// HTTP body timeout in force.
    pub fn body_timeout(&self) -> Dur {
        self.body_timeout.unwrap_or(Dur::secs(30))
    }

    /// HTTP response timeout in force.
    pub fn response_timeout(&self) -> Dur {
        self.response_timeout.unwrap_or(Dur::secs(60))
    }
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}
fn default_mode() -> FilterMode {
    FilterMode::Multiple
}
fn default_affinity() -> Affinity {
    Affinity::None
}
fn default_failback() -> Failback {
    Failback::Automatic
}
fn default_max_connections() -> u64 {
    10_000
}
fn default_connect_timeout() -> Dur {
    Dur::secs(3)
}

/// An HTTP route: which requests go to which pool, with which priority
/// class and cost. Every condition given must match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name in logs (default: "route-N").
    #[serde(default)]
    pub name: String,
    /// Host header (without port), exact, case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Exact path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// With `path_prefix`: the prefix is replaced by this before the
    /// request goes to a server ("" strips it; what is left keeps its
    /// leading "/").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_prefix: Option<String>,
    /// Answer with a redirect instead of going to a server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Fields set, added or removed on the requests of this route (after
    /// the listener's).
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub request_headers: HeaderOps,
    /// Fields set, added or removed on the responses of this route.
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub response_headers: HeaderOps,
    /// Method, e.g. "GET".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// A header that must be present, written "Name: value" (exact value)
    /// or "Name" (any value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie that must be present, written "name" (any value) or
    /// "name=value".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// The client's address must be in this network ("10.0.0.0/8",
    /// "2001:db8::/32") or be this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Pool served (default: the listener's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Use the listener's cache for these requests (default true).
    #[serde(default = "default_true")]
    pub cache: bool,
    /// A hot route: cached responses are refreshed in the background
    /// before they expire (refresh-ahead).
    #[serde(default)]
    pub hot: bool,
    /// Priority class in the queue: 0 (highest) to 7 (default 4).
    #[serde(default = "default_class")]
    pub priority: u8,
    /// Cost of one request, counted in the servers' load (default 1).
    #[serde(default = "default_cost")]
    pub cost: u32,
    /// Largest request body in bytes (default: the listener's `max_body`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u64>,
}

fn default_class() -> u8 {
    4
}
fn default_cost() -> u32 {
    1
}

/// How a pool picks a server per HTTP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Least outstanding cost per unit of weight.
    LeastOutstanding,
    /// Power of two choices over peak-EWMA latency × load, errors penalized.
    Qos,
    /// Consistent hash of the client address.
    Hash,
}

/// A farm of equivalent servers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Active health checking.
    #[serde(default)]
    pub health: Health,
    /// An agent on each server that says what the server wants (weight,
    /// drain, down), as HAProxy's `agent-check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Agent>,
    /// Passive failure detection from live traffic.
    #[serde(default)]
    pub passive: Passive,
    /// A returning server's weight ramps from 10% to 100% over this window.
    #[serde(default = "default_slow_start")]
    pub slow_start: Dur,
    /// Per-request algorithm for HTTP listeners (default "round_robin").
    #[serde(default = "default_algorithm")]
    pub algorithm: Algorithm,
    /// What `algorithm = "hash"` hashes: "client" (address, default),
    /// "header:NAME" or "cookie:NAME" (falling back to the client address
    /// when absent).
    #[serde(default = "default_hash_on")]
    pub hash_on: String,
    /// Cookie affinity: convoy sets this cookie to an opaque id of the
    /// server that answered, and sends later requests carrying it to that
    /// server while it can take them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_cookie: Option<String>,
    /// High-water mark: requests in flight per server (0 = no limit);
    /// a server's own `max_in_flight` overrides it.
    #[serde(default)]
    pub max_in_flight: u32,
    /// Passive outlier ejection from request outcomes (HTTP).
    #[serde(default)]
    pub outlier: Outlier,
    /// Retries (to another server, after a connect failure) allowed as a
    /// percentage of requests, plus a burst of 10, so a failing pool does
    /// not multiply its load (retry storms).
    #[serde(default = "default_retry_budget")]
    pub retry_budget: u32,
    /// Standby servers: enabled when the pool is overloaded, disabled
    /// again when it has recovered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<Standby>,
    /// Requests that may wait when every server is at its high-water mark.
    #[serde(default = "default_queue_max")]
    pub queue_max: usize,
    /// How long a request may wait before a 503 with Retry-After.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: Dur,
    /// A queued request's class improves by one per this much waiting, so
    /// low classes never starve ("0s" = strict priority).
    #[serde(default = "default_queue_aging")]
    pub queue_aging: Dur,
    /// HTTP: speak HTTP/2 to the servers (h2c, prior knowledge) instead
    /// of HTTP/1.1: one multiplexed connection per server. Upgrades
    /// (WebSocket) still use HTTP/1.1.
    #[serde(default)]
    pub http2: bool,
    /// HTTP tiers: a tier whose best server's latency (peak EWMA) is above
    /// this counts as saturated, so requests spill into the next tier (a
    /// twentieth of them still go to it, to notice its recovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_latency_above: Option<Dur>,
    /// HTTP: speak TLS to the servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// The servers.
    #[serde(default)]
    pub servers: Vec<Server>,
}

fn default_algorithm() -> Algorithm {
    Algorithm::RoundRobin
}
fn default_hash_on() -> String {
    "client".into()
}
fn default_retry_budget() -> u32 {
    20
}
fn default_queue_max() -> usize {
    1000
}
fn default_queue_timeout() -> Dur {
    Dur::secs(5)
}
fn default_queue_aging() -> Dur {
    Dur::secs(1)
}

fn default_slow_start() -> Dur {
    Dur::secs(10)
}

/// Kind of active check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect must succeed.
    Tcp,
    /// An HTTP GET of `path` must answer `expect_status` (and contain
    /// `expect_body`, if set).
    Http,
    /// On one connection, `send` (or `send_hex`) is sent and the answer
    /// must contain `expect` (SMTP `220`, any line protocol).
    Expect,
    /// Redis: `PING` answered `+PONG` (after `AUTH` with a password),
    /// and with `role`, `INFO replication` says so.
    Redis,
    /// PostgreSQL: a login as `user` to `database`, and with `role`,
    /// `pg_is_in_recovery()` says so.
    Postgres,
    /// No active check (passive detection only).
    None,
}

/// Active health check settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// "tcp" (default), "http" or "none".
    pub check: CheckKind,
    /// Time between probes of one server.
    pub interval: Dur,
    /// Time a probe may take.
    pub timeout: Dur,
    /// Consecutive good probes to come back.
    pub rise: u32,
    /// Consecutive failed probes to go down.
    pub fall: u32,
    /// HTTP checks: path requested.
    pub path: String,
    /// HTTP checks: status expected.
    pub expect_status: u16,
    /// HTTP checks: text the body must contain (empty = anything).
    pub expect_body: String,
    /// `expect` checks: text sent first (TOML escapes: "\r\n"); may be
    /// empty (a greeting is awaited).
    pub send: String,
    /// `expect` checks: bytes sent first, in hex (instead of `send`).
    pub send_hex: String,
    /// `expect` checks: text the answer must contain.
    pub expect: String,
    /// `redis`: "master" or "replica"; `postgres`: "primary" or
    /// "standby". Unset: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `postgres`: the user to log in as.
    pub user: String,
    /// `postgres`: the database (default: the user's name).
    pub database: String,
    /// `redis`, `postgres`: the password, in the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// `redis`, `postgres`: the name of an environment variable holding
    /// the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            check: CheckKind::Tcp,
            interval: Dur::ms(500),
            timeout: Dur::ms(500),
            rise: 2,
            fall: 2,
            path: "/".into(),
            expect_status: 200,
            expect_body: String::new(),
            send: String::new(),
            send_hex: String::new(),
            expect: String::new(),
            role: None,
            user: "postgres".into(),
            database: String::new(),
            password: None,
            password_env: None,
        }
    }
}

/// A server's agent: a small TCP text service on the server's address (at
/// `port`) whose one-line answer says `up`, `down`, `drain`, `maint`,
/// `ready` and/or a weight as a percentage (`75%`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    /// The agent's port on each server's IP address.
    pub port: u16,
    /// Time between two questions.
    #[serde(default = "default_agent_interval")]
    pub interval: Dur,
    /// Time an answer may take.
    #[serde(default = "default_agent_timeout")]
    pub timeout: Dur,
    /// Text sent first (some agents want a question); may be empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub send: String,
}

fn default_agent_interval() -> Dur {
    Dur::secs(2)
}

fn default_agent_timeout() -> Dur {
    Dur::secs(1)
}

/// Passive detection: failures seen on live traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Passive {
    /// Consecutive failed connections before the server is taken out: a
    /// connect that fails (refused, timed out) or a connection the server
    /// resets before sending any byte. A connection that got a response
    /// resets the count. 0 disables passive detection.
    pub failures: u32,
    /// With `check = "none"`, a passively failed server is tried again
    /// after this long.
    pub retry_after: Dur,
}

impl Default for Passive {
    fn default() -> Self {
        Passive {
            failures: 3,
            retry_after: Dur::secs(10),
        }
    }
}

/// Outlier ejection: a server answering `consecutive` errors in a row (5xx,
/// connect failures) is ejected for `base_ejection` × the times it was
/// ejected, at most `max_ejection`; at most `max_percent` % of a pool is
/// ejected at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outlier {
    /// Errors in a row that eject (0 = never eject).
    pub consecutive: u32,
    /// First ejection time.
    pub base_ejection: Dur,
    /// Longest ejection time.
    pub max_ejection: Dur,
    /// Largest share of the pool ejected at once, in percent.
    pub max_percent: u32,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive: 5,
            base_ejection: Dur::secs(5),
            max_ejection: Dur::secs(60),
            max_percent: 50,
        }
    }
}

/// When the pool's standby servers (`standby = true`) are switched on:
/// the queue length or the pool's latency (highest peak-EWMA among its
/// active servers) stays above the `on` threshold for `hold`; off again
/// when both stay below the `off` thresholds for `hold`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standby {
    /// Queue length that switches standby servers on.
    #[serde(default = "default_queue_on")]
    pub queue_above: usize,
    /// Queue length under which they may switch off.
    #[serde(default)]
    pub queue_below: usize,
    /// Latency that switches them on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_above: Option<Dur>,
    /// Latency under which they may switch off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_below: Option<Dur>,
    /// How long a condition must last.
    #[serde(default = "default_hold")]
    pub hold: Dur,
    /// Command run on each change (program and arguments, no shell), with
    /// CONVOY_POOL, CONVOY_STANDBY (on/off), CONVOY_SERVERS,
    /// CONVOY_QUEUE and CONVOY_LATENCY_MS in its environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hook: Vec<String>,
}

fn default_queue_on() -> usize {
    10
}
fn default_hold() -> Dur {
    Dur::secs(10)
}

/// One server of a pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Stable name, unique in the pool (default: the address). Live state
    /// (connections, health) follows the name across reloads.
    #[serde(default)]
    pub name: String,
    /// IP:PORT.
    pub address: ServerAddr,
    /// Relative share of new connections (1-10000, default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Rank for `single` mode, 1 = highest; unique in the pool
    /// (default: position in the list, from 1).
    #[serde(default)]
    pub priority: u32,
    /// Failure domain, e.g. the VM host or rack (default "default").
    #[serde(default = "default_zone")]
    pub zone: String,
    /// A disabled server gets no traffic.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A draining server gets no new connections; existing ones finish.
    #[serde(default)]
    pub drain: bool,
    /// Tier: tier 0 takes requests until its servers are at their
    /// high-water marks or unavailable, then tier 1, and so on (mirrors,
    /// backups). HTTP only.
    #[serde(default)]
    pub tier: u32,
    /// A standby server takes traffic only while the pool's standby
    /// switch is on (see `[pools.NAME.standby]`).
    #[serde(default)]
    pub standby: bool,
    /// High-water mark for this server (overrides the pool's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

impl Server {
    /// The high-water mark in force (0 = none).
    pub fn limit(&self, pool: &Pool) -> u32 {
        self.max_in_flight.unwrap_or(pool.max_in_flight)
    }
}

fn default_weight() -> u32 {
    1
}
fn default_zone() -> String {
    "default".into()
}
fn default_true() -> bool {
    true
}

impl Config {
    /// Fills derived defaults (names, priorities). Called by validation so a
    /// loaded config is always normalized.
    pub(crate) fn normalize(&mut self) {
        for l in &mut self.listeners {
            if l.name.is_empty() {
                l.name = l.address.to_string();
            }
            for (i, r) in l.routes.iter_mut().enumerate() {
                if r.name.is_empty() {
                    r.name = format!("route-{i}");
                }
            }
        }
        if let Some(c) = &mut self.cluster {
            if c.name.is_empty() {
                c.name = self.node.name.clone();
            }
        }
        for pool in self.pools.values_mut() {
            for (i, s) in pool.servers.iter_mut().enumerate() {
                if s.name.is_empty() {
                    s.name = s.address.0.to_string();
                }
                if s.priority == 0 {
                    s.priority = i as u32 + 1;
                }
            }
        }
    }
}
