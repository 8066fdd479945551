//! Test helpers shared by convoy's integration tests: backends that say
//! who they are and count their connections, a runner for a real `convoy`
//! process (config in a temp dir, JSON logs captured and searchable,
//! signals), and bounded waiting. Everything binds loopback only.
#![forbid(unsafe_code)]

pub mod config;
pub mod http;
pub mod netns;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A free loopback TCP port (bound and released). Taken below the
/// kernel's ephemeral range when there is room there: a port from
/// `bind(0)` could be handed again, between this pick and the test's own
/// bind, to another test's `bind(0)` or to a connection's local end
/// ("address already in use" under parallel tests).
pub fn free_port() -> u16 {
    pick_port(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()).unwrap_or_else(|| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port")
    })
}

/// The next port below the ephemeral range that `free` accepts; each
/// process starts at its own place and goes round in strides (a test that
/// takes `p` may take `p + 1` too, for a port range; the next pick is far
/// off). `None`: no room below the range on this machine, or none free.
fn pick_port(free: impl Fn(u16) -> bool) -> Option<u16> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let ephemeral_low: usize = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.checked_sub(12_000)?.max(1024);
    let span = ephemeral_low.checked_sub(low).filter(|s| *s >= 1000)?;
    // Prime, so the strides visit every port of the span.
    const STRIDE: usize = 7727;
    let start = std::process::id() as usize * 7919;
    (0..span).find_map(|_| {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = (low + (start + n * STRIDE) % span) as u16;
        free(p).then_some(p)
    })
}

/// Two consecutive free loopback TCP ports `(p, p + 1)`.
pub fn free_port_pair() -> (u16, u16) {
    for _ in 0..100 {
        let p = free_port();
        if p == u16::MAX {
            continue;
        }
        let a = std::net::TcpListener::bind(("127.0.0.1", p));
        let b = std::net::TcpListener::bind(("127.0.0.1", p + 1));
        if a.is_ok() && b.is_ok() {
            return (p, p + 1);
        }
    }
    panic!("no two consecutive free ports")
}

/// A free UDP loopback port (as [`free_port`]).
pub fn free_udp_port() -> u16 {
    pick_port(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()).unwrap_or_else(|| {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port")
    })
}

