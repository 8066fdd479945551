//! `convoy ctl`: the admin API's commands from the shell (the commands
//! follow WLBS's: start, stop, drainstop, suspend, resume, query).
//! Human tables by default, the API's JSON with `--json`.
//!
//! Exit codes: 0 done; 1 refused by the node (unknown name, wrong state,
//! bad value); 2 usage error; 3 cannot reach the node; 4 unauthorized;
//! 5 the node failed.

use std::fmt::Write as _;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Options and command of `convoy ctl`.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Admin address of the node: HOST:PORT, or https://HOST:PORT when
    /// the admin API has `tls` (then give --cacert).
    #[arg(long, env = "CONVOY_ADMIN", default_value = "127.0.0.1:9900")]
    admin: String,
    /// CA certificates (PEM) the admin API's certificate must chain to
    /// (https only).
    #[arg(long, env = "CONVOY_CACERT")]
    cacert: Option<std::path::PathBuf>,
    /// Bearer token (or set CONVOY_TOKEN).
    #[arg(long, env = "CONVOY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the bearer token (wins over CONVOY_TOKEN).
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Apply a server, weight or listener command on every node of the
    /// cluster (it answers with the nodes that applied it).
    #[arg(long)]
    cluster: bool,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(Subcommand, Debug)]
enum CtlCmd {
    /// The node's state, listeners, pools and servers (by zone).
    Query,
    /// Start serving (after stop, drainstop, or resume).
    Start,
    /// Stop serving now: listeners closed, connections closed.
    Stop,
    /// Stop taking connections; stopped when the open ones have ended.
    Drainstop,
    /// Stop and refuse every command but resume and query.
    Suspend,
    /// Leave the suspended state (then `start`).
    Resume,
    /// Reload the config file.
    Reload,
    /// Enable, disable or drain a listener.
    Listener {
        /// Listener name.
        name: String,
        /// enable, disable or drain.
        #[arg(value_parser = ["enable", "disable", "drain"])]
        action: String,
    },
    /// Enable, disable or drain a server.
    Server {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
        /// enable, disable or drain.
        #[arg(value_parser = ["enable", "disable", "drain"])]
        action: String,
    },
    /// Set a server's weight.
    Weight {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
        /// New weight (1-10000).
        weight: u32,
    },
    /// Set a route's priority class and/or cost.
    Route {
        /// Listener name.
        listener: String,
        /// Route name.
        route: String,
        /// Priority class (0 highest, 7 lowest).
        #[arg(long)]
        priority: Option<u8>,
        /// Cost of one request.
        #[arg(long)]
        cost: Option<u32>,
    },
    /// Why a pool's requests go where they go.
    Explain {
        /// Pool name.
        pool: String,
    },
    /// Recent events.
    Events {
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// The Prometheus metrics text.
    Metrics,
    /// The access log: `reopen` opens its file again (after logrotate).
    Log {
        /// reopen.
        action: LogAction,
    },
    /// The cluster: members, states, flow buckets owned, load; or
    /// drain-stop (start) a named node of it.
    Cluster {
        #[command(subcommand)]
        action: Option<ClusterAction>,
    },
    /// Remove cached responses whose key (host + path + query) starts with
    /// PREFIX ("" for all).
    Purge {
        /// Key prefix, e.g. "www.example.com/images/".
        prefix: String,
        /// Only this listener's cache.
        #[arg(long)]
        listener: Option<String>,
    },
}

/// A command on a named node of the cluster.
/// What to do with the access log.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogAction {
    /// Open the file again by its name (logrotate's postrotate).
    Reopen,
}

#[derive(Subcommand, Debug)]
enum ClusterAction {
    /// Drain-stop the node: its flows go to the others, its connections
    /// finish, it stays stopped.
    Drainstop {
        /// The node's cluster name.
        node: String,
    },
    /// Start the node again.
    Start {
        /// The node's cluster name.
        node: String,
    },
}

