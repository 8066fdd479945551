//! The pool and the exchange against a scripted server on an in-memory
//! pipe.

use super::*;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A pool holding one idle connection to `key`, whose server end is
/// returned.
fn pool_with_mock(key: Key) -> (Arc<Pool>, DuplexStream) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let p = Pool::new(Duration::from_secs(60), 4);
    p.checkin(
        key,
        UpConn {
            io: UpIo::Mock(a),
            buf: BytesMut::new(),
            idle_since: Instant::now(),
        },
    );
    (p, b)
}

/// Reads one request head from the server end.
async fn read_head(s: &mut DuplexStream) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "closed before a whole head");
        got.extend_from_slice(&b[..n]);
    }
    String::from_utf8(got).unwrap()
}

fn target(addr: SocketAddr) -> Target<'static> {
    Target {
        addr,
        tls: None,
        connect_timeout: Duration::from_millis(200),
    }
}

fn get<'a>(m: &'a Method, h: &'a HeaderMap) -> ReqHead<'a> {
    ReqHead {
        method: m,
        target: "/a",
        host: None,
        headers: h,
        extra: b"via: 1.1 convoy\r\n",
    }
}

#[tokio::test]
async fn a_response_body_ends_and_the_connection_goes_back_to_the_pool() {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let (pool, mut server) = pool_with_mock(Key { addr, tls: 0 });
    let (m, h) = (Method::GET, HeaderMap::new());
    let answer = tokio::spawn(async move {
        let head = read_head(&mut server).await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\n\r\nhello")
            .await
            .unwrap();
        (head, server)
    });
    let resp = pool
        .send(&target(addr), &get(&m, &h), OutBody::Empty)
        .await
        .unwrap();
    let (head, _server) = answer.await.unwrap();
    assert_eq!(head, "GET /a HTTP/1.1\r\nvia: 1.1 convoy\r\n\r\n");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-hop").is_none(), "hop-by-hop removed");
    assert_eq!(pool.idle_count(), 0, "in use until its body ends");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
    assert_eq!(pool.idle_count(), 1, "back in the pool");
}

#[tokio::test]
async fn a_server_that_closes_is_not_reused() {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let (pool, mut server) = pool_with_mock(Key { addr, tls: 0 });
    let (m, h) = (Method::GET, HeaderMap::new());
    tokio::spawn(async move {
        read_head(&mut server).await;
        server
            .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
    });
    let resp = pool
        .send(&target(addr), &get(&m, &h), OutBody::Empty)
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    drop(resp);
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn a_reused_connection_closed_under_a_request_is_tried_again_on_a_new_one() {
    // The pooled connection's server went away (the keep-alive race);
    // the request goes to a new connection, here refused: the client
    // sees the connect error, not the reset of the stale connection.
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let (pool, server) = pool_with_mock(Key { addr, tls: 0 });
    drop(server);
    let (m, h) = (Method::GET, HeaderMap::new());
    let e = pool
        .send(&target(addr), &get(&m, &h), OutBody::Empty)
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e}");
}

#[tokio::test]
async fn a_malformed_answer_is_the_servers_fault() {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let (pool, mut server) = pool_with_mock(Key { addr, tls: 0 });
    let (m, h) = (Method::GET, HeaderMap::new());
    tokio::spawn(async move {
        read_head(&mut server).await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
            .await
            .unwrap();
        let _ = server.read(&mut [0u8; 16]).await;
    });
    let e = pool
        .send(&target(addr), &get(&m, &h), OutBody::Empty)
        .await
        .unwrap_err();
    assert!(matches!(e, SendError::BadResponse(_)), "{e}");
}