/// Polls `f` every 20 ms until it is true or `timeout` passes.
pub async fn wait_until<F: FnMut() -> bool>(timeout: Duration, mut f: F) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP backend that writes `NAME\n` on connect, then echoes every byte.
pub struct NamedBackend {
    /// Its name.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Connections accepted.
    pub accepted: Arc<AtomicU64>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl NamedBackend {
    /// Starts on a free loopback port.
    pub async fn start(name: &str) -> NamedBackend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on `addr` (e.g. the address of a backend that was stopped).
    pub async fn start_on(name: &str, addr: SocketAddr) -> NamedBackend {
        let l = TcpListener::bind(addr).await.expect("bind backend");
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (acc, op, n) = (Arc::clone(&accepted), Arc::clone(&open), name.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let op = Arc::clone(&op);
                let line = format!("{n}\n");
                tokio::spawn(async move {
                    op.fetch_add(1, Ordering::SeqCst);
                    let mut buf = [0u8; 8192];
                    if s.write_all(line.as_bytes()).await.is_ok() {
                        while let Ok(k) = s.read(&mut buf).await {
                            if k == 0 || s.write_all(&buf[..k]).await.is_err() {
                                break;
                            }
                        }
                    }
                    op.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        NamedBackend {
            name: name.to_string(),
            addr,
            accepted,
            open,
            task,
        }
    }

    /// Stops accepting and waits until the listening socket is closed (the
    /// port is released; open connections stay).
    pub async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for NamedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A UDP backend that answers each datagram with `NAME:` + the datagram.
pub struct UdpBackend {
    /// Its name.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl UdpBackend {
    /// Starts on a free loopback port.
    pub async fn start(name: &str) -> UdpBackend {
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = s.local_addr().unwrap();
        let n = name.to_string();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((k, peer)) = s.recv_from(&mut buf).await {
                let mut out = format!("{n}:").into_bytes();
                out.extend_from_slice(&buf[..k]);
                let _ = s.send_to(&out, peer).await;
            }
        });
        UdpBackend {
            name: name.to_string(),
            addr,
            task,
        }
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to `to` from source address `from` (any 127.0.0.0/8 address
/// works on loopback).
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

/// Connects and reads the backend's name line. `Err` on any failure,
/// including a connection closed before a name arrived.
pub async fn ask_name(
    from: Option<IpAddr>,
    to: SocketAddr,
) -> std::io::Result<(String, TcpStream)> {
    let mut s = match from {
        Some(ip) => connect_from(ip, to).await?,
        None => TcpStream::connect(to).await?,
    };
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no name"))??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the backend named itself",
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    Ok((String::from_utf8_lossy(&line).into_owned(), s))
}

/// A running `convoy run` process with captured JSON log lines.
pub struct Convoy {
    child: Child,
    /// Directory holding the config.
    pub dir: PathBuf,
    /// Config file path.
    pub config: PathBuf,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
    raw: Arc<Mutex<Vec<String>>>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "convoy-test-{}-{}-{}",
        tag,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

impl Convoy {
    /// Writes `config` (a `[node]` section with JSON logs is prepended) and
    /// starts `bin run -c FILE`; waits for the "ready" event.
    pub async fn start(bin: &str, config: &str) -> Convoy {
        Convoy::start_wrapped(bin, config, &[]).await
    }

    /// Like `start`, with the command run under `wrapper` (e.g.
    /// `["prlimit", "--nofile=64"]`, or `ip netns exec NS`).
    pub async fn start_wrapped(bin: &str, config: &str, wrapper: &[&str]) -> Convoy {
        let dir = temp_dir("node");
        let path = dir.join("convoy.toml");
        let mut full = if config.contains("[node]") {
            config.replace("[node]", "[node]\nlog_format = \"json\"")
        } else {
            format!("[node]\nlog_format = \"json\"\n\n{config}")
        };
        // Tests run side by side: each node's admin API gets a free port
        // (see `admin_addr`) unless the config chooses.
        if !full.contains("[admin]") {
            full.push_str("\n[admin]\naddress = \"127.0.0.1:0\"\n");
        }
        std::fs::write(&path, full).expect("write config");
        Convoy::spawn(bin, dir, path, &[], wrapper).await
    }

    /// Starts a second process on this node's config file with
    /// `--upgrade`: it takes over the listening sockets (the config must
    /// set `node.upgrade_socket`). Waits for its "ready" event. The config
    /// directory stays with `self`.
    pub async fn start_upgrade(&self, bin: &str) -> Convoy {
        let dir = temp_dir("upgrade");
        Convoy::spawn(bin, dir, self.config.clone(), &["--upgrade"], &[]).await
    }

    async fn spawn(
        bin: &str,
        dir: PathBuf,
        path: PathBuf,
        extra: &[&str],
        wrapper: &[&str],
    ) -> Convoy {
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .arg("run")
            .arg("-c")
            .arg(&path)
            .args(extra)
            .env(
                "CONVOY_LOG",
                std::env::var("CONVOY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start convoy");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let (l2, r2) = (Arc::clone(&logs), Arc::clone(&raw));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    l2.lock().unwrap().push(v);
                }
                r2.lock().unwrap().push(line);
            }
        });
        let c = Convoy {
            child,
            dir,
            config: path,
            logs,
            raw,
        };
        if !c.wait_event("ready", Duration::from_secs(10)).await {
            panic!("convoy did not become ready; stderr:\n{}", c.stderr());
        }
        c
    }

    /// The admin API's address, from the node's `admin_listening` event.
    pub fn admin_addr(&self) -> String {
        self.events("admin_listening")
            .first()
            .and_then(|e| e["address"].as_str().map(String::from))
            .expect("the node logged no admin_listening event")
    }

    /// A series' value from the admin API's `/metrics` (`series` as
    /// printed, labels included: `name{listener="web",protocol="tcp"}`).
    pub fn metric(&self, series: &str) -> Option<u64> {
        use std::io::{Read, Write};
        let addr = self.admin_addr();
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        // The admin API refuses a Host that is not its own address.
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Runs `bin ctl --admin ADDR ARGS…` against this node.
    pub fn ctl(&self, bin: &str, args: &[&str]) -> std::process::Output {
        Command::new(bin)
            .args(["ctl", "--admin", &self.admin_addr()])
            .args(args)
            .output()
            .expect("convoy ctl runs")
    }

    /// Every captured stderr line.
    pub fn stderr(&self) -> String {
        self.raw.lock().unwrap().join("\n")
    }

    /// Log entries whose `event` field is `name`.
    pub fn events(&self, name: &str) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v.get("event").and_then(|e| e.as_str()) == Some(name))
            .cloned()
            .collect()
    }

    /// Waits until at least one `name` event was logged.
    pub async fn wait_event(&self, name: &str, timeout: Duration) -> bool {
        self.wait_events(name, 1, timeout).await
    }

    /// Waits until at least `n` `name` events were logged.
    pub async fn wait_events(&self, name: &str, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.events(name).len() >= n).await
    }

    /// Sends a signal by name (e.g. "HUP", "QUIT").
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Replaces the config file (same `[node]` treatment as `start`).
    pub fn write_config(&self, config: &str) {
        let mut full = if config.contains("[node]") {
            config.replace("[node]", "[node]\nlog_format = \"json\"")
        } else {
            format!("[node]\nlog_format = \"json\"\n\n{config}")
        };
        // Tests run side by side: each node's admin API gets a free port
        // (see `admin_addr`) unless the config chooses.
        if !full.contains("[admin]") {
            full.push_str("\n[admin]\naddress = \"127.0.0.1:0\"\n");
        }
        std::fs::write(&self.config, full).expect("write config");
    }

    /// Rewrites the config and sends SIGHUP; waits for the reload outcome
    /// event and returns its name ("reload_applied" or "reload_refused").
    pub async fn reload(&self, config: &str) -> String {
        let before_ok = self.events("reload_applied").len();
        let before_bad = self.events("reload_refused").len();
        self.write_config(config);
        self.signal("HUP");
        let mut out = String::new();
        wait_until(Duration::from_secs(10), || {
            if self.events("reload_applied").len() > before_ok {
                out = "reload_applied".into();
                true
            } else if self.events("reload_refused").len() > before_bad {
                out = "reload_refused".into();
                true
            } else {
                false
            }
        })
        .await;
        out
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Convoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `text` to a file in a fresh temp dir and returns its path.
pub fn write_temp(name: &str, text: &str) -> PathBuf {
    let p = temp_dir("file").join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// True if `cmd` is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Deletes a directory tree, ignoring errors.
pub fn remove(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made with the
/// openssl command in a fresh temp dir: (certificate, key) paths.
pub fn self_signed() -> (PathBuf, PathBuf) {
    make_self_signed(&[])
}

/// Like [`self_signed`], marked as no CA (`CA:FALSE`): what rustls (webpki)
/// accepts as a server certificate that is its own trust anchor.
pub fn self_signed_leaf() -> (PathBuf, PathBuf) {
    make_self_signed(&["-addext", "basicConstraints=critical,CA:FALSE"])
}

fn make_self_signed(extra: &[&str]) -> (PathBuf, PathBuf) {
    let dir = temp_dir("cert");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-days",
            "2",
        ])
        .args(extra)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "openssl could not make a test certificate");
    (cert, key)
}
