//! HTTP rewriting with curl: a request id made or kept, fields set, added
//! and removed both ways (with variables), a redirect, a path prefix
//! stripped, a custom body for convoy's own 503.

use std::process::Command;
use std::time::Duration;

use convoy_testkit::http::HttpOrigin;
use convoy_testkit::{free_port, write_temp, Convoy};

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

/// `curl -si URL` with extra arguments: (status line and fields, body).
fn curl(url: &str, extra: &[&str]) -> (String, String) {
    let o = Command::new("curl")
        .args(["-s", "-i", "--max-time", "5"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    (head.to_ascii_lowercase(), body.to_string())
}

fn field<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}: ")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_responses_are_rewritten() {
    let o = HttpOrigin::start("origin-1", Duration::ZERO).await;
    let page = write_temp("503.html", "<h1>Back soon</h1>\n");
    let port = free_port();
    let cfg = format!(
        r#"[[listeners]]
name = "web"
protocol = "http"
address = "127.0.0.1:{port}"
pool = "web"
request_id = "X-Request-Id"
request_headers = {{ set = {{ "X-Client" = "{{client_ip}}" }}, remove = ["X-Secret"] }}
response_headers = {{ set = {{ "X-Served-By" = "{{server}}" }}, add = {{ "X-Route" = "{{route}} via {{listener}}" }} }}
error_pages = {{ 503 = "{page}" }}

[[listeners.routes]]
name = "old"
path_prefix = "/old/"
redirect = {{ to = "https://{{host}}/new{{path}}", status = 301 }}

[[listeners.routes]]
name = "api"
path_prefix = "/api/"
rewrite_prefix = ""
response_headers = {{ remove = ["X-Seen-Host"] }}

[[listeners.routes]]
name = "closed"
path_prefix = "/closed/"
pool = "empty"

[pools.web]
[[pools.web.servers]]
name = "o1"
address = "{addr}"

[pools.empty]
health = {{ check = "none" }}
[[pools.empty.servers]]
name = "off"
address = "127.0.0.1:9"
enabled = false
"#,
        page = page.display(),
        addr = o.addr,
    );
    let c = Convoy::start(BIN, &cfg).await;
    let base = format!("http://127.0.0.1:{port}");

    // Fields: set and removed on the way in (the origin echoes them),
    // set and added on the way out, with variables.
    let (head, body) = curl(
        &format!("{base}/plain"),
        &["-H", "X-Secret: s3cret", "-H", "X-Client: spoofed"],
    );
    assert_eq!(body, "origin-1");
    assert_eq!(field(&head, "x-seen-x-client"), ["127.0.0.1"], "{head}");
    assert!(field(&head, "x-seen-x-secret").is_empty(), "{head}");
    assert_eq!(field(&head, "x-served-by"), ["o1"], "{head}");
    assert_eq!(field(&head, "x-route"), ["default via web"], "{head}");
    // A request id is made, sent to the server and returned...
    let id = field(&head, "x-request-id");
    assert_eq!(id.len(), 1, "{head}");
    assert_eq!(id[0].len(), 32);
    assert_eq!(field(&head, "x-seen-x-request-id"), id, "{head}");
    // ...and kept when the client sent one.
    let (head, _) = curl(&format!("{base}/plain"), &["-H", "X-Request-Id: trace-42"]);
    assert_eq!(field(&head, "x-request-id"), ["trace-42"]);
    assert_eq!(field(&head, "x-seen-x-request-id"), ["trace-42"]);

    // A redirect, without reaching the server.
    let before = o.seen.count.load(std::sync::atomic::Ordering::SeqCst);
    let (head, _) = curl(
        &format!("{base}/old/page?x=1"),
        &["-H", "Host: shop.example"],
    );
    assert!(head.starts_with("http/1.1 301"), "{head}");
    assert_eq!(
        field(&head, "location"),
        ["https://shop.example/new/old/page?x=1"]
    );
    assert_eq!(
        o.seen.count.load(std::sync::atomic::Ordering::SeqCst),
        before
    );

    // The prefix stripped before the server; the route's own response
    // rule after the listener's.
    let (head, body) = curl(&format!("{base}/api/v1/items?a=2"), &[]);
    assert_eq!(body, "origin-1");
    assert_eq!(
        o.seen.paths.lock().unwrap().last().map(String::as_str),
        Some("/v1/items")
    );
    assert!(field(&head, "x-seen-host").is_empty(), "{head}");
    assert_eq!(field(&head, "x-route"), ["api via web"]);

    // convoy's own 503 gets the page.
    let (head, body) = curl(&format!("{base}/closed/x"), &[]);
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert_eq!(body, "<h1>Back soon</h1>\n");
    assert_eq!(field(&head, "content-type"), ["text/html; charset=utf-8"]);
    // The server's own 503 is passed on as it is.
    o.seen
        .status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    let (head, body) = curl(&format!("{base}/plain"), &[]);
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert_eq!(body, "origin-1");
    drop(c);
}

#[test]
fn check_refuses_bad_rewriting_with_every_reason() {
    let cfg = write_temp(
        "bad.toml",
        r#"[[listeners]]
address = "127.0.0.1:1"
protocol = "http"
pool = "p"
request_id = "X Request"
request_headers = { set = { "X-Srv" = "{server}" } }

[[listeners.routes]]
path_prefix = "/a/"
redirect = { to = "https://{nope}/", status = 200 }

[[listeners.routes]]
path = "/b"
rewrite_prefix = "/c"

[pools.p]
[[pools.p.servers]]
address = "127.0.0.1:9"
"#,
    );
    let o = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for want in [
        "listeners[0].request_id: \"X Request\" is not a field name",
        "listeners[0].request_headers.set.X-Srv: {server} is known only in responses",
        "listeners[0].routes[0].redirect.to: unknown variable {nope}",
        "listeners[0].routes[0].redirect.status: 200 is not a redirect status",
        "listeners[0].routes[1].rewrite_prefix: needs the route's path_prefix",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
}
