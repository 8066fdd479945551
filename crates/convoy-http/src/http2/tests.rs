//! The connection loop against a client written frame by frame, over an
//! in-memory pipe: what a well-behaved client gets, and what each broken
//! frame or request is answered with.

use super::*;
use bytes::{Buf, BytesMut};
use frame::Head;
use hpack::{Name, Pseudo};
use http::header::HeaderValue;
use http_body_util::{BodyExt, Full};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

type Resp = Response<Full<Bytes>>;
type Fut = Pin<Box<dyn Future<Output = Resp> + Send>>;

/// A client that writes frames by hand.
struct Raw {
    io: DuplexStream,
    buf: BytesMut,
    dec: hpack::Decoder,
}

/// A literal field without indexing, new name (what a test client sends).
fn lit(dst: &mut Vec<u8>, n: &str, v: &str) {
    dst.push(0);
    dst.push(n.len() as u8);
    dst.extend_from_slice(n.as_bytes());
    dst.push(v.len() as u8);
    dst.extend_from_slice(v.as_bytes());
}

fn get_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    lit(&mut b, ":method", "GET");
    lit(&mut b, ":scheme", "http");
    lit(&mut b, ":authority", "example.test");
    lit(&mut b, ":path", path);
    for (n, v) in extra {
        lit(&mut b, n, v);
    }
    b
}

impl Raw {
    async fn new(io: DuplexStream) -> Raw {
        let mut r = Raw {
            io,
            buf: BytesMut::new(),
            dec: hpack::Decoder::new(4096),
        };
        r.io.write_all(frame::PREFACE).await.unwrap();
        r.send(frame::SETTINGS, 0, 0, &[]).await;
        r
    }

    async fn send(&mut self, kind: u8, flags: u8, id: u32, p: &[u8]) {
        let mut b = Vec::new();
        frame::head(&mut b, p.len(), kind, flags, id);
        b.extend_from_slice(p);
        self.io.write_all(&b).await.unwrap();
    }

    async fn get(&mut self, id: u32, path: &str, extra: &[(&str, &str)]) {
        let b = get_block(path, extra);
        self.send(
            frame::HEADERS,
            frame::END_HEADERS | frame::END_STREAM,
            id,
            &b,
        )
        .await;
    }

