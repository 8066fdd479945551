//! The fuzz targets' bodies: every parser that sees untrusted bytes, on
//! the path convoy uses. `fuzz/` runs them under libFuzzer (cargo-fuzz);
//! `tests/replay.rs` replays the saved corpus in the normal test suite.
//! Each target also checks invariants, not just "no panic".
#![forbid(unsafe_code)]

use std::sync::OnceLock;

/// A listener config with routes of every kind, for `http_request`.
fn routes() -> &'static convoy_config::compiled::RouteTable {
    static L: OnceLock<convoy_config::compiled::RouteTable> = OnceLock::new();
    L.get_or_init(|| {
        let text = r#"
[[listeners]]
protocol = "http"
address = "127.0.0.1:1"
pool = "web"
max_body = 4096
[[listeners.routes]]
name = "host"
host = "a.example"
[[listeners.routes]]
name = "api"
path_prefix = "/api/"
method = "POST"
header = "X-Tier: gold"
priority = 1
cost = 3
[[listeners.routes]]
name = "exact"
path = "/exact"
[[listeners.routes]]
name = "cookie"
cookie = "session=gold"
priority = 2
[[listeners.routes]]
name = "net"
client = "192.0.2.0/24"
cost = 2
[pools.web]
[[pools.web.servers]]
address = "127.0.0.1:2"
"#;
        let l = convoy_config::Config::parse("fuzz", text)
            .expect("the fuzz config is valid")
            .listeners
            .remove(0);
        convoy_config::compiled::RouteTable::compile(&l)
    })
}

/// Bytes from a client, on the path convoy's HTTP/1 listeners use: request
/// heads parsed by convoy's own codec one after the other (pipelining),
/// each body taken by its framing (length, or chunked through the chunked
/// decoder), every request routed and its fields rewritten. Checks: a
/// parsed head took bytes off the buffer; no field value convoy passes on
/// holds CR, LF or NUL; an ambiguous framing (Content-Length with
/// Transfer-Encoding) is never accepted; the forwarding lines are
/// well-formed; a decoded chunked body is never longer than its input.
pub fn http_request(data: &[u8]) {
    use convoy_http::h1::parse::{self, ChunkedDecoder, Decoded, Framing};
    let mut buf = bytes::BytesMut::from(data);
    let info =
        convoy_http::headers::ClientInfo::new("192.0.2.1:4000".parse().expect("addr"), "http");
    for _ in 0..64 {
        let before = buf.len();
        let head = match parse::parse_request(&mut buf, parse::Limits::default()) {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => return,
        };
        assert!(buf.len() < before, "a head takes bytes");
        let parse::RequestHead {
            mut parts,
            framing,
            hop,
            ..
        } = head;
        let h = &parts.headers;
        assert!(
            !(framing == Framing::Chunked && h.contains_key(http::header::CONTENT_LENGTH)),
            "ambiguous framing accepted"
        );
        if hop & parse::hop::UPGRADE == 0 {
            assert!(
                !h.contains_key(http::header::CONNECTION)
                    && !h.contains_key(http::header::TRANSFER_ENCODING),
                "hop-by-hop field passed on"
            );
        }
        let req = http::Request::from_parts(parts, ());
        let d = convoy_http::route::decide_from(routes(), &req, Some([192, 0, 2, 1].into()));
        assert!(d.class <= 7 && d.cost >= 1);
        parts = req.into_parts().0;
        parse::strip_hop(&mut parts.headers, hop);
        let host = parts.headers.get(http::header::HOST).cloned();
        if convoy_http::headers::has_forwarding(&parts.headers) {
            convoy_http::headers::add_forwarding(
                &mut parts.headers,
                &info,
                host.as_ref(),
                parts.version,
            );
        } else {
            let lines = info.lines(host.as_ref(), parts.version);
            for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let line = line.strip_suffix(b"\r").expect("CRLF line");
                assert!(line.windows(2).any(|w| w == b": "), "name: value");
                assert!(!line.iter().any(|&b| b == b'\r' || b == 0));
            }
        }
        for (name, v) in &parts.headers {
            assert!(
                !v.as_bytes().iter().any(|b| matches!(*b, b'\r' | b'\n' | 0)),
                "CR/LF/NUL in {name}"
            );
        }
        if let Some(ae) = parts
            .headers
            .get(http::header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
        {
            let _ = convoy_http::compress::negotiate(
                ae,
                &[
                    convoy_http::compress::Coding::Br,
                    convoy_http::compress::Coding::Gzip,
                ],
            );
        }
        match framing {
            Framing::Empty | Framing::Close => {}
            Framing::Length(n) => {
                if (buf.len() as u64) < n {
                    return;
                }
                let _ = buf.split_to(n as usize);
            }
            Framing::Chunked => {
                let input = buf.len();
                let mut dec = ChunkedDecoder::default();
                let mut out = 0usize;
                loop {
                    match dec.decode(&mut buf) {
                        Ok(Decoded::Data(d)) => out += d.len(),
                        Ok(Decoded::End) => break,
                        Ok(Decoded::NeedMore) | Err(_) => return,
                    }
                }
                assert!(out <= input, "decoded more than was read");
            }
        }
    }
}

