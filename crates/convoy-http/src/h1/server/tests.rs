//! The connection loop against a client on an in-memory pipe.

use super::*;
use http_body_util::{BodyExt, Full};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, DuplexStream};
use tokio::sync::watch;

type Fut = Pin<Box<dyn Future<Output = Response<BoxedResp>> + Send>>;

fn text(t: String) -> Response<BoxedResp> {
    Response::new(
        Full::new(Bytes::from(t))
            .map_err(|e| match e {})
            .boxed_unsync(),
    )
}

/// Serves one connection whose other end is returned; the signals'
/// senders are kept alive with it.
fn start<H>(handler: H) -> (DuplexStream, impl Drop)
where
    H: Fn(Request<ReqBody>, Meta) -> Fut + Send + Sync + 'static,
{
    let (c, _task, g) = start_with(None, handler);
    (c, g)
}

type Ended = Option<Idle<DuplexStream>>;

/// [`start`] with a park time; also gives what the loop hands back.
fn start_with<H>(
    park_after: Option<Duration>,
    handler: H,
) -> (
    DuplexStream,
    tokio::sync::oneshot::Receiver<Ended>,
    impl Drop,
)
where
    H: Fn(Request<ReqBody>, Meta) -> Fut + Send + Sync + 'static,
{
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (stop_tx, stop) = watch::channel(false);
    let (k1, r1) = watch::channel(0u64);
    let (k2, r2) = watch::channel(0u64);
    let sig = Signals::new(stop, [r1, r2], Arc::new(tokio::sync::Notify::new()));
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let end = serve(
            server,
            BytesMut::new(),
            None,
            settings(park_after),
            sig,
            handler,
        )
        .await;
        let _ = done_tx.send(end);
    });
    struct Guard(
        tokio::task::JoinHandle<()>,
        #[allow(dead_code)] (watch::Sender<bool>, watch::Sender<u64>, watch::Sender<u64>),
    );
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    (client, done, Guard(task, (stop_tx, k1, k2)))
}

fn settings(park_after: Option<Duration>) -> Settings {
    Settings {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        limits: Default::default(),
        park_after,
    }
}

/// Reads until `want` responses (by their blank line) arrived, or the
/// connection closed.
async fn read_until(c: &mut DuplexStream, marker: &str, n: usize) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while String::from_utf8_lossy(&got).matches(marker).count() < n {
        let k = tokio::time::timeout(Duration::from_secs(30), c.read(&mut b))
            .await
            .expect("an answer")
            .unwrap();
        if k == 0 {
            break;
        }
        got.extend_from_slice(&b[..k]);
    }
    String::from_utf8(got).unwrap()
}

fn path_echo(req: Request<ReqBody>, _: Meta) -> Fut {
    Box::pin(async move { text(format!("<{}>", req.uri().path())) })
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (mut c, _g) = start(path_echo);
    c.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut c, "</", 2).await;
    let (a, b) = (out.find("</one>").unwrap(), out.find("</two>").unwrap());
    assert!(a < b, "{out}");
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert!(!out.contains("connection: close"), "kept alive: {out}");
}