/// Exit codes.
const REFUSED: u8 = 1;
const UNREACHABLE: u8 = 3;
const UNAUTHORIZED: u8 = 4;
const FAILED: u8 = 5;

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Runs `convoy ctl`.
pub fn main(args: CtlArgs) -> ExitCode {
    let token = match (&args.token_file, &args.token) {
        (Some(f), _) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                eprintln!("convoy ctl: cannot read token file {}: {e}", f.display());
                return ExitCode::from(2);
            }
        },
        (None, Some(t)) => Some(t.trim().to_string()),
        (None, None) => None,
    };
    let (method, mut path, body) = request_of(&args.cmd);
    if args.cluster {
        if !matches!(
            args.cmd,
            CtlCmd::Server { .. } | CtlCmd::Weight { .. } | CtlCmd::Listener { .. }
        ) {
            eprintln!("convoy ctl: --cluster applies to server, weight and listener commands");
            return ExitCode::from(2);
        }
        path.push_str("?cluster=true");
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("convoy ctl: {e}");
            return ExitCode::from(FAILED);
        }
    };
    let (url, tls) = match args.admin.strip_prefix("https://") {
        Some(rest) => {
            let Some(ca) = &args.cacert else {
                eprintln!("convoy ctl: an https admin address needs --cacert FILE (the CA of its certificate)");
                return ExitCode::from(2);
            };
            let t = convoy_config::UpstreamTls {
                ca: ca.clone(),
                sni: None,
            };
            match convoy_http::tls::client_config(&t, false) {
                Ok(c) => (
                    format!("https://{}{path}", rest.trim_end_matches('/')),
                    Some(c),
                ),
                Err(e) => {
                    eprintln!("convoy ctl: --cacert {}: {e}", ca.display());
                    return ExitCode::from(2);
                }
            }
        }
        None => {
            let host = args.admin.strip_prefix("http://").unwrap_or(&args.admin);
            (format!("http://{}{path}", host.trim_end_matches('/')), None)
        }
    };
    let res = rt.block_on(send(&url, method, token.as_deref(), body, tls));
    let (status, text) = match res {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "convoy ctl: cannot reach the node's admin API at {}: {e}",
                args.admin
            );
            return ExitCode::from(UNREACHABLE);
        }
    };
    if status == 401 {
        eprintln!(
            "convoy ctl: unauthorized: {} (give --token, --token-file or CONVOY_TOKEN)",
            if token.is_some() {
                "the token was refused"
            } else {
                "the node wants a token"
            }
        );
        return ExitCode::from(UNAUTHORIZED);
    }
    if matches!(args.cmd, CtlCmd::Metrics) && status == 200 {
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !(200..300).contains(&status) {
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| v.to_string());
        eprintln!("convoy ctl: {msg}");
        return ExitCode::from(if status >= 500 { FAILED } else { REFUSED });
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        );
    } else {
        print!("{}", human(&args.cmd, &v));
    }
    ExitCode::SUCCESS
}

fn request_of(cmd: &CtlCmd) -> (&'static str, String, Option<String>) {
    match cmd {
        CtlCmd::Query => ("GET", "/api/v1/query".into(), None),
        CtlCmd::Start => ("POST", "/api/v1/node/start".into(), None),
        CtlCmd::Stop => ("POST", "/api/v1/node/stop".into(), None),
        CtlCmd::Drainstop => ("POST", "/api/v1/node/drainstop".into(), None),
        CtlCmd::Suspend => ("POST", "/api/v1/node/suspend".into(), None),
        CtlCmd::Resume => ("POST", "/api/v1/node/resume".into(), None),
        CtlCmd::Reload => ("POST", "/api/v1/node/reload".into(), None),
        CtlCmd::Listener { name, action } => (
            "POST",
            format!("/api/v1/listeners/{}/{action}", enc(name)),
            None,
        ),
        CtlCmd::Server {
            pool,
            server,
            action,
        } => (
            "POST",
            format!(
                "/api/v1/pools/{}/servers/{}/{action}",
                enc(pool),
                enc(server)
            ),
            None,
        ),
        CtlCmd::Weight {
            pool,
            server,
            weight,
        } => (
            "PUT",
            format!("/api/v1/pools/{}/servers/{}/weight", enc(pool), enc(server)),
            Some(serde_json::json!({ "weight": weight }).to_string()),
        ),
        CtlCmd::Route {
            listener,
            route,
            priority,
            cost,
        } => (
            "PUT",
            format!("/api/v1/listeners/{}/routes/{}", enc(listener), enc(route)),
            Some(serde_json::json!({ "priority": priority, "cost": cost }).to_string()),
        ),
        CtlCmd::Explain { pool } => ("GET", format!("/api/v1/pools/{}/explain", enc(pool)), None),
        CtlCmd::Events { since } => ("GET", format!("/api/v1/events?since={since}"), None),
        CtlCmd::Metrics => ("GET", "/metrics".into(), None),
        CtlCmd::Log {
            action: LogAction::Reopen,
        } => ("POST", "/api/v1/node/reopen-log".into(), None),
        CtlCmd::Cluster { action: None } => ("GET", "/api/v1/cluster".into(), None),
        CtlCmd::Cluster {
            action: Some(ClusterAction::Drainstop { node }),
        } => (
            "POST",
            format!("/api/v1/cluster/nodes/{}/drainstop", enc(node)),
            None,
        ),
        CtlCmd::Cluster {
            action: Some(ClusterAction::Start { node }),
        } => (
            "POST",
            format!("/api/v1/cluster/nodes/{}/start", enc(node)),
            None,
        ),
        CtlCmd::Purge { prefix, listener } => (
            "POST",
            "/api/v1/cache/purge".into(),
            Some(serde_json::json!({ "prefix": prefix, "listener": listener }).to_string()),
        ),
    }
}