/// Bytes from a server, on the path convoy's HTTP/1 client uses: a
/// response head for a GET or a HEAD, then its body by its framing.
/// Checks: informational answers are skipped, a HEAD response has no
/// body, a response with a body beside a transfer coding is not kept
/// alive, no field holds CR/LF/NUL.
pub fn http_response(data: &[u8]) {
    use convoy_http::h1::parse::{self, ChunkedDecoder, Decoded, Framing};
    for method in [http::Method::GET, http::Method::HEAD] {
        let mut buf = bytes::BytesMut::from(data);
        let Ok(Some(h)) = parse::parse_response(&mut buf, &method, 64 * 1024) else {
            continue;
        };
        let st = h.parts.status;
        assert!(!st.is_informational() || st == http::StatusCode::SWITCHING_PROTOCOLS);
        if method == http::Method::HEAD {
            assert_eq!(h.framing, Framing::Empty);
        }
        if h.hop & parse::hop::TRANSFER_ENCODING != 0
            && h.parts.headers.contains_key(http::header::CONTENT_LENGTH)
        {
            assert!(!h.keep_alive);
        }
        let headers = h.parts.headers;
        if st != http::StatusCode::SWITCHING_PROTOCOLS {
            assert!(
                !headers.contains_key(http::header::CONNECTION)
                    && !headers.contains_key(http::header::TRANSFER_ENCODING),
                "hop-by-hop field passed on"
            );
        }
        for (name, v) in &headers {
            assert!(
                !v.as_bytes().iter().any(|b| matches!(*b, b'\r' | b'\n' | 0)),
                "CR/LF/NUL in {name}"
            );
        }
        if h.framing == Framing::Chunked {
            let mut dec = ChunkedDecoder::default();
            let input = buf.len();
            let mut out = 0;
            while let Ok(Decoded::Data(d)) = dec.decode(&mut buf) {
                out += d.len();
            }
            assert!(out <= input);
        }
    }
}

/// A PROXY protocol header: parsing never panics, and a parsed header
/// written again (v1 and v2) parses to the same addresses.
pub fn proxy_protocol(data: &[u8]) {
    use convoy_l4::proxy_protocol::{parse, v1, v2};
    let Ok(Some(h)) = parse(data) else {
        return;
    };
    assert!(h.len <= data.len());
    if let Some((src, dst)) = h.addrs {
        for enc in [v1(src, dst), v2(src, dst)] {
            let again = parse(&enc).expect("own header parses").expect("complete");
            let (s2, d2) = again.addrs.expect("addresses");
            let norm = |a: std::net::SocketAddr| match a.ip() {
                std::net::IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map_or(a, |v4| std::net::SocketAddr::new(v4.into(), a.port())),
                _ => a,
            };
            assert_eq!((norm(s2), norm(d2)), (norm(src), norm(dst)));
            assert_eq!(again.len, enc.len());
        }
    }
}

/// A config file: any text gets a located error or a config, never a
/// panic; a config printed and parsed again is the same config.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match convoy_config::Config::parse("fuzz.toml", text) {
        Ok(c) => {
            let printed = c.to_toml();
            let again = convoy_config::Config::parse("printed.toml", &printed)
                .unwrap_or_else(|e| panic!("printed config does not parse: {e}\n{printed}"));
            assert_eq!(again, c, "round trip changed the config");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("fuzz.toml:"), "{msg}");
        }
    }
}

