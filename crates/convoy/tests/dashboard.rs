//! The dashboard in a real browser: headless Chromium driven over W3C
//! WebDriver (chromedriver) loads the admin page with the token in the URL
//! fragment, clicks a server's Drain and Enable buttons, and the change is
//! seen both by the admin API and on the page. Ends with a screenshot in
//! `target/dashboard.png`.
//!
//! Without `chromedriver` on PATH the test prints a line and passes, unless
//! `CONVOY_REQUIRE_BROWSER` is set (scripts/test.sh sets it), in which case
//! it fails.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use convoy_testkit::config::{Config, Listener, Pool, Server};
use convoy_testkit::http::HttpOrigin;
use convoy_testkit::{free_port, Convoy};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_convoy");
const TOKEN: &str = "dash-secret-token";
/// The web element identifier of the W3C WebDriver spec: the key under
/// which an element reference is returned.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
const SHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/dashboard.png");
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The first executable file named `cmd` on PATH.
fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// One HTTP exchange with a 30 s bound; returns (status, body text).
async fn exchange(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<(u16, String), String> {
    let mut b = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let payload = match body {
        Some(v) => {
            b = b.header("content-type", "application/json; charset=utf-8");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let req = b
        .body(Full::new(payload))
        .map_err(|e| format!("{method} {url}: bad request: {e}"))?;
    let fut = async {
        let res = client
            .request(req)
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = res.status().as_u16();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {url}: reading body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| format!("{method} {url}: no answer in 30 s"))?
}

// ---------------------------------------------------------------- chromedriver

/// A running chromedriver, killed (with its browsers) when dropped.
struct Chromedriver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Chromedriver {
    fn start(exe: &Path) -> Result<Chromedriver, String> {
        let port = free_port();
        let log = std::env::temp_dir().join(format!(
            "convoy-dashboard-chromedriver-{}-{port}.log",
            std::process::id()
        ));
        let out = std::fs::File::create(&log).map_err(|e| format!("create {log:?}: {e}"))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group, so the browsers it starts die with it.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawn {exe:?}: {e}"))?;
        Ok(Chromedriver { child, port, log })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

// ------------------------------------------------------------------- webdriver

/// A minimal W3C WebDriver client bound to one chromedriver.
struct WebDriver {
    client: HttpClient,
    base: String,
}

impl WebDriver {
    fn new(port: u16) -> WebDriver {
        WebDriver {
            client: http_client(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Sends a command; returns the response's `value`, or the WebDriver
    /// error as text.
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let (status, text) = exchange(&self.client, method, &url, &[], body.as_ref()).await?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{method} {path}: HTTP {status}, not JSON ({e}): {text:.300}"))?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(format!(
                "{method} {path}: HTTP {status}: {} {}",
                value["error"].as_str().unwrap_or("?"),
                value["message"]
                    .as_str()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
            ));
        }
        Ok(value)
    }

    /// Waits (≤ 10 s) until chromedriver says it is ready.
    async fn wait_ready(&self) -> Result<(), String> {
        let end = Instant::now() + Duration::from_secs(10);
        let mut last = String::from("never answered");
        while Instant::now() < end {
            match self.cmd("GET", "/status", None).await {
                Ok(v) if v["ready"] == true => return Ok(()),
                Ok(v) => last = format!("not ready: {v}"),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("chromedriver not ready after 10 s: {last}"))
    }

    async fn new_session(&self, browser: &Path) -> Result<Session<'_>, String> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser.to_string_lossy(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,800"],
            },
        }}});
        let v = self.cmd("POST", "/session", Some(caps)).await?;
        let id = v["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no sessionId in {v}"))?
            .to_string();
        Ok(Session { wd: self, id })
    }
}

/// One browser session. End it with `close` (Drop cannot await; if a test
/// panics first, killing chromedriver's process group ends the browser).
struct Session<'a> {
    wd: &'a WebDriver,
    id: String,
}

