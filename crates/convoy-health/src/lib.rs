//! Active health probes. One task per server connects to it every
//! `interval` (with `timeout`) and feeds the result to a rise/fall
//! [`HealthMachine`]; transitions are reported to the control plane, which
//! owns the decision (it flips the server state, rebuilds tables and logs).
//! A server taken down by a passive signal is seen as down here too, so it
//! needs `rise` good probes to return.
#![forbid(unsafe_code)]

pub mod app;

use std::net::SocketAddr;
use std::sync::Arc;

use convoy_balance::{HealthMachine, Transition};
use convoy_config::{CheckKind, Health};
use convoy_core::ServerState;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{interval, MissedTickBehavior};

/// A health transition seen by a probe.
#[derive(Debug)]
pub struct Report {
    /// The server.
    pub server: Arc<ServerState>,
    /// New state.
    pub up: bool,
    /// Last probe result, for the log.
    pub detail: String,
    /// From the server's agent (then `up` is not a check's verdict): what
    /// it said.
    pub agent: Option<app::AgentSays>,
}

/// Why a probe failed (the text is the health event's `detail`).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// This node is out of a resource (file descriptors, local ports):
    /// the probe says nothing about the server and is not counted.
    #[error("local resource: {0}")]
    Local(std::io::Error),
    /// The connection was refused or failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// No connection within the timeout.
    #[error("connect timed out after {0}")]
    ConnectTimeout(convoy_config::Dur),
    /// The request could not be sent.
    #[error("send: {0}")]
    Send(std::io::Error),
    /// Nothing could be read.
    #[error("read: {0}")]
    Read(std::io::Error),
    /// The answer is not HTTP/1.x.
    #[error("not an HTTP response")]
    NotHttp,
    /// Another status than the one expected.
    #[error("status {got}, expected {want}")]
    Status {
        /// The status received.
        got: u16,
        /// `expect_status`.
        want: u16,
    },
    /// The body lacks `expect_body`.
    #[error("body lacks {0:?}")]
    Body(String),
    /// The whole check took longer than the timeout.
    #[error("check timed out after {0}")]
    Timeout(convoy_config::Dur),
    /// The answer lacks the text expected.
    #[error("expected {want:?}, got {got}")]
    Expect {
        /// The text expected.
        want: String,
        /// What came instead (its first line), and how it ended.
        got: String,
    },
    /// The server refused the login or the query.
    #[error("refused: {0}")]
    Refused(String),
    /// The server is up but not in the role wanted.
    #[error("role: {0}")]
    Role(String),
}

/// Probes `addr` with a TCP connect.
pub async fn probe_tcp(addr: SocketAddr, cfg: &Health) -> Result<(), ProbeError> {
    match tokio::time::timeout(cfg.timeout.get(), TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(connect_error(e)),
        Err(_) => Err(ProbeError::ConnectTimeout(cfg.timeout)),
    }
}

/// A failed connect: the server's (refused, unreachable) or this node's.
pub(crate) fn connect_error(e: std::io::Error) -> ProbeError {
    if convoy_core::local::note(&e, "health check") {
        ProbeError::Local(e)
    } else {
        ProbeError::Connect(e)
    }
}

