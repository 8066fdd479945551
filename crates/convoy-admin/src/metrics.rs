//! Prometheus metrics of a node, rendered on each scrape.
//!
//! Nothing is kept between scrapes: [`render`] registers a [`Collector`]
//! over the current snapshot's pools and the listeners, which reads the
//! live atomics while the text is encoded. Every family is described once
//! (`# HELP`, `# TYPE`, and `# UNIT` for `_seconds`/`_bytes`), series keep a
//! stable order (listeners as given, pools by name, servers in config
//! order), and the output ends with `# EOF` (OpenMetrics text, as written
//! by `prometheus_client::encoding::text::encode`; serve it as
//! `application/openmetrics-text; version=1.0.0; charset=utf-8`).

use std::fmt::{self, Write as _};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use convoy_config::Protocol;
use convoy_core::hist::Reading;
use convoy_core::pool::ServerEntry;
use convoy_core::state::ErrorKind;
use convoy_core::{AdminState, ListenerRuntime, PoolRuntime, Snapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
    LabelValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Prefix of every metric name.
const PREFIX: &str = "convoy";

/// The states a node reports in `convoy_node_state`.
const NODE_STATES: [&str; 5] = [
    "converging",
    "converged",
    "draining",
    "stopped",
    "suspended",
];

/// Node-level figures kept by the control loop.
#[derive(Clone, Debug, Default)]
pub struct NodeFigures {
    /// "converging", "converged", "draining", "stopped" or "suspended".
    pub state: String,
    /// Reloads that took effect.
    pub reloads_applied: u64,
    /// Reloads refused (invalid config, failed bind, ...).
    pub reloads_refused: u64,
    /// Seconds since the node started.
    pub uptime_seconds: f64,
    /// Response caches, by listener.
    pub caches: Vec<CacheFigures>,
    /// The node's cluster (none when it is alone).
    pub cluster: Option<ClusterFigures>,
}

/// What the cluster agent counts.
#[derive(Clone, Debug, Default)]
pub struct ClusterFigures {
    /// Members by state (every state, 0 included).
    pub members: Vec<(String, u64)>,
    /// Convergences of this node.
    pub convergences: u64,
    /// Durations of the recent convergences, in milliseconds.
    pub convergence_ms: Vec<u64>,
    /// Datagrams refused, by reason.
    pub refused: Vec<(String, u64)>,
    /// Cluster traffic received and sent, bytes.
    pub bytes_in: u64,
    /// Sent.
    pub bytes_out: u64,
    /// Flow buckets this node owns, by listener.
    pub buckets: Vec<(String, u64)>,
}

/// The counters of one listener's response cache.
#[derive(Clone, Debug, Default)]
pub struct CacheFigures {
    /// Listener name.
    pub listener: String,
    /// Fresh hits.
    pub hits: u64,
    /// Misses.
    pub misses: u64,
    /// Stale responses served (while revalidating, or on server errors).
    pub stale: u64,
    /// Revalidations with the server.
    pub revalidations: u64,
    /// Responses stored.
    pub stores: u64,
    /// Entries evicted for room.
    pub evictions: u64,
    /// Requests that waited for another's fetch (coalesced).
    pub coalesced: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Entries held.
    pub entries: u64,
}

/// Renders every metric of the node in the Prometheus text format
/// (OpenMetrics text as produced by `prometheus_client::encoding::text::encode`,
/// ending with `# EOF`).
pub fn render(snap: &Snapshot, listeners: &[Arc<ListenerRuntime>], node: &NodeFigures) -> String {
    let mut pools: Vec<Arc<PoolRuntime>> = snap.pools.values().cloned().collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    let collector = NodeCollector {
        node: node.clone(),
        listeners: listeners.to_vec(),
        pools,
    };
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        // Writing to a String cannot fail and every value is clamped to
        // what its encoder accepts, so this is a bug; say so and serve
        // what was written.
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

/// Reads the node's live state on each scrape.
#[derive(Debug)]
struct NodeCollector {
    node: NodeFigures,
    listeners: Vec<Arc<ListenerRuntime>>,
    /// Sorted by name.
    pools: Vec<Arc<PoolRuntime>>,
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.encode_node(&mut enc)?;
        self.encode_listeners(&mut enc)?;
        self.encode_pools(&mut enc)?;
        self.encode_caches(&mut enc)?;
        self.encode_servers(&mut enc)
    }
}

/// A label value, escaped as the text formats want (`\\`, `\"`, `\n`);
/// prometheus-client writes label values verbatim.
#[derive(Clone, Copy, Debug)]
struct Esc<'a>(&'a str);

impl EncodeLabelValue for Esc<'_> {
    fn encode(&self, enc: &mut LabelValueEncoder) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            enc.write_str(&rest[..i])?;
            enc.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        enc.write_str(rest)
    }
}

/// A set of `N` labels.
type Labels<'a, const N: usize> = [(&'static str, Esc<'a>); N];

/// A gauge value for a count: gauges are encoded as i64, so clamp.
fn level(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn protocol_label(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Http => "http",
    }
}

fn admin_label(a: AdminState) -> &'static str {
    match a {
        AdminState::Enabled => "enabled",
        AdminState::Draining => "draining",
        AdminState::Disabled => "disabled",
    }
}