impl Session<'_> {
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.wd
            .cmd(method, &format!("/session/{}{path}", self.id), body)
            .await
    }

    async fn goto(&self, url: &str) -> Result<(), String> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// Every element matching `css` (possibly none).
    async fn find_all(&self, css: &str) -> Result<Vec<String>, String> {
        let v = self
            .cmd(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        let list = v.as_array().ok_or_else(|| format!("elements: {v}"))?;
        list.iter()
            .map(|e| {
                e[ELEMENT_KEY]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("no element id in {e}"))
            })
            .collect()
    }

    /// The one element matching `css` (an error if none).
    async fn find(&self, css: &str) -> Result<String, String> {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .map_err(|e| format!("find {css:?}: {e}"))?;
        v[ELEMENT_KEY]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("find {css:?}: no element id in {v}"))
    }

    async fn exists(&self, css: &str) -> Result<bool, String> {
        Ok(!self.find_all(css).await?.is_empty())
    }

    async fn click(&self, css: &str) -> Result<(), String> {
        let e = self.find(css).await?;
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})))
            .await
            .map(drop)
            .map_err(|err| format!("click {css:?}: {err}"))
    }

    /// The rendered text of the first element matching `css`, or `None` if
    /// there is none.
    async fn text(&self, css: &str) -> Result<Option<String>, String> {
        let Some(e) = self.find_all(css).await?.into_iter().next() else {
            return Ok(None);
        };
        let v = self.cmd("GET", &format!("/element/{e}/text"), None).await?;
        Ok(Some(v.as_str().unwrap_or_default().trim().to_string()))
    }

    /// `textContent` of the element with id `id` (visible or not).
    async fn text_content(&self, id: &str) -> String {
        let script = "var e = document.getElementById(arguments[0]); \
                      return e ? e.textContent : null;";
        match self
            .cmd(
                "POST",
                "/execute/sync",
                Some(json!({"script": script, "args": [id]})),
            )
            .await
        {
            Ok(Value::String(s)) => s,
            Ok(Value::Null) => format!("<no #{id}>"),
            Ok(v) => v.to_string(),
            Err(e) => format!("<{e}>"),
        }
    }

    async fn screenshot(&self) -> Result<Vec<u8>, String> {
        let v = self.cmd("GET", "/screenshot", None).await?;
        let b64 = v.as_str().ok_or_else(|| format!("screenshot: {v:.100}"))?;
        base64_decode(b64)
    }

    /// What the page shows, for failure messages.
    async fn report(&self) -> String {
        let state_a = self
            .text(&state_css("a"))
            .await
            .unwrap_or_else(|e| Some(format!("<{e}>")));
        let state_b = self
            .text(&state_css("b"))
            .await
            .unwrap_or_else(|e| Some(format!("<{e}>")));
        format!(
            "#status={:?} #conn={:?} #updated={:?} web/a state={state_a:?} web/b state={state_b:?} \
             body[data-loaded]={:?}",
            self.text_content("status").await,
            self.text_content("conn").await,
            self.text_content("updated").await,
            self.exists("body[data-loaded=\"1\"]").await,
        )
    }

    async fn close(self) -> Result<(), String> {
        self.cmd("DELETE", "", None).await.map(drop)
    }
}

fn row_css(server: &str) -> String {
    format!("tr[data-server=\"web/{server}\"]")
}

fn state_css(server: &str) -> String {
    format!("{} td.state", row_css(server))
}

// ---------------------------------------------------------------------- base64

/// Decodes standard base64 (RFC 4648 alphabet, `=` padding optional,
/// whitespace ignored).
fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let data: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let body = data.strip_suffix(b"==").or_else(|| data.strip_suffix(b"="));
    let body = body.unwrap_or(&data);
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    let (mut acc, mut bits) = (0u32, 0u32);
    for (i, &c) in body.iter().enumerate() {
        let v = sextet(c).ok_or_else(|| format!("base64: bad byte {c:#04x} at {i}"))?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return Err("base64: truncated input".into());
    }
    Ok(out)
}

// ------------------------------------------------------------------ admin API

