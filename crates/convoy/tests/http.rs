//! End-to-end tests of the HTTP gateway: a real convoy process, origins
//! that count their own concurrency, a hyper client and curl.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use convoy_testkit::http::HttpOrigin;
use convoy_testkit::{free_port, Convoy};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Reply {
    status: u16,
    body: String,
    headers: http::HeaderMap,
}

async fn get(c: &TestClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = http::Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = c
        .request(b.body(Empty::new()).unwrap())
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        headers,
    }
}

fn servers(pool: &str, origins: &[&HttpOrigin], extra: &str) -> String {
    origins
        .iter()
        .map(|o| {
            format!(
                "[[pools.{pool}.servers]]\nname = \"{}\"\naddress = \"{}\"\n{extra}\n",
                o.name, o.addr
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_with_headers_and_weighted_round_robin() {
    let a = HttpOrigin::start("a", Duration::ZERO).await;
    let b = HttpOrigin::start("b", Duration::ZERO).await;
    let port = free_port();
    let cfg = format!(
        "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:{port}\"\npool = \"web\"\n\n[pools.web]\n\
         [[pools.web.servers]]\nname = \"a\"\naddress = \"{}\"\nweight = 1\n\
         [[pools.web.servers]]\nname = \"b\"\naddress = \"{}\"\nweight = 3\n",
        a.addr, b.addr
    );
    let _c = Convoy::start(BIN, &cfg).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/hello");
    let r = get(
        &c,
        &url,
        &[
            ("host", "shop.example"),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-seen-x-forwarded-for"], "127.0.0.1");
    assert_eq!(r.headers["x-seen-x-forwarded-proto"], "http");
    assert_eq!(r.headers["x-seen-x-forwarded-host"], "shop.example");
    assert_eq!(
        r.headers["x-seen-forwarded"],
        "for=127.0.0.1;proto=http;host=shop.example"
    );
    assert_eq!(r.headers["x-seen-via"], "1.1 convoy");
    assert_eq!(r.headers["x-seen-host"], "shop.example");
    assert!(
        !r.headers.contains_key("x-seen-x-hop"),
        "a header named in Connection must not reach the server"
    );
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let r = get(&c, &url, &[]).await;
        assert_eq!(r.status, 200);
        *counts.entry(r.body).or_default() += 1;
    }
    // Smooth WRR is exact per cycle of 4 requests.
    assert_eq!((counts["a"], counts["b"]), (100, 300), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_water_mark_queues_and_origins_never_exceed_it() {
    let a = HttpOrigin::start("a", Duration::from_millis(40)).await;
    let b = HttpOrigin::start("b", Duration::from_millis(40)).await;
    let port = free_port();
    let cfg = format!(
        "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:{port}\"\npool = \"web\"\n\n\
         [pools.web]\nmax_in_flight = 2\nalgorithm = \"least_outstanding\"\n{}",
        servers("web", &[&a, &b], "")
    );
    let _c = Convoy::start(BIN, &cfg).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { get(&c, &url, &[]).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    for o in [&a, &b] {
        let peak = o.seen.peak.load(Ordering::SeqCst);
        assert!(peak <= 2, "{} saw {peak} requests at once", o.name);
    }
    assert_eq!(
        a.seen.count.load(Ordering::SeqCst) + b.seen.count.load(Ordering::SeqCst),
        50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_class_queued_later_is_served_first_and_timeouts_get_503() {
    let o = HttpOrigin::start("o", Duration::from_millis(10)).await;
    let port = free_port();
    let cfg = format!(
        "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:{port}\"\npool = \"web\"\n\
         [[listeners.routes]]\npath_prefix = \"/vip\"\npriority = 0\n\
         [[listeners.routes]]\npath_prefix = \"/bulk\"\npriority = 7\n\n\
         [pools.web]\nmax_in_flight = 1\nqueue_timeout = \"3s\"\nqueue_aging = \"0s\"\n{}",
        servers("web", &[&o], "")
    );
    let _c = Convoy::start(BIN, &cfg).await;
    let c = client();
    let base = format!("http://127.0.0.1:{port}");
    // Occupy the only slot for a while.
    let hold = {
        let (c, u) = (c.clone(), format!("{base}/hold?sleep_ms=600"));
        tokio::spawn(async move { get(&c, &u, &[]).await.status })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let low = {
        let (c, u) = (c.clone(), format!("{base}/bulk"));
        tokio::spawn(async move { get(&c, &u, &[]).await.status })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let high = {
        let (c, u) = (c.clone(), format!("{base}/vip"));
        tokio::spawn(async move { get(&c, &u, &[]).await.status })
    };
    assert_eq!(hold.await.unwrap(), 200);
    assert_eq!(low.await.unwrap(), 200);
    assert_eq!(high.await.unwrap(), 200);
    let paths = o.seen.paths.lock().unwrap().clone();
    assert_eq!(
        paths,
        ["/hold", "/vip", "/bulk"],
        "the higher class queued later goes first"
    );

    // Queue timeout: hold the slot longer than queue_timeout.
    let hold = {
        let (c, u) = (c.clone(), format!("{base}/hold?sleep_ms=4000"));
        tokio::spawn(async move { get(&c, &u, &[]).await.status })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = get(&c, &format!("{base}/late"), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "3");
    assert_eq!(hold.await.unwrap(), 200);
    assert!(!o.seen.paths.lock().unwrap().contains(&"/late".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_origin_costs_no_failed_get() {
    let a = HttpOrigin::start("a", Duration::ZERO).await;
    let mut b = HttpOrigin::start("b", Duration::ZERO).await;
    let port = free_port();
    let cfg = format!(
        "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:{port}\"\npool = \"web\"\n\n[pools.web]\n{}",
        servers("web", &[&a, &b], "")
    );
    let _c = Convoy::start(BIN, &cfg).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    b.stop().await;
    for _ in 0..100 {
        let r = get(&c, &url, &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "a"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_with_curl() {
    assert!(convoy_testkit::have("curl"), "curl is needed");
    let a = HttpOrigin::start("a", Duration::ZERO).await;
    let port = free_port();
    let cfg = format!(
        "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:{port}\"\npool = \"web\"\n\n[pools.web]\n{}",
        servers("web", &[&a], "")
    );
    let _c = Convoy::start(BIN, &cfg).await;
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-w",
            " %{http_version}",
            &format!("http://127.0.0.1:{port}/h2"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a 2");
}
