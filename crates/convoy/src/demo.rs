//! `convoy demo`: three small HTTP servers on loopback, each answering with
//! its name, weight and zone, behind a convoy HTTP listener, with the
//! dashboard on the admin address; shows weighted balancing with nothing
//! to install. Ctrl-C stops everything.

use std::net::SocketAddr;

use anyhow::Context as _;
use convoy_config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SERVERS: [(&str, u32, &str); 3] = [
    ("demo-a", 1, "zone-1"),
    ("demo-b", 2, "zone-1"),
    ("demo-c", 3, "zone-2"),
];

/// Serves HTTP/1.1 on `l`, answering every request with `body` (where
/// `{peer}` becomes the address of the connection's other end).
pub async fn http_server(l: TcpListener, body: String) {
    loop {
        let Ok((s, peer)) = l.accept().await else {
            continue;
        };
        let body = body.replace("{peer}", &peer.to_string());
        tokio::spawn(async move {
            let _ = serve_conn(s, &body).await;
        });
    }
}

/// `convoy demo-servers`: demo HTTP servers on the given addresses, with
/// no balancer (e.g. behind a cluster); each answers with its name, its
/// address and the address of the connection's other end (the balancer
/// node that carried it). Runs until killed.
pub async fn servers(addrs: &[String]) -> anyhow::Result<()> {
    for (i, a) in addrs.iter().enumerate() {
        let l = TcpListener::bind(a)
            .await
            .with_context(|| format!("cannot listen on {a}"))?;
        let addr = l.local_addr()?;
        let name = format!("demo-{}", i + 1);
        println!("{name} listening on {addr}");
        tokio::spawn(http_server(
            l,
            format!("Hello from {name} at {addr}, for {{peer}}\n"),
        ));
    }
    std::future::pending::<()>().await;
    Ok(())
}

async fn serve_conn(mut s: TcpStream, body: &str) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 16 * 1024 {
                return Ok(());
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let close = head.contains("connection: close") || head.starts_with("get / http/1.0");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{}",
            body.len(),
            if close { "connection: close\r\n" } else { "" },
            body
        );
        s.write_all(resp.as_bytes()).await?;
        buf.drain(..end);
        if close {
            return Ok(());
        }
    }
}

/// Runs the demo until Ctrl-C.
pub async fn run(
    listen: &str,
    admin: &str,
    ring: std::sync::Arc<convoy_core::events::EventRing>,
) -> anyhow::Result<()> {
    let mut servers = String::new();
    for (name, weight, zone) in SERVERS {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = l.local_addr()?;
        let body = format!("Hello from {name} (weight {weight}, {zone}) at {addr}\n");
        tokio::spawn(http_server(l, body));
        servers.push_str(&format!(
            "[[pools.demo.servers]]\nname = \"{name}\"\naddress = \"{addr}\"\nweight = {weight}\nzone = \"{zone}\"\n\n"
        ));
    }
    let text = format!(
        "[node]\nname = \"demo\"\ndrain_timeout = \"5s\"\n\n[admin]\naddress = \"{admin}\"\n\n[[listeners]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"{listen}\"\npool = \"demo\"\n\n[pools.demo]\nslow_start = \"0s\"\n\n{servers}"
    );
    let cfg = Config::parse("demo", &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The balancer binds its addresses first: the banner comes once they
    // are ours, and a busy port says which option moves it.
    let (node, inputs) = match convoy_control::Node::start(cfg.clone(), None, ring, None).await {
        Ok(x) => x,
        Err(e) => {
            let why = convoy_control::report(&e);
            let hint = if why.contains("in use") {
                if why.starts_with("admin API") {
                    format!("\n  {admin} is taken: choose another address with --admin, e.g. convoy demo --admin 127.0.0.1:9901")
                } else {
                    format!("\n  {listen} is taken: choose another address with --listen, e.g. convoy demo --listen 127.0.0.1:8081")
                }
            } else {
                String::new()
            };
            anyhow::bail!("demo balancer: {why}{hint}");
        }
    };
    println!("convoy demo: three HTTP servers behind a balancer on {listen}\n");
    println!("  servers (weights 1:2:3):");
    for s in &cfg.pools["demo"].servers {
        println!(
            "    {:8} {}  weight {}  {}",
            s.name, s.address.0, s.weight, s.zone
        );
    }
    println!("\n  try:");
    println!("    curl http://{listen}/");
    println!("    for i in $(seq 12); do curl -s http://{listen}/; done | sort | uniq -c");
    println!("  dashboard: http://{admin}/   (drain or enable a server there)");
    println!("  or from the shell: convoy ctl --admin {admin} query\n");
    println!("  Ctrl-C stops everything.\n");
    let signals = crate::os_signals()?;
    convoy_control::run(node, inputs, signals).await;
    Ok(())
}
