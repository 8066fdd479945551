//! Application health checks against real servers: Redis (a primary and a
//! replica, `role = "master"`, through a failover), PostgreSQL (a primary
//! and a streaming standby, `role = "primary"`, through a promotion: no
//! write ever reaches the read-only standby), SMTP's greeting with a
//! send/expect check, and a server that answers something else.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use convoy_testkit::{free_port, have, temp_dir, wait_until, Convoy};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

fn query(c: &Convoy) -> Value {
    let o = Command::new(BIN)
        .args(["ctl", "--admin", &c.admin_addr(), "--json", "query"])
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

/// Health of each server of the first pool, by name.
fn health(c: &Convoy) -> Vec<(String, String)> {
    let q = query(c);
    let mut out = Vec::new();
    for z in q["pools"][0]["zones"].as_array().into_iter().flatten() {
        for s in z["servers"].as_array().into_iter().flatten() {
            out.push((
                s["name"].as_str().unwrap_or("").to_string(),
                s["health"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out.sort();
    out
}

fn up_ones(c: &Convoy) -> Vec<String> {
    health(c)
        .into_iter()
        .filter(|(_, h)| h == "up")
        .map(|(n, _)| n)
        .collect()
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(port: u16, extra: &[&str]) -> Proc {
    let mut c = Command::new("redis-server");
    c.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    Proc(c.spawn().expect("redis-server"))
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let o = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_role_check_follows_the_primary_through_a_failover() {
    assert!(
        have("redis-server") && have("redis-cli"),
        "redis-server is missing (scripts/test.sh installs it)"
    );
    let (a, b) = (free_port(), free_port());
    let pw = "the-redis-password";
    let _ra = redis(a, &["--requirepass", pw, "--masterauth", pw]);
    let _rb = redis(
        b,
        &[
            "--requirepass",
            pw,
            "--masterauth",
            pw,
            "--replicaof",
            "127.0.0.1",
            &a.to_string(),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(5), || redis_cli(
            a,
            &["-a", pw, "--no-auth-warning", "ping"]
        )
        .contains("PONG")
            && redis_cli(b, &["-a", pw, "--no-auth-warning", "ping"])
                .contains("PONG"))
        .await
    );
    let port = free_port();
    let cfg = format!(
        "[[listeners]]\nname = \"redis\"\naddress = \"127.0.0.1:{port}\"\npool = \"r\"\nmode = \"single\"\n\n\
         [pools.r]\nhealth = {{ check = \"redis\", role = \"master\", password = \"{pw}\", interval = \"100ms\", timeout = \"500ms\", rise = 1, fall = 1 }}\n\
         [[pools.r.servers]]\nname = \"a\"\naddress = \"127.0.0.1:{a}\"\npriority = 2\n\
         [[pools.r.servers]]\nname = \"b\"\naddress = \"127.0.0.1:{b}\"\npriority = 1\n"
    );
    let c = Convoy::start(BIN, &cfg).await;
    // b has the better priority but is a replica: only a is up.
    assert!(
        wait_until(Duration::from_secs(5), || up_ones(&c) == ["a"]).await,
        "{:?}",
        health(&c)
    );
    let via = |cmd: &[&str]| redis_cli(port, &[&["-a", pw, "--no-auth-warning"][..], cmd].concat());
    assert!(via(&["info", "replication"]).contains("role:master"));
    assert!(
        via(&["set", "k", "1"]).contains("OK"),
        "writes go to the primary"
    );
    // Failover: b becomes the primary, a its replica.
    redis_cli(
        b,
        &["-a", pw, "--no-auth-warning", "replicaof", "no", "one"],
    );
    redis_cli(
        a,
        &[
            "-a",
            pw,
            "--no-auth-warning",
            "replicaof",
            "127.0.0.1",
            &b.to_string(),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(5), || up_ones(&c) == ["b"]).await,
        "{:?}",
        health(&c)
    );
    let e = c.events("server_down");
    assert!(
        e.iter()
            .any(|e| e["server"] == "a"
                && e["detail"].as_str().unwrap_or("").contains("role:master")),
        "{e:?}"
    );
    assert!(
        via(&["set", "k", "2"]).contains("OK"),
        "writes follow to the new primary"
    );
    // A wrong password is a failed check, with the server's words.
    drop(c);
    let c = Convoy::start(
        BIN,
        &cfg.replace(pw, "not-the-password")
            .replace("--requirepass", ""),
    )
    .await;
    assert!(
        wait_until(Duration::from_secs(5), || health(&c)
            .iter()
            .all(|(_, h)| h == "down"))
        .await,
        "{:?}",
        health(&c)
    );
}

/// A TCP server that greets each connection with `greeting`.
async fn greeter(greeting: &'static str) -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(greeting.as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_expect_checks_an_smtp_greeting() {
    // A real SMTP server (Python's smtpd) and one that refuses service.
    let smtp_port = free_port();
    let _smtp = Proc(
        Command::new("/usr/bin/python3")
            .args([
                "-W",
                "ignore",
                "-m",
                "smtpd",
                "-n",
                "-c",
                "DebuggingServer",
                &format!("127.0.0.1:{smtp_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 smtpd"),
    );
    let refusing = greeter("554 no service here\r\n").await;
    let port = free_port();
    let cfg = format!(
        "[[listeners]]\nname = \"smtp\"\naddress = \"127.0.0.1:{port}\"\npool = \"m\"\n\n\
         [pools.m]\nhealth = {{ check = \"expect\", expect = \"220\", send = \"\", interval = \"100ms\", timeout = \"500ms\", rise = 1, fall = 1 }}\n\
         [[pools.m.servers]]\nname = \"smtpd\"\naddress = \"127.0.0.1:{smtp_port}\"\n\
         [[pools.m.servers]]\nname = \"refusing\"\naddress = \"{refusing}\"\n"
    );
    let c = Convoy::start(BIN, &cfg).await;
    assert!(
        wait_until(Duration::from_secs(8), || health(&c)
            == [
                ("refusing".to_string(), "down".to_string()),
                ("smtpd".to_string(), "up".to_string())
            ])
        .await,
        "{:?}",
        health(&c)
    );
    let e = c.events("server_down");
    assert!(
        e.iter().any(|e| e["server"] == "refusing"
            && e["detail"]
                .as_str()
                .unwrap_or("")
                .contains("expected \"220\", got \"554 no service here\"")),
        "{e:?}"
    );
}

// ------------------------------------------------------------- PostgreSQL

/// The PostgreSQL binaries' directory (Debian: /usr/lib/postgresql/N/bin).
fn pg_bin() -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    v.sort();
    v.pop()
}

/// Runs `args` as the `postgres` user (PostgreSQL refuses root).
fn as_pg(args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn must_pg(args: &[&str]) {
    let o = as_pg(args);
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Two clusters in a temp dir, stopped and removed when dropped.
struct Pg {
    bin: PathBuf,
    dir: PathBuf,
}

impl Pg {
    fn ctl(&self, data: &str, args: &[&str]) -> std::process::Output {
        let d = self.dir.join(data);
        let ctl = self.bin.join("pg_ctl");
        let mut a = vec![ctl.to_str().unwrap(), "-D", d.to_str().unwrap()];
        a.extend_from_slice(args);
        as_pg(&a)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        for d in ["primary", "standby"] {
            let _ = self.ctl(d, &["stop", "-m", "immediate"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn psql(port: u16, sql: &str) -> (bool, String) {
    let o = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAc",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "3")
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_role_check_never_sends_writes_to_a_standby() {
    let (Some(bin), true) = (pg_bin(), root() && have("runuser") && have("psql")) else {
        assert!(
            std::env::var_os("CONVOY_REQUIRE_NETNS").is_none(),
            "PostgreSQL (apt-get install postgresql) and root are needed"
        );
        eprintln!("skipped: PostgreSQL and root (to run it as postgres) are needed");
        return;
    };
    let dir = temp_dir("pg");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let pg = Pg {
        bin: bin.clone(),
        dir: dir.clone(),
    };
    let (p1, p2) = (free_port(), free_port());
    let primary = dir.join("primary");
    let initdb = bin.join("initdb");
    must_pg(&[
        initdb.to_str().unwrap(),
        "-D",
        primary.to_str().unwrap(),
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
    ]);
    let opts = |port: u16| {
        format!("-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c wal_level=replica -c max_wal_senders=4 -c hot_standby=on", dir.display())
    };
    must_pg(&[
        bin.join("pg_ctl").to_str().unwrap(),
        "-D",
        primary.to_str().unwrap(),
        "-w",
        "-o",
        &opts(p1),
        "-l",
        dir.join("primary.log").to_str().unwrap(),
        "start",
    ]);
    std::fs::OpenOptions::new()
        .append(true)
        .open(primary.join("pg_hba.conf"))
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, b"host replication all 127.0.0.1/32 trust\n")
        })
        .unwrap();
    let _ = pg.ctl("primary", &["reload"]);
    let standby = dir.join("standby");
    must_pg(&[
        bin.join("pg_basebackup").to_str().unwrap(),
        "-h",
        "127.0.0.1",
        "-p",
        &p1.to_string(),
        "-U",
        "postgres",
        "-D",
        standby.to_str().unwrap(),
        "-R",
        "-X",
        "stream",
    ]);
    must_pg(&[
        bin.join("pg_ctl").to_str().unwrap(),
        "-D",
        standby.to_str().unwrap(),
        "-w",
        "-o",
        &opts(p2),
        "-l",
        dir.join("standby.log").to_str().unwrap(),
        "start",
    ]);
    assert!(psql(p2, "select pg_is_in_recovery()").1.starts_with('t'));

    let port = free_port();
    let cfg = format!(
        "[[listeners]]\nname = \"pg\"\naddress = \"127.0.0.1:{port}\"\npool = \"db\"\nmode = \"single\"\n\n\
         [pools.db]\nhealth = {{ check = \"postgres\", role = \"primary\", user = \"postgres\", interval = \"200ms\", timeout = \"1s\", rise = 1, fall = 1 }}\n\
         [[pools.db.servers]]\nname = \"standby\"\naddress = \"127.0.0.1:{p2}\"\npriority = 1\n\
         [[pools.db.servers]]\nname = \"primary\"\naddress = \"127.0.0.1:{p1}\"\npriority = 2\n"
    );
    let c = Convoy::start(BIN, &cfg).await;
    // The standby has the better priority but is read-only: down.
    assert!(
        wait_until(Duration::from_secs(8), || up_ones(&c) == ["primary"]).await,
        "{:?}",
        health(&c)
    );
    let (ok, out) = psql(port, "create table t (x int); insert into t values (1)");
    assert!(ok, "a write through convoy reaches the primary: {out}");
    // Failover: the primary stops, the standby is promoted; until it is,
    // no server is up (no write can reach a read-only server).
    let _ = pg.ctl("primary", &["stop", "-m", "fast", "-w"]);
    assert!(
        wait_until(Duration::from_secs(8), || up_ones(&c).is_empty()).await,
        "{:?}",
        health(&c)
    );
    let (ok, _) = psql(port, "insert into t values (2)");
    assert!(!ok, "no write while only a standby is left");
    let _ = pg.ctl("standby", &["promote", "-w"]);
    assert!(
        wait_until(Duration::from_secs(10), || up_ones(&c) == ["standby"]).await,
        "{:?}",
        health(&c)
    );
    let (ok, out) = psql(port, "insert into t values (3); select count(*) from t");
    assert!(
        ok && out.trim().ends_with('2'),
        "writes go to the promoted standby: {out}"
    );
    let e = c.events("server_down");
    assert!(
        e.iter()
            .any(|e| e["server"] == "standby"
                && e["detail"].as_str().unwrap_or("").contains("standby")),
        "{e:?}"
    );
    let _ = Path::new(&dir);
}

fn server_view(c: &Convoy, name: &str) -> Value {
    let q = query(c);
    for z in q["pools"][0]["zones"].as_array().into_iter().flatten() {
        for s in z["servers"].as_array().into_iter().flatten() {
            if s["name"] == name {
                return s.clone();
            }
        }
    }
    Value::Null
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sets_weight_drain_and_down() {
    // The agent listens on its own port of the same IP as the server:
    // the server here is on 127.0.0.2, the agent on 127.0.0.2:PORT.
    let say = std::sync::Arc::new(std::sync::Mutex::new("up 50%".to_string()));
    let l = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let server_port = l.local_addr().unwrap().port();
    tokio::spawn(async move { while l.accept().await.is_ok() {} });
    let agent_port = {
        use tokio::io::AsyncWriteExt;
        let a = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = a.local_addr().unwrap().port();
        let say = std::sync::Arc::clone(&say);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = a.accept().await {
                let line = format!("{}\n", say.lock().unwrap());
                let _ = s.write_all(line.as_bytes()).await;
            }
        });
        port
    };
    let port = free_port();
    let cfg = format!(
        "[[listeners]]\nname = \"tcp\"\naddress = \"127.0.0.1:{port}\"\npool = \"p\"\n\n\
         [pools.p]\nhealth = {{ check = \"none\" }}\nagent = {{ port = {agent_port}, interval = \"100ms\" }}\n\
         [[pools.p.servers]]\nname = \"s\"\naddress = \"127.0.0.2:{server_port}\"\nweight = 200\n"
    );
    let c = Convoy::start(BIN, &cfg).await;
    let is = |what: &str, want: Value| {
        let v = server_view(&c, "s")[what].clone();
        v == want
    };
    assert!(
        wait_until(Duration::from_secs(5), || is("weight", 100.into())).await,
        "up 50% halves the weight: {}",
        server_view(&c, "s")
    );
    *say.lock().unwrap() = "drain".into();
    assert!(
        wait_until(Duration::from_secs(5), || is("admin", "draining".into())).await,
        "{}",
        server_view(&c, "s")
    );
    *say.lock().unwrap() = "down".into();
    assert!(
        wait_until(Duration::from_secs(5), || is("admin", "disabled".into())).await,
        "{}",
        server_view(&c, "s")
    );
    *say.lock().unwrap() = "ready up 100%".into();
    assert!(
        wait_until(Duration::from_secs(5), || is("admin", "enabled".into())
            && is("weight", 200.into()))
        .await,
        "{}",
        server_view(&c, "s")
    );
    let e = c.events("server_agent");
    assert!(e.len() >= 4, "{e:?}");
}