/// Probes `addr` with `GET path` (HTTP/1.1, `Connection: close`): the
/// status must be `expect_status` and the body must contain `expect_body`.
/// At most 64 KiB of the answer is read.
pub async fn probe_http(addr: SocketAddr, cfg: &Health) -> Result<(), ProbeError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let run = async {
        let mut s = TcpStream::connect(addr).await.map_err(connect_error)?;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: convoy-health\r\nConnection: close\r\n\r\n",
            cfg.path
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(ProbeError::Send)?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        while buf.len() < 64 * 1024 {
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if buf.is_empty() => return Err(ProbeError::Read(e)),
                Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .filter(|_| text.starts_with("HTTP/1."))
            .and_then(|c| c.parse().ok())
            .ok_or(ProbeError::NotHttp)?;
        if status != cfg.expect_status {
            return Err(ProbeError::Status {
                got: status,
                want: cfg.expect_status,
            });
        }
        if !cfg.expect_body.is_empty() {
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            if !body.contains(&cfg.expect_body) {
                return Err(ProbeError::Body(cfg.expect_body.clone()));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(cfg.timeout.get(), run).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(cfg.timeout)),
    }
}

/// What an application check sends and logs in with, built once per
/// probe task (the password read from its environment variable then).
enum AppCheck {
    /// TCP, HTTP or none: nothing more.
    Plain,
    /// A conversation (expect, redis).
    Steps(Vec<app::Step>),
    /// PostgreSQL: the login and the role wanted.
    Postgres(app::PgLogin, Option<bool>),
}

impl AppCheck {
    fn of(cfg: &Health) -> AppCheck {
        let password = cfg.password.clone().or_else(|| {
            cfg.password_env
                .as_ref()
                .and_then(|v| std::env::var(v).ok())
        });
        match cfg.check {
            CheckKind::Expect => AppCheck::Steps(vec![app::Step {
                send: if cfg.send_hex.is_empty() {
                    cfg.send.clone().into_bytes()
                } else {
                    app::hex(&cfg.send_hex).unwrap_or_default()
                },
                expect: Some(cfg.expect.clone().into_bytes()),
            }]),
            CheckKind::Redis => {
                AppCheck::Steps(app::redis_steps(password.as_deref(), cfg.role.as_deref()))
            }
            CheckKind::Postgres => AppCheck::Postgres(
                app::PgLogin {
                    user: cfg.user.clone(),
                    database: if cfg.database.is_empty() {
                        cfg.user.clone()
                    } else {
                        cfg.database.clone()
                    },
                    password,
                },
                cfg.role.as_deref().map(|r| r == "primary"),
            ),
            _ => AppCheck::Plain,
        }
    }
}

/// One probe of `addr` as `cfg` says.
async fn probe(addr: SocketAddr, cfg: &Health, app: &AppCheck) -> Result<(), ProbeError> {
    match (cfg.check, app) {
        (CheckKind::Http, _) => probe_http(addr, cfg).await,
        (_, AppCheck::Steps(steps)) => app::converse(addr, cfg.timeout.get(), steps).await,
        (_, AppCheck::Postgres(login, primary)) => {
            app::postgres(addr, cfg.timeout.get(), login, *primary).await
        }
        _ => probe_tcp(addr, cfg).await,
    }
}

/// Starts the probe task for one server.
pub fn spawn(
    server: Arc<ServerState>,
    addr: SocketAddr,
    cfg: Health,
    reports: mpsc::UnboundedSender<Report>,
) -> JoinHandle<()> {
    let app = AppCheck::of(&cfg);
    tokio::spawn(async move {
        let mut m = HealthMachine::new(cfg.rise, cfg.fall, server.is_seen_up());
        let mut tick = interval(cfg.interval.get());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Passive signals may have changed the state behind our back.
            if m.is_up() != server.is_seen_up() {
                m.force(server.is_seen_up());
            }
            let r = probe(addr, &cfg, &app).await;
            if let Err(ProbeError::Local(_)) = r {
                // Neither a success nor a failure: tried again next time.
                continue;
            }
            let detail = match &r {
                Ok(()) => "check ok".to_string(),
                Err(e) => e.to_string(),
            };
            if let Some(t) = m.observe(r.is_ok()) {
                let up = t == Transition::Up;
                if reports
                    .send(Report {
                        server: Arc::clone(&server),
                        up,
                        detail,
                        agent: None,
                    })
                    .is_err()
                {
                    return;
                }
            }
        }
    })
}

/// Starts the agent task for one server: every `cfg.interval` it asks the
/// agent at `addr` and reports what it says when that changes. An agent
/// that does not answer changes nothing (the checks judge the server).
pub fn spawn_agent(
    server: Arc<ServerState>,
    addr: SocketAddr,
    cfg: convoy_config::Agent,
    reports: mpsc::UnboundedSender<Report>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = interval(cfg.interval.get());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last: Option<app::AgentSays> = None;
        loop {
            tick.tick().await;
            match app::agent(addr, cfg.timeout.get(), cfg.send.as_bytes()).await {
                Ok(says) if last.as_ref() != Some(&says) => {
                    last = Some(says.clone());
                    let r = Report {
                        server: Arc::clone(&server),
                        up: says.up.unwrap_or(true),
                        detail: format!("agent at {addr}"),
                        agent: Some(says),
                    };
                    if reports.send(r).is_err() {
                        return;
                    }
                }
                // Unchanged, or no answer: nothing to tell.
                Ok(_) | Err(_) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn http_probe_checks_status_and_body() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 1024];
                let n = s.read(&mut b).await.unwrap();
                let req = String::from_utf8_lossy(&b[..n]).to_string();
                let resp = if req.starts_with("GET /health ") {
                    "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstatus"
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let mut cfg = Health {
            check: CheckKind::Http,
            path: "/health".into(),
            ..Health::default()
        };
        assert!(probe_http(addr, &cfg).await.is_ok());
        cfg.expect_body = "status".into();
        assert!(probe_http(addr, &cfg).await.is_ok());
        cfg.expect_body = "ready".into();
        let e = probe_http(addr, &cfg).await.unwrap_err();
        assert!(matches!(e, ProbeError::Body(_)), "{e}");
        assert_eq!(e.to_string(), "body lacks \"ready\"");
        cfg.path = "/nope".into();
        cfg.expect_body.clear();
        let e = probe_http(addr, &cfg).await.unwrap_err();
        assert!(
            matches!(
                e,
                ProbeError::Status {
                    got: 404,
                    want: 200
                }
            ),
            "{e}"
        );
        assert_eq!(e.to_string(), "status 404, expected 200");
    }

    use super::*;
    use convoy_config::Dur;
    use convoy_core::AdminState;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn reports_down_then_up() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l); // nothing listens: probes fail
        let s = Arc::new(ServerState::new("p", "a", AdminState::Enabled));
        let cfg = Health {
            interval: Dur::ms(20),
            timeout: Dur::ms(200),
            rise: 2,
            fall: 2,
            ..Health::default()
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let h = spawn(Arc::clone(&s), addr, cfg, tx);
        let r = rx.recv().await.unwrap();
        assert!(!r.up, "{r:?}");
        s.set_up(false);
        let _l = TcpListener::bind(addr).await.unwrap();
        let r = rx.recv().await.unwrap();
        assert!(r.up, "{r:?}");
        h.abort();
    }
}