/// Bytes from an HTTP/2 client (after the connection preface) into
/// convoy's HTTP/2 server (`convoy_http::http2::serve`) over an in-memory
/// pipe, with a handler that reads each request's body and answers with
/// a field HTTP/2 forbids (a body that stalls is given up after 30 s, as
/// `body_timeout` does). Invariants: no request reaches the handler
/// with a connection-specific field, every request is HTTP/2, and the
/// connection always ends (by its idle clock: time is paused and
/// advances when all is idle).
pub fn http2_conn(data: &[u8]) {
    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut input = Vec::with_capacity(24 + data.len());
        input.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        input.extend_from_slice(data);
        // The client stays connected after its bytes (an end of stream
        // at once would close the connection before any stream is
        // served): the connection ends by its idle clock.
        let feed = async move {
            let _ = wr.write_all(&input).await;
            std::future::pending::<()>().await;
        };
        let drain = async move {
            let mut buf = [0u8; 8192];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        let set = convoy_http::http2::Settings {
            header_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(2),
            ..Default::default()
        };
        let handler = |req: http::Request<convoy_http::http2::H2Body>| async move {
            assert_eq!(req.version(), http::Version::HTTP_2);
            for f in [
                "connection",
                "transfer-encoding",
                "upgrade",
                "keep-alive",
                "proxy-connection",
            ] {
                assert!(!req.headers().contains_key(f), "{f} reached the handler");
            }
            if let Some(te) = req.headers().get("te") {
                assert_eq!(te, "trailers");
            }
            // As convoy's body_timeout would (30 s by default).
            let body = req.into_body().collect();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), body).await;
            let mut r = http::Response::new(Full::new(bytes::Bytes::from_static(b"fuzz")));
            r.headers_mut()
                .insert("connection", http::HeaderValue::from_static("close"));
            r
        };
        let serve = async {
            let _ = convoy_http::http2::serve(
                server,
                &set,
                std::future::pending::<()>(),
                std::future::pending::<()>(),
                handler,
            )
            .await;
        };
        let all = async {
            tokio::select! {
                _ = feed => {}
                _ = async { tokio::join!(drain, serve) } => {}
            }
        };
        let ended = tokio::time::timeout(std::time::Duration::from_secs(600), all).await;
        assert!(ended.is_ok(), "the HTTP/2 connection never ended");
    });
}

/// Bytes from the network on the cluster socket: the datagram envelope
/// (`convoy_cluster::envelope`) and the doc assembler
/// (`convoy_cluster::pieces`) on any input, under a known key.
///
/// Invariants: nothing panics. Bytes not sealed with the key are never
/// accepted. The input sealed with the key opens once to itself, and a
/// second time is a replay. The input taken as a doc piece assembles into
/// a doc only if it is a complete, well-formed one; any doc so assembled
/// cuts into pieces that assemble back to the same doc.
pub fn cluster_datagram(data: &[u8]) {
    use convoy_cluster::envelope::{Envelope, Refused, MAX_PAYLOAD};
    use convoy_cluster::pieces::{cut, Assembler};
    const KEY: &[u8] = b"the fuzz target's cluster key, 32+";
    let mut receiver = Envelope::new(KEY, 1, 1);
    if let Ok(o) = receiver.open(data) {
        // Only a datagram carrying a valid tag for KEY opens; random bytes
        // practically never do, so a success means a sealed input.
        assert!(data.len() >= convoy_cluster::envelope::OVERHEAD);
        let _ = o;
    }
    let mut sender = Envelope::new(KEY, 2, 5);
    let payload = &data[..data.len().min(MAX_PAYLOAD)];
    let mut d = Vec::new();
    sender.seal(1, payload, &mut d);
    let mut fresh = Envelope::new(KEY, 1, 1);
    let o = fresh.open(&d).expect("a sealed datagram opens");
    assert_eq!((o.sender, o.kind, o.payload), (2, 1, payload));
    assert_eq!(fresh.open(&d), Err(Refused::Replay));
    let mut a = Assembler::default();
    if let Some(doc) = a.piece(9, 1, data) {
        let mut b = Assembler::default();
        let mut back = None;
        for p in cut(&doc) {
            back = b.piece(9, 1, &p);
        }
        assert_eq!(back.as_ref(), Some(&doc));
    }
}