/// One counter family: its descriptor, then one sample per series.
fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One gauge family: its descriptor, then one sample per series.
fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One histogram family (in seconds): its descriptor, then the `_sum`,
/// `_count` and `_bucket` samples of each series.
fn histograms<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, Reading)>,
) -> fmt::Result {
    let mut family =
        enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, reading) in series {
        let (sum, count, buckets) = histogram_parts(&reading);
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

/// What `MetricEncoder::encode_histogram` takes: the sum in seconds, the
/// count, and per-bucket (not cumulative) counts by upper bound, the last
/// bound being `f64::MAX` (which it writes as `le="+Inf"`; it accumulates
/// the counts itself). The count is the buckets' total, so that `+Inf`
/// always equals `_count` even when the reading raced with an observation.
fn histogram_parts(r: &Reading) -> (f64, u64, Vec<(f64, u64)>) {
    let mut seen = 0u64;
    let buckets = r
        .cumulative_seconds()
        .into_iter()
        .map(|(le, cumulative)| {
            let n = cumulative.saturating_sub(seen);
            seen = seen.max(cumulative);
            (if le.is_finite() { le } else { f64::MAX }, n)
        })
        .collect();
    (r.sum_us as f64 / 1e6, seen, buckets)
}

/// The cluster's families.
fn encode_cluster(enc: &mut DescriptorEncoder, c: &ClusterFigures) -> fmt::Result {
    gauges(
        enc,
        "cluster_members",
        "Members of the cluster as this node sees them, by state.",
        None,
        c.members
            .iter()
            .map(|(s, n)| ([("state", Esc(s))], level(*n))),
    )?;
    let conv = enc.encode_descriptor(
        "cluster_convergences",
        "Times this node converged (every live member agreeing on the members).",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(c.convergences).encode(conv)?;
    let mut family = enc.encode_descriptor(
        "cluster_convergence_duration",
        "Time from a membership change to convergence (recent ones).",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    let bounds = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, f64::MAX];
    let mut buckets: Vec<(f64, u64)> = bounds.iter().map(|b| (*b, 0)).collect();
    for ms in &c.convergence_ms {
        let s = *ms as f64 / 1000.0;
        if let Some(b) = buckets.iter_mut().find(|(le, _)| s <= *le) {
            b.1 += 1;
        }
    }
    let sum: f64 = c.convergence_ms.iter().map(|ms| *ms as f64 / 1000.0).sum();
    family.encode_histogram::<NoLabelSet>(sum, c.convergence_ms.len() as u64, &buckets, None)?;
    counters(
        enc,
        "cluster_refused",
        "Cluster datagrams refused (malformed, foreign, bad_tag: wrong key or forged, replay, own_id).",
        None,
        c.refused.iter().map(|(r, n)| ([("reason", Esc(r))], *n)),
    )?;
    counters(
        enc,
        "cluster_gossip",
        "Cluster traffic of this node (membership and state), by direction.",
        Some(&Unit::Bytes),
        [
            ([("direction", Esc("in"))], c.bytes_in),
            ([("direction", Esc("out"))], c.bytes_out),
        ],
    )?;
    gauges(
        enc,
        "cluster_buckets_owned",
        "Flow buckets of each listener this node owns (of 4096).",
        None,
        c.buckets
            .iter()
            .map(|(l, n)| ([("listener", Esc(l))], level(*n))),
    )
}

impl NodeCollector {
    fn encode_node(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let current = self.node.state.as_str();
        // A state outside the known ones is still reported.
        let other = (!current.is_empty() && !NODE_STATES.contains(&current)).then_some(current);
        gauges(
            enc,
            "node_state",
            "State of the node: 1 for the current state, 0 for the others.",
            None,
            NODE_STATES
                .into_iter()
                .chain(other)
                .map(|s| ([("state", Esc(s))], i64::from(s == current))),
        )?;
        counters(
            enc,
            "reloads",
            "Configuration reloads, by result.",
            None,
            [
                ([("result", Esc("applied"))], self.node.reloads_applied),
                ([("result", Esc("refused"))], self.node.reloads_refused),
            ],
        )?;
        let uptime = enc.encode_descriptor(
            "uptime",
            "Time since the node started.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.node.uptime_seconds).encode(uptime)?;
        counters(
            enc,
            "local_resource_errors",
            "Errors from this node's own limits (descriptors, local addresses, buffers, memory): never counted against a server.",
            None,
            convoy_core::local::counts()
                .into_iter()
                .map(|(k, n)| ([("kind", Esc(k.as_str()))], n)),
        )?;
        match &self.node.cluster {
            Some(c) => encode_cluster(enc, c),
            None => Ok(()),
        }
    }

    fn encode_caches(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let cs = &self.node.caches;
        fn l(c: &CacheFigures) -> Labels<'_, 1> {
            [("listener", Esc(&c.listener))]
        }
        type Pick = fn(&CacheFigures) -> u64;
        let families: [(&str, &str, Pick); 7] = [
            (
                "cache_hits",
                "Requests answered from the cache, fresh.",
                |c| c.hits,
            ),
            (
                "cache_misses",
                "Requests the cache could not answer.",
                |c| c.misses,
            ),
            (
                "cache_stale_served",
                "Stale responses served (while revalidating, or when the server failed).",
                |c| c.stale,
            ),
            (
                "cache_revalidations",
                "Conditional requests sent to revalidate a stored response.",
                |c| c.revalidations,
            ),
            ("cache_stores", "Responses stored.", |c| c.stores),
            (
                "cache_evictions",
                "Stored responses evicted to make room.",
                |c| c.evictions,
            ),
            (
                "cache_coalesced",
                "Requests that waited for another request's fetch of the same key.",
                |c| c.coalesced,
            ),
        ];
        for (name, help, pick) in families {
            counters(enc, name, help, None, cs.iter().map(|c| (l(c), pick(c))))?;
        }
        gauges(
            enc,
            "cache_stored",
            "Bytes held by the cache.",
            Some(&Unit::Bytes),
            cs.iter().map(|c| (l(c), level(c.bytes))),
        )?;
        gauges(
            enc,
            "cache_entries",
            "Responses held by the cache.",
            None,
            cs.iter().map(|c| (l(c), level(c.entries))),
        )
    }

    fn encode_listeners(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        fn labels(l: &ListenerRuntime) -> Labels<'_, 2> {
            [
                ("listener", Esc(&l.cfg.name)),
                ("protocol", Esc(protocol_label(l.cfg.protocol))),
            ]
        }
        let ls = &self.listeners;
        gauges(
            enc,
            "listener_connections",
            "Open connections (TCP, HTTP) or flows (UDP) of the listener.",
            None,
            ls.iter().map(|l| (labels(l), level(l.counters().active))),
        )?;
        gauges(
            enc,
            "listener_parked_connections",
            "Idle TCP and HTTP/1.1 connections parked outside a task (part of listener_connections).",
            None,
            ls.iter()
                .filter(|l| l.cfg.protocol != Protocol::Udp)
                .map(|l| (labels(l), level(l.parked()))),
        )?;
        counters(
            enc,
            "listener_connections_accepted",
            "Connections or flows accepted by the listener.",
            None,
            ls.iter().map(|l| (labels(l), l.counters().accepted)),
        )?;
        counters(
            enc,
            "listener_connections_refused",
            "Connections or flows refused at the listener's max_connections.",
            None,
            ls.iter().map(|l| (labels(l), l.counters().refused)),
        )?;
        counters(
            enc,
            "listener_no_server",
            "Connections or flows that found no server to take them.",
            None,
            ls.iter().map(|l| (labels(l), l.counters().failed)),
        )?;
        counters(
            enc,
            "listener_requests",
            "HTTP requests received by the listener.",
            None,
            ls.iter()
                .filter(|l| l.cfg.protocol == Protocol::Http)
                .map(|l| (labels(l), l.requests())),
        )?;
        counters(
            enc,
            "listener_rate_limited",
            "HTTP requests refused with 429 by the listener's rate_limit.",
            None,
            ls.iter()
                .filter(|l| l.cfg.protocol == Protocol::Http)
                .map(|l| (labels(l), l.rate_limited())),
        )?;
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        counters(
            enc,
            "listener_responses",
            "HTTP responses sent by the listener, by status class (convoy's own answers included).",
            None,
            ls.iter()
                .filter(|l| l.cfg.protocol == Protocol::Http)
                .flat_map(|l| {
                    let r = l.responses();
                    (0..5).map(move |i| {
                        let [a, b] = labels(l);
                        ([a, b, ("code", Esc(CLASSES[i]))], r[i])
                    })
                }),
        )
    }

    fn encode_pools(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        fn labels(p: &PoolRuntime) -> Labels<'_, 1> {
            [("pool", Esc(&p.name))]
        }
        let ps = &self.pools;
        gauges(
            enc,
            "pool_queue_length",
            "Requests waiting in the pool's queue.",
            None,
            ps.iter().map(|p| (labels(p), level(p.queued() as u64))),
        )?;
        gauges(
            enc,
            "pool_servers_available",
            "Servers of the pool that may take new traffic.",
            None,
            ps.iter()
                .map(|p| (labels(p), level(p.tables().eligible as u64))),
        )?;
        histograms(
            enc,
            "pool_queue_wait",
            "Time spent in the pool's queue by requests that got a server from it.",
            ps.iter().map(|p| (labels(p), p.admission().wait.read())),
        )?;
        counters(
            enc,
            "pool_queue_full",
            "Requests refused because the pool's queue was full.",
            None,
            ps.iter().map(|p| {
                let v = p.admission().full.load(Ordering::Relaxed);
                (labels(p), v)
            }),
        )?;
        counters(
            enc,
            "pool_queue_timeouts",
            "Requests that waited queue_timeout in the pool's queue in vain.",
            None,
            ps.iter().map(|p| {
                let v = p.admission().timeouts.load(Ordering::Relaxed);
                (labels(p), v)
            }),
        )?;
        counters(
            enc,
            "pool_retries",
            "Retries taken from the pool's retry budget.",
            None,
            ps.iter().map(|p| {
                let v = p.admission().retries.load(Ordering::Relaxed);
                (labels(p), v)
            }),
        )
    }

    /// Every server of every pool, pools by name, servers in config order.
    fn servers(&self) -> impl Iterator<Item = (&PoolRuntime, &ServerEntry)> + '_ {
        self.pools
            .iter()
            .flat_map(|p| p.servers.iter().map(move |s| (p.as_ref(), s)))
    }

    fn encode_servers(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        fn labels<'a>(p: &'a PoolRuntime, s: &'a ServerEntry) -> Labels<'a, 3> {
            [
                ("pool", Esc(&p.name)),
                ("server", Esc(&s.cfg.name)),
                ("zone", Esc(&s.cfg.zone)),
            ]
        }
        fn labels_and<'a>(
            p: &'a PoolRuntime,
            s: &'a ServerEntry,
            key: &'static str,
            value: &'a str,
        ) -> Labels<'a, 4> {
            let [a, b, c] = labels(p, s);
            [a, b, c, (key, Esc(value))]
        }

        gauges(
            enc,
            "server_up",
            "1 if the server is healthy (checks and passive signals), 0 if not.",
            None,
            self.servers()
                .map(|(p, s)| (labels(p, s), i64::from(s.state.is_up()))),
        )?;
        gauges(
            enc,
            "server_admin_state",
            "Operator state of the server: 1 for the current state, 0 for the others.",
            None,
            self.servers().flat_map(|(p, s)| {
                let current = s.state.admin();
                [
                    AdminState::Enabled,
                    AdminState::Draining,
                    AdminState::Disabled,
                ]
                .into_iter()
                .map(move |a| {
                    (
                        labels_and(p, s, "state", admin_label(a)),
                        i64::from(a == current),
                    )
                })
            }),
        )?;
        gauges(
            enc,
            "server_ejected",
            "1 while the server is ejected as an outlier, 0 otherwise.",
            None,
            self.servers()
                .map(|(p, s)| (labels(p, s), i64::from(s.state.is_ejected()))),
        )?;
        counters(
            enc,
            "server_ejections",
            "Times the server was ejected as an outlier.",
            None,
            self.servers()
                .map(|(p, s)| (labels(p, s), s.state.ejections())),
        )?;
        gauges(
            enc,
            "server_weight",
            "Configured weight of the server.",
            None,
            self.servers()
                .map(|(p, s)| (labels(p, s), i64::from(s.cfg.weight))),
        )?;
        gauges(
            enc,
            "server_connections",
            "Open connections (or UDP flows) to the server.",
            None,
            self.servers()
                .map(|(p, s)| (labels(p, s), level(s.state.active()))),
        )?;
        // Not `server_connections_total`: its family would be named
        // `server_connections`, like the gauge above.
        counters(
            enc,
            "server_connections_opened",
            "Connections (or UDP flows) opened to the server.",
            None,
            self.servers().map(|(p, s)| (labels(p, s), s.state.total())),
        )?;
        counters(
            enc,
            "server_client_to_server",
            "Bytes relayed from clients to the server.",
            Some(&Unit::Bytes),
            self.servers()
                .map(|(p, s)| (labels(p, s), s.state.bytes().0)),
        )?;
        counters(
            enc,
            "server_server_to_client",
            "Bytes relayed from the server to clients.",
            Some(&Unit::Bytes),
            self.servers()
                .map(|(p, s)| (labels(p, s), s.state.bytes().1)),
        )?;
        counters(
            enc,
            "server_connect_failures",
            "Failed connects (and resets) to the server.",
            None,
            self.servers()
                .map(|(p, s)| (labels(p, s), s.state.connect_failures())),
        )?;
        gauges(
            enc,
            "server_requests_in_flight",
            "HTTP requests in flight on the server.",
            None,
            self.servers()
                .map(|(p, s)| (labels(p, s), level(s.state.in_flight()))),
        )?;
        counters(
            enc,
            "server_requests",
            "HTTP requests sent to the server.",
            None,
            self.servers()
                .map(|(p, s)| (labels(p, s), s.state.requests())),
        )?;
        counters(
            enc,
            "server_errors",
            "Failed HTTP requests on the server, by kind.",
            None,
            self.servers().flat_map(|(p, s)| {
                ErrorKind::ALL
                    .into_iter()
                    .map(move |k| (labels_and(p, s, "kind", k.label()), s.state.errors(k)))
            }),
        )?;
        histograms(
            enc,
            "server_latency",
            "Latency of the server's HTTP responses, to the response head.",
            self.servers()
                .map(|(p, s)| (labels(p, s), s.state.latency.read())),
        )?;
        gauges(
            enc,
            "server_latency_ewma",
            "Peak-EWMA of the server's HTTP latency, as used for balancing.",
            Some(&Unit::Seconds),
            self.servers()
                .map(|(p, s)| (labels(p, s), s.state.qos().0 / 1e6)),
        )?;
        gauges(
            enc,
            "server_error_rate",
            "Recent share of failed HTTP requests on the server (EWMA, 0 to 1).",
            None,
            self.servers().map(|(p, s)| (labels(p, s), s.state.qos().1)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const TEXT: &str = r#"
[[listeners]]
name = "front"
protocol = "http"
address = "127.0.0.1:8080"
pool = "web"

[[listeners]]
name = "db"
address = "127.0.0.1:5432"
pool = "api"

[pools.web]
[[pools.web.servers]]
name = "a"
address = "127.0.0.1:9001"
weight = 3
[[pools.web.servers]]
name = "b"
address = "127.0.0.1:9002"
zone = "rack2"

[pools.api]
[[pools.api.servers]]
name = "x"
address = "127.0.0.1:9003"
"#;

    struct Fixture {
        snap: Snapshot,
        listeners: Vec<Arc<ListenerRuntime>>,
    }

    fn fixture() -> Fixture {
        let cfg = convoy_config::Config::parse("t.toml", TEXT).unwrap();
        let listeners = cfg
            .listeners
            .iter()
            .map(|l| Arc::new(ListenerRuntime::new(l.clone())))
            .collect();
        let snap = Snapshot::build(Arc::new(cfg), None);
        Fixture { snap, listeners }
    }

    fn figures() -> NodeFigures {
        NodeFigures {
            state: "converged".into(),
            reloads_applied: 2,
            reloads_refused: 1,
            uptime_seconds: 12.5,
            caches: vec![CacheFigures {
                listener: "front".into(),
                hits: 7,
                bytes: 1234,
                ..Default::default()
            }],
            cluster: Some(ClusterFigures {
                members: vec![("converged".into(), 2), ("mismatched".into(), 1)],
                convergences: 3,
                convergence_ms: vec![120, 800, 3000],
                refused: vec![("bad_tag".into(), 5), ("replay".into(), 0)],
                bytes_in: 1000,
                bytes_out: 2000,
                buckets: vec![("web".into(), 1365)],
            }),
        }
    }

    /// Drives some traffic through the fixture and renders it.
    fn driven() -> String {
        let f = fixture();
        let web = &f.snap.pools["web"];
        let a = &web.server("a").unwrap().state;
        let b = &web.server("b").unwrap().state;

        a.begin_request(1);
        a.begin_request(1);
        a.end_request(1);
        a.latency.observe(1_500);
        a.latency.observe(40_000);
        a.count_error(ErrorKind::Status5xx);
        a.observe(3_000.0, true);
        a.add_bytes(10, 20);
        a.record_failure();
        let guard = a.open();

        b.set_up(false);
        b.set_admin(AdminState::Draining);
        web.rebuild();

        let adm = web.admission();
        adm.full.fetch_add(3, Ordering::Relaxed);
        adm.timeouts.fetch_add(4, Ordering::Relaxed);
        adm.retries.fetch_add(5, Ordering::Relaxed);
        adm.wait.observe(2_000);

        let front = &f.listeners[0];
        assert!(front.admit());
        front.count_request();
        front.count_response(503);
        front.count_response(200);
        front.count_response(204);
        front.count_failed();

        let out = render(&f.snap, &f.listeners, &figures());
        drop(guard);
        out
    }

    fn assert_line(out: &str, line: &str) {
        assert!(
            out.lines().any(|l| l == line),
            "missing line {line:?} in:\n{out}"
        );
    }

    fn value_of(out: &str, series: &str) -> f64 {
        let prefix = format!("{series} ");
        let found: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect();
        assert_eq!(found.len(), 1, "{series} in:\n{out}");
        found[0].parse().unwrap()
    }

    #[test]
    fn node_listener_and_pool_figures() {
        let out = driven();
        assert!(out.ends_with("# EOF\n"), "{out}");

        assert_line(&out, "# TYPE convoy_node_state gauge");
        assert_line(&out, r#"convoy_node_state{state="converged"} 1"#);
        assert_line(&out, r#"convoy_node_state{state="converging"} 0"#);
        assert_line(&out, r#"convoy_node_state{state="suspended"} 0"#);
        assert_line(&out, "# TYPE convoy_reloads counter");
        assert_line(&out, r#"convoy_reloads_total{result="applied"} 2"#);
        assert_line(&out, r#"convoy_reloads_total{result="refused"} 1"#);
        assert_line(&out, "convoy_uptime_seconds 12.5");
        assert_line(&out, "# UNIT convoy_uptime_seconds seconds");

        let front = r#"{listener="front",protocol="http"}"#;
        let db = r#"{listener="db",protocol="tcp"}"#;
        assert_line(&out, &format!("convoy_listener_connections{front} 1"));
        assert_line(&out, &format!("convoy_listener_connections{db} 0"));
        assert_line(
            &out,
            &format!("convoy_listener_connections_accepted_total{front} 1"),
        );
        assert_line(
            &out,
            &format!("convoy_listener_connections_refused_total{front} 0"),
        );
        assert_line(&out, &format!("convoy_listener_no_server_total{front} 1"));
        assert_line(&out, &format!("convoy_listener_requests_total{front} 1"));
        // Requests are an HTTP figure.
        assert!(!out.contains(&format!("convoy_listener_requests_total{db}")));
        assert_line(
            &out,
            &format!("convoy_listener_parked_connections{front} 0"),
        );
        assert_line(&out, &format!("convoy_listener_parked_connections{db} 0"));
        assert_line(
            &out,
            r#"convoy_listener_responses_total{listener="front",protocol="http",code="2xx"} 2"#,
        );
        assert_line(
            &out,
            r#"convoy_listener_responses_total{listener="front",protocol="http",code="5xx"} 1"#,
        );
        assert_line(
            &out,
            r#"convoy_listener_responses_total{listener="front",protocol="http",code="4xx"} 0"#,
        );

        assert_line(&out, r#"convoy_pool_queue_length{pool="web"} 0"#);
        assert_line(&out, r#"convoy_pool_servers_available{pool="web"} 1"#);
        assert_line(&out, r#"convoy_pool_servers_available{pool="api"} 1"#);
        assert_line(&out, r#"convoy_pool_queue_full_total{pool="web"} 3"#);
        assert_line(&out, r#"convoy_pool_queue_timeouts_total{pool="web"} 4"#);
        assert_line(&out, r#"convoy_pool_retries_total{pool="web"} 5"#);
        assert_line(&out, r#"convoy_pool_retries_total{pool="api"} 0"#);
        assert_line(
            &out,
            r#"convoy_pool_queue_wait_seconds_count{pool="web"} 1"#,
        );
        assert_line(
            &out,
            r#"convoy_pool_queue_wait_seconds_sum{pool="web"} 0.002"#,
        );
        assert_line(
            &out,
            r#"convoy_pool_queue_wait_seconds_bucket{le="0.001",pool="web"} 0"#,
        );
        assert_line(
            &out,
            r#"convoy_pool_queue_wait_seconds_bucket{le="0.0025",pool="web"} 1"#,
        );
        assert_line(
            &out,
            r#"convoy_pool_queue_wait_seconds_bucket{le="+Inf",pool="web"} 1"#,
        );
        assert_line(
            &out,
            r#"convoy_pool_queue_wait_seconds_bucket{le="+Inf",pool="api"} 0"#,
        );

        // Pools come by name.
        let api = out.find(r#"convoy_pool_queue_length{pool="api"}"#).unwrap();
        let web = out.find(r#"convoy_pool_queue_length{pool="web"}"#).unwrap();
        assert!(api < web);
    }

    #[test]
    fn server_figures() {
        let out = driven();
        let a = r#"pool="web",server="a",zone="default""#;
        let b = r#"pool="web",server="b",zone="rack2""#;
        let x = r#"pool="api",server="x",zone="default""#;

        assert_line(&out, &format!("convoy_server_up{{{a}}} 1"));
        assert_line(&out, &format!("convoy_server_up{{{b}}} 0"));
        assert_line(&out, &format!("convoy_server_up{{{x}}} 1"));
        assert_line(
            &out,
            &format!(r#"convoy_server_admin_state{{{a},state="enabled"}} 1"#),
        );
        assert_line(
            &out,
            &format!(r#"convoy_server_admin_state{{{a},state="draining"}} 0"#),
        );
        assert_line(
            &out,
            &format!(r#"convoy_server_admin_state{{{b},state="enabled"}} 0"#),
        );
        assert_line(
            &out,
            &format!(r#"convoy_server_admin_state{{{b},state="draining"}} 1"#),
        );
        assert_line(
            &out,
            &format!(r#"convoy_server_admin_state{{{b},state="disabled"}} 0"#),
        );
        assert_line(&out, &format!("convoy_server_ejected{{{a}}} 0"));
        assert_line(&out, &format!("convoy_server_ejections_total{{{a}}} 0"));
        assert_line(&out, &format!("convoy_server_weight{{{a}}} 3"));
        assert_line(&out, &format!("convoy_server_weight{{{b}}} 1"));
        assert_line(&out, &format!("convoy_server_connections{{{a}}} 1"));
        assert_line(&out, &format!("convoy_server_connections{{{b}}} 0"));
        assert_line(
            &out,
            &format!("convoy_server_connections_opened_total{{{a}}} 1"),
        );
        assert_line(
            &out,
            &format!("convoy_server_client_to_server_bytes_total{{{a}}} 10"),
        );
        assert_line(
            &out,
            &format!("convoy_server_server_to_client_bytes_total{{{a}}} 20"),
        );
        assert_line(
            &out,
            &format!("convoy_server_connect_failures_total{{{a}}} 1"),
        );
        assert_line(&out, &format!("convoy_server_requests_in_flight{{{a}}} 1"));
        assert_line(&out, &format!("convoy_server_requests_total{{{a}}} 2"));
        assert_line(&out, &format!("convoy_server_requests_total{{{b}}} 0"));
        assert_line(
            &out,
            &format!(r#"convoy_server_errors_total{{{a},kind="status_5xx"}} 1"#),
        );
        for kind in ["connect", "timeout", "reset"] {
            assert_line(
                &out,
                &format!(r#"convoy_server_errors_total{{{a},kind="{kind}"}} 0"#),
            );
        }
        assert_line(&out, &format!("convoy_server_error_rate{{{a}}} 0.1"));
        assert_line(&out, &format!("convoy_server_error_rate{{{b}}} 0.0"));
        let ewma = value_of(&out, &format!("convoy_server_latency_ewma_seconds{{{a}}}"));
        assert!(ewma.is_finite() && ewma > 0.0 && ewma < 1.0, "{ewma}");

        // 1.5 ms and 40 ms.
        assert_line(
            &out,
            &format!("convoy_server_latency_seconds_count{{{a}}} 2"),
        );
        assert_line(
            &out,
            &format!("convoy_server_latency_seconds_sum{{{a}}} 0.0415"),
        );
        for (le, n) in [
            ("0.0001", 0),
            ("0.001", 0),
            ("0.0025", 1),
            ("0.025", 1),
            ("0.05", 2),
            ("10.0", 2),
            ("+Inf", 2),
        ] {
            assert_line(
                &out,
                &format!(r#"convoy_server_latency_seconds_bucket{{le="{le}",{a}}} {n}"#),
            );
        }
        assert_line(
            &out,
            &format!("convoy_server_latency_seconds_count{{{b}}} 0"),
        );
        assert_line(
            &out,
            &format!(r#"convoy_server_latency_seconds_bucket{{le="+Inf",{b}}} 0"#),
        );
        assert_line(&out, "# UNIT convoy_server_latency_seconds seconds");
        assert_line(&out, "# TYPE convoy_server_latency_seconds histogram");
    }

    /// One sample line: name, labels in order (values unescaped), value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// Parses `name{k="v",...} value` or `name value`; panics on anything
    /// else.
    fn parse_sample(line: &str) -> Sample {
        let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        let end = line.find(|c: char| !is_name(c)).unwrap_or(line.len());
        let name = &line[..end];
        assert!(
            !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad name in {line:?}"
        );
        let mut rest = &line[end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = rest.find('=').unwrap_or_else(|| panic!("no = in {line:?}"));
                let key = &rest[..eq];
                assert!(
                    !key.is_empty() && key.chars().all(|c| is_name(c) && c != ':'),
                    "bad label name in {line:?}"
                );
                rest = rest[eq + 1..]
                    .strip_prefix('"')
                    .unwrap_or_else(|| panic!("unquoted value in {line:?}"));
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let close = loop {
                    match chars.next() {
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            other => panic!("bad escape {other:?} in {line:?}"),
                        },
                        Some((_, '\n')) | None => panic!("unterminated value in {line:?}"),
                        Some((_, c)) => value.push(c),
                    }
                };
                labels.push((key.to_string(), value));
                rest = &rest[close + 1..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                } else {
                    assert!(rest.starts_with('}'), "bad label list in {line:?}");
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value {v:?} in {line:?}")),
        };
        (name.to_string(), labels, value)
    }

    /// Checks the exposition's structure: metadata once per family and
    /// before its samples, samples of a family together and named after it,
    /// valid sample lines, and consistent histograms. Returns the samples.
    fn check_well_formed(out: &str) -> Vec<Sample> {
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "{out}");
        let mut help: HashMap<String, usize> = HashMap::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut current: Option<(String, String)> = None;
        let mut samples = Vec::new();
        for line in &lines[..lines.len() - 1] {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, text) = rest.split_once(' ').unwrap();
                assert!(!text.is_empty(), "empty help: {line}");
                *help.entry(name.to_string()).or_default() += 1;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').unwrap();
                assert!(
                    ["counter", "gauge", "histogram"].contains(&ty),
                    "type of {line}"
                );
                let old = types.insert(name.to_string(), ty.to_string());
                assert!(old.is_none(), "second TYPE for {name}");
                current = Some((name.to_string(), ty.to_string()));
            } else if let Some(rest) = line.strip_prefix("# UNIT ") {
                let (name, unit) = rest.split_once(' ').unwrap();
                assert!(name.ends_with(&format!("_{unit}")), "{line}");
                assert_eq!(current.as_ref().map(|c| c.0.as_str()), Some(name));
            } else {
                assert!(!line.starts_with('#'), "stray comment {line:?}");
                let sample = parse_sample(line);
                let (family, ty) = current
                    .as_ref()
                    .unwrap_or_else(|| panic!("sample before any TYPE: {line}"));
                let suffix = sample
                    .0
                    .strip_prefix(family.as_str())
                    .unwrap_or_else(|| panic!("{line} is not in family {family}"));
                let allowed: &[&str] = match ty.as_str() {
                    "counter" => &["_total"],
                    "gauge" => &[""],
                    _ => &["_sum", "_count", "_bucket"],
                };
                assert!(allowed.contains(&suffix), "{line} in {ty} {family}");
                if ty == "counter" || suffix == "_count" || suffix == "_bucket" {
                    assert!(sample.2 >= 0.0 && sample.2.fract() == 0.0, "{line}");
                }
                samples.push(sample);
            }
        }
        for (name, n) in &help {
            assert_eq!(*n, 1, "HELP for {name}");
            assert!(types.contains_key(name), "HELP without TYPE for {name}");
        }
        assert_eq!(help.len(), types.len(), "TYPE without HELP");
        check_histograms(&types, &samples);
        samples
    }

    /// Buckets cumulative, ascending, ending with +Inf equal to `_count`.
    fn check_histograms(types: &HashMap<String, String>, samples: &[Sample]) {
        type Series = (String, Vec<(String, String)>);
        let mut buckets: HashMap<Series, Vec<(f64, f64)>> = HashMap::new();
        let mut counts: HashMap<Series, f64> = HashMap::new();
        for (name, labels, value) in samples {
            if let Some(family) = name.strip_suffix("_bucket") {
                assert_eq!(types[family], "histogram");
                let le = labels.iter().find(|(k, _)| k == "le").unwrap();
                let le: f64 = match le.1.as_str() {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap(),
                };
                let rest: Vec<_> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
                buckets
                    .entry((family.to_string(), rest))
                    .or_default()
                    .push((le, *value));
            } else if let Some(family) = name.strip_suffix("_count") {
                if types.get(family).map(String::as_str) == Some("histogram") {
                    counts.insert((family.to_string(), labels.clone()), *value);
                }
            }
        }
        assert!(!buckets.is_empty());
        assert_eq!(buckets.len(), counts.len());
        for (series, bs) in &buckets {
            for w in bs.windows(2) {
                assert!(w[0].0 < w[1].0, "bounds of {series:?}");
                assert!(w[0].1 <= w[1].1, "counts of {series:?}");
            }
            let last = bs.last().unwrap();
            assert_eq!(last.0, f64::INFINITY, "{series:?}");
            assert_eq!(Some(&last.1), counts.get(series), "{series:?}");
        }
    }

    #[test]
    fn exposition_is_well_formed() {
        let out = driven();
        let samples = check_well_formed(&out);
        // Every family is there.
        let families: std::collections::HashSet<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        for name in [
            "convoy_node_state",
            "convoy_reloads",
            "convoy_local_resource_errors",
            "convoy_uptime_seconds",
            "convoy_listener_connections",
            "convoy_listener_parked_connections",
            "convoy_listener_connections_accepted",
            "convoy_listener_connections_refused",
            "convoy_listener_no_server",
            "convoy_listener_requests",
            "convoy_listener_rate_limited",
            "convoy_listener_responses",
            "convoy_pool_queue_length",
            "convoy_pool_servers_available",
            "convoy_pool_queue_wait_seconds",
            "convoy_pool_queue_full",
            "convoy_pool_queue_timeouts",
            "convoy_pool_retries",
            "convoy_server_up",
            "convoy_server_admin_state",
            "convoy_server_ejected",
            "convoy_server_ejections",
            "convoy_server_weight",
            "convoy_server_connections",
            "convoy_server_connections_opened",
            "convoy_server_client_to_server_bytes",
            "convoy_server_server_to_client_bytes",
            "convoy_server_connect_failures",
            "convoy_server_requests_in_flight",
            "convoy_server_requests",
            "convoy_server_errors",
            "convoy_server_latency_seconds",
            "convoy_server_latency_ewma_seconds",
            "convoy_server_error_rate",
            "convoy_cache_hits",
            "convoy_cache_misses",
            "convoy_cache_stale_served",
            "convoy_cache_revalidations",
            "convoy_cache_stores",
            "convoy_cache_evictions",
            "convoy_cache_coalesced",
            "convoy_cache_stored_bytes",
            "convoy_cache_entries",
            "convoy_cluster_members",
            "convoy_cluster_convergences",
            "convoy_cluster_convergence_duration_seconds",
            "convoy_cluster_refused",
            "convoy_cluster_gossip_bytes",
            "convoy_cluster_buckets_owned",
        ] {
            assert!(families.contains(name), "no family {name}");
        }
        assert_eq!(families.len(), 49, "{families:?}");
        assert!(out.contains("convoy_cluster_members{state=\"mismatched\"} 1"));
        assert!(out.contains("convoy_cluster_refused_total{reason=\"bad_tag\"} 5"));
        assert!(out.contains("convoy_cluster_gossip_bytes_total{direction=\"out\"} 2000"));
        assert!(out.contains("convoy_cluster_convergence_duration_seconds_bucket{le=\"1.0\"} 2"));
        assert_line(&out, "convoy_cluster_convergence_duration_seconds_count 3");
        assert_line(&out, "convoy_cluster_convergences_total 3");
        assert!(out.contains("convoy_cluster_buckets_owned{listener=\"web\"} 1365"));
        assert!(out.contains("convoy_cache_hits_total{listener=\"front\"} 7"));
        assert!(out.contains("convoy_cache_stored_bytes{listener=\"front\"} 1234"));
        // Three servers, 17 histogram samples each (sum, count, 17 buckets).
        let latency = samples
            .iter()
            .filter(|s| s.0.starts_with("convoy_server_latency_seconds_"))
            .count();
        assert_eq!(latency, 3 * (2 + 17));
        // No series twice.
        let mut seen = std::collections::HashSet::new();
        for (name, labels, _) in &samples {
            assert!(seen.insert((name, labels)), "{name} {labels:?} twice");
        }
    }

    #[test]
    fn quiet_node_and_odd_names() {
        let f = fixture();
        let mut cfg = f.listeners[0].cfg.clone();
        cfg.name = "we\"ird\\one\nx".into();
        let odd = Arc::new(ListenerRuntime::new(cfg));
        let node = NodeFigures {
            state: "rebooting".into(),
            ..NodeFigures::default()
        };
        let out = render(&f.snap, &[odd], &node);
        check_well_formed(&out);
        assert_line(
            &out,
            r#"convoy_listener_connections{listener="we\"ird\\one\nx",protocol="http"} 0"#,
        );
        let parsed = out
            .lines()
            .find(|l| l.starts_with("convoy_listener_requests_total"))
            .map(parse_sample)
            .unwrap();
        assert_eq!(parsed.1[0].1, "we\"ird\\one\nx");
        // A state outside the known ones still shows, alone at 1.
        assert_line(&out, r#"convoy_node_state{state="rebooting"} 1"#);
        for s in NODE_STATES {
            assert_line(&out, &format!(r#"convoy_node_state{{state="{s}"}} 0"#));
        }
        assert_line(&out, "convoy_uptime_seconds 0.0");
        assert_line(
            &out,
            r#"convoy_server_latency_seconds_bucket{le="+Inf",pool="web",server="a",zone="default"} 0"#,
        );

        // No state at all (a default NodeFigures): no empty label.
        let out = render(&f.snap, &[], &NodeFigures::default());
        check_well_formed(&out);
        assert!(!out.contains(r#"state="""#), "{out}");
        assert!(!out.contains("convoy_listener_connections{"), "{out}");
    }

    #[test]
    fn histogram_parts_are_per_bucket_with_max_last() {
        let h = convoy_core::hist::Histogram::default();
        h.observe(50);
        h.observe(50);
        h.observe(300);
        h.observe(20_000_000);
        let (sum, count, buckets) = histogram_parts(&h.read());
        assert_eq!(count, 4);
        assert!((sum - 20.0004).abs() < 1e-9, "{sum}");
        assert_eq!(buckets.len(), convoy_core::hist::BOUNDS_US.len() + 1);
        assert_eq!(buckets[0], (0.0001, 2));
        assert_eq!(buckets[1], (0.00025, 0));
        assert_eq!(buckets[2], (0.0005, 1));
        assert_eq!(buckets.last(), Some(&(f64::MAX, 1)));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 4);
    }
}