/// Server `server`'s `admin` field in pool "web", from the admin API.
async fn api_admin_state(client: &HttpClient, admin: &str, server: &str) -> Result<String, String> {
    let auth = format!("Bearer {TOKEN}");
    let (status, text) = exchange(
        client,
        "GET",
        &format!("http://{admin}/api/v1/query"),
        &[("authorization", &auth)],
        None,
    )
    .await?;
    if status != 200 {
        return Err(format!("query: HTTP {status}: {text:.300}"));
    }
    let q: Value = serde_json::from_str(&text).map_err(|e| format!("query JSON: {e}"))?;
    q["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "web")
        .flat_map(|p| p["zones"].as_array().into_iter().flatten())
        .flat_map(|z| z["servers"].as_array().into_iter().flatten())
        .find(|s| s["name"] == server)
        .map(|s| s["admin"].as_str().unwrap_or("<not a string>").to_string())
        .ok_or_else(|| format!("no server web/{server} in the query"))
}

async fn wait_api_admin(
    client: &HttpClient,
    admin: &str,
    server: &str,
    want: &str,
) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let last = match api_admin_state(client, admin, server).await {
            Ok(s) if s == want => return Ok(()),
            Ok(s) => s,
            Err(e) => e,
        };
        if Instant::now() >= end {
            return Err(format!(
                "the API never showed web/{server} admin={want:?} in 10 s (last: {last})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the page (≤ `secs`) until web/`server`'s state cell reads `want`.
async fn wait_page_state(
    s: &Session<'_>,
    server: &str,
    want: &str,
    secs: u64,
) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let last = match s.text(&state_css(server)).await? {
            Some(t) if t == want => return Ok(()),
            other => other,
        };
        if Instant::now() >= end {
            return Err(format!(
                "the page never showed web/{server} as {want:?} in {secs} s (last {last:?}); page: {}",
                s.report().await
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------------ test

fn config(port: u16, origins: &[&HttpOrigin]) -> String {
    // Each server in its own zone: z1, z2...
    let pool = origins
        .iter()
        .enumerate()
        .fold(Pool::new("web"), |p, (i, o)| {
            p.server(Server::from_origin(o).set("zone", format!("z{}", i + 1)))
        });
    Config::new()
        .admin("address", "127.0.0.1:0")
        .admin("token", TOKEN)
        .listener(Listener::http(port, "web").set("name", "web"))
        .pool(pool)
        .build()
}

/// Load, drain web/a, enable it again, screenshot. No panics in here, so
/// the caller can always end the session first.
async fn scenario(s: &Session<'_>, admin: &str) -> Result<(), String> {
    let api = http_client();
    s.goto(&format!("http://{admin}/#token={TOKEN}")).await?;

    // First successful poll: both rows, web/a up.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = s.exists("body[data-loaded=\"1\"]").await?
            && s.exists(&row_css("a")).await?
            && s.exists(&row_css("b")).await?
            && s.text(&state_css("a")).await?.as_deref() == Some("up");
        if ready {
            break;
        }
        if Instant::now() >= end {
            return Err(format!(
                "the dashboard did not load within 15 s; page: {}",
                s.report().await
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    s.click(&format!("{} button.drain", row_css("a"))).await?;
    if let Err(e) = wait_api_admin(&api, admin, "a", "draining").await {
        return Err(format!(
            "after clicking Drain: {e}; page: {}",
            s.report().await
        ));
    }
    wait_page_state(s, "a", "draining", 10).await?;
    // The other server is untouched.
    let b = s.text(&state_css("b")).await?;
    if b.as_deref() != Some("up") {
        return Err(format!("web/b changed too: {b:?}"));
    }

    s.click(&format!("{} button.enable", row_css("a"))).await?;
    if let Err(e) = wait_api_admin(&api, admin, "a", "enabled").await {
        return Err(format!(
            "after clicking Enable: {e}; page: {}",
            s.report().await
        ));
    }
    wait_page_state(s, "a", "up", 10).await?;

    let png = s.screenshot().await?;
    if let Some(dir) = Path::new(SHOT).parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {dir:?}: {e}"))?;
    }
    std::fs::write(SHOT, &png).map_err(|e| format!("write {SHOT}: {e}"))?;
    let saved = std::fs::read(SHOT).map_err(|e| format!("read {SHOT}: {e}"))?;
    if !saved.starts_with(PNG_SIGNATURE) || saved.len() <= 1000 {
        return Err(format!(
            "{SHOT} is not a plausible PNG ({} bytes, starts {:02x?})",
            saved.len(),
            &saved[..saved.len().min(8)]
        ));
    }
    Ok(())
}

/// chromedriver and the browser it drives, or `None` when there is no
/// chromedriver and the browser is not required.
async fn browser() -> Option<(Chromedriver, WebDriver, PathBuf)> {
    let required = std::env::var_os("CONVOY_REQUIRE_BROWSER").is_some();
    let Some(driver_exe) = which("chromedriver") else {
        assert!(
            !required,
            "CONVOY_REQUIRE_BROWSER is set but chromedriver is not on PATH \
             (install chromium and chromium-driver)"
        );
        println!("skipping the dashboard browser test: chromedriver is not on PATH");
        return None;
    };
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|n| which(n))
        .expect("chromedriver is on PATH but no chromium binary is");
    let driver = Chromedriver::start(&driver_exe).expect("start chromedriver");
    let wd = WebDriver::new(driver.port);
    if let Err(e) = wd.wait_ready().await {
        panic!("{e}\nchromedriver log:\n{}", driver.log_tail());
    }
    Some((driver, wd, browser))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_buttons_drain_and_enable_a_server() {
    let Some((driver, wd, browser)) = browser().await else {
        return;
    };
    let (a, b) = (
        HttpOrigin::start("a", Duration::ZERO).await,
        HttpOrigin::start("b", Duration::ZERO).await,
    );
    let port = free_port();
    let node = Convoy::start(BIN, &config(port, &[&a, &b])).await;
    let admin = node.admin_addr();
    let session = match wd.new_session(&browser).await {
        Ok(s) => s,
        Err(e) => panic!(
            "could not start {browser:?}: {e}\nchromedriver log:\n{}",
            driver.log_tail()
        ),
    };

    let t = Instant::now();
    let outcome = scenario(&session, &admin).await;
    let took = t.elapsed();
    let closed = session.close().await;
    drop(driver);

    if let Err(e) = outcome {
        panic!("{e}\nconvoy stderr:\n{}", node.stderr());
    }
    closed.expect("end the WebDriver session");
    println!("dashboard scenario took {took:?}; screenshot in {SHOT}");
}

/// Two nodes of a cluster: the dashboard of one shows both members,
/// converged, with their shares of the listener's flows adding up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_cluster_and_each_nodes_share() {
    let Some((driver, wd, browser)) = browser().await else {
        return;
    };
    let key = convoy_testkit::write_temp(
        "cluster.key",
        "the dashboard test's cluster key, long enough",
    );
    let (lport, c1, c2) = (
        free_port(),
        convoy_testkit::free_udp_port(),
        convoy_testkit::free_udp_port(),
    );
    let node = |n: u8, cport: u16, seeds: &str| {
        let cfg = Config::new()
            .node("name", format!("node-{n}"))
            .listener(
                Listener::tcp(lport, "p")
                    .set("name", "db")
                    .set("address", format!("127.0.0.{n}:{lport}")),
            )
            .pool(Pool::new("p").server(Server::at("127.0.0.1:9".parse().unwrap())))
            .build();
        format!(
            "{cfg}\n[cluster]\npriority = {n}\naddress = \"127.0.0.{n}:{cport}\"\nseeds = [{seeds}]\nkey_file = \"{}\"\n",
            key.display()
        )
    };
    let one = Convoy::start(BIN, &node(1, c1, "")).await;
    let _two = Convoy::start(BIN, &node(2, c2, &format!("\"127.0.0.1:{c1}\""))).await;
    let admin = one.admin_addr();
    let s = match wd.new_session(&browser).await {
        Ok(s) => s,
        Err(e) => panic!(
            "could not start {browser:?}: {e}\nchromedriver log:\n{}",
            driver.log_tail()
        ),
    };
    let outcome: Result<(), String> = async {
        s.goto(&format!("http://{admin}/")).await?;
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let rows = s.find_all("#cluster tr[data-member]").await?.len();
            let states: Vec<String> = {
                let mut v = Vec::new();
                for css in ["#cluster tr[data-member=\"node-1\"] .member-state", "#cluster tr[data-member=\"node-2\"] .member-state"] {
                    v.push(s.text(css).await?.unwrap_or_default());
                }
                v
            };
            let mut total = 0u64;
            for css in ["#cluster tr[data-member=\"node-1\"] .buckets", "#cluster tr[data-member=\"node-2\"] .buckets"] {
                let t = s.text(css).await?.unwrap_or_default();
                total += t.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            }
            if rows == 2 && states.iter().all(|x| x == "converged") && total == 4096 {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(format!(
                    "the cluster card did not show two converged members sharing 4096 buckets: rows={rows} states={states:?} total={total}; card: {}",
                    s.text_content("cluster-card").await
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    let closed = s.close().await;
    drop(driver);
    if let Err(e) = outcome {
        panic!("{e}\nconvoy stderr:\n{}", one.stderr());
    }
    closed.expect("end the WebDriver session");
}

#[test]
fn base64_decoder_matches_rfc4648_vectors() {
    for (enc, dec) in [
        ("", ""),
        ("Zg==", "f"),
        ("Zm8=", "fo"),
        ("Zm9v", "foo"),
        ("Zm9vYg==", "foob"),
        ("Zm9vYmE=", "fooba"),
        ("Zm9vYmFy", "foobar"),
        ("Zm9v\nYmFy", "foobar"),
    ] {
        assert_eq!(base64_decode(enc).unwrap(), dec.as_bytes(), "{enc:?}");
    }
    assert_eq!(base64_decode("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
    assert!(base64_decode("Zm9vY").is_err());
    assert!(base64_decode("Zm9v!").is_err());
}

/// `convoy demo` as a newcomer meets it: the dashboard's buttons act
/// without asking for a token (the demo has none).
async fn demo_scenario(s: &Session<'_>, admin: &str) -> Result<(), String> {
    s.goto(&format!("http://{admin}/")).await?;
    let row = |n: &str| format!("tr[data-server=\"demo/{n}\"]");
    let end = Instant::now() + Duration::from_secs(15);
    while !(s.exists("body[data-loaded=\"1\"]").await? && s.exists(&row("demo-a")).await?) {
        if Instant::now() >= end {
            return Err(format!(
                "the demo's dashboard did not load: {}",
                s.report().await
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.click(&format!("{} button.drain", row("demo-a"))).await?;
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let state = s.text(&format!("{} td.state", row("demo-a"))).await?;
        if state.as_deref() == Some("draining") {
            break;
        }
        if Instant::now() >= end {
            return Err(format!(
                "demo-a never showed draining (last {state:?}): {}",
                s.report().await
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !s.exists("#token-box[hidden]").await? {
        return Err(format!("the demo asked for a token: {}", s.report().await));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_dashboard_acts_without_a_token() {
    let Some((driver, wd, browser)) = browser().await else {
        return;
    };
    let (listen, admin) = (free_port(), free_port());
    let mut demo = std::process::Command::new(BIN)
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The banner comes once the addresses are bound.
    let mut out = std::io::BufReader::new(demo.stdout.take().unwrap());
    let mut banner = String::new();
    while !banner.contains("Ctrl-C stops everything") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap_or(0) == 0 {
            break;
        }
        banner.push_str(&line);
    }
    assert!(banner.contains("dashboard: http://127.0.0.1:"), "{banner}");
    let session = match wd.new_session(&browser).await {
        Ok(s) => s,
        Err(e) => {
            let _ = demo.kill();
            panic!(
                "could not start {browser:?}: {e}\nchromedriver log:\n{}",
                driver.log_tail()
            );
        }
    };
    let outcome = demo_scenario(&session, &format!("127.0.0.1:{admin}")).await;
    let _ = session.close().await;
    drop(driver);
    let _ = demo.kill();
    let _ = demo.wait();
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

#[test]
fn a_busy_demo_port_names_the_option_to_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = std::process::Command::new(BIN)
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is taken: choose another address with --listen"),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("Ctrl-C stops everything"),
        "no banner for a demo that did not start"
    );
}
