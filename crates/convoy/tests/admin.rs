//! The admin API and `convoy ctl`, end to end: every command, auth
//! failures, suspend semantics, /metrics through a real Prometheus parser,
//! events, explain, and reloads under load.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use convoy_testkit::http::HttpOrigin;
use convoy_testkit::{free_port, wait_until, Convoy};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_convoy");
const TOKEN: &str = "test-admin-token";

fn config(port: u16, origins: &[&HttpOrigin], extra_server: &str) -> String {
    let mut servers = String::new();
    for (i, o) in origins.iter().enumerate() {
        servers.push_str(&format!(
            "[[pools.web.servers]]\nname = \"{}\"\naddress = \"{}\"\nzone = \"z{}\"\n{extra_server}\n",
            o.name,
            o.addr,
            i % 2 + 1
        ));
    }
    format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n\
         [[listeners]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"127.0.0.1:{port}\"\npool = \"web\"\n\
         [[listeners.routes]]\nname = \"api\"\npath_prefix = \"/api/\"\npriority = 1\n\n\
         [pools.web]\nslow_start = \"0s\"\n{servers}"
    )
}

/// Runs `convoy ctl` against `admin`; returns (exit code, stdout, stderr).
fn ctl(admin: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(BIN);
    c.arg("ctl").arg("--admin").arg(admin);
    if let Some(t) = token {
        c.arg("--token").arg(t);
    }
    c.env_remove("CONVOY_TOKEN").env_remove("CONVOY_ADMIN");
    let o = c.args(args).output().expect("run convoy ctl");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn query(admin: &str) -> Value {
    let (code, out, err) = ctl(admin, Some(TOKEN), &["--json", "query"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("query JSON")
}

fn server<'a>(q: &'a Value, name: &str) -> &'a Value {
    q["pools"][0]["zones"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|z| z["servers"].as_array().unwrap())
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no server {name} in {q}"))
}

async fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let c: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let r = c
        .get(format!("http://127.0.0.1:{port}{path}").parse().unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let st = r.status().as_u16();
    let b = r
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((st, String::from_utf8_lossy(&b).into_owned()))
}

async fn api(admin: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let r = c
        .request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let st = r.status().as_u16();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (st, String::from_utf8_lossy(&b).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_commands_auth_and_suspend() {
    let a = HttpOrigin::start("a", Duration::ZERO).await;
    let b = HttpOrigin::start("b", Duration::ZERO).await;
    let port = free_port();
    let c = Convoy::start(BIN, &config(port, &[&a, &b], "")).await;
    let admin = c.admin_addr();

    // Query: a table by default, JSON on request. The node converges once
    // its health checks have had time to run.
    let (code, out, _) = ctl(&admin, Some(TOKEN), &["query"]);
    assert_eq!(code, 0);
    assert!(out.contains("node convoy: converging"), "{out}");
    assert!(
        wait_until(Duration::from_secs(20), || query(&admin)["state"]
            == "converged")
        .await,
        "the node never converged"
    );
    let (_, out, _) = ctl(&admin, Some(TOKEN), &["query"]);
    assert!(out.contains("node convoy: converged"), "{out}");
    assert!(out.contains("z1") && out.contains("z2"), "{out}");
    let q = query(&admin);
    assert_eq!(q["state"], "converged");
    assert_eq!(q["listeners"][0]["protocol"], "http");

    // Auth failures and unreachable nodes have their own exit codes.
    let (code, _, err) = ctl(&admin, None, &["query"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("unauthorized"), "{err}");
    let (code, _, _) = ctl(&admin, Some("wrong-token-value"), &["query"]);
    assert_eq!(code, 4);
    let (code, _, err) = ctl(
        &format!("127.0.0.1:{}", free_port()),
        Some(TOKEN),
        &["query"],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    let (st, _) = api(&admin, "GET", "/api/v1/query", None).await;
    assert_eq!(st, 401);

    // Unknown names: exit 1 with a clear message.
    let (code, _, err) = ctl(&admin, Some(TOKEN), &["server", "web", "zz", "drain"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no server \"zz\"") && err.contains("a, b"),
        "{err}"
    );
    let (code, _, err) = ctl(&admin, Some(TOKEN), &["weight", "web", "a", "0"]);
    assert_eq!(code, 1, "{err}");

    // Server drain: no new requests to it; enable brings it back.
    let (code, out, err) = ctl(&admin, Some(TOKEN), &["server", "web", "a", "drain"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("admin=draining"), "{out}");
    assert_eq!(server(&query(&admin), "a")["admin"], "draining");
    let before = a.seen.count.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(get(port, "/").await.unwrap(), (200, "b".into()));
    }
    assert_eq!(a.seen.count.load(Ordering::SeqCst), before);
    assert!(
        c.wait_event("drain_finished", Duration::from_secs(5)).await,
        "a drained server with nothing in flight reports drain_finished"
    );
    let (code, _, _) = ctl(&admin, Some(TOKEN), &["server", "web", "a", "enable"]);
    assert_eq!(code, 0);
    // Weights (b has the default, 1): a gets 3 of every 4 requests.
    let (code, _, _) = ctl(&admin, Some(TOKEN), &["weight", "web", "a", "3"]);
    assert_eq!(code, 0);
    let mut na = 0;
    for _ in 0..40 {
        if get(port, "/").await.unwrap().1 == "a" {
            na += 1;
        }
    }
    assert_eq!(
        na,
        30,
        "weight 3:1 gives a 30 of 40: {}",
        ctl(&admin, Some(TOKEN), &["explain", "web"]).1
    );
    assert_eq!(server(&query(&admin), "a")["weight"], 3);

    // Operator changes survive a reload of the file.
    assert_eq!(
        c.reload(&config(port, &[&a, &b], "")).await,
        "reload_applied"
    );
    assert_eq!(server(&query(&admin), "a")["weight"], 3);

    // Route classes at run time. The listener's figures go on across
    // the change (it is rebuilt with the new routes).
    for _ in 0..3 {
        assert!(get(port, "/").await.is_ok());
    }
    let listener_requests = |q: &Value| q["listeners"][0]["requests"].as_u64().unwrap();
    let before = listener_requests(&query(&admin));
    assert!(before >= 3);
    let (code, out, err) = ctl(
        &admin,
        Some(TOKEN),
        &["route", "web", "api", "--priority", "0", "--cost", "5"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        listener_requests(&query(&admin)) >= before,
        "the listener's counters were reset by a route change"
    );
    let (code, _, err) = ctl(
        &admin,
        Some(TOKEN),
        &["route", "web", "nope", "--cost", "5"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("no route \"nope\""), "{err}");

    // Listener drain: new connections refused, the node still up.
    let (code, _, _) = ctl(&admin, Some(TOKEN), &["listener", "web", "drain"]);
    assert_eq!(code, 0);
    assert!(
        get(port, "/").await.is_err(),
        "a drained listener takes no new connection"
    );
    let (code, _, _) = ctl(&admin, Some(TOKEN), &["listener", "web", "enable"]);
    assert_eq!(code, 0);
    assert!(get(port, "/").await.is_ok());

    // Explain and events.
    let (code, out, _) = ctl(&admin, Some(TOKEN), &["explain", "web"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("smooth weighted round robin") && out.contains("recent decisions"),
        "{out}"
    );
    let (code, out, _) = ctl(&admin, Some(TOKEN), &["events"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("server_admin") && out.contains("reload_applied"),
        "{out}"
    );

    // Suspend: traffic stops, every command but resume and query refused.
    let (code, out, _) = ctl(&admin, Some(TOKEN), &["suspend"]);
    assert_eq!(code, 0);
    assert!(out.contains("state=suspended"), "{out}");
    assert!(
        get(port, "/").await.is_err(),
        "a suspended node serves nothing"
    );
    let (code, _, err) = ctl(&admin, Some(TOKEN), &["start"]);
    assert_eq!(code, 1);
    assert!(err.contains("suspended"), "{err}");
    let (code, _, _) = ctl(&admin, Some(TOKEN), &["server", "web", "a", "drain"]);
    assert_eq!(code, 1);
    assert_eq!(query(&admin)["state"], "suspended");
    let (code, out, _) = ctl(&admin, Some(TOKEN), &["resume"]);
    assert_eq!(code, 0);
    assert!(out.contains("state=stopped"), "{out}");
    let (code, _, _) = ctl(&admin, Some(TOKEN), &["resume"]);
    assert_eq!(code, 1, "resume of a node that is not suspended");
    let (code, _, _) = ctl(&admin, Some(TOKEN), &["start"]);
    assert_eq!(code, 0);
    assert!(get(port, "/").await.is_ok());

    // Stop and start; drainstop through the API keeps the process up.
    let (code, _, _) = ctl(&admin, Some(TOKEN), &["stop"]);
    assert_eq!(code, 0);
    assert!(get(port, "/").await.is_err());
    let (code, _, _) = ctl(&admin, Some(TOKEN), &["start"]);
    assert_eq!(code, 0);
    assert!(get(port, "/").await.is_ok());
    let (code, _, _) = ctl(&admin, Some(TOKEN), &["drainstop"]);
    assert_eq!(code, 0);
    assert!(
        wait_until(Duration::from_secs(5), || query(&admin)["state"]
            == "stopped")
        .await,
        "an idle node drains at once"
    );
    let (code, _, _) = ctl(&admin, Some(TOKEN), &["start"]);
    assert_eq!(code, 0);
    assert!(get(port, "/").await.is_ok());

    // An invalid config file: refused, reported, traffic untouched.
    c.write_config("[[listeners]]\naddress = nonsense\n");
    let (code, _, err) = ctl(&admin, Some(TOKEN), &["reload"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("convoy.toml:5:11:") && err.contains("invalid string"),
        "the error names the place: {err}"
    );
    assert_eq!(get(port, "/").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_traffic() {
    let a = HttpOrigin::start("a", Duration::ZERO).await;
    let b = HttpOrigin::start("b", Duration::ZERO).await;
    let port = free_port();
    let c = Convoy::start(BIN, &config(port, &[&a, &b], "")).await;
    let admin = c.admin_addr();
    let (st, _) = api(&admin, "GET", "/metrics", None).await;
    assert_eq!(st, 401);
    for _ in 0..20 {
        assert_eq!(get(port, "/").await.unwrap().0, 200);
    }
    let (st, text) = api(&admin, "GET", "/metrics", Some(TOKEN)).await;
    assert_eq!(st, 200);
    // A real Prometheus parser reads it all.
    let py = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
total = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        if s.name == "convoy_server_requests_total":
            total[s.labels["server"]] = s.value
        if s.name == "convoy_listener_requests_total":
            total["listener"] = s.value
        if s.name == "convoy_server_latency_seconds_count":
            total["lat_" + s.labels["server"]] = s.value
print(" ".join(f"{k}={int(v)}" for k, v in sorted(total.items())))
"#;
    let mut child = Command::new(py)
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "the parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        out.trim(),
        "a=10 b=10 lat_a=10 lat_b=10 listener=20",
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_lose_no_request() {
    let origins: Vec<HttpOrigin> = futures_join(4).await;
    let port = free_port();
    let refs: Vec<&HttpOrigin> = origins.iter().collect();
    let c = Convoy::start(BIN, &config(port, &refs, "")).await;
    let admin = c.admin_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        let errors = Arc::clone(&errors);
        load.push(tokio::spawn(async move {
            // Bounded: at most 20 s or until told to stop.
            let end = tokio::time::Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < end {
                match get(port, "/").await {
                    Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        errors.lock().unwrap().push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for i in 0..50 {
        // Weights change, servers come and go (never fewer than two).
        let keep = 2 + i % 3;
        let w = format!("weight = {}", 1 + i % 5);
        let text = config(port, &refs[..keep], &w);
        assert_eq!(c.reload(&text).await, "reload_applied", "reload {i}");
        if i % 10 == 0 {
            // And an invalid file now and then: refused, nothing changes.
            let refused = c.events("reload_refused").len();
            c.write_config("[[listeners]]\nbroken");
            let (code, _, _) = ctl(&admin, Some(TOKEN), &["reload"]);
            assert_eq!(code, 1);
            // Its event is read from the log before the next reload
            // counts events (it could otherwise be taken for that one's).
            assert!(
                c.wait_events("reload_refused", refused + 1, Duration::from_secs(5))
                    .await
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 200, "load ran: {ok}");
    let errors = errors.lock().unwrap().clone();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {:?}",
        ok + failed,
        &errors[..errors.len().min(5)]
    );
}

async fn futures_join(n: usize) -> Vec<HttpOrigin> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(HttpOrigin::start(&format!("o{i}"), Duration::from_millis(2)).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_and_the_explain_header() {
    let a = HttpOrigin::start("a", Duration::ZERO).await;
    let b = HttpOrigin::start("b", Duration::ZERO).await;
    let tcp = convoy_testkit::NamedBackend::start("t").await;
    let (port, tport) = (free_port(), free_port());
    let log = convoy_testkit::temp_dir("access").join("access.log");
    let text = format!(
        "[node]\naccess_log = \"{}\"\n\n{}\n\
         [[listeners]]\nname = \"raw\"\naddress = \"127.0.0.1:{tport}\"\npool = \"tcp\"\n\
         [pools.tcp]\n[[pools.tcp.servers]]\nname = \"t\"\naddress = \"{}\"\n",
        log.display(),
        config(port, &[&a, &b], ""),
        tcp.addr
    );
    let _c = Convoy::start(BIN, &text).await;
    for _ in 0..3 {
        assert_eq!(get(port, "/api/x").await.unwrap().0, 200);
    }
    let (name, s) = convoy_testkit::ask_name(None, format!("127.0.0.1:{tport}").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(name, "t");
    drop(s);
    // The explain header, with the admin token only.
    let c: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for (token, want) in [(TOKEN, true), ("not-the-token", false)] {
        let req = http::Request::get(format!("http://127.0.0.1:{port}/"))
            .header("x-convoy-explain", token)
            .body(Empty::new())
            .unwrap();
        let r = c.request(req).await.unwrap();
        let h = r
            .headers()
            .get("x-convoy-explain")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(h.is_some(), want, "{h:?}");
        if let Some(h) = h {
            assert!(h.starts_with("pool=web; server="), "{h}");
            assert!(h.contains("candidates=a(up,") && h.contains("b(up,"), "{h}");
        }
    }
    // Lines: 5 HTTP requests and 1 TCP connection, as JSON.
    let mut lines: Vec<Value> = Vec::new();
    wait_until(Duration::from_secs(5), || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        lines.len() >= 6
    })
    .await;
    assert_eq!(lines.len(), 6, "{lines:?}");
    let api: Vec<&Value> = lines.iter().filter(|l| l["route"] == "api").collect();
    assert_eq!(api.len(), 3);
    for l in &api {
        assert_eq!(l["kind"], "http");
        assert_eq!(l["status"], 200);
        assert_eq!(l["class"], 1);
        assert_eq!(l["tier"], 0);
        assert_eq!(l["bytes_out"], 1, "the origin answers its one-letter name");
        assert!(l["server"] == "a" || l["server"] == "b");
        assert!(l["server_ms"].is_u64() && l["queue_ms"] == 0);
    }
    let t: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "tcp").collect();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0]["server"], "t");
    assert_eq!(t[0]["bytes_out"], 2, "the backend's name line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_are_counted_and_closed_by_disable() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = HttpOrigin::start("a", Duration::ZERO).await;
    let port = free_port();
    let c = Convoy::start(BIN, &config(port, &[&a], "")).await;
    let admin = c.admin_addr();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));
    s.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    // The tunnel counts as an open connection and a request in flight.
    let q = query(&admin);
    assert_eq!(q["listeners"][0]["active"], 1, "{q}");
    assert_eq!(server(&q, "a")["in_flight"], 1);
    // Disabling its server closes it.
    let (code, _, _) = ctl(&admin, Some(TOKEN), &["server", "web", "a", "disable"]);
    assert_eq!(code, 0);
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "the tunnel is closed");
    assert!(
        wait_until(Duration::from_secs(3), || {
            let q = query(&admin);
            q["listeners"][0]["active"] == 0 && server(&q, "a")["in_flight"] == 0
        })
        .await,
        "nothing stays counted"
    );
}

/// A reload refused late (a new listener's port is busy) leaves no trace:
/// a later admin command builds on the running config, not on the refused
/// one, and a command that fails is not remembered for the next reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reloads_and_commands_leave_no_trace() {
    let a = HttpOrigin::start("a", Duration::ZERO).await;
    let b = HttpOrigin::start("b", Duration::ZERO).await;
    let port = free_port();
    let base = config(port, &[&a, &b], "");
    let c = Convoy::start(BIN, &base).await;
    let admin = c.admin_addr();
    // Another process holds the port the new listener wants.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let extra = format!(
        "{base}\n[[listeners]]\nname = \"extra\"\nprotocol = \"http\"\naddress = \"127.0.0.1:{busy_port}\"\npool = \"web\"\n"
    );
    c.write_config(&extra);
    let (code, _, err) = ctl(&admin, Some(TOKEN), &["reload"]);
    assert_ne!(code, 0, "a reload with a busy port must be refused");
    assert!(err.contains("extra"), "{err}");
    drop(busy);
    // The file still holds the refused config; an admin change now must
    // not bring it in with it.
    let (code, _, err) = ctl(&admin, Some(TOKEN), &["weight", "web", "a", "3"]);
    assert_eq!(code, 0, "{err}");
    let q = query(&admin);
    let names: Vec<&str> = q["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web"], "the refused listener came in: {q}");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", busy_port)).is_ok(),
        "convoy bound the refused listener's port"
    );
    assert_eq!(server(&q, "a")["weight"], 3);
    // A command that fails (bad weight) is not kept for later reloads.
    let (code, _, _) = ctl(&admin, Some(TOKEN), &["weight", "web", "b", "0"]);
    assert_ne!(code, 0);
    c.write_config(&base);
    assert_eq!(c.reload(&base).await, "reload_applied");
    let q = query(&admin);
    assert_eq!(server(&q, "a")["weight"], 3, "the operator's weight stays");
    assert_eq!(server(&q, "b")["weight"], 1);
    assert_eq!(get(port, "/").await.map(|r| r.0), Ok(200));
}

/// The token comes from the file, an environment variable or a token file;
/// `convoy ctl` takes it from `--token`, `--token-file` or `CONVOY_TOKEN`;
/// the token never appears in the node's logs; an admin address off
/// loopback without a token is refused before anything starts; a good
/// `ctl reload` succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_sources_ctl_credentials_and_refusals() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let body = |admin: &str| {
        format!(
            "[admin]\naddress = \"127.0.0.1:0\"\n{admin}\n\n\
             [[listeners]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"127.0.0.1:{port}\"\npool = \"web\"\n\n\
             [pools.web]\n[[pools.web.servers]]\nname = \"o\"\naddress = \"{}\"\n",
            o.addr
        )
    };
    // From an environment variable (the node inherits the test's
    // environment; the name is this test's own).
    let secret = "env-secret-7731-abc";
    std::env::set_var("CONVOY_TEST_TOKEN_7731", secret);
    let c = Convoy::start(BIN, &body("token_env = \"CONVOY_TEST_TOKEN_7731\"")).await;
    let admin = c.admin_addr();
    let (code, _, _) = ctl(&admin, Some(secret), &["query"]);
    assert_eq!(code, 0);
    let (code, _, _) = ctl(&admin, Some("wrong-token-123"), &["query"]);
    assert_eq!(code, 4, "unauthorized");
    // ctl: CONVOY_TOKEN and --token-file.
    let o1 = Command::new(BIN)
        .args(["ctl", "--admin", &admin, "query"])
        .env("CONVOY_TOKEN", secret)
        .output()
        .unwrap();
    assert!(
        o1.status.success(),
        "{}",
        String::from_utf8_lossy(&o1.stderr)
    );
    let tf = convoy_testkit::write_temp("ctl-token", &format!("{secret}\n"));
    let o2 = Command::new(BIN)
        .args(["ctl", "--admin", &admin, "--token-file"])
        .arg(&tf)
        .arg("query")
        .env_remove("CONVOY_TOKEN")
        .output()
        .unwrap();
    assert!(
        o2.status.success(),
        "{}",
        String::from_utf8_lossy(&o2.stderr)
    );
    // A good reload through ctl.
    c.write_config(&body("token_env = \"CONVOY_TEST_TOKEN_7731\""));
    let (code, out, err) = ctl(&admin, Some(secret), &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(c.wait_event("reload_applied", Duration::from_secs(5)).await);
    assert!(!c.stderr().contains(secret), "the token was logged");
    drop(c);

    // From a token file (surrounding whitespace ignored).
    let file_secret = "file-secret-5521-xyz";
    let f = convoy_testkit::write_temp("admin-token", &format!("  {file_secret}\n"));
    let c = Convoy::start(BIN, &body(&format!("token_file = \"{}\"", f.display()))).await;
    let admin = c.admin_addr();
    let (code, _, _) = ctl(&admin, Some(file_secret), &["query"]);
    assert_eq!(code, 0);
    let (code, _, _) = ctl(&admin, None, &["query"]);
    assert_eq!(code, 4);
    assert!(!c.stderr().contains(file_secret), "the token was logged");
    drop(c);

    // Off loopback without a token: refused (`check` and `run` load the
    // file through the same validation).
    let open = format!(
        "[admin]\naddress = \"0.0.0.0:0\"\n\n\
         [[listeners]]\naddress = \"127.0.0.1:{port}\"\npool = \"p\"\n\
         [pools.p]\n[[pools.p.servers]]\naddress = \"{}\"\n",
        o.addr
    );
    let p = convoy_testkit::write_temp("open-admin.toml", &open);
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check accepted an open admin API");
    assert!(err.contains("not a loopback address"), "{err}");
}
