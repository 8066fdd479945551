//! Application checks, beyond a TCP connect and an HTTP GET:
//!
//! - **send/expect** (`check = "expect"`): on one connection, send a text
//!   (or bytes written in hex) and wait for a text in the answer — SMTP's
//!   `220`, a line protocol's greeting, any request/answer pair.
//! - **Redis** (`check = "redis"`): `AUTH` when a password is set, `PING`
//!   answered `+PONG`, and with `role` set, `INFO replication` must say
//!   `role:master` (or a replica's `role:slave`), so that a `single`
//!   listener follows the primary through a failover.
//! - **PostgreSQL** (`check = "postgres"`): a real login (tokio-postgres:
//!   trust, password, md5, SCRAM) and `SELECT pg_is_in_recovery()`, so
//!   that writes never go to a read-only standby.
//! - **agent** (`[pools.NAME.agent]`, as HAProxy's `agent-check`): the
//!   server says on a small TCP text port what it wants: `up`, `down`,
//!   `drain`, `ready`, `maint`, and a weight as a percentage (`75%`).
//!
//! Each is one conversation per probe, bounded by the check's timeout;
//! at most 64 KiB of answer is read.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ProbeError;

/// One step of a conversation: bytes to send (may be empty: only
/// read), then bytes the answer must contain (none: do not wait).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Sent first.
    pub send: Vec<u8>,
    /// Must appear in what the server answers after `send`.
    pub expect: Option<Vec<u8>>,
}

/// The most of an answer read for one step.
const MAX_ANSWER: usize = 64 * 1024;

/// A short, printable excerpt of an answer, for the health event.
fn excerpt(b: &[u8]) -> String {
    let t = String::from_utf8_lossy(&b[..b.len().min(80)]);
    let line = t.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        "nothing".to_string()
    } else {
        format!("{line:?}")
    }
}

/// Runs `steps` on one connection to `addr`, all within `timeout`. A
/// text that does not come names what came instead.
pub async fn converse(
    addr: SocketAddr,
    timeout: Duration,
    steps: &[Step],
) -> Result<(), ProbeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let late = || ProbeError::Timeout(convoy_config::Dur(timeout));
    let mut s = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| ProbeError::ConnectTimeout(convoy_config::Dur(timeout)))?
        .map_err(crate::connect_error)?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    for step in steps {
        if !step.send.is_empty() {
            tokio::time::timeout_at(deadline, s.write_all(&step.send))
                .await
                .map_err(|_| late())?
                .map_err(ProbeError::Send)?;
        }
        let Some(want) = &step.expect else {
            continue;
        };
        buf.clear();
        let missing = |buf: &[u8], why: &str| ProbeError::Expect {
            want: String::from_utf8_lossy(want).into_owned(),
            got: format!("{}{why}", excerpt(buf)),
        };
        while !find(&buf, want) {
            if buf.len() >= MAX_ANSWER {
                return Err(missing(&buf, ""));
            }
            match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
                Err(_) => return Err(missing(&buf, " before the timeout")),
                Ok(Ok(0)) => return Err(missing(&buf, ", then the connection closed")),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(ProbeError::Read(e)),
            }
        }
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Decodes hex written with optional spaces (`"50 49 4e 47 0d 0a"`).
pub fn hex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

/// A Redis command as a RESP array (safe for any argument bytes).
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The conversation of a Redis check: AUTH (with a password), PING, and
/// INFO replication when a role is wanted (`master` or `replica`).
pub fn redis_steps(password: Option<&str>, role: Option<&str>) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(p) = password {
        steps.push(Step {
            send: resp(&[b"AUTH", p.as_bytes()]),
            expect: Some(b"+OK".to_vec()),
        });
    }
    steps.push(Step {
        send: resp(&[b"PING"]),
        expect: Some(b"+PONG".to_vec()),
    });
    if let Some(r) = role {
        // INFO still says "slave" for a replica.
        let want = if r == "master" {
            "role:master"
        } else {
            "role:slave"
        };
        steps.push(Step {
            send: resp(&[b"INFO", b"replication"]),
            expect: Some(want.as_bytes().to_vec()),
        });
    }
    steps
}

/// What a PostgreSQL check logs in with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgLogin {
    /// User.
    pub user: String,
    /// Database.
    pub database: String,
    /// Password, if the server asks for one.
    pub password: Option<String>,
}

/// Logs in to the PostgreSQL server at `addr` and asks whether it is in
/// recovery (a standby); `primary`: Some(true) wants a primary,
/// Some(false) a standby, None either.
pub async fn postgres(
    addr: SocketAddr,
    timeout: Duration,
    login: &PgLogin,
    primary: Option<bool>,
) -> Result<(), ProbeError> {
    let run = async {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(addr.ip().to_string())
            .port(addr.port())
            .user(&login.user)
            .dbname(&login.database)
            .application_name("convoy-health")
            .connect_timeout(timeout);
        if let Some(p) = &login.password {
            cfg.password(p);
        }
        let (client, conn) =
            cfg.connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| match e.as_db_error() {
                    Some(db) => {
                        ProbeError::Refused(format!("{}: {}", db.code().code(), db.message()))
                    }
                    None => match std::error::Error::source(&e)
                        .and_then(|s| s.downcast_ref::<std::io::Error>())
                    {
                        Some(io) => {
                            crate::connect_error(std::io::Error::new(io.kind(), io.to_string()))
                        }
                        None => ProbeError::Refused(e.to_string()),
                    },
                })?;
        let task = tokio::spawn(conn);
        let row = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| ProbeError::Refused(e.to_string()));
        drop(client);
        task.abort();
        let in_recovery: bool = row?.get(0);
        match primary {
            Some(true) if in_recovery => Err(ProbeError::Role(
                "a standby (in recovery), not a primary".into(),
            )),
            Some(false) if !in_recovery => Err(ProbeError::Role("a primary, not a standby".into())),
            _ => Ok(()),
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(convoy_config::Dur(timeout))),
    }
}

