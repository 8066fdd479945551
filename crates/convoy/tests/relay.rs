//! Byte-exact relaying of ≥100 MB each way with half-close in both
//! directions, through splice(2) and through the copy path.

use std::net::SocketAddr;
use std::time::Duration;

use convoy_testkit::config::{Config, Listener, Pool, Server};
use convoy_testkit::{free_port, Convoy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_convoy");
const SIZE: usize = 100 * 1024 * 1024;

/// Deterministic pseudo-random bytes (xorshift), `seed` picks the stream.
fn fill(seed: u64, buf: &mut [u8], state: &mut u64) {
    if *state == 0 {
        *state = seed | 1;
    }
    for chunk in buf.chunks_mut(8) {
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// A running 64-bit checksum (FNV-1a over 8-byte words plus length).
#[derive(Default)]
struct Sum {
    h: u64,
    n: u64,
}

impl Sum {
    fn add(&mut self, data: &[u8]) {
        if self.h == 0 {
            self.h = 0xcbf2_9ce4_8422_2325;
        }
        for &b in data {
            self.h ^= u64::from(b);
            self.h = self.h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.n += data.len() as u64;
    }
}

async fn send_all(s: &mut TcpStream, seed: u64) -> Sum {
    let mut sum = Sum::default();
    let mut st = 0;
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = SIZE;
    while left > 0 {
        let n = left.min(buf.len());
        fill(seed, &mut buf[..n], &mut st);
        s.write_all(&buf[..n]).await.unwrap();
        sum.add(&buf[..n]);
        left -= n;
    }
    s.shutdown().await.unwrap();
    sum
}

async fn recv_all(s: &mut TcpStream) -> Sum {
    let mut sum = Sum::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            return sum;
        }
        sum.add(&buf[..n]);
    }
}

/// `client_first`: the client sends everything and half-closes, the server
/// reads to EOF and only then sends its data (so the server→client
/// direction must stay open after the client's FIN). Otherwise the server
/// goes first.
async fn round(splice: bool, client_first: bool) {
    let origin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let oaddr = origin.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = origin.accept().await.unwrap();
        if client_first {
            let got = recv_all(&mut s).await;
            let sent = send_all(&mut s, 2).await;
            (got.h, got.n, sent.h)
        } else {
            let sent = send_all(&mut s, 2).await;
            let got = recv_all(&mut s).await;
            (got.h, got.n, sent.h)
        }
    });
    let port = free_port();
    let cfg = Config::new()
        .node("splice", splice)
        .listener(Listener::tcp(port, "p"))
        .pool(
            Pool::new("p")
                .health([("check", "none".into())])
                .server(Server::at(oaddr)),
        )
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = TcpStream::connect(to).await.unwrap();
    let (sent, got) = if client_first {
        let sent = send_all(&mut s, 1).await;
        (sent, recv_all(&mut s).await)
    } else {
        let got = recv_all(&mut s).await;
        (send_all(&mut s, 1).await, got)
    };
    let (srv_got_h, srv_got_n, srv_sent_h) = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("server finished")
        .unwrap();
    assert_eq!(
        srv_got_n, SIZE as u64,
        "splice={splice} client_first={client_first}"
    );
    assert_eq!(srv_got_h, sent.h, "client→server bytes differ");
    assert_eq!(got.n, SIZE as u64);
    assert_eq!(got.h, srv_sent_h, "server→client bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_100mb_each_way_client_half_closes_first() {
    round(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_100mb_each_way_server_half_closes_first() {
    round(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_path_100mb_each_way_both_half_closes() {
    round(false, true).await;
    round(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_idle_timeout() {
    let origin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let oaddr = origin.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = origin.accept().await {
            held.push(s);
        }
    });
    let port = free_port();
    let cfg = Config::new()
        .listener(Listener::tcp(port, "p").set("idle_timeout", "300ms"))
        .pool(
            Pool::new("p")
                .health([("check", "none".into())])
                .server(Server::at(oaddr)),
        )
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let mut s = TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection not closed: {r:?}"
    );
}
