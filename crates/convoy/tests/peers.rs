//! Real protocol peers behind convoy: redis-server (Debian package),
//! driven with redis-cli and redis-benchmark through the balancer.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use convoy_testkit::config::{Config, Listener, Pool, Server};
use convoy_testkit::{free_port, have, wait_until, Convoy};

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_through_convoy() {
    assert!(
        have("redis-server") && have("redis-cli") && have("redis-benchmark"),
        "redis-server, redis-cli and redis-benchmark are needed (apt-get install -y redis-server redis-tools)"
    );
    let rport = free_port();
    let redis = Redis(
        Command::new("redis-server")
            .args([
                "--port",
                &rport.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || redis_cli(rport, &["PING"])
            == "PONG")
        .await,
        "redis-server did not start"
    );
    let port = free_port();
    let cfg = Config::new()
        .listener(
            Listener::tcp(port, "redis")
                .set("name", "redis")
                .set("park_after", "100ms"),
        )
        .pool(Pool::new("redis").server(Server::at(SocketAddr::from(([127, 0, 0, 1], rport)))))
        .build();
    let c = Convoy::start(BIN, &cfg).await;
    assert_eq!(
        redis_cli(port, &["SET", "convoy:key", "through the balancer"]),
        "OK"
    );
    assert_eq!(
        redis_cli(port, &["GET", "convoy:key"]),
        "through the balancer"
    );
    assert_eq!(
        redis_cli(rport, &["GET", "convoy:key"]),
        "through the balancer"
    );
    // A pipelined load through convoy, bounded in count.
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-n",
            "5000",
            "-c",
            "10",
            "-P",
            "4",
            "-t",
            "set,get,incr",
            "-q",
        ])
        .output()
        .expect("redis-benchmark runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for t in ["SET", "GET", "INCR"] {
        assert!(text.contains(&format!("{t}:")), "no {t} result in: {text}");
    }
    // Every INCR arrived exactly once.
    assert_eq!(redis_cli(port, &["GET", "counter:__rand_int__"]), "5000");

    // Idle connections are parked (after 100 ms here) and woken by
    // either side: a subscriber gets a message published while it was
    // parked; a command on a parked connection is answered; a blocking
    // command's late answer (the server speaks first) arrives.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let parked = "convoy_listener_parked_connections{listener=\"redis\",protocol=\"tcp\"}";
    let mut sub = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    sub.write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n")
        .await
        .unwrap();
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    idle.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");
    let n = tokio::time::timeout(Duration::from_secs(5), sub.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("subscribe"));
    assert!(
        wait_until(Duration::from_secs(5), || c.metric(parked) == Some(2)).await,
        "{:?}",
        c.metric(parked)
    );
    assert_eq!(redis_cli(port, &["PUBLISH", "news", "while-parked"]), "1");
    let mut got = String::new();
    while !got.contains("while-parked") {
        let n = tokio::time::timeout(Duration::from_secs(5), sub.read(&mut buf))
            .await
            .expect("the message in time")
            .unwrap();
        assert!(n > 0, "the subscriber's connection closed: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    idle.write_all(b"PING\r\n").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");
    // BLPOP with a 1 s timeout: parked while the server waits, then the
    // server's nil answer.
    let t = tokio::time::Instant::now();
    assert_eq!(redis_cli(port, &["BLPOP", "convoy:nothing", "1"]), "");
    assert!(t.elapsed() >= Duration::from_millis(900));
    drop(redis);
}