    /// The next frame; `None` once the server closed.
    async fn next(&mut self) -> Option<(Head, Bytes)> {
        loop {
            if self.buf.len() >= 9 {
                let h = Head::parse(self.buf[..9].try_into().unwrap());
                if self.buf.len() >= 9 + h.len {
                    let mut f = self.buf.split_to(9 + h.len);
                    f.advance(9);
                    return Some((h, f.freeze()));
                }
            }
            let read =
                tokio::time::timeout(Duration::from_secs(5), self.io.read_buf(&mut self.buf));
            match read.await.expect("the server answers within 5 s") {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next frame of `kind`, skipping the others.
    async fn until(&mut self, kind: u8) -> Option<(Head, Bytes)> {
        loop {
            let (h, p) = self.next().await?;
            if h.kind == kind {
                return Some((h, p));
            }
        }
    }

    /// The response on stream `id`: status, fields, body.
    async fn response(&mut self, id: u32) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut status = 0;
        let mut fields = Vec::new();
        let mut body = Vec::new();
        loop {
            let (h, p) = self.next().await.expect("a response");
            if h.stream != id {
                continue;
            }
            match h.kind {
                frame::HEADERS => {
                    self.dec
                        .decode(&p, |n, v, _| {
                            let v = String::from_utf8(v.as_bytes().to_vec()).unwrap();
                            match n {
                                Name::Pseudo(Pseudo::Status) => status = v.parse().unwrap(),
                                Name::Field(n) => fields.push((n.to_string(), v)),
                                _ => panic!("unexpected field in a response"),
                            }
                        })
                        .unwrap();
                }
                frame::DATA => body.extend_from_slice(&p),
                frame::RST_STREAM => panic!("stream {id} reset: {:?}", &p[..]),
                _ => continue,
            }
            if h.flags & frame::END_STREAM != 0 && status >= 200 {
                return (status, fields, body);
            }
        }
    }

    /// The error code of the stream's RST_STREAM.
    async fn reset(&mut self, id: u32) -> Reason {
        loop {
            let (h, p) = self.until(frame::RST_STREAM).await.expect("a reset");
            if h.stream == id {
                return Reason(u32::from_be_bytes(p[..4].try_into().unwrap()));
            }
        }
    }

    /// The error code of the server's GOAWAY.
    async fn goaway(&mut self) -> Reason {
        let (_, p) = self.until(frame::GOAWAY).await.expect("a GOAWAY");
        Reason(u32::from_be_bytes(p[4..8].try_into().unwrap()))
    }
}

/// A server on one end of a pipe, answering with `handler`; the handler
/// calls are counted.
fn start<H>(
    set: Settings,
    mut handler: H,
) -> (
    DuplexStream,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<Result<(), Error>>,
)
where
    H: FnMut(Request<H2Body>) -> Fut + Send + 'static,
{
    let (client, server) = tokio::io::duplex(1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let task = tokio::spawn(async move {
        let h = move |r| {
            c.fetch_add(1, Ordering::Relaxed);
            handler(r)
        };
        serve(
            server,
            &set,
            std::future::pending(),
            std::future::pending(),
            h,
        )
        .await
    });
    (client, calls, task)
}

fn hello(req: Request<H2Body>) -> Fut {
    Box::pin(async move {
        let mut r = Response::new(Full::new(Bytes::from(format!(
            "{} {}",
            req.method(),
            req.uri()
        ))));
        let h = r.headers_mut();
        h.insert("connection", HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        r
    })
}

/// A request path that never answers.
fn never(_req: Request<H2Body>) -> Fut {
    Box::pin(async move {
        std::future::pending::<()>().await;
        Response::new(Full::new(Bytes::new()))
    })
}

#[tokio::test]
async fn a_get_is_answered_without_connection_fields() {
    let (io, calls, _t) = start(Settings::default(), hello);
    let mut c = Raw::new(io).await;
    // The server's SETTINGS come first.
    let (h, p) = c.next().await.unwrap();
    assert_eq!((h.kind, h.flags), (frame::SETTINGS, 0));
    assert_eq!(p.len(), 18);
    c.get(1, "/a?b=c", &[("cookie", "a=1"), ("cookie", "b=2")])
        .await;
    let (status, fields, body) = c.response(1).await;
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "GET http://example.test/a?b=c"
    );
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["x-kept", "content-length", "date"], "{fields:?}");
    assert_eq!(fields[2].1.len(), 29);
    // The second request's fields come from the dynamic table, and the
    // same answer again is all indexed.
    c.get(3, "/a?b=c", &[]).await;
    let (status, fields2, _) = c.response(3).await;
    assert_eq!(status, 200);
    assert_eq!(fields2.len(), 3);
    assert_eq!(calls.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn cookies_are_joined_and_authority_is_the_uri() {
    let (io, _, _t) = start(Settings::default(), |req: Request<H2Body>| {
        Box::pin(async move {
            let cookies: Vec<_> = req.headers().get_all("cookie").iter().collect();
            let text = format!(
                "{}|{}|{}",
                cookies.len(),
                cookies[0].to_str().unwrap(),
                req.uri().authority().unwrap()
            );
            Response::new(Full::new(Bytes::from(text)))
        }) as Fut
    });
    let mut c = Raw::new(io).await;
    c.get(1, "/", &[("cookie", "a=1"), ("cookie", "b=2")]).await;
    let (_, _, body) = c.response(1).await;
    assert_eq!(String::from_utf8(body).unwrap(), "1|a=1; b=2|example.test");
}

#[tokio::test]
async fn malformed_requests_are_reset_and_never_reach_the_handler() {
    let (io, calls, _t) = start(Settings::default(), hello);
    let mut c = Raw::new(io).await;
    let cases: Vec<Vec<u8>> = vec![
        get_block("/", &[("X-Upper", "1")]),
        get_block("/", &[("connection", "keep-alive")]),
        get_block("/", &[("transfer-encoding", "chunked")]),
        get_block("/", &[("te", "gzip")]),
        get_block("/", &[(":method", "POST")]),
        get_block("/", &[(":status", "200")]),
        get_block("/", &[(":foo", "bar")]),
        get_block("/", &[("x", "a\rb")]),
        get_block("", &[]),
        {
            let mut b = get_block("/", &[("accept", "*/*")]);
            lit(&mut b, ":path", "/late");
            b
        },
        {
            let mut b = Vec::new();
            lit(&mut b, ":method", "GET");
            lit(&mut b, ":authority", "example.test");
            b
        },
        get_block("/", &[("content-length", "5")]),
        get_block("/", &[("content-length", "x")]),
        get_block("?q", &[]),
        get_block("*", &[]),
        get_block("/", &[("host", "other.test")]),
        get_block("/", &[("x", " padded")]),
        {
            let mut b = Vec::new();
            lit(&mut b, ":method", "GET");
            lit(&mut b, ":scheme", "http");
            lit(&mut b, ":authority", "user@example.test");
            lit(&mut b, ":path", "/");
            b
        },
    ];
    let mut id = 1;
    for block in &cases {
        c.send(
            frame::HEADERS,
            frame::END_HEADERS | frame::END_STREAM,
            id,
            block,
        )
        .await;
        assert_eq!(c.reset(id).await, Reason::PROTOCOL_ERROR, "case {}", id / 2);
        id += 2;
    }
    // A body shorter than its content-length.
    let mut b = get_block("/", &[("content-length", "10")]);
    b.clear();
    lit(&mut b, ":method", "POST");
    lit(&mut b, ":scheme", "http");
    lit(&mut b, ":path", "/");
    lit(&mut b, "content-length", "10");
    c.send(frame::HEADERS, frame::END_HEADERS, id, &b).await;
    c.send(frame::DATA, frame::END_STREAM, id, b"short").await;
    assert_eq!(c.reset(id).await, Reason::PROTOCOL_ERROR);
    // The connection is still good; only the last request was handled
    // (it had a valid head: its body was wrong).
    c.get(id + 2, "/ok", &[]).await;
    assert_eq!(c.response(id + 2).await.0, 200);
    assert_eq!(calls.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_header_list_over_the_limit_gets_431() {
    let set = Settings {
        max_header_list: 1000,
        ..Default::default()
    };
    let (io, calls, _t) = start(set, hello);
    let mut c = Raw::new(io).await;
    let big = "v".repeat(120);
    let fields: Vec<(&str, &str)> = (0..10).map(|_| ("x-big", big.as_str())).collect();
    c.get(1, "/", &fields).await;
    assert_eq!(c.response(1).await.0, 431);
    c.get(3, "/", &fields[..2]).await;
    assert_eq!(c.response(3).await.0, 200);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_header_block_in_continuation_frames_is_read_whole() {
    let (io, _, _t) = start(Settings::default(), hello);
    let mut c = Raw::new(io).await;
    let b = get_block("/split", &[("x-a", "1")]);
    let (a, rest) = b.split_at(10);
    let (m, z) = rest.split_at(7);
    c.send(frame::HEADERS, frame::END_STREAM, 1, a).await;
    c.send(frame::CONTINUATION, 0, 1, m).await;
    c.send(frame::CONTINUATION, frame::END_HEADERS, 1, z).await;
    let (_, _, body) = c.response(1).await;
    assert_eq!(body, b"GET http://example.test/split");
    // Another frame in the middle of a block ends the connection.
    c.send(frame::HEADERS, frame::END_STREAM, 3, a).await;
    c.send(frame::PING, 0, 0, &[0; 8]).await;
    assert_eq!(c.goaway().await, Reason::PROTOCOL_ERROR);
}

#[tokio::test]
async fn pings_and_settings_are_acknowledged() {
    let (io, _, _t) = start(Settings::default(), hello);
    let mut c = Raw::new(io).await;
    let (h, _) = c.until(frame::SETTINGS).await.unwrap();
    assert_eq!(h.flags, 0);
    let (h, p) = c.until(frame::SETTINGS).await.unwrap();
    assert_eq!(
        (h.flags, p.len()),
        (frame::ACK, 0),
        "our empty SETTINGS acknowledged"
    );
    c.send(frame::PING, 0, 0, b"12345678").await;
    let (h, p) = c.until(frame::PING).await.unwrap();
    assert_eq!((h.flags, &p[..]), (frame::ACK, &b"12345678"[..]));
}

/// Each broken frame ends the connection with its error code.
#[tokio::test]
async fn connection_errors_end_with_goaway_and_their_code() {
    /// (type, flags, stream, payload)
    type Frames = Vec<(u8, u8, u32, Vec<u8>)>;
    let cases: Vec<(&str, Frames, Reason)> = vec![
        (
            "DATA on stream 0",
            vec![(frame::DATA, 0, 0, b"x".to_vec())],
            Reason::PROTOCOL_ERROR,
        ),
        (
            "DATA on an idle stream",
            vec![(frame::DATA, 0, 5, b"x".to_vec())],
            Reason::PROTOCOL_ERROR,
        ),
        (
            "DATA on an even stream",
            vec![
                // Malformed (reset, no handler), but it moves the last id.
                (frame::HEADERS, 5, 3, get_block("/", &[("X-Bad", "1")])),
                (frame::DATA, 0, 2, b"x".to_vec()),
            ],
            Reason::PROTOCOL_ERROR,
        ),
        (
            "even stream",
            vec![(frame::HEADERS, 5, 2, get_block("/", &[]))],
            Reason::PROTOCOL_ERROR,
        ),
        (
            "PING size",
            vec![(frame::PING, 0, 0, vec![0; 7])],
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "SETTINGS size",
            vec![(frame::SETTINGS, 0, 0, vec![0; 5])],
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "window past 2^31-1",
            vec![(
                frame::WINDOW_UPDATE,
                0,
                0,
                0x7fff_ffffu32.to_be_bytes().to_vec(),
            )],
            Reason::FLOW_CONTROL_ERROR,
        ),
        (
            "WINDOW_UPDATE 0",
            vec![(frame::WINDOW_UPDATE, 0, 0, vec![0; 4])],
            Reason::PROTOCOL_ERROR,
        ),
        (
            "PUSH_PROMISE",
            vec![(frame::PUSH_PROMISE, 4, 1, vec![0; 4])],
            Reason::PROTOCOL_ERROR,
        ),
        (
            "bad HPACK",
            vec![(frame::HEADERS, 5, 1, vec![0x80])],
            Reason::COMPRESSION_ERROR,
        ),
        (
            "CONTINUATION alone",
            vec![(frame::CONTINUATION, 4, 1, vec![0x82])],
            Reason::PROTOCOL_ERROR,
        ),
        (
            "frame over 16 KiB",
            vec![(frame::DATA, 0, 1, vec![0; frame::OUR_MAX_FRAME + 1])],
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "MAX_FRAME_SIZE too small",
            vec![(frame::SETTINGS, 0, 0, [0, 5, 0, 0, 0x10, 0].to_vec())],
            Reason::PROTOCOL_ERROR,
        ),
        (
            "padding past the end",
            vec![(frame::HEADERS, frame::PADDED | 5, 1, vec![9, 0x82])],
            Reason::PROTOCOL_ERROR,
        ),
    ];
    for (what, frames, code) in cases {
        let (io, calls, task) = start(Settings::default(), hello);
        let mut c = Raw::new(io).await;
        for (k, f, id, p) in frames {
            c.send(k, f, id, &p).await;
        }
        assert_eq!(c.goaway().await, code, "{what}");
        let ended = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(
            matches!(ended, Ok(Ok(Err(Error::Protocol(..))))),
            "{what}: {ended:?}"
        );
        assert_eq!(calls.load(Ordering::Relaxed), 0, "{what}");
    }
}

#[tokio::test]
async fn a_bad_preface_or_a_first_frame_other_than_settings_is_refused() {
    let (mut io, _, task) = start(Settings::default(), hello);
    io.write_all(b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    assert!(matches!(
        task.await,
        Ok(Err(Error::Protocol(Reason::PROTOCOL_ERROR, _)))
    ));
    let (mut io, _, task) = start(Settings::default(), hello);
    io.write_all(frame::PREFACE).await.unwrap();
    let mut b = Vec::new();
    frame::head(&mut b, 8, frame::PING, 0, 0);
    b.extend_from_slice(&[0; 8]);
    io.write_all(&b).await.unwrap();
    assert!(matches!(
        task.await,
        Ok(Err(Error::Protocol(Reason::PROTOCOL_ERROR, _)))
    ));
}

#[tokio::test]
async fn a_client_past_its_window_is_a_flow_control_error() {
    let set = Settings {
        stream_window: 65_535,
        conn_window: 65_535,
        ..Default::default()
    };
    let (io, _, _t) = start(set, |req: Request<H2Body>| {
        Box::pin(async move {
            // Never reads the body.
            std::future::pending::<()>().await;
            drop(req);
            Response::new(Full::new(Bytes::new()))
        }) as Fut
    });
    let mut c = Raw::new(io).await;
    let mut b = Vec::new();
    lit(&mut b, ":method", "POST");
    lit(&mut b, ":scheme", "http");
    lit(&mut b, ":path", "/");
    c.send(frame::HEADERS, frame::END_HEADERS, 1, &b).await;
    let chunk = vec![7u8; 16_384];
    for _ in 0..4 {
        c.send(frame::DATA, 0, 1, &chunk).await;
    }
    c.send(frame::DATA, 0, 1, &[7u8; 100]).await;
    assert_eq!(c.goaway().await, Reason::FLOW_CONTROL_ERROR);
}

#[tokio::test]
async fn a_request_body_is_delivered_and_its_window_given_back() {
    let (io, _, _t) = start(Settings::default(), |req: Request<H2Body>| {
        Box::pin(async move {
            let hint = req.body().size_hint().exact();
            let body = req.into_body().collect().await.unwrap();
            let trailers = body.trailers().cloned();
            let data = body.to_bytes();
            let text = format!(
                "{:?} {} {}",
                hint,
                data.len(),
                trailers.map_or("none".into(), |t| t["x-sum"].to_str().unwrap().to_string())
            );
            Response::new(Full::new(Bytes::from(text)))
        }) as Fut
    });
    let mut c = Raw::new(io).await;
    let mut b = Vec::new();
    lit(&mut b, ":method", "POST");
    lit(&mut b, ":scheme", "http");
    lit(&mut b, ":path", "/");
    lit(&mut b, "content-length", "700000");
    c.send(frame::HEADERS, frame::END_HEADERS, 1, &b).await;
    let chunk = vec![1u8; 10_000];
    for _ in 0..70 {
        c.send(frame::DATA, 0, 1, &chunk).await;
    }
    let mut t = Vec::new();
    lit(&mut t, "x-sum", "42");
    c.send(
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        1,
        &t,
    )
    .await;
    let mut updates = 0u64;
    let mut body = Vec::new();
    loop {
        let (h, p) = c.next().await.unwrap();
        if h.kind == frame::WINDOW_UPDATE && h.stream == 1 {
            updates += u64::from(u32::from_be_bytes(p[..4].try_into().unwrap()));
        }
        if h.kind == frame::DATA && h.stream == 1 {
            body.extend_from_slice(&p);
            if h.flags & frame::END_STREAM != 0 {
                break;
            }
        }
    }
    assert_eq!(String::from_utf8(body).unwrap(), "Some(700000) 700000 42");
    // Half the window (512 KiB) came back on the stream while it was read.
    assert!(updates >= 512 * 1024, "{updates}");
}

#[tokio::test]
async fn a_response_waits_for_the_window_the_client_gives() {
    let (io, _, _t) = start(Settings::default(), |_req: Request<H2Body>| {
        Box::pin(async move { Response::new(Full::new(Bytes::from(vec![b'z'; 100]))) }) as Fut
    });
    let mut c = Raw::new(io).await;
    // Stream windows of 10 bytes.
    c.send(frame::SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 10]).await;
    c.get(1, "/", &[]).await;
    let (h, p) = c.until(frame::DATA).await.unwrap();
    assert_eq!((h.stream, p.len(), h.flags), (1, 10, 0));
    // Nothing more until the window grows.
    c.send(frame::PING, 0, 0, b"barrier!").await;
    let (h, _) = c.next().await.unwrap();
    assert_eq!(h.kind, frame::PING, "no DATA past the window");
    c.send(frame::WINDOW_UPDATE, 0, 1, &90u32.to_be_bytes())
        .await;
    let mut got = 10;
    while got < 100 {
        let (h, p) = c.until(frame::DATA).await.unwrap();
        got += p.len();
        assert_eq!(h.flags & frame::END_STREAM != 0, got == 100);
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_given_no_window_is_reset_after_the_idle_timeout() {
    let set = Settings {
        idle_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let (io, _, _t) = start(set, |_req: Request<H2Body>| {
        Box::pin(async move { Response::new(Full::new(Bytes::from(vec![b'z'; 100]))) }) as Fut
    });
    let mut c = Raw::new(io).await;
    c.send(frame::SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]).await;
    c.get(1, "/", &[]).await;
    let before = Instant::now();
    assert_eq!(c.reset(1).await, Reason::CANCEL);
    assert!(before.elapsed() >= Duration::from_secs(3));
    // The connection is idle now and closes by its own clock.
    assert_eq!(c.goaway().await, Reason::NO_ERROR);
}

/// The resets a client provokes count as its own ("MadeYouReset"):
/// DATA on a stream it already ended is answered with a reset that
/// drops the request path.
#[tokio::test]
async fn provoked_resets_count_against_the_budget_too() {
    let (io, calls, _t) = start(Settings::default(), never);
    let mut c = Raw::new(io).await;
    let mut id = 1;
    let code = loop {
        c.get(id, "/", &[]).await;
        c.send(frame::DATA, 0, id, b"x").await;
        id += 2;
        if id > 2 * (RESET_BUDGET + 10) {
            break c.goaway().await;
        }
    };
    assert_eq!(code, Reason::ENHANCE_YOUR_CALM);
    assert!(calls.load(Ordering::Relaxed) <= RESET_BUDGET as usize + 1);
}

#[tokio::test]
async fn a_reset_by_the_client_is_not_answered_with_a_reset() {
    let (io, _, _t) = start(Settings::default(), never);
    let mut c = Raw::new(io).await;
    let mut b = Vec::new();
    lit(&mut b, ":method", "POST");
    lit(&mut b, ":scheme", "http");
    lit(&mut b, ":path", "/");
    c.send(frame::HEADERS, frame::END_HEADERS, 1, &b).await;
    c.send(frame::RST_STREAM, 0, 1, &Reason::CANCEL.0.to_be_bytes())
        .await;
    c.send(frame::PING, 0, 0, b"after-it").await;
    loop {
        let (h, p) = c.next().await.unwrap();
        assert_ne!(h.kind, frame::RST_STREAM, "answered a reset with a reset");
        if h.kind == frame::PING && &p[..] == b"after-it" {
            break;
        }
    }
}

#[tokio::test]
async fn padding_comes_back_to_the_stream_window() {
    let set = Settings {
        stream_window: 65_535,
        ..Default::default()
    };
    let (io, _, _t) = start(set, |req: Request<H2Body>| {
        Box::pin(async move {
            let n = req.into_body().collect().await.unwrap().to_bytes().len();
            Response::new(Full::new(Bytes::from(n.to_string())))
        }) as Fut
    });
    let mut c = Raw::new(io).await;
    let mut b = Vec::new();
    lit(&mut b, ":method", "POST");
    lit(&mut b, ":scheme", "http");
    lit(&mut b, ":path", "/");
    c.send(frame::HEADERS, frame::END_HEADERS, 1, &b).await;
    // One byte of data and 254 of padding per frame: 51 200 bytes of
    // window for 200 bytes of body.
    let mut f = vec![254u8, b'd'];
    f.extend_from_slice(&[0; 254]);
    for _ in 0..200 {
        c.send(frame::DATA, frame::PADDED, 1, &f).await;
    }
    let mut back = 0;
    while back < 32_768 {
        let (h, p) = c.until(frame::WINDOW_UPDATE).await.unwrap();
        if h.stream == 1 {
            back += u32::from_be_bytes(p[..4].try_into().unwrap());
        }
    }
    c.send(frame::DATA, frame::END_STREAM, 1, b"!").await;
    let (_, _, body) = c.response(1).await;
    assert_eq!(body, b"201");
}

#[tokio::test]
async fn streams_reset_faster_than_they_finish_end_the_connection() {
    let (io, calls, _t) = start(Settings::default(), never);
    let mut c = Raw::new(io).await;
    let mut id = 1;
    let code = loop {
        c.get(id, "/", &[]).await;
        c.send(frame::RST_STREAM, 0, id, &Reason::CANCEL.0.to_be_bytes())
            .await;
        id += 2;
        if id > 2 * (RESET_BUDGET + 10) {
            break c.goaway().await;
        }
    };
    assert_eq!(code, Reason::ENHANCE_YOUR_CALM);
    assert!(calls.load(Ordering::Relaxed) <= RESET_BUDGET as usize + 1);
}

#[tokio::test]
async fn streams_over_the_limit_are_refused() {
    let set = Settings {
        max_concurrent_streams: 2,
        ..Default::default()
    };
    let (io, calls, _t) = start(set, never);
    let mut c = Raw::new(io).await;
    for id in [1, 3, 5] {
        c.get(id, "/", &[]).await;
    }
    assert_eq!(c.reset(5).await, Reason::REFUSED_STREAM);
    assert_eq!(calls.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_graceful_stop_finishes_open_streams_and_ignores_new_ones() {
    let (client, server) = tokio::io::duplex(1 << 20);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = Arc::clone(&gate);
    let task = tokio::spawn(async move {
        let h = move |_req: Request<H2Body>| {
            let g = Arc::clone(&g);
            Box::pin(async move {
                let _ = g.acquire().await;
                Response::new(Full::new(Bytes::from_static(b"done")))
            }) as Fut
        };
        let stop = async {
            let _ = rx.await;
        };
        serve(
            server,
            &Settings::default(),
            stop,
            std::future::pending(),
            h,
        )
        .await
    });
    let mut c = Raw::new(client).await;
    c.get(1, "/", &[]).await;
    c.send(frame::PING, 0, 0, b"sync____").await;
    c.until(frame::PING).await.unwrap();
    tx.send(()).unwrap();
    // First GOAWAY: the largest id (nothing refused yet), and a PING.
    let (_, p) = c.until(frame::GOAWAY).await.unwrap();
    assert_eq!(u32::from_be_bytes(p[..4].try_into().unwrap()), 0x7fff_ffff);
    let (h, ping) = c.until(frame::PING).await.unwrap();
    assert_eq!(h.flags & frame::ACK, 0);
    // A stream the client opened before it saw the GOAWAY is served.
    c.get(3, "/", &[]).await;
    c.send(frame::PING, frame::ACK, 0, &ping).await;
    // At the PING's answer: the final GOAWAY names the last stream taken.
    let (_, p) = c.until(frame::GOAWAY).await.unwrap();
    assert_eq!(
        u32::from_be_bytes(p[..4].try_into().unwrap()),
        3,
        "last stream id"
    );
    // A stream after it is ignored.
    c.get(5, "/", &[]).await;
    gate.add_permits(2);
    let (status, _, body) = c.response(1).await;
    assert_eq!((status, &body[..]), (200, &b"done"[..]));
    let (status, _, body) = c.response(3).await;
    assert_eq!((status, &body[..]), (200, &b"done"[..]));
    assert!(matches!(task.await, Ok(Ok(()))));
}

#[tokio::test]
async fn a_body_left_unread_gives_the_connection_window_back() {
    let set = Settings {
        stream_window: 65_535,
        conn_window: 65_535,
        ..Default::default()
    };
    let (io, _, _t) = start(set, |req: Request<H2Body>| {
        Box::pin(async move {
            let drop_it = req.uri().path() == "/drop";
            let body = req.into_body();
            if drop_it {
                // Leaves the body unread and never answers.
                drop(body);
                std::future::pending::<()>().await;
                unreachable!();
            }
            let n = body.collect().await.unwrap().to_bytes().len();
            Response::new(Full::new(Bytes::from(n.to_string())))
        }) as Fut
    });
    let mut c = Raw::new(io).await;
    let post = |path: &str| {
        let mut b = Vec::new();
        lit(&mut b, ":method", "POST");
        lit(&mut b, ":scheme", "http");
        lit(&mut b, ":path", path);
        b
    };
    c.send(frame::HEADERS, frame::END_HEADERS, 1, &post("/drop"))
        .await;
    for _ in 0..4 {
        c.send(frame::DATA, 0, 1, &[1u8; 15_000]).await;
    }
    // The 60 000 bytes nobody reads come back to the connection (in
    // updates of at least half its window)...
    let mut back = 0;
    while back < 32_768 {
        let (h, p) = c.until(frame::WINDOW_UPDATE).await.unwrap();
        if h.stream == 0 {
            back += u32::from_be_bytes(p[..4].try_into().unwrap());
        }
    }
    // ...so another stream can upload what the window now allows.
    let window = 65_535 - 60_000 + back as usize;
    c.send(frame::HEADERS, frame::END_HEADERS, 3, &post("/read"))
        .await;
    let mut left = window;
    while left > 0 {
        let n = left.min(16_384);
        left -= n;
        let end = if left == 0 { frame::END_STREAM } else { 0 };
        c.send(frame::DATA, end, 3, &vec![2u8; n]).await;
    }
    let (status, _, body) = c.response(3).await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(body).unwrap(), window.to_string());
}

#[tokio::test]
async fn a_panicking_request_path_resets_only_its_stream() {
    let (io, _, _t) = start(Settings::default(), |req: Request<H2Body>| {
        Box::pin(async move {
            if req.uri().path() == "/boom" {
                panic!("a bug in one request path (this panic is the test)");
            }
            Response::new(Full::new(Bytes::from_static(b"fine")))
        }) as Fut
    });
    let mut c = Raw::new(io).await;
    c.get(1, "/boom", &[]).await;
    assert_eq!(c.reset(1).await, Reason::INTERNAL_ERROR);
    c.get(3, "/ok", &[]).await;
    let (status, _, body) = c.response(3).await;
    assert_eq!((status, &body[..]), (200, &b"fine"[..]));
}

/// A POST head (body to follow) on the wire.
fn post_block(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    lit(&mut b, ":method", "POST");
    lit(&mut b, ":scheme", "http");
    lit(&mut b, ":authority", "example.test");
    lit(&mut b, ":path", "/up");
    for (n, v) in extra {
        lit(&mut b, n, v);
    }
    b
}

#[tokio::test]
async fn connect_gets_405_and_never_reaches_the_handler() {
    let (io, calls, _t) = start(Settings::default(), hello);
    let mut c = Raw::new(io).await;
    let mut b = Vec::new();
    lit(&mut b, ":method", "CONNECT");
    lit(&mut b, ":authority", "127.0.0.2:22");
    // With a tunnel's first bytes still to come.
    c.send(frame::HEADERS, frame::END_HEADERS, 1, &b).await;
    let (status, _, body) = c.response(1).await;
    assert_eq!(status, 405);
    assert!(body.is_empty());
    // The client is told to stop sending; what it sent meanwhile is
    // ignored, and the connection goes on.
    assert_eq!(c.reset(1).await, Reason::NO_ERROR);
    c.send(frame::DATA, 0, 1, b"SSH-2.0-x\r\n").await;
    c.get(3, "/ok", &[]).await;
    assert_eq!(c.response(3).await.0, 200);
    assert_eq!(calls.load(Ordering::Relaxed), 1, "only /ok was handled");
}

#[tokio::test]
async fn content_lengths_that_differ_are_malformed_in_either_order() {
    let (io, calls, _t) = start(Settings::default(), hello);
    let mut c = Raw::new(io).await;
    for (id, pair) in [(1, ["5", "6"]), (3, ["6", "5"]), (5, ["5", "+5"])] {
        let b = post_block(&[("content-length", pair[0]), ("content-length", pair[1])]);
        c.send(frame::HEADERS, frame::END_HEADERS, id, &b).await;
        assert_eq!(c.reset(id).await, Reason::PROTOCOL_ERROR, "{pair:?}");
    }
    // The same length twice is one length.
    let b = post_block(&[("content-length", "5"), ("content-length", "5")]);
    c.send(frame::HEADERS, frame::END_HEADERS, 7, &b).await;
    c.send(frame::DATA, frame::END_STREAM, 7, b"hello").await;
    assert_eq!(c.response(7).await.0, 200);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn data_or_headers_on_a_closed_stream_is_a_connection_error() {
    // After both ends closed the stream (RFC 9113 §5.1, h2spec 5.1 #11).
    let (io, _, _t) = start(Settings::default(), hello);
    let mut c = Raw::new(io).await;
    c.get(1, "/", &[]).await;
    assert_eq!(c.response(1).await.0, 200);
    c.send(frame::DATA, frame::END_STREAM, 1, b"late").await;
    assert_eq!(c.goaway().await, Reason::STREAM_CLOSED);
    assert!(c.next().await.is_none(), "the connection closes");
    // HEADERS after the client's own reset (h2spec 5.1 #9).
    let (io, _, _t) = start(Settings::default(), never);
    let mut c = Raw::new(io).await;
    c.send(frame::HEADERS, frame::END_HEADERS, 1, &post_block(&[]))
        .await;
    c.send(frame::RST_STREAM, 0, 1, &Reason::CANCEL.0.to_be_bytes())
        .await;
    c.get(1, "/", &[]).await;
    assert_eq!(c.goaway().await, Reason::STREAM_CLOSED);
}

#[tokio::test]
async fn frames_after_our_own_reset_are_ignored() {
    // The client may have sent them before it saw the reset.
    let set = Settings {
        max_header_list: 1000,
        ..Default::default()
    };
    let (io, _, _t) = start(set, hello);
    let mut c = Raw::new(io).await;
    let big = "v".repeat(120);
    let fields: Vec<(&str, &str)> = (0..10).map(|_| ("x-big", big.as_str())).collect();
    c.send(frame::HEADERS, frame::END_HEADERS, 1, &post_block(&fields))
        .await;
    assert_eq!(c.response(1).await.0, 431);
    assert_eq!(c.reset(1).await, Reason::NO_ERROR);
    c.send(frame::DATA, frame::END_STREAM, 1, b"body").await;
    c.get(3, "/", &[]).await;
    assert_eq!(c.response(3).await.0, 200, "the connection goes on");
}

#[tokio::test]
async fn a_stream_id_lower_than_the_last_is_a_protocol_error() {
    let (io, _, _t) = start(Settings::default(), never);
    let mut c = Raw::new(io).await;
    c.get(5, "/", &[]).await;
    c.get(3, "/", &[]).await;
    assert_eq!(c.goaway().await, Reason::PROTOCOL_ERROR);
}

#[tokio::test]
async fn a_stream_that_depends_on_itself_is_reset() {
    let (io, calls, _t) = start(Settings::default(), never);
    let mut c = Raw::new(io).await;
    // HEADERS with a priority naming its own stream.
    let mut p = 1u32.to_be_bytes().to_vec();
    p.push(15);
    p.extend_from_slice(&get_block("/", &[]));
    c.send(
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM | frame::PRIORITY_FLAG,
        1,
        &p,
    )
    .await;
    assert_eq!(c.reset(1).await, Reason::PROTOCOL_ERROR);
    // PRIORITY on an open stream naming itself.
    c.get(3, "/", &[]).await;
    let mut p = 3u32.to_be_bytes().to_vec();
    p.push(15);
    c.send(frame::PRIORITY, 0, 3, &p).await;
    assert_eq!(c.reset(3).await, Reason::PROTOCOL_ERROR);
    assert_eq!(
        calls.load(Ordering::Relaxed),
        1,
        "stream 1 never reached it"
    );
    // On a stream not open: the connection's error.
    let mut p = 9u32.to_be_bytes().to_vec();
    p.push(15);
    c.send(frame::PRIORITY, 0, 9, &p).await;
    assert_eq!(c.goaway().await, Reason::PROTOCOL_ERROR);
}

/// A finished request path's box is used again for later streams (in
/// place) while the connection has streams open: every stream still gets
/// its own answer, one after another and several at once.
#[tokio::test]
async fn later_streams_get_their_own_answers_in_reused_boxes() {
    // Stream 1 stays open (its request path never answers), so the
    // finished streams' boxes are kept for the next ones.
    let handler = |req: Request<H2Body>| {
        if req.uri().path() == "/hold" {
            never(req)
        } else {
            hello(req)
        }
    };
    let (io, calls, _t) = start(Settings::default(), handler);
    let mut c = Raw::new(io).await;
    c.next().await.unwrap();
    c.get(1, "/hold", &[]).await;
    for i in 0..6u32 {
        let id = 3 + 2 * i;
        c.get(id, &format!("/one/{i}"), &[]).await;
        let (status, _, body) = c.response(id).await;
        assert_eq!(status, 200);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            format!("GET http://example.test/one/{i}")
        );
    }
    for i in 0..4u32 {
        c.get(15 + 2 * i, &format!("/many/{i}"), &[]).await;
    }
    for i in 0..4u32 {
        let (status, _, body) = c.response(15 + 2 * i).await;
        assert_eq!(status, 200);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            format!("GET http://example.test/many/{i}")
        );
    }
    assert_eq!(calls.load(Ordering::Relaxed), 11);
}

#[tokio::test]
async fn an_idle_connection_holds_no_read_buffer() {
    let (client, server) = tokio::io::duplex(1 << 20);
    let mut conn = conn::Conn::new(server, &Settings::default(), hello);
    let mut c = Raw::new(client).await;
    c.get(1, "/", &[]).await;
    // The connection runs until the client has its answer.
    tokio::select! {
        (status, _, _) = c.response(1) => assert_eq!(status, 200),
        r = std::future::poll_fn(|cx| conn.poll(cx)) => panic!("the connection ended: {r:?}"),
    }
    // Then it waits for the next frame without a buffer.
    let idle = std::future::poll_fn(|cx| Poll::Ready(conn.poll(cx).is_pending())).await;
    assert!(idle);
    assert_eq!(
        conn.rbuf.capacity(),
        0,
        "an idle connection holds its read buffer"
    );
    assert_eq!(
        conn.out.buf.capacity(),
        0,
        "an idle connection holds its output buffer"
    );
    // And reads the next request when it comes.
    c.get(3, "/b", &[]).await;
    tokio::select! {
        (status, _, body) = c.response(3) => {
            assert_eq!(status, 200);
            assert_eq!(String::from_utf8(body).unwrap(), "GET http://example.test/b");
        }
        r = std::future::poll_fn(|cx| conn.poll(cx)) => panic!("the connection ended: {r:?}"),
    }
}

#[tokio::test]
async fn frames_that_came_while_the_output_was_backed_up_are_read_once_it_drains() {
    let (client, server) = tokio::io::duplex(1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = Arc::clone(&calls);
    let mut conn = conn::Conn::new(server, &Settings::default(), move |r| {
        c2.fetch_add(1, Ordering::Relaxed);
        hello(r)
    });
    let mut c = Raw::new(client).await;
    c.get(1, "/", &[]).await;
    tokio::select! {
        (status, _, _) = c.response(1) => assert_eq!(status, 200),
        r = std::future::poll_fn(|cx| conn.poll(cx)) => panic!("the connection ended: {r:?}"),
    }
    // The output backed up past its mark (as after a burst of answers the
    // client had not read yet): PINGs, which the client may take.
    while !conn.out.full() {
        frame::head(&mut conn.out.buf, 8, frame::PING, 0, 0);
        conn.out.buf.extend_from_slice(&[0; 8]);
    }
    // A request comes meanwhile; the connection, woken to write, skips
    // reading, drains its output at once and must then read it.
    c.get(3, "/b", &[]).await;
    let _ = std::future::poll_fn(|cx| Poll::Ready(conn.poll(cx))).await;
    assert_eq!(calls.load(Ordering::Relaxed), 2, "the request was not read");
}
