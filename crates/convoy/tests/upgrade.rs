//! Seamless binary upgrade under load: a second convoy process takes over
//! the listening sockets (TCP, HTTP and the admin API's) of the running
//! one; the old one drains and exits. No request or connection fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use convoy_testkit::http::HttpOrigin;
use convoy_testkit::{ask_name, free_port, temp_dir, Convoy, NamedBackend};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

async fn http_get(port: u16) -> Result<u16, String> {
    // A new client per request: a new connection each time.
    let c: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let r = c
        .get(format!("http://127.0.0.1:{port}/").parse().unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let st = r.status().as_u16();
    r.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(st)
}

async fn tcp_echo(port: u16) -> Result<(), String> {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, mut s) = ask_name(None, addr).await.map_err(|e| e.to_string())?;
    s.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    if &buf != b"ping" {
        return Err("bad echo".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_loses_nothing() {
    let origin = HttpOrigin::start("o", Duration::from_millis(1)).await;
    let backend = NamedBackend::start("t").await;
    let (hport, tport) = (free_port(), free_port());
    let sock = temp_dir("upgrade-sock").join("convoy.sock");
    let cfg = format!(
        "[node]\nupgrade_socket = \"{}\"\ndrain_timeout = \"10s\"\n\n\
         [[listeners]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"127.0.0.1:{hport}\"\npool = \"web\"\n\
         [[listeners]]\nname = \"tcp\"\naddress = \"127.0.0.1:{tport}\"\npool = \"tcp\"\n\n\
         [pools.web]\n[[pools.web.servers]]\nname = \"o\"\naddress = \"{}\"\n\
         [pools.tcp]\n[[pools.tcp.servers]]\nname = \"t\"\naddress = \"{}\"\n",
        sock.display(),
        origin.addr,
        backend.addr
    );
    let mut old = Convoy::start(BIN, &cfg).await;
    let admin = old.admin_addr();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for i in 0..4 {
        let (stop, ok, errors) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&errors));
        load.push(tokio::spawn(async move {
            // Bounded: 30 s at most.
            let end = tokio::time::Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < end {
                let r = if i % 2 == 0 {
                    http_get(hport).await.and_then(|st| {
                        if st == 200 {
                            Ok(())
                        } else {
                            Err(format!("status {st}"))
                        }
                    })
                } else {
                    tcp_echo(tport).await
                };
                match r {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.lock().unwrap().push(e),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A long-lived TCP connection opened before the upgrade keeps working
    // through the old process until it ends.
    let (_, mut long) = ask_name(None, format!("127.0.0.1:{tport}").parse().unwrap())
        .await
        .unwrap();

    let new = old.start_upgrade(BIN).await;
    assert!(
        new.wait_event("upgrade_took_over", Duration::from_secs(5))
            .await,
        "{}",
        new.stderr()
    );
    assert!(
        old.wait_event("upgrade_handover", Duration::from_secs(5))
            .await,
        "{}",
        old.stderr()
    );
    // The old process waits for the long connection.
    long.write_all(b"still").await.unwrap();
    let mut buf = [0u8; 5];
    long.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still");
    drop(long);
    let code = old.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(
        code,
        Some(0),
        "the old process drains and exits: {}",
        old.stderr()
    );
    // Load goes on through the new process alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    assert!(ok > 100, "load ran: {ok}");
    assert!(
        errors.is_empty(),
        "{} of {} failed: {:?}",
        errors.len(),
        ok,
        &errors[..errors.len().min(5)]
    );
    // The admin API moved with the sockets: same address, new process.
    let out = std::process::Command::new(BIN)
        .args(["ctl", "--admin", &admin, "query"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the new process can itself be upgraded later.
    assert!(sock.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_frees_its_addresses_for_the_next_one() {
    // Without an upgrade socket: SIGQUIT the old node, start the new one
    // on the same config while the old one still drains a connection.
    let backend = NamedBackend::start("t").await;
    let (tport, aport) = (free_port(), free_port());
    let cfg = format!(
        "[node]\ndrain_timeout = \"10s\"\n[admin]\naddress = \"127.0.0.1:{aport}\"\n\n\
         [[listeners]]\naddress = \"127.0.0.1:{tport}\"\npool = \"tcp\"\n\
         [pools.tcp]\n[[pools.tcp.servers]]\nname = \"t\"\naddress = \"{}\"\n",
        backend.addr
    );
    let mut old = Convoy::start(BIN, &cfg).await;
    let (_, mut long) = ask_name(None, format!("127.0.0.1:{tport}").parse().unwrap())
        .await
        .unwrap();
    old.signal("QUIT");
    assert!(old.wait_event("admin_closed", Duration::from_secs(5)).await);
    let new = Convoy::start(BIN, &cfg).await;
    assert_eq!(new.admin_addr(), format!("127.0.0.1:{aport}"));
    // The old connection still works until it ends; then the old exits.
    long.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    long.read_exact(&mut b).await.unwrap();
    drop(long);
    assert_eq!(old.wait_exit(Duration::from_secs(10)).await, Some(0));
    tcp_echo(tport).await.unwrap();
}