#[tokio::test]
async fn expect_continue_is_sent_when_the_body_is_asked_for() {
    let (mut c, _g) = start(|req: Request<ReqBody>, _| {
        Box::pin(async move {
            let b = req.into_body().collect().await.unwrap().to_bytes();
            text(format!("got {}", b.len()))
        }) as Fut
    });
    c.write_all(b"PUT /u HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    // Nothing of the body is sent before the 100.
    let first = read_until(&mut c, "\r\n\r\n", 1).await;
    assert_eq!(first, "HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"hello").await.unwrap();
    let out = read_until(&mut c, "got 5", 1).await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
}

#[tokio::test(start_paused = true)]
async fn a_head_that_does_not_arrive_in_time_gets_408() {
    let (mut c, _g) = start(path_echo);
    c.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let out = read_until(&mut c, "\r\n\r\n", 1).await;
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert!(out.contains("connection: close"), "{out}");
}

#[tokio::test]
async fn a_malformed_head_gets_400_and_never_reaches_the_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let n = Arc::clone(&calls);
    let (mut c, _g) = start(move |req, m| {
        n.fetch_add(1, Ordering::SeqCst);
        path_echo(req, m)
    });
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut c, "\r\n\r\n", 1).await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_that_leaves_drops_its_request() {
    struct Flag(Arc<AtomicUsize>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&dropped);
    let (mut c, _g) = start(move |_req, _| {
        let f = Flag(Arc::clone(&d));
        Box::pin(async move {
            let _f = f;
            std::future::pending::<()>().await;
            text(String::new())
        }) as Fut
    });
    c.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::task::yield_now().await;
    drop(c);
    let gone = tokio::time::timeout(Duration::from_secs(5), async {
        while dropped.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the request path was not dropped");
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_handed_back_to_be_parked_and_goes_on_from_there() {
    let (mut c, done, _g) = start_with(Some(Duration::from_secs(2)), path_echo);
    let t0 = Instant::now();
    // Requests closer together than the park time keep the loop.
    for path in ["/a", "/b"] {
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_until(&mut c, "</", 1).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let Idle {
        io,
        since: last,
        kills,
    } = tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("handed back")
        .unwrap()
        .expect("parked, not ended");
    // Handed back 2 s after the last response, not before.
    assert!(last >= t0 + Duration::from_secs(1), "{:?}", last - t0);
    assert!(Instant::now() >= last + Duration::from_secs(2));
    // Served again from where it was, with its own kill receivers: the
    // next request is answered...
    let (_stop_tx, stop) = watch::channel(false);
    let sig = Signals::new(stop, kills, Arc::new(tokio::sync::Notify::new()));
    let again = tokio::spawn(serve(
        io,
        BytesMut::new(),
        Some(last),
        settings(None),
        sig,
        path_echo,
    ));
    c.write_all(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut c, "</c>", 1).await;
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    // ...and the idle timeout counts from the last response: closed 60 s
    // after it (the first response's time is not a fresh start).
    let read = tokio::time::timeout(Duration::from_secs(61), c.read(&mut [0u8; 16])).await;
    assert!(matches!(read, Ok(Ok(0))), "closed when idle for 60 s");
    assert!(again.await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_new_connection_and_a_stopping_one_are_never_handed_back() {
    // Before its first request: the header timeout, no parking.
    let (mut c, done, _g) = start_with(Some(Duration::from_millis(100)), path_echo);
    let read = tokio::time::timeout(Duration::from_secs(11), c.read(&mut [0u8; 16])).await;
    assert!(matches!(read, Ok(Ok(0))), "closed at the header timeout");
    assert!(done.await.unwrap().is_none());
    // Stopping while idle: closed after the grace, not handed back.
    let (mut c, server) = tokio::io::duplex(64 * 1024);
    let (stop_tx, stop) = watch::channel(false);
    let (_k1, r1) = watch::channel(0u64);
    let (_k2, r2) = watch::channel(0u64);
    let sig = Signals::new(stop, [r1, r2], Arc::new(tokio::sync::Notify::new()));
    stop_tx.send(true).unwrap();
    let since = Some(Instant::now());
    let task = tokio::spawn(serve(
        server,
        BytesMut::new(),
        since,
        settings(Some(Duration::from_millis(100))),
        sig,
        path_echo,
    ));
    let read = tokio::time::timeout(Duration::from_secs(5), c.read(&mut [0u8; 16])).await;
    assert!(matches!(read, Ok(Ok(0))), "closed after the stop's grace");
    assert!(task.await.unwrap().is_none());
}

#[tokio::test]
async fn a_woken_connection_reads_its_request_before_it_may_park_again() {
    // A real socket: tokio learns of its readiness only after a turn of
    // its reactor, later than a timer already due.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = l.accept().await.unwrap();
    c.write_all(b"GET /woken HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_stop_tx, stop) = watch::channel(false);
    let (_k1, r1) = watch::channel(0u64);
    let (_k2, r2) = watch::channel(0u64);
    let sig = Signals::new(stop, [r1, r2], Arc::new(tokio::sync::Notify::new()));
    // Idle for longer than the park time already.
    let since = Instant::now() - Duration::from_secs(5);
    let set = settings(Some(Duration::from_millis(50)));
    // Out of tokio's reactor and back, as a parked socket is.
    let server = tokio::net::TcpStream::from_std(server.into_std().unwrap()).unwrap();
    let task = tokio::spawn(serve(
        server,
        BytesMut::new(),
        Some(since),
        set,
        sig,
        path_echo,
    ));
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("</woken>") {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
            .await
            .expect("the request is answered")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&b[..n]);
    }
    // Then, idle again, it is handed back.
    let back = tokio::time::timeout(Duration::from_secs(5), task).await;
    assert!(
        matches!(back, Ok(Ok(Some(_)))),
        "handed back once idle again"
    );
}

/// Requests move the idle deadline without moving the timer (it is set
/// again only when it fires early): the idle timeout still counts from
/// the last response, to the second, however the requests were spread.
#[tokio::test(start_paused = true)]
async fn the_idle_timeout_counts_from_the_last_response() {
    let (mut c, _g) = start(path_echo);
    for (i, gap) in [0u64, 20, 30, 59].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(gap)).await;
        c.write_all(format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let out = read_until(&mut c, &format!("</{i}>"), 1).await;
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    }
    let last = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(70), c.read(&mut [0u8; 16])).await;
    assert!(matches!(read, Ok(Ok(0))), "closed when idle");
    let idle = Instant::now() - last;
    assert!(
        idle >= Duration::from_secs(60) && idle < Duration::from_secs(61),
        "closed after {idle:?} idle"
    );
}

/// The fields noted for an HTTP/2 request, from its names.
#[test]
fn meta_of_fields_notes_hop_forwarding_and_explain_fields() {
    let mut h = http::HeaderMap::new();
    h.insert("accept", "*/*".parse().unwrap());
    let m = Meta::of_fields(&h);
    assert!(m.stripped && !m.forwarding && !m.explain);
    h.insert("te", "trailers".parse().unwrap());
    h.insert("x-forwarded-for", "192.0.2.1".parse().unwrap());
    h.insert("x-convoy-explain", "t".parse().unwrap());
    let m = Meta::of_fields(&h);
    assert!(!m.stripped && m.forwarding && m.explain);
}

#[tokio::test]
async fn a_wait_with_nothing_to_read_holds_no_read_buffer() {
    // A stream that cannot tell when it is readable (a TLS session's
    // without a socket under it, here a pipe): the read is tried with a
    // spare buffer, and a read that finds nothing gives it back.
    let (mut client, mut server) = tokio::io::duplex(64);
    let (_stop_tx, stop) = watch::channel(false);
    let (_k1, r1) = watch::channel(0u64);
    let (_k2, r2) = watch::channel(0u64);
    let mut sig = Signals::new(stop, [r1, r2], Arc::new(tokio::sync::Notify::new()));
    let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(Duration::from_secs(60)));
    let mut armed = Instant::now() + Duration::from_secs(60);
    let mut stop_by = None;
    let mut rbuf = BytesMut::new();
    let mut wait = |cx: &mut Context<'_>, rbuf: &mut BytesMut| {
        poll_head(
            cx,
            &mut server,
            rbuf,
            &mut sig,
            &mut timer,
            &mut armed,
            &mut stop_by,
        )
    };
    let pending = poll_fn(|cx| Poll::Ready(wait(cx, &mut rbuf).is_pending())).await;
    assert!(pending, "nothing was sent");
    assert_eq!(rbuf.capacity(), 0, "the wait holds a read buffer");
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let ev = poll_fn(|cx| wait(cx, &mut rbuf)).await;
    assert!(matches!(ev, Ev::Data));
    assert_eq!(&rbuf[..], b"GET / HTTP/1.1\r\n");
}

/// A TLS connection accepted here from `openssl s_client` (self-signed
/// certificate made with the openssl CLI): the server side, and the
/// client's standard input (what is written there is sent as one record).
async fn tls_from_openssl() -> (
    Box<tokio_rustls::server::TlsStream<TcpStream>>,
    std::process::Child,
) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = std::env::temp_dir().join(format!(
        "convoy-tls-idle-{}-{}",
        std::process::id(),
        line!()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let made = std::process::Command::new("openssl")
        .current_dir(&dir)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args([
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    let certs: Vec<_> = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(l.local_addr().unwrap().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), l.accept())
        .await
        .unwrap()
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
        .await
        .unwrap()
        .unwrap();
    (Box::new(tls), client)
}

/// Whether `s` tells it has something to read, polled once.
async fn idle_ready<S: ClientStream>(s: &S) -> bool {
    poll_fn(|cx| Poll::Ready(s.poll_idle(cx).is_ready())).await
}

#[tokio::test]
async fn an_idle_tls_connection_waits_on_its_socket_unless_the_session_holds_bytes() {
    use std::io::Write;
    let (mut tls, mut client) = tls_from_openssl().await;
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(&[b'a'; 3000]).unwrap();
    stdin.flush().unwrap();
    // A few bytes read: the whole record is decrypted, the rest waits in
    // the session while the socket has nothing more.
    let mut first = [0u8; 10];
    tls.read_exact(&mut first).await.unwrap();
    assert!(
        idle_ready(&tls).await,
        "bytes held in the session are not waited for on the socket"
    );
    let mut rest = vec![0u8; 2990];
    tls.read_exact(&mut rest).await.unwrap();
    assert!(
        !idle_ready(&tls).await,
        "an idle session with nothing held waits on its socket"
    );
    stdin.write_all(b"more").unwrap();
    stdin.flush().unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(10), poll_fn(|cx| tls.poll_idle(cx))).await;
    assert!(
        matches!(woke, Ok(Ok(()))),
        "new bytes on the socket wake it"
    );
    let _ = client.kill();
    let _ = client.wait();
}