async fn send(
    url: &str,
    method: &str,
    token: Option<&str>,
    body: Option<String>,
    tls: Option<rustls::ClientConfig>,
) -> Result<(u16, String), String> {
    let mut b = http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let fut = async {
        match tls {
            None => {
                let client: Client<_, Full<Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                client.request(req).await
            }
            Some(cfg) => {
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(cfg)
                    .https_only()
                    .enable_http1()
                    .build();
                let client: Client<_, Full<Bytes>> =
                    Client::builder(TokioExecutor::new()).build(https);
                client.request(req).await
            }
        }
    };
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), fut)
        .await
        .map_err(|_| "no answer within 30 s".to_string())?
        .map_err(|e| {
            use std::error::Error;
            let mut msg = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            msg
        })?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::Number(x)) => x.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::String(t)) => t.clone(),
        _ => "-".into(),
    }
}

fn ms(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_f64)
        .map_or("-".into(), |us| format!("{:.1}", us / 1000.0))
}

/// Left-aligned columns.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |x| x.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, x)| format!("{x:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
    out
}

fn human(cmd: &CtlCmd, v: &Value) -> String {
    match cmd {
        CtlCmd::Query => human_query(v),
        CtlCmd::Cluster { action: None } => human_cluster(v),
        _ if v.get("applied").is_some_and(Value::is_array) => {
            let names = |k: &str| {
                v[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut out = format!(
                "ok: {}={} applied on: {}\n",
                s(v, "target"),
                s(v, "value"),
                names("applied")
            );
            if v["pending"].as_array().is_some_and(|p| !p.is_empty()) {
                let _ = writeln!(out, "not yet on: {}", names("pending"));
            }
            out
        }
        CtlCmd::Explain { .. } => human_explain(v),
        CtlCmd::Events { .. } => {
            let mut out = String::new();
            for e in v["events"].as_array().into_iter().flatten() {
                let mut fields: Vec<String> = e
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| !["seq", "event", "level", "time_ms"].contains(&k.as_str()))
                    .map(|(k, v)| match v {
                        Value::String(t) => format!("{k}={t}"),
                        other => format!("{k}={other}"),
                    })
                    .collect();
                fields.sort();
                let _ = writeln!(
                    out,
                    "{:>5} {:5} {:18} {}",
                    n(e, "seq"),
                    s(e, "level"),
                    s(e, "event"),
                    fields.join(" ")
                );
            }
            let _ = writeln!(out, "(last event: {})", n(v, "last"));
            out
        }
        _ => {
            // Commands answer with a small object: show it as key=value.
            let mut parts: Vec<String> = v
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| match v {
                    Value::String(t) => format!("{k}={t}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            parts.sort();
            format!("ok: {}\n", parts.join(" "))
        }
    }
}

fn human_cluster(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster node {}: {} ({} buckets per listener; {} convergences, last {} ms)",
        s(v, "name"),
        s(v, "state"),
        n(v, "buckets"),
        n(v, "convergences"),
        n(v, "last_convergence_ms")
    );
    if let Some(d) = v["differs"].as_array().filter(|d| !d.is_empty()) {
        let keys: Vec<&str> = d.iter().filter_map(Value::as_str).collect();
        let _ = writeln!(
            out,
            "config differs from the majority in: {}",
            keys.join(", ")
        );
    }
    let mut rows = vec![[
        "MEMBER",
        "ADDRESS",
        "STATE",
        "PRIO",
        "CONNS",
        "BUCKETS",
        "HEARD",
        "FINGERPRINT",
    ]
    .map(String::from)
    .to_vec()];
    for m in v["members"].as_array().into_iter().flatten() {
        let buckets: Vec<String> = m["buckets"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(l, n)| format!("{l}={n}"))
            .collect();
        let name = if m["me"].as_bool() == Some(true) {
            format!("{} (this node)", s(m, "name"))
        } else {
            s(m, "name").to_string()
        };
        rows.push(vec![
            name,
            s(m, "address").into(),
            s(m, "state").into(),
            n(m, "priority"),
            n(m, "connections"),
            buckets.join(" "),
            m["heard_ms_ago"]
                .as_u64()
                .map_or("-".into(), |ms| format!("{ms} ms ago")),
            s(m, "fingerprint").into(),
        ]);
    }
    out.push_str(&table(&rows));
    if let Some(d) = v["down"].as_array().filter(|d| !d.is_empty()) {
        let s: Vec<&str> = d.iter().filter_map(Value::as_str).collect();
        let _ = writeln!(out, "down for the cluster: {}", s.join(", "));
    }
    let st = &v["steering"];
    if st.is_object() {
        let what = match (s(st, "mode"), st["active"].as_bool() == Some(true)) {
            ("shared", true) => {
                let owned: Vec<String> = st["owned"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(l, n)| format!("{l}={n}"))
                    .collect();
                format!("rules in place, new flows of buckets {}", owned.join(" "))
            }
            ("shared", false) => "rules not in place".to_string(),
            (_, true) => "virtual addresses announced".to_string(),
            (_, false) => "virtual addresses withdrawn".to_string(),
        };
        let _ = writeln!(
            out,
            "steering {}: {what} ({} changes){}",
            s(st, "mode"),
            n(st, "changes"),
            st["error"]
                .as_str()
                .map_or(String::new(), |e| format!("; last error: {e}"))
        );
    }
    out
}

fn human_query(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node {}: {}", s(v, "node"), s(v, "state"));
    let mut rows = vec![[
        "LISTENER",
        "ADDRESS",
        "PROTO",
        "POOL",
        "STATE",
        "ACTIVE",
        "ACCEPTED",
        "REQUESTS",
        "REFUSED",
        "NO-SERVER",
    ]
    .map(String::from)
    .to_vec()];
    for l in v["listeners"].as_array().into_iter().flatten() {
        rows.push(vec![
            s(l, "name").into(),
            s(l, "address").into(),
            s(l, "protocol").into(),
            s(l, "pool").into(),
            s(l, "admin").into(),
            n(l, "active"),
            n(l, "accepted"),
            n(l, "requests"),
            n(l, "refused"),
            n(l, "failed"),
        ]);
    }
    out.push_str(&table(&rows));
    for p in v["pools"].as_array().into_iter().flatten() {
        if s(p, "serves") == "l4" {
            out.push_str(&human_l4_pool(p));
            continue;
        }
        let _ = writeln!(
            out,
            "\npool {} ({}): {} available, queue {}/{}{}",
            s(p, "name"),
            s(p, "algorithm"),
            n(p, "eligible"),
            n(p, "queued"),
            n(p, "queue_max"),
            if p["standby_on"] == Value::Bool(true) {
                ", standby on"
            } else {
                ""
            }
        );
        let mut rows = vec![[
            "ZONE",
            "SERVER",
            "ADDRESS",
            "STATE",
            "WEIGHT",
            "TIER",
            "CONNS",
            "IN-FLIGHT",
            "REQUESTS",
            "P50MS",
            "P99MS",
            "ERRORS",
        ]
        .map(String::from)
        .to_vec()];
        for z in p["zones"].as_array().into_iter().flatten() {
            for sv in z["servers"].as_array().into_iter().flatten() {
                let state = if s(sv, "health") == "down" {
                    "down".to_string()
                } else if sv["ejected"] == Value::Bool(true) {
                    "ejected".to_string()
                } else {
                    match s(sv, "admin") {
                        "enabled" => "up".to_string(),
                        other => other.to_string(),
                    }
                };
                rows.push(vec![
                    format!(
                        "{}{}",
                        s(z, "zone"),
                        if z["down"] == Value::Bool(true) {
                            " (down)"
                        } else {
                            ""
                        }
                    ),
                    s(sv, "name").into(),
                    s(sv, "address").into(),
                    state,
                    n(sv, "weight"),
                    n(sv, "tier"),
                    n(sv, "active"),
                    n(sv, "in_flight"),
                    n(sv, "requests"),
                    ms(sv, "p50_us"),
                    ms(sv, "p99_us"),
                    n(sv, "errors"),
                ]);
            }
        }
        out.push_str(&table(&rows));
    }
    out
}

/// A server's state as the tables show it.
fn server_state(sv: &Value) -> String {
    if s(sv, "health") == "down" {
        "down".to_string()
    } else if sv["ejected"] == Value::Bool(true) {
        "ejected".to_string()
    } else {
        match s(sv, "admin") {
            "enabled" => "up".to_string(),
            other => other.to_string(),
        }
    }
}

/// A pool that only TCP and UDP listeners use: connections, not
/// requests; the affinity; in `single` rules, each server's priority and
/// the one in use.
fn human_l4_pool(p: &Value) -> String {
    let mut out = String::new();
    let current: Vec<String> = p["single"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(l, c)| format!("{l} uses {}", c.as_str().unwrap_or("none yet")))
        .collect();
    let _ = writeln!(
        out,
        "\npool {} (TCP/UDP): {} available, affinity {}{}",
        s(p, "name"),
        n(p, "eligible"),
        p["affinity"].as_str().unwrap_or("none"),
        if current.is_empty() {
            String::new()
        } else {
            format!("; single: {}", current.join(", "))
        }
    );
    let in_use: Vec<&str> = p["single"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, c)| c.as_str())
        .collect();
    let mut rows = vec![[
        "ZONE",
        "SERVER",
        "ADDRESS",
        "STATE",
        "WEIGHT",
        "PRIO",
        "CONNS",
        "TOTAL",
        "FAILED",
        "BYTES-IN",
        "BYTES-OUT",
    ]
    .map(String::from)
    .to_vec()];
    for z in p["zones"].as_array().into_iter().flatten() {
        for sv in z["servers"].as_array().into_iter().flatten() {
            let name = s(sv, "name");
            rows.push(vec![
                s(z, "zone").into(),
                if in_use.contains(&name) {
                    format!("{name} *")
                } else {
                    name.into()
                },
                s(sv, "address").into(),
                server_state(sv),
                n(sv, "weight"),
                n(sv, "priority"),
                n(sv, "active"),
                n(sv, "total"),
                n(sv, "failures"),
                n(sv, "bytes_in"),
                n(sv, "bytes_out"),
            ]);
        }
    }
    out.push_str(&table(&rows));
    if !in_use.is_empty() {
        out.push_str("* in use by a single-mode listener\n");
    }
    out
}

fn human_explain(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "pool {}: {}", s(v, "pool"), s(v, "rule"));
    let q = &v["queue"];
    let _ = writeln!(
        out,
        "queue {}/{} (timeout {} ms), standby {}",
        n(q, "length"),
        n(q, "max"),
        n(q, "timeout_ms"),
        if v["standby_on"] == Value::Bool(true) {
            "on"
        } else {
            "off"
        }
    );
    for t in v["tiers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "tier {}: {} servers with room{}{}",
            n(t, "tier"),
            n(t, "servers_with_room"),
            if t["saturated"] == Value::Bool(true) {
                ", saturated"
            } else {
                ""
            },
            if t["slow"] == Value::Bool(true) {
                ", slower than tier_latency_above"
            } else {
                ""
            }
        );
    }
    let mut rows = vec![[
        "SERVER",
        "TIER",
        "CANDIDATE",
        "IN-FLIGHT",
        "LATENCY-MS",
        "ERR-RATE",
        "SCORE",
        "WHY NOT",
    ]
    .map(String::from)
    .to_vec()];
    for sv in v["servers"].as_array().into_iter().flatten() {
        let why: Vec<&str> = sv["why_not"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        rows.push(vec![
            s(sv, "name").into(),
            n(sv, "tier"),
            n(sv, "candidate"),
            format!("{}/{}", n(sv, "in_flight"), n(sv, "max_in_flight")),
            ms(sv, "latency_us"),
            sv["error_rate"]
                .as_f64()
                .map_or("-".into(), |e| format!("{e:.3}")),
            sv["qos_score"]
                .as_f64()
                .map_or("-".into(), |e| format!("{e:.0}")),
            why.join(", "),
        ]);
    }
    out.push_str(&table(&rows));
    let recent = v["recent"].as_array().cloned().unwrap_or_default();
    if !recent.is_empty() {
        let _ = writeln!(out, "recent decisions (newest first):");
        for d in recent {
            let server = d["server"]
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("-");
            let _ = writeln!(
                out,
                "  {} -> {} (class {}, cost {}, queue {}{})",
                s(&d, "outcome"),
                server,
                n(&d, "class"),
                n(&d, "cost"),
                n(&d, "queue_length"),
                d["sticky"]
                    .as_str()
                    .map(|x| format!(", sticky {x}"))
                    .unwrap_or_default()
            );
        }
    }
    out
}