/// What an agent said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentSays {
    /// `up`/`ready` (true) or `down`/`fail`/`stopped` (false).
    pub up: Option<bool>,
    /// `drain` (true), `ready` (false: enabled again), `maint` counts as
    /// draining too (no new traffic).
    pub drain: Option<bool>,
    /// `N%`: the share of its configured weight.
    pub weight_percent: Option<u32>,
}

/// Parses an agent's line: words separated by spaces or commas, e.g.
/// `up 75%`, `drain`, `down`. Unknown words are ignored (HAProxy's agents
/// may say more); `None` when it said nothing usable.
pub fn parse_agent(line: &str) -> Option<AgentSays> {
    let mut s = AgentSays::default();
    let mut any = false;
    for w in line
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        let w = w.to_ascii_lowercase();
        match w.as_str() {
            "up" => s.up = Some(true),
            "down" | "fail" | "stopped" => s.up = Some(false),
            "ready" => {
                s.drain = Some(false);
                s.up.get_or_insert(true);
            }
            "drain" | "maint" => s.drain = Some(true),
            _ => match w.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
                Some(p) => s.weight_percent = Some(p.min(1000)),
                None => continue,
            },
        }
        any = true;
    }
    any.then_some(s)
}

/// Asks the agent at `addr`: sends `send` (if any), reads one line.
pub async fn agent(
    addr: SocketAddr,
    timeout: Duration,
    send: &[u8],
) -> Result<AgentSays, ProbeError> {
    let run = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(crate::connect_error)?;
        if !send.is_empty() {
            s.write_all(send).await.map_err(ProbeError::Send)?;
        }
        let mut buf = Vec::with_capacity(128);
        let mut chunk = [0u8; 512];
        while !buf.contains(&b'\n') && buf.len() < 1024 {
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(ProbeError::Read(e)),
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.lines().next().unwrap_or("");
        parse_agent(line).ok_or_else(|| ProbeError::Expect {
            want: "an agent's word (up, down, drain, ready, maint, N%)".into(),
            got: excerpt(&buf),
        })
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(convoy_config::Dur(timeout))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_words() {
        assert_eq!(
            parse_agent("up 75%"),
            Some(AgentSays {
                up: Some(true),
                drain: None,
                weight_percent: Some(75)
            })
        );
        assert_eq!(parse_agent("drain").unwrap().drain, Some(true));
        assert_eq!(parse_agent("maint,").unwrap().drain, Some(true));
        let r = parse_agent("READY").unwrap();
        assert_eq!((r.up, r.drain), (Some(true), Some(false)));
        assert_eq!(parse_agent("down #overload").unwrap().up, Some(false));
        assert_eq!(parse_agent("hello"), None);
        assert_eq!(parse_agent(""), None);
    }

    #[test]
    fn hex_and_resp() {
        assert_eq!(hex("50 49 4e 47 0d0a"), Some(b"PING\r\n".to_vec()));
        assert_eq!(hex("5"), None);
        assert_eq!(hex("zz"), None);
        assert_eq!(
            resp(&[b"AUTH", b"a b"]),
            b"*2\r\n$4\r\nAUTH\r\n$3\r\na b\r\n".to_vec()
        );
        let s = redis_steps(Some("pw"), Some("master"));
        assert_eq!(s.len(), 3);
        assert_eq!(s[2].expect.as_deref(), Some(&b"role:master"[..]));
        assert_eq!(
            redis_steps(None, Some("replica"))[1].expect.as_deref(),
            Some(&b"role:slave"[..])
        );
    }

    #[tokio::test]
    async fn a_conversation_waits_for_its_text_and_names_what_came() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    // An SMTP-like greeting in two pieces, then an echo.
                    let _ = s.write_all(b"22").await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = s.write_all(b"0 mail ready\r\n").await;
                    let mut b = [0u8; 64];
                    if let Ok(n) = s.read(&mut b).await {
                        let _ = s.write_all(&b[..n]).await;
                    }
                });
            }
        });
        let t = Duration::from_secs(2);
        let greet = |e: &[u8]| Step {
            send: Vec::new(),
            expect: Some(e.to_vec()),
        };
        assert!(converse(addr, t, &[greet(b"220")]).await.is_ok());
        let ok = [
            greet(b"220"),
            Step {
                send: b"NOOP\r\n".to_vec(),
                expect: Some(b"NOOP".to_vec()),
            },
        ];
        assert!(converse(addr, t, &ok).await.is_ok());
        let e = converse(addr, Duration::from_millis(300), &[greet(b"554")])
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "expected \"554\", got \"220 mail ready\" before the timeout"
        );
    }
}
