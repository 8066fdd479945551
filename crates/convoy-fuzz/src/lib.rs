//! The fuzz targets' bodies: every parser that sees untrusted bytes, on
//! the path convoy uses. `fuzz/` runs them under libFuzzer (cargo-fuzz);
//! `tests/replay.rs` replays the saved corpus in the normal test suite.
//! Each target also checks invariants, not just "no panic".
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;

/// A listener config with routes of every kind, for `http_request`.
fn listener() -> &'static convoy_config::Listener {
    static L: OnceLock<convoy_config::Listener> = OnceLock::new();
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
[pools.web]
[[pools.web.servers]]
address = "127.0.0.1:2"
"#;
        convoy_config::Config::parse("fuzz", text)
            .expect("the fuzz config is valid")
            .listeners
            .remove(0)
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Bytes from a client: parsed by hyper (HTTP/1.1, or HTTP/2 after the
/// preface) exactly as convoy's listeners parse them, then routed and
/// rewritten by convoy's header code, and the body (chunked or not) read
/// to its end under a limit.
pub fn http_request(data: &[u8]) {
    let data = data.to_vec();
    runtime().block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let svc =
            hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let l = listener();
                let d = convoy_http::route::decide(l, &req);
                assert!(d.class <= 7 && d.cost >= 1);
                let (mut parts, body) = req.into_parts();
                convoy_http::headers::strip_hop_by_hop(&mut parts.headers);
                let info = convoy_http::headers::ClientInfo::new(
                    "192.0.2.1:4000".parse().expect("addr"),
                    "http",
                );
                let host = parts.headers.get(http::header::HOST).cloned();
                convoy_http::headers::add_forwarding(
                    &mut parts.headers,
                    &info,
                    host.as_ref(),
                    parts.version,
                );
                for (name, v) in &parts.headers {
                    assert!(
                        !v.as_bytes().iter().any(|b| *b == b'\r' || *b == b'\n'),
                        "CR/LF in {name}"
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
                let _ = Limited::new(body, 64 * 1024).collect().await;
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
        let conn = tokio::spawn(async move {
            let b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = b
                .serve_connection_with_upgrades(TokioIo::new(server), svc)
                .await;
        });
        let _ = client.write_all(&data).await;
        let _ = client.shutdown().await;
        // Drain what the server answers so it is never blocked writing.
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink),
        )
        .await;
        drop(client);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn).await;
    });
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
